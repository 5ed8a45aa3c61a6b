"""QLoRA (Dettmers et al. 2023): LoRA on a base quantised to 4-bit NF4 with bitsandbytes.

The base weights take ~0.5 byte/param instead of 4; the adapters and optimizer states stay in fp32.
bitsandbytes >= 0.45 runs 4-bit on CPUs too, so the same config works on a laptop and on a GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field, model_validator

from tunesmith.methods import lora
from tunesmith.methods.base import Footprint, Recommendable
from tunesmith.methods.freeze import HEAD_NAMES

# QLoRA (Dettmers et al. 2023, sec. 3): NF4 stores 4 bits per weight plus one fp32 absmax per 64-weight
# block (32/64 = 0.5 bit); double quantisation stores those constants in 8 bits with one fp32 constant
# per 256 of them: 8/64 + 32/(64*256) = 0.127 bit per weight.
NF4_BITS = {True: 4 + 8 / 64 + 32 / (64 * 256), False: 4 + 32 / 64}


class QuantizedBaseConfig(lora.Config):
    """LoRA over a quantised base (this method and lora-8bit): a base-rewriting start (PiSSA, OLoRA) would
    have to store the residual weights, which the quantised base cannot hold exactly."""

    @model_validator(mode="after")
    def _init_on_dense_weights(self) -> QuantizedBaseConfig:
        if self.init in lora.BASE_CHANGING_INITS:
            raise ValueError(
                f"init {self.init} rewrites the base weights, which a quantised base cannot hold exactly; "
                "use init: default or gaussian here, or a dense base (method.name: lora)"
            )
        return self


class Config(QuantizedBaseConfig):
    # `name` is the union's discriminator: narrowing lora's Literal is what pydantic needs, an override mypy refuses.
    name: Literal["qlora"] = Field("qlora", description="qlora: LoRA adapters on a base quantised to 4-bit NF4")  # type: ignore[assignment]
    quant_type: Literal["nf4", "fp4"] = Field(
        "nf4", description="4-bit data type; nf4 suits normally distributed weights"
    )
    double_quant: bool = Field(True, description="quantise the quantisation constants too; saves ~0.4 bit/param")
    compute_dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="dtype the 4-bit weights are unpacked to for matmuls"
    )


summary = (
    "LoRA on a base quantised to 4-bit NF4: about a quarter of LoRA's weight memory, slower steps, a small quality cost"
)
model_kinds = frozenset(
    {"causal-lm", "classifier", "tagger", "seq2seq", "vision"}
)  # bitsandbytes layers: no diffusers UNet path
saves_adapter = True
# PEFT's prepare_model_for_kbit_training casts everything not 4-bit to fp32 (so no bf16 base on GPUs);
# bitsandbytes' CPU 4-bit matmul keeps its own copy of each input (5 bytes per input feature on the CPU, 3
# on the H100) and freed dequantised weights stay in the CPU heap (plan/estimate.py). Checkpointing by
# default: the method is chosen to save memory, and on small models its activations outweigh the weights
# it saves (bench/RESULTS.md), as TRL and LLaMA-Factory also do.
footprint = Footprint(
    efficiency=0.55,
    half_base_on_gpu=False,
    quantized="nf4",
    adapter_input_bytes=(5.0, 3.0),
    heap_adapter_input_bytes=7.0,
    heap_dequant_bytes=4.0,
    checkpointing_by_default=True,
)
recommend = Recommendable(
    quality=0.5,
    learning_rate=2e-4,
    trade_off="QLoRA keeps the frozen base in 4-bit NF4: about a quarter of LoRA's weight memory, at slower "
    "steps (4-bit dequantisation) and a small quality cost (Dettmers et al. 2023)",
)
trainable_parameters = lora.trainable_parameters
search_space = lora.search_space
known_good = lora.known_good
save = lora.save


def quantized_bits(cfg: Config) -> float:
    return NF4_BITS[cfg.double_quant]


# Modules kept in float: the output embedding (quantising it costs accuracy for little memory, QLoRA
# paper) and the task heads, which are new, trained fully, and must stay plain nn.Linear for PEFT's
# modules_to_save copy (a 4-bit head crashes in bitsandbytes' forward). transformers' own default
# (its last-parameter rule) misses classifier heads, so the list is given: regexes at any depth.
KEEP_FLOAT = [rf"(.*\.)?{name}" for name in ("lm_head", "embed_out", *HEAD_NAMES)]


def load_kwargs(method_cfg: Config) -> dict[str, Any]:
    import torch

    return quantized_loading(
        load_in_4bit=True,
        bnb_4bit_quant_type=method_cfg.quant_type,
        bnb_4bit_use_double_quant=method_cfg.double_quant,
        bnb_4bit_compute_dtype=getattr(torch, method_cfg.compute_dtype),
    )


def quantized_loading(**quantization: Any) -> dict[str, Any]:
    """`from_pretrained` arguments for a bitsandbytes base (4-bit here, 8-bit in lora_8bit.py): the
    quantisation, with KEEP_FLOAT left in float, and the device it is placed on."""
    import torch
    from transformers import BitsAndBytesConfig

    # transformers leaves BitsAndBytesConfig.__init__ unannotated: called through a typed name here.
    bnb_config: Callable[..., Any] = BitsAndBytesConfig
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return {
        "quantization_config": bnb_config(llm_int8_skip_modules=KEEP_FLOAT, **quantization),
        # Quantisation happens while the weights are placed, so the device must be known at load time.
        "device_map": {"": device if device == "cpu" else torch.cuda.current_device()},
    }


def apply(
    model: Any, method_cfg: Config, gradient_checkpointing: bool = False, task_type: str | None = "CAUSAL_LM"
) -> Any:
    model = prepare_quantized(model, gradient_checkpointing)
    _keep_4bit_weights_trainable_on_cpu(model)
    return lora.apply(model, method_cfg, gradient_checkpointing=False, task_type=task_type)


def prepare_quantized(model: Any, gradient_checkpointing: bool) -> Any:
    """peft's preparation of a quantised base: norms and the head cast to fp32 for stable training, and
    checkpointing turned on when asked (then LoRA's own apply must not turn it on again)."""
    from peft import prepare_model_for_kbit_training

    # peft leaves prepare_model_for_kbit_training unannotated: called through a typed name here.
    prepare: Callable[..., Any] = prepare_model_for_kbit_training
    return prepare(
        model,
        use_gradient_checkpointing=gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )


def _keep_4bit_weights_trainable_on_cpu(model: Any) -> None:
    """bitsandbytes (0.50) repacks a 4-bit weight into an AVX512-BF16 inference layout the first time it
    runs in eval mode without grad (our base scoring and validation passes), and from then on uses a
    kernel with no backward, also in training: gradients to the layers below are silently wrong
    (PyTorch warns "gemv_4bit: an autograd kernel was not registered") and a bias add fails. A model that
    trains keeps the trainable layout; inference after training (load_tuned) still gets the fast one."""
    from bitsandbytes.nn import Linear4bit

    for module in model.modules():
        if isinstance(module, Linear4bit):
            module.support_avx512bf16_for_cpu = False
