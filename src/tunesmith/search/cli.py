"""`tunesmith search` and `tunesmith autotrain`: argument parsers and handlers (no heavy imports here;
the main CLI must stay light)."""

from __future__ import annotations

import argparse

from tunesmith.errors import TunesmithError
from tunesmith.taskcards import TASKS


def _cmd_search(args) -> None:
    from tunesmith.search.study import run_search

    if args.config is None and not args.resume:
        raise TunesmithError(
            "give a run config with a search: section, or --study-dir DIR --resume", fix="tunesmith search run.yaml"
        )
    config = None
    if args.config is not None:
        from tunesmith.config import load_config

        config = load_config(args.config, args.set)
    elif args.set:
        raise TunesmithError(
            "--set applies to a new study; a resumed study keeps its saved config",
            where="--set",
            fix="drop --set, or start a new study from a run config",
        )
    result = run_search(
        config,
        study_dir=args.study_dir,
        resume=args.resume,
        workers=args.workers,
        n_trials=args.n_trials,
        timeout=args.timeout,
        final_train=True if args.final_train else None,
    )
    print("trials: " + ", ".join(f"{k} {v}" for k, v in sorted(result.counts.items())))
    for note in result.notes:
        print(f"note: {note}")
    if result.final_run is not None:
        print(f"final model (best config on train+validation): {result.final_run}")


def _cmd_autotrain(args) -> None:
    from tunesmith.search.autotrain import autotrain

    autotrain(
        args.data,
        task=args.task,
        model=args.model,
        budget=args.budget,
        hardware=args.hardware,
        trials=args.trials,
        objective=args.objective,
        output=args.output,
        seed=args.seed,
    )


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def add_commands(sub) -> None:
    p = sub.add_parser("search", help="hyperparameter search on Optuna; one run directory per trial")
    p.add_argument(
        "config", nargs="?", help="run config YAML with a search: section (the default space when it has none)"
    )
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field (repeatable)"
    )
    p.add_argument("--workers", type=_positive_int, help="trial processes in parallel on this machine (search.workers)")
    p.add_argument("--study-dir", help="the study folder: where a new study goes, or the one --resume continues")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the study in --study-dir; finished trials are kept, interrupted ones rerun",
    )
    p.add_argument(
        "--final-train", action="store_true", help="retrain the best config on train+validation, score it on test"
    )
    p.add_argument("--n-trials", type=_positive_int, help="trials in the whole study (search.n_trials)")
    p.add_argument("--timeout", type=float, help="seconds after which no new trial starts (search.timeout)")
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser(
        "autotrain", help="data file -> task, model, method -> short search -> tuned model, within a time budget"
    )
    p.add_argument(
        "--data", required=True, help="training data (.jsonl/.csv/.parquet/...); validation and test are carved from it"
    )
    p.add_argument("--task", choices=list(TASKS), help="the task; detected from the columns when left out")
    p.add_argument("--model", help="base model reference; the planner picks one when left out")
    p.add_argument(
        "--budget",
        default="30m",
        help="wall time for search and final training, e.g. 30m, 2h (the final test evaluation comes after)",
    )
    p.add_argument("--hardware", default="auto", help="hardware profile the planner sizes for (auto: this machine)")
    p.add_argument(
        "--trials", type=_positive_int, help="the most configs to try (default: as many as the budget holds)"
    )
    p.add_argument(
        "--objective",
        help="the metric on the validation split that chooses (default: the task's, e.g. f1_macro for "
        "text-classification, rougeL for chat; eval_loss for validation loss)",
    )
    p.add_argument("--output", default="runs", help="root folder of the study and the final run")
    p.add_argument("--seed", type=int, default=42, help="seed of splits, sampling and training")
    p.set_defaults(func=_cmd_autotrain)
