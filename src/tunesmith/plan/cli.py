"""`tunesmith estimate` and `tunesmith recommend`: argument parsers and handlers.

The main CLI registers them with `add_commands(subparsers)`. Handlers parse, call one library function
and print rich tables; bad input raises TunesmithError (exit code 2 in the main CLI).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.errors import TunesmithError
from tunesmith.methods import DEFAULT_METHOD, METHODS, by_quality, get_method, methods_for
from tunesmith.plan.estimate import (
    ATTENTION,
    DTYPES,
    OPTIMIZERS,
    PRECISIONS,
    Estimate,
    estimate,
    human_bytes,
    human_count,
    human_duration,
    run_settings,
)
from tunesmith.taskcards import TASKS

if TYPE_CHECKING:
    from rich.console import Console, JustifyMethod

    from tunesmith.plan.recommend import Recommendation

# The estimator's model families and the model kinds tasks train on them (taskcards.py, methods/base.py).
_FAMILY_KINDS = {
    "decoder": "causal-lm",
    "encoder": "classifier",
    "seq2seq": "seq2seq",
    "vision": "vision",
    "cnn": "vision",
}


def methods_for_family(family: str) -> list[str]:
    """Registered methods for a model family, best quality first."""
    return by_quality(methods_for(_FAMILY_KINDS.get(family, "causal-lm")))


# ---------------------------------------------------------------------------------------------------
# Value parsers


def parse_duration(text: str) -> float:
    """'30m', '2h', '1.5h', '1h30m', '90s' or a bare number of hours -> hours."""
    cleaned = text.strip().lower().replace(" ", "")
    if re.fullmatch(r"\d+(\.\d+)?", cleaned):
        return float(cleaned)
    parts = re.findall(r"(\d+(?:\.\d+)?)(d|h|m|min|s)", cleaned)
    if not parts or "".join(n + u for n, u in parts) != cleaned:
        raise TunesmithError(
            f"cannot read the duration {text!r}", where="--budget", fix="write e.g. 30m, 2h, 1.5h or 1h30m"
        )
    per_hour = {"d": 24, "h": 1, "m": 1 / 60, "min": 1 / 60, "s": 1 / 3600}
    return sum(float(n) * per_hour[u] for n, u in parts)


def parse_cost(text: str) -> float:
    """'20usd', '$20', '20 USD', '12.5' -> US dollars."""
    match = re.fullmatch(r"\$?\s*(\d+(?:\.\d+)?)\s*(usd|\$)?", text.strip().lower())
    if not match:
        raise TunesmithError(
            f"cannot read the cost {text!r}", where="--max-cost", fix="write e.g. 20usd or $20 (US dollars)"
        )
    return float(match.group(1))


def parse_count(text: str) -> int:
    """'5M', '200k', '1.5B', '12345' -> an integer."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmb]?)", text.strip().lower())
    if not match:
        raise TunesmithError(f"cannot read the count {text!r}", where="--tokens", fix="write e.g. 200k, 5M or 1.5B")
    return int(float(match.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "b": 1e9}[match.group(2)])


def _console() -> Console:
    from rich.console import Console

    console = Console()
    # Rich assumes 80 columns when output is piped or captured; model names and reasons need more.
    return console if console.is_terminal else Console(width=140)


# ---------------------------------------------------------------------------------------------------
# estimate


def _from_run_config(path: str) -> dict[str, Any]:
    """Settings of a run YAML as estimate() arguments (plan/estimate.py run_settings, the mapping the
    pre-flight check uses), so `tunesmith estimate run.yaml` sizes that run."""
    from tunesmith.config import load_config

    cfg = load_config(path)
    settings = {"model": cfg.model.name, **run_settings(cfg)}
    if cfg.data.train and Path(cfg.data.train).exists():
        settings["data"] = cfg.data.train
    return settings


