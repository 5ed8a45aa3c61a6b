"""Secrets never written: planted tokens and a database password, searched for everywhere afterwards.

A password-protected PostgreSQL server holds the Optuna study and the MLflow store; HF_TOKEN,
WANDB_API_KEY and MLFLOW_TRACKING_PASSWORD are set in the environment; a tag and the system prompt carry
more. After a tracked run, its resume and a two-worker search, every file written, the console output,
the MLflow params and tags and the Optuna trials are searched byte by byte for every planted value.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml
from conftest import postgres_bin

from tunesmith.cli import main
from tunesmith.errors import TunesmithError


def _yaml(config, path: Path) -> Path:
    """The config as the user wrote it (secrets included), not as tunesmith saves it."""
    path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    return path


def _runs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


HF_TOKEN = "hf_PlantedHubToken0123456789abcdefXYZ"
WANDB_KEY = "planted-wandb-key-5f3a9c0d1e2f3a4b5c6d7e8f"
MLFLOW_PASSWORD = "planted-mlflow-password-771"
DB_PASSWORD = "Planted-db-Pass-4242"
TAG_KEY = "planted-tag-api-key-0099"
SECRETS = (HF_TOKEN, WANDB_KEY, MLFLOW_PASSWORD, DB_PASSWORD, TAG_KEY)


@pytest.fixture()
def postgres_with_password():
    """A throwaway PostgreSQL cluster that asks for a password (scram-sha-256), on a free loopback port,
    with databases for the Optuna study and the MLflow store; yields a URL builder."""
    pytest.importorskip("psycopg")
    bindir = postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (make setup installs Debian's postgresql package as root)")
    folder = Path(tempfile.mkdtemp(prefix="tunesmith-pgpw-"))
    prefix: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        shutil.chown(folder, "nobody", "nogroup")
        prefix = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    pwfile = folder / "pw"
    pwfile.write_text(DB_PASSWORD + "\n")
    if os.geteuid() == 0:
        shutil.chown(pwfile, "nobody", "nogroup")
    data = folder / "data"
    env = {**os.environ, "PGPASSWORD": DB_PASSWORD}
    run = lambda *cmd: subprocess.run(
        prefix + list(cmd), check=True, capture_output=True, text=True, cwd=folder, env=env
    )  # noqa: E731
    run(
        str(bindir / "initdb"),
        "-D",
        str(data),
        "-U",
        "tuner",
        "--auth=scram-sha-256",
        f"--pwfile={pwfile}",
        "-E",
        "UTF8",
    )
    pwfile.unlink()
    run(
        str(bindir / "pg_ctl"),
        "-D",
        str(data),
        "-l",
        str(folder / "server.log"),
        "-w",
        "start",
        "-o",
        f"-p {port} -k {folder} -c listen_addresses=127.0.0.1",
    )
    try:
        for name in ("optuna", "mlflow"):
            run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "tuner", name)
        yield lambda db: f"postgresql+psycopg://tuner:{DB_PASSWORD}@127.0.0.1:{port}/{db}"
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def test_planted_secrets_reach_no_file_log_report_index_or_tracker(
    make_config, tmp_path, monkeypatch, capfd, postgres_with_password
):
    import optuna
    from mlflow.tracking import MlflowClient

    url = postgres_with_password
    for name, value in (
        ("HF_TOKEN", HF_TOKEN),
        ("WANDB_API_KEY", WANDB_KEY),
        ("MLFLOW_TRACKING_PASSWORD", MLFLOW_PASSWORD),
    ):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("TUNESMITH_STUDY_STORAGE", raising=False)
    fast = [
        "train.max_steps=2",
        "train.eval_every=2",
        "eval.compare_base=false",
        "eval.max_samples=2",
        f"track.tags={{dataset: tickets, api_key: {TAG_KEY}, hub: {HF_TOKEN}}}",
        f"data.system_prompt=You are a helpful assistant. (key {WANDB_KEY})",
    ]

    # 1. A run tracked in MLflow on the password-protected server, and in TensorBoard.
    run_yaml = _yaml(
        make_config(
            *fast,
            "name=secret-run",
            "track.report_to=[tensorboard, mlflow]",
            f"track.mlflow_tracking_uri={url('mlflow')}",
        ),
        tmp_path / "run.yaml",
    )
    assert main(["train", str(run_yaml)]) == 0
    (run,) = _runs(tmp_path / "runs")
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["track"]["mlflow_tracking_uri"].startswith("postgresql+psycopg://tuner:***@127.0.0.1:")
    assert saved["track"]["tags"] == {"dataset": "tickets", "api_key": "***", "hub": "***"}
    # The same config given again resumes with its password (the saved copy no longer has it).
    assert main(["train", str(run_yaml), "--resume", str(run)]) == 0

    # 2. A search whose study lives on the same server, two worker processes, one trial each.
    search_yaml = _yaml(
        make_config(
            *fast,
            "name=secret-search",
            f"search.storage={url('optuna')}",
            "search.n_trials=2",
            "search.pruner=none",
            "search.workers=2",
            f"track.mlflow_tracking_uri={url('mlflow')}",
            "search.space={train.learning_rate: {type: log-float, low: 1.0e-3, high: 1.0e-2}}",
        ),
        tmp_path / "search.yaml",
    )
    assert main(["search", str(search_yaml), "--study-dir", str(tmp_path / "study")]) == 0
    study_file = json.loads((tmp_path / "study" / "study.json").read_text())
    assert study_file["storage"].startswith("postgresql+psycopg://tuner:***@")
    study = optuna.load_study(study_name="secret-search", storage=url("optuna"))
    assert len([t for t in study.trials if t.state.name == "COMPLETE"]) == 2
    assert len({t.user_attrs.get("worker") for t in study.trials}) == 2  # both workers reached the storage

    # 3. Nothing written holds a secret: every file under the output folders, byte by byte...
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p not in (run_yaml, search_yaml)]  # not the user's own
    assert any(p.name == "index.sqlite" for p in written) and any("tfevents" in p.name for p in written)
    assert any(p.parent.name == "logs" for p in written)  # the workers' logs
    for path in written:
        data = path.read_bytes()
        for secret in SECRETS:
            assert secret.encode() not in data, (secret, path)
    # ... the console (the workers' output included: they write to logs/ and the parent prints progress) ...
    out, err = capfd.readouterr()
    for secret in SECRETS:
        assert secret not in out and secret not in err, secret
    # ... and what the trackers and the study storage hold.
    client = MlflowClient(url("mlflow"))
    (experiment,) = [e for e in client.search_experiments() if e.name == "tunesmith"]
    (mlrun,) = client.search_runs([experiment.experiment_id])
    held = json.dumps([mlrun.data.params, mlrun.data.tags, mlrun.info.run_name])
    held += json.dumps([[t.params, t.user_attrs, t.system_attrs] for t in study.trials], default=str)
    held += json.dumps(study.user_attrs, default=str)
    for secret in SECRETS:
        assert secret not in held, secret
    assert mlrun.data.params["track.mlflow_tracking_uri"].startswith("postgresql+psycopg://tuner:***@")


def test_redaction_masks_what_sqlalchemy_would_read_as_the_password(monkeypatch):
    from tunesmith.config import dump_config, load_config
    from tunesmith.redact import redact
    from tunesmith.runs.trackers import mlflow_uri
    from tunesmith.search.study import STORAGE_ENV, storage_url

    monkeypatch.setenv("PGPASSWORD", DB_PASSWORD)
    cases = {
        "postgresql://user:pass@host/db": "postgresql://user:***@host/db",
        "postgresql+psycopg://u:p@ss@h:5432/d?x=1": "postgresql+psycopg://u:***@h:5432/d?x=1",  # an unencoded @
        "postgresql://u:pa/s?s#w@h/db": "postgresql://u:***@h/db",  # SQLAlchemy reads / ? # as password too
        "postgresql://u:${PGPASSWORD}@h/db": "postgresql://u:${PGPASSWORD}@h/db",  # a reference is no secret
        f"expanded postgresql://u:{DB_PASSWORD}@h/db": "expanded postgresql://u:***@h/db",
        f"a message quoting {DB_PASSWORD} alone": "a message quoting *** alone",  # PGPASSWORD's value
        "sqlite:////srv/mlflow.db": "sqlite:////srv/mlflow.db",
        "https://bob@mlflow.example.org/": "https://bob@mlflow.example.org/",
    }
    assert {text: redact(text) for text in cases} == cases
    # A saved config cannot reconnect by itself, and says how to.
    masked = "postgresql+psycopg://tuner:***@db/optuna"
    monkeypatch.delenv(STORAGE_ENV, raising=False)
    with pytest.raises(TunesmithError) as err:
        storage_url({"storage": masked})
    assert STORAGE_ENV in err.value.fix and err.value.where == "search.storage"
    monkeypatch.setenv(STORAGE_ENV, "postgresql+psycopg://tuner:hunter2@db/optuna")
    assert storage_url({"storage": masked}) == "postgresql+psycopg://tuner:hunter2@db/optuna"
    config = load_config(None, ["track.mlflow_tracking_uri=postgresql://u:hunter2@h/mlflow"])
    saved = load_config(
        None, [f"track.mlflow_tracking_uri={yaml.safe_load(dump_config(config))['track']['mlflow_tracking_uri']}"]
    )
    with pytest.raises(TunesmithError, match="masked") as err:
        mlflow_uri(saved)
    assert "--resume" in err.value.fix and "${" in err.value.fix
    assert (
        mlflow_uri(load_config(None, ["track.mlflow_tracking_uri=postgresql://u:${PGPASSWORD}@h/m"]))
        == f"postgresql://u:{DB_PASSWORD}@h/m"
    )  # expanded at use
