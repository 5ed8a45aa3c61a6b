"""`tunesmith export --format merged` (issue 16, part 1) and the framework every format plugs into: the
merged folder answers like the run's adapter model (parity in export.json), carries the tokenizer, chat
template and EOS, never overwrites, keeps files that fail parity, and QLoRA merges into 16-bit weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import train_chat_run

from tunesmith import pipeline
from tunesmith.errors import TunesmithError
from tunesmith.export import FORMATS, export_run, get_format
from tunesmith.export.cli import add_commands
from tunesmith.export.parity import compare_logits, judge, parity_inputs


def _train(folder: Path, model: Path, *overrides: str) -> Path:
    return train_chat_run(folder, model, "method.r=4", "eval.compare_base=false", *overrides)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_llama_dir) -> Path:
    return _train(tmp_path_factory.mktemp("export-lora"), tiny_llama_dir)


@pytest.fixture(scope="module")
def merged_export(lora_run, tmp_path_factory) -> tuple[Path, dict]:
    output = tmp_path_factory.mktemp("exports") / "merged"
    return output, export_run(lora_run, "merged", output, samples=4)


def test_merged_export_of_a_lora_chat_run_passes_parity_and_records_it(merged_export, capsys):
    output, record = merged_export
    saved = json.loads((output / "export.json").read_text())
    assert saved["passed"] is True and saved["format"] == "merged"
    metrics, tolerance = saved["parity"]["metrics"], saved["parity"]["tolerance"]
    assert metrics["max_rel_error"] <= tolerance["max_rel_error"] == 1e-3  # the tiny model is fp32
    assert metrics["top1_agreement"] >= tolerance["min_top1_agreement"]
    assert saved["parity"]["inputs"] == 4 and metrics["positions"] > 4
    assert saved["tunesmith_version"] and saved["exported_at"]
    assert "model.safetensors" in saved["files"]
    assert not any(p.name.startswith("merged.partial") for p in output.parent.iterdir())


def test_the_merged_folder_carries_tokenizer_chat_template_and_eos(merged_export, lora_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    output, _ = merged_export
    tuned = pipeline.load_tuned(lora_run)
    tokenizer = AutoTokenizer.from_pretrained(output)
    assert tokenizer.chat_template == tuned.tokenizer.chat_template and tokenizer.chat_template
    conversation = [{"role": "user", "content": "my order is late"}]
    assert tokenizer.apply_chat_template(conversation, tokenize=False) == tuned.tokenizer.apply_chat_template(
        conversation, tokenize=False
    )
    generation = GenerationConfig.from_pretrained(output)
    eos = generation.eos_token_id if isinstance(generation.eos_token_id, list) else [generation.eos_token_id]
    assert tokenizer.eos_token_id in eos
    assert generation.pad_token_id == tokenizer.pad_token_id
    model = AutoModelForCausalLM.from_pretrained(output)
    assert model.dtype == torch.float32  # the run's dtype kept
    assert not any("lora" in name for name, _ in model.named_parameters())


def test_an_existing_output_is_refused_and_left_as_it_was(lora_run, tmp_path):
    output = tmp_path / "taken"
    output.mkdir()
    (output / "mine.txt").write_text("keep me")
    with pytest.raises(TunesmithError, match="already exists"):
        export_run(lora_run, "merged", output)
    assert [p.name for p in output.iterdir()] == ["mine.txt"]


def test_a_failed_parity_raises_and_keeps_the_files(lora_run, tmp_path):
    output = tmp_path / "strict"
    # A tolerance no real export meets stands in for a broken one: the verdict and the kept files are the point.
    with pytest.raises(TunesmithError, match="parity") as failure:
        export_run(lora_run, "merged", output, samples=2, options={"tolerance": {"max_rel_error": 0.0}})
    assert str(output) in failure.value.fix
    record = json.loads((output / "export.json").read_text())
    assert record["passed"] is False and "max_rel_error" in record["parity"]["detail"]
    assert (output / "model.safetensors").exists()


def test_tampered_merged_weights_fail_the_parity_check(merged_export, lora_run, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    output, _ = merged_export
    broken = tmp_path / "broken"
    shutil.copytree(output, broken)
    weights = load_file(str(broken / "model.safetensors"))
    name = next(k for k in weights if "layers.1.mlp.down_proj" in k)
    weights[name] = weights[name] + 0.5
    save_file(weights, str(broken / "model.safetensors"), metadata={"format": "pt"})
    tuned = pipeline.load_tuned(lora_run)
    result = get_format("merged").parity(tuned, broken, parity_inputs(tuned, lora_run, 2), {})
    assert not result.passed and "max_rel_error" in result.detail


def test_an_unsupported_format_or_run_is_refused_before_loading(lora_run, tmp_path, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(pipeline, "load_tuned", no_loading)
    with pytest.raises(TunesmithError, match="unknown export format") as unknown:
        export_run(lora_run, "mergd", tmp_path / "a")
    assert "merged" in unknown.value.fix
    module = get_format("merged")
    monkeypatch.setattr(module, "unsupported", lambda config: "no logits to compare")
    with pytest.raises(TunesmithError, match="cannot be exported as merged: no logits"):
        export_run(lora_run, "merged", tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_the_registry_imports_no_format_module(monkeypatch):
    import sys

    assert list(FORMATS) == ["merged", "gguf", "onnx"]
    assert all(isinstance(path, str) for path in FORMATS.values())
    # The CLI's parser lists the formats without importing one.
    monkeypatch.delitem(sys.modules, "tunesmith.export.onnx", raising=False)
    import argparse

    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())
    args = parser.parse_args(["export", "runs/x", "--format", "onnx", "--output", "out", "--samples", "3"])
    assert (args.format, args.samples) == ("onnx", 3)
    assert "tunesmith.export.onnx" not in sys.modules


def test_compare_logits_counts_only_real_positions():
    reference = torch.tensor([[[1.0, 2.0], [3.0, 0.0]], [[0.0, 4.0], [9.0, 9.0]]])
    exported = reference.clone()
    exported[1, 1] = torch.tensor([0.0, 100.0])  # a padded position: ignored
    exported[0, 0, 1] = 1.5  # argmax still 1, error 0.5 over scale 2
    mask = torch.tensor([[1, 1], [1, 0]])
    figures = compare_logits(reference, exported, mask)
    assert figures["max_abs_error"] == pytest.approx(0.5) and figures["max_rel_error"] == pytest.approx(0.25)
    assert figures["top1_agreement"] == 1.0 and figures["positions"] == 3
    verdict = judge(figures, {"max_rel_error": 0.1, "min_top1_agreement": 0.99})
    assert not verdict.passed and "max_rel_error = 0.25, must be <= 0.1" in verdict.detail


def test_qlora_run_merges_into_16_bit_weights(tmp_path, tiny_llama_dir):
    from safetensors.torch import load_file

    run = _train(tmp_path, tiny_llama_dir, "method.name=qlora", "method.compute_dtype=float32")
    record = export_run(run, "merged", tmp_path / "merged", samples=4)
    weights = load_file(str(tmp_path / "merged" / "model.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}  # de-quantised 16-bit, no 4-bit packing
    assert not any("absmax" in k or "quant" in k for k in weights)
    assert record["passed"] and record["parity"]["dtype"] == "bfloat16"


def test_tunesmith_merge_of_a_qlora_run_is_the_same_merge_as_the_export(tmp_path, tiny_llama_dir):
    """`tunesmith merge` (and output.save_merged) folds a QLoRA adapter into the de-quantised base it trained
    against, as the merged export does, with the run's chat template and stop tokens: the same files."""
    from safetensors.torch import load_file

    from tunesmith.pipeline import merge

    run = _train(tmp_path, tiny_llama_dir, "method.name=qlora", "method.compute_dtype=float32")
    export_run(run, "merged", tmp_path / "exported", samples=4)
    merge(run, tmp_path / "merged")
    exported = load_file(str(tmp_path / "exported" / "model.safetensors"))
    merged = load_file(str(tmp_path / "merged" / "model.safetensors"))
    assert exported.keys() == merged.keys()
    assert all(torch.equal(exported[k], merged[k]) for k in exported)
    for name in ("chat_template.jinja", "generation_config.json"):
        assert (tmp_path / "merged" / name).read_text() == (tmp_path / "exported" / name).read_text()
