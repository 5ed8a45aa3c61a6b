"""Methods turn a loaded model trainable. One module per method, one registry line each.

A method module provides:
  load_kwargs(method_cfg) -> dict   extra `from_pretrained` arguments (QLoRA's 4-bit quantisation)
  apply(model, method_cfg, gradient_checkpointing) -> model   the model with only the chosen weights trainable
  saves_adapter: bool               True when the run saves a PEFT adapter rather than full weights
"""

from __future__ import annotations

from tunesmith.methods import freeze, full, lora, qlora

METHODS = {
    "full": full,
    "freeze": freeze,
    "lora": lora,
    "qlora": qlora,
}


def get_method(name: str):
    return METHODS[name]


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameters. 4-bit weights pack two values per byte, so count their elements x2."""
    trainable = total = 0
    for param in model.parameters():
        n = param.numel()
        if param.__class__.__name__ == "Params4bit":
            n *= 2
        total += n
        if param.requires_grad:
            trainable += n
    return trainable, total
