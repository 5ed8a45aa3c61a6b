"""The end of a study: best.yaml, report.md with a table of trials, optimisation history and parameter
importance plots, and the optional final training of the best config on train+validation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

from tunesmith.config import RunConfig, dump_config
from tunesmith.errors import TunesmithError
from tunesmith.search.space import config_with
from tunesmith.search.trials import counts, interrupted_numbers

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def best_trials(study) -> list:
    """Single objective: the best complete trial. Several: the Pareto front, best first objective first."""
    from optuna.trial import TrialState

    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not complete:
        return []
    if len(study.directions) == 1:
        return [study.best_trial]
    sign = 1 if study.directions[0].name == "MINIMIZE" else -1
    return sorted(study.best_trials, key=lambda t: sign * t.values[0])


def best_config(config: RunConfig, trial) -> RunConfig:
    """The study's config with the trial's values: a complete run config for `tunesmith train`."""
    best = config_with(config, dict(trial.params), where=f"trial {trial.number}")
    best.name = f"{config.name}-best"
    return best


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "/")


def _plots(study, folder: Path, objectives: list[str]) -> tuple[list[str], list[str]]:
    """Optuna's matplotlib plots; a plot that cannot be drawn yet (too few trials) is named with why."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    folder.mkdir(parents=True, exist_ok=True)
    made, missing = [], []
    first = (lambda t: t.values[0]) if len(objectives) > 1 else None
    wanted = [
        (
            "optimization_history.png",
            lambda: ovm.plot_optimization_history(study, target=first, target_name=objectives[0]),
        ),
        (
            "param_importances.png",
            lambda: ovm.plot_param_importances(study, target=_first_objective(study), target_name=objectives[0]),
        ),
    ]
    if len(objectives) in (2, 3):
        wanted.append(("pareto_front.png", lambda: ovm.plot_pareto_front(study, target_names=objectives)))
    for name, draw in wanted:
        try:
            # Optuna's plots call plt.style.use("ggplot"), which would restyle every later plot of the
            # process (loss curves, confusion matrices, run comparisons); rc_context undoes it.
            with matplotlib.rc_context():
                axes = draw()
            # Optuna draws on a figure of its own: the axes' figure is a top-level Figure, not a SubFigure.
            figure = cast("Figure", (axes.flat[0] if hasattr(axes, "flat") else axes).figure)
            figure.set_size_inches(8, 5)
            figure.tight_layout()
            figure.savefig(folder / name, dpi=100)
            plt.close(figure)
            made.append(name)
        except Exception as exc:  # too few complete trials, or a parameter that never varied
            plt.close("all")
            missing.append(f"{name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    return made, missing


def _values(trial) -> list[float]:
    """A trial's objective values; a lower rung of autotrain's halving is pruned, its value the one it reported."""
    if trial.values:
        return list(trial.values)
    return [v for _, v in sorted(trial.intermediate_values.items())][-1:]


def _first_objective(study):
    """Several objectives: plots and importances follow the first. Optuna's importance evaluator reads
    a target as 'lower is better', so a maximised one is negated."""
    if len(study.directions) == 1:
        return None
    sign = -1.0 if study.directions[0].name == "MAXIMIZE" else 1.0
    return lambda t: sign * t.values[0]


def _importances(study, objectives: list[str]) -> dict:
    import optuna

    try:
        return optuna.importance.get_param_importances(study, target=_first_objective(study))
    except Exception:
        return {}


def write_report(
    study, config: RunConfig, study_dir: Path, notes: list[str], chosen=None, sections: Sequence[str] = ()
) -> tuple[Path, Path | None]:
    """report.md, plots/ and best.yaml in the study folder; returns (report, best.yaml or None). `chosen`: the
    trial the caller chose (autotrain's best run at the highest rung reached, which may not be complete);
    `sections`: markdown lines the caller adds before the notes (autotrain's budget and ranges)."""
    from optuna.trial import TrialState

    study_dir = Path(study_dir)
    objectives = list(config.search.objectives)
    trials = study.get_trials(deepcopy=False)
    front = [chosen] if chosen is not None else best_trials(study)
    best = front[0] if front else None
    best_path = None
    lines = [
        f"# Search: {study.study_name}",
        "",
        f"- study directory: `{study_dir}`",
        f"- sampler {config.search.sampler}, pruner {config.search.pruner if len(objectives) == 1 else 'none'}; "
        f"objectives: " + ", ".join(f"{m} ({d})" for m, d in config.search.objectives.items()),
        "- trials: " + ", ".join(f"{n} {k}" for k, n in sorted(counts(study).items())),
        "",
    ]

    # 1. Best trial and best.yaml.
    if best is not None:
        chosen = best_config(config, best)
        header = [
            f"# best trial {best.number} of study {study.study_name!r} ({study_dir})",
            "# " + ", ".join(f"validation {m} = {v:.6g}" for m, v in zip(objectives, _values(best))),
            f"# train it: tunesmith train {study_dir / 'best.yaml'}",
        ]
        best_path = study_dir / "best.yaml"
        best_path.write_text("\n".join(header) + "\n" + dump_config(chosen))
        lines += [
            "## Best trial",
            "",
            f"Trial {best.number}: " + ", ".join(f"{m} = {v:.4g}" for m, v in zip(objectives, _values(best))),
            "",
            "| parameter | value |",
            "|---|---|",
        ]
        lines += [f"| `{k}` | {_cell(v)} |" for k, v in best.params.items()]
        lines += ["", f"Its config: [best.yaml](best.yaml); its run: `{best.user_attrs.get('run_dir', '-')}`", ""]
        default = next((t for t in trials if t.user_attrs.get("default") and t.state == TrialState.COMPLETE), None)
        test_keys = [k for k, v in best.user_attrs.get("test", {}).items() if k != "test_samples"]
        if test_keys:
            lines += [
                "Test split (reported, never used to choose):",
                "",
                "| metric | "
                + (f"default values (trial {default.number}) | " if default else "")
                + f"best (trial {best.number}) |",
                "|---|" + ("---|" if default else "") + "---|",
            ]
            for key in test_keys:
                lines.append(
                    f"| {key} | "
                    + (f"{_cell(default.user_attrs.get('test', {}).get(key))} | " if default else "")
                    + f"{_cell(best.user_attrs['test'][key])} |"
                )
            lines.append("")
        if len(objectives) > 1:
            lines += [
                "## Pareto front",
                "",
                "| trial | " + " | ".join(objectives) + " |",
                "|---|" + "---|" * len(objectives),
            ]
            lines += [f"| {t.number} | " + " | ".join(_cell(v) for v in t.values) + " |" for t in front]
            lines.append("")
    else:
        lines += ["No trial completed, so there is no best config. The reasons are in the table below.", ""]

    # 2. Every trial.
    params = list(dict.fromkeys(k for t in trials for k in t.params))
    lines += [
        "## Trials",
        "",
        "| trial | state | "
        + " | ".join(objectives)
        + " | "
        + " | ".join(f"`{p}`" for p in params)
        + " | steps | seconds | note |",
        "|---|---|" + "---|" * (len(objectives) + len(params) + 3),
    ]
    interrupted = interrupted_numbers(trials)
    for t in trials:
        # A pruned trial's value is its last intermediate one (possibly signed loss): not the objective.
        complete = t.state == TrialState.COMPLETE and t.values and len(t.values) == len(objectives)
        values = t.values if complete else [None] * len(objectives)
        if t.state == TrialState.PRUNED and t.user_attrs.get("rung") is not None:
            values = list(t.values or [None])  # a lower rung's value: shown, and the note says which rung
        state = "interrupted" if t.number in interrupted and t.state == TrialState.FAIL else t.state.name.lower()
        seconds = t.duration.total_seconds() if t.duration else None
        note = "; ".join(
            n
            for n in (
                "default values" if t.user_attrs.get("default") else "",
                t.user_attrs.get("known_good", ""),
                t.user_attrs.get("origin", ""),  # a draw rerun with fewer epochs (search/halving.py)
                t.user_attrs.get("note", ""),
                t.user_attrs.get("reason", ""),
            )
            if n
        )
        if t.user_attrs.get("retry_of") is not None:
            note = f"rerun of interrupted trial {t.user_attrs['retry_of']}" + (f"; {note}" if note else "")
        lines.append(
            f"| {t.number} | {state} | "
            + " | ".join(_cell(v) for v in values)
            + " | "
            + " | ".join(_cell(t.params.get(p)) for p in params)
            + f" | {_cell(t.user_attrs.get('steps'))} | {_cell(round(seconds, 1) if seconds else None)} | {_cell(note)} |"
        )
    lines.append("")

    # 3. Importances and plots.
    importances = _importances(study, objectives)
    if importances:
        lines += [
            "## Parameter importances (Optuna's PED-ANOVA: what separates the best trials from the rest)",
            "",
            "| parameter | importance |",
            "|---|---|",
        ]
        lines += [f"| `{k}` | {v:.3f} |" for k, v in importances.items()]
        lines.append("")
    made, missing = _plots(study, study_dir / "plots", objectives)
    lines += [f"![{name[:-4]}](plots/{name})" for name in made]
    if missing:
        lines += ["", "Plots not drawn: " + "; ".join(missing)]
    lines += list(sections)
    if notes:
        lines += ["", "## What was cut", ""] + [f"- {n}" for n in notes]
    report = study_dir / "report.md"
    report.write_text("\n".join(lines) + "\n")
    print(
        f"report: {report}"
        + (
            f"\nbest config: {best_path} (trial {best.number}: "
            + ", ".join(f"{m} {v:.4g}" for m, v in zip(objectives, _values(best)))
            + ")"
            if best
            else ""
        )
    )
    return report, best_path


# ---------------------------------------------------------------------------------------------------
# Final training


def final_config(config: RunConfig, trial, study_dir: Path, whole_schedule: bool = False) -> RunConfig:
    """The best config trained on train+validation: both splits written out as one file (in the task's
    canonical columns, so no column mapping or system prompt is applied twice), the same test split."""
    import json

    from tunesmith.pipeline import read_splits
    from tunesmith.tasks import get_task

    best = best_config(config, trial)
    task = get_task(best.task)
    splits = read_splits(best)
    data_dir = Path(study_dir) / "final_data"
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        for name, examples in (("train_validation", splits.train + splits.validation), ("test", splits.test)):
            with open(data_dir / f"{name}.jsonl", "w", encoding="utf-8") as handle:
                for example in examples:
                    handle.write(json.dumps(task.to_record(example), ensure_ascii=False) + "\n")
    except TypeError as exc:
        raise TunesmithError(
            f"the {best.task} records cannot be written as JSON for the final training ({exc})",
            where="--final-train",
            fix=f"train best.yaml yourself: tunesmith train {Path(study_dir) / 'best.yaml'}",
        ) from None
    raw = best.model_dump()
    raw["data"].update(
        train=str(data_dir / "train_validation.jsonl"),
        validation=None,
        test=str(data_dir / "test.jsonl") if splits.test else None,
        split=(1.0, 0.0, 0.0),
        columns={},
        format="auto",
        system_prompt=None,
        label_separator=None,
        allow_outside_paths=True,
    )  # image paths written here were checked when the splits were read
    final = RunConfig.model_validate(raw)
    final.name = f"{config.name}-final"
    final.output.dir = str(Path(study_dir) / "final")
    final.train.early_stopping_patience = None  # no validation split is left to stop on
    final.eval.compare_base = True
    # The best trial kept the weights of its best validation pass: train as far as that, on more data. Not
    # when the budget cut the trial (it was still improving when time ran out), nor when the trial was a rung
    # of autotrain's halving (`whole_schedule`: a rung is a share of the schedule): then the whole schedule.
    steps, best_step = trial.user_attrs.get("steps"), trial.user_attrs.get("best_step")
    cut = trial.user_attrs.get("cut_by_budget", False)
    if best_step and steps and best_step < steps and splits.train and not cut and not whole_schedule:
        final.train.max_steps = math.ceil(best_step * (len(splits.train) + len(splits.validation)) / len(splits.train))
    return final


def final_training(study, config: RunConfig, study_dir: Path, budget=None, chosen=None) -> Path | None:
    """Train the best trial's config (or `chosen`'s, at its whole schedule) on train+validation; with a
    `budget` (search/budget.py), its whole schedule when it fits, else the steps that do."""
    from tunesmith import pipeline
    from tunesmith.train.loop import total_optimizer_steps

    front = [chosen] if chosen is not None else best_trials(study)
    if not front:
        return None
    final = final_config(config, front[0], study_dir, whole_schedule=chosen is not None)
    if budget is not None:
        train_file = cast(str, final.data.train)  # final_config wrote train+validation to one file
        examples: int = sum(1 for line in Path(train_file).read_text(encoding="utf-8").splitlines() if line.strip())
        limited = budget.limit_final(final, total_optimizer_steps(examples, final.train, 1))
        if limited is None:
            return None
        final = limited
    source = f"trial {front[0].number}'s config" if front[0].number >= 0 else "the default config (no search)"
    print(f"\n=== final training: {source} on train+validation -> {final.output.dir}")
    return pipeline.train(final).run_dir
