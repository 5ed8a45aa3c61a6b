"""SFT speed: tunesmith against plain Hugging Face fine-tuning, on the same model, data and hyperparameters.

    python -m bench.sft                                   # 4 runners x 3 repeats x 5 steps, LoRA, SmolLM2-135M-Instruct
    python -m bench.sft --steps 30 --val-count 64         # the loss comparison (hours on a 2-core CPU)
    python -m bench.sft --method lora,qlora --repeats 3 --out /tmp/sft
    python -m bench.sft --variant packing:data.packing=true --variant compile:train.compile=true
    python -m bench.sft --model-shape smollm2-135m --device cuda   # GPU machine: random weights, published shape
    python -m bench.sft --steps 3 --repeats 1                      # does it work? (one run of each runner)

Runners, each in its own process (`python -m bench.sft --worker SPEC.json`, one `BENCH_RESULT {json}` line):
  tunesmith    `tunesmith.pipeline.train(config)`, the product path (eval.compare_base=false, no test split,
               one validation pass at the end); `--tunesmith-set` and `--variant` add `--set` overrides
  hf-default   (a) transformers.Trainer + peft LoRA, default precision, dynamic padding, labels on all tokens
  hf-tuned     (b) the same + bf16, length-grouped batches, completion-only labels
  trl          (c) trl.SFTTrainer, its recommended settings + assistant_only_loss (skipped if trl is missing)

Every runner gets the same model directory, the same training records (exactly steps x effective batch of
them, so one epoch is the run and every runner consumes the same examples), the same validation records,
LoRA settings, learning rate, schedule, warmup, weight decay, clipping, effective batch, sequence cap, step
count and seed, all taken from tunesmith's defaults (`RunConfig()`) and the options below. Runs alternate
(A B C D A B C D ...) so slow drift of a shared machine spreads over all runners, and the report gives
medians. Metrics, per run:
  trained tok/s   loss-bearing (assistant) tokens of the consumed examples, counted once by the harness
                  from the shared encoding, / train-phase seconds: the same numerator for every runner
  all tok/s       non-padding tokens / train-phase seconds
  train s         the training call (tunesmith's `fit`, `Trainer.train()`), less tunesmith's own
                  end-of-run validation pass
  wall s          the whole worker process, start to exit, as the driver sees it
  peak            VmHWM of the process at the end of training (load + train); on GPU also CUDA max allocated
  val loss        bench.baselines.common.validation_loss of the final model: completion-only token-mean
                  cross-entropy in fp32 on the validation records, the same function for every runner
  base weights    bytes of the loaded base model's parameters and buffers as stored (4-bit as packed)
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.baselines import common

GiB = 1024**3
ROOT = Path(__file__).resolve().parents[1]
WORK = Path(os.environ.get("TUNESMITH_BENCH_DIR", Path(tempfile.gettempdir()) / "tunesmith-bench"))
DATA = ROOT / "bench" / "data" / "chat.jsonl"

RUNNERS = {  # name -> module with run(spec) (None: tunesmith itself)
    "tunesmith": None,
    "hf-default": "bench.baselines.hf_default",
    "hf-tuned": "bench.baselines.hf_tuned",
    "trl": "bench.baselines.trl_sft",
}
BASELINES = ("hf-default", "hf-tuned", "trl")

# The published HuggingFaceTB/SmolLM2-135M(-Instruct) architecture, for machines without the packaged
# weights (the GPU machine): same shapes and vocabulary, random weights. Speed and memory do not depend
# on the weights' values; the validation loss then only says that training ran.
SMOLLM2_135M = dict(
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    head_dim=64,
    vocab_size=49152,
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    rope_theta=100000.0,
    tie_word_embeddings=True,
    hidden_act="silu",
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=2,
)
SHAPES = {"smollm2-135m": SMOLLM2_135M}

# --set keys whose change in tunesmith alone makes the comparison no longer like for like.
SHARED_KEYS = {
    "seed",
    "data.max_length",
    "data.train_on",
    "train.max_steps",
    "train.batch_size",
    "train.grad_accum",
    "train.learning_rate",
    "train.scheduler",
    "train.warmup_ratio",
    "train.weight_decay",
    "train.max_grad_norm",
    "train.epochs",
    "method.name",
    "method.r",
    "method.alpha",
    "method.dropout",
    "method.target_modules",
    "method.quant_type",
    "method.double_quant",
    "method.compute_dtype",
    "model.name",
}


# ---------------------------------------------------------------------------------------------------
# Worker side: one runner, one process


def tunesmith_worker(spec: common.Spec) -> dict:
    """`pipeline.train` as `tunesmith train` runs it; `loop.fit` and `loop.validation_loss` are wrapped
    (as bench/memory.py does) to time the training call and take the peak before the end-of-run pass."""
    from transformers import AutoTokenizer

    from tunesmith import pipeline
    from tunesmith.config import load_config
    from tunesmith.train import loop

    config = load_config(None, spec.tunesmith_overrides)
    seen: dict = {"own_eval_seconds": 0.0, "own_eval_cpu_seconds": 0.0, "own_eval_passes": 0}
    original_fit, original_validation = loop.fit, loop.validation_loss

    def timed_validation(*args, **kwargs):
        seen.setdefault("peak", common.peak_memory())  # training is over when the end-of-run pass starts
        started, cpu_started = time.perf_counter(), time.process_time()
        try:
            return original_validation(*args, **kwargs)
        finally:
            seen["own_eval_seconds"] += time.perf_counter() - started
            seen["own_eval_cpu_seconds"] += time.process_time() - cpu_started
            seen["own_eval_passes"] += 1

    def measured_fit(**kwargs):
        model = kwargs["model"]
        seen["base_weight_bytes"] = common.resident_weight_bytes(model)
        started, cpu_started = time.perf_counter(), time.process_time()
        result = original_fit(**kwargs)
        seen["train_seconds"] = time.perf_counter() - started - seen["own_eval_seconds"]
        seen["train_cpu_seconds"] = time.process_time() - cpu_started - seen["own_eval_cpu_seconds"]
        seen.setdefault("peak", common.peak_memory())
        seen["steps"] = result.state.step
        seen["train_loss_reported"] = result.last_train_loss
        seen["own_eval_loss"] = result.state.best_eval_loss
        started = time.perf_counter()
        seen["val_loss"] = common.score(model, AutoTokenizer.from_pretrained(spec.model_dir), spec)
        seen["score_seconds"] = time.perf_counter() - started
        return result

    loop.fit, loop.validation_loss = measured_fit, timed_validation
    try:
        summary = pipeline.train(config).summary
    finally:
        loop.fit, loop.validation_loss = original_fit, original_validation
    peak = seen.pop("peak")
    return dict(
        peak,
        **seen,
        device=common.device_name(),
        precision=summary.get("precision"),
        trained_tokens_reported=summary.get("trained_tokens"),
    )


def worker(spec_path: str) -> int:
    spec = common.Spec.read(spec_path)
    if spec.runner == "tunesmith":
        result = tunesmith_worker(spec)
    else:
        import importlib

        module = importlib.import_module(RUNNERS[spec.runner])
        missing = module.available() if hasattr(module, "available") else None
        if missing:
            print("BENCH_SKIP " + missing, flush=True)
            return 0
        result = module.run(spec)
    result["imported_tunesmith"] = any(name.split(".")[0] == "tunesmith" for name in sys.modules)
    common.emit(result)
    return 0


def make_model(directory: Path, shape: str, tokenizer_dir: str) -> None:
    """Save a randomly initialised model of a published shape with the given tokenizer (once)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(**SHAPES[shape])
    config.architectures = ["LlamaForCausalLM"]
    tmp = directory.with_name(directory.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    LlamaForCausalLM(config).to(torch.float32).save_pretrained(tmp, safe_serialization=True)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(tmp)
    tmp.rename(directory)


# ---------------------------------------------------------------------------------------------------
# Driver side: data, specs, the alternating schedule, the report


def _fail(message: str, fix: str, where: str | None = None):
    """A TunesmithError for bad input (main prints it without a traceback). Imported here, not at the top:
    a baseline's worker process must not import tunesmith at all."""
    from tunesmith.errors import TunesmithError

    return TunesmithError(message, where=where, fix=fix)


def resolve_model_dir(args) -> str:
    if args.model_shape:
        if args.model_shape not in SHAPES:
            raise _fail(f"unknown shape {args.model_shape!r}", f"use one of: {', '.join(SHAPES)}", "--model-shape")
        directory = WORK / "models" / f"{args.model_shape}-shape"
        if not (directory / "config.json").exists():
            tokenizer_dir = args.tokenizer or _starter_dir("smollm2-135m-instruct")
            directory.parent.mkdir(parents=True, exist_ok=True)
            print(f"building {args.model_shape} (random weights) in {directory}", flush=True)
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bench.sft",
                    "--make-model",
                    str(directory),
                    "--model-shape",
                    args.model_shape,
                    "--tokenizer",
                    tokenizer_dir,
                ],
                cwd=ROOT,
                check=True,
                env=_env(args),
            )
        return str(directory)
    from tunesmith.errors import TunesmithError
    from tunesmith.models.resolve import resolve_model

    try:
        resolved = resolve_model(args.model)
    except TunesmithError as exc:
        raise _fail(
            exc.message, "pass --model DIR (a Hugging Face model directory) or --model-shape smollm2-135m", "--model"
        ) from None
    if resolved.gguf_file:
        raise _fail(
            f"{args.model} is a GGUF file, which the baselines cannot load as it is",
            "use the packaged starter name (converted once to safetensors) or a Hugging Face directory",
            "--model",
        )
    return resolved.path


