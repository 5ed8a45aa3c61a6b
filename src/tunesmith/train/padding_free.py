"""Padding-free micro-batches (`train.padding_free`): a micro-batch's examples laid end to end in one row.

Dynamic padding computes every example of a micro-batch at its longest one's length; on chat data with
mixed lengths a random micro-batch of 8 is a third to a half padding (bench/RESULTS.md), and every linear
layer, norm and activation of the model computes it. Packing (`data.packing`) removes it too, but changes
what a step is (rows of several examples), so its loss is not comparable at equal steps. Padding-free
keeps each micro-batch exactly as sampled (the same examples, the same loss normalisation, the same
gradient up to float rounding) and only leaves the padding out, as TRL's `padding_free` and
transformers' `DataCollatorWithFlattening` do:
  - the row holds the batch's real tokens in order; position ids restart at 0 for every example; each
    example's first position carries no label (the shifted loss never crosses an example boundary);
  - attention stays inside each example through the boundaries in `cu_seq_lens_q/k`, the keywords of
    FlashAttention-2's variable-length path (`models.attention.varlen_kwargs`): FA2 itself where it is
    the model's attention, else `models.attention.varlen_sdpa_attention` (PyTorch SDPA on each
    example's slice).
`enable` switches a loaded causal LM over and proves it once: a two-example row must give each
example's logits alone (`data.packing.check_packing`). `auto` takes it on CPUs (SDPA models) and on GPUs
whose model runs FA2; on a GPU without FA2 the per-example kernels and the per-layer sync of the
boundaries cost more than padding saves at small sizes (an explicit `true` still turns it on).
"""

from __future__ import annotations

import torch

from tunesmith.data.chat_template import IGNORE_INDEX
from tunesmith.data.packing import check_packing
from tunesmith.errors import TunesmithError
from tunesmith.models.attention import VARLEN_ATTENTION, VARLEN_SDPA, attention_implementation, register_varlen_sdpa
from tunesmith.models.unwrap import innermost_model

_ENABLED_ATTR = "_tunesmith_padding_free"


def is_enabled(model) -> bool:
    return bool(getattr(innermost_model(model), _ENABLED_ATTR, False))


def set_enabled(model, value: bool) -> None:
    """Flatten micro-batches from now on (True) or pad them (False); `enable` decides and checks first."""
    setattr(innermost_model(model), _ENABLED_ATTR, bool(value))


def flatten(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A right-padded batch (input_ids, attention_mask, labels) as one row of its real tokens."""
    real = batch["attention_mask"].bool()
    lengths = real.sum(dim=1)
    lengths = lengths[lengths > 0]
    starts = torch.cumsum(lengths, 0) - lengths
    total = int(lengths.sum())
    # Position of each token within its example: its index in the row minus its example's start.
    positions = torch.arange(total, device=real.device) - torch.repeat_interleave(starts, lengths)
    labels = batch["labels"][real].clone()
    labels[starts] = IGNORE_INDEX  # a standalone example's first position is never a target either
    return {
        "input_ids": batch["input_ids"][real].unsqueeze(0),
        "labels": labels.unsqueeze(0),
        "position_ids": positions.unsqueeze(0),
    }


def enable(model, setting, task_name: str, packable: bool) -> str | None:
    """Turn padding-free batches on for `model` where `setting` (auto/True/False) and the model allow;
    returns a line for the console saying what was done, or None when nothing was asked or possible."""
    if setting is False:
        return None

    def refuse(reason: str, fix: str) -> None:
        if setting is True:
            raise TunesmithError(f"train.padding_free: {reason}", where="train.padding_free", fix=fix)

    if not packable:
        refuse(
            f"the {task_name} task has no padding-free layout (causal LM tasks only)",
            "set train.padding_free: auto (or false)",
        )
        return None
    inner = innermost_model(model)
    attention = attention_implementation(model)
    device = next(model.parameters()).device
    switched = False
    if attention not in VARLEN_ATTENTION:
        if attention != "sdpa":
            refuse(
                f"the model runs {attention!r} attention, which has no variable-length path",
                "load it with model.attn_implementation: sdpa or flash_attention_2",
            )
            return None
        if device.type == "cuda" and setting == "auto":
            return None  # see the module docstring: without FA2 a GPU keeps padded batches
        register_varlen_sdpa()
        inner.set_attn_implementation(VARLEN_SDPA)
        switched = True
    try:
        check_packing(model, "train.padding_free")
    except (TunesmithError, NotImplementedError, ValueError, RuntimeError) as exc:
        if switched:
            inner.set_attn_implementation(attention)
        reason = exc.message if isinstance(exc, TunesmithError) else str(exc)
        refuse(f"the model does not keep attention inside each example ({reason})", "set train.padding_free: false")
        return f"padding-free batches off: {reason}"
    set_enabled(model, True)
    kernel = "variable-length SDPA" if switched else attention
    return f"padding-free batches: each micro-batch runs as one row of its real tokens ({kernel})"
