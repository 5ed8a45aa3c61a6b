"""report.md and plots/loss.png for a run."""

from __future__ import annotations

from tunesmith.runs.rundir import RunDir, atomic_write_text

NO_DESCRIPTION = "The baseline is the task's reference model on the same split."


def plot_loss(run: RunDir) -> str | None:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    records = run.read_metrics()
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    if not train and not val:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss", color="#1f77b4")
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss", color="#d62728")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss per trained token")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    run.plots.mkdir(parents=True, exist_ok=True)
    path = run.plots / "loss.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else ("-" if value is None else str(value))


def write_report(run: RunDir, summary: dict, base_rows: list[dict], tuned_rows: list[dict], config) -> None:
    plot = plot_loss(run)
    base, tuned, reference = summary.get("base", {}), summary.get("tuned", {}), summary.get("baseline") or {}
    lines = [
        f"# Run {run.path.name}",
        "",
        f"- model: `{summary['model']}` ({summary['model_source']}), method: `{summary['method']}`, task: `{summary['task']}`",
        f"- trainable parameters: {summary['parameters']['trainable']:,} of {summary['parameters']['total']:,}",
        "- data: " + ", ".join(f"{k} {v}" for k, v in summary["data"].items()),
        f"- steps: {summary['steps']} of {summary['total_steps']} ({summary['status']}), precision {summary['precision']}, "
        f"{summary['processes']} process(es)",
        f"- trained tokens: {summary['trained_tokens']:,} at {summary['trained_tokens_per_s']:,.0f} tokens/s; "
        f"wall time {summary['wall_seconds']:.0f} s",
        f"- best validation loss: {_fmt(summary['best_eval_loss'])} (perplexity {_fmt(summary['best_eval_ppl'])}) "
        f"at step {summary['best_step']}",
        "",
        "## Test split: base vs tuned",
        "",
    ]
    if reference:
        # A task's baseline says what it is (its `description`). One recorded without a description may be
        # any model (runs older than descriptions used a fixed C=1 with 1-2 grams), so the fallback names none.
        lines += [reference.get("description") or NO_DESCRIPTION, ""]
    lines += [
        "| metric | base |" + (" baseline |" if reference else "") + " tuned |",
        "|---|---|" + ("---|" if reference else "") + "---|",
    ]
    lines += [
        f"| {k} | {_fmt(base.get(k))} |" + (f" {_fmt(reference.get(k))} |" if reference else "") + f" {_fmt(v)} |"
        for k, v in tuned.items()
        if not isinstance(v, dict)
    ]
    if reference and "accuracy" in tuned and "accuracy" in reference:
        lines += [
            "",
            f"Tuned accuracy is {tuned['accuracy'] - reference['accuracy']:+.4f} against the baseline "
            f"({tuned['accuracy']:.4f} vs {reference['accuracy']:.4f}); macro-F1 "
            f"{tuned['f1_macro'] - reference['f1_macro']:+.4f}.",
        ]
    per_class = tuned.get("per_class")
    if per_class:
        lines += [
            "",
            "### Per class (tuned)",
            "",
            "| class | precision | recall | F1 | support |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {name} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['support']} |"
            for name, m in per_class.items()
        ]
    if (run.plots / "confusion.png").exists():
        lines += ["", "![confusion matrix](plots/confusion.png)"]
    if summary.get("samples"):  # a task's outputs for fixed inputs, before and after (text-to-image grids)
        lines += ["", "## Generated samples: the same prompts and seeds, base then tuned", ""]
        lines += [f"![{path.rsplit('/', 1)[-1]}]({path})" for path in summary["samples"]]
    if plot:
        lines += ["", "## Loss", "", "![loss](plots/loss.png)"]
    shown = config.eval.report_samples
    if tuned_rows and shown:
        lines += ["", f"## Samples ({shown} of {len(tuned_rows)})", ""]
        base_by_where = {row["where"]: row["prediction"] for row in base_rows}
        for row in tuned_rows[:shown]:
            lines += [
                f"**{row['where']}**",
                "",
                f"- prompt: {row['prompt'][:400]!r}",
                f"- reference: {row['reference']!r}",
                f"- base: {base_by_where.get(row['where'], '-')!r}",
                f"- tuned: {row['prediction']!r}",
                "",
            ]
    atomic_write_text(run.path / "report.md", "\n".join(lines) + "\n")
