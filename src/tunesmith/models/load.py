"""Load a tokenizer and a model for a task, in the dtype and with the quantisation a method asks for."""

from __future__ import annotations

import torch

from tunesmith.errors import TunesmithError
from tunesmith.methods import get_method
from tunesmith.models.resolve import ResolvedModel


def _pretrained_kwargs(resolved: ResolvedModel, model_cfg) -> dict:
    kwargs = {"trust_remote_code": model_cfg.trust_remote_code}
    if resolved.gguf_file:
        kwargs["gguf_file"] = resolved.gguf_file
    if model_cfg.revision and resolved.source == "hub":
        kwargs["revision"] = model_cfg.revision
    return kwargs


def load_tokenizer(resolved: ResolvedModel, model_cfg):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved.path, **_pretrained_kwargs(resolved, model_cfg))
    except (OSError, ValueError) as exc:
        raise TunesmithError(
            f"cannot load a tokenizer from {resolved.path}: {exc}",
            where="model.name",
            fix="point model.name at a directory with tokenizer files",
        ) from None
    if tokenizer.pad_token_id is None:
        # Padding positions carry no loss and are masked from attention, so any id works; EOS is standard.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def weights_dtype(model_cfg, method_name: str) -> torch.dtype:
    """fp32 master weights wherever they train; a frozen base may live in bf16 on GPUs that have it."""
    if model_cfg.dtype != "auto":
        return getattr(torch, model_cfg.dtype)
    frozen_base = not get_method(method_name).footprint.trains_base
    if frozen_base and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_model(resolved: ResolvedModel, model_cfg, model_class, *, method_name: str, extra: dict | None = None):
    from tunesmith.models.safe_load import check_folder, explain_missing_safetensors, load_kwargs, unpickling

    if resolved.source != "hub":
        check_folder(resolved.path, model_cfg.allow_pickle)  # names the pickle file before anything is read
    kwargs = _pretrained_kwargs(resolved, model_cfg)
    if not resolved.gguf_file:  # GGUF is not pickle; transformers reads it by its own path
        kwargs.update(load_kwargs(model_cfg.allow_pickle))
    kwargs["dtype"] = weights_dtype(model_cfg, method_name)
    from tunesmith.models.attention import attention_for

    attention = attention_for(model_cfg, model_class, resolved.path, kwargs["dtype"])
    if attention is not None:  # None: transformers picks sdpa where supported, else eager
        kwargs["attn_implementation"] = attention
    kwargs.update(extra or {})
    try:
        with unpickling("model.name"):
            return model_class.from_pretrained(resolved.path, **kwargs)
    except (OSError, ValueError, ImportError) as exc:
        raise TunesmithError(
            f"cannot load the model from {resolved.path}: {exc}",
            where="model.name",
            fix=explain_missing_safetensors(exc, model_cfg.allow_pickle)
            or "check the path or hub id; for attention errors set model.attn_implementation: eager",
        ) from None