def _starter_dir(name: str) -> str:
    from tunesmith.models.resolve import resolve_model

    return resolve_model(name).path


def load_records() -> tuple[list[dict], str]:
    if not DATA.exists():
        from bench.data import make_chat

        make_chat.write(DATA)
        print(f"generated {DATA}", flush=True)
    raw = DATA.read_bytes()
    return [json.loads(line) for line in raw.decode("utf-8").splitlines() if line.strip()], hashlib.sha256(
        raw
    ).hexdigest()[:12]


def _write_messages(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join(json.dumps({"messages": r["messages"]}, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )


def check_and_count(model_dir: str, train: list[dict], val: list[dict], overrides: list[str]) -> dict:
    """Encode every record the shared way (common.encode) and tunesmith's way and require the same ids and
    loss mask, so 'the same data, the same template' is checked rather than assumed; then count tokens."""
    from tunesmith.config import load_config
    from tunesmith.data.prepare import load_examples
    from tunesmith.models.load import load_tokenizer
    from tunesmith.models.resolve import resolve_model
    from tunesmith.tasks import get_task

    config = load_config(None, overrides)
    task = get_task("chat")
    tokenizer = load_tokenizer(resolve_model(model_dir), config.model)
    stats = {}
    for name, rows, path in (("train", train, config.data.train), ("validation", val, config.data.validation)):
        examples, _ = load_examples(path, config.data, task.normalise, name)  # the files the tunesmith runner reads
        ours = task.encode(examples, tokenizer, config)
        for row, mine in zip(rows, ours):
            shared = common.encode(tokenizer, row["messages"], config.data.max_length)
            if shared["input_ids"] != mine.input_ids or shared["labels"] != mine.labels:
                raise _fail(
                    f"a {name} record encodes differently in tunesmith and in the baselines: {mine.where}",
                    "the model's chat template differs from bench.baselines.common.GENERATION_TEMPLATE; "
                    "add a {% generation %}-marked copy of this model's template there",
                    "--model",
                )
        full = sorted(e.full_length for e in ours)
        stats[name] = {
            "examples": len(ours),
            "tokens": sum(len(e.input_ids) for e in ours),
            "trained_tokens": sum(common.trained_tokens({"labels": e.labels}) for e in ours),
            "truncated": sum(e.truncated for e in ours),
            "length_percentiles": {
                f"p{q}": full[min(len(full) - 1, int(q / 100 * len(full)))] for q in (10, 50, 90, 99)
            }
            | {"max": full[-1]},
        }
    return stats


def _split_variant(text: str) -> tuple[str, list[str]]:
    name, sep, body = text.partition(":")
    if not sep or not name or not body or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise _fail(
            f"{text!r} is not NAME:key=value[,key=value...]", "e.g. --variant packing:data.packing=true", "--variant"
        )
    # Split on commas that start a new key=, so a value may itself hold commas ([a, b]).
    return name, [part.strip() for part in re.split(r",(?=\s*[A-Za-z_][\w.]*=)", body)]


def _warn_unfair(sets: list[str], where: str) -> None:
    for text in sets:
        key = text.split("=", 1)[0].strip()
        if key in SHARED_KEYS:
            print(
                f"warning: {where} sets {key}, which the baselines keep at the shared value: "
                "that runner is no longer compared like for like",
                flush=True,
            )


def _env(args) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    env.setdefault("PYTHONPATH", "")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env["PYTHONPATH"]) if p)
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def run_worker(spec: dict, spec_path: Path, args) -> dict:
    spec_path.write_text(json.dumps(spec, indent=1))
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "bench.sft", "--worker", str(spec_path)],
            cwd=ROOT,
            env=_env(args),
            capture_output=True,
            text=True,
            timeout=args.timeout,
        )
    except subprocess.TimeoutExpired:
        return {"status": "failed", "error": f"timed out after {args.timeout:.0f} s"}
    wall = time.perf_counter() - started
    Path(spec["scratch"], "output.log").write_text(proc.stdout + proc.stderr)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("BENCH_RESULT "):
            return dict(json.loads(line[len("BENCH_RESULT ") :]), status="ok", wall_seconds=wall)
        if line.startswith("BENCH_SKIP "):
            return {"status": "skipped", "error": line[len("BENCH_SKIP ") :]}
    why = (
        " (SIGKILL: most often the kernel's out-of-memory killer; this runner's peak and whatever else runs "
        "did not fit in RAM)"
        if proc.returncode == -9
        else ""
    )
    return {
        "status": "failed",
        "error": f"exit {proc.returncode}{why}; log: {spec['scratch']}/output.log",
        "log_tail": (proc.stdout + proc.stderr)[-3000:],
    }


