"""The whole train path on tiny Llama models: every method, the run directory, resume, reload, merge."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import read_jsonl
from safetensors.torch import load_file

from tunesmith import pipeline
from tunesmith.config import dump_config


def losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r]


def test_lora_run_writes_a_complete_run_directory(make_config):
    result = pipeline.train(make_config("method.name=lora", "method.r=4"))
    run = result.run_dir
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "summary.json",
        "report.md",
        "plots/loss.png",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "data/test.jsonl",
        "checkpoints/best/trainable.safetensors",
    ):
        assert (run / name).exists(), name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["method"] == "lora"
    assert set(summary["tuned"]) >= {"rougeL", "exact_match"} and set(summary["base"]) >= {"rougeL", "exact_match"}
    assert summary["parameters"]["trainable"] < summary["parameters"]["total"]
    curve = losses(run)
    assert curve[-1] < curve[0], curve
    assert "| rougeL |" in (run / "report.md").read_text()


def test_stock_peft_loading_and_merge_give_the_same_logits(make_config, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config = make_config("method.name=lora", "method.r=4", "train.load_best_at_end=false")
    run = pipeline.train(config).run_dir
    ids = torch.randint(0, 2000, (2, 10))

    ours = pipeline.load_tuned(run).model
    stock = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(config.model.name), run / "adapter").eval()
    with torch.no_grad():
        ours_logits, stock_logits = ours(input_ids=ids).logits, stock(input_ids=ids).logits
    assert torch.allclose(ours_logits, stock_logits, atol=1e-5)
    # The adapter actually changed the model.
    with torch.no_grad(), stock.disable_adapter():
        assert not torch.allclose(stock(input_ids=ids).logits, stock_logits, atol=1e-4)

    merged_dir = pipeline.merge(run, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, stock_logits, atol=1e-4)


def test_freeze_leaves_lower_blocks_bit_identical(make_config, tiny_llama_dir):
    run = pipeline.train(make_config("method.name=freeze", "method.freeze_train_top=1")).run_dir
    before = load_file(str(tiny_llama_dir / "model.safetensors"))
    after = load_file(str(run / "model" / "model.safetensors"))
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed, "nothing trained"
    assert all(not name.startswith("model.layers.0.") for name in changed), changed
    assert any(name.startswith("model.layers.1.") for name in changed)
    assert losses(run)[-1] < losses(run)[0]


def test_full_trains_every_block(make_config, tiny_llama_dir):
    run = pipeline.train(make_config("method.name=full", "train.learning_rate=1e-3")).run_dir
    before = load_file(str(tiny_llama_dir / "model.safetensors"))
    after = load_file(str(run / "model" / "model.safetensors"))
    assert not torch.equal(
        before["model.layers.0.self_attn.q_proj.weight"], after["model.layers.0.self_attn.q_proj.weight"]
    )
    assert losses(run)[-1] < losses(run)[0]


def test_qlora_trains_on_a_4bit_base(make_config):
    result = pipeline.train(make_config("method.name=qlora", "method.r=4", "method.compute_dtype=float32"))
    assert (result.run_dir / "adapter" / "adapter_model.safetensors").exists()
    curve = losses(result.run_dir)
    assert curve[-1] < curve[0]


def test_qlora_gradients_are_the_same_after_an_eval_pass(make_config, tokenizer, tmp_path):
    """bitsandbytes switches a 4-bit weight to an inference kernel without backward after an eval-mode
    forward on AVX512-BF16 CPUs (then a biased layer fails in training); the qlora method must keep
    training exact, since base scoring and validation passes run in eval mode between training steps."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from tunesmith.methods import qlora
    from tunesmith.models.load import load_model
    from tunesmith.models.resolve import resolve_model

    biased = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        attention_bias=True,
        mlp_bias=True,
    )
    model_dir = _save_tiny_model(tmp_path / "biased", biased)
    config = make_config(
        "method.name=qlora", "method.r=4", "method.compute_dtype=float32", "method.dropout=0", model=model_dir
    )
    ids = torch.randint(0, 2000, (2, 12))

    def adapter_grads(eval_first: bool) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = load_model(
            resolve_model(str(model_dir)),
            config.model,
            AutoModelForCausalLM,
            method_name="qlora",
            extra=qlora.load_kwargs(config.method),
        )
        model = qlora.apply(model, config.method)
        if eval_first:
            model.eval()
            with torch.no_grad():
                model(input_ids=ids)
        model.train()
        model(input_ids=ids, labels=ids).loss.backward()
        return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    plain, after_eval = adapter_grads(False), adapter_grads(True)
    assert plain.keys() == after_eval.keys() and any("layers.0." in n for n in plain)
    for name in plain:
        assert torch.allclose(plain[name], after_eval[name], atol=1e-6), name


