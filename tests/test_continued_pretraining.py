"""Continued pre-training: raw text packed into full blocks, every token learned, perplexity base vs tuned."""

from __future__ import annotations

import json

from conftest import EXAMPLES, read_jsonl

from tunesmith import pipeline
from tunesmith.config import DataConfig, load_config

LICENCES = EXAMPLES / "data" / "licence_paragraphs.jsonl"


def test_documents_are_packed_into_full_blocks(tokenizer):
    from tunesmith.data.prepare import load_examples
    from tunesmith.tasks import continued_pretraining as task

    examples, fmt = load_examples(str(LICENCES), DataConfig(), task.normalise)
    config = load_config(None, ["task=continued-pretraining", "data.max_length=64"])
    blocks = task.encode(examples[:40], tokenizer, config)
    assert fmt == "text" and all(len(b.input_ids) == 64 for b in blocks[:-1])
    assert all(b.labels == b.input_ids for b in blocks)
    stream = sum(len(tokenizer(e.text, add_special_tokens=False)["input_ids"]) + 1 for e in examples[:40])
    assert sum(len(b.input_ids) for b in blocks) == stream  # nothing dropped, nothing padded
    assert sum(b.input_ids.count(tokenizer.eos_token_id) for b in blocks) == 40  # one EOS per document


def test_tiny_model_adapts_and_perplexity_falls(tmp_path, tiny_llama_dir):
    data = tmp_path / "licences.jsonl"
    data.write_text("\n".join(LICENCES.read_text().splitlines()[:120]) + "\n")
    config = load_config(
        None,
        [
            "task=continued-pretraining",
            f"model.name={tiny_llama_dir}",
            f"data.train={data}",
            "data.max_length=64",
            f"output.dir={tmp_path / 'runs'}",
            "method.name=full",
            "train.batch_size=8",
            "train.max_steps=12",
            "train.learning_rate=3e-3",
            "train.eval_every=6",
            "train.log_every=1",
            "train.precision=fp32",
        ],
    )
    result = pipeline.train(config)
    base, tuned = result.summary["base"], result.summary["tuned"]
    assert tuned["perplexity"] < 0.5 * base["perplexity"], (base, tuned)
    curve = [r["loss"] for r in read_jsonl(result.run_dir / "metrics.jsonl") if "loss" in r]
    assert curve[-1] < curve[0]

    prompt = tmp_path / "prompt.jsonl"
    prompt.write_text(json.dumps({"text": "This License applies to"}) + "\n")
    assert pipeline.predict(result.run_dir, str(prompt), str(tmp_path / "out.jsonl"), max_new_tokens=5) == 1
    assert "continuation" in read_jsonl(tmp_path / "out.jsonl")[0]
