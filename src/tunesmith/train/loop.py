"""The training loop: one path for every task and method, on one CPU or many GPUs through accelerate.

Phases of `fit`:
  1. plan the steps: a data order that is a pure function of (seed, epoch), micro-batches grouped by
     gradient accumulation, so a position (epoch, group) identifies the next batch exactly;
  2. optimizer, schedule, accelerate wrapping; restore a checkpoint when resuming;
  3. per optimizer step: forward/backward every micro-batch with the loss normalised by the trained
     tokens of the whole step (all micro-batches, all processes), clip, step;
  4. log, validate, keep the best, stop early, checkpoint.
Each process takes every world_size-th example of a global micro-batch, so one process with batch B*W
and W processes with batch B see the same examples per step and follow the same trajectory.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tunesmith.evaluate.metrics import perplexity
from tunesmith.runs.kill_points import kill_point
from tunesmith.runs.rundir import RunDir
from tunesmith.train.checkpoint import (
    load_checkpoint,
    load_trainable_state,
    prune_checkpoints,
    resume_checkpoint,
    save_checkpoint,
    save_trainable,
    step_checkpoints,
)
from tunesmith.train.distributed import broadcast_from_main, check_backend
from tunesmith.train.faults import GracefulInterrupt, nonfinite, nonfinite_error
from tunesmith.train.optimizer import make_optimizer
from tunesmith.train.progress import ProgressReporter
from tunesmith.train.schedule import make_scheduler


@dataclass
class LoopState:
    """Where the loop is; saved in every checkpoint as loop.json."""

    step: int = 0
    epoch: int = 0
    group: int = 0  # next accumulation group within the epoch
    trained_tokens: int = 0
    best_eval_loss: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    train_seconds: float = 0.0
    stopped_early: bool = False
    last_train_loss: float | None = None  # kept so a run resumed at its last step reports the same summary
    skipped_batches: int = 0  # non-finite batches dropped under train.skip_nonfinite

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class FitResult:
    state: LoopState
    total_steps: int
    eval_history: list[dict] = field(default_factory=list)
    last_train_loss: float | None = None


GROUP_CHUNK = 50  # micro-batches sorted together by train.group_by_length (transformers' LengthGroupedSampler)


def epoch_micro_batches(
    n_examples: int, global_batch: int, seed: int, epoch: int, world: int, lengths: list[int] | None = None
) -> list[list[int]]:
    """Shuffled example indices cut into global micro-batches; tails too small to give each process one
    example are dropped (only possible with several processes). With `lengths` (train.group_by_length)
    each chunk of GROUP_CHUNK batches of the shuffled order is sorted by length before the cut, so a
    batch holds similar lengths, and then the batches' order is shuffled, so long and short batches
    alternate over the epoch. Either way the plan is a pure function of (seed, epoch): resume is exact."""
    generator = torch.Generator().manual_seed(seed * 1000 + epoch)
    order = torch.randperm(n_examples, generator=generator).tolist()
    if lengths is not None:
        chunk = GROUP_CHUNK * global_batch
        order = [
            i
            for start in range(0, n_examples, chunk)
            for i in sorted(order[start : start + chunk], key=lambda i: -lengths[i])
        ]
    batches = [order[i : i + global_batch] for i in range(0, n_examples, global_batch)]
    if lengths is not None:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    return [b for b in batches if len(b) >= world]


def example_length(example) -> int:
    """Tokens of an encoded example, what group_by_length sorts by (0 for examples without tokens: images)."""
    return len(getattr(example, "input_ids", None) or ())


def accumulation_groups(micro_batches: list[list[int]], grad_accum: int) -> list[list[list[int]]]:
    return [micro_batches[i : i + grad_accum] for i in range(0, len(micro_batches), grad_accum)]


def total_optimizer_steps(n_examples: int, train_cfg, world: int) -> int:
    if train_cfg.max_steps:
        return train_cfg.max_steps
    micro = len(epoch_micro_batches(n_examples, train_cfg.batch_size * world, 0, 0, world))
    per_epoch = math.ceil(micro / train_cfg.grad_accum)
    return max(1, math.ceil(per_epoch * train_cfg.epochs))


def _sum_across_processes(accelerator, value: float) -> float:
    if accelerator.num_processes == 1:
        return float(value)
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=accelerator.device)
    return float(accelerator.reduce(tensor, reduction="sum").item())


@torch.no_grad()
def validation_loss(model, task, examples, *, batch_size: int, pad_id: int, accelerator) -> float:
    """Mean token loss over the validation split, each process scoring its share."""
    model.eval()
    rank, world = accelerator.process_index, accelerator.num_processes
    mine = examples[rank::world]
    loss_total, tokens = 0.0, 0
    for start in range(0, len(mine), batch_size):
        batch = {k: v.to(accelerator.device) for k, v in task.collate(mine[start : start + batch_size], pad_id).items()}
        with accelerator.autocast():
            loss_sum, n = task.loss_sum(model, batch)
        loss_total += float(loss_sum)
        tokens += int(n)
    model.train()
    return _sum_across_processes(accelerator, loss_total) / max(_sum_across_processes(accelerator, tokens), 1)


def _task_metrics(task, *, training: bool) -> dict:
    """A task's own means since the last call (preference: rewards, margins), logged beside the loss: those of
    the main process's batches (each process keeps its own)."""
    read = getattr(task, "step_metrics", None)
    return read(training) if read is not None else {}


