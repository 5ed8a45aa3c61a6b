"""`tunesmith autotrain`: one command from a data file to a tuned, evaluated model within a time budget.

Phases of `autotrain`:
  1. read the data; detect the task from its columns (or check the one given) and the record format;
  2. pick the base model and method with the planner (`plan.recommend`) for the hardware, keeping models
     that can be loaded here (packaged starters, or the hub when it is reachable); data.max_length from the
     longest record as the model's tokenizer counts it;
  3. the search space for the task, model size and method (search/space.py autotrain_space), the task's
     metric on validation as the objective (`--objective` to choose);
  4. successive halving (search/halving.py) from the planner's default and the method's known-good
     configs, each run and the final training's whole schedule fitted to the budget (search/budget.py);
  5. the chosen config's whole schedule retrained on train+validation, evaluated on test;
  6. report.md (budget spent, ranges widened, distance from the defaults) and autotrain.json.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.errors import TunesmithError
from tunesmith.taskcards import TASKS


@dataclass
class AutotrainResult:
    task: str
    model: str
    method: str
    study_dir: Path
    best_config: Path | None
    final_run: Path | None
    objective: str = "eval_loss"
    test: dict = field(default_factory=dict)
    cuts: list[str] = field(default_factory=list)
    spent: dict = field(default_factory=dict)  # Budget.spent: search, final and used seconds
    seconds: float = 0.0  # the whole command, test evaluation included
    trained_seconds: float = 0.0  # from the start until the final training saved its weights: the budgeted part


@dataclass
class Choice:
    """The planner's pick: model reference, method, its run config, and what sizes the search."""

    model: str
    method: str
    config: dict
    parameters: int | None = None  # the model's size (the catalog's count), for the learning-rate range
    hours_per_epoch: float | None = None  # the planner's estimate on this hardware, until a run is measured


def detect_task(columns: list[str], source: str) -> str:
    # Each task card's column sets (taskcards.py), the most specific first: `text` alone is continued
    # pre-training only when no (text, label)-like set matches; ties keep the registration order.
    have = set(columns)
    sets = [(card.name, needed) for card in TASKS.values() for needed in card.detect_columns]
    for task, needed in sorted(sets, key=lambda pair: -len(pair[1])):
        if have >= set(needed):
            return task
    raise TunesmithError(
        f"cannot tell the task from the columns found ({', '.join(columns)})",
        where=source,
        fix=f"pass --task ({', '.join(TASKS)}), or rename the columns, e.g. to prompt/completion or text/label",
    )


def _choose(task: str, hardware: str, data: str, model: str | None, budget_hours: float) -> Choice:
    """The model, method and the planner's run config for the task on this hardware."""
    from tunesmith.methods import DEFAULT_METHOD, get_method
    from tunesmith.models.resolve import hub_reachable
    from tunesmith.models.starters import find_starter
    from tunesmith.plan.catalog import load_catalog
    from tunesmith.plan.recommend import recommend, run_config

    recs = recommend(task, hardware=hardware, data_path=data, top=100)
    if model is not None:
        starter = find_starter(model)
        entry = load_catalog().find(model) or (load_catalog().find(starter.hub_id) if starter else None)
        rec = next((r for r in recs if entry is not None and r.entry.id == entry.id), None)
        if rec is None:  # not in the catalog (a local folder): the planner's settings of its top pick, LoRA
            chosen = run_config(recs[0], data)
            chosen["model"] = {"name": model}
            chosen["method"] = {"name": DEFAULT_METHOD}
            chosen["train"]["learning_rate"] = get_method(DEFAULT_METHOD).recommend.learning_rate
            return Choice(model, DEFAULT_METHOD, chosen)
        return Choice(model, rec.method, run_config(rec, data), rec.entry.parameters, rec.hours_per_epoch)
    online = None
    for rec in recs:
        if find_starter(rec.entry.id) is None:
            online = hub_reachable() if online is None else online
            if not online:
                continue
        if rec.hours_per_epoch is not None and rec.hours_per_epoch > budget_hours * 3:
            continue  # an epoch would take three budgets: not even a few trials' worth of steps fit
        chosen = run_config(rec, data)
        return Choice(chosen["model"]["name"], rec.method, chosen, rec.entry.parameters, rec.hours_per_epoch)
    raise TunesmithError(
        f"no {task} model in the catalog can be loaded here and fits the budget",
        where="--model",
        fix="pass --model with a local model folder or a packaged starter, or a larger --budget",
    )


