"""LoRA on an 8-bit base (bitsandbytes LLM.int8, Dettmers et al. 2022): the frozen linear weights are stored
as int8 with one scale per output row (half of bf16, a quarter of fp32), outlier features computed in 16
bit; the adapters train in fp32 as in LoRA. Between LoRA and QLoRA in memory and in quality."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from tunesmith.methods import lora, qlora
from tunesmith.methods.base import Footprint, Recommendable


class Config(qlora.QuantizedBaseConfig):
    # `name` is the union's discriminator: narrowing lora's Literal is what pydantic needs, an override mypy refuses.
    name: Literal["lora-8bit"] = Field(
        "lora-8bit", description="lora-8bit: LoRA adapters on a base stored in 8-bit (LLM.int8)"
    )  # type: ignore[assignment]
    int8_threshold: float = Field(
        6.0,
        ge=0,
        description="activation magnitude above which a feature is computed in 16 bit (LLM.int8's outliers); 6 is the paper's, lower is more accurate and slower",
    )


summary = "LoRA on an int8 base (LLM.int8): half the frozen-weight memory of a bf16 base, closer to LoRA's quality than 4-bit QLoRA"
model_kinds = qlora.model_kinds
saves_adapter = True
# Not yet fitted on its own: bitsandbytes' int8 matmul keeps an int8 copy of each input row; the QLoRA
# CPU terms are taken as the closer bound (docs/planner.md).
footprint = Footprint(
    efficiency=0.6,
    half_base_on_gpu=False,
    quantized="int8",
    adapter_input_bytes=(5.0, 3.0),
    heap_adapter_input_bytes=7.0,
    heap_dequant_bytes=2.0,
)
# Not chosen unasked: LLM.int8's matmuls are the slowest of the three bases and its quality gain over NF4
# is not measured here yet; `recommend --method lora-8bit` and the pre-flight's cheaper-method advice offer it.
recommend = Recommendable(
    quality=0.75,
    learning_rate=2e-4,
    automatic=False,
    trade_off="LoRA on an 8-bit base halves a 16-bit base's weight memory with less quality cost than 4-bit "
    "QLoRA (Dettmers et al. 2022), at slower steps than LoRA",
)
trainable_parameters = lora.trainable_parameters
search_space = lora.search_space
known_good = lora.known_good
save = lora.save


def quantized_bits(cfg: Config) -> float:
    return 8.0  # int8 weights; the per-row fp32 scales add 32/fan_in bits, under 0.05 for fan_in >= 576


def load_kwargs(cfg: Config) -> dict[str, Any]:
    return qlora.quantized_loading(load_in_8bit=True, llm_int8_threshold=cfg.int8_threshold)


def apply(model: Any, cfg: Config, gradient_checkpointing: bool = False, task_type: str | None = "CAUSAL_LM") -> Any:
    return lora.apply(
        qlora.prepare_quantized(model, gradient_checkpointing), cfg, gradient_checkpointing=False, task_type=task_type
    )
