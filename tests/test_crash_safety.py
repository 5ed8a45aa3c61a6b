"""Crash-safe runs: SIGKILL at exact and random points, a full disk, NaN losses, out of memory, Ctrl-C.

Each killed run is a real child process (forked from this one, so the libraries are loaded once: a
fresh interpreter spends most of a tiny run importing torch), killed with a real SIGKILL or sent a real
SIGINT, then resumed with `tunesmith train --resume` until it finishes; the final trainable weights and
metrics must equal those of one uninterrupted run (CPU, fp32: equal to float tolerance). Kill points
are named by TUNESMITH_TEST_KILL_AT (tunesmith/train/faults.py); the soak at the end adds random ones
and kills at random wall-clock times (marked slow: `.ci/run` runs it once after the suite).
"""

from __future__ import annotations

import json
import os
import random
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import SUPPORT_DATA, read_jsonl
from safetensors.torch import load_file

from tunesmith import pipeline
from tunesmith.config import dump_config, load_config
from tunesmith.errors import TunesmithError
from tunesmith.runs.atomic import atomic_directory, atomic_write_text, verify_manifest
from tunesmith.runs.index import RunIndex
from tunesmith.train.checkpoint import checkpoint_problem, resume_checkpoint, step_checkpoints

# Steps 1-6; validation at 3 and 6; checkpoints at 2, 4, 6; dropout on, so restored RNG states matter.
SETTINGS = [
    "method.name=lora",
    "method.r=4",
    "method.dropout=0.1",
    "data.max_length=256",
    "train.batch_size=4",
    "train.max_steps=6",
    "train.eval_every=3",
    "train.save_every=2",
    "train.log_every=1",
    "train.learning_rate=1e-2",
    "train.precision=fp32",
    "eval.compare_base=false",
    "eval.max_new_tokens=4",
    "eval.max_samples=2",
    "eval.report_samples=1",
]


# ---------------------------------------------------------------------------------------------------
# Child processes


class Child:
    """`tunesmith <args>` in a forked child with its own environment additions; output to `log`.
    `before` runs in the child first (a resource limit)."""

    def __init__(self, args: list[str], log: Path, env: dict | None = None, before=None):
        self.log = log
        self.code: int | None = None
        self.started = time.monotonic()
        self.pid = os.fork()
        if self.pid == 0:  # the child: never returns into pytest
            code = 1
            try:
                fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                sys.stdout = sys.stderr = open(fd, "w", buffering=1, closefd=False)
                # One thread: an OpenMP pool the parent started does not survive fork (a child entering
                # a parallel region can hang), and every child computes alike, whatever the machine.
                os.environ.update(env or {}, OMP_NUM_THREADS="1")
                torch.set_num_threads(1)
                signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a fresh interpreter
                if before is not None:
                    before()
                from tunesmith import cli

                code = cli.main(args)
            except BaseException:  # noqa: BLE001 - a child must exit, whatever happened
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                os._exit(code)

    def poll(self) -> int | None:
        """The exit code once the child ended (minus the signal that ended it: -9 for SIGKILL), else None."""
        if self.code is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.code = os.waitstatus_to_exitcode(status)
                self.seconds = time.monotonic() - self.started
        return self.code

    def wait(self, timeout: float = 300) -> int:
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                self.wait()
                raise AssertionError(f"child still running after {timeout}s:\n{self.output()[-3000:]}")
            time.sleep(0.005)
        return self.code

    def kill_after(self, seconds: float) -> None:
        deadline = self.started + seconds
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def train_child(tmp: Path, args: list[str], kill_at: str | None = None, tag: str = "run") -> Child:
    env = {"TUNESMITH_TEST_KILL_AT": kill_at} if kill_at else {}
    return Child(["train", *args], tmp / f"{tag}-{time.monotonic_ns()}.log", env)


def run_dirs(root: Path) -> list[Path]:
    """Run folders under `root` (config.yaml marks one; a folder killed before it is not one)."""
    return sorted(p for p in root.iterdir() if (p / "config.yaml").is_file()) if root.exists() else []


def partials(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*.partial*"))


def step_losses(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]


def eval_losses(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["eval_loss"]) for r in read_jsonl(run / "metrics.jsonl") if "eval_loss" in r]


