"""`tunesmith autotrain`: one command from a data file to a tuned, evaluated model within a time budget.

Phases of `autotrain`:
  1. read the data; detect the task from its columns (or check the one given) and the record format;
  2. pick the base model and method with the planner (`plan.recommend`) for the hardware, keeping models
     that can be loaded here (packaged starters, or the hub when it is reachable);
  3. a short search (TPE, median pruning, the LoRA-aware default space, validation loss) inside the
     budget: per-trial step limits from measured speed, and Optuna's timeout on the search;
  4. the best config retrained on train+validation with what is left of the budget, evaluated on test;
  5. print where everything is and what the budget cut.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

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
    test: dict = field(default_factory=dict)
    cuts: list[str] = field(default_factory=list)
    seconds: float = 0.0  # the whole command, test evaluation included
    trained_seconds: float = 0.0  # from the start until the final training saved its weights: the budgeted part


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


def _choose(task: str, hardware: str, data: str, model: str | None, budget_hours: float) -> tuple[str, str, dict]:
    """(model reference, method, the planner's run config) for the task on this hardware."""
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
            return model, DEFAULT_METHOD, chosen
        return model, rec.method, run_config(rec, data)
    online = None
    for rec in recs:
        if find_starter(rec.entry.id) is None:
            online = hub_reachable() if online is None else online
            if not online:
                continue
        if rec.hours_per_epoch is not None and rec.hours_per_epoch > budget_hours * 3:
            continue  # an epoch would take three budgets: not even a few trials' worth of steps fit
        chosen = run_config(rec, data)
        return chosen["model"]["name"], rec.method, chosen
    raise TunesmithError(
        f"no {task} model in the catalog can be loaded here and fits the budget",
        where="--model",
        fix="pass --model with a local model folder or a packaged starter, or a larger --budget",
    )


def autotrain(
    data: str,
    *,
    task: str | None = None,
    model: str | None = None,
    budget: str = "30m",
    hardware: str = "auto",
    trials: int = 8,
    output: str = "runs",
    seed: int = 42,
    clock: Callable[[], float] = time.monotonic,
) -> AutotrainResult:
    """`clock` (seconds) measures the budget: every cut and the reported seconds come from it."""
    from tunesmith.config import RunConfig
    from tunesmith.data.readers import read_records
    from tunesmith.pipeline import read_splits
    from tunesmith.plan.cli import parse_duration
    from tunesmith.search.budget import SEARCH_SHARE, Budget
    from tunesmith.search.study import run_search

    began = clock()
    seconds = parse_duration(budget) * 3600
    if seconds < 10:
        raise TunesmithError(
            f"a budget of {seconds:.0f} s cannot load a model and train",
            where="--budget",
            fix="give at least a minute, e.g. --budget 5m",
        )
    if trials < 1:
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

    # 2. Model and method.
    name, method, planned = _choose(task, hardware, data, model, seconds / 3600)
    planned.pop("output", None)
    planned["name"] = f"autotrain-{task}"
    planned["seed"] = seed
    planned["data"]["train"] = str(Path(data).resolve())
    planned["output"] = {"dir": output}
    planned["train"].update(epochs=1)
    planned["search"] = {
        "n_trials": trials,
        "sampler": "tpe",
        "pruner": "median",
        "pruner_startup_trials": 1,
        "objectives": {"eval_loss": "minimize"},
        "timeout": SEARCH_SHARE * seconds,
        "final_train": True,
    }
    config = RunConfig.model_validate(planned)
    cap = TASKS[task].autotrain_max_length
    if cap is not None and config.data.max_length > cap:
        config.data.max_length = cap
    print(
        f"model: {name}, method {method} (the planner's choice for {hardware}); "
        f"budget {seconds / 60:.1f} min: search {SEARCH_SHARE * seconds / 60:.1f}, final training the rest"
    )

    # 3-4. Search within the budget, then the final training (run_search does both).
    from tunesmith.search.space import check_search

    check_search(config)
    guard = Budget(seconds, trials, len(read_splits(config).train), start=began, clock=clock)
    result = run_search(config, budget=guard)

    # 5. Where everything is.
    test: dict = {}
    trained = clock()
    if result.final_run is not None:
        import json

        summary = json.loads((Path(result.final_run) / "summary.json").read_text())
        test = {k: v for k, v in summary.get("tuned", {}).items() if isinstance(v, float)}
        # The weights are saved when training ends, before the test evaluation: that moment keeps the promise
        # (on the clock: now, less the wall time since the save).
        saved = max(f.stat().st_mtime for f in Path(summary["weights"]).iterdir())
        trained -= max(0.0, time.time() - saved)
    cuts = guard.notes()
    elapsed = clock() - began
    print("\nautotrain finished")
    print(
        f"  task {task}, model {name}, method {method}; search and training took {(trained - began) / 60:.1f} min "
        f"of the {seconds / 60:.1f} min budget, the test evaluation {(began + elapsed - trained) / 60:.1f} min more"
    )
    print(f"  study:        {result.study_dir}  (report.md, plots/, trials/)")
    print(f"  best config:  {result.best_config}")
    print(f"  final model:  {result.final_run}")
    if test:
        print("  test split:   " + ", ".join(f"{k} {v:.4f}" for k, v in list(test.items())[:6]))
    print("  cut to keep the budget: " + ("; ".join(cuts) if cuts else "nothing"))
    if result.final_run is not None:
        print(f"  base vs tuned on the same test split: tunesmith eval {result.final_run}")
    return AutotrainResult(
        task=task,
        model=name,
        method=method,
        study_dir=result.study_dir,
        best_config=result.best_config,
        final_run=result.final_run,
        test=test,
        cuts=cuts,
        seconds=elapsed,
        trained_seconds=trained - began,
    )
