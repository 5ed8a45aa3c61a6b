"""Causal-LM loss normalised by trained tokens.

Averaging per micro-batch and then over accumulation steps weights a micro-batch of 10 answer tokens
like one of 1000, so the result depends on how examples fall into batches (the gradient-accumulation
bug fixed in transformers 4.46; torchtune #2307). We sum token losses and divide once by the number of
loss-bearing tokens in the whole optimizer step, across micro-batches and processes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tunesmith.data.chat_template import IGNORE_INDEX


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of next-token cross-entropies over labelled positions, number of those positions)."""
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    # Only loss-bearing positions go through the softmax: a chat batch is mostly prompt and padding.
    picked = logits[:, :-1][keep].float()
    loss_sum = F.cross_entropy(picked, targets[keep], reduction="sum")
    return loss_sum, keep.sum()


def count_trained_tokens(labels: torch.Tensor) -> int:
    return int((labels[:, 1:] != IGNORE_INDEX).sum())
