"""Two processes (DDP over gloo, on this CPU) follow the single-process trajectory with the same global batch.

accelerate 1.15's `launch --cpu` runs its "simple launcher" (one process, or mpirun with a hostfile);
`--multi_gpu` starts torchrun, and on a machine without GPUs tunesmith's Accelerator runs those
processes on the CPU with gloo. The README documents this command.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from conftest import read_jsonl
from tunesmith.config import dump_config


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
    common = ["method.name=full", "train.learning_rate=1e-3", "train.max_steps=6", "eval.compare_base=false",
              "train.grad_accum=2"]
    single = make_config(*common, "train.batch_size=4", f"output.dir={tmp_path / 'single'}")
    double = make_config(*common, "train.batch_size=2", f"output.dir={tmp_path / 'double'}")
    for name, config in (("single", single), ("double", double)):
        (tmp_path / f"{name}.yaml").write_text(dump_config(config))

    one = subprocess.run([sys.executable, "-m", "tunesmith.cli", "train", str(tmp_path / "single.yaml")],
                         capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                          "--main_process_port", str(free_port()),
                          "-m", "tunesmith.cli", "train", str(tmp_path / "double.yaml")], capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-3000:]

    train_1, eval_1, summary_1 = losses(tmp_path / "single")
    train_2, eval_2, summary_2 = losses(tmp_path / "double")
    assert summary_1["processes"] == 1 and summary_2["processes"] == 2
    assert summary_1["trained_tokens"] == summary_2["trained_tokens"]
    assert len(train_1) == len(train_2) == 6
    assert train_1[-1] < train_1[0]
    assert train_2 == pytest.approx(train_1, rel=1e-3)
    assert eval_2 == pytest.approx(eval_1, rel=1e-3)
