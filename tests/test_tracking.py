"""Experiment tracking: the runs index, TensorBoard / MLflow / W&B round trips, `tunesmith runs` and
`tunesmith runs compare`, on tiny Llama runs.

Everything is real: a SQLite runs index written by several processes at once, an MLflow tracking
store with a SQLite backend read back with MlflowClient, TensorBoard event files read back with
tensorboard's EventAccumulator, and a W&B offline run whose record log is read back from disk.
"""

from __future__ import annotations

import glob
import json
import multiprocessing
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import read_jsonl

from tunesmith import cli, pipeline
from tunesmith.config import load_config
from tunesmith.errors import TunesmithError
from tunesmith.runs.index import RunIndex, key_metrics

HF_TOKEN = "hf_" + "Q7x" * 12  # the shape of a Hugging Face token
WANDB_KEY = "0123456789abcdef" * 2 + "fedcba98"  # 40 characters, the shape of a W&B API key
URL_PASSWORD, URL_TOKEN = "hunter2pass", "abc123querytoken"
SECRETS = (HF_TOKEN, WANDB_KEY, URL_PASSWORD, URL_TOKEN)


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory) -> str:
    """One MLflow SQLite store for the module: creating its tables takes seconds, once."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture()
def secret_env(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", HF_TOKEN)
    monkeypatch.setenv("WANDB_API_KEY", WANDB_KEY)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)


def fast(make_config, *overrides, **kwargs):
    return make_config("method.name=lora", "method.r=4", "eval.max_samples=2", *overrides, **kwargs)


def same_curve(got: list, want: list, rel: float = 1e-9) -> bool:
    """(step, value) pairs: the same steps, values equal up to `rel` (TensorBoard stores float32)."""
    return [s for s, _ in got] == [s for s, _ in want] and [v for _, v in got] == pytest.approx(
        [v for _, v in want], rel=rel
    )


def index_rows(root: Path) -> dict:
    return {r.name: r for r in RunIndex(root).records(scan=False)}


# ---------------------------------------------------------------------------------------------------
# The index under concurrent writers


def _register_many(root: str, worker: int, count: int) -> None:
    index = RunIndex(root)
    for i in range(count):
        path = Path(root) / f"w{worker}-run{i}"
        index.start(path, task="chat", model="tiny", method="lora", params={"train.learning_rate": worker + i / 100})
        index.finish(path, "completed", metrics={"best_eval_loss": worker + i / 100})


def test_index_takes_concurrent_writers_without_losing_a_run(tmp_path):
    workers, count = 4, 25
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_register_many, args=(str(tmp_path), w, count)) for w in range(workers)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(120)
    assert [p.exitcode for p in processes] == [0] * workers
    rows = index_rows(tmp_path)
    assert len(rows) == workers * count
    assert {r.status for r in rows.values()} == {"completed"}
    assert rows["w3-run7"].metrics == {"best_eval_loss": 3.07} and rows["w3-run7"].params == {
        "train.learning_rate": 3.07
    }
    mode = __import__("sqlite3").connect(tmp_path / "index.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_a_broken_index_never_stops_a_run_and_listing_says_what_to_do(tmp_path, capsys):
    from tunesmith.runs.rundir import RunDir
    from tunesmith.runs.tracking import RunTracking

    root = tmp_path / "runs"
    root.mkdir()
    (root / "index.sqlite").write_bytes(b"not a database, " * 512)
    run = RunDir.create(root, "victim")
    tracking = RunTracking()
    with pytest.warns(UserWarning, match="could not be updated"):
        tracking.start(run, load_config(None), main=True, resumed=False)
    tracking.finish({"status": "completed", "steps": 1})  # no second warning: the index was dropped
    capsys.readouterr()
    assert cli.main(["runs", "--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert "index.sqlite" in err and "cannot read the runs index" in err and "move the file aside" in err


# ---------------------------------------------------------------------------------------------------
# One tracked run: index, MLflow, TensorBoard and W&B all get the same numbers, and no secret


def _wandb_records(run_dir: Path) -> list:
    """The records of a W&B offline run, read from its run-<id>.wandb file: LevelDB's log format (7-byte
    file header, 32 KiB blocks, records with a crc32/length/type header, types 1 full, 2 first,
    3 middle, 4 last) holding wandb_internal_pb2.Record protobufs."""
    from wandb.proto import wandb_internal_pb2

    (path,) = glob.glob(str(run_dir / "wandb" / "offline-run-*" / "run-*.wandb"))
    raw = Path(path).read_bytes()
    assert raw[:4] == b":W&B"
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(raw):
        room = block - pos % block
        if room < 7:  # a block's tail too short for a header is padding
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        pos += 7
        if kind == 0:
            pos += room - 7
            continue
        pending += raw[pos : pos + length]
        pos += length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_tracked_run_reaches_the_index_mlflow_tensorboard_and_wandb(make_config, mlflow_uri, secret_env, tmp_path):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = (
        f"{{dataset: 'https://bob:{URL_PASSWORD}@data.example.org/tickets.jsonl?token={URL_TOKEN}', owner: {HF_TOKEN}}}"
    )
    config = fast(
        make_config,
        "name=tracked",
        "track.report_to=[tensorboard, mlflow, wandb]",
        f"track.mlflow_tracking_uri={mlflow_uri}",
        "track.experiment=tiny-chat",
        f"track.tags={tags}",
    )
    result = pipeline.train(config)
    run, summary = result.run_dir, result.summary
    log = read_jsonl(run / "metrics.jsonl")
    train_loss = [(r["step"], r["loss"]) for r in log if "loss" in r]
    eval_loss = [(r["step"], r["eval_loss"]) for r in log if "eval_loss" in r]
    assert [s for s, _ in train_loss] == [1, 2, 3, 4, 5, 6] and [s for s, _ in eval_loss] == [3, 6]

    # The index: completed, with the summary's metrics and the flattened config.
    (row,) = index_rows(run.parent).values()
    assert row.path == run and row.name == run.name
    assert row.status == "completed" and row.reason is None
    assert row.metrics == key_metrics(summary) and row.metrics["test/rougeL"] == summary["tuned"]["rougeL"]
    assert row.params["train.learning_rate"] == 0.01 and row.params["method.r"] == 4 and row.task == "chat"

    # MLflow, read back with its own client.
    client = MlflowClient(mlflow_uri)
    ids = json.loads((run / "trackers.json").read_text())
    mlrun = client.get_run(ids["mlflow_run_id"])
    assert mlrun.info.status == "FINISHED" and mlrun.info.run_name == run.name
    assert client.get_experiment(mlrun.info.experiment_id).name == "tiny-chat"
    assert mlrun.data.params["train.learning_rate"] == "0.01" and mlrun.data.params["method.name"] == "lora"
    history = sorted((m.step, m.value) for m in client.get_metric_history(mlrun.info.run_id, "loss"))
    assert same_curve(history, train_loss)
    assert same_curve(
        sorted((m.step, m.value) for m in client.get_metric_history(mlrun.info.run_id, "eval_loss")), eval_loss
    )
    assert mlrun.data.metrics["test/rougeL"] == pytest.approx(summary["tuned"]["rougeL"])
    assert mlrun.data.metrics["best_eval_loss"] == pytest.approx(summary["best_eval_loss"])
    assert mlrun.data.tags["dataset"] == "https://bob:***@data.example.org/tickets.jsonl?token=***"
    assert mlrun.data.tags["owner"] == "***"

    # TensorBoard event files, read back.
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert same_curve([(e.step, e.value) for e in events.Scalars("loss")], train_loss, rel=1e-6)
    assert same_curve([(e.step, e.value) for e in events.Scalars("eval_loss")], eval_loss, rel=1e-6)
    assert "lr" in events.Tags()["scalars"] and "test/rougeL" in events.Tags()["scalars"]

    # W&B offline: the run's own record log on disk.
    records = _wandb_records(run)
    history = {}
    for record in (r for r in records if r.WhichOneof("record_type") == "history"):
        items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
        if "loss" in items:
            history[items["_step"]] = items["loss"]
    assert same_curve(sorted(history.items()), train_loss)
    config_items = {
        i.key or "/".join(i.nested_key): json.loads(i.value_json)
        for r in records
        if r.WhichOneof("record_type") == "config"
        for i in r.config.update
    }
    assert config_items["train.learning_rate"] == 0.01
    (run_record,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run_record.project == "tiny-chat" and run_record.run_id == ids["wandb_run_id"]

    # No secret reached a tracker or the index (config.yaml is the user's own file and keeps what they wrote).
    written = [Path(mlflow_uri.removeprefix("sqlite:///")), *run.parent.glob("index.sqlite*")]
    written += [p for p in run.rglob("*") if p.is_file() and p.name != "config.yaml"]
    for path in written:
        data = path.read_bytes()
        for secret in SECRETS:
            assert secret.encode() not in data, (secret, path)


def test_params_strip_secrets_from_urls_tokens_and_environment(monkeypatch):
    from tunesmith.runs.trackers import flatten, safe_params

    monkeypatch.setenv("WANDB_API_KEY", WANDB_KEY)
    config = load_config(
        None,
        [
            f"track.mlflow_tracking_uri=https://alice:{URL_PASSWORD}@mlflow.example.org:5000",
            f"search.storage=postgresql+psycopg://optuna:{URL_PASSWORD}@db.example.org/studies",
            f"data.system_prompt=Answer in JSON. key {WANDB_KEY}",
            f"track.tags={{source: 's3://bucket/x.jsonl?X-Amz-Signature=zz&token={URL_TOKEN}', hub: {HF_TOKEN}}}",
        ],
    )
    params = safe_params(config)
    assert params["track.mlflow_tracking_uri"] == "https://alice:***@mlflow.example.org:5000"
    assert params["search.storage"] == "postgresql+psycopg://optuna:***@db.example.org/studies"
    assert params["data.system_prompt"] == "Answer in JSON. key ***"
    assert json.loads(params["track.tags"]) == {
        "source": "s3://bucket/x.jsonl?X-Amz-Signature=***&token=***",
        "hub": "***",
    }
    # What is no secret is left exactly as written (a SQLite URI keeps its four slashes).
    assert (
        safe_params(load_config(None, ["track.mlflow_tracking_uri=sqlite:////srv/mlflow.db"]))[
            "track.mlflow_tracking_uri"
        ]
        == "sqlite:////srv/mlflow.db"
    )
    assert not any(s in json.dumps(params) for s in SECRETS)
    assert params["train.learning_rate"] == config.train.learning_rate  # the rest is untouched
    # Keys that name a secret are dropped whole (a saved config from elsewhere may carry one).
    assert "model.hub_token" not in safe_params({"model": {"name": "x", "hub_token": "abc12345"}})
    assert flatten({"data": {"split": [0.8, 0.1, 0.1]}}) == {"data.split": "[0.8, 0.1, 0.1]"}


# ---------------------------------------------------------------------------------------------------
# How runs end: failed, interrupted (killed), resumed; a tracker that is not installed


def test_failed_run_is_recorded_with_its_reason(make_config, mlflow_uri, tiny_llama_dir, tmp_path, secret_env):
    import shutil

    from mlflow.tracking import MlflowClient

    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_llama_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a download cut short: the config and tokenizer are fine
    config = fast(
        make_config,
        "name=broken",
        "track.report_to=[mlflow]",
        f"track.mlflow_tracking_uri={mlflow_uri}",
        "track.experiment=failures",
        model=broken,
    )
    with pytest.raises(Exception):
        pipeline.train(config)
    (row,) = index_rows(Path(config.output.dir)).values()
    assert row.status == "failed" and "SafetensorError" in row.reason  # the loader's own message
    ids = json.loads((row.path / "trackers.json").read_text())
    assert MlflowClient(mlflow_uri).get_run(ids["mlflow_run_id"]).info.status == "FAILED"


def test_missing_tracker_package_names_the_extra(make_config, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # what `import wandb` meets where it is not installed
    config = fast(make_config, "name=nowandb", "track.report_to=[wandb]")
    with pytest.raises(TunesmithError) as error:
        pipeline.train(config)
    assert "tunesmith[track]" in error.value.fix and error.value.where == "track.report_to"
    (row,) = index_rows(Path(config.output.dir)).values()
    assert row.status == "failed" and "wandb" in row.reason and "not installed" in row.reason


def test_unreachable_mlflow_store_is_one_clear_error(tmp_path, monkeypatch):
    from tunesmith.runs.trackers import Trackers

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the client's own knob; the default retries ~2 min
    for uri, says in ((f"http://bob:{URL_PASSWORD}@127.0.0.1:9", "127.0.0.1:9"), ("nosuch://store", "nosuch://store")):
        config = load_config(None, ["track.report_to=[mlflow]", f"track.mlflow_tracking_uri={uri}"])
        with pytest.raises(TunesmithError) as error:
            Trackers(tmp_path, config, resumed=False)
        assert error.value.where == "track.mlflow_tracking_uri" and says in error.value.message
        assert "cannot start the mlflow tracker" in error.value.message and URL_PASSWORD not in error.value.render()


def test_unknown_tracker_is_a_config_error():
    with pytest.raises(TunesmithError) as error:
        load_config(None, ["track.report_to=[mlflwo]"])
    assert "track.report_to" in str(error.value)
    with pytest.raises(TunesmithError):
        load_config(None, ["track.experiment=it's"])


_KILLED_RUN = textwrap.dedent("""
    import sys
    from tunesmith.config import load_config
    from tunesmith import pipeline
    pipeline.train(load_config(sys.argv[1]))
