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


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tokenizer) -> Path:
    from transformers import LlamaConfig

    config = LlamaConfig(
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
    return _save_tiny(tmp_path_factory.mktemp("tiny-llama"), config, tokenizer)


@pytest.fixture()
def small_chat_file(tmp_path) -> Path:
    """48 short support tickets from the demo data, so tiny-model runs take seconds."""
    lines = SUPPORT_DATA.read_text().splitlines()[:48]
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


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
