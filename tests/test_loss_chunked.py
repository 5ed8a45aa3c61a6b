"""The chunked output layer + cross-entropy (train/loss.py) against the plain logits path.

Same loss and gradients (full parameters, tied embeddings, LoRA through PEFT, logit transforms of
Gemma 2 / Cohere / Granite), a fallback for a model whose logits it cannot reproduce, and the largest
tensor of the loss part: chunk x vocabulary instead of tokens x vocabulary.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import read_jsonl
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from tunesmith.models.unwrap import innermost_model
from tunesmith.train.loss import (
    causal_lm_loss_sum,
    configure_loss,
    loss_positions,
    output_head,
    token_loss_sum,
)

VOCAB = 1000


def mixed_batch(vocab: int = VOCAB, width: int = 24, seed: int = 0):
    """Rows of different lengths (right padding) whose answers start at different offsets, so the
    positions shared by the batch are many more than the loss-bearing positions of each row."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (3, width), generator=generator)
    mask = torch.ones_like(ids)
    labels = torch.full_like(ids, -100)
    for row, (length, answer) in enumerate([(24, 3), (18, 10), (11, 7)]):
        mask[row, length:] = 0
        ids[row, length:] = 0
        labels[row, answer:length] = ids[row, answer:length]
    return ids, mask, labels


def plain_loss(model, ids, mask, labels):
    """The reference: the model's full logits, every position."""
    logits = model(input_ids=ids, attention_mask=mask).logits
    return token_loss_sum(logits[:, :-1], labels[:, 1:])


def loss_and_grads(model, fn, ids, mask, labels):
    model.zero_grad(set_to_none=True)
    total, count = fn(model, ids, mask, labels)
    (total / count).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return float(total.detach()), int(count), grads


def assert_same_loss_and_grads(model, ids, mask, labels, chunk: int):
    configure_loss(model, chunk)
    chunked = loss_and_grads(model, causal_lm_loss_sum, ids, mask, labels)
    assert innermost_model(model)._tunesmith_chunked_loss_verified is True  # the chunked path ran
    plain = loss_and_grads(model, plain_loss, ids, mask, labels)
    assert chunked[1] == plain[1] == int((labels[:, 1:] != -100).sum())
    assert chunked[0] == pytest.approx(plain[0], rel=1e-5)
    assert chunked[2].keys() == plain[2].keys() and chunked[2]
    for name, grad in plain[2].items():
        assert torch.allclose(chunked[2][name], grad, rtol=1e-4, atol=1e-6), name


def tiny(config_cls, seed: int = 0, **extra):
    from transformers import AutoModelForCausalLM

    config = config_cls(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
        **extra,
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, attn_implementation="eager").float()


def test_full_parameters_and_tied_embeddings_match_the_plain_path():
    from transformers import LlamaConfig

    ids, mask, labels = mixed_batch()
    for tied in (True, False):
        model = tiny(LlamaConfig, tie_word_embeddings=tied)
        assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
        assert_same_loss_and_grads(model, ids, mask, labels, chunk=5)  # 38 targets: 8 chunks, the last short


def test_lora_through_peft_matches_the_plain_path():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig

    model = tiny(LlamaConfig, tie_word_embeddings=True)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0))
    for name, param in model.named_parameters():  # a fresh adapter's B is zero: give A's gradients a path
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    ids, mask, labels = mixed_batch()
    assert_same_loss_and_grads(model, ids, mask, labels, chunk=7)
    # LoRA on the output layer itself (a PEFT-wrapped lm_head) also runs chunked.
    model = get_peft_model(
        tiny(LlamaConfig, tie_word_embeddings=False),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "lm_head"], lora_dropout=0.0),
    )
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    assert_same_loss_and_grads(model, ids, mask, labels, chunk=7)


@pytest.mark.parametrize(
    "family, extra",
    [
        ("gemma2", {"final_logit_softcapping": 0.5, "head_dim": 16}),  # Gemma 2: cap * tanh(logits / cap)
        ("cohere", {"logit_scale": 3.0}),  # Cohere: logits * logit_scale
        ("granite", {"logits_scaling": 0.25}),  # Granite: logits / logits_scaling
    ],
)
def test_logit_transforms_are_applied(family, extra):
    import transformers

    config_cls = {
        "gemma2": transformers.Gemma2Config,
        "cohere": transformers.CohereConfig,
        "granite": transformers.GraniteConfig,
    }[family]
    model = tiny(config_cls, **extra)
    ids, mask, labels = mixed_batch()
    head = output_head(model)
    with torch.no_grad():  # the transform changes the logits materially, so leaving it out would fail
        hidden = model.model(input_ids=ids, attention_mask=mask)[0]
        assert not torch.allclose(model.lm_head(hidden), head.logits(hidden), atol=1e-2)
    assert_same_loss_and_grads(model, ids, mask, labels, chunk=6)


