"""QLoRA (Dettmers et al. 2023): LoRA on a base quantised to 4-bit NF4 with bitsandbytes.

The base weights take ~0.5 byte/param instead of 4; the adapters and optimizer states stay in fp32.
bitsandbytes >= 0.45 runs 4-bit on CPUs too, so the same config works on a laptop and on a GPU.
"""

from __future__ import annotations

import torch

from tunesmith.methods import lora

saves_adapter = True


def load_kwargs(method_cfg) -> dict:
    from transformers import BitsAndBytesConfig

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=method_cfg.quant_type,
            bnb_4bit_use_double_quant=method_cfg.double_quant,
            bnb_4bit_compute_dtype=getattr(torch, method_cfg.compute_dtype),
        ),
        # Quantisation happens while the weights are placed, so the device must be known at load time.
        "device_map": {"": device if device == "cpu" else torch.cuda.current_device()},
    }


def apply(model, method_cfg, gradient_checkpointing: bool = False, task_type: str = "CAUSAL_LM"):
    from peft import prepare_model_for_kbit_training

    # Casts norms and the head to fp32 for stable training and, when asked, turns on checkpointing.
    model = prepare_model_for_kbit_training(
        model,
        use_gradient_checkpointing=gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )
    return lora.apply(model, method_cfg, gradient_checkpointing=False, task_type=task_type)
