"""ONNX export of tiny encoder classifier and tagger runs (BERT, RoBERTa, DeBERTa-v2 built from configs, the
real MiniLM tokenizer, real data): parity in onnxruntime against the run's model on its test split, free batch
and sequence axes, the adapter merged before tracing, the int8 copy, and the refusal of generative runs."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import EXAMPLES, TINY_ENCODER, save_tiny_encoder, write_debian_sections

from tunesmith import pipeline
from tunesmith.config import load_config
from tunesmith.export import onnx as onnx_export
from tunesmith.export.parity import parity_inputs

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

COPYRIGHT = EXAMPLES / "data" / "copyright_entities.jsonl"


@pytest.fixture(scope="module")
def tiny_encoders(tmp_path_factory, minilm_tokenizer):
    """Base encoders (no head) saved with the MiniLM tokenizer; the task adds the head when it loads them."""
    from transformers import BertConfig, DebertaV2Config, LlamaConfig, RobertaConfig

    small = dict(vocab_size=len(minilm_tokenizer), **TINY_ENCODER)
    configs = {
        "bert": BertConfig(**small),
        "roberta": RobertaConfig(**small, pad_token_id=minilm_tokenizer.pad_token_id),
        "deberta": DebertaV2Config(**small),
        # A decoder with a classifier head (the last real token's state is scored): also a `classifier` run.
        "llama": LlamaConfig(**small, num_key_value_heads=1, pad_token_id=minilm_tokenizer.pad_token_id),
    }
    return {
        name: save_tiny_encoder(tmp_path_factory.mktemp(name), config, minilm_tokenizer)
        for name, config in configs.items()
    }


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    """Four Debian sections (a classifier learns them in a few steps) and 120 tagged copyright records."""
    folder = tmp_path_factory.mktemp("data")
    sections = write_debian_sections(folder / "sections.csv", 160)
    copyright = folder / "copyright.jsonl"
    copyright.write_text("\n".join(COPYRIGHT.read_text().splitlines()[:120]) + "\n")
    return {"text-classification": sections, "token-classification": copyright}


def _train(tmp_path, task, model, data, *overrides):
    config = load_config(
        None,
        [
            f"task={task}",
            f"model.name={model}",
            f"data.train={data}",
            "data.max_length=48",
            f"output.dir={tmp_path / 'runs'}",
            "train.batch_size=16",
            "train.max_steps=6",
            "train.eval_every=6",
            "train.learning_rate=1e-2",
            "train.warmup_ratio=0",
            "train.precision=fp32",
            "method.name=full",
            *overrides,
        ],
    )
    return pipeline.train(config).run_dir


def _export(run, tmp_path, **options):
    tuned = pipeline.load_tuned(run, for_merge=True)
    output = tmp_path / "onnx"
    output.mkdir()
    written = onnx_export.write(tuned, run, output, options)
    result = onnx_export.parity(tuned, output, parity_inputs(tuned, run), options)
    return tuned, output, written, result


def _within_tolerance(result) -> None:
    assert result.passed, result.detail
    assert result.metrics["max_abs_error"] <= 1e-3 and result.metrics["top1_agreement"] == 1.0
    assert result.tolerance == {"max_abs_error": 1e-3, "min_top1_agreement": 1.0}


@pytest.mark.parametrize(
    ("task", "family"),
    [
        ("text-classification", "bert"),
        ("text-classification", "roberta"),
        ("text-classification", "deberta"),
        ("text-classification", "llama"),
        ("token-classification", "bert"),
        ("token-classification", "deberta"),
    ],
)
def test_export_matches_the_run_and_takes_any_batch_and_length(task, family, tiny_encoders, data_files, tmp_path):
    run = _train(tmp_path, task, tiny_encoders[family], data_files[task])
    tuned, output, written, result = _export(run, tmp_path)
    _within_tolerance(result)
    assert output / "model.onnx" in written and all(path.exists() for path in written)
    assert not (output / "model.int8.onnx").exists()
    saved = json.loads((output / "config.json").read_text())
    assert [saved["id2label"][str(i)] for i in range(len(tuned.meta["labels"]))] == tuned.meta["labels"]
    assert (output / "tokenizer.json").exists()

    # Free axes: a batch of 3 and a length other than the traced ones give the torch model's logits.
    session = onnx_export.session(output / "model.onnx")
    assert [i.shape for i in session.get_inputs()][0] == ["batch", "sequence"]
    names = {i.name for i in session.get_inputs()}
    # DeBERTa-v2 without type embeddings ignores token types: the graph has no such input.
    assert names == {"input_ids", "attention_mask"} | ({"token_type_ids"} if family in ("bert", "roberta") else set())
    texts = ["ODBC driver", "A game of chess for two players on one screen, with sound", "mail"]
    batch = dict(tuned.tokenizer(texts, padding=True, return_tensors="pt"))
    logits = onnx_export.run_session(session, batch)
    expected = onnx_export.reference_logits(tuned.model, batch)
    assert logits.shape == expected.shape and logits.shape[0] == 3
    if task == "token-classification":
        assert logits.shape[1] == batch["input_ids"].shape[1]
    assert (logits - expected).abs().max() < 1e-3


def test_lora_run_is_merged_and_int8_is_written_and_reported(tiny_encoders, data_files, tmp_path):
    data = data_files["text-classification"]
    run = _train(tmp_path, "text-classification", tiny_encoders["bert"], data, "method.name=lora", "method.r=4")
    tuned, output, written, result = _export(run, tmp_path, quantize="int8")
    # The reference is the unmerged adapter model: parity covers the merge as well as the tracing.
    assert hasattr(tuned.model, "merge_and_unload")
    _within_tolerance(result)
    assert output / "model.int8.onnx" in written and (output / "model.int8.onnx").stat().st_size > 0
    assert 0.0 <= result.metrics["int8_top1_agreement"] <= 1.0 and "int8" in result.detail
    # The classifier batch carries its references: both models' accuracy on the same examples.
    assert 0.0 <= result.metrics["int8_accuracy"] <= 1.0 and 0.0 <= result.metrics["accuracy"] <= 1.0
    # int8 agreement is reported, never failed on.
    assert result.passed


def test_generative_and_diffusion_runs_are_refused_with_a_reason(tiny_encoders, data_files):
    chat = load_config(None, ["task=chat", "model.name=smollm2-135m-instruct", "data.train=x.jsonl"])
    reason = onnx_export.unsupported(chat)
    assert reason is not None and "causal-lm" in reason and "--format merged" in reason and "gguf" in reason
    classifier = load_config(
        None,
        [
            "task=text-classification",
            f"model.name={tiny_encoders['bert']}",
            f"data.train={data_files['text-classification']}",
        ],
    )
    assert onnx_export.unsupported(classifier) is None


def test_unknown_quantisation_is_a_user_error(tiny_encoders, data_files, tmp_path):
    from tunesmith.errors import TunesmithError

    with pytest.raises(TunesmithError, match="int8"):
        onnx_export._quantize_option({"quantize": "q4_0"})


@pytest.fixture(scope="module")
def tiny_vision(tmp_path_factory):
    """A tiny ViT and ResNet with a 32-pixel processor, and class folders of noisy single-colour images."""
    import numpy as np
    from PIL import Image
    from transformers import AutoModelForImageClassification, ResNetConfig, ViTConfig, ViTImageProcessor

    configs = {
        "vit": ViTConfig(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
        ),
        "resnet": ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic"),
    }
    paths = {}
    for name, config in configs.items():
        path = tmp_path_factory.mktemp(f"tiny-{name}")
        torch.manual_seed(0)
        AutoModelForImageClassification.from_config(config).save_pretrained(path)
        processor = ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
        processor.save_pretrained(path)
        paths[name] = path
    images = tmp_path_factory.mktemp("colours") / "images"
    rng = np.random.default_rng(0)
    for colour, rgb in {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}.items():
        (images / colour).mkdir(parents=True)
        for i in range(10):
            pixels = np.clip(np.array(rgb) + rng.normal(0, 40, (20, 20, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(images / colour / f"{i}.png")
    paths["images"] = images
    return paths


@pytest.mark.parametrize("kind", ["vit", "resnet"])
def test_image_classifier_exports_with_a_free_batch_axis(kind, tiny_vision, tmp_path):
    run = _train(
        tmp_path,
        "image-classification",
        tiny_vision[kind],
        tiny_vision["images"],
        "data.split=[0.6,0.2,0.2]",
        "train.batch_size=6",
        "train.learning_rate=3e-3",
    )
    tuned, output, written, result = _export(run, tmp_path)
    _within_tolerance(result)
    assert (output / "preprocessor_config.json") in written
    session = onnx_export.session(output / "model.onnx")
    (pixels,) = session.get_inputs()
    assert pixels.name == "pixel_values" and pixels.shape[0] == "batch"
    batch = {"pixel_values": torch.randn(5, 3, 32, 32)}
    logits = onnx_export.run_session(session, batch)
    assert logits.shape == (5, 3)
    assert (logits - onnx_export.reference_logits(tuned.model, batch)).abs().max() < 1e-3


@pytest.mark.e2e
def test_packaged_minilm_classifier_exports_within_tolerance(tmp_path):
    """The packaged MiniLM-L6 fine-tuned on the Debian sections example (shortened to 60 steps), exported
    with its int8 copy and checked on 64 test examples; prints the figures for the README's table."""
    config = load_config(EXAMPLES / "text_classification.yaml", [f"output.dir={tmp_path}", "train.max_steps=60"])
    run = pipeline.train(config).run_dir
    tuned = pipeline.load_tuned(run, for_merge=True)
    output = tmp_path / "onnx"
    output.mkdir()
    onnx_export.write(tuned, run, output, {"quantize": "int8"})
    inputs = parity_inputs(tuned, run, samples=64)
    result = onnx_export.parity(tuned, output, inputs, {"quantize": "int8"})
    print(result.detail, json.dumps(result.metrics))
    _within_tolerance(result)
    assert result.metrics["int8_top1_agreement"] > 0.8
    assert abs(result.metrics["int8_accuracy"] - result.metrics["accuracy"]) < 0.1
    assert (output / "model.int8.onnx").stat().st_size < 0.5 * (output / "model.onnx").stat().st_size


