"""`tunesmith runs compare A B [C...]`: what differs between the runs' configs, their metrics side by
side, and their loss curves overlaid in one PNG.

Everything is read from the run folders (config.yaml, summary.json, metrics.jsonl), so finished,
failed and still-running runs compare alike; an unfinished run's figures come from its metrics.jsonl.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tunesmith.errors import TunesmithError
from tunesmith.runs.index import RunIndex, key_metrics
from tunesmith.runs.rundir import RunDir
from tunesmith.runs.trackers import safe_params


@dataclass
class Comparison:
    runs: list[Path]
    labels: list[str]
    config_diff: dict[str, list]  # dotted key -> value per run, only keys whose values differ
    metrics: dict[str, list]  # metric -> value per run (None where a run has none)
    plot: Path | None  # None when no run logged a loss yet


def resolve_run(ref: str, root: str | Path) -> Path:
    """A run folder from a path, or from a name in the runs under `root`: the folder name, else a
    unique part of it (`tunesmith runs compare lr-high lr-low`)."""
    path = Path(ref)
    if (path / "config.yaml").is_file():
        return path
    records = RunIndex(root).records()
    exact = [r.path for r in records if r.name == ref]
    matches = exact or [r.path for r in records if ref in r.name]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise TunesmithError(
            f"no run {ref!r}: not a run folder, and no run under {root} has it in its name",
            fix=f"give a run folder path, or see the names with `tunesmith runs --root {root}`",
        )
    shown = ", ".join(p.name for p in matches[:8]) + (" ..." if len(matches) > 8 else "")
    raise TunesmithError(
        f"{ref!r} matches {len(matches)} runs under {root}: {shown}", fix="give more of the name, or the folder path"
    )


def _summary_or_log(run: RunDir) -> dict:
    """The run's key metrics: from summary.json when it finished, else what metrics.jsonl has so far."""
    summary = run.read_json("summary.json")
    if summary:
        return {"status": summary.get("status"), **key_metrics(summary)}
    log = run.read_metrics()
    losses = [r["loss"] for r in log if isinstance(r.get("loss"), (int, float))]
    evals = [r["eval_loss"] for r in log if isinstance(r.get("eval_loss"), (int, float))]
    steps = [r["step"] for r in log if "step" in r]
    # How it ended (running, interrupted, failed) is in the index of the folder it lives in.
    indexed = [r for r in RunIndex(run.path.parent).records(scan=False) if r.path.resolve() == run.path.resolve()]
    return {
        "status": indexed[0].status if indexed else "unfinished",
        "steps": max(steps, default=None),
        "final_train_loss": losses[-1] if losses else None,
        "best_eval_loss": min(evals, default=None),
    }


def compare_runs(
    refs: list[str], *, root: str | Path = "runs", output: str | Path | None = "compare.png"
) -> Comparison:
    """Compare two or more runs; writes the overlaid loss curves to `output` (None: no plot)."""
    import yaml

    if len(refs) < 2:
        raise TunesmithError("give at least two runs to compare", fix="tunesmith runs compare RUN_A RUN_B [RUN_C ...]")
    paths = [resolve_run(ref, root) for ref in refs]
    if len({p.resolve() for p in paths}) < len(paths):
        raise TunesmithError("the same run is named twice", fix="name each run once")
    runs = [RunDir.open(p) for p in paths]

    # 1. Config differences: every flattened key whose values are not all equal (a key only some runs
    #    have, e.g. from an older version, counts as a difference).
    configs = [safe_params(yaml.safe_load(run.config_path.read_text()) or {}) for run in runs]
    keys = list(dict.fromkeys(k for c in configs for k in c))
    table = {k: [c.get(k, "-") for c in configs] for k in keys}
    diff = {k: values for k, values in table.items() if len({json.dumps(v, default=str) for v in values}) > 1}

    # 2. Metrics side by side, in a fixed order: status, training figures, then test and base scores.
    per_run = [_summary_or_log(run) for run in runs]
    order = [
        "status",
        "steps",
        "final_train_loss",
        "best_eval_loss",
        "best_eval_ppl",
        "train_seconds",
        "trained_tokens_per_s",
    ]
    extra = sorted({k for m in per_run for k in m if k not in order}, key=lambda k: (not k.startswith("test/"), k))
    metrics = {k: [m.get(k) for m in per_run] for k in order + extra if any(m.get(k) is not None for m in per_run)}

    # 3. Loss curves.
    labels = distinct_labels(paths)
    plot = plot_curves(runs, labels, Path(output)) if output is not None else None
    return Comparison(runs=paths, labels=labels, config_diff=diff, metrics=metrics, plot=plot)


def distinct_labels(paths: list[Path]) -> list[str]:
    """A heading per run: its folder name, or, where runs share one (trials of two studies, two output
    roots), the shortest tail of each path that tells them apart (`study-a/trials/...-trial-0`)."""
    parts = [p.resolve().parts for p in paths]
    depth = [1] * len(paths)
    while True:
        labels = ["/".join(p[-d:]) for p, d in zip(parts, depth)]
        shared = [i for i, label in enumerate(labels) if labels.count(label) > 1 and depth[i] < len(parts[i])]
        if not shared:
            return labels
        for i in shared:
            depth[i] += 1


def plot_curves(runs: list[RunDir], labels: list[str], output: Path) -> Path | None:
    """Train loss (solid) and validation loss (dashed, dots) of every run, one colour per run."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    curves = []
    for run in runs:
        log = run.read_metrics()
        curves.append(
            (
                [(r["step"], r["loss"]) for r in log if isinstance(r.get("loss"), (int, float))],
                [(r["step"], r["eval_loss"]) for r in log if isinstance(r.get("eval_loss"), (int, float))],
            )
        )
    if not any(train or val for train, val in curves):
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    # A fixed palette (matplotlib's tab10), not the style's colour cycle, which other libraries restyle.
    tab10 = matplotlib.colormaps["tab10"]
    colours = [tab10(i) for i in range(tab10.N)]
    for i, (label, (train, val)) in enumerate(zip(labels, curves)):
        colour = colours[i % len(colours)]
        if train:
            ax.plot(*zip(*train), color=colour, label=f"{label} train")
        if val:
            ax.plot(*zip(*val), "o--", color=colour, label=f"{label} validation")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss per trained token")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return output
