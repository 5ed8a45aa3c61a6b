"""Prompt tuning (Lester et al. 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning"): N learned
virtual-token embeddings put before every input; the model itself is untouched. The smallest adapter
there is (N x hidden), strongest on large models.

PEFT prepends the virtual tokens inside the forward pass, so the model's outputs are N positions longer
than the batch: the loss reads the last positions, which belong to the real tokens (train/loss.py aligns
hidden states and logits to the labels from the right), so exactly the answer tokens carry loss. PEFT
drops `position_ids` for prompt learning, so packed rows and padding-free batches (which rely on them to
keep examples apart) are refused or turned off.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from tunesmith.errors import TunesmithError
from tunesmith.methods.base import Footprint, MethodSettings, Recommendable


class Config(MethodSettings):
    name: Literal["prompt-tuning"] = Field(
        "prompt-tuning", description="prompt-tuning: learned virtual tokens before every input"
    )
    num_virtual_tokens: int = Field(
        20, ge=1, description="virtual tokens prepended; more adapts more and lengthens every sequence by as many"
    )
    init_text: str | None = Field(
        None,
        description="text whose token embeddings start the virtual tokens (e.g. a task description: trains faster than random); None starts from random vocabulary embeddings",
    )


summary = "prompt tuning: N learned virtual tokens before every input, the model untouched: the smallest adapter, for large models"
model_kinds = frozenset({"causal-lm"})
saves_adapter = True
footprint = Footprint(efficiency=0.85)  # activations of N more positions are counted by the sequence length
recommend = Recommendable(
    quality=0.4,
    learning_rate=3e-2,
    automatic=False,
    trade_off="prompt tuning learns only N input embeddings: kilobytes of adapter and no change to the model, "
    "but it needs large models to match LoRA (Lester et al. 2021)",
)


def trainable_parameters(shape: Any, cfg: Config) -> int:
    return int(cfg.num_virtual_tokens * shape.hidden)


def search_space(cfg: Config) -> dict[str, dict[str, Any]]:
    """Prompt embeddings need high rates (the paper's 0.3 with Adafactor; ~1e-2..1e-1 with AdamW)."""
    return {
        "train.learning_rate": {"type": "log-float", "low": 3e-3, "high": 1e-1},
        "method.num_virtual_tokens": {"type": "categorical", "choices": [10, 20, 50]},
    }


def load_kwargs(cfg: Config) -> dict[str, Any]:
    return {}


def check(config: Any) -> None:
    """Packing and padding-free batches keep examples apart by position ids, which PEFT's prompt learning
    drops; and virtual tokens cannot be merged into weights."""
    if config.data.packing:
        raise TunesmithError(
            "prompt tuning cannot train packed rows: PEFT drops the position ids that keep packed examples apart",
            where="data.packing",
            fix="set data.packing: false",
        )
    if config.train.padding_free is True:
        raise TunesmithError(
            "prompt tuning cannot train padding-free batches (PEFT drops their position ids)",
            where="train.padding_free",
            fix="set train.padding_free: false (or auto)",
        )
    if config.output.save_merged:
        raise TunesmithError(
            "prompt tuning trains inputs (virtual tokens), not weights: it has nothing to merge into the base",
            where="output.save_merged",
            fix="set output.save_merged: false; the run's adapter/ loads with peft",
        )
    config.train.padding_free = False  # auto: padded batches, the one layout prompt learning keeps apart


def apply(model: Any, cfg: Config, gradient_checkpointing: bool = False, task_type: str | None = "CAUSAL_LM") -> Any:
    from peft import PromptTuningConfig, PromptTuningInit, get_peft_model

    if gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    text = (
        {}
        if cfg.init_text is None
        else {
            "prompt_tuning_init": PromptTuningInit.TEXT,
            "prompt_tuning_init_text": cfg.init_text,
            "tokenizer_name_or_path": model.name_or_path,
        }
    )
    config = PromptTuningConfig(
        task_type=task_type,
        num_virtual_tokens=cfg.num_virtual_tokens,
        **(text or {"prompt_tuning_init": PromptTuningInit.RANDOM}),
    )
    return get_peft_model(model, config)