def assert_same_result(run: Path, reference: Path) -> None:
    """The trainable weights, the logged curves and the summary's numbers of an uninterrupted run."""
    a = load_file(str(reference / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name
    for curve in (step_losses, eval_losses):
        ours, theirs = curve(run), curve(reference)
        assert [s for s, _ in ours] == [s for s, _ in theirs]  # each step logged once, none lost or repeated
        assert [v for _, v in ours] == pytest.approx([v for _, v in theirs], rel=1e-5)
    s, r = (json.loads((p / "summary.json").read_text()) for p in (run, reference))
    assert s["status"] == r["status"] == "completed" and s["steps"] == r["steps"]
    for key in ("final_train_loss", "best_eval_loss", "best_step", "trained_tokens"):
        assert s[key] == pytest.approx(r[key], rel=1e-5), key
    assert s["tuned"] == pytest.approx(r["tuned"], rel=1e-5)


def index_row(run: Path):
    (row,) = [r for r in RunIndex(run.parent).records(scan=False) if r.path.resolve() == run.resolve()]
    return row


# ---------------------------------------------------------------------------------------------------
# The run every killed run must reproduce


@pytest.fixture(scope="module")
def crash_run(tmp_path_factory, tiny_llama_dir):
    """(config file, its uninterrupted run, a scratch folder), the run made in a child like the killed ones."""
    tmp = tmp_path_factory.mktemp("crash")
    data = tmp / "chat.jsonl"
    data.write_text("\n".join(SUPPORT_DATA.read_text().splitlines()[:48]) + "\n")

    def config_file(name: str) -> Path:
        path = tmp / f"{name}.yaml"
        path.write_text(
            dump_config(
                load_config(
                    None, [f"model.name={tiny_llama_dir}", f"data.train={data}", f"output.dir={tmp / name}", *SETTINGS]
                )
            )
        )
        return path

    reference = train_child(tmp, [str(config_file("reference"))], tag="reference")
    assert reference.wait() == 0, reference.output()[-3000:]
    (run,) = run_dirs(tmp / "reference")
    return config_file, run, tmp, reference.seconds


def run_until_done(config: Path, root: Path, tmp: Path, kills: list[str | float | None], log: list[dict]) -> Path:
    """Start the run, then `--resume` it, once per entry of `kills`: a kill point's label, a number of
    seconds after which the child is SIGKILLed, or None (no kill: it must finish). Each kill's outcome
    is appended to `log`; returns the run folder."""
    for kill in kills:
        one_kill(config, root, tmp, kill, log)
    return run_dirs(root)[0]


def one_kill(config: Path, root: Path, tmp: Path, kill: str | float | None, log: list[dict]) -> dict:
    runs = run_dirs(root)
    child = train_child(
        tmp, ["--resume", str(runs[0])] if runs else [str(config)], kill if isinstance(kill, str) else None
    )
    if isinstance(kill, float):
        child.kill_after(kill)
    code = child.wait()
    output = child.output()
    runs = run_dirs(root)
    assert len(runs) <= 1, runs  # never a second run folder: a kill before config.yaml leaves no run
    if kill is None:
        assert code == 0, output[-3000:]
    elif isinstance(kill, str):
        assert code == -9, f"kill point {kill} not reached:\n{output[-3000:]}"
    else:
        assert code in (0, -9), output[-3000:]  # killed, or finished before its time came
    log.append(_outcome(kill, code, output, runs[0] if runs else None))
    return log[-1]


def _outcome(kill, code: int, output: str, run: Path | None) -> dict:
    """What a kill left behind: the checkpoints that verify, leftovers of unfinished writes, and what the
    process it interrupted had said about resuming."""
    resumed = re.search(r"resuming from .*\(step (\d+) of", output)
    return {
        "kill": kill if isinstance(kill, str) else (f"{kill:.2f}s" if kill is not None else "none"),
        "type": "point" if isinstance(kill, str) else "timed" if kill is not None else "none",
        "exit": code,
        "resumed_from_step": int(resumed.group(1)) if resumed else None,
        "cleaned": len(re.findall(r"removed .*: an unfinished write", output)),
        "complete_checkpoints": [p.name for p in step_checkpoints(run / "checkpoints") if checkpoint_problem(p) is None]
        if run
        else [],
        "partial_left": partials(run) if run else [],
        "run_folder": run is not None,
        "finished": bool(run and (run / "summary.json").exists()),
    }


# ---------------------------------------------------------------------------------------------------
# Kill at any moment


KILL_POINTS = [
    "step-3",  # inside step 3: backward done, optimizer step not taken
    "eval-3",  # inside the validation pass at step 3: its record logged, nothing else saved
    "checkpoint-4-file-2",  # inside checkpoint step-4: two of its three files written, no manifest
    "adapter-before-rename",  # inside the final save: adapter/ staged with all its files, not yet renamed
]


def test_killed_at_each_point_resumes_to_the_uninterrupted_result(crash_run):
    config_file, reference, tmp, _ = crash_run
    config = config_file("killed")
    log: list[dict] = []
    run = run_until_done(config, tmp / "killed", tmp, [*KILL_POINTS, None], log)
    assert_same_result(run, reference)
    by_kill = {entry["kill"]: entry for entry in log}
    assert by_kill["step-3"]["complete_checkpoints"] == ["step-2"]
    assert by_kill["eval-3"]["resumed_from_step"] == 2 and by_kill["eval-3"]["complete_checkpoints"] == ["step-2"]
    assert any(p.startswith("checkpoints/step-4.partial") for p in by_kill["checkpoint-4-file-2"]["partial_left"])
    assert by_kill["checkpoint-4-file-2"]["complete_checkpoints"] == ["step-2"]
    assert any(p.startswith("adapter.partial") for p in by_kill["adapter-before-rename"]["partial_left"])
    assert by_kill["adapter-before-rename"]["complete_checkpoints"] == ["step-4", "step-6"]
    assert not by_kill["adapter-before-rename"]["finished"]
    # Each resume after a partial write said what it removed; nothing partial is left at the end.
    assert log[3]["cleaned"] >= 1 and log[4]["cleaned"] >= 1 and log[4]["resumed_from_step"] == 6
    assert partials(run) == [] and index_row(run).status == "completed"
    print("\n" + "\n".join(json.dumps(e) for e in log))


def test_damaged_checkpoint_is_reported_and_skipped(crash_run, tmp_path):
    import shutil

    _, reference, _, _ = crash_run
    run = Path(shutil.copytree(reference, tmp_path / "run"))
    newest, older = run / "checkpoints" / "step-6", run / "checkpoints" / "step-4"
    assert verify_manifest(newest) is None and verify_manifest(older) is None

    states = newest / "optimizer.bin"
    data = bytearray(states.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: same size, wrong hash
    states.write_bytes(bytes(data))
    (run / "checkpoints" / "step-8.partial-123").mkdir()  # what a process killed mid-write leaves
    notes: list[str] = []
    assert resume_checkpoint(run, report=notes.append) == older
    assert any("step-8.partial-123" in n for n in notes)
    assert any("step-6" in n and "sha256" in n and "stays on disk" in n for n in notes), notes
    assert newest.exists() and not (run / "checkpoints" / "step-8.partial-123").exists()

    (older / "trainable.safetensors").write_bytes(b"cut")  # cut short: the size says so before any hash
    notes.clear()
    assert resume_checkpoint(run, report=notes.append) is None
    assert any("step-4" in n and "has 3 bytes" in n for n in notes), notes


def test_atomic_writes_keep_the_old_copy_when_a_write_fails(tmp_path):
    target = tmp_path / "model"
    with atomic_directory(target, manifest=True) as staging:
        (staging / "weights.bin").write_bytes(b"old")
    assert verify_manifest(target) is None
    with pytest.raises(RuntimeError), atomic_directory(target, manifest=True) as staging:
        (staging / "weights.bin").write_bytes(b"new, half")
        raise RuntimeError("crash mid-save")
    assert (target / "weights.bin").read_bytes() == b"old" and verify_manifest(target) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]

    summary = tmp_path / "summary.json"
    atomic_write_text(summary, "{}")
    assert oct(summary.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # not mkstemp's 0600
    with pytest.raises(KeyboardInterrupt), atomic_directory(tmp_path / "x"):
        raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "summary.json"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------------------------------------------
# Disk full


def _fill(folder: Path) -> Path:
    """A file that takes every free byte of `folder`'s file system."""
    filler = folder / "filler"
    with open(filler, "wb") as handle:
        block = b"\0" * (1 << 20)
        try:
            while True:
                handle.write(block)
                handle.flush()
        except OSError:
            pass
    return filler


@pytest.mark.parametrize("limit", ["tmpfs", "ulimit"])
@pytest.mark.filterwarnings("ignore:the runs index")  # index.sqlite sits on the same full disk: a warning, as designed
def test_disk_full_while_saving_a_checkpoint(make_config, tmp_path, limit):
    """tmpfs: a real full file system (mounting needs root; skipped without). ulimit: RLIMIT_FSIZE, the
    file size limit any user may lower (EFBIG, SIGXFSZ ignored as the shell's `ulimit -f` would not)."""
    root = tmp_path / "disk"
    root.mkdir()
    if limit == "tmpfs":
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(root)], capture_output=True)
        if mounted.returncode != 0:
            pytest.skip(
                f"cannot mount a small tmpfs here ({mounted.stderr.decode().strip()}); the ulimit case covers it"
            )
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous_xfsz = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    filled = []

    def fill_after_step_2(step: int, metrics: dict) -> None:
        if step == 4:  # step-2's checkpoint is written; step 4's comes right after this pass
            if limit == "tmpfs":
                filled.append(_fill(root))
            else:
                resource.setrlimit(resource.RLIMIT_FSIZE, (1024, hard))

    config = make_config(*SETTINGS, "train.eval_every=2", f"output.dir={root / 'runs'}")
    try:
        with pytest.raises(TunesmithError) as raised:
            pipeline.train(config, on_evaluation=fill_after_step_2)
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        (run,) = run_dirs(root / "runs")
        error = raised.value
        reason = "no space left on the device" if limit == "tmpfs" else "file too large"
        assert reason in error.message and "step-4" in error.message, error.render()
        assert "free space on the disk" in error.fix and f"--resume {run}" in error.fix
        # The previous checkpoint intact and the newest; no partial file or folder left to look newer.
        assert [p.name for p in step_checkpoints(run / "checkpoints")] == ["step-2"]
        assert verify_manifest(run / "checkpoints" / "step-2") is None
        assert partials(run) == []
        if filled:
            filled[0].unlink()
            # With space again, the run continues from step 2 and finishes.
            assert pipeline.train(resume=run).summary["steps"] == 6
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous_xfsz)
        if limit == "tmpfs":
            subprocess.run(["umount", str(root)], check=True)