""")


def test_killed_run_shows_interrupted_until_resumed(make_config, mlflow_uri, secret_env, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from tunesmith.config import dump_config

    config = fast(
        make_config,
        "name=killed",
        "eval.compare_base=false",
        "track.report_to=[mlflow]",
        f"track.mlflow_tracking_uri={mlflow_uri}",
        "track.experiment=resumes",
    )
    path = tmp_path / "run.yaml"
    path.write_text(dump_config(config))
    env = dict(os.environ, TUNESMITH_TEST_KILL_AT_STEP="3", OMP_NUM_THREADS="1")
    killed = subprocess.run([sys.executable, "-c", _KILLED_RUN, str(path)], env=env, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]

    root = Path(config.output.dir)
    (row,) = index_rows(root).values()
    assert row.status == "interrupted" and "tunesmith train --resume" in row.reason
    capsys.readouterr()
    assert cli.main(["runs", "--root", str(root), "--status", "interrupted"]) == 0
    listing = capsys.readouterr().out
    assert row.name in listing and "step 3, loss" in listing and "ended without finishing" in listing, listing

    pipeline.train(resume=row.path)
    (row,) = index_rows(root).values()  # the same row, not a second one
    assert row.status == "completed" and row.metrics["steps"] == 6
    # The resumed run continued the same MLflow run: one history, steps 1-6, no step twice.
    ids = json.loads((row.path / "trackers.json").read_text())
    history = MlflowClient(mlflow_uri).get_metric_history(ids["mlflow_run_id"], "loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5, 6]


# ---------------------------------------------------------------------------------------------------
# `tunesmith runs` and `tunesmith runs compare`


def test_runs_lists_and_compare_diffs_and_plots(make_config, tmp_path, capsys):
    import matplotlib.image

    high = pipeline.train(fast(make_config, "name=lr-high", "eval.compare_base=false"))
    low = pipeline.train(fast(make_config, "name=lr-low", "eval.compare_base=false", "train.learning_rate=1e-3"))
    root = high.run_dir.parent
    # A run folder the index does not know (made before it existed, copied in) is listed from its files.
    import shutil

    shutil.copytree(high.run_dir, root / "old-run")
    # A search study keeps its trials, and their index, in <study>/trials/ under the same root.
    trials = root / "search-demo" / "trials"
    trial = trials / "20260101-000000-trial-3"
    shutil.copytree(low.run_dir, trial)
    RunIndex(trials).start(trial, task="chat", model="tiny", method="lora", params={"train.learning_rate": 0.005})
    RunIndex(trials).finish(trial, "pruned", reason="TrialPruned: below the median of earlier trials at step 3")

    capsys.readouterr()
    assert cli.main(["runs", "--root", str(root)]) == 0
    listing = capsys.readouterr().out
    assert high.run_dir.name in listing and low.run_dir.name in listing and "old-run" in listing
    assert "completed" in listing and "lr 0.01" in listing and "lr 0.001" in listing and "r 4 alpha 16" in listing
    assert "trial-3" in listing and "pruned" in listing and "below the median" in listing
    assert cli.main(["runs", "--root", str(root / "search-demo")]) == 0
    study = capsys.readouterr().out
    assert "trial-3" in study and "lr-high" not in study
    assert cli.main(["runs", "--root", str(root), "--task", "text-classification"]) == 0
    assert "no runs" in capsys.readouterr().out

    output = tmp_path / "plots" / "cmp.png"
    assert cli.main(["runs", "--root", str(root), "compare", "lr-high", "lr-low", "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "train.learning_rate" in printed and "best_eval_loss" in printed and str(output) in printed

    from tunesmith.runs.compare import compare_runs

    result = compare_runs([str(high.run_dir), str(low.run_dir)], output=output)
    assert result.config_diff == {"name": ["lr-high", "lr-low"], "train.learning_rate": [0.01, 0.001]}
    assert result.metrics["best_eval_loss"] == [high.summary["best_eval_loss"], low.summary["best_eval_loss"]]
    assert result.metrics["status"] == ["completed", "completed"]
    # Both runs' curves are drawn: matplotlib's first two colours (C0 blue, C1 orange) are in the image.
    pixels = (matplotlib.image.imread(output)[..., :3] * 255).round().astype(int).reshape(-1, 3).tolist()
    colours = {tuple(p) for p in pixels}
    assert (31, 119, 180) in colours and (255, 127, 14) in colours

    with pytest.raises(TunesmithError, match="at least two"):
        compare_runs([str(high.run_dir)], root=root)
    with pytest.raises(TunesmithError, match="matches 2 runs"):
        compare_runs(["lr-", str(low.run_dir)], root=root)
    assert cli.main(["runs", "compare", "nope", "lr-low", "--root", str(root)]) == 2
    assert "no run 'nope'" in capsys.readouterr().err


def test_compare_gives_runs_with_the_same_folder_name_distinct_headings(tmp_path, capsys):
    """Two studies (or two output.dir roots) each holding a run folder of the same name: every column
    heading and plot label must say which run it is."""
    runs = []
    for study, rate in (("study-a", 0.01), ("study-b", 0.001)):
        run = tmp_path / study / "trials" / "20260101-000000-trial-0"
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(f"name: trial-0\ntrain:\n  learning_rate: {rate}\n")
        (run / "summary.json").write_text(json.dumps({"status": "completed", "best_eval_loss": rate * 100}))
        (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": rate * 200}) + "\n")
        runs.append(run)
    third = tmp_path / "20260101-000000-other"
    third.mkdir()
    (third / "config.yaml").write_text("name: other\n")

    from tunesmith.runs.compare import compare_runs

    result = compare_runs([str(r) for r in (*runs, third)], output=tmp_path / "cmp.png")
    assert len(set(result.labels)) == 3, result.labels
    assert result.labels == [
        "study-a/trials/20260101-000000-trial-0",
        "study-b/trials/20260101-000000-trial-0",
        "20260101-000000-other",
    ]  # the shortest tail of each path that tells them apart
    assert cli.main(["runs", "compare", *map(str, runs), "--output", str(tmp_path / "cmp.png")]) == 0
    printed = capsys.readouterr().out
    assert "study-a" in printed and "study-b" in printed
