"""AutoML benchmark: `tunesmith autotrain` against the example configs and a plain `Trainer`, on three tasks.

    python -m bench.autotrain                                    # 3 tasks x (example, hf-trainer, autotrain 5m/15m/30m)
    python -m bench.autotrain --tasks text-classification --budgets 5m,15m
    python -m bench.autotrain --runners example,hf-trainer       # no autotrain
    python -m bench.autotrain --resume                           # go on with the newest bench/results/autotrain-*.json
    python -m bench.autotrain --retable bench/results/autotrain-DATE.json

Runners, each in its own process, one after another (never two trainings at once):
  example     `tunesmith train <the task's example YAML> --set output.dir=DIR`
  hf-trainer  `bench/baselines/hf_trainer_tasks.py`: transformers' `Trainer` with its defaults, full fine-tuning
  autotrain   `tunesmith autotrain <the example's data file> --budget B --output DIR --seed 42`

The same split and metric for all. The driver reads the example config's splits with tunesmith
(`read_splits`: its data file, `data.split`, seed) and writes them as JSONL in the task's canonical
columns; the baseline trains on that train file. Every finished model (the example's run, autotrain's
final run, the baseline's saved folder) is then scored by one scorer process (`--score`) on that one test
file with tunesmith's own test scoring (`task.evaluate_test` under the run's autocast, the path
`tunesmith train` and `tunesmith eval` take) and the example config's eval section (chat: the same 40
prompts, 64 new tokens, greedy). The test split each tunesmith run saved is compared with the driver's,
record by record: a difference is reported (and autotrain's final training data is searched for the
driver's test records), never hidden. Each run's own test score is kept beside the rescoring.

Results: `bench/results/autotrain-<date>.json` (one record per task, runner and budget, written after every
record) and the table in `bench/AUTOTRAIN_RESULTS.md`. Work folders (runs, logs, splits) go under
`$TUNESMITH_BENCH_DIR/autotrain` (default `$TMPDIR/tunesmith-bench/autotrain`), kept for `--resume`.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.baselines import common

ROOT = Path(__file__).resolve().parents[1]
WORK = Path(os.environ.get("TUNESMITH_BENCH_DIR", Path(tempfile.gettempdir()) / "tunesmith-bench")) / "autotrain"
RESULTS = ROOT / "bench" / "results"
TABLE = ROOT / "bench" / "AUTOTRAIN_RESULTS.md"
GiB = 1024**3
SEED = 42  # autotrain's --seed, the examples' seed and TrainingArguments' default: one seed for every runner


@dataclass(frozen=True)
class Task:
    config: str  # the example YAML, relative to the repository
    metrics: tuple[str, ...]  # the headline test metrics, the first is the one the ratios compare


TASKS = {
    "text-classification": Task("examples/text_classification.yaml", ("accuracy", "f1_macro")),
    "chat": Task("examples/quickstart.yaml", ("rougeL", "exact_match")),
    "token-classification": Task(
        "examples/token_classification.yaml", ("f1_micro", "precision_micro", "recall_micro", "token_accuracy")
    ),
}
RUNNERS = ("example", "hf-trainer", "autotrain")
BUDGETS = ("5m", "15m", "30m")


# ---------------------------------------------------------------------------------------------------
# Child processes


@dataclass
class Finished:
    rc: int
    wall_seconds: float
    peak_rss_bytes: int  # the child's VmHWM, and its waited-for children's (autotrain's trial processes)
    lines: list[str]


def run_process(cmd: list[str], log: Path, echo: bool) -> Finished:
    """Run `cmd` with its output streamed to `log` (and echoed, progress bars left out); the peak resident set
    comes from wait4, which reports this child alone, so each runner's peak is its own."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    started = time.perf_counter()
    lines: list[str] = []
    with open(log, "w", encoding="utf-8") as handle:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            handle.write(line)
            lines.append(line.rstrip("\n"))
            if echo and "%|" not in line:  # tqdm bars: one line per update in the pipe
                print("    | " + line.rstrip("\n")[:200], flush=True)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so Popen must not wait for it again
    return Finished(proc.returncode, time.perf_counter() - started, usage.ru_maxrss * 1024, lines)


def result_line(lines: list[str]) -> dict | None:
    """The worker's `BENCH_RESULT {json}` line (common.emit), if it printed one."""
    found = [line for line in lines if line.startswith("BENCH_RESULT ")]
    return json.loads(found[-1][len("BENCH_RESULT ") :]) if found else None


