"""Causal-LM loss normalised by trained tokens, computed only where there is something to learn.

Averaging per micro-batch and then over accumulation steps weights a micro-batch of 10 answer tokens
like one of 1000, so the result depends on how examples fall into batches (the gradient-accumulation
bug fixed in transformers 4.46; torchtune #2307). We sum token losses and divide once by the number of
loss-bearing tokens in the whole optimizer step, across micro-batches and processes.

The output layer is the largest matmul of a small LM (SmolLM2: 49k x 576) and a chat batch is mostly
prompt and padding; `loss_positions` lets the model compute logits only at positions whose next token
carries loss (transformers' `logits_to_keep`), which also never materialises the full logits tensor.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

from tunesmith.data.chat_template import IGNORE_INDEX


def loss_positions(labels: torch.Tensor) -> torch.Tensor:
    """Sequence positions t (shared by the batch) where some row's token t+1 carries loss."""
    return (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)


def token_loss_sum(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of cross-entropies over labelled targets, their number); logits[:, i] predicts targets[:, i]."""
    keep = targets != IGNORE_INDEX
    loss_sum = F.cross_entropy(logits[keep].float(), targets[keep], reduction="sum")
    return loss_sum, keep.sum()


def count_trained_tokens(labels: torch.Tensor) -> int:
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def innermost_model(model):
    """The transformers model under DDP/FSDP (`.module`) and PEFT (`.base_model.model`) wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif hasattr(model, "get_base_model"):
            model = model.get_base_model()
        else:
            return model


def accepts_logits_to_keep(model) -> bool:
    return "logits_to_keep" in inspect.signature(innermost_model(model).forward).parameters


def causal_lm_loss_sum(model, input_ids, attention_mask, labels) -> tuple[torch.Tensor, torch.Tensor]:
    if accepts_logits_to_keep(model):
        positions = loss_positions(labels)
        logits = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=positions).logits
        return token_loss_sum(logits, labels[:, positions + 1])
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    return token_loss_sum(logits[:, :-1], labels[:, 1:])
