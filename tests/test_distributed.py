"""Two processes (DDP over gloo, on this CPU) follow the single-process trajectory with the same global
batch; killed after a checkpoint and resumed, they end with the weights of a run never interrupted; and
FSDP, which accelerate cannot run on CPUs, is refused up front.

accelerate 1.15's `launch --cpu` runs its "simple launcher" (one process, or mpirun with a hostfile);
`--multi_gpu` starts torchrun, and on a machine without GPUs tunesmith's Accelerator runs those
processes on the CPU with gloo. The README documents this command.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import read_jsonl
from safetensors.torch import load_file

from tunesmith.config import dump_config
from tunesmith.runs.atomic import verify_manifest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def losses(runs_root) -> tuple[list[float], list[float], dict]:
    (run,) = [p for p in runs_root.iterdir() if p.is_dir()]  # the runs index (index.sqlite) lies beside it
    records = read_jsonl(run / "metrics.jsonl")
    summary = json.loads((run / "summary.json").read_text())
    return [r["loss"] for r in records if "loss" in r], [r["eval_loss"] for r in records if "eval_loss" in r], summary


def test_two_processes_match_one_process_with_the_same_global_batch(make_config, tmp_path):
    common = [
        "method.name=full",
        "train.learning_rate=1e-3",
        "train.max_steps=6",
        "eval.compare_base=false",
        "train.grad_accum=2",
    ]
    single = make_config(*common, "train.batch_size=4", f"output.dir={tmp_path / 'single'}")
    double = make_config(*common, "train.batch_size=2", f"output.dir={tmp_path / 'double'}")
    for name, config in (("single", single), ("double", double)):
        (tmp_path / f"{name}.yaml").write_text(dump_config(config))

    one = subprocess.run(
        [sys.executable, "-m", "tunesmith.cli", "train", str(tmp_path / "single.yaml")], capture_output=True, text=True
    )
    assert one.returncode == 0, one.stderr[-3000:]
    two = launch(tmp_path / "double.yaml")
    assert two.returncode == 0, two.stderr[-3000:]

    train_1, eval_1, summary_1 = losses(tmp_path / "single")
    train_2, eval_2, summary_2 = losses(tmp_path / "double")
    assert summary_1["processes"] == 1 and summary_2["processes"] == 2
    assert summary_1["trained_tokens"] == summary_2["trained_tokens"]
    assert len(train_1) == len(train_2) == 6
    assert train_1[-1] < train_1[0]
    assert train_2 == pytest.approx(train_1, rel=1e-3)
    assert eval_2 == pytest.approx(eval_1, rel=1e-3)


# ---------------------------------------------------------------------------------------------------
# Kill and resume under DDP; FSDP on CPUs


def launch(
    config: Path | None,
    *args: str,
    flags: tuple[str, ...] = ("--multi_gpu",),
    kill_at: str | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess:
    """`accelerate launch <flags> --num_processes 2 -m tunesmith.cli train <config> <args>`, on this CPU."""
    env = {k: v for k, v in os.environ.items() if k != "TUNESMITH_TEST_KILL_AT"}
    if kill_at:
        env["TUNESMITH_TEST_KILL_AT"] = kill_at  # read by every process: each one dies at that point
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *flags,
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        "-m",
        "tunesmith.cli",
        "train",
        *([str(config)] if config else []),
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)


def only_run(root: Path) -> Path:
    (run,) = [p for p in root.iterdir() if (p / "config.yaml").is_file()]
    return run


# Dropout on, so each process's restored RNG states matter; checkpoints at 2, 4, 6; validation at 3, 6.
RESUME_SETTINGS = [
    "method.name=lora",
    "method.r=4",
    "method.dropout=0.1",
    "train.batch_size=2",
    "train.max_steps=6",
    "train.save_every=2",
    "train.eval_every=3",
    "eval.compare_base=false",
    "eval.max_samples=2",
    "eval.max_new_tokens=4",
    "eval.report_samples=1",
]


def test_two_processes_killed_after_a_checkpoint_resume_to_the_uninterrupted_weights(make_config, tmp_path):
    """DDP, 2 processes: killed after checkpoint step-2, inside step-4's write (both processes' shares
    written into the main process's staging folder, no manifest), then resumed: it continues from step-2
    (optimizer and each process's RNG states restored) and the adapter, the curves and the summary equal
    those of a 2-process run never interrupted."""
    started = time.monotonic()
    for name in ("reference", "killed"):
        (tmp_path / f"{name}.yaml").write_text(
            dump_config(make_config(*RESUME_SETTINGS, f"output.dir={tmp_path / name}"))
        )
    reference = launch(tmp_path / "reference.yaml")
    assert reference.returncode == 0, reference.stderr[-3000:]
    reference_run = only_run(tmp_path / "reference")

    # 1. Killed mid-write: both processes wrote their share of step-4 (random_states_0/1), no manifest yet.
    killed = launch(tmp_path / "killed.yaml", kill_at="checkpoint-4-file-2")
    assert killed.returncode != 0
    run = only_run(tmp_path / "killed")
    (partial,) = (run / "checkpoints").glob("step-4.partial-*")
    assert {"random_states_0.pkl", "random_states_1.pkl", "optimizer.bin"} <= {p.name for p in partial.iterdir()}
    assert not (partial / "manifest.json").exists() and not (run / "summary.json").exists()
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-2", partial.name]

    # 2. Resumed: the partial folder removed, continued from step-2 to the end.
    resumed = launch(None, "--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "(step 2 of 6)" in resumed.stdout and "an unfinished write" in resumed.stdout, resumed.stdout[-3000:]
    for step in ("step-4", "step-6"):
        assert verify_manifest(run / "checkpoints" / step) is None
        files = set(json.loads((run / "checkpoints" / step / "manifest.json").read_text())["files"])
        assert files == {
            "trainable.safetensors",
            "optimizer.bin",
            "random_states_0.pkl",
            "random_states_1.pkl",
            "loop.json",
        }
    assert json.loads((run / "checkpoints" / "step-6" / "loop.json").read_text())["processes"] == 2
    a = load_file(str(reference_run / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name
    train_a, eval_a, summary_a = losses(tmp_path / "reference")
    train_b, eval_b, summary_b = losses(tmp_path / "killed")
    assert (
        len(train_b) == 6 and train_b == pytest.approx(train_a, rel=1e-5) and eval_b == pytest.approx(eval_a, rel=1e-5)
    )
    assert summary_b["processes"] == 2 and summary_b["trained_tokens"] == summary_a["trained_tokens"]
    assert not list(run.rglob("*.partial*"))
    print(f"\n3 two-process launches in {time.monotonic() - started:.0f}s")


def test_fsdp_on_cpus_is_refused_naming_what_is_missing(make_config, tmp_path):
    """accelerate 1.15 turns FSDP on only for GPU-type devices: on CPUs `--use_fsdp` would run plain DDP
    over gloo without a word. tunesmith refuses it before training, naming the missing CUDA device."""
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device: FSDP is not refused here")
    (tmp_path / "fsdp.yaml").write_text(dump_config(make_config(*RESUME_SETTINGS, f"output.dir={tmp_path / 'fsdp'}")))
    refused = launch(tmp_path / "fsdp.yaml", flags=("--use_fsdp", "--fsdp_version", "2"))
    assert refused.returncode != 0
    assert "`accelerate launch` asked for FSDP, but this machine has no CUDA device (with NCCL)" in refused.stderr, (
        refused.stderr[-3000:]
    )
    assert "plain DDP over gloo" in refused.stderr and "--multi_gpu" in refused.stderr
    # A TunesmithError on each process: its message and fix, exit code 2 (the traceback is the launcher's).
    assert "error: ACCELERATE_USE_FSDP=true: `accelerate launch` asked for FSDP" in refused.stderr
    assert re.search(r"exitcode\s*:\s*2\b", refused.stderr) and "[rank0]: Traceback" not in refused.stderr
    # Refused before the data and the model load: no run directory was made.
    assert not (tmp_path / "fsdp").exists() or not any((tmp_path / "fsdp").glob("*/config.yaml"))


def test_deepspeed_without_its_package_is_refused(monkeypatch):
    from accelerate.utils import DistributedType

    from tunesmith.errors import TunesmithError
    from tunesmith.train.distributed import check_backend

    class CpuAccelerator:  # what accelerate builds under `--use_deepspeed` on a machine without CUDA
        distributed_type, num_processes = DistributedType.MULTI_CPU, 2

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(TunesmithError) as raised:
        check_backend(CpuAccelerator())
    message = raised.value.message
    assert "asked for DeepSpeed" in message and "no CUDA device" in message and "no deepspeed package" in message
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    check_backend(CpuAccelerator())  # plain DDP on CPUs: nothing asked for, nothing refused