def tunesmith_cli() -> list[str]:
    exe = Path(sys.executable).with_name("tunesmith")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "tunesmith.cli"]


@functools.cache
def autotrain_data_flag() -> bool:
    """Whether `tunesmith autotrain` takes its data file as `--data FILE` (today) or as its first argument."""
    shown = subprocess.run(tunesmith_cli() + ["autotrain", "--help"], capture_output=True, text=True).stdout
    return "--data" in shown


def fresh(folder: Path) -> Path:
    """An empty folder for one record: a rerun after a crash must not find the last attempt's runs."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def failure(done: Finished, log: Path, why: str = "") -> dict:
    tail = [line for line in done.lines if line.strip()][-15:]
    return {"ok": False, "error": why or f"exit {done.rc}", "log": str(log), "log_tail": tail}


def measured(done: Finished, log: Path) -> dict:
    return {"wall_seconds": round(done.wall_seconds, 1), "peak_rss_gib": done.peak_rss_bytes / GiB, "log": str(log)}


# ---------------------------------------------------------------------------------------------------
# Splits: the example config's, written once per task


def write_splits(task: str, folder: Path) -> dict:
    """The example config's train/validation/test as tunesmith reads them, written as JSONL (the task's
    canonical records, as `tunesmith train` saves its test split), and whether autotrain's default split of
    the same file (data.split and seed left at their defaults) gives the same test records."""
    from tunesmith.config import RunConfig, load_config
    from tunesmith.data.prepare import save_examples
    from tunesmith.pipeline import read_splits
    from tunesmith.tasks import get_task

    config = load_config(ROOT / TASKS[task].config)
    module = get_task(config.task)
    splits = read_splits(config)
    for name, examples in splits.items():
        save_examples([module.to_record(e) for e in examples], folder / f"{name}.jsonl")
    default = RunConfig.model_validate(
        {"task": config.task, "model": {"name": config.model.name}, "data": {"train": config.data.train}}
    )
    default_test = [module.to_record(e) for e in read_splits(default).test]
    return {
        "data": str(config.data.train),
        "sizes": {name: len(examples) for name, examples in splits.items()},
        "example_split": list(config.data.split),
        "default_split": list(default.data.split),
        "default_seed": default.seed,
        "autotrain_default_same_test": default_test == [module.to_record(e) for e in splits.test],
    }


def compare_test(saved: Path, ours: Path) -> dict:
    """Whether a run scored itself on the driver's test records (same records, same order: chat scores the
    first eval.max_samples)."""
    if not saved.exists():
        return {"same_as_driver": None, "note": f"{saved} not found"}
    theirs, mine = common.read_jsonl(saved), common.read_jsonl(ours)
    out: dict = {"same_as_driver": theirs == mine, "records": len(theirs)}
    if theirs != mine:
        keys = {json.dumps(r, sort_keys=True) for r in theirs}
        out["shared_with_driver"] = sum(json.dumps(r, sort_keys=True) in keys for r in mine)
    return out


def leaked(train_file: Path, ours: Path) -> int | None:
    """How many of the driver's test records a runner trained on (autotrain's final train+validation file)."""
    if not train_file.exists():
        return None
    trained = {json.dumps(r, sort_keys=True) for r in common.read_jsonl(train_file)}
    return sum(json.dumps(r, sort_keys=True) in trained for r in common.read_jsonl(ours))


def newest_summary(folder: Path) -> Path | None:
    found = sorted(folder.rglob("summary.json"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def numbers(metrics: dict) -> dict:
    """The scalar metrics (per-class tables left out)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


# ---------------------------------------------------------------------------------------------------
# The three runners: each returns its record less the shared scoring


def run_example(task: str, folder: Path, data: Path, echo: bool) -> dict:
    out, log = fresh(folder / "run"), folder / "output.log"
    cmd = tunesmith_cli() + ["train", str(ROOT / TASKS[task].config), "--set", f"output.dir={out}"]
    done = run_process(cmd, log, echo)
    summary_path = newest_summary(out)
    record = {"command": cmd, **measured(done, log)}
    if done.rc != 0 or summary_path is None:
        return record | failure(done, log)
    summary = json.loads(summary_path.read_text())
    run_dir = summary_path.parent
    return record | {
        "ok": True,
        "score": {"kind": "run", "source": str(run_dir)},
        "run_dir": str(run_dir),
        "test_reported": numbers(summary.get("tuned") or {}),
        "train_seconds": summary.get("train_seconds"),
        "reported_wall_seconds": summary.get("wall_seconds"),
        "method": summary.get("method"),
        "model": summary.get("model"),
        "test_split": compare_test(run_dir / "data" / "test.jsonl", data / "test.jsonl"),
    }


