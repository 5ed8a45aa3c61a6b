"""Peak memory of real tunesmith training runs on this CPU against `tunesmith.plan.estimate`'s prediction.

    python -m bench.memory [--quick] [--json out.json] [--models smollm2-135m,minilm] [--methods lora,full]

Each configuration runs in its own subprocess (`python -m bench.memory --worker ...`) that calls
`tunesmith.pipeline.train` exactly as `tunesmith train` does, for two optimizer steps (the optimizer
states exist from the first step on, so the second step holds everything at once), on a synthetic
data set whose every record is cut by `data.max_length` to exactly the sequence length asked for
(`data.format: text`, `data.train_on: all`, so the loss, and the logits, are taken at every position).
On a CPU the worker reports the resident-set high-water mark (`VmHWM` of /proc/self/status):

  - load peak:  from start-up to the first training step (imports, tokenizer, data, model load, method)
  - train peak: during `fit` alone (the high-water mark is reset with /proc/self/clear_refs before it)
  - measured:   the larger of the two, i.e. the process peak up to the end of training; saving the
                weights and writing the report afterwards are not training and are reported apart
                (`after` column of the JSON), not folded in.

Nothing is subtracted: the Python + torch + transformers + peft process is part of what is measured and
of what the estimator predicts (its CPU `framework` term); `--baseline` measures that process alone.

On a CUDA GPU (`--device cuda`) the measured number is `torch.cuda.max_memory_allocated` during `fit` (the
tensors), compared with the estimate less its `framework` term (CUDA context, workspaces, allocator slack);
the peak reserved by the caching allocator is reported beside it. `--shapes DIR` trains every model from its config with random weights (memory does not depend on
the values): the GPU machine has no packaged weights; `--export-shapes DIR` writes those configs and
tokenizers here.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GiB = 1024**3
ROOT = Path(__file__).resolve().parents[1]
WORK = Path(os.environ.get("TUNESMITH_BENCH_DIR", Path(tempfile.gettempdir()) / "tunesmith-bench"))

# A SmolLM2-360M-shaped Llama (the published HuggingFaceTB/SmolLM2-360M config), randomly initialised:
# memory does not depend on the weights' values, and nothing has to be downloaded.
SMOLLM2_360M = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 960,
    "intermediate_size": 2560,
    "num_hidden_layers": 32,
    "num_attention_heads": 15,
    "num_key_value_heads": 5,
    "vocab_size": 49152,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 100000,
    "tie_word_embeddings": True,
    "hidden_act": "silu",
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 2,
    "torch_dtype": "float32",
}

# model key -> (tunesmith model.name or a builder, task, (batch, length) points, quick points)
MODELS = {
    "smollm2-135m": dict(
        name="smollm2-135m-instruct", task="chat", points=[(1, 128), (2, 256), (4, 512)], quick=[(1, 128), (4, 512)]
    ),
    "minilm-l6": dict(
        name="all-minilm-l6-v2",
        task="text-classification",
        points=[(8, 128), (16, 256), (32, 512)],
        quick=[(8, 128), (32, 512)],
    ),
    "smollm2-360m-shape": dict(name=None, task="chat", points=[(1, 64), (1, 256), (2, 512)], quick=[(1, 64)]),
}
METHODS = ("full", "lora", "qlora", "freeze")
LORA_R = 8  # tunesmith's default method.r
FREEZE_TOP = 2  # tunesmith's default method.freeze_train_top


# ---------------------------------------------------------------------------------------------------
# Worker side: one configuration, one process


def _status() -> dict[str, int]:
    """VmHWM, VmRSS, RssAnon, RssFile of this process in bytes."""
    out = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) * 1024
    return out


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def _write_data(directory: Path, task: str, records: int, length: int) -> Path:
    """Records far longer than `length` tokens; data.max_length cuts each to exactly `length`."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "train.jsonl"
    words = " ".join(f"word{i % 97} and" for i in range(length * 2))
    with open(path, "w") as handle:
        for i in range(records):
            row = {"text": f"record {i} {words}"}
            if task == "text-classification":
                row["label"] = "even" if i % 2 == 0 else "odd"
            handle.write(json.dumps(row) + "\n")
    return path


