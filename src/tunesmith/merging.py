"""Folding a run's adapter into its base weights, and saving the result so it answers like the run.

One implementation for `tunesmith merge`, `output.save_merged` and `tunesmith export --format merged`:

- QLoRA (and 8-bit LoRA) runs merge into their de-quantised base: the quantised weights the adapter was
  trained against are unpacked and the adapter added to them at full precision, then saved in 16 bits;
  never re-quantised (lossy twice) and never added to the original float weights (the adapter learned to
  correct the quantisation's rounding, not those weights).
- The tokenizer is saved with the chat template the run trained with, and a generating model with a
  generation config whose EOS ids are the run's stop tokens: a merged model that does not stop, or renders
  prompts differently, answers worse than the adapter model (what users of other tools report most).

It sits under pipeline (which loads the two copies it needs) and over tasks, data and models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.tasks import get_task

SIXTEEN_BITS = ("bfloat16", "float16")


def merge_weights(float_copy: Any, run_model: Any, config: Any) -> Any:
    """`float_copy` (the run loaded with a float base, `load_tuned(for_merge=True)`) with its adapter
    merged. `run_model` is the run's own model as trained; where its base is quantised, that base is
    de-quantised into the copy first and the result cast to 16 bits."""
    dtype = None
    if is_quantized(run_model):
        dtype = _sixteen_bit_dtype(config)
        _load_dequantized_base(float_copy, run_model)
    merged = float_copy.merge_and_unload()
    return merged.to(dtype) if dtype is not None else merged


def save_merged(model: Any, tokenizer: Any, config: Any, output: Path, stop_model: Any = None) -> None:
    """Weights (safetensors), tokenizer with the run's chat template, and for generating models the
    generation config with the run's stop tokens (read from `stop_model`, the model the run generates
    with; `model` by default)."""
    from tunesmith.data.chat_template import template_for

    model.save_pretrained(output, safe_serialization=True)
    task = get_task(config.task)
    if hasattr(task, "prompt_and_reference"):
        tokenizer.chat_template = template_for(tokenizer, config.data.chat_template)
    tokenizer.save_pretrained(output)
    if getattr(task, "peft_task_type", None) in ("CAUSAL_LM", "SEQ_2_SEQ_LM"):
        _save_generation_config(tokenizer, stop_model if stop_model is not None else model, output)


def is_quantized(model: Any) -> bool:
    return any(_is_bitsandbytes_layer(m) for m in model.modules())


def _sixteen_bit_dtype(config: Any) -> Any:
    """QLoRA's compute dtype where it is 16-bit, else bfloat16 (the 4-bit weights hold less than 16 bits,
    so 16 bits lose nothing of them; fp32 would only double the files)."""
    import torch

    name = getattr(config.method, "compute_dtype", "bfloat16")
    return getattr(torch, name if name in SIXTEEN_BITS else "bfloat16")


def _load_dequantized_base(float_model: Any, quantized_model: Any) -> None:
    """Copy the de-quantised base weights of the run's model into the float copy, layer by layer (both
    are the same PeftModel structure; only the base layers' storage differs). The copy keeps its float
    dtype, so the merge adds the adapter at full precision and only the result is rounded to 16 bits."""
    import torch
    from peft.utils.integrations import dequantize_bnb_weight

    float_modules = dict(float_model.named_modules())
    with torch.no_grad():
        for name, module in quantized_model.named_modules():
            if not _is_bitsandbytes_layer(module):
                continue
            state = getattr(module.weight, "quant_state", None) or getattr(module, "state", None)
            target = float_modules[name].weight
            target.data = dequantize_bnb_weight(module.weight, state=state).to(target.dtype)


def _is_bitsandbytes_layer(module: Any) -> bool:
    """A bitsandbytes quantised Linear (PEFT's LoRA wrappers of the same class name wrap one)."""
    return type(module).__module__.startswith("bitsandbytes")


def _save_generation_config(tokenizer: Any, stop_model: Any, output: Path) -> None:
    from transformers import GenerationConfig

    from tunesmith.data.chat_template import stop_token_ids

    path = output / "generation_config.json"
    generation = GenerationConfig.from_pretrained(output) if path.exists() else GenerationConfig()
    # What the run's own generation stops at (tasks/chat.py and serve pass the model's config the same way),
    # so the merged model stops where the adapter model did.
    eos = sorted(stop_token_ids(tokenizer, stop_model))
    if eos:
        generation.eos_token_id = eos[0] if len(eos) == 1 else eos
    if tokenizer.pad_token_id is not None:
        generation.pad_token_id = tokenizer.pad_token_id
    generation.save_pretrained(output)
