"""LoRA+ (Hayou et al. 2024, "LoRA+: Efficient Low Rank Adaptation of Large Models"): LoRA whose B matrices
learn `lr_ratio` times faster than the A matrices, through optimizer parameter groups (peft's
`create_loraplus_optimizer` groups the same way). The saved adapter is a plain LoRA adapter."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from tunesmith.methods import lora
from tunesmith.methods.base import Recommendable


class Config(lora.Config):
    name: Literal["loraplus"] = Field(
        "loraplus", description="loraplus: LoRA with a higher learning rate for B than for A"
    )  # type: ignore[assignment]
    lr_ratio: float = Field(
        16.0,
        gt=0,
        description="B's learning rate over A's; the paper's 16 (2-4 for very small models); 1 is plain LoRA",
    )
    lr_embedding: float = Field(
        1e-6, gt=0, description="learning rate of adapted embedding layers (the paper keeps them low)"
    )


summary = "LoRA with B trained lr_ratio times faster than A: reaches LoRA's loss in fewer steps at the same memory"
model_kinds = frozenset(
    {"causal-lm", "classifier", "tagger", "seq2seq", "vision"}
)  # the UNet path builds its own adapter
saves_adapter = True
footprint = lora.footprint
recommend = Recommendable(
    quality=1.0,
    learning_rate=1e-4,
    automatic=False,
    trade_off="LoRA+ keeps LoRA's memory and adapter and converges faster by learning B faster than A "
    "(Hayou et al. 2024); its extra ratio is one more setting to tune",
)
trainable_parameters = lora.trainable_parameters
load_kwargs = lora.load_kwargs
apply = lora.apply
save = lora.save
rewrites_base = lora.rewrites_base


def search_space(cfg: Config) -> dict[str, dict[str, Any]]:
    return {
        **lora.search_space(cfg),
        "train.learning_rate": {"type": "log-float", "low": 2e-5, "high": 2e-4},
        "method.lr_ratio": {"type": "categorical", "choices": [4, 8, 16]},
    }


def param_groups(model: Any, cfg: Config, learning_rate: float, weight_decay: float) -> list[dict[str, Any]]:
    """A (and other trained weights) at the run's rate, B at lr_ratio times it, adapted embeddings at
    lr_embedding; B and biases without weight decay on 1-D parameters as peft's LoRA+ optimizer does."""
    groups: dict[str, list[Any]] = {"a": [], "b": [], "embedding": [], "b_no_decay": []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if "lora_embedding" in name:
            groups["embedding"].append(param)
        elif "lora_B" in name or param.ndim == 1:
            groups["b" if param.ndim > 1 else "b_no_decay"].append(param)
        else:
            groups["a"].append(param)
    return [
        group
        for group in (
            {"params": groups["a"], "lr": learning_rate, "weight_decay": weight_decay},
            {"params": groups["b"], "lr": learning_rate * cfg.lr_ratio, "weight_decay": weight_decay},
            {"params": groups["b_no_decay"], "lr": learning_rate * cfg.lr_ratio, "weight_decay": 0.0},
            {"params": groups["embedding"], "lr": cfg.lr_embedding, "weight_decay": weight_decay},
        )
        if group["params"]
    ]
