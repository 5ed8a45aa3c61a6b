"""Full fine-tuning: every weight trains. Best quality per step, most memory (weights + grads + 2 Adam states)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from tunesmith.methods.base import ALL_KINDS, Footprint, MethodSettings, Recommendable


class Config(MethodSettings):
    name: Literal["full"] = Field("full", description="full: every weight trains")


summary = (
    "every weight trains: the highest quality ceiling, 16 bytes per parameter (fp32 weight, gradient, two AdamW states)"
)
model_kinds = ALL_KINDS
saves_adapter = False
footprint = Footprint(trains_base=True, efficiency=1.0, half_base_on_gpu=False)
recommend = Recommendable(
    quality=1.5,
    learning_rate=2e-5,
    trade_off="full fine-tuning updates every weight: the highest quality ceiling, at 16 bytes per parameter "
    "for fp32 weights, gradients and AdamW states",
)


# Autotrain's first configs after the planner's default (search/space.py known_good). BERT's fine-tuning grid
# (Devlin et al. 2019, appendix A.3: 2e-5..5e-5, batch 16/32, 2-4 epochs), and this repository's
# examples/text_classification.yaml, which a 22M encoder scored best with (docs/search.md): small models
# take higher rates.
known_good = (
    {"train.learning_rate": 5e-5, "train.epochs": 4, "train.batch_size": 32, "train.warmup_ratio": 0.1},
    {"train.learning_rate": 1e-4, "train.epochs": 6, "train.batch_size": 32, "train.warmup_ratio": 0.1},
)


def trainable_parameters(shape: Any, cfg: Config) -> int:
    return int(shape.parameters)


def search_space(cfg: Config) -> dict[str, dict[str, Any]]:
    """Every weight moves, so the learning rate is ten times lower than for adapters (docs/search.md)."""
    return {
        "train.learning_rate": {"type": "log-float", "low": 1e-5, "high": 1e-4},
        "train.weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
    }


def load_kwargs(cfg: Config) -> dict[str, Any]:
    return {}


def apply(model: Any, cfg: Config, gradient_checkpointing: bool = False, task_type: str | None = None) -> Any:
    for param in model.parameters():
        param.requires_grad_(True)
    if gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return model
