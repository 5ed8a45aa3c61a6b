"""Each training-path switch alone, on the packaged SmolLM2-135M-Instruct with LoRA (examples/quickstart.yaml).

    python -m bench.switches                          # default, chunk0, fp32, threads1, compile; 2 warm-up + 4 rounds
    python -m bench.switches --switches default,compile --rounds 6 --json /tmp/switches.json

One process, one model (tunesmith's own loading, LoRA and loss code), the quickstart's data and batch
size. Each round takes the next batch of the shuffled training split and runs one optimizer step of it
under every switch in turn, so a shared machine's drift falls on all of them alike (bench/sft.py runs
whole processes instead; this isolates the step). Per switch: median step seconds and trained
(loss-bearing) tokens/s over the measured rounds, the peak RSS of the step (VmHWM, reset through
/proc/self/clear_refs before each step), and the warm-up steps' seconds (torch.compile compiles there).

Switches, each against `default` (bf16 autocast, train.loss_chunk_tokens 1024, threads as tunesmith
sets them, eager):
  chunk0    train.loss_chunk_tokens: 0 (logits at the batch's shared loss positions, at once)
  fp32      train.precision: fp32
  threads1  one intra-op thread instead of the physical cores
  compile   train.compile: true (the transformer blocks compiled by inductor)
  padded    train.padding_free: false (micro-batches padded to their longest example)
  torchdrop method.fast_dropout: false (PEFT's nn.Dropout on every adapter input)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SWITCHES = {
    "default": {},
    "chunk0": {"loss_chunk_tokens": 0},
    "fp32": {"precision": "fp32"},
    "threads1": {"threads": 1},
    "compile": {"compile": True},
    "padded": {"padding_free": False},
    "torchdrop": {"fast_dropout": False},
}


def _hwm() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_hwm() -> None:
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.switches", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "examples" / "quickstart.yaml"))
    parser.add_argument("--switches", default=",".join(SWITCHES), help=f"comma-separated among {', '.join(SWITCHES)}")
    parser.add_argument("--warmup", type=int, default=2, help="rounds not measured (compile happens here)")
    parser.add_argument("--rounds", type=int, default=4, help="measured rounds")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    names = [s.strip() for s in args.switches.split(",") if s.strip()]

    import torch

    from tunesmith import pipeline
    from tunesmith.config import load_config
    from tunesmith.methods import get_method
    from tunesmith.methods.lora_dropout import FastDropout
    from tunesmith.tasks import get_task
    from tunesmith.train import padding_free
    from tunesmith.train.compile import repeated_blocks
    from tunesmith.train.cpu import configure_cpu_threads
    from tunesmith.train.loss import configure_loss

    # 1. The quickstart's model, method and data, as `tunesmith train` builds them.
    note = configure_cpu_threads()
    threads = torch.get_num_threads()
    config = load_config(args.config)
    task = get_task(config.task)
    resolved, tokenizer = pipeline.load_tokenizer_for(config)
    splits = pipeline.read_splits(config)
    train = task.encode(splits.train, tokenizer, config, {})
    model = pipeline.load_base_model(config, resolved, {})
    model.config.use_cache = False
    model = get_method(config.method.name).apply(model, config.method, False, task_type="CAUSAL_LM")
    print(padding_free.enable(model, config.train.padding_free, config.task, getattr(task, "packable", False)))
    model.train()
    # Both dropouts of every adapter, so a switch can swap them in and out.
    dropouts = [
        (d, name, m)
        for d in model.modules()
        if isinstance(getattr(d, "lora_dropout", None), torch.nn.ModuleDict)
        for name, m in d.lora_dropout.items()
        if isinstance(m, FastDropout)
    ]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.train.learning_rate)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(config.seed)).tolist()
    size = config.train.batch_size
    blocks, compiled = repeated_blocks(model), None
    if "compile" in names:
        for block in blocks:
            block.compile()
        compiled = [block._compiled_call_impl for block in blocks]

    # 2. Rounds: one step per switch on the same batch.
    enabled = padding_free.is_enabled(model)
    seen = {name: {"steps": [], "tokens": [], "peak": [], "warmup": []} for name in names}
    for round_ in range(args.warmup + args.rounds):
        picked = order[(round_ * size) % len(order) :][:size]
        batch = task.collate([train[i] for i in picked], tokenizer.pad_token_id)
        for name in names:
            switch = SWITCHES[name]
            configure_loss(model, switch.get("loss_chunk_tokens", config.train.loss_chunk_tokens))
            torch.set_num_threads(switch.get("threads", threads))
            for block, impl in zip(blocks, compiled or []):
                block._compiled_call_impl = impl if switch.get("compile") else None
            dtype = torch.float32 if switch.get("precision") == "fp32" else torch.bfloat16
            padding_free.set_enabled(model, padding_free.is_enabled(model) and switch.get("padding_free", True))
            for holder, adapter, fast in dropouts:
                holder.lora_dropout[adapter] = fast if switch.get("fast_dropout", True) else torch.nn.Dropout(fast.p)
            _reset_hwm()
            started = time.perf_counter()
            with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
                total, count = task.loss_sum(model, batch)
            (total / count).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            seconds = time.perf_counter() - started
            record = seen[name]
            if round_ < args.warmup:
                record["warmup"].append(round(seconds, 2))
            else:
                record["steps"].append(seconds)
                record["tokens"].append(int(count))
                record["peak"].append(_hwm())
            padding_free.set_enabled(model, enabled)
            print(
                f"round {round_} {name}: {seconds:.2f} s, {int(count)} trained tokens, shape {tuple(batch['input_ids'].shape)}",
                flush=True,
            )
    torch.set_num_threads(threads)

    # 3. Report.
    base = seen.get("default")
    base_rate = sum(base["tokens"]) / sum(base["steps"]) if base else None
    lines = [
        f"{note}; {args.rounds} measured rounds after {args.warmup} warm-up",
        "",
        "| switch | median step s | trained tok/s | vs default | peak RSS GiB (step) | warm-up steps s |",
        "|---|---|---|---|---|---|",
    ]
    rows = {}
    for name, record in seen.items():
        rate = sum(record["tokens"]) / sum(record["steps"])
        rows[name] = {
            "median_step_s": statistics.median(record["steps"]),
            "trained_tok_per_s": rate,
            "peak_rss_bytes": max(record["peak"]),
            "warmup_s": record["warmup"],
            "steps_s": record["steps"],
        }
        ratio = f"{rate / base_rate:.2f}x" if base_rate else "-"
        lines.append(
            f"| {name} | {rows[name]['median_step_s']:.2f} | {rate:.1f} | {ratio} | "
            f"{max(record['peak']) / 2**30:.2f} | {', '.join(f'{s:.1f}' for s in record['warmup'])} |"
        )
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "date": datetime.datetime.now().isoformat(timespec="seconds"),
                    "command": " ".join(["python -m bench.switches", *(argv or sys.argv[1:])]),
                    "threads": note,
                    "rows": rows,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
