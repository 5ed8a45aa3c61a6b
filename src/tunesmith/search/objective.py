"""One trial = one `pipeline.train` run with the sampled values, in a normal run directory of the study.

Phases of `run_trial`:
  1. sample the values, build the trial's config (its run directory goes under <study>/trials/);
  2. train, reporting each validation pass to the pruner (and to a time budget, when there is one);
  3. score the objectives: loop metrics from the summary, task metrics on the validation split;
  4. record the outcome in the trial (Optuna) and in the run directory (trial.json, and summary.json
     for a pruned or failed run, so the folder says what happened to it).
A failure that is the trial's own (out of memory, a diverged loss, any TunesmithError from these values)
fails that trial with its reason and the study goes on; a metric that does not exist stops the study.
"""

from __future__ import annotations

import json
import math
import os
import socket
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tunesmith.config import RunConfig, SearchParam
from tunesmith.errors import TunesmithError
from tunesmith.search.space import COST_METRICS, LOOP_METRICS, config_with, suggest

if TYPE_CHECKING:
    from tunesmith.search.budget import Budget


class TrialFailed(Exception):
    """This trial failed for a reason of its own; Optuna records it as failed and the study goes on."""


class StudyError(TunesmithError):
    """A problem every trial would hit (an objective the task does not report): the study stops."""


@dataclass
class TrialSetup:
    base: RunConfig  # the study's config; trials differ only in the searched values
    study_dir: Path
    space: dict[str, SearchParam]
    budget: Budget | None = None  # search.budget.Budget for autotrain: step limits and a time guard
    defaults: dict = field(default_factory=dict)  # the config's own values, to mark the trial that runs them
    extra_overrides: dict = field(default_factory=dict)
    score_test: bool = True  # False: the trial's run skips the test split (autotrain: validation alone chooses)


def worker_id() -> str:
    """host:pid, so a resumed study can tell the trials of dead local workers from live remote ones."""
    return f"{socket.gethostname()}:{os.getpid()}"


def trial_dir_name(number: int) -> str:
    return f"trial{number:04d}"


def find_run_dir(study_dir: Path, number: int) -> Path | None:
    """The run directory a trial created (RunDir adds a timestamp in front of the name)."""
    found = sorted(Path(study_dir, "trials").glob(f"*-{trial_dir_name(number)}"))
    return found[-1] if found else None


def trial_config(setup: TrialSetup, values: dict, number: int) -> RunConfig:
    config = config_with(setup.base, {**values, **setup.extra_overrides}, where=f"trial {number}")
    config.name = trial_dir_name(number)
    config.output.dir = str(Path(setup.study_dir, "trials"))
    # The base model scores the same in every trial; the final training scores it once.
    config.eval.compare_base = False
    return config


def _pruning_value(metrics: dict, objectives: dict) -> float:
    """The intermediate value the pruner compares. A task metric is only known after the trial, so its
    trials are compared on validation loss, signed so that the study's direction favours lower loss."""
    metric, direction = next(iter(objectives.items()))
    if metric in LOOP_METRICS:
        return metrics[metric]
    return metrics["eval_loss"] if direction == "minimize" else -metrics["eval_loss"]


def _record(
    study_dir: Path, number: int, trial, state: str, reason: str | None, extra: dict | None = None
) -> Path | None:
    """Write what happened into the trial's run directory and the trial's attributes."""
    from tunesmith.runs.rundir import RunDir

    run_dir = find_run_dir(study_dir, number)
    if reason:
        trial.set_user_attr("reason", reason[:2000])
    if run_dir is None:
        return None
    trial.set_user_attr("run_dir", str(run_dir))
    run = RunDir(run_dir)
    run.write_json(
        "trial.json",
        {
            "study_dir": str(study_dir),
            "trial": number,
            "state": state,
            "reason": reason,
            "params": trial.params,
            **(extra or {}),
        },
    )
    if state in ("pruned", "failed") and not (run_dir / "summary.json").exists():
        steps = [r["step"] for r in run.read_metrics() if "step" in r]
        run.write_json(
            "summary.json",
            {
                "status": state,
                "reason": reason,
                "run_dir": str(run_dir),
                "steps": max(steps) if steps else 0,
                "search_trial": number,
            },
        )
    return run_dir


