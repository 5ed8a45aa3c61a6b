"""Preference tuning's reference model: memory and speed of each `train.reference`, on the DPO example.

    python -m bench.preference                 # 4 configurations x STEPS steps of examples/preference_dpo.yaml
    python -m bench.preference --steps 4       # shorter

Each configuration trains the packaged SmolLM2-135M-Instruct with DPO on the example's pairs in its own
process, one after another (never two at once), with the same data, batch and steps:

  lora + adapter   the reference is the same model with its adapter switched off (the default for LoRA)
  lora + copy      a frozen copy of the model beside it
  full + copy      full fine-tuning with a frozen copy (the default for full)
  full + cached    full fine-tuning with the reference's log-probabilities computed once before training

Peak resident memory is the child's (wait4), seconds a step are the loop's own (`train_seconds / steps`,
loading and the reference cache excluded; the cache's time is in the wall time). Results:
`bench/results/preference-<date>.json` and `bench/PREFERENCE_RESULTS.md`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
from pathlib import Path

from bench.autotrain import ROOT, GiB, fresh, machine, run_process, tunesmith_cli

CONFIGS = {
    "lora + adapter": ["method.name=lora", "train.reference=adapter"],
    "lora + copy": ["method.name=lora", "train.reference=copy"],
    "full + copy": ["method.name=full", "train.reference=copy", "train.learning_rate=5e-6"],
    "full + cached": ["method.name=full", "train.reference=cached", "train.learning_rate=5e-6"],
}
STEPS = 8


def run(name: str, overrides: list[str], steps: int, work: Path) -> dict:
    folder = fresh(work / name.replace(" + ", "-"))
    settings = [
        f"output.dir={folder / 'runs'}",
        f"train.max_steps={steps}",
        "train.eval_every=0",
        "eval.compare_base=false",
        "eval.max_samples=16",
        "eval.report_samples=0",
        *overrides,
    ]
    cmd = tunesmith_cli() + ["train", str(ROOT / "examples" / "preference_dpo.yaml")]
    cmd += [part for setting in settings for part in ("--set", setting)]
    done = run_process(cmd, folder / "output.log", echo=False)
    if done.rc != 0:
        return {"config": name, "ok": False, "log": str(folder / "output.log"), "tail": done.lines[-10:]}
    summary = json.loads(next((folder / "runs").glob("*/summary.json")).read_text())
    return {
        "config": name,
        "ok": True,
        "overrides": overrides,
        "steps": summary["steps"],
        "seconds_per_step": round(summary["train_seconds"] / summary["steps"], 3),
        "wall_seconds": round(done.wall_seconds, 1),
        "peak_rss_gib": round(done.peak_rss_bytes / GiB, 3),
        "trainable": summary["parameters"]["trainable"],
        "test_preference_accuracy": summary["tuned"].get("preference_accuracy"),
    }


def table(doc: dict) -> str:
    rows = [r for r in doc["results"] if r["ok"]]
    base = next((r for r in rows if r["config"] == "lora + adapter"), None)
    lines = [
        "# Preference tuning: the reference model's memory and speed",
        "",
        f"Measured {doc['date']} on {doc['machine'].get('cpu', '?')} ({doc['machine'].get('cpus', '?')} CPUs), "
        f"torch {doc['machine'].get('torch', '?')}, tunesmith at {doc['machine'].get('git', '?')}: "
        f"`{' '.join(doc['command'])}`. DPO on `examples/preference_dpo.yaml` (SmolLM2-135M-Instruct, batch 8 "
        f"pairs), {doc['steps']} steps each, one process at a time. Peak RSS: the training process's; s/step: the "
        "loop's own time per optimizer step.",
        "",
        "| reference | peak RSS GiB | ratio to lora + adapter | s/step | wall s |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = f"{r['peak_rss_gib'] / base['peak_rss_gib']:.2f}" if base else "-"
        lines.append(
            f"| {r['config']} | {r['peak_rss_gib']:.2f} | {ratio} | {r['seconds_per_step']:.2f} | {r['wall_seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated, of: " + ", ".join(CONFIGS))
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "tunesmith-bench" / "preference"))
    args = parser.parse_args(argv)
    doc = {
        "date": datetime.date.today().isoformat(),
        "command": ["python", "-m", "bench.preference", *(argv if argv is not None else sys.argv[1:])],
        "machine": machine(),
        "steps": args.steps,
        "results": [],
    }
    for name in args.configs.split(","):
        print(f"{name} ...", flush=True)
        record = run(name, CONFIGS[name], args.steps, Path(args.work))
        print(f"    {record}", flush=True)
        doc["results"].append(record)
    out = ROOT / "bench" / "results" / f"preference-{doc['date']}.json"
    out.write_text(json.dumps(doc, indent=2) + "\n")
    (ROOT / "bench" / "PREFERENCE_RESULTS.md").write_text(table(doc))
    print(f"wrote {out} and bench/PREFERENCE_RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
