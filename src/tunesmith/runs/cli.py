"""`tunesmith runs` (list the runs under a root) and `tunesmith runs compare A B [C...]`.

The main CLI registers them with `add_commands(subparsers)`. Handlers parse, call one library function
(`RunIndex.records`, `compare_runs`) and print rich tables. Nothing heavy is imported until a handler runs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from tunesmith.errors import TunesmithError
from tunesmith.methods import METHODS, default_settings
from tunesmith.taskcards import TASKS


def _console():
    from rich.console import Console

    return Console(width=200) if not Console().is_terminal else Console()


def _num(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-3 or abs(value) >= 1e4 else f"{value:.4f}".rstrip("0").rstrip(".")
    return str(value)


def hyperparameters(params: dict) -> str:
    """The few settings that tell runs apart at a glance: rate, length, batch, and the method's own."""
    parts = []
    if params.get("train.learning_rate") is not None:
        parts.append(f"lr {params['train.learning_rate']:g}")
    if params.get("train.max_steps"):
        parts.append(f"{params['train.max_steps']} steps")
    elif params.get("train.epochs") is not None:
        parts.append(f"{params['train.epochs']:g} ep")
    if params.get("train.batch_size") is not None:
        parts.append(f"batch {params['train.batch_size']}x{params.get('train.grad_accum', 1)}")
    method = params.get("method.name")
    if method in METHODS:  # the method's own searched options (its search_space), e.g. r and alpha for LoRA
        module = METHODS[method]
        keys = [k for k in module.search_space(default_settings(method)) if k.startswith("method.") and params.get(k) is not None]
        if keys:
            parts.append(" ".join(f"{k.removeprefix('method.')} {_num(params[k])}" for k in keys))
    return ", ".join(parts)


def metrics_cell(record) -> str:
    """Best validation loss and the test scores; for an unfinished run, how far it got."""
    from tunesmith.runs.index import last_logged

    m = record.metrics
    parts = []
    if m.get("best_eval_loss") is not None:
        parts.append(f"eval_loss {_num(m['best_eval_loss'])}")
    parts += [f"{k} {_num(v)}" for k, v in m.items() if k.startswith("test/") and not k.endswith("_samples")][:3]
    if not m:
        last = last_logged(record.path)
        parts += [f"{k} {_num(last[k])}" for k in ("step", "loss", "eval_loss") if k in last]
    return ", ".join(parts) or "-"


def _model(name: str | None) -> str:
    if not name:
        return "-"
    # Local folders and files by their last part; hub ids (org/name) and starter names as they are.
    return Path(name).name if name.startswith(("/", ".", "~")) else name


def _cmd_runs(args) -> None:
    from rich.table import Table

    from tunesmith.runs.index import RunIndex

    root = Path(args.root)
    if not root.is_dir():
        raise TunesmithError(f"no runs folder {root}", where="--root",
                             fix="pass the output.dir your runs went to (default runs), or a search study's folder")
    records = RunIndex(root).records(task=args.task)
    if args.status:
        records = [r for r in records if r.status == args.status]
    console = _console()
    if not records:
        console.print(f"no runs under {root}" + (f" with task {args.task}" if args.task else ""))
        return
    table = Table(title=f"runs under {root}")
    for column in ("run", "status", "task", "model", "method", "hyperparameters", "metrics", "started"):
        table.add_column(column, overflow="fold")
    for r in records:
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.started)) if r.started else "-"
        name = str(r.path.relative_to(root)) if r.path.is_relative_to(root) else str(r.path)
        table.add_row(name, r.status, r.task or "-", _model(r.model), r.method or "-", hyperparameters(r.params),
                      metrics_cell(r), started)
    console.print(table)
    for r in records:
        if r.reason and r.status not in ("completed",):
            console.print(f"{r.name} ({r.status}): {r.reason}", highlight=False)


def _cmd_compare(args) -> None:
    from rich.table import Table

    from tunesmith.runs.compare import compare_runs

    result = compare_runs(args.runs, root=args.root, output=args.output)
    console = _console()
    for run, label in zip(result.runs, result.labels):
        console.print(f"{label}: {run}", highlight=False)
    if result.config_diff:
        table = Table(title="config differences")
        table.add_column("key")
        for label in result.labels:
            table.add_column(label, overflow="fold")
        for key, values in result.config_diff.items():
            table.add_row(key, *(_num(v) for v in values))
        console.print(table)
    else:
        console.print("the configs are identical")
    table = Table(title="metrics")
    table.add_column("metric")
    for label in result.labels:
        table.add_column(label, justify="right", overflow="fold")
    for key, values in result.metrics.items():
        table.add_row(key, *(_num(v) for v in values))
    console.print(table)
    console.print(f"loss curves: {result.plot}" if result.plot else "no run has logged a loss yet: no plot written")


def add_commands(sub) -> None:
    p = sub.add_parser("runs", help="list the runs under a root: status, task, model, method, hyperparameters, metrics "
                                    "(`tunesmith runs compare A B` compares runs)")
    p.add_argument("--root", default="runs", help="the runs folder (output.dir) or a search study's folder (default: runs)")
    p.add_argument("--task", choices=list(TASKS), help="only runs of this task")
    p.add_argument("--status", choices=["running", "completed", "stopped_early", "failed", "interrupted", "pruned", "unknown"],
                   help="only runs in this state")
    p.set_defaults(func=_cmd_runs)
    actions = p.add_subparsers(dest="runs_command")
    c = actions.add_parser("compare", help="config diff, metrics side by side and overlaid loss curves of two or more runs")
    c.add_argument("runs", nargs="+", metavar="RUN", help="run folders, or names (or unique parts of names) of runs under --root")
    # SUPPRESS: `tunesmith runs --root X compare ...` keeps X instead of this parser's default.
    c.add_argument("--root", default=argparse.SUPPRESS, help="where run names are looked up (default: runs)")
    c.add_argument("--output", default="compare.png", help="PNG of the overlaid loss curves (default: compare.png, replaced if it exists)")
    c.set_defaults(func=_cmd_compare)