def run_hf_trainer(task: str, folder: Path, data: Path, echo: bool) -> dict:
    from tunesmith.config import load_config
    from tunesmith.models.resolve import resolve_model

    config = load_config(ROOT / TASKS[task].config)
    out, log = fresh(folder / "model"), folder / "output.log"
    spec = {
        "task": config.task,
        "model_dir": resolve_model(config.model.name, config.model.gguf_file).path,
        "train_file": str(data / "train.jsonl"),
        "max_length": config.data.max_length,  # every record of the three data sets fits: truncation cuts nothing
        "output_dir": str(out),
        "seed": SEED,
    }
    (folder / "spec.json").write_text(json.dumps(spec, indent=2))
    cmd = [sys.executable, "-m", "bench.baselines.hf_trainer_tasks", str(folder / "spec.json")]
    done = run_process(cmd, log, echo)
    result = result_line(done.lines)
    record = {"command": cmd, **measured(done, log)}
    if done.rc != 0 or result is None:
        return record | failure(done, log)
    return record | {
        "ok": True,
        "score": {"kind": "folder", "source": str(out)},
        "train_seconds": result["train_seconds"],
        "baseline": result,
        "method": "full",
        "model": config.model.name,
        "test_split": {"same_as_driver": True, "records": len(common.read_jsonl(data / "test.jsonl"))},
    }


def printed(lines: list[str], label: str) -> str | None:
    """A value autotrain prints as `  label:   value  (...)`."""
    for line in reversed(lines):
        if line.strip().startswith(label + ":"):
            value = line.split(":", 1)[1].strip().split("  (")[0].strip()
            return None if value in ("", "None") else value
    return None


def run_autotrain(task: str, budget: str, folder: Path, data: Path, echo: bool) -> dict:
    source = TASKS[task].config
    from tunesmith.config import load_config

    data_file = str(load_config(ROOT / source).data.train)
    out, log = fresh(folder / "out"), folder / "output.log"
    given = ["--data", data_file] if autotrain_data_flag() else [data_file]
    cmd = tunesmith_cli() + ["autotrain", *given, "--budget", budget, "--output", str(out), "--seed", str(SEED)]
    done = run_process(cmd, log, echo)
    record = {"command": cmd, **measured(done, log)}
    study = printed(done.lines, "study")
    report_path = Path(study) / "autotrain.json" if study else None
    report = json.loads(report_path.read_text()) if report_path and report_path.exists() else None
    final_run = (report or {}).get("final_run") or printed(done.lines, "final model")
    if done.rc != 0 or not final_run:
        return record | failure(done, log, "" if done.rc else "no final run")
    summary = json.loads((Path(final_run) / "summary.json").read_text())
    study_dir = Path((report or {}).get("study_dir") or study or Path(final_run).parent.parent)
    return record | {
        "ok": True,
        "score": {"kind": "run", "source": final_run},
        "run_dir": final_run,
        "autotrain": report,  # None until autotrain writes autotrain.json
        "autotrain_json": str(report_path) if report else None,
        "test_reported": numbers((report or {}).get("test") or summary.get("tuned") or {}),
        "train_seconds": (report or {}).get("trained_seconds"),
        "method": (report or {}).get("method") or summary.get("method"),
        "model": (report or {}).get("model") or summary.get("model"),
        "detected_task": (report or {}).get("task") or summary.get("task"),
        "test_split": compare_test(Path(final_run) / "data" / "test.jsonl", data / "test.jsonl")
        | {
            "driver_test_records_trained_on": leaked(
                study_dir / "final_data" / "train_validation.jsonl", data / "test.jsonl"
            )
        },
    }


# ---------------------------------------------------------------------------------------------------
# Scoring: one path for every runner's model


