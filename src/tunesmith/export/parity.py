"""The parity check every export runs: held-out inputs from the run's own test split, the figures that
compare an export's outputs with the run's model on them, and the verdict against stated tolerances.

A format module computes its exported outputs in its own runtime (transformers, onnxruntime, llama.cpp)
and calls `compare_logits` and `judge` here, so every format reports the same figures the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.errors import TunesmithError
from tunesmith.pipeline import TunedModel, read_saved_test, saved_test_path
from tunesmith.tasks import get_task

if TYPE_CHECKING:
    import torch

DEFAULT_SAMPLES = 8  # enough positions (a few hundred tokens) for a stable max error, seconds on a CPU

# Tolerances by the dtype both models compute in. A merge changes only the rounding: W + BA is summed once
# in the weights' dtype instead of per forward pass, so the error is a few ulps of the weights' dtype,
# amplified through the layers. The relative error is taken against each position's largest |logit| (the
# logit scale), since an element-wise ratio is meaningless for logits near zero.
MAX_RELATIVE_ERROR = {
    "float32": 1e-3,  # fp32 ulp ~1e-7: anything near 1e-3 means a wrong weight, not rounding
    "bfloat16": 5e-2,  # bf16 keeps 8 mantissa bits (ulp ~4e-3); a few ulps summed over layers
    "float16": 2e-2,  # fp16 keeps 11 mantissa bits (ulp ~5e-4)
}
# Greedy decoding follows the top-1 token: 99% of held-out positions must pick the same one. 16-bit
# rounding may flip a near-tie, which a tiny or barely trained model has many of, hence the lower bar.
MIN_TOP1_AGREEMENT = {"float32": 0.99, "bfloat16": 0.95, "float16": 0.95}


@dataclass
class ParityInputs:
    """A padded batch of held-out inputs, ready for the run's model: `batch` holds the model's keyword
    arguments (input_ids and attention_mask, or pixel_values); `mask` marks the positions to compare
    (1 = a real token), None where the outputs have no positions (one row of class scores per input)."""

    batch: dict[str, Any]
    mask: Any
    count: int
    source: str
    texts: list[str] | None = None  # chat prompts as rendered text (a GGUF check tokenizes them again)


@dataclass
class ParityResult:
    """Figures of one parity check, the tolerances they were held to, and the verdict."""

    metrics: dict[str, float]
    tolerance: dict[str, float]
    passed: bool
    detail: str
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "metrics": self.metrics,
            "tolerance": self.tolerance,
            "passed": self.passed,
            "detail": self.detail,
            **self.extra,
        }


# ---------------------------------------------------------------------------------------------------
# Held-out inputs


def parity_inputs(tuned: TunedModel, run_dir: Path, samples: int = DEFAULT_SAMPLES) -> ParityInputs:
    """The first `samples` examples of the run's saved test split, as its tokenizer encodes them. A chat
    prompt is the conversation up to its last assistant turn, rendered with the run's chat template and
    the generation prompt (what the model sees when it answers); other tasks encode as they train."""
    if samples < 1:
        raise TunesmithError(f"--samples must be at least 1, got {samples}", where="--samples", fix="--samples 8")
    task = get_task(tuned.config.task)
    source = saved_test_path(run_dir)
    if not source.exists():
        raise TunesmithError(
            f"{source} is missing: the parity check compares outputs on the run's held-out test split",
            fix="export a run trained with a test split (data.split.test > 0, the default)",
        )
    examples = read_saved_test(run_dir, task)
    if not examples:
        raise TunesmithError(
            f"{source} holds no examples: the parity check needs held-out inputs",
            fix="export a run trained with a test split (data.split.test > 0, the default)",
        )
    chosen = examples[:samples]
    texts = None
    if hasattr(task, "prompt_and_reference"):
        texts = _chat_texts(tuned, task, chosen)
        batch = _chat_prompts(tuned, texts)
    else:
        batch = _encoded_batch(tuned, task, chosen)
    mask = batch.get("attention_mask")
    if task.peft_task_type == "SEQ_2_SEQ_LM":  # logits are over decoder positions: the target tokens
        mask = batch["labels"] != -100
    return ParityInputs(batch=batch, mask=mask, count=len(chosen), source=str(source), texts=texts)


def _chat_texts(tuned: TunedModel, task: Any, examples: list) -> list[str]:
    # A plain-text record's text is itself the input; a conversation is cut where the model answers.
    template = tuned.config.data.chat_template
    return [
        e.text
        if e.messages is None
        else task.render_prompts(tuned.tokenizer, [task.prompt_and_reference(e)[0]], template)[0]
        for e in examples
    ]


def _chat_prompts(tuned: TunedModel, texts: list[str]) -> dict[str, Any]:
    tokenizer, config = tuned.tokenizer, tuned.config
    previous_side = tokenizer.padding_side
    tokenizer.padding_side = "right"  # every row starts at position 0, as in training
    try:
        encoded = tokenizer(
            texts,
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=config.data.max_length,
            add_special_tokens=False,  # the template wrote them
        )
    finally:
        tokenizer.padding_side = previous_side
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


def _encoded_batch(tuned: TunedModel, task: Any, examples: list) -> dict[str, Any]:
    encoded = task.encode(examples, tuned.tokenizer, tuned.config, tuned.meta)
    pad_id = getattr(tuned.tokenizer, "pad_token_id", None) or 0
    batch = dict(task.collate(encoded, pad_id))
    if task.peft_task_type != "SEQ_2_SEQ_LM":  # seq2seq models build their decoder inputs from labels
        batch.pop("labels", None)
    return batch


# ---------------------------------------------------------------------------------------------------
# Figures and verdict


def compare_logits(reference: torch.Tensor, exported: torch.Tensor, mask: torch.Tensor | None) -> dict[str, float]:
    """max_abs_error, max_rel_error (each position's error over its largest |reference logit|) and
    top1_agreement (share of positions whose argmax is the same), over positions where `mask` is 1.
    Logits are [batch, positions, classes] (with a [batch, positions] mask) or [batch, classes]."""
    import torch

    ref, out = reference.detach().float().cpu(), exported.detach().float().cpu()
    if ref.shape != out.shape:
        raise ValueError(f"reference logits {tuple(ref.shape)} and exported logits {tuple(out.shape)} differ in shape")
    if mask is not None and ref.dim() == 3:
        keep = mask.detach().cpu().bool()
        ref, out = ref[keep], out[keep]
    ref, out = ref.reshape(-1, ref.shape[-1]), out.reshape(-1, out.shape[-1])
    error = (ref - out).abs().amax(dim=-1)
    scale = ref.abs().amax(dim=-1).clamp_min(torch.finfo(torch.float32).tiny)
    return {
        "max_abs_error": float(error.max()),
        "max_rel_error": float((error / scale).max()),
        "top1_agreement": float((ref.argmax(dim=-1) == out.argmax(dim=-1)).float().mean()),
        "positions": float(ref.shape[0]),
    }


def logit_tolerance(dtype_name: str) -> dict[str, float]:
    """The tolerance for logits computed in `dtype_name` ("float32", "bfloat16", "float16")."""
    key = dtype_name if dtype_name in MAX_RELATIVE_ERROR else "bfloat16"  # another 16-bit or 8-bit float
    return {"max_rel_error": MAX_RELATIVE_ERROR[key], "min_top1_agreement": MIN_TOP1_AGREEMENT[key]}


def judge(metrics: dict[str, float], tolerance: dict[str, float]) -> ParityResult:
    """The verdict: a `min_X` tolerance is a lower bound on metric X, any other key an upper bound."""
    failures = []
    for key, bound in tolerance.items():
        name = key.removeprefix("min_")
        value = metrics[name]
        ok = value >= bound if key.startswith("min_") else value <= bound
        if not ok:
            relation = ">=" if key.startswith("min_") else "<="
            failures.append(f"{name} = {value:.3g}, must be {relation} {bound:.3g}")
    detail = "; ".join(failures) if failures else "within tolerance"
    return ParityResult(metrics=metrics, tolerance=tolerance, passed=not failures, detail=detail)