# Metrics where lower is better; every task metric autotrain can choose by default is higher-is-better.
LOWER_IS_BETTER = ("eval_loss", "eval_ppl", "test_loss", "perplexity", "denoising_loss", "train_seconds")


def objective_for(task: str, objective: str | None) -> dict[str, str]:
    """{metric: direction}: the one given, else the task's metric on validation, else validation loss."""
    metric = objective or TASKS[task].autotrain_objective or "eval_loss"
    return {metric: "minimize" if metric in LOWER_IS_BETTER else "maximize"}


def fit_lengths(config) -> str | None:
    """data.max_length from the longest training record as the model's tokenizer encodes it (rounded up to
    a multiple of 8, never above the planner's length): short texts then cost short steps; and for chat,
    eval.max_new_tokens from the longest answer. Returns what it set and why."""
    from tunesmith.pipeline import encode_splits, load_tokenizer_for, read_splits
    from tunesmith.tasks import get_task

    if TASKS[config.task].images:
        return None
    _, tokenizer = load_tokenizer_for(config)
    splits = read_splits(config)
    meta = get_task(config.task).setup(splits, config)
    encoded = encode_splits(config, splits, tokenizer, meta, names=("train",))["train"]
    notes = []
    # Answers the model generates when scored (chat): no longer than the longest answer in training, and a
    # margin, so validation scoring in every search run does not generate eval.max_new_tokens of padding.
    answers = [max(b - a for a, b in e.assistant_spans) for e in encoded if getattr(e, "assistant_spans", None)]
    if answers:
        tokens = min(config.eval.max_new_tokens, 8 * math.ceil((max(answers) + 8) / 8))
        if tokens < config.eval.max_new_tokens:
            notes.append(f"eval.max_new_tokens {tokens}: the longest training answer is {max(answers)} tokens")
            config.eval.max_new_tokens = tokens
    lengths = [len(ids) for ids in (getattr(e, "input_ids", None) for e in encoded) if ids is not None]
    longest = min(config.data.max_length, 8 * math.ceil(max(lengths) / 8)) if lengths else config.data.max_length
    if longest < config.data.max_length:
        notes.append(
            f"data.max_length {longest} (from {config.data.max_length}): the longest of {len(lengths)} training "
            f"records is {max(lengths)} tokens"
        )
        config.data.max_length = longest
    return "; ".join(notes) or None


@dataclass
class _Default:
    """The planner's default values as a trial, for a final training when no search run fits the budget."""

    params: dict[str, Any]
    number: int = -1
    user_attrs: dict = field(default_factory=dict)


# Optimizer steps a probe runs (validating after each, so three step intervals are timed apart from loading
# and the first step's warm-up): seconds, where a final training planned on a guess can be off by minutes.
PROBE_STEPS = 4


def _probe_speed(setup, guard) -> None:
    """Measure the speed when no search run will: the planner's estimate is a guess (it was 1.7x too slow for
    SmolLM2-135M here, 5x too fast for MiniLM-L6), and the final training is planned, and cut, by it."""
    from tunesmith import pipeline
    from tunesmith.search.objective import trial_config

    setup.extra_overrides = {"train.max_steps": PROBE_STEPS}
    config = guard.limit(trial_config(setup, {}, -1))
    setup.extra_overrides = {}  # the probe's alone: nothing after it runs from the setup with these
    config.name, config.output.dir, config.train.eval_every = "speed-probe", str(Path(setup.study_dir)), 1
    guard.run_deadline = guard.end
    print(f"\n--- measuring the speed: {PROBE_STEPS} steps of the default config", flush=True)
    try:
        result = pipeline.train(
            config,
            on_evaluation=lambda step, metrics: guard.should_stop(step),
            before_evaluation=guard.evaluation_starts,
            score_test=False,
        )
    except Exception as exc:  # the final training will say what is wrong, with the planner's estimate
        print(f"the speed probe failed ({exc}); the final training is planned with the planner's estimate")
        return
    guard.measured(result.summary)


