"""Causal-LM loss normalised by trained tokens, computed only where there is something to learn.

Averaging per micro-batch and then over accumulation steps weights a micro-batch of 10 answer tokens
like one of 1000, so the result depends on how examples fall into batches (the gradient-accumulation
bug fixed in transformers 4.46; torchtune #2307). We sum token losses and divide once by the number of
loss-bearing tokens in the whole optimizer step, across micro-batches and processes.

The output layer is the largest matmul of a small LM (SmolLM2: 49k x 576) and a chat batch is mostly
prompt and padding. Two paths compute the loss:

- chunked (`train.loss_chunk_tokens` > 0, the default): the model runs with no logits at all; the
  decoder's final hidden states are taken by a forward hook, gathered at each row's own loss-bearing
  positions (the labels mask), and the output layer + cross-entropy run on chunks of that many tokens
  inside one autograd function that computes each chunk's gradients as it goes (the scheme of Liger's
  fused linear cross-entropy and Apple's Cut Cross-Entropy, in plain torch). No tensor of tokens x
  vocabulary exists in forward or backward, nothing of the logits is kept for backward, and nothing
  is recomputed. Logit transforms after the output layer (Cohere's `logit_scale`, Granite's
  `logits_scaling`, Gemma 2's final soft-capping) are applied; once per model the result is checked
  against the model's own logits, and a model that transforms them some other way falls back.
- logits_to_keep: logits only at positions where some row of the batch has a target (transformers'
  `logits_to_keep`, positions shared by the batch); the fallback for models without the split, models
  under FSDP/DeepSpeed (their parameters are gathered only inside the wrapper's forward) and
  `loss_chunk_tokens: 0`.
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tunesmith.data.chat_template import IGNORE_INDEX
from tunesmith.models.attention import VARLEN_ATTENTION, attention_implementation, varlen_kwargs
from tunesmith.models.unwrap import innermost_model

# What an unconfigured model gets (a loss computed outside `pipeline.train`); the run's own comes from
# `train.loss_chunk_tokens` through `configure_loss`.
DEFAULT_LOSS_CHUNK_TOKENS = 1024
_CHUNK_ATTR = "_tunesmith_loss_chunk_tokens"
_VERIFIED_ATTR = "_tunesmith_chunked_loss_verified"  # None: not checked yet; True/False: the check's verdict


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


def accepts_logits_to_keep(model) -> bool:
    return "logits_to_keep" in inspect.signature(innermost_model(model).forward).parameters


def configure_loss(model, chunk_tokens: int) -> None:
    """Set the run's `train.loss_chunk_tokens` on the model (0 turns the chunked path off). Kept on the
    innermost model, so the setting survives accelerate's and PEFT's wrappers and every caller of the
    task's loss (training, validation, the batch-size probe) uses it."""
    inner = innermost_model(model)
    setattr(inner, _CHUNK_ATTR, int(chunk_tokens))
    setattr(inner, _VERIFIED_ATTR, None)


# ---------------------------------------------------------------------------------------------------
# The output head, split from the decoder


@dataclass
class OutputHead:
    decoder: torch.nn.Module  # its output's first item is the final hidden states (after the last norm)
    lm_head: torch.nn.Module  # called as a module, so PEFT wrappers on it and tied weights just work
    scale: float = 1.0  # multiplies the logits (Cohere logit_scale, 1 / Granite logits_scaling)
    softcap: float | None = None  # Gemma 2: cap * tanh(logits / cap)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        # The transforms in the order and dtype the model applies them, so the two paths agree bit for bit.
        logits = self.lm_head(hidden)
        if self.scale != 1.0:
            logits = logits * self.scale
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


def _wrappers(model) -> list[str]:
    names = []
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        names.append(type(model).__name__)
        model = model.module
    return names


