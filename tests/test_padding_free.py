"""train.padding_free: a micro-batch as one row of its real tokens computes the padded batch's loss and
gradients, keeps attention inside each example (also under a sliding window), refuses what it cannot
do by name, never leaks its kernel name into a saved model, and trains a run as padded batches do."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import read_jsonl

from tunesmith import pipeline
from tunesmith.data.chat_template import IGNORE_INDEX, EncodedExample
from tunesmith.errors import TunesmithError
from tunesmith.models.attention import VARLEN_SDPA, varlen_kwargs
from tunesmith.tasks import chat
from tunesmith.train import padding_free


def test_flatten_keeps_real_tokens_restarts_positions_and_labels_no_boundary():
    examples = [
        EncodedExample([5, 6, 7], [5, 6, 7], "a"),
        EncodedExample([8, 9], [IGNORE_INDEX, 9], "b"),
        EncodedExample([10, 11, 12, 13], [IGNORE_INDEX, IGNORE_INDEX, 12, 13], "c"),
    ]
    batch = chat.collate(examples, 0)
    row = padding_free.flatten(batch)
    assert row["input_ids"].tolist() == [[5, 6, 7, 8, 9, 10, 11, 12, 13]]
    assert row["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 3]]
    # Each example's first position carries no label, so the shifted loss never crosses a boundary, and
    # the row has exactly the padded batch's targets.
    assert row["labels"].tolist() == [[IGNORE_INDEX, 6, 7, IGNORE_INDEX, 9, IGNORE_INDEX, IGNORE_INDEX, 12, 13]]
    assert chat.count_targets(row) == chat.count_targets(batch) == 5
    kwargs = varlen_kwargs(row["position_ids"])
    assert kwargs["cu_seq_lens_q"].tolist() == [0, 3, 5, 9] and kwargs["max_length_q"] == 4


def _tiny_model(kind: str, tokenizer):
    from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config

    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        attn_implementation="sdpa",
    )
    config = {
        "llama": lambda: LlamaConfig(**common),
        "qwen2": lambda: Qwen2Config(**common),
        # A window shorter than the examples: attention inside each example must also be local.
        "mistral-window": lambda: MistralConfig(sliding_window=16, **common),
    }[kind]()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.config.use_cache = False
    return model


@pytest.mark.parametrize("kind", ["llama", "qwen2", "mistral-window"])
def test_padding_free_loss_and_gradients_equal_the_padded_batch(kind, tokenizer, make_config):
    from tunesmith.data.prepare import prepare_splits

    config = make_config("data.train_on=all")
    splits = prepare_splits(config.data, config.seed, chat.normalise)
    encoded = chat.encode(splits.train[:6], tokenizer, config)
    # Mixed lengths (20 to 105 tokens), so the padded batch is mostly padding in its short rows.
    examples = [
        EncodedExample(e.input_ids[: 20 + 17 * i], e.labels[: 20 + 17 * i], e.where) for i, e in enumerate(encoded)
    ]
    batch = chat.collate(examples, tokenizer.pad_token_id)
    model = _tiny_model(kind, tokenizer)

    def loss_and_grads():
        model.zero_grad()
        loss, n = chat.loss_sum(model, batch)
        loss.backward()
        return float(loss.detach()), int(n), {name: p.grad.clone() for name, p in model.named_parameters()}

    padded = loss_and_grads()
    note = padding_free.enable(model, "auto", "chat", True)
    assert note is not None and "variable-length SDPA" in note and padding_free.is_enabled(model)
    assert model.config._attn_implementation == VARLEN_SDPA
    flat = loss_and_grads()
    assert flat[1] == padded[1] == chat.count_targets(batch)
    assert flat[0] == pytest.approx(padded[0], rel=1e-5)
    for name, grad in padded[2].items():
        assert torch.allclose(flat[2][name], grad, atol=1e-5, rtol=1e-4), (
            kind,
            name,
            float((flat[2][name] - grad).abs().max()),
        )
    # Padded batches (generation, a user's own call) still get SDPA with their mask: the same logits.
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        model.set_attn_implementation("sdpa")
        stock = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    real = batch["attention_mask"].bool()
    assert torch.allclose(logits[real], stock[real], atol=1e-5)


def test_padding_free_says_what_it_cannot_do(tokenizer, tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    model = _tiny_model("llama", tokenizer)
    assert padding_free.enable(model, False, "chat", True) is None and not padding_free.is_enabled(model)
    assert padding_free.enable(model, "auto", "text-classification", False) is None
    with pytest.raises(TunesmithError) as caught:
        padding_free.enable(model, True, "text-classification", False)
    assert caught.value.where == "train.padding_free" and "causal LM" in caught.value.message
    eager = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation="eager")
    assert padding_free.enable(eager, "auto", "chat", True) is None and not padding_free.is_enabled(eager)
    with pytest.raises(TunesmithError) as caught:
        padding_free.enable(eager, True, "chat", True)
    assert "'eager'" in caught.value.message and "sdpa" in caught.value.fix


def test_a_saved_model_names_stock_attention(tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    model = _tiny_model("llama", tokenizer)
    padding_free.enable(model, "auto", "chat", True)
    model.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert "tunesmith" not in json.dumps(saved)
    AutoModelForCausalLM.from_pretrained(tmp_path / "saved")  # a fresh process's transformers loads it as is


def test_a_padding_free_run_trains_as_the_padded_run(make_config, capsys):
    common = ("train.eval_every=0", "eval.compare_base=false", "train.load_best_at_end=false")
    flat_run = pipeline.train(make_config(*common))
    assert "padding-free batches:" in capsys.readouterr().out
    padded_run = pipeline.train(make_config(*common, "train.padding_free=false"))
    assert "padding-free" not in capsys.readouterr().out
    flat = [r["loss"] for r in read_jsonl(flat_run.run_dir / "metrics.jsonl") if "loss" in r]
    padded = [r["loss"] for r in read_jsonl(padded_run.run_dir / "metrics.jsonl") if "loss" in r]
    # The same examples, initialisation and order: step 1 agrees to float rounding, the rest closely.
    assert flat[0] == pytest.approx(padded[0], rel=1e-5)
    assert flat == pytest.approx(padded, rel=1e-3)
    assert flat_run.summary["trained_tokens"] == padded_run.summary["trained_tokens"]