def test_quantised_base_runs_are_refused_before_loading():
    """QLoRA and 8-bit LoRA runs compute through a quantised base: their ONNX export is refused, pointing at
    the merged export, before any weights load."""
    for method in ("qlora", "lora-8bit"):
        config = load_config(None, ["task=text-classification", f"method.name={method}", "data.train=x.csv"])
        reason = onnx_export.unsupported(config)
        assert reason is not None and method in reason and "--format merged" in reason


def test_reranker_exports_pairs_with_their_token_types(tiny_encoders, tmp_path):
    """A cross-encoder on (query, passage, relevance) records: one score per pair, the passage in segment 1,
    so the graph's token_type_ids input matters; float relevance targets give no accuracy figure."""
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join((EXAMPLES / "data" / "section_queries.jsonl").read_text().splitlines()[:160]) + "\n")
    run = _train(
        tmp_path,
        "text-classification",
        tiny_encoders["bert"],
        data,
        "data.columns={text: query, text_pair: passage, score: relevance}",
    )
    tuned, output, _, result = _export(run, tmp_path)
    _within_tolerance(result)
    assert "accuracy" not in result.metrics
    session = onnx_export.session(output / "model.onnx")
    pairs = tuned.tokenizer(["mail servers", "games"], ["IMAP server", "chess"], padding=True, return_tensors="pt")
    assert pairs["token_type_ids"].any()
    batch = dict(pairs)
    logits = onnx_export.run_session(session, batch)
    assert logits.shape == (2, 1)
    assert (logits - onnx_export.reference_logits(tuned.model, batch)).abs().max() < 1e-3
