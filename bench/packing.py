"""Padding and speed of tunesmith's batching options on the packaged SmolLM2-135M: dynamic padding,
`train.group_by_length`, `data.packing`, and both, on the same data, steps and seed.

    python -m bench.packing                                   # the quickstart's data and settings
    python -m bench.packing --data bench/data/chat.jsonl --max-length 1024 --steps 6 --batch 4
    python -m bench.packing --plan-only                       # padding of a whole epoch's plan, no training

Each configuration trains in its own process (`python -m bench.packing --worker ...`, the house pattern of
bench/memory.py), through `tunesmith.pipeline.train` as `tunesmith train examples/quickstart.yaml` does,
for `--steps` optimizer steps with no validation, test split or base scoring (data.split [1, 0, 0]), so
every collated batch is a training micro-batch. The worker counts, over those micro-batches, the positions
the model computes (rows x width) and the real tokens among them: padding = 1 - real / computed. Speed is
trained (loss-bearing) tokens per second from the run's summary, and the same without the first step
(kernel warm-up) from metrics.jsonl. Packing fills rows of up to data.max_length tokens, so with it a
micro-batch of `--batch` rows holds more examples than an unpacked one: compare tokens/s, not steps/s.

`--plan-only` needs only the tokenizer: the padding share of one whole epoch as the loop would plan it
(epoch 0, seed 42), for every configuration, in a second.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = Path(os.environ.get("TUNESMITH_BENCH_DIR", Path(tempfile.gettempdir()) / "tunesmith-bench"))
CONFIGS = {  # name -> overrides
    "padded": [],
    "group_by_length": ["train.group_by_length=true"],
    "packing": ["data.packing=true"],
    "packing+group": ["data.packing=true", "train.group_by_length=true"],
}


def _config(args, extra: list[str], output: Path):
    from tunesmith.config import load_config

    overrides = [
        f"data.train={Path(args.data).resolve()}",
        "data.split=[1.0, 0.0, 0.0]",
        f"data.max_length={args.max_length}",
        f"train.max_steps={args.steps}",
        f"train.batch_size={args.batch}",
        "train.eval_every=0",
        "train.log_every=1",
        "eval.compare_base=false",
        f"output.dir={output}",
        "name=bench-packing",
        f"train.precision={args.precision}",
    ] + extra
    return load_config(ROOT / "examples" / "quickstart.yaml", overrides)


def worker(args) -> dict:
    from tunesmith import pipeline
    from tunesmith.tasks import chat

    counts = {"computed": 0, "real": 0, "batches": 0, "examples": 0}
    collate = chat.collate

    def counting_collate(batch, pad_id):
        lengths = [len(e.input_ids) for e in batch]
        counts["computed"] += max(lengths) * len(lengths)
        counts["real"] += sum(lengths)
        counts["batches"] += 1
        counts["examples"] += sum(len(getattr(e, "lengths", None) or [0]) for e in batch)
        return collate(batch, pad_id)

    chat.collate = counting_collate  # the loop looks task.collate up at each call
    output = Path(tempfile.mkdtemp(prefix="bench-packing-", dir=WORK))
    try:
        result = pipeline.train(_config(args, CONFIGS[args.worker], output / "runs"))
        rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    finally:
        chat.collate = collate
        shutil.rmtree(output, ignore_errors=True)
    steps = [r for r in rows if "tokens_per_s" in r]
    # Per-step trained tokens and seconds (log_every=1): steady speed leaves out step 1's warm-up.
    tokens = [b["trained_tokens"] - a["trained_tokens"] for a, b in zip(steps, steps[1:])]
    seconds = sum(t / r["tokens_per_s"] for t, r in zip(tokens, steps[1:]))
    summary = result.summary
    return {
        "config": args.worker,
        "steps": summary["steps"],
        "trained_tokens": summary["trained_tokens"],
        "train_seconds": summary["train_seconds"],
        "trained_tokens_per_s": summary["trained_tokens_per_s"],
        "steady_tokens_per_s": round(sum(tokens) / seconds, 1) if seconds else None,
        "padding": 1 - counts["real"] / max(counts["computed"], 1),
        "computed_positions": counts["computed"],
        "real_tokens": counts["real"],
        "micro_batches": counts["batches"],
        "final_train_loss": summary["final_train_loss"],
        "precision": summary["precision"],
    }


def plan_padding(args) -> dict[str, dict]:
    """One epoch as the loop plans it (seed 42, epoch 0): padding share and micro-batches per configuration."""
    from tunesmith import pipeline
    from tunesmith.data.packing import pack_examples
    from tunesmith.train.loop import epoch_micro_batches, example_length

    config = _config(args, [], WORK / "unused")
    _, tokenizer = pipeline.load_tokenizer_for(config)
    splits = pipeline.read_splits(config)
    encoded = pipeline.encode_splits(config, splits, tokenizer, {}, ("train",))["train"]
    packed = pack_examples(encoded, args.max_length)
    out = {}
    for name, overrides in CONFIGS.items():
        items = packed if "data.packing=true" in overrides else encoded
        lengths = [example_length(e) for e in items]
        grouped = lengths if "train.group_by_length=true" in overrides else None
        plan = epoch_micro_batches(len(items), args.batch, config.seed, 0, 1, grouped)
        computed = sum(max(lengths[i] for i in b) * len(b) for b in plan)
        out[name] = {"padding": 1 - sum(lengths) / computed, "micro_batches": len(plan), "rows": len(items)}
    out["_examples"] = {
        "count": len(encoded),
        "median_tokens": sorted(map(len, (e.input_ids for e in encoded)))[len(encoded) // 2],
        "max_tokens": max(len(e.input_ids) for e in encoded),
    }
    return out


def _run_worker(name: str, args) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "bench.packing",
        "--worker",
        name,
        "--data",
        args.data,
        "--max-length",
        str(args.max_length),
        "--steps",
        str(args.steps),
        "--batch",
        str(args.batch),
        "--precision",
        args.precision,
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"worker {name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(ROOT / "examples" / "data" / "support_tickets.jsonl"))
    parser.add_argument("--max-length", type=int, default=256, help="data.max_length (the quickstart's 256)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8, help="train.batch_size (rows with packing)")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"subset of {','.join(CONFIGS)}")
    parser.add_argument("--repeats", type=int, default=1, help="rounds, configurations alternating within each")
    parser.add_argument("--plan-only", action="store_true")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    if args.worker:
        print(json.dumps(worker(args)))
        return

    plan = plan_padding(args)
    info = plan.pop("_examples")
    print(
        f"{args.data}: {info['count']} examples, median {info['median_tokens']} tokens, longest {info['max_tokens']}; "
        f"data.max_length {args.max_length}, batch {args.batch}"
    )
    print("\n| configuration | micro-batches per epoch | padding (epoch plan) |\n|---|---:|---:|")
    for name, row in plan.items():
        print(f"| {name} | {row['micro_batches']} | {100 * row['padding']:.1f}% |")
    if args.plan_only:
        return
    names = args.configs.split(",")
    results = {name: [] for name in names}
    for _ in range(args.repeats):
        for name in names:
            results[name].append(_run_worker(name, args))
            print(f"  {name}: {results[name][-1]}", file=sys.stderr)
    print(
        f"\n{args.steps} steps of {args.batch}, {platform.machine()} {os.cpu_count()} CPUs, precision "
        f"{results[names[0]][0]['precision']}, medians of {args.repeats}:\n"
    )
    print(
        "| configuration | padding (measured) | trained tokens | trained tok/s | tok/s after step 1 | final loss |\n"
        "|---|---:|---:|---:|---:|---:|"
    )

    def median(values):
        values = sorted(v for v in values if v is not None)
        return values[len(values) // 2] if values else float("nan")

    for name, runs in results.items():
        print(
            f"| {name} | {100 * median(r['padding'] for r in runs):.1f}% | {median(r['trained_tokens'] for r in runs)} | "
            f"{median(r['trained_tokens_per_s'] for r in runs):.0f} | {median(r['steady_tokens_per_s'] for r in runs):.0f} | "
            f"{median(r['final_train_loss'] for r in runs):.3f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "plan": plan, "runs": results}, indent=2))


if __name__ == "__main__":
    main()