def machine() -> dict:
    import torch

    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }
    try:
        info["cpu"] = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    from importlib.metadata import PackageNotFoundError, version

    for name in ("transformers", "peft", "accelerate", "bitsandbytes", "trl"):
        try:
            info[name] = version(name)
        except PackageNotFoundError:
            info[name] = None
    return info


def add_rates(result: dict, counted: dict) -> None:
    """Tokens per second of one run. The numerator is the harness's count over the training file, which
    every runner consumes exactly once; a runner that reports what it consumed (tunesmith) is held to
    that count, and where it differs (data.packing fills a step with more examples, so max_steps runs
    past one epoch) its own count is used and the run is marked, since it did not train on the same
    examples: its speed stays comparable, its validation loss does not."""
    consumed = result.get("trained_tokens_reported")
    result["same_examples"] = consumed is None or consumed == counted["trained_tokens"]
    result["trained_tokens"] = counted["trained_tokens"] if result["same_examples"] else consumed
    result["tokens"] = counted["tokens"] if result["same_examples"] else None  # unknown when more was consumed
    result["trained_tokens_per_s"] = result["trained_tokens"] / result["train_seconds"]
    result["tokens_per_s"] = None if result["tokens"] is None else result["tokens"] / result["train_seconds"]
    result["peak_bytes"] = result.get("cuda_max_allocated_bytes") or result.get("peak_rss_bytes")