def autotrain(
    data: str,
    *,
    task: str | None = None,
    model: str | None = None,
    budget: str = "30m",
    hardware: str = "auto",
    trials: int | None = None,
    objective: str | None = None,
    output: str = "runs",
    seed: int = 42,
    clock: Callable[[], float] = time.monotonic,
) -> AutotrainResult:
    """`clock` (seconds) measures the budget: every decision and the reported seconds come from it.
    `trials` caps the configs tried (None: as many as the budget holds)."""
    from tunesmith.config import RunConfig
    from tunesmith.data.readers import read_records
    from tunesmith.pipeline import read_splits
    from tunesmith.plan.cli import parse_duration
    from tunesmith.search.budget import SAFETY, Budget
    from tunesmith.search.halving import Halving
    from tunesmith.search.objective import TrialSetup
    from tunesmith.search.report import final_training, write_report
    from tunesmith.search.space import autotrain_space, check_search, current_values, known_good
    from tunesmith.search.study import load_study, start_study

    began = clock()
    seconds = parse_duration(budget) * 3600
    if seconds < 10:
        raise TunesmithError(
            f"a budget of {seconds:.0f} s cannot load a model and train",
            where="--budget",
            fix="give at least a minute, e.g. --budget 5m",
        )
    if trials is not None and trials < 1:
        raise TunesmithError("--trials must be at least 1", where="--trials")

    # 1. Data and task.
    records = read_records(data, split="train")
    if not records:
        raise TunesmithError("the data file holds no records", where=data, fix="point --data at a file with records")
    columns = list(records[0].fields)
    found = detect_task(columns, data)
    if task is None:
        task = found
    print(
        f"data: {len(records)} records in {data}; columns {', '.join(columns)} -> task {task}"
        + ("" if found == task else f" (as given; the columns suggest {found})")
    )

    # 2. Model, method, sequence length.
    choice = _choose(task, hardware, data, model, seconds / 3600)
    planned = choice.config
    planned.pop("output", None)
    planned["name"] = f"autotrain-{task}"
    planned["seed"] = seed
    planned["data"]["train"] = str(Path(data).resolve())
    planned["output"] = {"dir": output}
    planned["train"].update(epochs=3)  # Trainer's default; the planner writes 1 for a first look
    config = RunConfig.model_validate(planned)
    cap = TASKS[task].autotrain_max_length
    if cap is not None and config.data.max_length > cap:
        config.data.max_length = cap
    length_note = fit_lengths(config)
    splits = read_splits(config)
    n_train, n_final = len(splits.train), len(splits.train) + len(splits.validation)
    print(f"model: {choice.model}, method {choice.method} (the planner's choice for {hardware})")
    if length_note:
        print(length_note)

    # 3. Space and objective.
    objectives = objective_for(task, objective)
    space = autotrain_space(config, choice.parameters, n_train)
    config.search = config.search.model_validate(
        {
            "space": {k: v.model_dump(exclude_none=True) for k, v in space.items()},
            "objectives": objectives,
            "sampler": "tpe",
            "pruner": "none",  # successive halving decides which configs go on
            "n_trials": None,
            "include_default": False,  # enqueued below, with the known-good configs
            "final_train": False,  # done here, with the budget
        }
    )
    check_search(config)
    metric = next(iter(objectives))
    print(f"objective: {metric} on the validation split ({objectives[metric]})")

    # 4. The budget: the final training planned first; then successive halving in what is left.
    prior = choice.hours_per_epoch * 3600 / max(n_train, 1) if choice.hours_per_epoch else None
    guard = Budget(seconds, start=began, clock=clock, prior_seconds_per_example=prior)
    default = current_values(config, space)
    from tunesmith.train.loop import total_optimizer_steps

    final_guess = guard.estimate(config, total_optimizer_steps(n_final, config.train, 1), final=True)
    search_fits = final_guess is None or final_guess / SAFETY < guard.left()
    print(
        f"budget {seconds / 60:.1f} min: "
        + (
            f"the default config's final training needs about {final_guess / 60:.1f} min (the planner's estimate); "
            if final_guess is not None
            else ""
        )
        + ("the search gets the rest, the final training its whole schedule" if search_fits else "")
    )
    path = start_study(config, None)
    study, saved, live_space = load_study(path)
    setup = TrialSetup(base=saved, study_dir=path, space=live_space, budget=guard, score_test=False)
    notes: list[str] = []
    if search_fits:
        queue = [(default, {"default": True})] + [
            (values, {"known_good": f"known-good {i + 1}"}) for i, values in enumerate(known_good(config, space))
        ]
        halving = Halving(
            study, setup, guard, train_examples=n_train, final_examples=n_final, queue=queue, max_configs=trials
        )
        outcome = halving.run()
        chosen = study.trials[outcome.chosen.number] if outcome.chosen is not None else None
        range_notes = outcome.range_notes + halving.edge_warnings(outcome.chosen)
        notes += outcome.notes
    else:
        assert final_guess is not None  # search_fits is False only with an estimate
        message = (
            f"the budget cannot hold a search: the final training of the default config alone needs about "
            f"{final_guess / 60:.1f} min of the {seconds / 60:.1f} (the planner's estimate); it runs without one"
        )
        print("note: " + message + f"; --budget {math.ceil(final_guess / SAFETY / 60) + 5}m would fit a search")
        notes.append(message)
        _probe_speed(setup, guard)
        outcome, chosen, range_notes = None, None, []
    final_trial = chosen if chosen is not None else _Default(params=default)

    # 5. The final training: the chosen config's whole schedule on train+validation.
    sections = _sections(metric, space, setup.space, default, outcome, range_notes, spent=None)
    # setup.base, not the saved config: the search may have fixed a value it stopped searching (epochs).
    report, best_path = write_report(study, setup.base, path, notes + guard.notes(), chosen=chosen, sections=sections)
    final_run = final_training(study, setup.base, path, budget=guard, chosen=final_trial)

    # 6. Where everything is.
    test: dict = {}
    trained = clock()
    if final_run is not None:
        summary = json.loads((Path(final_run) / "summary.json").read_text())
        test = {k: v for k, v in summary.get("tuned", {}).items() if isinstance(v, float)}
        # The weights are saved when training ends, before the test evaluation: that moment keeps the promise
        # (on the clock: now, less the wall time since the save).
        saved_at = max(f.stat().st_mtime for f in Path(summary["weights"]).iterdir())
        trained -= max(0.0, time.time() - saved_at)
    spent = guard.spent(trained)
    cuts = guard.notes()
    sections = _sections(metric, space, setup.space, default, outcome, range_notes, spent=spent)
    report, best_path = write_report(study, setup.base, path, notes + cuts, chosen=chosen, sections=sections)
    elapsed = clock() - began
    result = AutotrainResult(
        task=task,
        model=choice.model,
        method=choice.method,
        study_dir=path,
        best_config=best_path,
        final_run=final_run,
        objective=metric,
        test=test,
        cuts=cuts,
        spent=spent,
        seconds=elapsed,
        trained_seconds=trained - began,
    )
    _write_result(result)
    print("\nautotrain finished")
    print(
        f"  task {task}, model {choice.model}, method {choice.method}; search {spent['search_seconds'] / 60:.1f} min "
        f"and final training {spent['final_seconds'] / 60:.1f} min: {100 * spent['used_share']:.0f}% of the "
        f"{seconds / 60:.1f} min budget; the test evaluation {(began + elapsed - trained) / 60:.1f} min more"
    )
    print(f"  study:        {path}  (report.md, plots/, trials/, autotrain.json)")
    print(f"  best config:  {best_path}")
    print(f"  final model:  {final_run}")
    if test:
        print("  test split:   " + ", ".join(f"{k} {v:.4f}" for k, v in list(test.items())[:6]))
    print("  cut to keep the budget: " + ("; ".join(cuts) if cuts else "nothing"))
    if final_run is not None:
        print(f"  base vs tuned on the same test split: tunesmith eval {final_run}")
    return result


