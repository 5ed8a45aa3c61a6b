"""End to end on the real packaged SmolLM2-135M-Instruct, every method, a few steps each.

Each run sees 8 real support tickets three times; the loss must fall, frozen weights must not move,
and what was saved must load with the stock libraries and give the same logits.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import SUPPORT_DATA, read_jsonl
from safetensors.torch import load_file

from tunesmith import pipeline
from tunesmith.config import load_config

pytestmark = pytest.mark.e2e


@pytest.fixture()
def real_config(tmp_path, starter_dir):
    data = tmp_path / "tickets.jsonl"
    data.write_text("\n".join(SUPPORT_DATA.read_text().splitlines()[:18]) + "\n")

    def build(*overrides: str):
        return load_config(
            None,
            [
                "model.name=smollm2-135m-instruct",
                f"data.train={data}",
                "data.split=[0.45, 0.275, 0.275]",  # 8 / 5 / 5: fewer than 5 held out is refused
                "data.max_length=256",
                f"output.dir={tmp_path / 'runs'}",
                "train.batch_size=4",
                "train.max_steps=6",
                "train.log_every=1",
                "train.eval_every=0",
                "train.warmup_ratio=0",
                "train.scheduler=constant",
                "eval.compare_base=false",
                "eval.max_samples=2",
                "eval.max_new_tokens=8",
                *overrides,
            ],
        )

    return build


def step_losses(run_dir) -> list[float]:
    return [r["loss"] for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r]


def assert_loss_fell(run_dir):
    curve = step_losses(run_dir)
    assert len(curve) == 6
    # Steps 1-2 see the data for the first time, steps 5-6 for the third.
    assert sum(curve[-2:]) < 0.8 * sum(curve[:2]), curve


def test_lora_on_smollm2_reloads_with_stock_peft_and_merges(real_config, tmp_path, starter_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config = real_config("method.name=lora", "method.r=8", "train.learning_rate=5e-4", "train.load_best_at_end=false")
    run = pipeline.train(config).run_dir
    assert_loss_fell(run)
    assert json.loads((run / "adapter" / "adapter_config.json").read_text())["peft_type"] == "LORA"

    ids = torch.tensor([[1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365]])
    ours = pipeline.load_tuned(run).model
    stock = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(starter_dir), run / "adapter").eval()
    with torch.no_grad():
        expected = stock(input_ids=ids).logits
        assert torch.allclose(ours(input_ids=ids).logits, expected, atol=1e-4)
    merged = AutoModelForCausalLM.from_pretrained(pipeline.merge(run, tmp_path / "merged")).eval()
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, expected, atol=1e-3)


def test_full_on_smollm2(real_config):
    run = pipeline.train(real_config("method.name=full", "train.learning_rate=5e-5")).run_dir
    assert_loss_fell(run)
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(run / "model")  # stock reload


def test_freeze_on_smollm2_keeps_lower_blocks_bit_identical(real_config, starter_dir):
    run = pipeline.train(
        real_config("method.name=freeze", "method.freeze_train_top=2", "train.learning_rate=1e-4")
    ).run_dir
    assert_loss_fell(run)
    before = load_file(str(starter_dir / "model.safetensors"))
    after = load_file(str(run / "model" / "model.safetensors"))
    for name, tensor in before.items():
        if name.startswith("model.layers.") and int(name.split(".")[2]) < 28:
            assert torch.equal(tensor, after[name]), f"{name} moved"
    assert not torch.equal(before["model.layers.29.mlp.up_proj.weight"], after["model.layers.29.mlp.up_proj.weight"])


def test_qlora_on_smollm2(real_config):
    run = pipeline.train(real_config("method.name=qlora", "method.r=8", "train.learning_rate=5e-4")).run_dir
    assert_loss_fell(run)
    assert (run / "adapter" / "adapter_model.safetensors").exists()


def test_the_dpo_example_on_smollm2_starts_at_its_reference_and_moves(tmp_path):
    # The shipped DPO example (LoRA, the adapter switched off as the reference) on the real model, 6 steps of 4
    # pairs seen twice: at step 1 the model is its reference (loss log 2, margin 0); then the chosen
    # answers gain on the rejected ones.
    from conftest import EXAMPLES

    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join((EXAMPLES / "data" / "debian_preferences.jsonl").read_text().splitlines()[:28]) + "\n")
    config = load_config(
        EXAMPLES / "preference_dpo.yaml",
        [
            f"data.train={data}",
            "data.split=[0.43, 0.285, 0.285]",  # 12 / 8 / 8 pairs
            f"output.dir={tmp_path / 'runs'}",
            "train.batch_size=4",
            "train.max_steps=6",
            "train.log_every=1",
            "train.eval_every=0",
            "train.warmup_ratio=0",
            "train.scheduler=constant",
            "train.learning_rate=1e-3",
            "eval.report_samples=1",
            "eval.max_new_tokens=8",
        ],
    )
    result = pipeline.train(config)
    steps = [r for r in read_jsonl(result.run_dir / "metrics.jsonl") if "loss" in r]
    assert steps[0]["loss"] == pytest.approx(0.6931, abs=1e-3) and steps[0]["rewards_margin"] == pytest.approx(
        0, abs=1e-3
    )
    assert sum(s["rewards_margin"] for s in steps[-3:]) > 0.1, steps
    assert result.summary["base"]["rewards_margin"] == pytest.approx(0, abs=1e-3)
    assert result.summary["tuned"]["rewards_margin"] > 0
