"""The one place a model is built for a run: the base for the task with the method's load-time changes,
the method applied for training, or a finished run's weights for inference and merging.

Tasks whose model is not one transformers Auto class (a diffusers pipeline) build it themselves through
their `load_model` hook; everything else goes through here. The task module is passed in (models sit
below tasks in the import layers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.config import RunConfig, uses_gradient_checkpointing
from tunesmith.errors import TunesmithError
from tunesmith.methods import get_method
from tunesmith.models.load import load_model
from tunesmith.models.resolve import ResolvedModel, resolve_model
from tunesmith.models.safe_load import check_folder, unpickling


def base_model(
    config: RunConfig, resolved: ResolvedModel, task: Any, meta: dict, pad_id: int, *, quantized: bool = True
) -> Any:
    """The base model as the method wants it loaded (4-bit for qlora unless `quantized` is False: merging
    needs float weights), with the head the task needs (a classifier sized from the labels in `meta`)."""
    method = get_method(config.method.name)
    extra = dict(method.load_kwargs(config.method) if quantized else {}, **task.model_kwargs(meta))
    model = load_model(resolved, config.model, task.model_class(), method_name=config.method.name, extra=extra)
    # Decoder classifiers find each row's last token through pad_token_id (vision configs have none).
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = pad_id
    return model


def make_trainable(model: Any, config: RunConfig, task: Any) -> Any:
    """The method applied: only its weights train (adapters, top blocks, everything)."""
    model.config.use_cache = False  # the KV cache is for generation; in training it only costs memory
    return get_method(config.method.name).apply(
        model, config.method, uses_gradient_checkpointing(config), task.peft_task_type
    )


def training_model(config: RunConfig, resolved: ResolvedModel, task: Any, meta: dict, pad_id: int) -> Any:
    """The model a run trains. A task with its own `load_model` (text-to-image) applies the method itself."""
    task_loader = getattr(task, "load_model", None)
    if task_loader is not None:
        return task_loader(config, resolved, meta)
    return make_trainable(base_model(config, resolved, task, meta, pad_id), config, task)


def trained_model(
    config: RunConfig, task: Any, weights: Path, meta: dict, pad_id: int, *, for_merge: bool = False
) -> Any:
    """A finished run's model from its weights folder: base + adapter (PEFT) or the saved full model."""
    task_loader = getattr(task, "load_model", None)
    if task_loader is not None:
        return task_loader(config, resolve_model(config.model.name, config.model.gguf_file), meta, weights=weights)
    if not get_method(config.method.name).saves_adapter:
        local = ResolvedModel(str(weights), None, "local", str(weights))
        return load_model(local, config.model, task.model_class(), method_name=config.method.name)
    from peft import PeftModel

    check_folder(weights, config.model.allow_pickle, where=str(weights))  # a run folder may come from anyone
    resolved = resolve_model(config.model.name, config.model.gguf_file)
    base = base_model(config, resolved, task, meta, pad_id, quantized=not for_merge)
    with unpickling(str(weights)):
        return PeftModel.from_pretrained(base, weights)


def save_weights(model: Any, config: RunConfig, folder: Path) -> None:
    """The trained weights as the method saves them (a PiSSA adapter converted to LoRA, methods/lora.py)."""
    saver = getattr(get_method(config.method.name), "save", None)
    if saver is not None and hasattr(model, "peft_config"):
        saver(model, config.method, str(folder))
    else:
        model.save_pretrained(folder, safe_serialization=True)


def refuse_merge(config: RunConfig, run_dir: Path) -> TunesmithError:
    """What `merge` says for a model without merge_and_unload: full weights already, or an adapter that adds
    inputs rather than weight deltas (prompt tuning), which no base weight can absorb."""
    if not get_method(config.method.name).saves_adapter:
        return TunesmithError(
            f"the run trained with method {config.method.name!r}; its model/ folder already holds full weights",
            fix=f"use {run_dir / 'model'} directly",
        )
    return TunesmithError(
        f"method {config.method.name!r} trains inputs (virtual tokens), not weights: there is nothing to merge",
        fix=f"load {run_dir / 'adapter'} with peft's PeftModel.from_pretrained on the base model",
    )
