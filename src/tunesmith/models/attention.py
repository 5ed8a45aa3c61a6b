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

from tunesmith.errors import TunesmithError


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


def choose_attention(requested: str, dtype: torch.dtype, *, cuda: bool, flash_installed: bool,
                     flash_supported) -> str | None:
    """The `attn_implementation` to pass to from_pretrained; None lets transformers pick (sdpa or eager).
    `flash_supported` is called only when FA2 is otherwise possible (it reads the model's config)."""
    if requested == "flash_attention_2":
        if not cuda:
            raise TunesmithError("model.attn_implementation: flash_attention_2 runs on CUDA GPUs only",
                                 where="model.attn_implementation", fix="use auto or sdpa on this machine")
        if not flash_installed:
            raise TunesmithError("model.attn_implementation: flash_attention_2 needs the flash-attn package",
                                 where="model.attn_implementation",
                                 fix="pip install flash-attn --no-build-isolation, or use auto (sdpa)")
        return requested
    if requested != "auto":
        return requested
    if cuda and flash_installed and dtype in (torch.bfloat16, torch.float16) and flash_supported():
        return "flash_attention_2"
    return None


def attention_for(model_cfg, model_class, path: str, dtype: torch.dtype) -> str | None:
    return choose_attention(model_cfg.attn_implementation, dtype, cuda=torch.cuda.is_available(),
                            flash_installed=flash_attn_installed(),
                            flash_supported=lambda: supports_flash_attention(model_class, path, model_cfg.trust_remote_code))
