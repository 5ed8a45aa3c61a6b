"""Each preference loss against TRL's own code, on the same log-probabilities, to 1e-5.

TRL computes the DPO and KTO losses inside its trainers' `_compute_loss`, after a forward pass; these tests
run that code with a stand-in for the model that returns fixed per-token log-probabilities (a table indexed
by the label token), so TRL and tunesmith see the same numbers. SimPO and ORPO are methods of TRL's CPO
and ORPO trainers that take log-probabilities directly.
"""

from __future__ import annotations

import importlib
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from tunesmith.train.preference_loss import AnswerLogps, kto_losses, pair_losses

# TRL is a test-only dependency (the dev extra): the reference each loss is checked against. Imported as modules,
# not skipped when missing: a TRL that moved a trainer must fail here, not pass by skipping.
trl_dpo = importlib.import_module("trl.trainer.dpo_trainer")
trl_kto = importlib.import_module("trl.trainer.kto_trainer")
trl_cpo = importlib.import_module("trl.experimental.cpo.cpo_trainer")
trl_orpo = importlib.import_module("trl.experimental.orpo.orpo_trainer")

VOCAB, WIDTH, PAIRS = 50, 9, 6


class TableModel(torch.nn.Module):
    """A causal LM's log-probabilities without the LM: the log-probability of label token v is table[v]."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = table

    def forward(self, input_ids, labels, **_):
        targets = labels[:, 1:]
        logps = torch.where(targets != -100, self.table[targets.clamp(min=0)], torch.zeros(()))
        zeros = torch.zeros_like(logps)
        return SimpleNamespace(
            log_probs=logps, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool(), log_sum_sq_probs=zeros
        )


def _accelerator():
    return SimpleNamespace(device=torch.device("cpu"), gather=lambda x: x, gather_for_metrics=lambda x: x)


def _trainer_state(**settings) -> SimpleNamespace:
    return SimpleNamespace(
        accelerator=_accelerator(),
        aux_loss_enabled=False,
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type="reverse_kl",
        use_weighting=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
        **settings,
    )


def _answers(generator: torch.Generator, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and a completion mask: a prompt of 2-4 tokens, then an answer of 1+ tokens, then padding."""
    ids = torch.randint(0, VOCAB, (rows, WIDTH), generator=generator)
    mask = torch.zeros(rows, WIDTH, dtype=torch.long)
    for row in range(rows):
        start = int(torch.randint(2, 5, (1,), generator=generator))
        end = int(torch.randint(start + 1, WIDTH + 1, (1,), generator=generator))
        mask[row, start:end] = 1
    return ids, mask


