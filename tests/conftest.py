"""Shared fixtures: the real SmolLM2 tokenizer, tiny Llama-family models built from configs, configs.

Tiny models keep the whole suite on a 2-core CPU in minutes (ARCHITECTURE.md rule 7): 2 layers,
hidden 64 (bitsandbytes 4-bit CPU kernels need in-features >= its block size 64), but the real 49k-token SmolLM2 tokenizer and chat template, so masking and generation are
tested on what users get.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SUPPORT_DATA = EXAMPLES / "data" / "support_tickets.jsonl"
DEBIAN_SECTIONS = EXAMPLES / "data" / "debian_sections.csv"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def starter_dir() -> Path:
    """The packaged SmolLM2-135M-Instruct as a HF directory (converted once into the user cache)."""
    from tunesmith.models.starters import STARTERS, starter_directory

    return starter_directory(STARTERS["smollm2-135m-instruct"])


@pytest.fixture(scope="session")
def tokenizer(starter_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(starter_dir)


def _save_tiny(path: Path, config, tokenizer, seed: int = 0) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def save_tiny_encoder(path: Path, config, tokenizer, seed: int = 0) -> Path:
    """A base model without a head (the task adds it when it loads the folder), saved with `tokenizer`."""
    import torch
    from transformers import AutoModel

    torch.manual_seed(seed)
    AutoModel.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_llama_config(tokenizer, **changes):
    """The tiny Llama of `tiny_llama_dir` on `tokenizer`'s vocabulary and special tokens; `changes` override."""
    from transformers import LlamaConfig

    sizes = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaConfig(**{**sizes, **changes})


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tokenizer) -> Path:
    return _save_tiny(tmp_path_factory.mktemp("tiny-llama"), tiny_llama_config(tokenizer), tokenizer)


# Sizes of the tiny encoders (BERT, RoBERTa, DeBERTa-v2) built from configs; the caller adds vocab_size.
TINY_ENCODER = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=128,
)


@pytest.fixture(scope="session")
def minilm_tokenizer():
    """The real all-MiniLM-L6-v2 WordPiece tokenizer, for tiny encoders built from configs."""
    from transformers import AutoTokenizer

    from tunesmith.models.resolve import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model("all-minilm-l6-v2").path)


def write_debian_sections(path: Path, count: int) -> Path:
    """`path`: a csv of the first `count` rows of four Debian sections of the example data (database, games,
    mail, sound), which tiny random-init classifiers learn visibly within a few steps."""
    import csv

    keep = {"database", "games", "mail", "sound"}
    with DEBIAN_SECTIONS.open() as source:
        rows = [r for r in csv.DictReader(source) if r["label"] in keep][:count]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text", "label", "package"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_chat_data(folder: Path, count: int = 48) -> Path:
    """`folder`/chat.jsonl: the first `count` short support tickets of the demo data."""
    path = folder / "chat.jsonl"
    path.write_text("\n".join(SUPPORT_DATA.read_text().splitlines()[:count]) + "\n")
    return path


@pytest.fixture()
def small_chat_file(tmp_path) -> Path:
    """48 short support tickets from the demo data, so tiny-model runs take seconds."""
    return write_chat_data(tmp_path)


# Fast settings of a tiny LoRA chat run trained by train_chat_run (seconds on a 2-core CPU).
FAST_CHAT = [
    "data.max_length=256",
    "train.batch_size=4",
    "train.max_steps=6",
    "train.eval_every=3",
    "train.learning_rate=1e-2",
    "train.precision=fp32",
    "method.dropout=0.0",
    "eval.max_new_tokens=8",
    "eval.max_samples=4",
]


def train_chat_run(folder: Path, model: Path | str, *overrides: str) -> Path:
    """Train a tiny chat run of `model` on write_chat_data(`folder`) into `folder`/runs with FAST_CHAT, then
    `overrides` (later settings win); returns the run folder."""
    from tunesmith import pipeline
    from tunesmith.config import load_config

    data = write_chat_data(folder)
    config = load_config(
        None, [f"model.name={model}", f"data.train={data}", f"output.dir={folder / 'runs'}", *FAST_CHAT, *overrides]
    )
    return pipeline.train(config).run_dir


@pytest.fixture()
def make_config(tmp_path, tiny_llama_dir, small_chat_file):
    """A RunConfig on the tiny model with fast settings; keyword overrides use dotted --set syntax."""
    from tunesmith.config import load_config

    def build(*overrides: str, model: Path | str | None = None):
        base = [
            f"model.name={model or tiny_llama_dir}",
            f"data.train={small_chat_file}",
            "data.max_length=256",
            f"output.dir={tmp_path / 'runs'}",
            "train.batch_size=4",
            "train.max_steps=6",
            "train.eval_every=3",
            "train.log_every=1",
            "train.learning_rate=1e-2",
            "train.precision=fp32",
            "method.dropout=0.0",
            "eval.max_new_tokens=8",
            "eval.max_samples=4",
            "eval.report_samples=2",
        ]
        return load_config(None, base + list(overrides))

    return build


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def postgres_bin() -> Path | None:
    """The folder of Debian's PostgreSQL server programs (pg_ctl is not on PATH there), or None."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(os.path.realpath(found)).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return versions[-1].parent if versions else None
