"""Methods turn a loaded model trainable. One module per method, one registration line each (the shape of
PEFT's `register_peft_method`): nothing else in tunesmith names a method.

A method module declares everything about itself:
  Config          its config section: `name: Literal[...]` and its own options, each with a docstring that
                  says what it trades off. The run config's `method:` is the union of every registered
                  Config, discriminated by `name`, so a field is documented and accepted only where it applies.
  summary         one line for `tunesmith init`, `--help` and the docs
  model_kinds     the kinds of model it can train; a task declares its own kind (tasks/__init__.py)
  saves_adapter   True when a run saves a PEFT adapter (adapter/), False for full weights (model/)
  footprint       what the planner needs to size it (Footprint below)
  recommend       Recommendable: its quality rank, learning rate and trade-off for `recommend` and pre-flight
  trainable_parameters(shape, cfg) -> int    its trainable-parameter count from a plan.estimate.Shape
  search_space(cfg) -> dict                  default search space over its own fields: {"method.r": {...}}
                                             in config.SearchParam's form (empty: nothing of its own to search)
  load_kwargs(cfg) -> dict                   extra `from_pretrained` arguments (quantisation)
  apply(model, cfg, gradient_checkpointing, task_type) -> model   only the chosen weights trainable
Optional (looked up with getattr; most methods have none):
  quantized_bits(cfg) -> float               bits per quantised base weight (with its constants)
  trained_blocks(shape, cfg) -> int          how far back the gradient reaches (the freeze method)
  param_groups(model, cfg, learning_rate) -> list[dict]   optimizer parameter groups (LoRA+)
  rewrites_base(cfg) -> bool                 the adapter switched off is not the base (PiSSA): base scores
                                             are then taken with the fresh adapter on
  save(model, cfg, folder)                   save the trained weights itself (a PiSSA adapter converted)
  check(config) -> None                      refuse run settings it cannot train with (raises TunesmithError)
  known_good: tuple[dict, ...]               values autotrain tries first after the planner's (dotted paths)

Module top levels import no torch (torch, peft and bitsandbytes are imported where a model is built), so
`tunesmith.config` and the planner read the registry without loading a framework.
"""

from __future__ import annotations

from typing import Any

from tunesmith.errors import lookup
from tunesmith.methods import freeze, full, ia3, lora, lora_8bit, loraplus, prompt_tuning, qlora
from tunesmith.methods.base import MethodModule, MethodSettings

METHODS: dict[str, MethodModule] = {}


def register(module: MethodModule) -> MethodModule:
    """Add a method module under the `name` its Config declares."""
    name = module.Config.model_fields["name"].default
    if not isinstance(name, str) or name in METHODS:
        raise ValueError(f"{module!r}: Config.name must default to a new method name, got {name!r}")
    METHODS[name] = module
    return module


def get_method(name: str) -> MethodModule:
    return lookup(METHODS, name, what="method", where="method.name", listing="methods")


def default_settings(name: str) -> MethodSettings:
    """Method `name`'s config section with every field at its default. Each method's Config defaults its own
    `name`, which the base class cannot declare, so it is validated from an empty mapping."""
    return get_method(name).Config.model_validate({})


def methods_for(model_kind: str) -> list[str]:
    """Registered methods that can train a model of this kind, in registration order."""
    return [name for name, module in METHODS.items() if model_kind in module.model_kinds]


def by_quality(names: list[str]) -> list[str]:
    """Best expected quality first (Recommendable.quality)."""
    return sorted(names, key=lambda n: -METHODS[n].recommend.quality)


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameters. 4-bit weights pack two values per byte, so count their elements x2."""
    trainable = total = 0
    for param in model.parameters():
        n = param.numel()
        if param.__class__.__name__ == "Params4bit":
            n *= 2
        total += n
        if param.requires_grad:
            trainable += n
    return int(trainable), int(total)


# Registration: one line per method, in the order `init`, the docs and `recommend` list them.
DEFAULT_METHOD = "lora"
register(full)
register(freeze)
register(lora)
register(qlora)
register(lora_8bit)
register(loraplus)
register(ia3)
register(prompt_tuning)