def score(spec: common.Spec) -> dict:
    """The test metrics of one finished model on the driver's test file, scored as `tunesmith train` scores
    its test split (pipeline._score_test: the task's evaluate_test under the run's autocast) with the example
    config's eval section and precision. A tunesmith run is loaded as `tunesmith eval` loads it; the
    baseline's folder as tunesmith loads a fully fine-tuned model, with the label order its head was saved in."""
    from tunesmith.config import DataConfig, load_config
    from tunesmith.data.prepare import load_examples
    from tunesmith.models.load import load_model
    from tunesmith.models.resolve import ResolvedModel
    from tunesmith.pipeline import _accelerator, _score_test, load_tuned, read_splits
    from tunesmith.tasks import get_task

    reference = load_config(spec.config)
    task = get_task(reference.task)
    if spec.kind == "run":
        model, tokenizer, config, meta = load_tuned(spec.source)
    else:
        config, folder = reference, ResolvedModel(spec.source, None, "local", spec.source)
        tokenizer = task.load_processor(folder, config.model)
        model = load_model(folder, config.model, task.model_class(), method_name="full").eval()
        meta = saved_label_order(model, task.setup(read_splits(reference), reference))
    if config.task != reference.task:
        raise SystemExit(f"{spec.source} is a {config.task} model, the benchmark's task is {reference.task}")
    config.eval = reference.eval.model_copy()
    config.train.precision = reference.train.precision
    test, _ = load_examples(spec.test_file, DataConfig(allow_outside_paths=True), task.normalise)
    started = time.perf_counter()
    metrics, _ = _score_test(model, tokenizer, test, config, _accelerator(config.train.precision), meta)
    return {"test": numbers(metrics), "score_seconds": round(time.perf_counter() - started, 1)}


def saved_label_order(model, meta: dict) -> dict:
    """The task's label metadata with the label order of the model's head (the baseline sorts its own
    labels; tunesmith puts O first for tagging); the same label set, or scoring would be meaningless."""
    if "labels" not in meta:
        return meta
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    if set(names) != set(meta["labels"]):
        raise SystemExit(f"the model's labels {names} are not the training split's {meta['labels']}")
    return dict(meta, labels=names)


def rescore(task: str, record: dict, folder: Path, data: Path, echo: bool) -> dict:
    spec = dict(record["score"], test_file=str(data / "test.jsonl"), config=str(ROOT / TASKS[task].config))
    (folder / "score.json").write_text(json.dumps(spec, indent=2))
    log = folder / "score.log"
    done = run_process([sys.executable, "-m", "bench.autotrain", "--score", str(folder / "score.json")], log, echo)
    result = result_line(done.lines)
    if done.rc != 0 or result is None:
        return record | failure(done, log, f"scoring failed (exit {done.rc})")
    return record | result


# ---------------------------------------------------------------------------------------------------
# The results document


def machine() -> dict:
    from bench.sft import machine as sft_machine

    info = sft_machine() | {"device": common.device_name()}
    described = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True)
    info["git"] = described.stdout.strip() or None
    return info


def key(record: dict) -> tuple:
    return record["task"], record["runner"], record.get("budget")


def plan(tasks: list[str], runners: list[str], budgets: list[str]) -> list[tuple[str, str, str | None]]:
    """(task, runner, budget) in run order: per task the example first (the ratios' reference), then the
    baseline, then autotrain's budgets shortest first."""
    out = []
    for task in tasks:
        for runner in runners:
            out += [(task, runner, b) for b in budgets] if runner == "autotrain" else [(task, runner, None)]
    return out


def out_path(given: str | None, resume: bool) -> Path:
    if given:
        return Path(given)
    previous = sorted(RESULTS.glob("autotrain-*.json"))
    if resume and previous:
        return previous[-1]
    return RESULTS / f"autotrain-{datetime.date.today().isoformat()}.json"


def load_doc(path: Path, resume: bool) -> dict:
    doc = json.loads(path.read_text()) if resume and path.exists() else {}
    doc.setdefault("date", datetime.date.today().isoformat())
    doc.setdefault("results", [])
    doc.setdefault("splits", {})
    return doc


