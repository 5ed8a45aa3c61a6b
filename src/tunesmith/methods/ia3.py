"""IA3 (Liu et al. 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context
Learning"): learned vectors that rescale the keys, the values and the MLP's inner activations. Far fewer
trainable parameters than LoRA (one number per scaled feature), saved in the stock PEFT format."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from tunesmith.errors import TunesmithError
from tunesmith.methods.base import TEXT_KINDS, Footprint, MethodSettings, Recommendable

# The layers peft scales by default, by the names the planner's shapes use (keys, values, MLP output).
DEFAULT_TARGETS = ("k_proj", "v_proj", "down_proj", "key", "value", "k", "v", "wo", "fc2", "output.dense")
FEEDFORWARD = ("down_proj", "wo", "fc2", "output.dense")  # scaled on their input, the others on their output


class Config(MethodSettings):
    name: Literal["ia3"] = Field("ia3", description="ia3: learned rescaling vectors on keys, values and the MLP")
    target_modules: list[str] | None = Field(
        None, description="layers to rescale; None takes peft's defaults for the model type (keys, values, MLP output)"
    )
    feedforward_modules: list[str] | None = Field(
        None, description="the target layers scaled on their input (MLP output layers); None: peft's defaults"
    )


summary = "IA3: learned vectors rescale keys, values and MLP activations: ~100x fewer trainable parameters than LoRA, less capacity"
model_kinds = TEXT_KINDS
saves_adapter = True
# Not yet fitted: IA3 keeps no adapter input of its own beyond LoRA's base terms (a vector multiply).
footprint = Footprint(efficiency=0.9)
recommend = Recommendable(
    quality=0.7,
    learning_rate=3e-3,
    automatic=False,
    trade_off="IA3 trains one scale per key, value and MLP feature: the smallest adapters (tens of KB) and "
    "fast steps, at less capacity than LoRA (Liu et al. 2022)",
)


def trainable_parameters(shape: Any, cfg: Config) -> int:
    names = cfg.target_modules or [n for n in DEFAULT_TARGETS if any(lin.name.endswith(n) for lin in shape.linears)]
    feedforward = cfg.feedforward_modules if cfg.target_modules else FEEDFORWARD
    total = 0
    for lin in shape.targeted(names):
        on_input = any(lin.name == f or lin.name.endswith("." + f) for f in (feedforward or ()))
        total += (lin.fan_in if on_input else lin.fan_out) * lin.count
    return int(total)


def search_space(cfg: Config) -> dict[str, dict[str, Any]]:
    """IA3 vectors start at 1 and move slowly: rates around 1e-3..1e-2 (the paper's 3e-3)."""
    return {"train.learning_rate": {"type": "log-float", "low": 1e-3, "high": 1e-2}}


def load_kwargs(cfg: Config) -> dict[str, Any]:
    return {}


def apply(model: Any, cfg: Config, gradient_checkpointing: bool = False, task_type: str | None = "CAUSAL_LM") -> Any:
    from peft import IA3Config, get_peft_model

    if gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    config = IA3Config(
        target_modules=cfg.target_modules, feedforward_modules=cfg.feedforward_modules, task_type=task_type
    )
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        raise TunesmithError(
            f"IA3 cannot be applied: {exc}",
            where="method.target_modules",
            fix="name the layers to rescale (method.target_modules) and which of them are MLP "
            "outputs (method.feedforward_modules)",
        ) from None
