"""Every registered fine-tuning method on the packaged SmolLM2-135M-Instruct, same steps and data for all.

    python -m bench.methods [--steps 12] [--methods lora,ia3] [--out bench/results/methods-DATE.json]

Each method runs `tunesmith train examples/quickstart.yaml` in its own subprocess with the same overrides
(steps, batch size, sequence length, one validation at the last step, a small generation eval, no base-model
comparison) and the method's own recommended learning rate (`get_method(m).recommend.learning_rate`: what a
user gets). Plus `lora` with `method.init=pissa`. Methods run one after another.

Measured per method: peak RSS of the child process (`resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`, KiB
on Linux, read after each child; it is the maximum over children so far, so each method runs in a fresh
intermediate `python -m bench.methods --child` process whose own RUSAGE_CHILDREN is only that run) and,
from the run's summary.json: parameters.trainable, best_eval_loss, train_seconds, trained_tokens_per_s.
A failed method records the last lines of its stderr and the benchmark goes on.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "quickstart.yaml"
GiB_KiB = 1024**2

# (label, method.name, extra overrides)
VARIANTS_EXTRA = [("lora-pissa", "lora", ["method.init=pissa"])]


def _tunesmith() -> list[str]:
    exe = Path(sys.executable).with_name("tunesmith")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "tunesmith"]


def variants(selected: list[str] | None) -> list[tuple[str, str, list[str]]]:
    from tunesmith.methods import METHODS

    out = [(m, m, []) for m in METHODS] + VARIANTS_EXTRA
    if selected:
        out = [v for v in out if v[0] in selected]
    return out


def command(label: str, method: str, extra: list[str], steps: int, out_dir: Path) -> list[str]:
    from tunesmith.methods import get_method

    lr = get_method(method).recommend.learning_rate
    sets = [
        f"method.name={method}",
        f"train.max_steps={steps}",
        f"train.eval_every={steps}",
        "train.batch_size=4",
        "data.max_length=256",
        "eval.compare_base=false",
        "eval.max_samples=4",
        f"output.dir={out_dir}",
        f"name={label}",
        f"train.learning_rate={lr}",
        *extra,
    ]
    cmd = _tunesmith() + ["train", str(CONFIG)]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def child(argv: list[str]) -> int:
    """Run one training command; print its exit code, peak RSS and stderr tail as JSON on the last line."""
    t0 = time.time()
    p = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(
        json.dumps(
            {
                "rc": p.returncode,
                "maxrss_kib": ru.ru_maxrss,
                "wall_s": time.time() - t0,
                "stderr_tail": p.stderr.strip().splitlines()[-15:],
                "stdout_tail": p.stdout.strip().splitlines()[-5:],
            }
        )
    )
    return 0


def run_one(label: str, method: str, extra: list[str], steps: int, work: Path) -> dict:
    out_dir = work / label
    cmd = command(label, method, extra, steps, out_dir)
    rec: dict = {"label": label, "method": method, "extra": extra, "command": cmd}
    p = subprocess.run(
        [sys.executable, "-m", "bench.methods", "--child", "--", *cmd],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    try:
        res = json.loads(p.stdout.strip().splitlines()[-1])
    except Exception:
        rec.update(ok=False, error="bench child failed: " + "\n".join(p.stderr.strip().splitlines()[-15:]))
        return rec
    rec.update(rc=res["rc"], peak_rss_gib=res["maxrss_kib"] / GiB_KiB, wall_s=res["wall_s"])
    summaries = sorted(out_dir.rglob("summary.json"), key=lambda q: q.stat().st_mtime)
    if res["rc"] != 0 or not summaries:
        rec.update(ok=False, error="\n".join(res["stderr_tail"]) or "\n".join(res["stdout_tail"]) or "no summary.json")
        return rec
    s = json.loads(summaries[-1].read_text())
    rec.update(
        ok=True,
        run_dir=str(summaries[-1].parent),
        trainable=(s.get("parameters") or {}).get("trainable"),
        total=(s.get("parameters") or {}).get("total"),
        best_eval_loss=s.get("best_eval_loss"),
        train_seconds=s.get("train_seconds"),
        trained_tokens_per_s=s.get("trained_tokens_per_s"),
        learning_rate=next((c.split("=", 1)[1] for c in cmd if c.startswith("train.learning_rate=")), None),
        notes=[ln for ln in res["stderr_tail"] if "dropped" in ln.lower()],
    )
    return rec


def _f(x, fmt):
    return "—" if x is None else format(x, fmt)


def table(results: list[dict], steps: int) -> str:
    rows = [
        f"| method | lr | trainable params | peak RSS GiB | val loss @{steps} | tokens/s | train s | status |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        if r.get("ok"):
            rows.append(
                f"| {r['label']} | {r['learning_rate']} | {_f(r['trainable'], ',')} | {_f(r['peak_rss_gib'], '.2f')} | "
                f"{_f(r['best_eval_loss'], '.4f')} | {_f(r['trained_tokens_per_s'], ',.1f')} | "
                f"{_f(r['train_seconds'], '.1f')} | ok |"
            )
        else:
            err = (r.get("error") or "").strip().splitlines()
            rows.append(
                f"| {r['label']} | | | {_f(r.get('peak_rss_gib'), '.2f')} | | | | FAILED: {err[-1] if err else '?'} |"
            )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child(argv[2:] if argv[1:2] == ["--"] else argv[1:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--methods", help="comma-separated labels (default: all, plus lora-pissa)")
    ap.add_argument("--out", help="JSON output (default bench/results/methods-<date>.json)")
    args = ap.parse_args(argv)
    date = datetime.date.today().isoformat()
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / f"methods-{date}.json"
    work = Path(tempfile.mkdtemp(prefix="tunesmith-methods-"))
    results = []
    for label, method, extra in variants(args.methods.split(",") if args.methods else None):
        print(f"[{time.strftime('%H:%M:%S')}] {label} ...", flush=True)
        rec = run_one(label, method, extra, args.steps, work)
        results.append(rec)
        print(
            f"    {'ok' if rec.get('ok') else 'FAILED'}: "
            + json.dumps(
                {
                    k: rec.get(k)
                    for k in ("trainable", "peak_rss_gib", "best_eval_loss", "trained_tokens_per_s", "train_seconds")
                }
            ),
            flush=True,
        )
        if not rec.get("ok"):
            print("    " + (rec.get("error") or "").replace("\n", "\n    "), flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(_doc(results, args.steps, date, work), indent=2) + "\n")
    print()
    print(table(results, args.steps))
    print(f"\nwrote {out}")
    return 0


def _doc(results: list[dict], steps: int, date: str, work: Path) -> dict:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "date": date,
        "config": str(CONFIG.relative_to(ROOT)),
        "steps": steps,
        "batch_size": 4,
        "max_length": 256,
        "machine": {"nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version()},
        "work_dir": str(work),
        "results": results,
    }


if __name__ == "__main__":
    sys.exit(main())