def cmd_estimate(args: argparse.Namespace) -> Estimate:
    settings: dict[str, Any] = {
        "method": DEFAULT_METHOD,
        "seq_len": 1024,
        "batch": 8,
        "grad_checkpointing": False,
        "attention": "sdpa",
        "precision": "auto",
        "dtype": "auto",
    }
    model = args.model
    if str(model).endswith((".yaml", ".yml")):
        settings.update(_from_run_config(model))
        model = settings.pop("model")
    data = settings.pop("data", None)
    for key in (
        "method",
        "seq_len",
        "batch",
        "grad_checkpointing",
        "lora_r",
        "lora_targets",
        "attention",
        "precision",
        "optimizer",
    ):
        value = getattr(args, key)
        if value is not None:
            settings[key] = value
    if args.dtype != "auto":
        settings["dtype"] = args.dtype
    epoch_tokens = parse_count(args.tokens) if args.tokens else None
    if epoch_tokens is None and data:
        from tunesmith.plan.recommend import data_stats

        epoch_tokens = data_stats(data).epoch_tokens(settings["seq_len"])
    result = estimate(
        model,
        hardware=args.hardware,
        gpus=args.gpus,
        zero=args.zero,
        fsdp=args.fsdp,
        target_len=args.target_len,
        epoch_tokens=epoch_tokens,
        epoch_examples=parse_count(args.examples) if args.examples else None,
        price_per_hour=parse_cost(args.price) if args.price else None,
        **settings,
    )
    print_estimate(result)
    return result


def _fixes(est: Estimate) -> list[str]:
    """What would make a setup that does not fit fit (style rule 5: errors say what to do)."""
    fixes = []
    if est.max_batch >= 1:
        fixes.append(f"--batch {est.max_batch}")
    if not est.grad_checkpointing and est.breakdown.get("activations", 0) > 0.2 * est.total_bytes:
        fixes.append("--grad-checkpointing")
    quality = get_method(est.method).recommend.quality
    cheaper = [name for name in methods_for_family(est.family) if get_method(name).recommend.quality < quality]
    if cheaper:
        fixes.append(f"--method {cheaper[0]}")
    if est.optimizer == "adamw" and est.breakdown.get("optimizer", 0) > 0.2 * est.total_bytes:
        fixes.append("--optimizer adamw8bit")
    if est.gpus == 1:
        fixes.append("--gpus 8 --zero 3 (on 8 GPUs)")
    return fixes


def print_estimate(est: Estimate) -> None:
    from rich.table import Table

    console = _console()
    setup = (
        f"{est.model} ({est.model_type}, {human_count(est.parameters)} params) | {est.method}, "
        f"{human_count(est.trainable_parameters)} trainable | {est.precision} compute, {est.weight_dtype} weights | "
        f"seq {est.seq_len}{f' -> {est.target_len}' if est.target_len else ''}, batch {est.batch}"
        f"{', checkpointing' if est.grad_checkpointing else ''} | {est.attention}, {est.optimizer} | "
        f"{est.gpus} x {est.hardware.name}{f', ZeRO-{est.zero_stage}' if est.zero_stage else ''}"
    )
    table = Table(title="Memory per device", title_justify="left")
    table.add_column("component")
    table.add_column("GiB", justify="right")
    table.add_column("share", justify="right")
    for key, value in est.breakdown.items():
        if abs(value) >= 2**20:  # the "at the peak" row can be negative: parts that never coexist
            table.add_row(key, f"{value / 2**30:.2f}", f"{value / est.total_bytes:.0%}")
    table.add_section()
    table.add_row("total", f"{est.total_bytes / 2**30:.2f}", "")
    table.add_row(f"device ({est.hardware.name})", f"{est.device_bytes / 2**30:.2f}", "")
    console.print(setup, soft_wrap=True)
    console.print(table)

    summary = Table(show_header=False, title="Fit and speed", title_justify="left")
    summary.add_column()
    summary.add_column()
    summary.add_row("fits", "[green]yes[/]" if est.fits else "[red]no[/]")
    summary.add_row("largest batch that fits", str(est.max_batch))
    if est.tokens_per_second:
        summary.add_row("tokens/s (all devices)", f"{est.tokens_per_second:,.0f}")
    summary.add_row("examples/s", f"{est.examples_per_second:,.2f}")
    if est.seconds_per_epoch is not None:
        summary.add_row("time per epoch", human_duration(est.seconds_per_epoch))
    else:
        summary.add_row(
            "time per 1M tokens" if est.tokens_per_second else "time per 10k examples",
            human_duration(est.seconds_for_tokens(1e6 if est.tokens_per_second else 1e4)),
        )
    if est.cost_per_epoch_usd is not None:
        summary.add_row("cost per epoch", f"${est.cost_per_epoch_usd:,.2f}")
    console.print(summary)
    for note in est.notes:
        console.print(f"note: {note}", soft_wrap=True)
    if not est.fits:
        console.print(
            f"[red]does not fit[/]: {human_bytes(est.total_bytes)} > {human_bytes(est.device_bytes)}; "
            f"try {', or '.join(_fixes(est))}",
            soft_wrap=True,
        )