def _median(rows: list[dict], key: str):
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def summarise(results: list[dict]) -> dict[str, dict]:
    """Medians per (runner, method) over the runs that finished."""
    groups: dict[str, list[dict]] = {}
    for r in results:
        if r["status"] == "ok":
            groups.setdefault(f"{r['runner']}/{r['method']}", []).append(r)
    keys = (
        "trained_tokens",
        "trained_tokens_per_s",
        "tokens_per_s",
        "train_seconds",
        "train_cpu_seconds",
        "wall_seconds",
        "peak_rss_bytes",
        "cuda_max_allocated_bytes",
        "peak_bytes",
        "val_loss",
        "base_weight_bytes",
        "steps",
    )
    return {
        name: {
            "runs": len(rows),
            "runner": rows[0]["runner"],
            "method": rows[0]["method"],
            "device": rows[0].get("device"),
            "precision": rows[0].get("precision"),
            "same_examples": all(r.get("same_examples", True) for r in rows),
            **{k: _median(rows, k) for k in keys},
        }
        for name, rows in groups.items()
    }


def _gib(value) -> str:
    return "-" if value is None else f"{value / GiB:.2f}"


def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def report(medians: dict[str, dict], meta: dict) -> str:
    lines = [
        f"# SFT speed: {meta['model']} on {meta['device']}",
        "",
        f"`{meta['command']}`",
        "",
        f"{meta['date']}; {meta['machine'].get('gpu') or meta['machine'].get('cpu')}; "
        f"{meta['steps']} steps x {meta['effective_batch']} examples, max_length {meta['max_length']}; "
        f"{meta['data']['train']['trained_tokens']} trained / {meta['data']['train']['tokens']} tokens per run; "
        f"medians of {meta['repeats']} repeat(s)",
        "",
        "| runner | method | precision | runs | trained tokens | trained tok/s | all tok/s | train s | train CPU s "
        "| wall s | peak RSS GiB | CUDA max GiB | base weights GiB | val loss |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in medians.values():
        consumed = _num(m["trained_tokens"], ".0f") + ("" if m["same_examples"] else " *")
        lines.append(
            f"| {m['runner']} | {m['method']} | {m['precision']} | {m['runs']} | {consumed} "
            f"| {_num(m['trained_tokens_per_s'], '.1f')} "
            f"| {_num(m['tokens_per_s'], '.1f')} | {_num(m['train_seconds'], '.1f')} | {_num(m['train_cpu_seconds'], '.1f')} "
            f"| {_num(m['wall_seconds'], '.1f')} "
            f"| {_gib(m['peak_rss_bytes'])} | {_gib(m['cuda_max_allocated_bytes'])} | {_gib(m['base_weight_bytes'])} "
            f"| {_num(m['val_loss'], '.4f')} |"
        )
    if not all(m["same_examples"] for m in medians.values()):
        lines += [
            "",
            "\\* trained on other examples than the baselines (e.g. data.packing puts more examples in a step, "
            "so max_steps goes past one epoch): tok/s uses its own count; its val loss is not comparable.",
        ]
    ratios = ratio_rows(medians)
    if ratios:
        lines += [
            "",
            "Ratios, tunesmith runner / baseline (speed: higher is better; time, memory: lower is better; "
            "peak memory is CUDA max allocated on GPU, RSS on CPU):",
            "",
            "| runner | method | vs | trained tok/s | wall time | peak memory | val loss |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in ratios:
            lines.append(
                f"| {r['runner']} | {r['method']} | {r['baseline']} | {_num(r['speed'], '.2f')}x | {_num(r['wall'], '.2f')}x "
                f"| {_num(r['memory'], '.2f')}x | {_num(r['loss_change'], '+.1%')} |"
            )
    lines += [""] + targets(medians)
    return "\n".join(lines).rstrip() + "\n"


def ratio_rows(medians: dict[str, dict]) -> list[dict]:
    rows = []
    for ours in medians.values():
        if not ours["runner"].startswith("tunesmith"):
            continue
        for base in medians.values():
            if base["runner"] not in BASELINES or base["method"] != ours["method"]:
                continue

            def ratio(a, b):
                return None if a is None or not b else a / b

            loss = ratio(ours["val_loss"], base["val_loss"])
            rows.append(
                {
                    "runner": ours["runner"],
                    "method": ours["method"],
                    "baseline": base["runner"],
                    "speed": ratio(ours["trained_tokens_per_s"], base["trained_tokens_per_s"]),
                    "wall": ratio(ours["wall_seconds"], base["wall_seconds"]),
                    "memory": ratio(ours["peak_bytes"], base["peak_bytes"]),
                    "loss_change": None if loss is None else loss - 1,
                }
            )
    return rows


def targets(medians: dict[str, dict]) -> list[str]:
    """The issue's targets, each with its measured value: met or missed, and by how much."""

    def get(runner, method):
        return medians.get(f"{runner}/{method}")

    out = []
    ours, a, b = get("tunesmith", "lora"), get("hf-default", "lora"), get("hf-tuned", "lora")

    def line(name, value, goal, ok):
        out.append(f"- {name}: {value} (target {goal}): {'met' if ok else 'MISSED'}")

    if ours and a and a["trained_tokens_per_s"]:
        speed = ours["trained_tokens_per_s"] / a["trained_tokens_per_s"]
        line("LoRA trained tok/s vs (a)", f"{speed:.2f}x", ">= 2.0x", speed >= 2.0)
    if ours and b and b["trained_tokens_per_s"]:
        speed = ours["trained_tokens_per_s"] / b["trained_tokens_per_s"]
        line("LoRA trained tok/s vs (b)", f"{speed:.2f}x", ">= 1.5x", speed >= 1.5)
        memory = ours["peak_bytes"] / b["peak_bytes"]
        line("LoRA peak memory vs (b)", f"{memory:.2f}x", "<= 0.7x", memory <= 0.7)
        change = ours["val_loss"] / b["val_loss"] - 1
        line("LoRA validation loss vs (b)", f"{change:+.1%}", "within 2%", abs(change) <= 0.02)
    q = get("tunesmith", "qlora")
    if ours and q:
        weights = q["base_weight_bytes"] / ours["base_weight_bytes"]
        line(
            "QLoRA base weights vs tunesmith LoRA",
            f"{weights:.2f}x ({_gib(q['base_weight_bytes'])} vs {_gib(ours['base_weight_bytes'])} GiB)",
            "<= 0.35x",
            weights <= 0.35,
        )
        peak = q["peak_bytes"] / ours["peak_bytes"]
        line(
            "QLoRA peak memory vs tunesmith LoRA",
            f"{peak:.2f}x ({_gib(q['peak_bytes'])} vs {_gib(ours['peak_bytes'])} GiB)",
            "< 1.0x",
            peak < 1.0,
        )
    return (["Targets (issue 6):", ""] + out) if out else []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.sft",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model",
        default="smollm2-135m-instruct",
        help="packaged starter name or a Hugging Face model directory (every runner loads the same one)",
    )
    parser.add_argument(
        "--model-shape",
        choices=sorted(SHAPES),
        help="instead of --model: a randomly initialised model of this published shape (GPU machines)",
    )
    parser.add_argument("--tokenizer", help="with --model-shape: tokenizer directory (default: the packaged SmolLM2's)")
    parser.add_argument("--method", default="lora", help="lora, qlora, or lora,qlora")
    parser.add_argument("--runners", default=",".join(RUNNERS), help=f"comma-separated among {', '.join(RUNNERS)}")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:key=value,...",
        help="an extra tunesmith runner 'tunesmith+NAME' with these --set overrides (repeatable)",
    )
    parser.add_argument(
        "--tunesmith-set",
        action="append",
        default=[],
        metavar="key=value",
        help="a tunesmith --set override for every tunesmith runner (repeatable)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs of each runner, alternating")
    parser.add_argument(
        "--steps",
        type=int,
        default=5,
        help="optimizer steps per run (= one epoch of the training records); 4 runners x 3 repeats x 5 steps take "
        "about an hour on a quiet 2-core CPU; the loss comparison wants 30+ (bench/README.md)",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="examples per micro-batch")
    parser.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    parser.add_argument("--max-length", type=int, default=512, help="sequence cap (truncation length) in tokens")
    parser.add_argument(
        "--val-count",
        type=int,
        default=32,
        help="validation records (the first of bench/data/chat.jsonl); each run scores them in fp32",
    )
    parser.add_argument("--seed", type=int, default=None, help="default: tunesmith's default seed")
    parser.add_argument(
        "--vary-seed",
        action="store_true",
        help="repeat r uses seed + r (every runner of it the same): the losses' spread then shows seed noise",
    )
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: cuda when available")
    parser.add_argument(
        "--out",
        type=Path,
        help="folder for the per-run JSON, table.md and summary.json (default: $TMPDIR/tunesmith-bench/sft/<time>)",
    )
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per run")
    parser.add_argument(
        "--keep", action="store_true", help="keep each run's scratch folder (run directory, adapter, log)"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--make-model", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        return worker(args.worker)
    if args.make_model:
        make_model(Path(args.make_model), args.model_shape, args.tokenizer)
        return 0
    from tunesmith.errors import TunesmithError

    try:
        return drive(args, argv if argv is not None else sys.argv[1:])
    except TunesmithError as exc:
        print(f"error: {exc.render()}", file=sys.stderr)
        return exc.exit_code


def drive(args, argv: list[str]) -> int:
    import torch

    from tunesmith.config import RunConfig

    # 1. What runs: runners (variants are extra tunesmith runners), methods, the device.
    runners = [r.strip() for r in args.runners.split(",") if r.strip()]
    unknown = [r for r in runners if r not in RUNNERS]
    if unknown:
        raise _fail(f"unknown runner(s) {', '.join(unknown)}", f"use some of: {', '.join(RUNNERS)}", "--runners")
    methods = [m.strip() for m in args.method.split(",") if m.strip()]
    if not methods or any(m not in ("lora", "qlora") for m in methods):
        raise _fail(f"unknown method(s) in {args.method!r}", "use lora, qlora or lora,qlora", "--method")
    variants = dict(_split_variant(v) for v in args.variant)
    _warn_unfair(args.tunesmith_set, "--tunesmith-set")
    for name, sets in variants.items():
        _warn_unfair(sets, f"--variant {name}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise _fail("torch sees no CUDA device", "use --device cpu or auto", "--device cuda")
    device = "cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu"

    # 2. Data: the first val_count records validate; the next steps x effective batch train (one epoch).
    defaults = RunConfig()
    seed = defaults.seed if args.seed is None else args.seed
    effective = args.batch_size * args.grad_accum
    records, digest = load_records()
    val, pool = records[: args.val_count], records[args.val_count :]
    if args.steps * effective > len(pool):
        raise _fail(
            f"{args.steps} steps x {effective} examples need {args.steps * effective} training records; "
            f"bench/data/chat.jsonl has {len(pool)} after {args.val_count} for validation",
            f"lower --steps to {len(pool) // effective} or less, or generate more records "
            "(python bench/data/make_chat.py --count N)",
            "--steps",
        )
    train = pool[: args.steps * effective]
    model_dir = resolve_model_dir(args)
    out = args.out or WORK / "sft" / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    _write_messages(out / "data" / "train.jsonl", train)
    _write_messages(out / "data" / "validation.jsonl", val)

    # 3. The shared hyperparameters: tunesmith's defaults and the options above, the same for every runner.
    tcfg, mcfg = defaults.train, defaults.method
    from tunesmith.methods import get_method

    qcfg = get_method("qlora").Config()  # the 4-bit settings the baselines' QLoRA runs copy
    warmup_steps = int(round(tcfg.warmup_ratio * args.steps))  # tunesmith's rule (train/schedule.py)
    shared = dict(
        model_dir=model_dir,
        train_file=str(out / "data" / "train.jsonl"),
        val_file=str(out / "data" / "validation.jsonl"),
        max_length=args.max_length,
        steps=args.steps,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        learning_rate=tcfg.learning_rate,
        scheduler=tcfg.scheduler,
        warmup_ratio=tcfg.warmup_ratio,
        warmup_steps=warmup_steps,
        weight_decay=tcfg.weight_decay,
        max_grad_norm=tcfg.max_grad_norm,
        seed=seed,
        lora=dict(r=mcfg.r, alpha=mcfg.alpha, dropout=mcfg.dropout, target_modules=mcfg.target_modules),
        qlora=dict(quant_type=qcfg.quant_type, double_quant=qcfg.double_quant, compute_dtype=qcfg.compute_dtype),
        val_batch_size=8,
    )

    def tunesmith_overrides(method: str, scratch: Path, extra: list[str], run_seed: int) -> list[str]:
        return [
            "task=chat",
            f"model.name={model_dir}",
            f"method.name={method}",
            f"seed={run_seed}",
            f"data.train={shared['train_file']}",
            f"data.validation={shared['val_file']}",
            "data.split=[1.0, 0.0, 0.0]",
            f"data.max_length={args.max_length}",
            "data.train_on=assistant",
            f"train.max_steps={args.steps}",
            f"train.batch_size={args.batch_size}",
            f"train.grad_accum={args.grad_accum}",
            "train.eval_every=0",
            f"train.log_every={max(1, args.steps // 4)}",
            "train.load_best_at_end=false",
            "eval.compare_base=false",
            f"output.dir={scratch / 'runs'}",
            "name=bench-sft",
            *args.tunesmith_set,
            *extra,
        ]

    print(f"model: {model_dir}; device: {device}; data: {DATA.name} ({digest})", flush=True)
    counts = check_and_count(model_dir, train, val, tunesmith_overrides(methods[0], out, [], seed))
    for name, s in counts.items():
        p = s["length_percentiles"]
        print(
            f"{name}: {s['examples']} conversations, {s['tokens']} tokens ({s['trained_tokens']} trained) after the "
            f"{args.max_length}-token cap, {s['truncated']} cut; length p10 {p['p10']}, p50 {p['p50']}, p90 {p['p90']}, "
            f"p99 {p['p99']}, max {p['max']}",
            flush=True,
        )

    # 4. The schedule: every (runner, method) once per repeat, in the same order each time.
    slots = [(r, m, []) for m in methods for r in runners]
    slots += [(f"tunesmith+{name}", m, sets) for m in methods for name, sets in variants.items()]
    meta = dict(
        date=datetime.datetime.now().isoformat(timespec="seconds"),
        command="python -m bench.sft " + " ".join(argv),
        machine=machine(),
        model=model_dir,
        device=device,
        data={"file": str(DATA), "sha256": digest, **counts},
        steps=args.steps,
        effective_batch=effective,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        max_length=args.max_length,
        repeats=args.repeats,
        shared=shared,
        variants=variants,
        tunesmith_set=args.tunesmith_set,
    )
    results: list[dict] = []
    skipped: set[str] = set()
    started = time.perf_counter()
    for repeat in range(args.repeats):
        for runner, method, extra in slots:
            if runner in skipped:
                continue
            label = f"{runner}-{method}-r{repeat}"
            scratch = out / "scratch" / label
            scratch.mkdir(parents=True, exist_ok=True)
            run_seed = seed + repeat if args.vary_seed else seed
            spec = dict(
                shared,
                runner=runner.split("+")[0],
                method=method,
                scratch=str(scratch),
                seed=run_seed,
                tunesmith_overrides=tunesmith_overrides(method, scratch, extra, run_seed),
            )
            result = run_worker(spec, scratch / "spec.json", args)
            result.update(runner=runner, method=method, repeat=repeat, seed=run_seed, overrides=extra)
            if result["status"] == "ok":
                add_rates(result, counts["train"])
                print(
                    f"[{time.perf_counter() - started:6.0f} s] {label}: {result['trained_tokens_per_s']:.1f} trained tok/s, "
                    f"train {result['train_seconds']:.1f} s, wall {result['wall_seconds']:.1f} s, "
                    f"peak {_gib(result['peak_bytes'])} GiB, val loss {result['val_loss']:.4f}",
                    flush=True,
                )
            else:
                print(
                    f"[{time.perf_counter() - started:6.0f} s] {label}: {result['status']}: {result['error']}",
                    flush=True,
                )
                if result["status"] == "skipped":
                    skipped.add(runner)
            (out / f"{label}.json").write_text(json.dumps(dict(result, meta={"command": meta["command"]}), indent=1))
            results.append(result)
            if not args.keep and result["status"] == "ok":
                shutil.rmtree(scratch, ignore_errors=True)

    # 5. The report.
    medians = summarise(results)
    table = report(medians, meta)
    print("\n" + table, flush=True)
    (out / "table.md").write_text(table)
    (out / "summary.json").write_text(
        json.dumps({"meta": meta, "medians": medians, "ratios": ratio_rows(medians), "runs": results}, indent=1)
    )
    print(f"wrote {out / 'table.md'}, {out / 'summary.json'} and one JSON per run in {out}", flush=True)
    return 1 if any(r["status"] == "failed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