def save_doc(doc: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(path)  # a run killed mid-write keeps the previous file


def put(doc: dict, record: dict) -> None:
    doc["results"] = [r for r in doc["results"] if key(r) != key(record)] + [record]


# ---------------------------------------------------------------------------------------------------
# The table


def _metric_cell(test: dict, names: tuple[str, ...]) -> str:
    return ", ".join(f"{n} {test[n]:.3f}" for n in names if n in test) or "—"


def _ratio_cell(test: dict, reference: dict | None, names: tuple[str, ...]) -> str:
    cells = []
    for n in names[:2]:
        base = (reference or {}).get(n)
        if n in test and base:
            cells.append(f"{n} {test[n] / base:.2f}")
    return ", ".join(cells) or "—"


def _notes(record: dict) -> str:
    notes = []
    split = record.get("test_split") or {}
    if split.get("same_as_driver") is False:
        notes.append(f"own test split differs ({split.get('shared_with_driver')}/{split.get('records')} shared)")
    if split.get("driver_test_records_trained_on"):
        notes.append(f"trained on {split['driver_test_records_trained_on']} test records")
    own, test = record.get("test_reported") or {}, record.get("test") or {}
    if any(n in own and n in test and abs(own[n] - test[n]) > 1e-6 for n in test):
        notes.append("own score differs: " + ", ".join(f"{n} {own[n]:.3f}" for n in list(test)[:2] if n in own))
    auto = record.get("autotrain") or {}
    if auto:
        notes.append(f"{auto.get('model')} {auto.get('method')}, budget {auto.get('budget_seconds', 0) / 60:.0f} min")
    elif record["runner"] == "autotrain" and record.get("ok"):
        notes.append("no autotrain.json")
    return "; ".join(notes)


def _row(record: dict, reference: dict | None) -> str:
    names = TASKS[record["task"]].metrics
    budget = record.get("budget") or "—"
    if not record.get("ok"):
        why = record.get("error", "?")
        return f"| {record['task']} | {record['runner']} | {budget} | FAILED: {why} | | | | | |"
    trained = record.get("train_seconds")
    return (
        f"| {record['task']} | {record['runner']} | {budget} | {_metric_cell(record['test'], names)} | "
        f"{_ratio_cell(record['test'], reference, names)} | {record['wall_seconds']:.0f} | "
        f"{'—' if trained is None else f'{trained:.0f}'} | {record['peak_rss_gib']:.2f} | {_notes(record)} |"
    )


def table(doc: dict) -> str:
    order = {t: i for i, t in enumerate(TASKS)}
    runner_order = {r: i for i, r in enumerate(RUNNERS)}

    def sort_key(r: dict) -> tuple:
        budget = r.get("budget")
        return order.get(r["task"], 99), runner_order.get(r["runner"], 99), 0 if budget is None else parse(budget)

    examples = {r["task"]: r.get("test") for r in doc["results"] if r["runner"] == "example" and r.get("ok")}
    rows = [
        "| task | runner | budget | test metrics | ratio to example | wall s | trained s | peak RSS GiB | notes |",
        "|---|---|---|---|---|---:|---:|---:|---|",
    ]
    rows += [_row(r, examples.get(r["task"])) for r in sorted(doc["results"], key=sort_key)]
    return "\n".join(rows)


def parse(budget: str) -> float:
    """Budget text to minutes, for sorting (5m, 1.5h, 90s)."""
    unit = {"s": 1 / 60, "m": 1.0, "h": 60.0}.get(budget[-1:], 1.0)
    return float(budget[:-1] if budget[-1:] in "smh" else budget) * unit


def markdown(doc: dict) -> str:
    m = doc.get("machine") or {}
    return "\n".join(
        [
            "# AutoML benchmark: autotrain vs the example configs vs a plain Trainer",
            "",
            f"Measured {doc.get('date')} on {m.get('cpu', '?')} ({m.get('cpus', '?')} CPUs, {m.get('device', '?')}), "
            f"torch {m.get('torch', '?')}, transformers {m.get('transformers', '?')}, tunesmith at {m.get('git', '?')}. "
            "Command: `python -m bench.autotrain` (see bench/README.md).",
            "",
            "Every model is scored by the same scorer on the same test file (the example config's test split), with "
            "tunesmith's test scoring and the example's eval settings. *ratio to example*: the metric divided by the "
            "example config's. *wall s*: the whole command (load, train, the runner's own evaluation, save; the shared "
            "rescoring is not counted). *trained s*: training alone (autotrain: search + final training, its "
            "`trained_seconds`). *peak RSS*: the runner's process and its children.",
            "",
            table(doc),
            "",
        ]
    )


def write_table(doc: dict, path: Path) -> None:
    text = markdown(doc)
    print(text)
    path.write_text(text)
    print(f"wrote {path}")


# ---------------------------------------------------------------------------------------------------
# main


def run_record(task: str, runner: str, budget: str | None, work: Path, echo: bool) -> dict:
    data = work / task / "data"
    folder = work / task / (runner if budget is None else f"{runner}-{budget}")
    folder.mkdir(parents=True, exist_ok=True)
    if runner == "example":
        record = run_example(task, folder, data, echo)
    elif runner == "hf-trainer":
        record = run_hf_trainer(task, folder, data, echo)
    else:
        record = run_autotrain(task, str(budget), folder, data, echo)
    record = {"task": task, "runner": runner, "budget": budget} | record
    return rescore(task, record, folder, data, echo) if record.get("ok") else record


def say(record: dict) -> None:
    if not record.get("ok"):
        print(f"    FAILED: {record.get('error')} (log: {record.get('log')})", flush=True)
        for line in record.get("log_tail", [])[-5:]:
            print("      " + line, flush=True)
        return
    names = TASKS[record["task"]].metrics
    print(
        f"    ok: {_metric_cell(record['test'], names)}; wall {record['wall_seconds']:.0f} s, "
        f"peak {record['peak_rss_gib']:.2f} GiB (scored in {record.get('score_seconds')} s)",
        flush=True,
    )


def arguments(argv: list[str] | None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, of {', '.join(TASKS)}")
    ap.add_argument("--runners", default=",".join(RUNNERS), help=f"comma-separated, of {', '.join(RUNNERS)}")
    ap.add_argument("--budgets", default=",".join(BUDGETS), help="autotrain budgets, comma-separated")
    ap.add_argument(
        "--out", help="results JSON (default bench/results/autotrain-<date>.json; with --resume the newest)"
    )
    ap.add_argument("--resume", action="store_true", help="keep the finished records of --out and run the rest")
    ap.add_argument("--work", default=str(WORK), help="runs, logs and splits")
    ap.add_argument("--table", default=str(TABLE), help="where the markdown table goes")
    ap.add_argument("--retable", metavar="FILE", help="only re-render the table from a saved results JSON")
    ap.add_argument("--quiet", action="store_true", help="runner output only to the logs")
    ap.add_argument("--score", help=argparse.SUPPRESS)  # the scorer process: python -m bench.autotrain --score SPEC
    args = ap.parse_args(argv)
    for name, given, known in (("--tasks", args.tasks, TASKS), ("--runners", args.runners, RUNNERS)):
        unknown = set(given.split(",")) - set(known)
        if unknown:
            ap.error(f"{name}: unknown {', '.join(sorted(unknown))}; choose from {', '.join(known)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    if args.score:
        common.emit(score(common.Spec.read(args.score)))
        return 0
    if args.retable:
        write_table(json.loads(Path(args.retable).read_text()), Path(args.table))
        return 0
    out = out_path(args.out, args.resume)
    doc = load_doc(out, args.resume)
    doc.update(command=["python", "-m", "bench.autotrain", *(argv or sys.argv[1:])], machine=machine())
    work = Path(args.work)
    tasks = args.tasks.split(",")
    for task in tasks:
        doc["splits"][task] = write_splits(task, work / task / "data")
        print(f"{task}: splits {doc['splits'][task]['sizes']} -> {work / task / 'data'}", flush=True)
        if not doc["splits"][task]["autotrain_default_same_test"]:
            print(f"    note: autotrain's default split of {doc['splits'][task]['data']} has another test set")
    for task, runner, budget in plan(tasks, args.runners.split(","), args.budgets.split(",")):
        done = next((r for r in doc["results"] if key(r) == (task, runner, budget) and r.get("ok")), None)
        label = f"{task} / {runner}" + (f" / {budget}" if budget else "")
        if done is not None:
            print(f"[{time.strftime('%H:%M:%S')}] {label}: in {out} already, skipped", flush=True)
            continue
        print(f"[{time.strftime('%H:%M:%S')}] {label} ...", flush=True)
        record = run_record(task, runner, budget, work, not args.quiet) | {"git": doc["machine"]["git"]}
        put(doc, record)
        save_doc(doc, out)
        say(record)
    save_doc(doc, out)
    print(f"\nwrote {out}")
    write_table(doc, Path(args.table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