# ---------------------------------------------------------------------------------------------------
# recommend


def cmd_recommend(args: argparse.Namespace) -> list[Recommendation]:
    from tunesmith.plan.recommend import recommend, write_config

    recs = recommend(
        args.task,
        language=args.language,
        domain=args.domain,
        hardware=args.hardware,
        data_path=args.data,
        budget_hours=parse_duration(args.budget) if args.budget else None,
        max_cost_usd=parse_cost(args.max_cost) if args.max_cost else None,
        top=args.top,
        tokens=parse_count(args.tokens) if args.tokens else None,
        price_per_hour=parse_cost(args.price) if args.price else None,
        method=args.method,
    )
    if args.write and Path(args.write).exists():
        raise TunesmithError(f"{args.write} exists", where="--write", fix="choose another file name or delete it first")
    print_recommendations(recs)
    if args.write:
        path = write_config(recs[0], args.write)
        _console().print(
            f"wrote {path} for {recs[0].entry.id}: check it with `tunesmith validate {path}`", soft_wrap=True
        )
    return recs


def print_recommendations(recs: list[Recommendation]) -> None:
    from rich.table import Table

    console = _console()
    first = recs[0]
    basis = first.time_basis
    table = Table(title=f"{first.task} on {first.hardware.name}", title_justify="left")
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("#", "right"),
        ("model", "left"),
        ("params", "right"),
        ("method", "left"),
        ("batch x accum", "right"),
        ("seq", "right"),
        ("memory", "right"),
        (f"time / {basis}", "right"),
        ("cost", "right"),
        ("score", "right"),
    )
    for column, justify in columns:
        table.add_column(column, justify=justify, overflow="fold")
    for i, rec in enumerate(recs, 1):
        table.add_row(
            str(i),
            rec.entry.name,
            human_count(rec.entry.parameters),
            rec.method + (f" r{rec.lora_r}" if rec.lora_r else "") + (" +ckpt" if rec.grad_checkpointing else ""),
            f"{rec.batch} x {rec.grad_accum}",
            "-" if TASKS[rec.task].images else str(rec.seq_len),
            human_bytes(rec.memory_bytes),
            human_duration(rec.hours_per_epoch * 3600) if rec.hours_per_epoch is not None else "-",
            f"${rec.cost_usd:,.2f}" if rec.cost_usd is not None else "-",
            f"{rec.score:.1f}",
        )
    console.print(table)
    for i, rec in enumerate(recs, 1):
        console.print(f"\n[bold]{i}. {rec.entry.id}[/]", soft_wrap=True)
        for reason in rec.reasons:
            console.print(f"  - {reason}", soft_wrap=True, markup=False)
    if first.excluded:
        console.print("\nleft out:", soft_wrap=True)
        for why in first.excluded:
            console.print(f"  - {why}", soft_wrap=True, markup=False)
    if basis != "epoch":
        console.print(
            f"\ntimes are per {basis}: give --data (or --tokens) for per-epoch time, cost and budget checks",
            soft_wrap=True,
        )