def _write_result(result: AutotrainResult) -> None:
    record = {
        "task": result.task,
        "model": result.model,
        "method": result.method,
        "objective": result.objective,
        "study_dir": str(result.study_dir),
        "best_config": str(result.best_config) if result.best_config else None,
        "final_run": str(result.final_run) if result.final_run else None,
        "test": result.test,
        "cuts": result.cuts,
        **result.spent,
        "trained_seconds": round(result.trained_seconds, 1),
        "seconds": round(result.seconds, 1),
    }
    (Path(result.study_dir) / "autotrain.json").write_text(json.dumps(record, indent=2) + "\n")


def _sections(metric: str, space: dict, live: dict, default: dict, outcome, range_notes: list[str], spent) -> list[str]:
    """report.md's autotrain sections: how the search ran, the budget spent, ranges, distance from the defaults."""
    from tunesmith.search.halving import FRACTIONS

    lines = ["", "## Autotrain", ""]
    lines.append(
        f"Objective: `{metric}` on the validation split. Successive halving over each config's own schedule "
        f"(rungs {', '.join(f'{f:.2g}' for f in FRACTIONS)} of it, each a fresh run with its schedule planned "
        "for its length; only runs of one rung are compared)."
    )
    if outcome is not None:
        by_rung: dict[int, int] = {}
        for e in outcome.evaluations:
            by_rung[e.fidelity] = by_rung.get(e.fidelity, 0) + 1
        lines.append(
            "Runs per rung: "
            + ", ".join(f"rung {k}: {n}" for k, n in sorted(by_rung.items()))
            + " (the last rung is the whole schedule)."
        )
    lines += ["", "### Budget", ""]
    if spent is None:
        lines.append("The final training runs after this report is first written; the budget spent is added then.")
    else:
        lines += [
            "| budget | search | final training | used | share |",
            "|---|---|---|---|---|",
            f"| {spent['budget_seconds']:.0f} s | {spent['search_seconds']:.0f} s | {spent['final_seconds']:.0f} s | "
            f"{spent['used_seconds']:.0f} s | {100 * spent['used_share']:.1f}% |",
        ]
    lines += ["", "### Ranges", ""]
    lines += [f"- {n}" for n in range_notes] or ["- every chosen value lies inside its range (none at an edge)"]
    if outcome is not None and outcome.chosen is not None:
        chosen = outcome.chosen
        lines += [
            "",
            "### Distance from the defaults",
            "",
            "| parameter | planner's default | chosen | change |",
            "|---|---|---|---|",
        ]
        for path in dict.fromkeys(list(space) + list(live)):
            old, new = default.get(path), chosen.values.get(path)
            lines.append(f"| `{path}` | {_cell(old)} | {_cell(new)} | {_change(old, new)} |")
        scores = [e for e in outcome.evaluations if e.key == outcome.default_key and e.score is not None]
        if scores:
            best_default = max(scores, key=lambda e: e.fidelity)
            same = next(
                (e for e in outcome.evaluations if e.key == chosen.key and e.fidelity == best_default.fidelity), None
            )
            lines.append(
                f"\nAt rung {best_default.fidelity}, the default scored {metric} {best_default.score:.4g} (trial "
                f"{best_default.number})"
                + (
                    f", the chosen config {same.score:.4g} (trial {same.number})."
                    if same and same.score is not None
                    else "."
                )
            )
    return lines


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _change(old, new) -> str:
    if old is None or new is None:
        return "-"
    if old == new:
        return "same"
    if isinstance(old, (int, float)) and isinstance(new, (int, float)) and not isinstance(old, bool):
        if old > 0 and new > 0 and isinstance(old, float):
            return f"x{new / old:.2g}"
        return f"{new - old:+g}"
    return "changed"