def worker(args) -> dict:
    report: dict = {"start": _status()}
    import torch  # noqa: F401  (the imports tunesmith's train does, measured as part of the run)

    from tunesmith import pipeline
    from tunesmith.config import load_config
    from tunesmith.train import loop

    report["imports"] = _status()
    run_root = Path(tempfile.mkdtemp(prefix="bench-run-", dir=WORK))
    data = _write_data(run_root / "data", args.task, 2 * args.batch, args.length)
    overrides = [
        f"task={args.task}",
        f"model.name={args.model}",
        f"method.name={args.method}",
        f"method.r={LORA_R}",
        f"method.freeze_train_top={FREEZE_TOP}",
        f"data.train={data}",
        "data.split=[1.0, 0.0, 0.0]",
        f"data.max_length={args.length}",
        "train.max_steps=2",
        f"train.batch_size={args.batch}",
        "train.eval_every=0",
        "train.log_every=1",
        "eval.compare_base=false",
        f"output.dir={run_root / 'runs'}",
        "name=bench",
        # The grid measures the estimator without recomputation (auto turns it on for qlora).
        "train.gradient_checkpointing=false",
    ]
    if args.task == "chat":
        overrides += ["data.format=text", "data.train_on=all"]
    config = load_config(None, overrides)

    original_fit = loop.fit
    seen: dict = {}

    cuda = torch.cuda.is_available()

    def measured_fit(**kwargs):
        seen["load"] = _status()  # high-water mark of imports + data + model load + method
        seen["reset"] = _reset_peak()
        if cuda:
            torch.cuda.synchronize()
            seen["cuda_load_allocated"] = torch.cuda.max_memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        batch = kwargs["task"].collate(kwargs["train_set"][: args.batch], 0)
        seen["input_shape"] = list(batch["input_ids"].shape)
        started = time.perf_counter()
        result = original_fit(**kwargs)
        seen["train_seconds"] = time.perf_counter() - started
        seen["train"] = _status()
        if cuda:
            torch.cuda.synchronize()
            seen["cuda_max_allocated"] = torch.cuda.max_memory_allocated()
            seen["cuda_max_reserved"] = torch.cuda.max_memory_reserved()
        _reset_peak()
        return result

    loop.fit = measured_fit
    try:
        pipeline.train(config)
    finally:
        loop.fit = original_fit
        shutil.rmtree(run_root, ignore_errors=True)
    report.update(seen)
    report["loss_chunk_tokens"] = getattr(config.train, "loss_chunk_tokens", 0)
    report["after"] = _status()
    load_peak, train_peak = report["load"]["VmHWM"], report["train"]["VmHWM"]
    report["measured_bytes"] = max(load_peak, train_peak) if seen["reset"] else train_peak
    if cuda:
        report["device"] = torch.cuda.get_device_name()
        report["measured_bytes"] = seen["cuda_max_allocated"]
    return report


def baseline_worker() -> dict:
    """The process tunesmith trains in, with no model: imports and an Accelerator."""
    report = {"start": _status()}
    import accelerate  # noqa: F401
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401

    report["imports"] = _status()
    from tunesmith import pipeline

    pipeline._accelerator("auto")
    with torch.autocast("cpu", dtype=torch.bfloat16):  # first use of the kernels (oneDNN, autocast) costs a little
        a = torch.randn(64, 64, requires_grad=True)
        (a @ a).sum().backward()
    report["after"] = _status()
    report["measured_bytes"] = report["after"]["VmHWM"]
    return report