def _ours(table: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probabilities and token counts of each row's answer, as tunesmith's task computes them."""
    return (table[ids] * mask).sum(1), mask.sum(1)


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(3)
    table = -torch.rand(VOCAB, generator=generator, dtype=torch.float64) * 3
    ids, mask = _answers(generator, 2 * PAIRS)
    ref = -torch.rand(2 * PAIRS, generator=generator, dtype=torch.float64) * 20
    return table, ids, mask, ref


@pytest.mark.parametrize(
    ("loss_type", "label_smoothing"), [("sigmoid", 0.0), ("sigmoid", 0.2), ("ipo", 0.0), ("hinge", 0.0)]
)
def test_dpo_family_matches_trl(batch, loss_type, label_smoothing):
    table, ids, mask, ref = batch
    beta = 0.3
    inputs = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "completion_mask": mask,
        "ref_chosen_logps": ref[:PAIRS],
        "ref_rejected_logps": ref[PAIRS:],
    }
    model = TableModel(table).train()
    if label_smoothing:
        # TRL 1.x's DPO trainer dropped the smoothed sigmoid (conservative DPO); its CPO trainer keeps the formula,
        # which on the two log-ratios is DPO's.
        state = SimpleNamespace(
            alpha=0.0, beta=beta, label_smoothing=label_smoothing, loss_type="sigmoid", accelerator=_accelerator()
        )
        logps, _ = _ours(table, ids, mask)
        trl_losses, *_ = trl_cpo.CPOTrainer.cpo_loss(state, logps[:PAIRS] - ref[:PAIRS], logps[PAIRS:] - ref[PAIRS:])
        expected = trl_losses.mean()
    else:
        state = _trainer_state(model=model, beta=beta, loss_types=[loss_type], loss_weights=[1.0])
        expected = trl_dpo.DPOTrainer._compute_loss(state, model, inputs, return_outputs=False)
    logps, tokens = _ours(table, ids, mask)
    # TRL counts completion tokens by the unshifted mask; the table model has the shifted ones (the first token
    # of a row is never a target, and no answer starts there).
    ours = pair_losses(
        loss_type,
        AnswerLogps(logps[:PAIRS], logps[PAIRS:], tokens[:PAIRS], tokens[PAIRS:], ref[:PAIRS], ref[PAIRS:]),
        beta=beta,
        label_smoothing=label_smoothing,
    )
    torch.testing.assert_close(ours.losses.mean(), expected.to(ours.losses.dtype), rtol=0, atol=1e-5)
    if not label_smoothing:  # the rewards TRL logs
        metrics = state._metrics["train"]
        assert ours.chosen_rewards.mean().item() == pytest.approx(metrics["rewards/chosen"][-1], abs=1e-5)
        assert ours.rejected_rewards.mean().item() == pytest.approx(metrics["rewards/rejected"][-1], abs=1e-5)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_simpo_matches_trl(batch, label_smoothing):
    table, ids, mask, _ = batch
    beta, gamma = 2.0, 0.7
    logps, tokens = _ours(table, ids, mask)
    averages = logps / tokens
    state = SimpleNamespace(
        alpha=0.0,
        beta=beta,
        label_smoothing=label_smoothing,
        loss_type="simpo",
        simpo_gamma=gamma,
        accelerator=_accelerator(),
    )
    # TRL's CPO trainer is given the per-token averages when loss_type is simpo (its get_batch_logps average_log_prob).
    expected, chosen_rewards, _ = trl_cpo.CPOTrainer.cpo_loss(state, averages[:PAIRS], averages[PAIRS:])
    ours = pair_losses(
        "simpo",
        AnswerLogps(logps[:PAIRS], logps[PAIRS:], tokens[:PAIRS], tokens[PAIRS:]),
        beta=beta,
        label_smoothing=label_smoothing,
        simpo_gamma=gamma,
    )
    torch.testing.assert_close(ours.losses, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.chosen_rewards, chosen_rewards, rtol=0, atol=1e-5)


def test_orpo_matches_trl(batch):
    table, ids, mask, _ = batch
    beta = 0.25
    logps, tokens = _ours(table, ids, mask)
    averages = logps / tokens
    state = SimpleNamespace(beta=beta, accelerator=_accelerator())
    # TRL's ORPO returns beta * log sigmoid(log odds) and subtracts its mean from the NLL: our term is its negative.
    trl_terms, chosen_rewards, rejected_rewards, *_ = trl_orpo.ORPOTrainer.odds_ratio_loss(
        state, averages[:PAIRS], averages[PAIRS:]
    )
    ours = pair_losses("orpo", AnswerLogps(logps[:PAIRS], logps[PAIRS:], tokens[:PAIRS], tokens[PAIRS:]), beta=beta)
    torch.testing.assert_close(ours.losses, -trl_terms.to(ours.losses.dtype), rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.chosen_rewards, chosen_rewards.to(ours.losses.dtype), rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.rejected_rewards, rejected_rewards.to(ours.losses.dtype), rtol=0, atol=1e-5)


def test_orpo_gradients_stay_finite_when_the_model_is_sure():
    """An answer whose every token has probability ~1 (average log-probability 0 or just below, in float32) must
    give a finite loss and finite gradients: log(1 - exp(0)) is -inf, and torch.where's untaken branch would
    still put NaN into the gradient."""
    sure = torch.tensor([0.0, -1e-9, -1e-4, -5.0], requires_grad=True)
    other = torch.full((4,), -2.0, requires_grad=True)
    ours = pair_losses("orpo", AnswerLogps(sure, other, torch.ones(4), torch.ones(4)), beta=0.1)
    ours.losses.sum().backward()
    assert torch.isfinite(ours.losses).all() and torch.isfinite(sure.grad).all() and torch.isfinite(other.grad).all()


def test_kto_matches_trl(batch):
    table, ids, mask, ref = batch
    rows = 2 * PAIRS
    generator = torch.Generator().manual_seed(5)
    kl_ids, kl_mask = _answers(generator, rows)
    desirable = torch.tensor([True, False, True, True, False, False, True, False, True, False, False, True])
    ref_kl = -torch.rand(rows, generator=generator, dtype=torch.float64) * 20
    beta, w_good, w_bad = 0.2, 1.0, 1.33
    inputs = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "completion_mask": mask,
        "KL_input_ids": kl_ids,
        "KL_attention_mask": torch.ones_like(kl_ids),
        "KL_completion_mask": kl_mask,
        "label": desirable,
        "ref_logps": ref,
        "ref_KL_logps": ref_kl,
    }
    model = TableModel(table).train()
    state = _trainer_state(
        model=model,
        beta=beta,
        loss_type="kto",
        calculate_KL=True,
        desirable_weight=w_good,
        undesirable_weight=w_bad,
    )
    # Bind the KL helper to the stand-in state, as the trainer's own method would be.
    state._compute_kl_logps = lambda m, b: trl_kto.KTOTrainer._compute_kl_logps(state, m, b)
    expected = trl_kto.KTOTrainer._compute_loss(state, model, inputs, return_outputs=False)
    logps, _ = _ours(table, ids, mask)
    kl_logps, _ = _ours(table, kl_ids, kl_mask)
    ours = kto_losses(
        logps,
        ref,
        desirable,
        (kl_logps - ref_kl).mean(),
        beta=beta,
        desirable_weight=w_good,
        undesirable_weight=w_bad,
    )
    torch.testing.assert_close(ours.losses.mean(), expected.to(ours.losses.dtype), rtol=0, atol=1e-5)
    metrics = state._metrics["train"]
    assert ours.chosen_rewards.mean().item() == pytest.approx(metrics["rewards/chosen"][-1], abs=1e-5)
    assert metrics["kl"][-1] == pytest.approx(float((kl_logps - ref_kl).mean().clamp(min=0)), abs=1e-6)


def test_the_reference_is_required_where_the_loss_compares_with_it():
    logps = AnswerLogps(torch.zeros(2), torch.zeros(2), torch.ones(2), torch.ones(2))
    with pytest.raises(ValueError, match="reference"):
        pair_losses("sigmoid", logps, beta=0.1)
