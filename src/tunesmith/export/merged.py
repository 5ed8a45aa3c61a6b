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

from tunesmith.export.parity import ParityInputs, ParityResult, compare_logits, judge, logit_tolerance
from tunesmith.merging import merge_weights, save_merged
from tunesmith.methods import get_method
from tunesmith.models import build
from tunesmith.tasks import get_task

if TYPE_CHECKING:
    from tunesmith.config import RunConfig
    from tunesmith.pipeline import TunedModel

NAME = "merged"
SUMMARY = "safetensors weights with the adapter merged, tokenizer, chat template, generation config (EOS)"


def unsupported(config: RunConfig) -> str | None:
    """Tasks that build their own model (a diffusers pipeline) have no logits to compare."""
    if getattr(get_task(config.task), "load_model", None) is not None:
        return f"task {config.task!r} builds a pipeline, not one transformers model; use `tunesmith merge`"
    return None


def write(tuned: TunedModel, run_dir: Path, output: Path, options: dict) -> list[Path]:
    """Save the merged model into `output` (a staging folder the caller renames when done)."""
    model = merged_model(tuned, run_dir, options)
    save_merged(model, tuned.tokenizer, tuned.config, output, stop_model=tuned.model)
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
# Building the merged model (tunesmith/merging.py, shared with `tunesmith merge`; the GGUF export starts here)


def merged_model(tuned: TunedModel, run_dir: Path, options: dict) -> Any:
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
    return merge_weights(copy, tuned.model, config)
