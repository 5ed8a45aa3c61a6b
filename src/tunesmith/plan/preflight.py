"""Pre-flight check of a run: will it fit in memory? If not, refuse before loading anything and name the
cheapest change that makes it fit. Also resolves `train.batch_size: auto` to the largest batch that fits.

"Cheapest" follows what each change costs the user: a smaller micro-batch with more accumulation keeps
the same effective batch and result (only speed changes); gradient checkpointing costs ~30% speed;
LoRA/QLoRA change what is trained; a shorter max length drops data. Every suggested change is checked
with the estimator before it is offered.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from tunesmith.config import RunConfig, uses_gradient_checkpointing
from tunesmith.errors import TunesmithError
from tunesmith.methods import by_quality, get_method, methods_for
from tunesmith.methods.base import MethodSettings
from tunesmith.plan.estimate import Estimate, estimate, run_settings
from tunesmith.taskcards import TASKS

GIB = 1024**3
AUTO_BATCH_CAP = 64  # beyond this, accumulation is as good and the estimate's error grows


@dataclass
class Preflight:
    estimate: Estimate | None
    batch_size: int
    note: str
    auto: bool = False  # the batch size came from `train.batch_size: auto` (a probe step confirms it)


def _estimate(model_ref: str, config: RunConfig, seq_len: int, batch: int, **changes: Any) -> Estimate:
    settings = run_settings(config, seq_len, batch)
    settings.update(changes)
    return estimate(model_ref, hardware="auto", **settings)


def cheaper_methods(config: RunConfig) -> list[MethodSettings]:
    """Methods that could replace the run's, as configs that keep its settings: those registered for the
    task's model kind that accept every option the user set (a LoRA rank carries over to QLoRA; a method
    without a rank is not offered to a config that sets one: the switch would drop it), and accept their
    values (a PiSSA start does not carry over to a quantised base), best quality first. The estimator
    says which of them fit."""
    quality = get_method(config.method.name).recommend.quality
    set_fields = config.method.model_fields_set - {"name"}
    options = []
    for name in by_quality(methods_for(TASKS[config.task].model_kind)):
        module = get_method(name)
        if module.recommend.quality < quality and not set_fields - set(module.Config.model_fields):
            try:
                options.append(module.Config(**{k: getattr(config.method, k) for k in set_fields}, name=name))
            except ValidationError:
                continue
    return options


def _fixes(model_ref: str, config: RunConfig, seq_len: int, batch: int, est: Estimate) -> list[str]:
    fixes = []
    if 1 <= est.max_batch < batch:
        accum = config.train.grad_accum * math.ceil(batch / est.max_batch)
        fixes.append(f"--set train.batch_size={est.max_batch} --set train.grad_accum={accum} (same effective batch)")
    if (
        not uses_gradient_checkpointing(config)
        and _estimate(model_ref, config, seq_len, batch, grad_checkpointing=True).fits
    ):
        fixes.append("--set train.gradient_checkpointing=true (~30% slower)")
    for method in cheaper_methods(config):
        if _estimate(model_ref, config, seq_len, batch, method=method).fits:
            fixes.append(f"--set method.name={method.name}")
            break
    shorter = seq_len // 2
    if shorter >= 64 and _estimate(model_ref, config, shorter, batch).fits:
        fixes.append(f"--set data.max_length={shorter} (cuts longer records)")
    return fixes


def preflight(model_ref: str, config: RunConfig, longest: int, *, force: bool = False) -> Preflight:
    """Check the run against the local device's memory. `longest` is the longest encoded example
    (batches are padded to their longest member). Models the estimator cannot size pass with a note."""
    seq_len = max(8, min(longest, config.data.max_length))
    size = config.train.batch_size
    auto = size == "auto"
    batch = 1 if isinstance(size, str) else size  # auto: sized below from batch 1 up
    try:
        est = _estimate(model_ref, config, seq_len, batch)
    except TunesmithError as exc:
        if auto:
            raise TunesmithError(
                f"train.batch_size: auto needs a memory estimate, and {exc.message}",
                where="train.batch_size",
                fix="set a number, e.g. train.batch_size: 8",
            ) from None
        return Preflight(None, batch, f"pre-flight memory check skipped: {exc.message}")
    if auto:
        batch = max(1, min(est.max_batch, AUTO_BATCH_CAP))
        est = _estimate(model_ref, config, seq_len, batch)
    need, have = est.total_bytes / GIB, est.device_bytes / GIB
    note = f"memory estimate: {need:.1f} GiB of {have:.1f} GiB on {est.hardware.name} (batch {batch}, {seq_len} tokens)"
    if est.fits or force:
        return Preflight(est, batch, note + ("" if est.fits else "; does not fit, going on because of --force"), auto)
    parts = sorted(est.breakdown.items(), key=lambda kv: -kv[1])[:2]
    biggest = ", ".join(f"{name} {size / GIB:.1f} GiB" for name, size in parts)
    fixes = _fixes(model_ref, config, seq_len, batch, est)
    raise TunesmithError(
        f"this run needs about {need:.1f} GiB but {est.hardware.name} has {have:.1f} GiB (largest parts: {biggest})",
        where="train.batch_size" if fixes and "batch_size" in fixes[0] else "method.name",
        fix=("cheapest first: " + "; or ".join(fixes) if fixes else "use a smaller model")
        + "; run `tunesmith estimate` for the breakdown, or pass --force to try anyway",
    )


def out_of_memory_advice(config: RunConfig, check: Preflight | None, phase: str) -> TunesmithError:
    """What to tell a user whose run ran out of memory anyway (the estimate was wrong or the device busy):
    the parts the estimate thought largest, and the changes that lower memory, cheapest first."""
    train = config.train
    fixes = []
    if isinstance(train.batch_size, int) and train.batch_size > 1:
        fixes.append(
            f"--set train.batch_size={train.batch_size // 2} --set train.grad_accum={train.grad_accum * 2} "
            "(same effective batch)"
        )
    if not uses_gradient_checkpointing(config):
        fixes.append("--set train.gradient_checkpointing=true (~30% slower)")
    cheaper = cheaper_methods(config)
    if cheaper:
        fixes.append(f"--set method.name={cheaper[0].name}")
    if config.data.max_length >= 128:
        fixes.append(f"--set data.max_length={config.data.max_length // 2} (cuts longer records)")
    parts = ""
    if check is not None and check.estimate is not None:
        top = sorted(check.estimate.breakdown.items(), key=lambda kv: -kv[1])[:3]
        parts = (
            " The estimate's largest parts: " + ", ".join(f"{name} {size / GIB:.2f} GiB" for name, size in top) + "."
        )
    return TunesmithError(
        f"out of memory {phase} (batch {train.batch_size}, max_length {config.data.max_length}, method "
        f"{config.method.name}).{parts}",
        where="train.batch_size",
        fix="start a new run with, cheapest first: "
        + "; or ".join(fixes or ["a smaller model"])
        + ". Checkpoints written so far are kept in the run directory",
    )