def _save_tiny_model(path: Path, config) -> Path:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    return path


def test_early_stopping_stops_and_keeps_the_best(make_config):
    # A min_delta no pass can beat: the first validation is the best, the next one triggers the stop.
    config = make_config("train.eval_every=1", "train.early_stopping_patience=1", "train.early_stopping_min_delta=100")
    summary = pipeline.train(config).summary
    assert summary["status"] == "stopped_early"
    assert summary["steps"] == 2 and summary["best_step"] == 1


def _train_cli(args: list[str], env_extra: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run(
        [sys.executable, "-m", "tunesmith.cli", *args], capture_output=True, text=True, env=env, cwd=cwd
    )


def test_resume_after_kill_matches_an_uninterrupted_run(make_config, tmp_path):
    # Dropout on, so the restored RNG state matters too.
    config = make_config(
        "method.name=lora",
        "method.r=4",
        "method.dropout=0.1",
        "train.save_every=2",
        "train.eval_every=2",
        "eval.compare_base=false",
        "train.max_steps=6",
    )
    path = tmp_path / "run.yaml"
    path.write_text(dump_config(config))

    straight = _train_cli(["train", str(path)])
    assert straight.returncode == 0, straight.stderr[-2000:]
    killed = _train_cli(["train", str(path)], {"TUNESMITH_TEST_KILL_AT_STEP": "4"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    runs = sorted(Path(config.output.dir).iterdir())
    interrupted = next(r for r in runs if not (r / "summary.json").exists())
    assert (interrupted / "checkpoints" / "step-4").exists()
    resumed = _train_cli(["train", "--resume", str(interrupted)])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout

    finished = next(r for r in runs if r != interrupted)
    a = load_file(str(finished / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(interrupted / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name
    assert losses(finished) == pytest.approx(losses(interrupted), rel=1e-5)


def test_predict_chat_and_eval_commands(make_config, tmp_path):
    from tunesmith.chat import chat_loop

    run = pipeline.train(make_config("eval.compare_base=false")).run_dir
    inputs = tmp_path / "in.jsonl"
    inputs.write_text(
        json.dumps({"prompt": "Where is my order?", "completion": ""})
        + "\n"
        + json.dumps({"prompt": "Refund please", "completion": ""})
        + "\n"
    )
    out = tmp_path / "out.jsonl"
    done = _train_cli(["predict", str(run), "--input", str(inputs), "--output", str(out), "--max-new-tokens", "4"])
    assert done.returncode == 0, done.stderr[-2000:]
    rows = read_jsonl(out)
    assert len(rows) == 2 and rows[0]["messages"][-1]["role"] == "assistant"
    again = _train_cli(["predict", str(run), "--input", str(inputs), "--output", str(out)])
    assert again.returncode == 2 and "already exists" in again.stderr

    import io

    stdout = io.StringIO()
    chat_loop(str(run), max_new_tokens=4, stdin=io.StringIO("hello\n/reset\nagain\n/exit\n"), stdout=stdout)
    assert stdout.getvalue().count("model> ") == 2

    result = pipeline.evaluate_run(run, max_samples=2)
    assert {"test_file", "settings", "base", "tuned"} <= set(result)
    assert (run / "eval-1.json").exists() and (run / "eval.json").exists()


@pytest.mark.parametrize("method", ["lora", "full"])
def test_gradient_checkpointing_gives_the_same_trajectory(make_config, method):
    plain = pipeline.train(make_config(f"method.name={method}", "eval.compare_base=false")).run_dir
    checkpointed = pipeline.train(
        make_config(f"method.name={method}", "eval.compare_base=false", "train.gradient_checkpointing=true")
    ).run_dir
    assert losses(checkpointed) == pytest.approx(losses(plain), rel=1e-4)
