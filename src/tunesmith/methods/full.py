"""Full fine-tuning: every weight trains. Best quality per step, most memory (weights + grads + 2 Adam states)."""

from __future__ import annotations

saves_adapter = False


def load_kwargs(method_cfg) -> dict:
    return {}


def apply(model, method_cfg, gradient_checkpointing: bool = False):
    for param in model.parameters():
        param.requires_grad_(True)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model