# ---------------------------------------------------------------------------------------------------
# Registration


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `estimate` and `recommend` to the main CLI's subparsers."""
    p = subparsers.add_parser(
        "estimate",
        help="memory, fit, largest batch, tokens/s and epoch time of a fine-tuning setup",
        description="Estimate a fine-tuning run from the model's config alone (no weights are loaded).",
    )
    p.add_argument(
        "model", help="catalog name or hub id, model folder, config.json, or a run YAML (its settings are the defaults)"
    )
    p.add_argument("--method", choices=list(METHODS), help=f"{', '.join(METHODS)} (default {DEFAULT_METHOD})")
    p.add_argument("--seq-len", type=int, help="tokens per example (default 1024; seq2seq: source length)")
    p.add_argument("--target-len", type=int, help="seq2seq target tokens (default seq-len/4)")
    p.add_argument("--batch", type=int, help="examples per device per step (default 8)")
    p.add_argument("--grad-checkpointing", action="store_true", default=None, help="recompute activations in backward")
    p.add_argument(
        "--hardware",
        default="auto",
        help="A100-40GB, H100-80GB, L4, T4, RTX4090, M3-Max, cpu, ... (auto: this machine)",
    )
    p.add_argument("--gpus", type=int, default=1, help="data-parallel devices")
    shard = p.add_mutually_exclusive_group()
    shard.add_argument("--zero", type=int, choices=[0, 1, 2, 3], help="DeepSpeed ZeRO stage")
    shard.add_argument("--fsdp", action="store_true", help="FSDP full sharding (like ZeRO-3)")
    p.add_argument("--lora-r", type=int, help="LoRA rank (default 8)")
    p.add_argument("--lora-targets", help="all-linear (default) or names, e.g. q_proj,v_proj")
    p.add_argument(
        "--optimizer", choices=OPTIMIZERS, help="adamw (default), or bitsandbytes' 8-bit states (train.optimizer)"
    )
    p.add_argument("--attention", choices=ATTENTION, help="sdpa (default), flash, or eager (keeps the S x S scores)")
    p.add_argument("--dtype", choices=DTYPES, default="auto", help="weight storage dtype (auto: as tunesmith loads it)")
    p.add_argument("--precision", choices=PRECISIONS, help="compute precision (auto: bf16 where supported)")
    p.add_argument("--tokens", help="training tokens per epoch, e.g. 20M, for time and cost")
    p.add_argument("--examples", help="examples per epoch (image models), e.g. 50k")
    p.add_argument("--price", help="USD per device-hour, overriding the profile's typical price")
    p.set_defaults(func=cmd_estimate)

    p = subparsers.add_parser(
        "recommend",
        help="rank catalog models for a task and hardware, with method, settings and reasons",
        description="Choose a base model and method before spending compute.",
    )
    p.add_argument("--task", required=True, choices=list(TASKS), help="the task to train (taskcards.py)")
    p.add_argument("--method", choices=list(METHODS), help="consider only this method (default: the best that fits)")
    p.add_argument("--language", default="en", help="ISO 639-1 code of your data's language (default en)")
    p.add_argument("--domain", help="e.g. legal, finance, biomedical, news")
    p.add_argument("--hardware", default="auto", help="hardware profile (auto: this machine)")
    p.add_argument("--data", help="your training file: sizes the sequence length and the epoch")
    p.add_argument("--tokens", help="training tokens (images for image tasks) per epoch, when there is no --data")
    p.add_argument("--budget", help="time limit per epoch, e.g. 30m, 2h, 1.5h")
    p.add_argument("--max-cost", help="cost limit per epoch, e.g. 20usd or $20")
    p.add_argument("--price", help="USD per device-hour, overriding the profile's typical price")
    p.add_argument("--top", type=int, default=5, help="how many models to show")
    p.add_argument("--write", metavar="RUN_YAML", help="write the first recommendation as a run config")
    p.set_defaults(func=cmd_recommend)


def build_parser() -> argparse.ArgumentParser:
    """A parser with only these two commands (tests; `python -m tunesmith.plan.cli`)."""
    parser = argparse.ArgumentParser(prog="tunesmith")
    add_commands(parser.add_subparsers(dest="command", required=True))
    return parser


if __name__ == "__main__":
    import sys

    parsed = build_parser().parse_args()
    try:
        parsed.func(parsed)
    except TunesmithError as exc:
        print(f"error: {exc.render()}", file=sys.stderr)
        sys.exit(exc.exit_code)