def _maybe_die_for_test(step: int) -> None:
    """Fault injection for the resume tests: a real SIGKILL right after step k's checkpoint."""
    target = os.environ.get("TUNESMITH_TEST_KILL_AT_STEP")
    if target and int(target) == step:
        os.kill(os.getpid(), signal.SIGKILL)


def fit(
    *,
    model,
    task,
    train_set,
    val_set,
    config,
    accelerator,
    run: RunDir,
    pad_id: int,
    resume: bool = False,
    on_evaluation=None,
    before_evaluation=None,
) -> FitResult:
    """`on_evaluation(step, metrics)`, when given, is called after every validation pass (a search trial
    reports to its pruner there); it may raise to abandon the run, or return True to stop after this pass
    as early stopping does (a time budget), keeping the best weights. `before_evaluation(step)` is called as
    a pass starts: a time budget tells the training steps' time from the validation's by it."""
    tcfg = config.train
    rank, world = accelerator.process_index, accelerator.num_processes
    main = accelerator.is_main_process
    check_backend(accelerator)  # FSDP/DeepSpeed asked for where accelerate would silently run DDP: refused

    # 1. Plan the steps.
    total_steps = total_optimizer_steps(len(train_set), tcfg, world)
    global_batch = tcfg.batch_size * world
    lengths = [example_length(e) for e in train_set] if tcfg.group_by_length else None

    # 2. Optimizer, schedule, wrapping, resume.
    optimizer = make_optimizer(model, config)  # train.optimizer, over the method's parameter groups (LoRA+)
    params = [p for group in optimizer.param_groups for p in group["params"]]  # what clipping measures
    scheduler = make_scheduler(optimizer, total_steps, tcfg.warmup_ratio, tcfg.scheduler)
    # The scheduler is stepped by us once per optimizer step; accelerate would step it once per process.
    model, optimizer = accelerator.prepare(model, optimizer)
    raw_model = accelerator.unwrap_model(model)

    state = LoopState()
    if resume:
        # The newest checkpoint whose manifest verifies (the main process looks, cleans up leftovers of a
        # killed write, and tells the others); every process then loads its share of it.
        found = resume_checkpoint(run.path, report=print) if main else None
        found = broadcast_from_main(accelerator, None if found is None else str(found))
        found = None if found is None else Path(found)
        if found is not None:
            state = LoopState(**load_checkpoint(found, accelerator, raw_model, optimizer, scheduler))
        if main:
            run.truncate_metrics(state.step)  # lines logged after the checkpoint are replayed
            print(
                f"resuming from {found} (step {state.step} of {total_steps})"
                if found is not None
                else f"no complete checkpoint in {run.checkpoints}; starting from step 0"
            )
    eval_history = [r for r in run.read_metrics() if "eval_loss" in r] if resume else []

    saved_step: list[int | None] = [None]  # the step of the last step checkpoint this process wrote

    def checkpoint(best: bool = False) -> None:
        accelerator.wait_for_everyone()
        if best:
            if main:
                save_trainable(run.checkpoints / "best", raw_model)
        else:
            # Every process: accelerate's save_state writes each one's share (its RNG states; under
            # FSDP/DeepSpeed its shard of the model and optimizer).
            save_checkpoint(run.checkpoints / f"step-{state.step}", accelerator, raw_model, scheduler, state.to_dict())
            if main:
                prune_checkpoints(run.checkpoints, tcfg.keep_checkpoints)
            saved_step[0] = state.step
        accelerator.wait_for_everyone()

    def evaluate() -> bool:
        """Validation pass; returns True when early stopping says stop."""
        if not val_set:
            return False
        if before_evaluation is not None:
            before_evaluation(state.step)
        loss = validation_loss(model, task, val_set, batch_size=tcfg.batch_size, pad_id=pad_id, accelerator=accelerator)
        record = {"step": state.step, "epoch": state.epoch, "eval_loss": loss, "eval_ppl": perplexity(loss)}
        record.update({f"eval_{k}": v for k, v in _task_metrics(task, training=False).items()})
        eval_history.append(record)
        improved = state.best_eval_loss is None or loss < state.best_eval_loss - tcfg.early_stopping_min_delta
        if improved:
            state.best_eval_loss, state.best_step, state.evals_without_improvement = loss, state.step, 0
        else:
            state.evals_without_improvement += 1
        if main:
            run.log(record)
            kill_point(f"eval-{state.step}")
            progress.note(
                f"step {state.step}: validation loss {loss:.4f} (ppl {perplexity(loss):.2f})"
                + (" best" if improved else "")
            )
        if improved and tcfg.load_best_at_end:
            checkpoint(best=True)
        patience = tcfg.early_stopping_patience
        asked_to_stop = bool(on_evaluation(state.step, dict(record))) if on_evaluation is not None else False
        return asked_to_stop or (patience is not None and state.evals_without_improvement >= patience)

    # 3-4. The loop.
    _task_metrics(task, training=True)  # drop what the batch-size probe and the base scores left
    progress = ProgressReporter(total_steps, enabled=main, start_step=state.step, unit=task.target_unit)
    model.train()
    window_loss, window_tokens, window_start = 0.0, 0, time.perf_counter()
    last_train_loss = state.last_train_loss
    grad_norm = None
    stop = False
    # Ctrl-C: the first press finishes the step and stops with a checkpoint (below), a second aborts.
    with progress, GracefulInterrupt() as interrupt:
        while state.step < total_steps and not stop:
            groups = accumulation_groups(
                epoch_micro_batches(len(train_set), global_batch, config.seed, state.epoch, world, lengths),
                tcfg.grad_accum,
            )
            while state.group < len(groups) and state.step < total_steps and not stop:
                step_start = time.perf_counter()
                micro = [
                    {
                        k: v.to(accelerator.device)
                        for k, v in task.collate([train_set[i] for i in mb[rank::world]], pad_id).items()
                    }
                    for mb in groups[state.group]
                ]
                local_tokens = sum(task.count_targets(b) for b in micro)
                step_tokens = _sum_across_processes(accelerator, local_tokens)
                step_loss = 0.0
                for j, batch in enumerate(micro):
                    # Gradients are all-reduced once per optimizer step, not per micro-batch.
                    sync = accelerator.no_sync(model) if j < len(micro) - 1 else contextlib.nullcontext()
                    with sync, accelerator.autocast():
                        loss_sum, _ = task.loss_sum(model, batch)
                        # DDP averages gradients over processes; scale by world so the result is
                        # the gradient of (total loss / total tokens).
                        loss = loss_sum * (world / max(step_tokens, 1))
                    accelerator.backward(loss)
                    step_loss += float(loss_sum.detach())
                    kill_point(f"step-{state.step + 1}")
                # A NaN/Inf is caught before the optimizer applies it; the loss summed over processes
                # makes every process take the same decision.
                step_loss = _sum_across_processes(accelerator, step_loss)
                if tcfg.max_grad_norm is not None and math.isfinite(step_loss):
                    grad_norm = float(accelerator.clip_grad_norm_(params, tcfg.max_grad_norm))
                bad = nonfinite(step_loss, grad_norm if tcfg.max_grad_norm is not None else None)
                if bad is not None:
                    optimizer.zero_grad(set_to_none=True)
                    if not tcfg.skip_nonfinite:
                        done = step_checkpoints(run.checkpoints)
                        raise nonfinite_error(
                            bad, state.step + 1, scheduler.get_last_lr()[0], run.path, done[-1] if done else None
                        )
                    state.group += 1  # the batch is dropped: no optimizer or schedule step
                    state.skipped_batches += 1
                    if main:
                        progress.note(
                            f"step {state.step + 1}: {bad}; batch skipped (train.skip_nonfinite), "
                            f"{state.skipped_batches} so far"
                        )
                    continue
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)

                state.step += 1
                state.group += 1
                state.trained_tokens += int(step_tokens)
                state.train_seconds += time.perf_counter() - step_start
                window_loss += step_loss
                window_tokens += int(step_tokens)
                last_train_loss = state.last_train_loss = step_loss / max(step_tokens, 1)
                progress.update(
                    state.step,
                    loss=last_train_loss,
                    lr=scheduler.get_last_lr()[0],
                    tokens_per_s=state.trained_tokens / max(state.train_seconds, 1e-9),
                )

                if state.step % tcfg.log_every == 0 or state.step == total_steps:
                    elapsed = time.perf_counter() - window_start
                    if main:
                        run.log(
                            {
                                "step": state.step,
                                "epoch": state.epoch,
                                "loss": window_loss / max(window_tokens, 1),
                                "lr": scheduler.get_last_lr()[0],
                                "grad_norm": grad_norm,
                                "trained_tokens": state.trained_tokens,
                                "tokens_per_s": window_tokens / max(elapsed, 1e-9),
                                **_task_metrics(task, training=True),
                                **({"skipped_batches": state.skipped_batches} if state.skipped_batches else {}),
                            }
                        )
                    window_loss, window_tokens, window_start = 0.0, 0, time.perf_counter()

                at_eval = tcfg.eval_every and state.step % tcfg.eval_every == 0
                if at_eval or state.step == total_steps:
                    stop = evaluate()
                    state.stopped_early = stop and state.step < total_steps
                if (tcfg.save_every and state.step % tcfg.save_every == 0) or (not tcfg.save_every and at_eval):
                    checkpoint()
                    _maybe_die_for_test(state.step)
                if _sum_across_processes(accelerator, float(interrupt.requested)) > 0:  # Ctrl-C on any process
                    if saved_step[0] != state.step:
                        checkpoint()
                    if main:
                        progress.note(
                            f"stopped by Ctrl-C at step {state.step} of {total_steps}; checkpoint "
                            f"{run.checkpoints / f'step-{state.step}'} saved. Continue with:\n"
                            f"  tunesmith train --resume {run.path}"
                        )
                    raise KeyboardInterrupt(f"Ctrl-C at step {state.step}")
            if state.group >= len(groups):
                state.epoch += 1
                state.group = 0

    patience_stop = (
        tcfg.early_stopping_patience is not None and state.evals_without_improvement >= tcfg.early_stopping_patience
    )
    if state.stopped_early and main and patience_stop:  # else on_evaluation asked to stop and said why
        progress.note(
            f"early stopping at step {state.step}: no improvement in {tcfg.early_stopping_patience} validation passes"
        )
    best = run.checkpoints / "best" / "trainable.safetensors"
    if tcfg.load_best_at_end and state.best_step is not None and state.best_step != state.step and best.exists():
        from safetensors.torch import load_file

        load_trainable_state(raw_model, load_file(str(best)))
        if main:
            progress.note(
                f"loaded the best weights (step {state.best_step}, validation loss {state.best_eval_loss:.4f})"
            )
    accelerator.wait_for_everyone()
    return FitResult(state=state, total_steps=total_steps, eval_history=eval_history, last_train_loss=last_train_loss)
