"""Preference losses: functions of the policy's (and the reference's) log-probabilities of answers.

Every loss takes per-example tensors (shape [pairs]) and returns per-example losses and the implicit
rewards that the run logs; the task (tasks/preference.py) computes the log-probabilities and sums the
losses. `logp` below is the log-probability of an answer given its prompt, summed over its tokens;
`avg` is that sum over the answer's token count (SimPO and ORPO compare per-token averages, and TRL's
IPO does too). Each loss is checked against TRL's code on the same log-probabilities in
tests/test_preference_loss.py.

  sigmoid  DPO, Rafailov et al. 2023 (arXiv:2305.18290) eq. 7; with `label_smoothing` e the conservative
           DPO of Mitchell 2023 (a share e of the labels assumed flipped):
           -(1-e) log s(b*d) - e log s(-b*d),  d = (logp_c - ref_c) - (logp_r - ref_r)
  ipo      IPO, Azar et al. 2023 (arXiv:2310.12036) eq. 17, on per-token log-ratios as TRL computes it
           (the IPO authors' normalisation, TRL's dpo_trainer.py):  (d_avg - 1/(2b))^2
  hinge    SLiC, Zhao et al. 2023 (arXiv:2305.10425):  max(0, 1 - b*d)
  simpo    SimPO, Meng et al. 2024 (arXiv:2405.14734) eq. 6, no reference model:
           -log s(b*(avg_c - avg_r) - gamma)   (label smoothing as for sigmoid)
  orpo     ORPO, Hong et al. 2024 (arXiv:2403.07691) eqs. 4-7, no reference model: the chosen answer's NLL
           plus b * -log s(log odds(avg_c) - log odds(avg_r)), odds(p) = p / (1 - p)
  kto      KTO, Ethayarajh et al. 2024 (arXiv:2402.01306) eq. 7, unpaired: desirable answers
           w_d * (1 - s(b*(r - z))), undesirable w_u * (1 - s(b*(z - r))), r = logp - ref, z the KL
           estimate (the batch's mismatched prompt/answer pairs, clamped at 0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Losses that compare the policy with a reference model; the others need none (no reference pass, no copy).
NEEDS_REFERENCE = {"sigmoid": True, "ipo": True, "hinge": True, "simpo": False, "orpo": False, "kto": True}
PAIRED = ("sigmoid", "ipo", "hinge", "simpo", "orpo")  # KTO's records are single answers marked good or bad


@dataclass
class AnswerLogps:
    """Per-example log-probabilities of the chosen and rejected answers ([pairs] each)."""

    chosen: torch.Tensor  # policy, summed over the answer's tokens
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor  # the answers' token counts
    rejected_tokens: torch.Tensor
    ref_chosen: torch.Tensor | None = None  # the reference model's (None for losses without one)
    ref_rejected: torch.Tensor | None = None

    def averages(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.chosen / self.chosen_tokens.clamp(min=1), self.rejected / self.rejected_tokens.clamp(min=1)


@dataclass
class PairLosses:
    losses: torch.Tensor  # [pairs], what is summed into the step's loss
    chosen_rewards: torch.Tensor  # [pairs], detached: the implicit rewards the run logs
    rejected_rewards: torch.Tensor


def _smoothed_sigmoid(logits: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    return -F.logsigmoid(logits) * (1 - label_smoothing) - F.logsigmoid(-logits) * label_smoothing


# An answer's average log-probability at 0 (the model is sure of every token) has infinite odds: kept just below.
_LOG1MEXP_MAX = -1e-6


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, stable at both ends (Maechler 2012: expm1 near 0, log1p far from it). Each
    branch sees only the inputs it is taken for (torch.where's other branch would still put inf * 0 = NaN into
    the gradient)."""
    x = x.clamp(max=_LOG1MEXP_MAX)
    near = x > -math.log(2)
    safe_near, safe_far = torch.where(near, x, -1.0), torch.where(near, -1.0, x)
    return torch.where(near, torch.log(-torch.expm1(safe_near)), torch.log1p(-torch.exp(safe_far)))


def pair_losses(
    loss_type: str, logps: AnswerLogps, *, beta: float, label_smoothing: float = 0.0, simpo_gamma: float = 0.5
) -> PairLosses:
    """The paired losses (PAIRED) of one batch; the rewards are beta times the log-ratio to the reference
    (DPO family), or beta times the answer's average log-probability per token (SimPO, ORPO), as TRL logs them."""
    if loss_type in ("sigmoid", "ipo", "hinge"):
        if logps.ref_chosen is None or logps.ref_rejected is None:
            raise ValueError(f"loss {loss_type} compares with a reference model; its log-probabilities are missing")
        chosen_ratio, rejected_ratio = logps.chosen - logps.ref_chosen, logps.rejected - logps.ref_rejected
        if loss_type == "sigmoid":
            losses = _smoothed_sigmoid(beta * (chosen_ratio - rejected_ratio), label_smoothing)
        elif loss_type == "hinge":
            losses = torch.relu(1 - beta * (chosen_ratio - rejected_ratio))
        else:
            per_token = chosen_ratio / logps.chosen_tokens.clamp(min=1) - rejected_ratio / logps.rejected_tokens.clamp(
                min=1
            )
            losses = (per_token - 1 / (2 * beta)) ** 2
        return PairLosses(losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach())
    chosen_avg, rejected_avg = logps.averages()
    if loss_type == "simpo":
        losses = _smoothed_sigmoid(beta * (chosen_avg - rejected_avg) - simpo_gamma, label_smoothing)
        return PairLosses(losses, beta * chosen_avg.detach(), beta * rejected_avg.detach())
    if loss_type == "orpo":
        chosen_avg, rejected_avg = chosen_avg.float(), rejected_avg.float()
        log_odds = (chosen_avg - rejected_avg) - (log1mexp(chosen_avg) - log1mexp(rejected_avg))
        # The odds-ratio term; the chosen answer's NLL is added per token by the task (it is an SFT term).
        losses = -beta * F.logsigmoid(log_odds)
        return PairLosses(losses, beta * chosen_avg.detach(), beta * rejected_avg.detach())
    raise ValueError(f"unknown paired loss {loss_type!r}; known: {', '.join(PAIRED)}")


def kto_losses(
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    kl: torch.Tensor,
    *,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> PairLosses:
    """KTO on single answers ([n] each; `desirable` is a bool mask): losses in the batch's order, and the
    rewards of the desirable and of the undesirable answers (TRL's chosen/rejected rewards)."""
    ratio = logps - ref_logps
    z = kl.detach().clamp(min=0)
    good = 1 - torch.sigmoid(beta * (ratio - z))
    bad = 1 - torch.sigmoid(beta * (z - ratio))
    losses = torch.where(desirable, desirable_weight * good, undesirable_weight * bad)
    rewards = beta * ratio.detach()
    return PairLosses(losses, rewards[desirable], rewards[~desirable])