def run_trial(trial, setup: TrialSetup, values: dict | None = None):
    """`values`: already drawn (autotrain's successive halving draws them to size the run first)."""
    import optuna

    from tunesmith import pipeline

    search = setup.base.search
    objectives = search.objectives
    study_dir = Path(setup.study_dir)

    # 1. Values and config.
    trial.set_user_attr("worker", worker_id())
    values = suggest(trial, setup.space) if values is None else values
    if values == setup.defaults:
        trial.set_user_attr("default", True)
    config = trial_config(setup, values, trial.number)
    if setup.budget is not None:
        config = setup.budget.limit(config)
    prune = search.pruner != "none" and len(objectives) == 1
    print(f"\n=== trial {trial.number}: " + ", ".join(f"{k}={_short(v)}" for k, v in values.items()), flush=True)

    # 2. Train.
    def on_evaluation(step: int, metrics: dict) -> bool:
        loss = metrics.get("eval_loss")
        if loss is None or not math.isfinite(loss):
            raise TrialFailed(
                f"validation loss is {loss} at step {step}: training diverged (NaN/inf loss); "
                "a lower train.learning_rate or train.max_grad_norm usually fixes it"
            )
        if prune:
            trial.report(_pruning_value(metrics, objectives), step)
            if trial.should_prune():
                raise optuna.TrialPruned(
                    f"pruned at step {step}: validation loss {loss:.4f} is behind the earlier "
                    f"trials at this step ({search.pruner} pruner)"
                )
        if setup.budget is not None and setup.budget.should_stop(step):
            # Cut by the clock, not ended by its schedule or by early stopping: its best step says when time
            # ran out, not how long this config should train (the final training must not stop there).
            trial.set_user_attr("cut_by_budget", True)
            return True
        return False

    try:
        starts = setup.budget.evaluation_starts if setup.budget is not None else None
        result = pipeline.train(
            config, on_evaluation=on_evaluation, score_test=setup.score_test, before_evaluation=starts
        )
    except optuna.TrialPruned as exc:
        _record(study_dir, trial.number, trial, "pruned", str(exc))
        print(f"trial {trial.number}: {exc}", flush=True)
        raise
    except KeyboardInterrupt:
        # Not the trial's fault: marked so that `--resume` runs these values again.
        trial.set_user_attr("interrupted", True)
        _record(study_dir, trial.number, trial, "failed", "interrupted (Ctrl-C)")
        raise
    except Exception as exc:
        reason = _reason(exc)
        if not isinstance(exc, (TrialFailed, TunesmithError)):
            traceback.print_exc()  # not the user's to fix: keep the traceback for a bug report
        _record(study_dir, trial.number, trial, "failed", reason)
        print(f"trial {trial.number} failed: {reason}", flush=True)
        raise TrialFailed(reason) from exc
    summary = result.summary

    # 3. Objectives.
    scores = _objective_scores(result.run_dir, summary, objectives, config)
    if setup.budget is not None:
        setup.budget.measured(summary)  # after scoring: a chat objective's generation is part of a run's time
    trial.set_user_attr("metrics", {k: v for k, v in scores.items() if isinstance(v, (int, float))})
    trial.set_user_attr("test", {k: v for k, v in summary.get("tuned", {}).items() if isinstance(v, (int, float))})
    trial.set_user_attr("steps", summary.get("steps"))
    trial.set_user_attr("best_step", summary.get("best_step"))
    trial.set_user_attr("wall_seconds", summary.get("wall_seconds"))
    values_out = []
    for metric in objectives:
        value = scores.get(metric)
        if value is None:
            raise StudyError(
                f"the trial produced no {metric!r}; it reported: {', '.join(sorted(scores)) or 'nothing'}",
                where="search.objectives",
                fix="choose one of the metrics it reported",
            )
        if not math.isfinite(value):
            reason = f"{metric} is {value}: training diverged (NaN/inf); lower train.learning_rate"
            _record(study_dir, trial.number, trial, "failed", reason)
            raise TrialFailed(reason)
        values_out.append(float(value))

    # 4. Record.
    _record(
        study_dir,
        trial.number,
        trial,
        "complete",
        None,
        {"values": dict(zip(objectives, values_out)), "metrics": trial.user_attrs["metrics"]},
    )
    return values_out[0] if len(values_out) == 1 else values_out


def _objective_scores(run_dir: Path, summary: dict, objectives: dict, config: RunConfig) -> dict:
    """Every metric the objectives can name, for this trial: loop metrics of the kept weights, costs,
    and the task's metrics on the validation split when an objective asks for them."""
    from tunesmith import pipeline
    from tunesmith.runs.rundir import RunDir

    passes = [r for r in RunDir(run_dir).read_metrics() if "eval_loss" in r]
    scores: dict = {
        "train_seconds": summary.get("train_seconds"),
        "trainable_parameters": (summary.get("parameters") or {}).get("trainable"),
    }
    if passes:
        # load_best_at_end keeps the best pass's weights: that is the model this trial produced.
        kept = min(passes, key=lambda r: r["eval_loss"]) if config.train.load_best_at_end else passes[-1]
        scores.update(eval_loss=kept["eval_loss"], eval_ppl=kept["eval_ppl"])
    if any(m not in LOOP_METRICS + COST_METRICS for m in objectives):
        validation = pipeline.score_split(run_dir, "validation")
        RunDir(run_dir).write_json("validation_metrics.json", validation)
        scores.update({k: v for k, v in validation.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return {k: v for k, v in scores.items() if v is not None}


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TrialFailed):
        return str(exc)
    if isinstance(exc, TunesmithError):
        return exc.render().replace("\n", " ")
    from tunesmith.train.memory import is_out_of_memory

    if is_out_of_memory(exc):
        return f"out of memory: {exc}"
    return f"{type(exc).__name__}: {exc}"


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def read_trial_json(run_dir: Path) -> dict:
    path = Path(run_dir) / "trial.json"
    return json.loads(path.read_text()) if path.exists() else {}