# ---------------------------------------------------------------------------------------------------
# NaN / Inf


def test_nan_loss_stops_at_its_step_and_keeps_the_last_checkpoint(make_config):
    """A real divergence: AdamW moves each weight by ~lr per step, so at lr 1e30 the first step leaves
    weights near 1e30 and the second forward overflows to inf/NaN."""
    config = make_config(
        *SETTINGS, "train.learning_rate=1e30", "train.save_every=1", "train.warmup_ratio=0", "train.scheduler=constant"
    )
    with pytest.raises(TunesmithError) as raised:
        pipeline.train(config)
    message = raised.value.message
    assert "at step 2 (learning rate 1e+30)" in message and re.search(r"training loss is (nan|inf)", message), message
    (run,) = run_dirs(Path(config.output.dir))
    assert [p.name for p in step_checkpoints(run / "checkpoints")] == ["step-1"]
    assert "checkpoint" in message and "step-1" in message and "skip_nonfinite" in raised.value.fix
    assert index_row(run).status == "failed"
    assert [s for s, _ in step_losses(run)] == [1]  # the bad step was never logged as trained


def test_skip_nonfinite_drops_a_poisoned_batch_and_counts_it(make_config):
    """A poisoned batch: a forward hook turns the embeddings of the third training micro-batch into NaN
    (the weights stay finite, as with one corrupt record); the run drops it and still takes 6 steps."""
    seen = []

    def poison(module, args, output):
        if isinstance(module, torch.nn.Embedding) and module.training and torch.is_grad_enabled():
            seen.append(1)
            if len(seen) == 3:
                return output * float("nan")
        return None

    handle = torch.nn.modules.module.register_module_forward_hook(poison)
    try:
        result = pipeline.train(make_config(*SETTINGS, "train.skip_nonfinite=true"))
    finally:
        handle.remove()
    summary = result.summary
    assert summary["steps"] == 6 and summary["skipped_batches"] == 1 and len(seen) == 7
    records = read_jsonl(result.run_dir / "metrics.jsonl")
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records if "loss" in r)
    assert [r.get("skipped_batches", 0) for r in records if "loss" in r] == [0, 0, 1, 1, 1, 1]
    adapter = load_file(str(result.run_dir / "adapter" / "adapter_model.safetensors"))
    assert all(torch.isfinite(t).all() for t in adapter.values())


