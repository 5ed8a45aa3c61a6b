"""Run-time memory: the batch-size probe backs off on a real allocator failure and on a measured peak over
budget; an out-of-memory error in training is a clear message naming the parts and the fixes."""

from __future__ import annotations

import os
import resource
import subprocess
import sys

import pytest
import torch

from tunesmith.train.memory import GIB, is_out_of_memory, peak_bytes, probe_batch_size

CPU = torch.device("cpu")


def test_probe_backs_off_when_the_allocator_fails():
    """A step whose memory grows with the batch; past the machine's RAM the CPU allocator refuses
    (c10 raises "can't allocate memory"), which the probe treats as out of memory and halves."""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    unit = int(ram * 0.4)  # virtual only (never touched): batch 1 and 2 allocate, 4 and more cannot
    tried = []

    def step(batch: int) -> None:
        tried.append(batch)
        torch.empty(batch * unit, dtype=torch.uint8)

    assert probe_batch_size(step, 16, None, CPU, log=lambda _: None) in (1, 2)
    assert tried[0] == 16 and tried == sorted(tried, reverse=True)


def test_probe_backs_off_when_the_measured_peak_is_over_budget():
    if peak_bytes(CPU) is None:
        pytest.skip("no process high-water mark on this platform")
    from tunesmith.train.memory import reset_peak

    reset_peak(CPU)  # the high-water mark falls to what the process holds now (a long test session peaked higher)
    budget = peak_bytes(CPU) + 160 * 1024**2  # room for 2 chunks, not 4
    chunk = 64 * 1024**2

    def step(batch: int) -> None:
        block = torch.ones(batch * chunk, dtype=torch.uint8)  # touched: resident
        del block

    logs = []
    assert probe_batch_size(step, 16, budget, CPU, log=logs.append) == 2
    assert "over the" in logs[0] and logs[-1].startswith("batch size probe: batch 2 fits")


def test_out_of_memory_errors_are_recognised():
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 bytes"))
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


def test_auto_batch_is_probed_saved_and_leaves_no_trace(make_config, capsys):
    """batch_size: auto -> the estimate's batch, confirmed by a probe step; the run then matches one
    started with that number (the probe restores RNG and leaves no gradients)."""
    from conftest import read_jsonl

    from tunesmith import pipeline
    from tunesmith.config import load_saved_config

    quick = ("eval.compare_base=false", "train.max_steps=2", "train.eval_every=0", "data.split=[0.25,0.25,0.5]")
    auto = pipeline.train(make_config("train.batch_size=auto", *quick))
    assert "batch size probe: batch" in capsys.readouterr().out
    batch = load_saved_config(auto.run_dir / "config.yaml").train.batch_size
    assert isinstance(batch, int) and batch >= 1
    fixed = pipeline.train(make_config(f"train.batch_size={batch}", *quick))
    losses = [
        [r["loss"] for r in read_jsonl(run / "metrics.jsonl") if "loss" in r] for run in (auto.run_dir, fixed.run_dir)
    ]
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)


def test_out_of_memory_in_training_is_a_clear_error(make_config, tmp_path):
    """A real allocator failure: the training process runs under an address-space limit a few GiB above
    what it needs to load, and a batch whose logits cannot fit (every position carries loss: 38 records x
    ~200 tokens x 49k vocabulary in fp32 is ~1.5 GiB, twice that with its gradient). The CLI exits 2."""
    from tunesmith.config import dump_config

    # loss_chunk_tokens=0: the whole logits tensor, which the chunked loss (the default) never makes
    config = make_config(
        "train.batch_size=64",
        "data.train_on=all",
        "train.max_steps=2",
        "eval.compare_base=false",
        "train.eval_every=0",
        "train.loss_chunk_tokens=0",
    )
    path = tmp_path / "oom.yaml"
    path.write_text(dump_config(config))
    limit = 3 * GIB

    def limit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-m", "tunesmith.cli", "train", str(path), "--force"],
        capture_output=True,
        text=True,
        env=env,
        preexec_fn=limit_memory,
        timeout=600,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert "out of memory while training" in done.stderr and "train.batch_size=32" in done.stderr
    assert "Traceback" not in done.stderr
