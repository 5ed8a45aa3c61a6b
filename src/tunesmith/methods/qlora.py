"""QLoRA (Dettmers et al. 2023): LoRA on a base quantised to 4-bit NF4 with bitsandbytes.

The base weights take ~0.5 byte/param instead of 4; the adapters and optimizer states stay in fp32.
bitsandbytes >= 0.45 runs 4-bit on CPUs too, so the same config works on a laptop and on a GPU.
"""

from __future__ import annotations

import torch

from tunesmith.methods import lora
from tunesmith.methods.freeze import HEAD_NAMES

saves_adapter = True

# Modules kept in float: the output embedding (quantising it costs accuracy for little memory, QLoRA
# paper) and the task heads, which are new, trained fully, and must stay plain nn.Linear for PEFT's
# modules_to_save copy (a 4-bit head crashes in bitsandbytes' forward). transformers' own default
# (its last-parameter rule) misses classifier heads, so the list is given: regexes at any depth.
KEEP_FLOAT = [rf"(.*\.)?{name}" for name in ("lm_head", "embed_out", *HEAD_NAMES)]


def load_kwargs(method_cfg) -> dict:
    from transformers import BitsAndBytesConfig

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=method_cfg.quant_type,
            bnb_4bit_use_double_quant=method_cfg.double_quant,
            bnb_4bit_compute_dtype=getattr(torch, method_cfg.compute_dtype),
            llm_int8_skip_modules=KEEP_FLOAT,
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
    _keep_4bit_weights_trainable_on_cpu(model)
    return lora.apply(model, method_cfg, gradient_checkpointing=False, task_type=task_type)


def _keep_4bit_weights_trainable_on_cpu(model) -> None:
    """bitsandbytes (0.50) repacks a 4-bit weight into an AVX512-BF16 inference layout the first time it
    runs in eval mode without grad (our base scoring and validation passes), and from then on uses a
    kernel with no backward, also in training: gradients to the layers below are silently wrong
    (PyTorch warns "gemv_4bit: an autograd kernel was not registered") and a bias add fails. A model that
    trains keeps the trainable layout; inference after training (load_tuned) still gets the fast one."""
    from bitsandbytes.nn import Linear4bit

    for module in model.modules():
        if isinstance(module, Linear4bit):
            module.support_avx512bf16_for_cpu = False
