"""bench/sft.py, the SFT speed harness, end to end on a tiny Llama: every runner (tunesmith and the three
Hugging Face baselines) trains 2 steps in its own process, and the report says the same thing about each."""

from __future__ import annotations

import json
import math
import sys

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT))  # `bench` is a top-level folder of the repository, not part of the package

from bench import sft  # noqa: E402

RUN_FIELDS = (
    "trained_tokens",
    "tokens",
    "trained_tokens_per_s",
    "tokens_per_s",
    "train_seconds",
    "wall_seconds",
    "peak_rss_bytes",
    "peak_bytes",
    "val_loss",
    "base_weight_bytes",
    "steps",
    "precision",
    "device",
)


def test_every_runner_trains_the_same_examples_and_is_scored_the_same_way(tiny_llama_dir, tmp_path, capsys):
    out = tmp_path / "sft"
    code = sft.main(
        [
            "--model",
            str(tiny_llama_dir),
            "--steps",
            "2",
            "--repeats",
            "1",
            "--batch-size",
            "2",
            "--val-count",
            "5",
            "--out",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed

    summary = json.loads((out / "summary.json").read_text())
    runs = summary["runs"]
    assert [r["runner"] for r in runs] == ["tunesmith", "hf-default", "hf-tuned", "trl"], printed
    assert all(r["status"] == "ok" for r in runs), [r.get("error") for r in runs]
    counted = summary["meta"]["data"]["train"]
    assert counted["examples"] == 4 and 0 < counted["trained_tokens"] < counted["tokens"]
    for run in runs:
        missing = [f for f in RUN_FIELDS if run.get(f) is None]
        assert not missing, (run["runner"], missing)
        assert run["steps"] == 2, run
        assert math.isfinite(run["val_loss"]) and math.isfinite(run["trained_tokens_per_s"]), run
        assert run["trained_tokens"] == counted["trained_tokens"]  # one numerator for every runner
        # The rates are the harness's token counts over the runner's measured training seconds.
        assert run["trained_tokens_per_s"] == pytest.approx(counted["trained_tokens"] / run["train_seconds"], rel=1e-12)
        assert run["tokens_per_s"] == pytest.approx(counted["tokens"] / run["train_seconds"], rel=1e-12)
        assert run["train_seconds"] <= run["wall_seconds"], run
        assert run["peak_bytes"] == run["peak_rss_bytes"]  # a CPU run: no CUDA peak to prefer
        assert (out / f"{run['runner']}-lora-r0.json").is_file()
    by_runner = {r["runner"]: r for r in runs}
    # tunesmith counted the same loss-bearing tokens on its own: the runners consumed the same examples.
    assert by_runner["tunesmith"]["trained_tokens_reported"] == counted["trained_tokens"]
    assert all(not by_runner[name]["imported_tunesmith"] for name in sft.BASELINES)  # independent baselines
    assert by_runner["hf-default"]["precision"] == "fp32"
    # Same random model, 2 small steps: the one shared scoring function must give nearly the same loss for all.
    losses = [r["val_loss"] for r in runs]
    assert max(losses) / min(losses) < 1.01, losses
    assert 9.0 < min(losses) < 12.0, losses  # ~ln(49152) for a random model over the SmolLM2 vocabulary

    table = (out / "table.md").read_text()
    for run in runs:  # one repeat: each median the report states is the run's own number
        assert (
            f"| {run['runner']} | lora | {run['precision']} | 1 | {run['trained_tokens']:.0f} "
            f"| {run['trained_tokens_per_s']:.1f} | {run['tokens_per_s']:.1f} | {run['train_seconds']:.1f} |"
        ) in table, run
    # The ratio rows and the targets, recomputed from the raw runs, say what the report says.
    ours = by_runner["tunesmith"]
    speeds = {}
    for name in sft.BASELINES:
        base = by_runner[name]
        speeds[name] = speed = ours["trained_tokens_per_s"] / base["trained_tokens_per_s"]
        wall, memory = ours["wall_seconds"] / base["wall_seconds"], ours["peak_bytes"] / base["peak_bytes"]
        change = ours["val_loss"] / base["val_loss"] - 1
        assert (
            f"| tunesmith | lora | {name} | {speed:.2f}x | {wall:.2f}x | {memory:.2f}x | {change:+.1%} |"
        ) in table, name
    for baseline, goal, floor in (("hf-default", "(a)", 2.0), ("hf-tuned", "(b)", 1.5)):
        speed = speeds[baseline]
        verdict = "met" if speed >= floor else "MISSED"
        assert f"- LoRA trained tok/s vs {goal}: {speed:.2f}x (target >= {floor}x): {verdict}" in table


@pytest.mark.parametrize(
    "argv, where",
    [
        (["--steps", "1000"], "--steps"),
        (["--runners", "tunesmith,hf-fast"], "--runners"),
        (["--method", "dora"], "--method"),
        (["--variant", "no-colon"], "--variant"),
    ],
)
def test_bad_options_are_errors_that_name_the_option(argv, where, capsys, tmp_path):
    assert sft.main(argv + ["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {where}") and "fix:" in err, err


def test_a_variant_value_may_hold_commas():
    assert sft._split_variant("pack:data.packing=true,method.target_modules=[q_proj, v_proj]") == (
        "pack",
        ["data.packing=true", "method.target_modules=[q_proj, v_proj]"],
    )


def test_the_shared_score_stays_fp32_inside_accelerates_bf16_forward(tiny_llama_dir, tokenizer):
    """The Trainer and tunesmith both `accelerator.prepare` the model, which under bf16 wraps its forward in
    autocast; the shared validation loss must score every runner's model in fp32 all the same."""
    import torch
    from transformers import AutoModelForCausalLM

    from bench.baselines import common
    from tunesmith.pipeline import _accelerator

    examples = [common.encode(tokenizer, r["messages"], 512) for r in common.read_jsonl(sft.DATA)[:4]]
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    plain = common.validation_loss(model, examples, tokenizer.pad_token_id)
    prepared = _accelerator("bf16").prepare(model)
    ids = torch.tensor([examples[0]["input_ids"]])
    with torch.no_grad():  # the wrapper is there and does change the numbers ...
        assert not torch.equal(prepared(input_ids=ids).logits, prepared._original_forward(input_ids=ids).logits)
    assert common.validation_loss(prepared, examples, tokenizer.pad_token_id) == plain  # ... but not the score
    with torch.no_grad():  # and it is back afterwards
        assert not torch.equal(prepared(input_ids=ids).logits, prepared._original_forward(input_ids=ids).logits)