def output_head(model) -> OutputHead | None:
    """The decoder / output-layer split of a causal LM, or None where the chunked path cannot run."""
    if any(name != "DistributedDataParallel" for name in _wrappers(model)):
        return None  # FSDP, DeepSpeed: the head's weights exist only inside the wrapper's forward
    inner = innermost_model(model)
    if type(inner).__name__.startswith("FSDP"):  # FSDP2's fully_shard renames the class
        return None
    if not accepts_logits_to_keep(inner) or not hasattr(inner, "get_decoder"):
        return None
    try:
        decoder, lm_head = inner.get_decoder(), inner.get_output_embeddings()
    except (AttributeError, NotImplementedError, ValueError):
        return None
    if decoder is None or decoder is inner or not isinstance(lm_head, torch.nn.Module):
        return None
    config = getattr(inner, "config", None)
    scale = 1.0
    if isinstance(getattr(inner, "logit_scale", None), (int, float)):
        scale *= float(inner.logit_scale)
    logits_scaling = getattr(config, "logits_scaling", None)
    if isinstance(logits_scaling, (int, float)) and logits_scaling:
        scale /= float(logits_scaling)
    softcap = getattr(config, "final_logit_softcapping", None)
    return OutputHead(decoder, lm_head, scale, float(softcap) if softcap else None)


# ---------------------------------------------------------------------------------------------------
# Chunked output layer + cross-entropy


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """sum(cross_entropy(head(hidden), targets)), chunk by chunk. Each chunk's gradients (towards the
    hidden states and the head's trainable parameters) are computed in forward while its logits exist
    and kept, scaled by the incoming gradient in backward: one head forward and backward per chunk and
    no chunk x vocabulary tensor outlives its chunk."""

    @staticmethod
    def forward(ctx, hidden, targets, head, chunk, *params):
        need_hidden = ctx.needs_input_grad[0]
        grad_hidden = torch.zeros_like(hidden) if need_hidden else None
        grad_params = [torch.zeros_like(p) for p in params]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            piece = hidden[start : start + chunk].detach().requires_grad_(need_hidden)
            with torch.enable_grad():
                loss = F.cross_entropy(head.logits(piece).float(), targets[start : start + chunk], reduction="sum")
            wrt = ([piece] if need_hidden else []) + list(params)
            grads = list(torch.autograd.grad(loss, wrt, allow_unused=True))
            if need_hidden:
                grad_hidden[start : start + chunk] = grads.pop(0)
            for acc, grad in zip(grad_params, grads):
                if grad is not None:
                    acc += grad
            total += loss.detach()
        ctx.save_for_backward(*([grad_hidden] if need_hidden else []), *grad_params)
        ctx.need_hidden = need_hidden
        return total

    @staticmethod
    def backward(ctx, grad_output):
        saved = list(ctx.saved_tensors)
        grad_hidden = saved.pop(0) if ctx.need_hidden else None
        if grad_hidden is not None:
            grad_hidden = grad_hidden * grad_output.to(grad_hidden.dtype)
        return (grad_hidden, None, None, None, *[g * grad_output.to(g.dtype) for g in saved])


def chunked_cross_entropy_sum(
    head: OutputHead, hidden: torch.Tensor, targets: torch.Tensor, chunk: int
) -> torch.Tensor:
    """Sum of token cross-entropies of `head.logits(hidden)` against `targets` ([N, H] and [N])."""
    params = [p for p in head.lm_head.parameters() if p.requires_grad]
    if torch.is_grad_enabled() and (hidden.requires_grad or params):
        return _ChunkedLinearCrossEntropy.apply(hidden, targets, head, chunk, *params)
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for start in range(0, hidden.shape[0], chunk):  # validation: the same chunks, no gradients
        total += F.cross_entropy(
            head.logits(hidden[start : start + chunk]).float(), targets[start : start + chunk], reduction="sum"
        )
    return total


def _matches_model_logits(head: OutputHead, hidden: torch.Tensor, logits: torch.Tensor) -> bool:
    with torch.no_grad():
        ours = head.logits(hidden).float()
    theirs = logits.detach().float()
    return ours.shape == theirs.shape and bool(
        torch.allclose(ours, theirs, rtol=1e-3, atol=1e-3 * max(1.0, float(theirs.abs().max())))
    )


