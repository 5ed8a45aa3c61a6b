"""The one place where a run's flow is composed. The CLI, the Python API and search trials call it.

train:  config -> model reference -> tokenizer -> data (read, normalise, split, encode) -> model + method
        -> base scores on test -> fit -> save weights -> tuned scores on test -> summary, report, plots
The other entry points (evaluate_run, predict, merge, validate) are shorter paths through the same pieces.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple, cast

from tunesmith.config import DataConfig, RunConfig, dump_config, load_saved_config
from tunesmith.data.prepare import DataSplits, load_examples, prepare_splits, save_examples
from tunesmith.data.prompts import read_prompt_records
from tunesmith.data.report import split_sources
from tunesmith.errors import TunesmithError
from tunesmith.merging import merge_weights, save_merged
from tunesmith.methods import count_parameters, get_method
from tunesmith.models import build
from tunesmith.models.limits import check_run_lengths
from tunesmith.models.resolve import ResolvedModel, resolve_model
from tunesmith.runs.rundir import RunDir, atomic_directory, atomic_write_text
from tunesmith.runs.tracking import RunTracking
from tunesmith.tasks import get_task


@dataclass
class RunResult:
    run_dir: Path
    summary: dict


class TunedModel(NamedTuple):
    model: Any  # PeftModel (adapter methods) or the transformers model (full, freeze)
    tokenizer: Any
    config: RunConfig
    meta: dict  # what the task learned from the data (labels)


# ---------------------------------------------------------------------------------------------------
# Building blocks


def _accelerator(precision: str):
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    from tunesmith.train.precision import resolve_precision

    # accelerate keeps one global state per process and refuses a second Accelerator with other
    # settings. Each run (and each search trial) sets its own precision, so start from a clean state;
    # the process group (PartialState) is kept, so this is safe under `accelerate launch` too.
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    return Accelerator(mixed_precision=resolve_precision(precision), cpu=not torch.cuda.is_available())


def load_tokenizer_for(config: RunConfig) -> tuple[ResolvedModel, Any]:
    """The model reference and its preprocessor: a tokenizer for text tasks (the task decides)."""
    from tunesmith.models.safe_load import check_folder

    if config.model.from_run:  # model.name becomes the earlier run's model folder, and is saved so
        from accelerate import PartialState

        with PartialState().main_process_first():  # one process merges an adapter; the others read its folder
            config.model.name = str(model_of_run(config.model.from_run, config.task))
    resolved = resolve_model(config.model.name, config.model.gguf_file)
    if resolved.source != "hub":  # before any data is read or a run folder made: pickle weights need allow_pickle
        check_folder(resolved.path, config.model.allow_pickle)
    if config.model.trust_remote_code:
        print(f"note: model.trust_remote_code is on: Python code shipped with {config.model.name} runs in this process")
    return resolved, get_task(config.task).load_processor(resolved, config.model)


def _pad_id(processor) -> int:
    return getattr(processor, "pad_token_id", None) or 0


def load_base_model(config: RunConfig, resolved: ResolvedModel, meta: dict, *, quantized: bool = True, pad_id: int = 0):
    """The untrained base for the task (models/build.py), as the method loads it."""
    task = get_task(config.task)
    loader = getattr(task, "load_model", None)
    if loader is not None:
        return loader(config, resolved, meta)
    return build.base_model(config, resolved, task, meta, pad_id, quantized=quantized)


def read_splits(config: RunConfig) -> DataSplits:
    task = get_task(config.task)
    return prepare_splits(config.data, config.seed, task.normalise, task.stratify_key, getattr(task, "read", None))


def encode_splits(
    config: RunConfig,
    splits: DataSplits,
    tokenizer,
    meta: dict,
    names: tuple[str, ...] = ("train", "validation", "test"),
) -> dict[str, list]:
    task = get_task(config.task)
    return {name: task.encode(examples, tokenizer, config, meta) for name, examples in splits.items() if name in names}


def pack_splits(config: RunConfig, encoded: dict[str, list]) -> dict[str, list]:
    """data.packing: the train and validation examples packed into rows of data.max_length tokens."""
    from tunesmith.data.packing import pack_examples, padding_share

    task = get_task(config.task)
    if not getattr(task, "packable", False):
        raise TunesmithError(
            f"data.packing packs conversations into rows; task {config.task} does not take it"
            + getattr(task, "packing_note", ""),  # e.g. that it packs its text itself
            where="data.packing",
            fix="remove data.packing (or set it to false)",
        )
    packed = {name: pack_examples(examples, config.data.max_length) for name, examples in encoded.items()}
    train, rows = encoded["train"], packed["train"]
    if isinstance(config.train.batch_size, int):
        print(
            f"packing: {len(train)} training examples into {len(rows)} rows of up to {config.data.max_length} tokens; "
            f"padding {100 * padding_share(train, config.train.batch_size):.0f}% of computed positions unpacked "
            f"(batches in data order), {100 * padding_share(rows, config.train.batch_size):.0f}% packed"
        )
    return packed


def _print_parameters(model, method_name: str) -> dict:
    trainable, total = count_parameters(model)
    print(
        f"method {method_name}: {trainable:,} trainable of {total:,} parameters ({100 * trainable / max(total, 1):.2f}%)"
    )
    return {"trainable": trainable, "total": total}


def _score_test(model, tokenizer, test, config: RunConfig, accelerator, meta: dict) -> tuple[dict, list[dict]]:
    task = get_task(config.task)
    with accelerator.autocast():
        return task.evaluate_test(model, tokenizer, test, config, meta)


# ---------------------------------------------------------------------------------------------------
# train


def train(
    config: RunConfig | None = None,
    *,
    resume: str | Path | None = None,
    force: bool = False,
    on_evaluation=None,
    score_test: bool = True,
    before_evaluation=None,
) -> RunResult:
    """Fine-tune as `config` says, or continue the run in `resume` exactly where it stopped. A run the
    memory estimate says will not fit is refused with the cheapest fix, unless `force`. `on_evaluation`
    and `before_evaluation` are passed to the loop (`train.loop.fit`): called with (step, metrics) after each
    validation pass, and with the step as one starts.
    `score_test` False skips the test split (autotrain's search runs: only validation chooses, and
    generating test answers for every run would cost the search a run in three)."""
    tracking = RunTracking()  # the runs index and track.report_to: registered at start, closed at the end
    try:
        return _train(config, resume, force, on_evaluation, tracking, score_test, before_evaluation)
    except BaseException as exc:
        tracking.fail(exc)  # the index and the trackers say failed (or interrupted) and why
        raise


@dataclass
class _Prepared:
    """What the phases of a run hand each other before the model exists."""

    config: RunConfig
    task: ModuleType  # the task's module (tasks/__init__.py lists what it provides)
    resolved: ResolvedModel
    tokenizer: Any
    splits: DataSplits
    meta: dict
    encoded: dict


def _train(
    config, resume, force, on_evaluation, tracking: RunTracking, score_test: bool = True, before_evaluation=None
) -> RunResult:
    from accelerate.utils import set_seed

    # 1. The config that rules the run, and the accelerator.
    config, run = _resolve_config(config, resume)
    set_seed(config.seed)
    accelerator = _accelerator(config.train.precision)
    main = accelerator.is_main_process
    from tunesmith.train.cpu import configure_cpu_threads
    from tunesmith.train.distributed import check_backend

    check_backend(accelerator)  # FSDP/DeepSpeed asked for where accelerate would silently run DDP

    cpu_note = configure_cpu_threads()  # threads = physical cores (or the user's OMP_NUM_THREADS)
    if main and accelerator.device.type == "cpu":
        print(cpu_note)

    # 2. Tokenizer and data, before the (slow) model load, so bad data fails fast; then the memory check.
    prepared = _prepare_data(config)
    check = _preflight(prepared, force, main)
    if run is None:  # a new run (a resumed one was opened with its config)
        run = _create_run(prepared, main)
    tracking.start(run, config, main=main, resumed=resume is not None)
    if main:  # which file each split came from, with its absolute path: never a guess
        print(f"data ({prepared.splits.format}):\n{split_sources(prepared.splits)}")

    # 3. Model and method; base scores (once per run: a resumed run keeps the ones it has).
    started = time.time()
    model, params = _build_model(prepared, accelerator, main)
    before_training = getattr(prepared.task, "before_training", None)
    if before_training is not None:  # every process, before anything calls the loss: preference's reference
        note = before_training(model, prepared.encoded, config, prepared.meta, accelerator.autocast)
        if note and main:
            print(note)
    if check.auto and resume is None:
        _confirm_batch_size(
            model, prepared.task, prepared.encoded["train"], config, check, accelerator, prepared.tokenizer, run
        )
    before_fit = getattr(prepared.task, "before_fit", None)
    if before_fit is not None and main:  # e.g. class images generated once with the base model
        with accelerator.autocast():
            before_fit(model, prepared.tokenizer, config, prepared.meta)
    accelerator.wait_for_everyone()
    base_metrics = _base_scores(run, model, prepared, accelerator, check, main)
    accelerator.wait_for_everyone()

    # 4. Train.
    from tunesmith.train.compile import compiled_blocks
    from tunesmith.train.loop import fit

    with (
        _out_of_memory_advice(config, check, "while training"),
        compiled_blocks(model, config.train.compile, accelerator.device.type),
    ):
        result = fit(
            model=model,
            task=prepared.task,
            train_set=prepared.encoded["train"],
            val_set=prepared.encoded["validation"],
            config=config,
            accelerator=accelerator,
            run=run,
            pad_id=_pad_id(prepared.tokenizer),
            resume=resume is not None,
            on_evaluation=on_evaluation,
            before_evaluation=before_evaluation,
        )
    model = accelerator.unwrap_model(model)

    # 5. Save, score, report (main process only).
    summary: dict = {}
    if main:
        summary = _finish(prepared, run, model, result, base_metrics, params, accelerator, started, score_test)
        tracking.finish(summary)
        print(f"done: {run.path}")
    accelerator.wait_for_everyone()
    return RunResult(run.path, summary)


def _resolve_config(config: RunConfig | None, resume) -> tuple[RunConfig, RunDir | None]:
    """The config given, or the one a resumed run saved (the saved one wins where they differ)."""
    run = None
    if resume is not None:
        run = RunDir.open(resume)
        saved = load_saved_config(run.config_path)
        if config is not None and dump_config(config) != dump_config(saved):
            print(f"note: resuming with the config saved in {run.config_path}; the one given differs and is ignored")
            config = saved
        # The same config given again is kept: it still holds the secrets the saved copy masks (a password).
        config = config if config is not None else saved
    if config is None:
        raise TunesmithError("nothing to train", fix="pass a config, or resume=<run directory>")
    return config, run


def _prepare_data(config: RunConfig) -> _Prepared:
    task = get_task(config.task)
    check = getattr(get_method(config.method.name), "check", None)
    if check is not None:  # settings the method cannot train with, refused before anything loads
        check(config)
    resolved, tokenizer = load_tokenizer_for(config)
    check_run_lengths(config, resolved, tokenizer)  # before reading data: a length the model cannot hold
    splits = read_splits(config)
    meta = task.setup(splits, config)
    # Each split is tokenised once; the test split is scored from its records (generation, the task's
    # own batches), so training encodes only what the loop reads.
    encoded = encode_splits(config, splits, tokenizer, meta, ("train", "validation"))
    if not encoded["train"]:
        raise TunesmithError(
            "the training split is empty", where="data.train", fix="add records or lower data.split's other ratios"
        )
    if config.data.packing:
        encoded = pack_splits(config, encoded)
    return _Prepared(config, task, resolved, tokenizer, splits, meta, encoded)


def _preflight(prepared: _Prepared, force: bool, main: bool):
    """Will it fit? (and batch_size: auto -> a number, saved as such in the run's config)"""
    from tunesmith.plan.preflight import preflight

    config = prepared.config
    longest = max(getattr(e, "full_length", 0) for e in prepared.encoded["train"])
    check = preflight(prepared.resolved.path, config, longest, force=force)
    config.train.batch_size = check.batch_size
    if main:
        print(check.note)
    return check


def _create_run(prepared: _Prepared, main: bool) -> RunDir:
    from accelerate.utils import broadcast_object_list

    config = prepared.config
    path = [str(RunDir.create(config.output.dir, config.name).path) if main else None]
    broadcast_object_list(path)
    run = RunDir(cast(str, path[0]))  # every process now holds the main process's path
    if main:
        run.write_json("task.json", prepared.meta)
        run.write_json("data_report.json", prepared.splits.report())  # format, split sizes, records skipped and where
        save_examples([prepared.task.to_record(e) for e in prepared.splits.test], saved_test_path(run.path))
        # Last: config.yaml makes the folder a run (for --resume and the runs list), so a run killed
        # before this point has none and is never resumed without the files above.
        atomic_write_text(run.config_path, dump_config(config))
        print(f"run directory: {run.path}")
    return run


def _build_model(prepared: _Prepared, accelerator, main: bool):
    """The model to train, on its device, with the method applied and its parameter counts."""
    config, task = prepared.config, prepared.task
    own_loader = getattr(task, "load_model", None) is not None  # a diffusers pipeline applies the method itself
    model = build.training_model(config, prepared.resolved, task, prepared.meta, _pad_id(prepared.tokenizer))
    if not own_loader:
        from tunesmith.train.loss import configure_loss

        configure_loss(model, config.train.loss_chunk_tokens)
    params = _print_parameters(model, config.method.name)
    if not hasattr(model, "hf_device_map"):  # a 4-bit model was placed while loading
        model.to(accelerator.device)
    from tunesmith.train import padding_free

    if not own_loader:  # also runs packed rows (data.packing) as one row with per-example attention
        note = padding_free.enable(model, config.train.padding_free, config.task, getattr(task, "packable", False))
        if note and main:
            print(note)
    if config.data.packing and not padding_free.is_enabled(model):
        from tunesmith.data.packing import check_packing

        check_packing(model)  # refuses a model that would attend across packed examples
    return model, params


def _finish(
    prepared: _Prepared,
    run: RunDir,
    model,
    result,
    base_metrics: dict,
    params: dict,
    accelerator,
    started: float,
    score_test: bool = True,
) -> dict:
    """Weights saved, the tuned model scored, summary, predictions, report and the comparison printed."""
    from tunesmith.evaluate.metrics import perplexity  # clamped: a diverged run must not overflow here
    from tunesmith.evaluate.report import write_report

    config, task, tokenizer, splits = prepared.config, prepared.task, prepared.tokenizer, prepared.splits
    method = get_method(config.method.name)
    weights = run.weights_dir(method.saves_adapter)
    with atomic_directory(weights, then=f"; then `tunesmith train --resume {run.path}` saves them again") as staging:
        build.save_weights(model, config, staging)
        tokenizer.save_pretrained(staging)
    tuned_metrics: dict[str, Any] = {}
    tuned_rows: list[dict[str, Any]] = []
    if splits.test and score_test:
        print("scoring the tuned model on the test split")
        tuned_metrics, tuned_rows = _score_test(model, tokenizer, splits.test, config, accelerator, prepared.meta)
        task.plots(tuned_rows, prepared.meta, run.plots)
    samples = base_metrics.get("samples", [])
    if hasattr(task, "samples"):
        samples = samples + _task_samples(task, model, tokenizer, config, accelerator, prepared.meta, run, "tuned")
    state = result.state
    summary = {
        "status": "stopped_early" if state.stopped_early else "completed",
        "run_dir": str(run.path),
        "task": config.task,
        "model": config.model.name,
        "model_source": prepared.resolved.source,
        "from_run": config.model.from_run,  # the run this one started from (model.from_run), or None
        # What this run allowed to execute or unpickle (both off unless the run's config turned them on).
        "trust_remote_code": config.model.trust_remote_code,
        "allow_pickle": config.model.allow_pickle,
        "method": config.method.name,
        "parameters": params,
        "precision": accelerator.mixed_precision,
        "processes": accelerator.num_processes,
        "steps": state.step,
        "total_steps": result.total_steps,
        "trained_tokens": state.trained_tokens,
        "skipped_batches": state.skipped_batches,  # non-finite batches dropped (train.skip_nonfinite)
        "train_seconds": round(state.train_seconds, 2),
        "trained_tokens_per_s": round(state.trained_tokens / max(state.train_seconds, 1e-9), 1),
        "wall_seconds": round(time.time() - started, 2),
        "final_train_loss": result.last_train_loss,
        "best_step": state.best_step,
        "best_eval_loss": state.best_eval_loss,
        "best_eval_ppl": perplexity(state.best_eval_loss) if state.best_eval_loss is not None else None,
        "data": {name: len(x) for name, x in splits.items()},
        "skipped_records": splits.bad.count if splits.bad else 0,  # data.on_bad_record: skip; where: data_report.json
        "weights": str(weights),
        "base": base_metrics.get("metrics", {}),
        "tuned": tuned_metrics,
        "baseline": base_metrics.get("baseline"),
    }
    if samples:
        summary["samples"] = samples
    run.write_json("summary.json", summary)
    run.write_json("test_predictions.json", {"base": base_metrics.get("rows", []), "tuned": tuned_rows})
    write_report(run, summary, base_metrics.get("rows", []), tuned_rows, config)
    if config.output.save_merged and method.saves_adapter:
        merge(run.path, run.path / "model_merged")
    print_comparison(summary)
    return summary


def _base_scores(run, model, prepared: _Prepared, accelerator, check, main: bool) -> dict:
    """The base model's test scores (and the task's baseline and samples), computed once per run, from the
    model before training: through its switched-off fresh adapter, or, where the method rewrote the base
    weights (PiSSA), with the adapter on, which before training reproduces the base."""
    config, task, splits, meta, tokenizer = (
        prepared.config,
        prepared.task,
        prepared.splits,
        prepared.meta,
        prepared.tokenizer,
    )
    method = get_method(config.method.name)
    rewrites = getattr(method, "rewrites_base", None)
    adapter_off = method.saves_adapter and not (rewrites is not None and rewrites(config.method))
    base_metrics = run.read_json("base_metrics.json")
    if main and config.eval.compare_base and splits.test and not base_metrics:
        print(f"scoring the base model on {min(len(splits.test), config.eval.max_samples or 10**9)} test examples")
        score = _score_base_through_adapter if adapter_off else _score_test
        with _out_of_memory_advice(config, check, "while scoring the base model"):
            metrics, rows = score(model, tokenizer, splits.test, config, accelerator, meta)
        base_metrics = {"metrics": metrics, "rows": rows}
        reference = task.baseline(splits, config, meta)
        if reference is not None:
            base_metrics["baseline"] = reference
        if hasattr(task, "samples"):
            base_metrics["samples"] = _task_samples(
                task, model, tokenizer, config, accelerator, meta, run, "base", adapter_off=adapter_off
            )
        run.write_json("base_metrics.json", base_metrics)
    return base_metrics


def _confirm_batch_size(model, task, train_set, config, check, accelerator, tokenizer, run) -> None:
    """`train.batch_size: auto`: one forward and backward pass on the longest examples at the estimated
    batch, halved on an out-of-memory error or a measured peak over the device budget. Weights and RNG
    are left as they were, so the run is the same as one started with the confirmed number."""
    import torch

    from tunesmith.train.checkpoint import rng_state, set_rng_state
    from tunesmith.train.memory import probe_batch_size

    longest = sorted(train_set, key=lambda e: getattr(e, "full_length", 0), reverse=True)
    pad_id = _pad_id(tokenizer)

    def step(batch: int) -> None:
        saved = rng_state()
        model.train()
        try:
            inputs = {k: v.to(accelerator.device) for k, v in task.collate(longest[:batch], pad_id).items()}
            with accelerator.autocast():
                loss_sum, count = task.loss_sum(model, inputs)
            (loss_sum / max(int(count), 1)).backward()
        finally:
            model.zero_grad(set_to_none=True)
            set_rng_state(saved)

    budget = check.estimate.device_bytes if check.estimate is not None else None
    batch = probe_batch_size(
        step,
        min(config.train.batch_size, len(longest)),
        budget,
        accelerator.device,
        log=print if accelerator.is_main_process else (lambda _: None),
    )
    # Every process must train with the same batch: take the smallest any of them confirmed.
    batch = int(accelerator.gather(torch.tensor([batch], device=accelerator.device)).min())
    if batch != config.train.batch_size:
        config.train.batch_size = batch
        if accelerator.is_main_process:
            atomic_write_text(run.config_path, dump_config(config))


@contextlib.contextmanager
def _out_of_memory_advice(config, check, phase: str):
    """An out-of-memory error becomes a TunesmithError naming the estimate's largest parts and the fixes."""
    from tunesmith.plan.preflight import out_of_memory_advice
    from tunesmith.train.memory import is_out_of_memory

    try:
        yield
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        raise out_of_memory_advice(config, check, phase) from None


def _task_samples(task, model, tokenizer, config, accelerator, meta, run, label, adapter_off=False) -> list[str]:
    """Outputs of fixed inputs (text-to-image: prompts x seeds) saved under plots/ for the report, paths
    relative to the run; the base model's are made through the switched-off adapter."""
    with model.disable_adapter() if adapter_off else contextlib.nullcontext(), accelerator.autocast():
        paths = task.samples(model, tokenizer, config, meta, run.plots, label)
    return [str(Path(p).relative_to(run.path)) for p in paths]


def _score_base_through_adapter(model, tokenizer, test, config, accelerator, meta):
    """Base scores for adapter methods: the same model with its (fresh) adapters switched off."""
    with model.disable_adapter():
        return _score_test(model, tokenizer, test, config, accelerator, meta)


def print_comparison(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    base, tuned, reference = summary.get("base", {}), summary.get("tuned", {}), summary.get("baseline") or {}
    keys = [k for k in tuned if isinstance(tuned[k], float)]
    if not keys:
        return
    table = Table(title="test split: base vs tuned")
    columns = ["metric", "base"] + (["baseline"] if reference else []) + ["tuned", "change"]
    for column in columns:
        table.add_column(column, justify="right" if column != "metric" else "left")

    def cell(value) -> str:
        return "-" if value is None else f"{value:.4f}"

    for key in keys:
        b, t = base.get(key), tuned[key]
        row = (
            [key, cell(b)]
            + ([cell(reference.get(key))] if reference else [])
            + [f"{t:.4f}", "-" if b is None else f"{t - b:+.4f}"]
        )
        table.add_row(*row)
    if summary.get("best_eval_loss") is not None:
        table.add_row(
            "validation loss (best)", "-", *(["-"] if reference else []), f"{summary['best_eval_loss']:.4f}", "-"
        )
    if reference.get("name"):  # which baseline, with the settings it chose on validation
        table.caption = f"baseline: {reference['name']}"
    Console().print(table)


# ---------------------------------------------------------------------------------------------------
# Loading a finished run


def load_tuned(run_dir: str | Path, *, for_merge: bool = False, allow_pickle: bool = False) -> TunedModel:
    """The model of a finished run (base + adapter, or the saved full model) with its tokenizer.
    `allow_pickle` (`--allow-pickle`) also loads pickle weights, with weights_only=True (models/safe_load.py)."""
    run = RunDir.open(run_dir)
    config = load_saved_config(run.config_path)
    config.model.allow_pickle = config.model.allow_pickle or allow_pickle
    method = get_method(config.method.name)
    task = get_task(config.task)
    weights = run.weights_dir(method.saves_adapter)
    if not weights.exists():
        raise TunesmithError(
            f"{run.path} has no {weights.name}/ (the run did not finish)",
            fix=f"continue it with `tunesmith train --resume {run.path}`",
        )
    tokenizer = task.load_processor(ResolvedModel(str(weights), None, "local", str(weights)), config.model)
    meta = run.read_json("task.json")
    # Merging needs float base weights; a 4-bit base would be merged lossy.
    model = build.trained_model(config, task, weights, meta, _pad_id(tokenizer), for_merge=for_merge)
    model.eval()
    return TunedModel(model, tokenizer, config, meta)


def evaluate_run(
    run_dir: str | Path, *, test_file: str | None = None, max_samples: int | None = None, allow_pickle: bool = False
) -> dict:
    """Base vs tuned on the run's saved test split (or another file), printed and written to a new
    eval-N.json in the run (N = 1, 2, ...: earlier evaluations are kept), with the test file and the
    settings it was scored with; eval.json is a copy of the latest."""
    run = RunDir.open(run_dir)
    model, tokenizer, config, meta = load_tuned(run.path, allow_pickle=allow_pickle)
    task = get_task(config.task)
    if max_samples is not None:
        config.eval.max_samples = max_samples
    source = test_file or str(saved_test_path(run.path))
    test = (
        load_examples(source, config.data, task.normalise, "test", getattr(task, "read", None))[0]
        if test_file
        else read_saved_test(run.path, task)
    )
    accelerator = _accelerator(config.train.precision)
    started = time.time()
    limit = config.eval.max_samples
    scored = len(test) if limit is None else min(len(test), limit)
    _say(f"scoring the tuned model on {scored} test examples")
    tuned, _ = _score_test(model, tokenizer, test, config, accelerator, meta)
    _say(f"scoring the base model on {scored} test examples")
    if get_method(config.method.name).saves_adapter:
        with model.disable_adapter():
            base, _ = _score_test(model, tokenizer, test, config, accelerator, meta)
    else:
        resolved = resolve_model(config.model.name, config.model.gguf_file)
        base_model = load_base_model(config, resolved, meta, pad_id=_pad_id(tokenizer)).eval()
        base, _ = _score_test(base_model, tokenizer, test, config, accelerator, meta)
    result = {
        "test_file": source,
        "evaluated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(time.time() - started, 2),
        "settings": _eval_settings(config),
        "base": base,
        "tuned": tuned,
    }
    path = _write_evaluation(run, result)
    print_comparison(result)
    print(f"wrote {path} (eval.json: the latest evaluation)")
    return result


def model_of_run(run_dir: str | Path, task: str) -> Path:
    """What a finished run produced, as a plain transformers folder to start another run from (SFT, then
    DPO): its full model, or its adapter merged into its base, once, into the run's model_merged/ (what
    `output.save_merged` writes). The run must have trained the model kind `task` trains."""
    from tunesmith.taskcards import get_card

    run = RunDir.open(run_dir)
    config = load_saved_config(run.config_path)
    if get_card(config.task).model_kind != get_card(task).model_kind:
        raise TunesmithError(
            f"{run.path} is a {config.task} run ({get_card(config.task).model_kind}); a {task} run trains a "
            f"{get_card(task).model_kind}",
            where="model.from_run",
            fix=f"start from a run whose task trains a {get_card(task).model_kind} (e.g. task: chat)",
        )
    method = get_method(config.method.name)
    weights = run.weights_dir(method.saves_adapter)
    if not weights.exists():
        raise TunesmithError(
            f"{run.path} has no {weights.name}/ (the run did not finish)",
            where="model.from_run",
            fix=f"finish it first: `tunesmith train --resume {run.path}`",
        )
    if not method.saves_adapter:
        return weights
    merged = run.path / "model_merged"
    if not (merged / "config.json").exists():
        _say(f"model.from_run: merging {run.path.name}'s adapter into its base, once, into {merged}")
        merge(run.path, merged)
    return merged


def saved_test_path(run_dir: str | Path) -> Path:
    """Where a run saved its test split (the records evaluate_run and the export parity checks read)."""
    return Path(run_dir) / "data" / "test.jsonl"


def read_saved_test(run_dir: str | Path, task: ModuleType) -> list:
    """The run's saved test split. It is already normalised (canonical columns, system prompt applied):
    read without the run's column mapping, which named the original file's columns. Its image paths are
    the ones the run checked when it read its data (absolute, outside data/), so they may lead out."""
    examples, _ = load_examples(str(saved_test_path(run_dir)), DataConfig(allow_outside_paths=True), task.normalise)
    return examples


def _say(line: str) -> None:
    """A progress line: stderr, so stdout holds only results."""
    print(line, file=sys.stderr, flush=True)


def _eval_settings(config: RunConfig) -> dict:
    """What an evaluation's scores depend on besides the weights and the test file."""
    return {
        "max_samples": config.eval.max_samples,
        "max_new_tokens": config.eval.max_new_tokens,
        "batch_size": config.eval.batch_size,
        "precision": config.train.precision,
    }


def _write_evaluation(run: RunDir, result: dict) -> Path:
    """eval-N.json with the next free N, claimed with an exclusive create so two evaluations at once
    never share a number; eval.json is rewritten as a copy of it."""
    number = 1 + max((_eval_number(p) for p in run.path.glob("eval-*.json")), default=0)
    while True:
        path = run.path / f"eval-{number}.json"
        try:
            path.open("x").close()
            break
        except FileExistsError:
            number += 1
    try:
        run.write_json(path.name, result)
    except BaseException:
        path.unlink(missing_ok=True)  # no empty eval-N.json left behind
        raise
    run.write_json("eval.json", result)
    return path


def _eval_number(path: Path) -> int:
    suffix = path.stem.removeprefix("eval-")
    return int(suffix) if suffix.isdigit() else 0


def score_split(run_dir: str | Path, split: str = "validation") -> dict:
    """The tuned model's task metrics on one split of the run's own data, re-read with its config and
    seed (a search trial's objective is scored on validation, never on test)."""
    model, tokenizer, config, meta = load_tuned(run_dir)
    examples = dict(read_splits(config).items())[split]
    if not examples:
        raise TunesmithError(
            f"the run's {split} split is empty", where="data.split", fix=f"give the run a {split} split"
        )
    metrics, _ = _score_test(model, tokenizer, examples, config, _accelerator(config.train.precision), meta)
    return metrics


def read_predict_input(run_dir: str | Path, input_path: str) -> list:
    """The records of `input_path` as the run's task reads them for `predict`, checked without loading
    the model, so a bad line fails in a second, naming its file and line. Prompts need no answers (a
    chat conversation may end in a user turn, a text to classify needs no label); which inputs each task
    takes is in docs/commands.md."""
    run = RunDir.open(run_dir)
    config = load_saved_config(run.config_path)
    task = get_task(config.task)
    # Every input record gets an output line, so a bad one stops predict rather than being skipped
    # under the run's data.on_bad_record: skip (the output would no longer line up with the input).
    data_cfg = config.data.model_copy(update={"on_bad_record": "error"})
    normalise = getattr(task, "normalise_prompts", task.normalise)
    examples, _ = load_examples(input_path, data_cfg, normalise, None, _predict_reader(task, run))
    return examples


def _predict_reader(task, run: RunDir):
    """The reader of predict's input, with load_examples' signature: the task's `read_prompts` (given the
    run's task.json, e.g. token classification's tag names), else its `read`, else read_prompt_records
    (which also reads a .txt of prompts, one a line)."""
    if hasattr(task, "read_prompts"):
        meta = run.read_json("task.json")

        def read_prompts(source, data_cfg, split=None, bad=None):
            return task.read_prompts(source, data_cfg, meta, bad)

        return read_prompts
    return getattr(task, "read", None) or read_prompt_records


def predict(
    run_dir: str | Path,
    input_path: str,
    output_path: str,
    *,
    max_new_tokens: int | None = None,
    allow_pickle: bool = False,
) -> int:
    """Run the tuned model on every record of `input_path` (read_predict_input: checked before the model
    loads) and write one JSON line per record: chat answers as messages, classifications as labels with
    scores. Tasks whose outputs are files (text-to-image) write them into the folder `output_path` with
    an index.jsonl."""
    output = Path(output_path)
    if output.exists():
        raise TunesmithError(
            f"{output} already exists", fix="choose a new --output path; tunesmith never overwrites results"
        )
    examples = read_predict_input(run_dir, input_path)
    model, tokenizer, config, meta = load_tuned(run_dir, allow_pickle=allow_pickle)
    task = get_task(config.task)
    accelerator = _accelerator(config.train.precision)
    kwargs = {"max_new_tokens": max_new_tokens} if max_new_tokens else {}
    if hasattr(task, "predict_to"):
        with accelerator.autocast():
            return task.predict_to(model, tokenizer, examples, config, meta, output, **kwargs)
    with accelerator.autocast():
        rows = task.predict(model, tokenizer, examples, config, meta, **kwargs)
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return len(rows)


def merge(run_dir: str | Path, output: str | Path, *, allow_pickle: bool = False) -> Path:
    """Fold the adapter into the base weights and save a plain transformers model (safetensors)."""
    output = Path(output)
    if output.exists() and any(output.iterdir()):
        raise TunesmithError(f"{output} exists and is not empty", fix="choose a new --output folder")
    model, tokenizer, config, _ = load_tuned(run_dir, for_merge=True, allow_pickle=allow_pickle)
    if not hasattr(model, "merge_and_unload"):
        raise build.refuse_merge(config, Path(run_dir))
    # A quantised-base run merges into the base it trained against, read from the run's own model.
    trained = load_tuned(run_dir, allow_pickle=allow_pickle).model if _quantized_base(config) else model
    merged = merge_weights(model, trained, config)
    with atomic_directory(output) as staging:  # a merge cut short never looks like a model
        save_merged(merged, tokenizer, config, staging)
    print(f"merged model written to {output}")
    return output


def _quantized_base(config: RunConfig) -> bool:
    return hasattr(get_method(config.method.name), "quantized_bits")


def validate(config: RunConfig) -> str:
    """Check config, model reference and data without training; return the data report."""
    from tunesmith.data.report import data_report

    resolved, tokenizer = load_tokenizer_for(config)
    check_run_lengths(config, resolved, tokenizer)  # before reading data: a length the model cannot hold
    splits = read_splits(config)
    meta = get_task(config.task).setup(splits, config)
    encoded = encode_splits(config, splits, tokenizer, meta)
    return data_report(config, resolved, tokenizer, splits, encoded, get_task(config.task))


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenizers warns after fork (accelerate, DataLoader)