# ---------------------------------------------------------------------------------------------------
# Out of memory


def _limit_address_space(extra: int) -> None:
    """RLIMIT_AS at this process's current size + `extra` bytes: allocations past it fail for real."""
    size = next(
        int(line.split()[1]) * 1024
        for line in Path("/proc/self/status").read_text().splitlines()
        if line.startswith("VmSize:")
    )
    resource.setrlimit(resource.RLIMIT_AS, (size + extra, resource.getrlimit(resource.RLIMIT_AS)[1]))


def test_out_of_memory_leaves_a_consistent_run_directory(crash_run, tiny_llama_dir):
    """A real allocator failure in a child limited to its current address space + 1.5 GiB: training rows
    are short (~100 MB of logits a step), the validation rows long, and with logits for every position
    (train_on all, no chunking) the validation pass at step 2 needs ~3 GB. Step 1's checkpoint must stay
    complete and nothing partial be left; the index says failed, with the advice."""
    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc to size the address-space limit")
    _, _, tmp, _ = crash_run
    short = [{"prompt": f"Where is order {i}?", "completion": "It ships today."} for i in range(32)]
    long = [{"prompt": f"{i} " + "words " * 230, "completion": "words " * 230} for i in range(16)]
    for name, rows in (("oom-train.jsonl", short), ("oom-val.jsonl", long)):
        (tmp / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = tmp / "oom.yaml"
    config.write_text(
        dump_config(
            load_config(
                None,
                [
                    f"model.name={tiny_llama_dir}",
                    f"data.train={tmp / 'oom-train.jsonl'}",
                    f"data.validation={tmp / 'oom-val.jsonl'}",
                    "data.split=[0.75,0,0.25]",
                    f"output.dir={tmp / 'oom'}",
                    *SETTINGS,
                    "data.max_length=512",
                    "data.train_on=all",
                    "train.batch_size=16",
                    "train.loss_chunk_tokens=0",
                    "train.save_every=1",
                    "train.eval_every=2",
                ],
            )
        )
    )
    child = Child(["train", str(config), "--force"], tmp / "oom.log", before=lambda: _limit_address_space(3 * 2**29))
    code = child.wait()
    output = child.output()
    assert code == 2 and "out of memory while training" in output and "Traceback" not in output, output[-3000:]
    (run,) = run_dirs(tmp / "oom")
    assert [p.name for p in step_checkpoints(run / "checkpoints")] == ["step-1"]
    assert checkpoint_problem(run / "checkpoints" / "step-1") is None and partials(run) == []
    assert not (run / "summary.json").exists()
    row = index_row(run)
    assert row.status == "failed" and "out of memory" in row.reason


# ---------------------------------------------------------------------------------------------------
# Ctrl-C


def _wait_for(predicate, child: Child, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert child.poll() is None, f"child ended early:\n{child.output()[-3000:]}"
        assert time.monotonic() < deadline, child.output()[-3000:]
        time.sleep(0.005)


def _logged_steps(root: Path) -> list[int]:
    runs = run_dirs(root)
    path = runs[0] / "metrics.jsonl" if runs else None
    return [r["step"] for r in read_jsonl(path) if "loss" in r] if path and path.exists() else []


def test_ctrl_c_saves_at_the_step_boundary_and_a_second_aborts(crash_run):
    config_file, reference, tmp, _ = crash_run
    config, root = config_file("interrupted"), tmp / "interrupted"

    # 1. One Ctrl-C during step 2: the step finishes, its checkpoint is written, the resume command shown.
    child = train_child(tmp, [str(config)], tag="sigint")
    _wait_for(lambda: _logged_steps(root)[-1:] == [1], child)
    os.kill(child.pid, signal.SIGINT)
    assert child.wait() == 130, child.output()[-3000:]
    (run,) = run_dirs(root)
    stopped = _logged_steps(root)[-1]  # the step running at the signal (or, if it came late, a later one)
    assert 1 <= stopped < 6 and "stopped by Ctrl-C at step" in child.output()
    assert f"step-{stopped}" in [p.name for p in step_checkpoints(run / "checkpoints")]
    assert checkpoint_problem(run / "checkpoints" / f"step-{stopped}") is None
    assert json.loads((run / "checkpoints" / f"step-{stopped}" / "loop.json").read_text())["step"] == stopped
    assert f"tunesmith train --resume {run}" in child.output()
    row = index_row(run)
    assert row.status == "interrupted" and f"--resume {run}" in row.reason

    # 2. Resumed, then Ctrl-C twice: the second aborts at once; what is on disk is still consistent.
    child = train_child(tmp, ["--resume", str(run)], tag="sigint2")
    _wait_for(lambda: "resuming from" in child.output() and len(_logged_steps(root)) > stopped, child)
    os.kill(child.pid, signal.SIGINT)
    _wait_for(lambda: "Ctrl-C: finishing" in child.output(), child)
    os.kill(child.pid, signal.SIGINT)
    assert child.wait() == 130, child.output()[-3000:]
    assert "second Ctrl-C: aborting now" in child.output()
    assert partials(run) == [] and all(checkpoint_problem(p) is None for p in step_checkpoints(run / "checkpoints"))

    # 3. Resumed to the end: the same result as the run never interrupted.
    child = train_child(tmp, ["--resume", str(run)], tag="sigint3")
    assert child.wait() == 0, child.output()[-3000:]
    assert_same_result(run, reference)


# ---------------------------------------------------------------------------------------------------
# The soak: many kills, at random points and random times


# Kill points of this config in the order a run meets them; a run resumed from step-N meets only those
# after `step-N-before-rename`.
ORDER = [
    "step-1",
    "step-2",
    *[f"checkpoint-2-file-{k}" for k in (1, 2, 3)],
    "step-2-before-rename",
    "step-3",
    "eval-3",
    "step-4",
    *[f"checkpoint-4-file-{k}" for k in (1, 2, 3)],
    "step-4-before-rename",
    "step-5",
    "step-6",
    "eval-6",
    *[f"checkpoint-6-file-{k}" for k in (1, 2, 3)],
    "step-6-before-rename",
    "adapter-before-rename",
]


@pytest.mark.slow
def test_soak_many_random_kills(crash_run):
    """24 SIGKILLs, every other one at a random kill point among the next five ahead of the run, the others
    at a random time of the child's life (which may fall in loading, a step, a validation pass, a write,
    the final scoring, or after the child finished). A run that finishes is compared with the reference
    and a new one starts, until 24 kills have landed."""
    config_file, reference, tmp, seconds = crash_run
    rng = random.Random(int(os.environ.get("TUNESMITH_SOAK_SEED", "7")))
    log: list[dict] = []
    runs_done, kills_at_the_end = 0, 0
    while sum(e["exit"] == -9 for e in log) < 24:
        root = tmp / f"soak-{runs_done}"
        runs = run_dirs(root)
        newest = step_checkpoints(runs[0] / "checkpoints") if runs else []
        after = ORDER.index(f"{newest[-1].name}-before-rename") + 1 if newest else 0
        kills_at_the_end += after == len(ORDER) - 1  # only the final save ahead
        # One of the next few points still ahead, so the kills spread over the whole run rather than
        # piling up at the end; every other kill at a random time of the child's life instead. A run
        # killed twice with only its final phase left is finished, and a fresh one started.
        kill = (
            None
            if kills_at_the_end > 2
            else rng.choice(ORDER[after : after + 5])
            if len(log) % 2 == 0
            else rng.uniform(0.05, seconds)
        )
        outcome = one_kill(config_file(f"soak-{runs_done}"), root, tmp, kill, log)
        if outcome["finished"]:
            assert_same_result(run_dirs(root)[0], reference)
            runs_done, kills_at_the_end = runs_done + 1, 0
        assert len(log) < 80, log
    # The run in progress, resumed to its end without a kill.
    root = tmp / f"soak-{runs_done}"
    if run_dirs(root):
        one_kill(config_file(root.name), root, tmp, None, log)
        assert_same_result(run_dirs(root)[0], reference)
        runs_done += 1
    for n in range(runs_done):
        assert partials(run_dirs(tmp / f"soak-{n}")[0]) == []
    kinds: dict[str, int] = {}
    for entry in log:
        kinds[_kind(entry)] = kinds.get(_kind(entry), 0) + 1
    print(
        f"\nsoak: {sum(e['exit'] == -9 for e in log)} kills over {runs_done} runs, all equal to the reference; "
        f"outcomes: {json.dumps(kinds, indent=1)}\n" + "\n".join(json.dumps(e) for e in log)
    )


def _kind(entry: dict) -> str:
    """A kill's outcome in words, for the soak's tally."""
    if entry["exit"] == 0:
        return "finished (timed kill came too late, or the final resume)"
    where = "kill point" if entry["type"] == "point" else "timed kill"
    if not entry["run_folder"]:
        return f"{where}: before the run folder was complete (the next start was fresh)"
    if entry["partial_left"]:
        return f"{where}: mid-write, partial output left (removed on resume)"
    newest = entry["complete_checkpoints"][-1] if entry["complete_checkpoints"] else "no checkpoint yet"
    return f"{where}: between writes, newest complete checkpoint {newest}"