def _chunked_loss_sum(model, head: OutputHead, inputs: dict, labels: torch.Tensor, chunk: int):
    """The chunked path, or None when this model's logits are not reproduced (then the caller falls back)."""
    inner = innermost_model(model)
    verified = getattr(inner, _VERIFIED_ATTR, None)
    # 1. One forward through every wrapper (DDP's gradient sync, PEFT's adapters), with the hidden states
    #    taken at the decoder's output and no logits computed, except a first and a last position of
    #    each row on the model's first call, to check the split against the model's own logits.
    captured = []
    handle = head.decoder.register_forward_hook(lambda module, args, output: captured.append(output[0]))
    width = labels.shape[1]
    check = torch.tensor([0, width - 1] if verified is None else [], dtype=torch.long, device=labels.device)
    try:
        logits = model(**inputs, logits_to_keep=check).logits
    finally:
        handle.remove()
    hidden = captured[-1]
    if verified is None:
        verified = _matches_model_logits(head, hidden[:, check], logits)
        setattr(inner, _VERIFIED_ATTR, verified)
        if not verified:
            warnings.warn(
                f"{type(inner).__name__} transforms its logits in a way the chunked loss does not know; "
                "using logits at loss positions instead (set train.loss_chunk_tokens: 0 to silence this)",
                stacklevel=3,
            )
            return None
    # 2. Hidden states at each row's own loss-bearing positions: position t predicts label t+1. Virtual
    #    tokens of prompt tuning come first, so the inputs' own positions are the last `width`.
    hidden = hidden[:, hidden.shape[1] - width :]
    keep = labels[:, 1:] != IGNORE_INDEX
    selected = hidden[:, :-1][keep]
    # 3. Output layer + cross-entropy in chunks.
    return chunked_cross_entropy_sum(head, selected, labels[:, 1:][keep], chunk), keep.sum()


def causal_lm_loss_sum(
    model, input_ids, attention_mask, labels, position_ids=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`position_ids` restarting per example with `attention_mask` None is a packed batch (data/packing.py);
    without a KV cache transformers then keeps attention inside each example (a cache turns that off).
    One such row under a variable-length attention (FA2, train/padding_free.py) also gets the example
    boundaries as `cu_seq_lens_q/k`."""
    extra = {} if position_ids is None else {"position_ids": position_ids, "use_cache": False}
    if (
        position_ids is not None and position_ids.shape[0] == 1 and attention_implementation(model) in VARLEN_ATTENTION
    ):  # one row of several examples
        extra.update(varlen_kwargs(position_ids))
    chunk = getattr(innermost_model(model), _CHUNK_ATTR, DEFAULT_LOSS_CHUNK_TOKENS)
    head = (
        output_head(model) if chunk > 0 and getattr(innermost_model(model), _VERIFIED_ATTR, None) is not False else None
    )
    if head is not None:
        result = _chunked_loss_sum(
            model, head, dict(input_ids=input_ids, attention_mask=attention_mask, **extra), labels, chunk
        )
        if result is not None:
            return result
    # Positions counted from the right: prompt tuning's virtual tokens come first in the outputs (PEFT adds
    # them inside the forward pass, and not with its adapter switched off), the inputs' own are the last.
    width = input_ids.shape[1]
    if accepts_logits_to_keep(model):
        positions = loss_positions(labels)
        logits = model(
            input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=positions - width, **extra
        ).logits
        return token_loss_sum(logits, labels[:, positions + 1])
    logits = model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits
    return token_loss_sum(logits[:, -width:][:, :-1], labels[:, 1:])


def sequence_logps(model, input_ids, attention_mask, labels) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the log-probability of its labelled tokens, summed (float32), and their number ([rows] each).
    What preference losses compare; logits are computed only at positions where some row has a target."""
    width = input_ids.shape[1]
    positions = loss_positions(labels)
    targets = labels[:, positions + 1]
    if accepts_logits_to_keep(model):
        logits = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=positions - width).logits
    else:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, -width:][:, positions]
    keep = targets != IGNORE_INDEX
    logps = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (logps * keep).sum(dim=1), keep.sum(dim=1)
