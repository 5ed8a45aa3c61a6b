"""The shared maths: schedules and token-normalised loss under gradient accumulation."""

from __future__ import annotations

import math

import pytest
import torch

from tunesmith.train.loss import causal_lm_loss_sum, loss_positions, token_loss_sum
from tunesmith.train.schedule import lr_factor


def test_warmup_then_cosine_reaches_zero():
    factors = [lr_factor(s, 100, 10, "cosine") for s in range(101)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0)
    assert factors[55] == pytest.approx(0.5, abs=1e-9)
    assert factors[100] == pytest.approx(0.0, abs=1e-12)


def test_linear_and_constant():
    assert lr_factor(50, 100, 0, "linear") == pytest.approx(0.5)
    assert lr_factor(99, 100, 0, "constant") == 1.0


def test_token_loss_sum_matches_mean_cross_entropy():
    logits = torch.randn(2, 5, 11)
    targets = torch.tensor([[1, 2, -100, -100, -100], [3, 4, 5, 6, -100]])
    total, count = token_loss_sum(logits, targets)
    keep = targets != -100
    expected = torch.nn.functional.cross_entropy(logits[keep], targets[keep])
    assert int(count) == 6
    assert float(total / count) == pytest.approx(float(expected), rel=1e-6)


def test_loss_positions_cover_every_labelled_next_token():
    labels = torch.tensor([[-100, -100, 7, 8, -100], [-100, 5, -100, -100, -100]])
    assert loss_positions(labels).tolist() == [0, 1, 2]


def test_logits_only_at_loss_positions_equal_full_logits(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    ids = torch.randint(0, 1000, (2, 12))
    labels = torch.full_like(ids, -100)
    labels[0, 5:9] = ids[0, 5:9]
    labels[1, 8:12] = ids[1, 8:12]
    mask = torch.ones_like(ids)
    fast_sum, fast_n = causal_lm_loss_sum(model, ids, mask, labels)
    full = model(input_ids=ids, attention_mask=mask).logits
    slow_sum, slow_n = token_loss_sum(full[:, :-1], labels[:, 1:])
    assert int(fast_n) == int(slow_n) == 8
    assert float(fast_sum) == pytest.approx(float(slow_sum), rel=1e-5)


def test_accumulation_gives_the_gradient_of_the_whole_batch(tiny_llama_dir):
    """Two micro-batches with very different answer lengths, normalised by the step's token count,
    give exactly the gradient of the two examples in one batch (not the mean of two means)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    ids = torch.randint(0, 1000, (2, 16))
    labels = torch.full_like(ids, -100)
    labels[0, 14:] = ids[0, 14:]  # 2 answer tokens
    labels[1, 4:] = ids[1, 4:]  # 12 answer tokens
    mask = torch.ones_like(ids)

    def grads():
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).clone()

    total, n = causal_lm_loss_sum(model, ids, mask, labels)
    (total / n).backward()
    whole = grads()
    model.zero_grad()
    step_tokens = int((labels[:, 1:] != -100).sum())
    for row in range(2):
        part, _ = causal_lm_loss_sum(model, ids[row : row + 1], mask[row : row + 1], labels[row : row + 1])
        (part / step_tokens).backward()
    accumulated = grads()
    assert torch.allclose(whole, accumulated, atol=1e-6)
    assert math.isfinite(float(whole.norm()))
