"""`--format merged`: the adapter folded into the base weights, saved as a plain transformers model
(safetensors) with the tokenizer, the chat template the run trained with and a generation config whose
EOS is the run's stop tokens, so `from_pretrained`, vLLM or `transformers serve` answer like the run.

QLoRA runs merge into a de-quantised 16-bit base: the 4-bit weights the adapter was trained against are
unpacked and the adapter added to them, never re-quantised to 4-bit (lossy twice) and never added to the
original float weights (the adapter learned to correct the 4-bit rounding, not those weights).
Full and freeze runs are already plain models: they are saved as they are (parity is then exact).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.errors import TunesmithError
from tunesmith.export.parity import ParityInputs, ParityResult, compare_logits, judge, logit_tolerance
from tunesmith.methods import get_method
from tunesmith.models import build
from tunesmith.tasks import get_task

if TYPE_CHECKING:
    from tunesmith.config import RunConfig
    from tunesmith.pipeline import TunedModel

NAME = "merged"
SUMMARY = "safetensors weights with the adapter merged, tokenizer, chat template, generation config (EOS)"
SIXTEEN_BITS = ("bfloat16", "float16")


def unsupported(config: RunConfig) -> str | None:
    """Tasks that build their own model (a diffusers pipeline) have no logits to compare."""
    if getattr(get_task(config.task), "load_model", None) is not None:
        return f"task {config.task!r} builds a pipeline, not one transformers model; use `tunesmith merge`"
    return None


def write(tuned: TunedModel, run_dir: Path, output: Path, options: dict) -> list[Path]:
    """Save the merged model into `output` (a staging folder the caller renames when done)."""
    if options.get("quantize"):  # the merged weights keep the model's dtype; quantising is another format's
        raise TunesmithError(
            f"--format merged has no --quantize (got {options['quantize']!r}): it keeps the model's dtype",
            where="--quantize",
            fix="leave --quantize out; for quantised weights use --format onnx --quantize int8 (encoder models)",
        )
    model = _merged_model(tuned, run_dir, options)
    model.save_pretrained(output, safe_serialization=True)
    _save_tokenizer(tuned, output)
    return sorted(p for p in output.iterdir() if p.is_file())


def parity(tuned: TunedModel, output: Path, inputs: ParityInputs, options: dict) -> ParityResult:
    """Reload the written folder with the task's model class and compare its logits with the run's
    own model (base + adapter, as `predict` loads it) on held-out inputs."""
    import torch

    exported = get_task(tuned.config.task).model_class().from_pretrained(output, dtype="auto").eval()
    dtype = str(exported.dtype).removeprefix("torch.")
    with torch.no_grad():
        reference = tuned.model(**inputs.batch).logits
        logits = exported(**inputs.batch).logits
    tolerance = dict(logit_tolerance(dtype), **options.get("tolerance", {}))
    result = judge(compare_logits(reference, logits, inputs.mask), tolerance)
    result.extra["dtype"] = dtype
    return result


# ---------------------------------------------------------------------------------------------------
# Building the merged model


def _merged_model(tuned: TunedModel, run_dir: Path, options: dict) -> Any:
    """The run's weights as one plain model. The merge happens on a second copy loaded here: merging
    replaces the adapter layers in place, and `tuned.model` stays the parity reference."""
    from tunesmith.pipeline import load_tuned

    config = tuned.config
    if not get_method(config.method.name).saves_adapter:
        return tuned.model  # full / freeze: already plain weights
    allow_pickle = bool(options.get("allow_pickle", False))
    copy = load_tuned(run_dir, for_merge=True, allow_pickle=allow_pickle).model
    if not hasattr(copy, "merge_and_unload"):  # prompt tuning: virtual tokens, no weight delta
        raise build.refuse_merge(config, Path(run_dir))
    dtype = None
    if _is_quantized(tuned.model):
        dtype = _sixteen_bit_dtype(config)
        _load_dequantized_base(copy, tuned.model)
    merged = copy.merge_and_unload()
    return merged.to(dtype) if dtype is not None else merged


def _is_quantized(model: Any) -> bool:
    return any(_is_bitsandbytes_layer(m) for m in model.modules())


def _sixteen_bit_dtype(config: RunConfig) -> Any:
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


# ---------------------------------------------------------------------------------------------------
# What travels with the weights


def _save_tokenizer(tuned: TunedModel, output: Path) -> None:
    """The tokenizer with the chat template the run trained with (its override, or the fallback a run
    without a template used), and for generating models a generation config whose EOS ids are the run's
    stop tokens: a merged model that does not stop, or renders prompts differently, answers worse than
    the adapter model (the breakage users of other tools report most)."""
    from tunesmith.data.chat_template import template_for

    tokenizer, config = tuned.tokenizer, tuned.config
    task = get_task(config.task)
    if hasattr(task, "prompt_and_reference"):
        tokenizer.chat_template = template_for(tokenizer, config.data.chat_template)
    tokenizer.save_pretrained(output)
    if task.peft_task_type in ("CAUSAL_LM", "SEQ_2_SEQ_LM"):
        _save_generation_config(tuned, output)


def _save_generation_config(tuned: TunedModel, output: Path) -> None:
    from transformers import GenerationConfig

    from tunesmith.data.chat_template import stop_token_ids

    tokenizer = tuned.tokenizer
    path = output / "generation_config.json"
    generation = GenerationConfig.from_pretrained(output) if path.exists() else GenerationConfig()
    eos = sorted(stop_token_ids(tokenizer, tuned.model))
    if eos:
        generation.eos_token_id = eos[0] if len(eos) == 1 else eos
    if tokenizer.pad_token_id is not None:
        generation.pad_token_id = tokenizer.pad_token_id
    generation.save_pretrained(output)
