"""Which attention kernel a model is loaded with (`model.attn_implementation`).

auto takes the fastest one available: FlashAttention-2 on a CUDA GPU when the `flash-attn` package is
installed, the weights are bf16/fp16 (its kernels take nothing else) and the architecture supports it;
FA2 also runs packed rows (position_ids restarting per example, no mask) as variable-length attention
with no padding at all. Otherwise transformers' own default: PyTorch SDPA where the model supports it
(flash / memory-efficient / cuDNN kernels on GPUs, a fused kernel on CPUs), else eager.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

from tunesmith.errors import TunesmithError
from tunesmith.models.unwrap import innermost_model


def flash_attn_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def supports_flash_attention(model_class, path: str, trust_remote_code: bool = False) -> bool:
    """Whether the concrete class an Auto class would load for `path` declares FA2 support."""
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        mapping = getattr(model_class, "_model_mapping", None)
        concrete = mapping[type(config)] if mapping is not None else model_class
    except (OSError, ValueError, KeyError):
        return False
    return bool(getattr(concrete, "_supports_flash_attn", False) or getattr(concrete, "_supports_flash_attn_2", False))


def choose_attention(
    requested: str, dtype: torch.dtype, *, cuda: bool, flash_installed: bool, flash_supported
) -> str | None:
    """The `attn_implementation` to pass to from_pretrained; None lets transformers pick (sdpa or eager).
    `flash_supported` is called only when FA2 is otherwise possible (it reads the model's config)."""
    if requested == "flash_attention_2":
        if not cuda:
            raise TunesmithError(
                "model.attn_implementation: flash_attention_2 runs on CUDA GPUs only",
                where="model.attn_implementation",
                fix="use auto or sdpa on this machine",
            )
        if not flash_installed:
            raise TunesmithError(
                "model.attn_implementation: flash_attention_2 needs the flash-attn package",
                where="model.attn_implementation",
                fix="pip install flash-attn --no-build-isolation, or use auto (sdpa)",
            )
        return requested
    if requested != "auto":
        return requested
    if cuda and flash_installed and dtype in (torch.bfloat16, torch.float16) and flash_supported():
        return "flash_attention_2"
    return None


def attention_for(model_cfg, model_class, path: str, dtype: torch.dtype) -> str | None:
    return choose_attention(
        model_cfg.attn_implementation,
        dtype,
        cuda=torch.cuda.is_available(),
        flash_installed=flash_attn_installed(),
        flash_supported=lambda: supports_flash_attention(model_class, path, model_cfg.trust_remote_code),
    )


def attention_implementation(model) -> str | None:
    """The attention implementation a loaded model runs (under any DDP/FSDP/PEFT wrapper)."""
    return getattr(innermost_model(model).config, "_attn_implementation", None)


# ---------------------------------------------------------------------------------------------------
# Variable-length attention: one row of several examples, each attending only to itself (data.packing's
# flash-attention layout, train.padding_free). Here, below both, so that data and train share it.

VARLEN_SDPA = "tunesmith_varlen_sdpa"
# Attention implementations that attend within examples only when the rows are laid end to end (and
# read the example boundaries from `cu_seq_lens_q/k`; train/padding_free.py).
VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3", "flash_attention_4", VARLEN_SDPA)


def varlen_kwargs(position_ids: torch.Tensor) -> dict:
    """FlashAttention's variable-length keywords for one row whose position ids restart per example."""
    row = position_ids[0]
    starts = (row == 0).nonzero().squeeze(1)
    bounds = torch.cat([starts, torch.tensor([row.numel()], device=row.device)]).to(torch.int32)
    longest = int((bounds[1:] - bounds[:-1]).max())
    return {"cu_seq_lens_q": bounds, "cu_seq_lens_k": bounds, "max_length_q": longest, "max_length_k": longest}


def varlen_sdpa_attention(
    module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, is_causal=None, **kwargs
):
    """Attention for one row holding several examples end to end (`cu_seq_lens_q`: where each starts, the
    keyword FlashAttention-2's variable-length path reads): causal PyTorch SDPA on each example's slice,
    so no example sees another and no `T x T` mask exists. Without `cu_seq_lens_q` (a padded batch,
    generation) it is transformers' own SDPA with the mask transformers built. Registered under
    VARLEN_SDPA with transformers' AttentionInterface (the documented extension point), so it serves every
    model that dispatches attention through that interface.

    Costs: one kernel per example and layer (fine on CPUs; on GPUs FA2's single kernel is the better
    path) and, per layer, reading the boundaries back to Python (a device sync on GPUs)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bounds = kwargs.get("cu_seq_lens_q")
    if bounds is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    if kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None:
        raise NotImplementedError("attention soft-capping and sinks are not supported by variable-length SDPA")
    if query.shape[0] != 1:
        raise ValueError(f"variable-length attention takes one row, got a batch of {query.shape[0]}")
    window = kwargs.get("sliding_window")
    gqa = query.shape[1] != key.shape[1]
    bounds = bounds.tolist()
    outputs = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        q, k, v = query[:, :, start:end], key[:, :, start:end], value[:, :, start:end]
        mask = None
        if window is not None and end - start > window:  # Mistral-style local attention inside the example
            position = torch.arange(end - start, device=query.device)
            distance = position[:, None] - position[None, :]
            mask = (distance >= 0) & (distance < window)
        outputs.append(
            F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout, scale=scaling, is_causal=mask is None, enable_gqa=gqa
            )
        )
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None


def register_varlen_sdpa() -> None:
    """Make VARLEN_SDPA a valid `attn_implementation`. Its padded-batch masks are SDPA's (same function)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(VARLEN_SDPA, varlen_sdpa_attention)
    AttentionMaskInterface.register(VARLEN_SDPA, sdpa_mask)