def test_a_model_whose_logits_are_not_reproduced_falls_back():
    """RecurrentGemma soft-caps with its own `logits_soft_cap`, a transform the chunked path does not
    know: the first call's check against the model's own logits catches it and the loss stays right."""
    from transformers import RecurrentGemmaConfig

    config = RecurrentGemmaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        lru_width=64,
        attention_window_size=16,
        logits_soft_cap=0.5,
        pad_token_id=0,
        block_types=["recurrent", "attention"],
    )
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).float()
    assert output_head(model) is not None  # the split is found ...
    ids, mask, labels = mixed_batch()
    configure_loss(model, 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        total, count = causal_lm_loss_sum(model, ids, mask, labels)
    assert any("transforms its logits" in str(w.message) for w in caught)
    assert innermost_model(model)._tunesmith_chunked_loss_verified is False  # ... but not used
    with torch.no_grad():
        reference, n = plain_loss(model, ids, mask, labels)
    assert int(count) == int(n) and float(total.detach()) == pytest.approx(float(reference), rel=1e-5)


def test_chunking_off_and_validation_use_the_same_loss(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    ids, mask, labels = mixed_batch(vocab=2000)
    with torch.no_grad():
        configure_loss(model, 0)
        off, _ = causal_lm_loss_sum(model, ids, mask, labels)
        configure_loss(model, 4)
        chunked, _ = causal_lm_loss_sum(model, ids, mask, labels)  # no_grad: the validation pass
        positions = torch.arange(ids.shape[1]).expand_as(ids)
        with_positions, _ = causal_lm_loss_sum(model, ids, mask, labels, position_ids=positions)
    assert float(chunked) == pytest.approx(float(off), rel=1e-5)
    assert float(with_positions) == pytest.approx(float(off), rel=1e-5)


class LargestTensor(TorchDispatchMode):
    """Bytes of the largest tensor any operation allocates inside the block (forward and backward);
    views of an operation's inputs (a weight's transpose) allocate nothing and are not counted."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)
        }
        for item in tree_flatten(out)[0]:
            if isinstance(item, torch.Tensor) and item.untyped_storage().data_ptr() not in inputs:
                self.largest = max(self.largest, item.untyped_storage().nbytes())
        return out


def test_no_tokens_x_vocabulary_tensor_exists(tiny_llama_dir):
    """The real 49,152-token vocabulary, 8 rows of 64 tokens with answers at different offsets. The
    logits_to_keep path builds logits for every position some row needs; the chunked one never holds
    more than chunk x vocabulary, in forward or backward."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    model.get_input_embeddings().weight.requires_grad_(False)  # frozen (tied) output layer, as under LoRA
    vocab = model.config.vocab_size
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 2000, (8, 64), generator=generator)
    mask = torch.ones_like(ids)
    labels = torch.full_like(ids, -100)
    for row in range(8):
        start = 4 + 6 * row  # each row's answer: 12 tokens, at its own offset
        labels[row, start : start + 12] = ids[row, start : start + 12]
    targets = int((labels[:, 1:] != -100).sum())
    shared = len(loss_positions(labels))
    assert targets == 96 and shared == 54

    def largest(chunk: int) -> tuple[int, float]:
        configure_loss(model, chunk)
        model.zero_grad(set_to_none=True)
        with LargestTensor() as seen:
            total, count = causal_lm_loss_sum(model, ids, mask, labels)
            (total / count).backward()
        return seen.largest, float(total.detach())

    plain_bytes, plain_total = largest(0)
    chunked_bytes, chunked_total = largest(16)
    assert chunked_total == pytest.approx(plain_total, rel=1e-5)
    # The plain path holds (8 rows x 54 shared positions) x vocabulary fp32 logits at once.
    assert plain_bytes >= 8 * shared * vocab * 4
    # The chunked path: nothing larger than one chunk of logits.
    assert chunked_bytes <= 16 * vocab * 4
    assert chunked_bytes * 20 <= plain_bytes


def test_training_with_and_without_chunks_follows_the_same_curve(make_config):
    from tunesmith import pipeline

    curves = []
    for chunk in (0, 8):
        config = make_config(
            "method.name=lora",
            "method.r=4",
            "train.max_steps=3",
            "train.eval_every=0",
            "eval.compare_base=false",
            f"train.loss_chunk_tokens={chunk}",
            f"name=chunk{chunk}",
        )
        run = pipeline.train(config).run_dir
        curves.append([r["loss"] for r in read_jsonl(run / "metrics.jsonl") if "loss" in r])
    assert len(curves[0]) == 3
    assert curves[1] == pytest.approx(curves[0], rel=1e-4)