def make_model(directory: Path) -> None:
    """Save the SmolLM2-360M-shaped Llama, randomly initialised, with the SmolLM2 tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tunesmith.models.resolve import resolve_model

    torch.manual_seed(0)
    config = LlamaConfig(**{k: v for k, v in SMOLLM2_360M.items() if k not in ("architectures", "model_type")})
    config.architectures = SMOLLM2_360M["architectures"]
    model = LlamaForCausalLM(config)
    tmp = directory.with_name(directory.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    resolved = resolve_model("smollm2-135m-instruct", None)
    AutoTokenizer.from_pretrained(resolved.path).save_pretrained(tmp)
    tmp.rename(directory)


def export_shapes(directory: Path) -> None:
    """Config + tokenizer (no weights) of every benchmark model, for `--shapes` where weights are missing."""
    from transformers import AutoTokenizer

    from tunesmith.models.resolve import resolve_model

    for key, spec in MODELS.items():
        target = directory / key
        target.mkdir(parents=True, exist_ok=True)
        source = resolve_model(spec["name"] or "smollm2-135m-instruct", None).path
        config = json.loads((Path(source) / "config.json").read_text()) if spec["name"] else dict(SMOLLM2_360M)
        (target / "config.json").write_text(json.dumps(config, indent=1))
        AutoTokenizer.from_pretrained(source).save_pretrained(target)


def build_random(shape_dir: Path, directory: Path) -> None:
    """A model with `shape_dir`'s config and tokenizer and random weights, saved as safetensors."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(shape_dir)
    causal = any(a.endswith("ForCausalLM") for a in (config.architectures or []))
    model = (AutoModelForCausalLM if causal else AutoModel).from_config(config)
    tmp = directory.with_name(directory.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    AutoTokenizer.from_pretrained(shape_dir).save_pretrained(tmp)
    tmp.rename(directory)


# ---------------------------------------------------------------------------------------------------
# Driver side


def _run_worker(argv: list[str], timeout: float) -> dict:
    cmd = [sys.executable, "-m", "bench.memory", *argv]
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - started
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("BENCH_RESULT "):
            result = json.loads(line[len("BENCH_RESULT ") :])
            result["wall_seconds"] = wall
            return result
    tail = (proc.stdout + proc.stderr)[-3000:]
    raise RuntimeError(f"worker {' '.join(argv)} failed (exit {proc.returncode}):\n{tail}")


def _model_ref(key: str, shapes: str | None = None) -> str:
    spec = MODELS[key]
    if shapes:
        directory = WORK / "models" / f"{key}-random"
        if not (directory / "config.json").exists():
            directory.parent.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "-m", "bench.memory", "--build-random", str(Path(shapes) / key), str(directory)]
            subprocess.run(cmd, cwd=ROOT, check=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
        return str(directory)
    if spec["name"]:
        return spec["name"]
    directory = WORK / "models" / key
    if not (directory / "config.json").exists():
        directory.parent.mkdir(parents=True, exist_ok=True)
        print(f"building {key} in {directory} (random weights, once)", file=sys.stderr)
        cmd = [sys.executable, "-m", "bench.memory", "--make-model", str(directory)]
        subprocess.run(cmd, cwd=ROOT, check=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    return str(directory)


def predict(
    model_ref: str, task: str, method: str, batch: int, length: int, hardware: str = "cpu", loss_chunk_tokens: int = 0
):
    from tunesmith.plan.catalog import model_config
    from tunesmith.plan.estimate import estimate

    _, config, _ = model_config(model_ref)
    config = dict(config)
    if task == "text-classification":  # the head tunesmith builds: two labels, as in the synthetic data
        config.update(num_labels=2, architectures=["BertForSequenceClassification"])
    return estimate(
        config,
        method=method,
        seq_len=length,
        batch=batch,
        hardware=hardware,
        precision="bf16",
        lora_r=LORA_R,
        freeze_train_top=FREEZE_TOP,
        loss_chunk_tokens=loss_chunk_tokens,
    )


def _row(key, spec, ref, method, batch, length, result, hardware: str = "cpu") -> dict:
    """Predicted vs measured; on a GPU the tensors (max allocated) against the estimate less `framework`."""
    # runs saved before the chunked loss existed computed whole logits tensors: 0
    est = predict(ref, spec["task"], method, batch, length, hardware, result.get("loss_chunk_tokens", 0))
    measured = result["measured_bytes"]
    predicted = est.total_bytes - (est.breakdown["framework"] if "cuda_max_allocated" in result else 0)
    ratio = predicted / measured
    return dict(
        model=key,
        model_ref=ref,
        task=spec["task"],
        method=method,
        batch=batch,
        length=length,
        predicted_bytes=predicted,
        measured_bytes=measured,
        ratio=ratio,
        within_15=abs(ratio - 1) <= 0.15,
        hardware=hardware,
        predicted_total_bytes=est.total_bytes,
        breakdown=dict(est.breakdown),
        worker=result,
    )


def _line(row: dict) -> str:
    result = row["worker"]
    if "cuda_max_allocated" in result:  # GPU: load column = weights on the device; then reserved + context vs total
        load = result["cuda_load_allocated"]
        extra = f" {result['cuda_max_reserved'] / GiB:.2f} |"
    else:
        load, extra = result["load"]["VmHWM"], ""
    return (
        f"| {row['model']} | {row['method']} | {row['batch']} | {row['length']} | {row['predicted_bytes'] / GiB:.2f} | "
        f"{row['measured_bytes'] / GiB:.2f} | {row['ratio']:.2f} | {'yes' if row['within_15'] else 'NO'} | "
        f"{load / GiB:.2f} | {result.get('train_seconds', 0):.0f} |{extra}"
    )


def machine() -> str:
    import torch

    from tunesmith.plan.hardware import get_hardware

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else get_hardware("cpu").note
    return f"{device}; {platform.platform()}; Python {platform.python_version()}, torch {torch.__version__}"


def _header(gpu: bool) -> str:
    if gpu:
        header = (
            "| model | method | batch | length | predicted tensors GiB | max allocated GiB | ratio | within 15% | "
            "weights loaded GiB | train s | max reserved GiB |"
        )
    else:
        header = (
            "| model | method | batch | length | predicted GiB | measured GiB | ratio | within 15% | "
            "load peak GiB | train s |"
        )
    return header + "\n|" + "---|" * (header.count(" | ") + 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer points (smaller ones): ~6 min instead of ~25")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated among {', '.join(MODELS)}")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated among full, lora, qlora, freeze")
    parser.add_argument("--json", help="also write every measurement, with the estimator's breakdown, to this file")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds per configuration")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="configurations measured at once (peak RSS is per process, so this changes no number; "
        "each needs up to ~8 GiB)",
    )
    # Internal modes.
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--baseline", action="store_true", help="measure the bare framework process and exit")
    parser.add_argument(
        "--retable",
        metavar="JSON",
        help="re-predict the measurements saved by --json with the current estimator; measures nothing",
    )
    parser.add_argument(
        "--points", help="(batch)x(length) points for every model instead of its own, e.g. 4x1024,8x2048"
    )
    parser.add_argument(
        "--hardware",
        default=None,
        help="estimator hardware profile to predict for (default: cpu, or H100-80GB/H200 on those GPUs)",
    )
    parser.add_argument("--shapes", help="train every model from the configs in this folder with random weights")
    parser.add_argument("--export-shapes", help="write each model's config and tokenizer (no weights) to this folder")
    parser.add_argument("--build-random", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--make-model", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--task", default="chat", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.make_model:
        make_model(Path(args.make_model))
        return 0
    if args.export_shapes:
        export_shapes(Path(args.export_shapes))
        return 0
    if args.build_random:
        build_random(Path(args.build_random[0]), Path(args.build_random[1]))
        return 0
    if args.worker:
        WORK.mkdir(parents=True, exist_ok=True)
        result = baseline_worker() if args.baseline and not args.method else worker(args)
        print("BENCH_RESULT " + json.dumps(result))
        return 0

    from tunesmith.plan.estimate import FRAMEWORK_BYTES

    if args.retable:
        saved = json.loads(Path(args.retable).read_text())
        print(f"measured on: {saved['machine']} ({saved['date']})")
        gpu = any("cuda_max_allocated" in r["worker"] for r in saved["rows"])
        print(_header(gpu))

        def ref(row: dict) -> str:  # a saved path from another machine: this machine's copy of that model
            saved_ref = row["model_ref"]
            return saved_ref if not saved_ref.startswith("/") or Path(saved_ref).exists() else _model_ref(row["model"])

        rows = [
            _row(
                r["model"],
                MODELS[r["model"]],
                ref(r),
                r["method"],
                r["batch"],
                r["length"],
                r["worker"],
                args.hardware or (_gpu_profile(r["worker"]["device"]) if "device" in r["worker"] else "cpu"),
            )
            for r in saved["rows"]
        ]
        for row in rows:
            print(_line(row))
        print(f"\n{sum(r['within_15'] for r in rows)} of {len(rows)} points within 15%")
        return 0

    WORK.mkdir(parents=True, exist_ok=True)
    base = _run_worker(["--worker", "--baseline"], args.timeout)
    print(
        f"framework baseline (imports + Accelerator, no model): measured {base['measured_bytes'] / GiB:.2f} GiB, "
        f"estimator's CPU framework term {FRAMEWORK_BYTES['other'] / GiB:.2f} GiB",
        flush=True,
    )
    if args.baseline:
        return 0

    import torch

    gpu = torch.cuda.is_available()
    hardware = args.hardware or (_gpu_profile(torch.cuda.get_device_name()) if gpu else "cpu")
    rows, failed, started = [], [], time.perf_counter()
    jobs = []
    for key in [k.strip() for k in args.models.split(",") if k.strip()]:
        spec = MODELS[key]
        ref = _model_ref(key, args.shapes)
        for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
            points = spec["quick" if args.quick else "points"]
            if args.points:
                points = [tuple(int(v) for v in point.split("x")) for point in args.points.split(",")]
            for batch, length in points:
                jobs.append((key, spec, ref, method, batch, length))

    def measure(job):
        key, spec, ref, method, batch, length = job
        try:
            return _run_worker(
                [
                    "--worker",
                    "--model",
                    ref,
                    "--task",
                    spec["task"],
                    "--method",
                    method,
                    "--batch",
                    str(batch),
                    "--length",
                    str(length),
                ],
                args.timeout,
            )
        except (RuntimeError, subprocess.TimeoutExpired) as failure:  # one failed point must not lose the others
            return {"error": str(failure)[-1500:]}

    print(_header(gpu), flush=True)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        for job, result in zip(jobs, pool.map(measure, jobs)):
            key, spec, ref, method, batch, length = job
            if "error" in result:
                failed.append(dict(model=key, method=method, batch=batch, length=length, error=result["error"]))
                print(
                    f"| {key} | {method} | {batch} | {length} | failed: {result['error'].splitlines()[-1][:120]} |",
                    flush=True,
                )
                continue
            rows.append(_row(key, spec, ref, method, batch, length, result, hardware))
            print(_line(rows[-1]), flush=True)
    ok = sum(r["within_15"] for r in rows)
    print(
        f"\n{ok} of {len(rows)} points within 15% ({len(failed)} failed to run); "
        f"{time.perf_counter() - started:.0f} s in all",
        flush=True,
    )
    if args.json:
        payload = {
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": machine(),
            "command": " ".join(["python -m bench.memory", *(argv if argv is not None else sys.argv[1:])]),
            "baseline": base,
            "rows": rows,
            "failed": failed,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(payload, indent=1))
        print(f"wrote {args.json}")
    return 0


def _gpu_profile(device_name: str) -> str:
    """The estimator's profile for the GPU measured on (by its marketing name)."""
    from tunesmith.plan.hardware import PROFILES

    words = device_name.upper().split()  # "NVIDIA H100 80GB HBM3": match whole words ("M3" is in "HBM3")
    for profile in PROFILES:
        if profile.split("-")[0].upper() in words:
            return profile
    raise SystemExit(f"no estimator hardware profile for {device_name}; pass --hardware")


if __name__ == "__main__":
    sys.exit(main())
