"""A study: its folder, its Optuna storage, sampler and pruner, the workers that run its trials, and
resuming after a crash.

The study folder holds search.yaml (the config every trial starts from), study.json (where the
storage is), trials/ (one normal run directory per trial), logs/ (one per worker process), and at the
end report.md, best.yaml and plots/. The trials themselves live in the storage: a SQLite file in the
folder by default, or any SQLAlchemy URL that several machines reach.

Counting (search/trials.py): `search.n_trials` counts trials that ran to an end (complete, pruned,
failed) plus those running. A trial whose worker died (SIGKILL, power loss, Ctrl-C) is marked failed
*and interrupted* and its values are queued again, so it is neither lost nor counted twice. Dead
workers are found two ways: on this machine by their process id (at once, on `--resume`), anywhere by
Optuna's heartbeat (a trial silent for GRACE_S seconds).
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.config import RunConfig, dump_config, load_saved_config
from tunesmith.errors import TunesmithError
from tunesmith.extras import require
from tunesmith.redact import has_masked_secret, redact
from tunesmith.search.objective import TrialFailed, TrialSetup, run_trial
from tunesmith.search.report import final_training, write_report
from tunesmith.search.space import check_search, current_values, grid_values
from tunesmith.search.trials import counted, counts

CONFIG_FILE = "search.yaml"
STUDY_FILE = "study.json"
STORAGE_ENV = "TUNESMITH_STUDY_STORAGE"  # the storage URL with its password, for a study saved with it masked
# A running trial writes a heartbeat every HEARTBEAT_S; one silent for GRACE_S is taken for dead.
# The grace covers a long validation pass or a slow storage round trip, not a training step.
HEARTBEAT_S = 10
GRACE_S = 120


@dataclass
class SearchResult:
    study_dir: Path
    counts: dict
    best_config: Path | None = None
    report: Path | None = None
    final_run: Path | None = None
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------
# Storage, sampler, pruner


def _quiet_optuna() -> None:
    optuna = require("optuna", "search", "hyperparameter search")

    # Trials print their own one-line outcome; Optuna's per-trial INFO lines and the tracebacks it logs
    # for failed trials (already recorded with their reason) would bury them.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # Autotrain's halving asks and tells trials itself (several rungs of one config); a run that dies with its
    # process leaves a running trial that the next autotrain, a new study, never resumes: no heartbeat needed.
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


def storage_url(info: dict) -> str:
    """study.json's storage URL. One written with a literal password was saved masked (secrets never go to
    disk): the real one comes from TUNESMITH_STUDY_STORAGE, which `tunesmith search` sets for its own
    workers and a user sets to resume in a new shell."""
    saved = info["storage"]
    if not has_masked_secret(saved):
        return saved
    real = os.environ.get(STORAGE_ENV)
    if real and redact(real) == saved:
        return real
    raise TunesmithError(
        f"the study's storage {saved} was saved with its password masked, and {STORAGE_ENV} does not hold it",
        where="search.storage",
        fix=f"export {STORAGE_ENV}='<the full URL with its password>' and run the command again; for new "
        "studies write the password as ${{VAR}} in search.storage (e.g. postgresql+psycopg://user:${{PGPASSWORD}}@host/db)",
    )


def default_storage(study_dir: Path) -> str:
    return f"sqlite:///{Path(study_dir).resolve() / 'study.db'}"


def open_storage(url: str):
    """An Optuna RDB storage with heartbeats; a URL that cannot be reached is one clear error."""
    import optuna

    expanded = os.path.expandvars(url)
    shown = redact(url)
    # SQLite: several worker processes write one file; wait for the lock instead of failing at once.
    engine = {"connect_args": {"timeout": 60}} if expanded.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        storage = optuna.storages.RDBStorage(
            expanded,
            engine_kwargs=engine,
            heartbeat_interval=HEARTBEAT_S,
            grace_period=GRACE_S,
            heartbeat_stale_trial_callback=_retry_stale,
        )
        if storage.engine.name == "sqlite":
            _serialise_sqlite(storage.engine)
        return storage
    except ModuleNotFoundError as exc:
        drivers: dict[str | None, str | None] = {
            "psycopg": "psycopg[binary]",
            "psycopg2": "psycopg2-binary",
            "pymysql": "pymysql",
            "MySQLdb": "mysqlclient",
        }
        driver = drivers.get(exc.name, exc.name)
        raise TunesmithError(
            f"the storage {shown} needs the Python driver {exc.name!r}, which is not installed",
            where="search.storage",
            fix=f"pip install {driver} (or pip install 'tunesmith[search]')",
        ) from None
    except Exception as exc:  # sqlalchemy's OperationalError, ArgumentError, ...: all say "cannot use it"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TunesmithError(
            f"cannot open the study storage {shown}: {redact(first)}",
            where="search.storage",
            fix="check that the database server runs and the URL's host, port, user and database are right "
            "(e.g. postgresql+psycopg://user:pw@localhost:5432/optuna), or leave search.storage "
            "unset for a SQLite file in the study directory",
        ) from None


def _serialise_sqlite(engine) -> None:
    """Start every SQLite transaction with BEGIN IMMEDIATE. Python's sqlite3 starts a transaction only
    at the first write, so two workers could both read a queued trial as WAITING and both run it (seen
    with two workers: trial 0 ran twice); taking the write lock first makes Optuna's read-check-write
    atomic, as SELECT ... FOR UPDATE does on PostgreSQL and MySQL (SQLAlchemy's pysqlite recipe)."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_connection, _record):
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the hooks (schema checks) would not have them


def make_sampler(config: RunConfig, space: dict, seed: int):
    import optuna

    search = config.search
    n = search.n_trials or 20
    # Model-based samplers start after a few random trials; Optuna's default of 10 would leave a short
    # study all random, so small studies use a third of their trials (at least 2) to explore.
    startup = max(2, min(10, n // 3))
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if search.sampler == "grid":
        return optuna.samplers.GridSampler(grid_values(space), seed=seed)
    if search.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, multivariate=True)
    if search.sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=1, warn_independent_sampling=False)
    if search.sampler == "nsga2":
        # A population of half the study gives at least two generations; 50 is Optuna's default.
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(2, min(50, n // 2)))
    if search.sampler == "gp":
        try:
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)
        except ImportError as exc:
            raise TunesmithError(
                f"the gp sampler cannot be used here: {exc}",
                where="search.sampler",
                fix="install torch and scipy, or use sampler: tpe",
            ) from None
    raise TunesmithError(f"unknown sampler {search.sampler!r}", where="search.sampler")


def make_pruner(config: RunConfig):
    import optuna

    search = config.search
    if search.pruner == "none" or len(search.objectives) > 1:
        return optuna.pruners.NopPruner()
    if search.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=search.pruner_startup_trials)
    # Resources are training steps; a trial reports at each validation pass, so one pass is the least.
    return optuna.pruners.HyperbandPruner(min_resource=max(1, config.train.eval_every or 1))


# ---------------------------------------------------------------------------------------------------
# Interrupted trials


def retry_interrupted(study, trial) -> bool:
    """Queue the values of a trial whose worker died again, once. (Optuna's heartbeat calls this after
    failing the trial; a finished trial takes no new attributes, so the queued copy's `retry_of` is what
    marks the original as interrupted.)"""
    if any(t.user_attrs.get("retry_of") == trial.number for t in study.get_trials(deepcopy=False)):
        return False
    study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
    return True


def _retry_stale(study, trial) -> None:
    """Optuna's heartbeat callback (it expects no result): queue a stale trial's values again, once."""
    retry_interrupted(study, trial)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A killed worker whose parent died too stays a zombie until init reaps it: dead all the same.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def recover(study) -> list[int]:
    """Running trials of dead workers on this machine, and interrupted trials not queued again yet: fail
    them as interrupted and queue their values. Returns their numbers."""
    import optuna
    from optuna.trial import TrialState

    host = socket.gethostname()
    recovered = []
    for trial in study.get_trials(deepcopy=False):
        worker = str(trial.user_attrs.get("worker", ""))
        name, _, pid = worker.rpartition(":")
        if trial.state == TrialState.RUNNING and name == host and pid.isdigit() and not _alive(int(pid)):
            try:
                study._storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
                study._storage.set_trial_user_attr(trial._trial_id, "reason", f"interrupted: worker {worker} died")
                study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:  # Optuna's heartbeat failed it first
                pass
            if retry_interrupted(study, trial):
                recovered.append(trial.number)
        elif trial.state == TrialState.FAIL and trial.user_attrs.get("interrupted") and retry_interrupted(study, trial):
            recovered.append(trial.number)
    return recovered


# ---------------------------------------------------------------------------------------------------
# The study folder


def read_study(study_dir: Path) -> tuple[RunConfig, dict]:
    study_dir = Path(study_dir)
    if not (study_dir / CONFIG_FILE).is_file() or not (study_dir / STUDY_FILE).is_file():
        raise TunesmithError(
            f"{study_dir} is not a study directory (no {CONFIG_FILE} and {STUDY_FILE})",
            where="--study-dir",
            fix="pass the folder `tunesmith search` printed when it started",
        )
    return load_saved_config(study_dir / CONFIG_FILE), json.loads((study_dir / STUDY_FILE).read_text())


def load_study(study_dir: Path, *, seed_offset: int = 0):
    """The study of a study folder with this process's sampler and pruner; also its config and space."""
    require("optuna", "search", "hyperparameter search")  # the first import of a resumed search
    import optuna

    _quiet_optuna()
    config, info = read_study(study_dir)
    space = check_search(config)
    storage = open_storage(storage_url(info))
    try:
        existing = optuna.load_study(study_name=info["study_name"], storage=storage)
    except KeyError:
        raise TunesmithError(
            f"the storage {redact(info['storage'])} has no study {info['study_name']!r}",
            where=str(Path(study_dir) / STUDY_FILE),
            fix="start the study again without --resume",
        ) from None
    # Each worker, and each resume, seeds its sampler apart: the same seed would replay the same values.
    seed = config.seed + 7919 * seed_offset + 104729 * len(existing.get_trials(deepcopy=False))
    study = optuna.load_study(
        study_name=info["study_name"],
        storage=storage,
        sampler=make_sampler(config, space, seed),
        pruner=make_pruner(config),
    )
    return study, config, space


def work(study_dir: Path, *, quota: int | None = None, deadline: float | None = None, index: int = 0) -> int:
    """One worker: run trials until its quota, the study's n_trials, the deadline or the grid ends.
    Returns the number of trials it ran."""
    study, config, space = load_study(study_dir, seed_offset=index)
    setup = TrialSetup(base=config, study_dir=Path(study_dir), space=space, defaults=current_values(config, space))
    sampler = study.sampler
    done = 0
    while quota is None or done < quota:
        if deadline is not None and time.time() >= deadline:
            break
        if config.search.n_trials is not None and counted(study) >= config.search.n_trials:
            break
        if hasattr(sampler, "is_exhausted") and sampler.is_exhausted(study):
            break
        study.optimize(lambda trial: run_trial(trial, setup), n_trials=1, catch=(TrialFailed,), gc_after_trial=True)
        done += 1
    return done


def _spawn(study_dir: Path, quotas: list[int | None], deadline: float | None) -> list[tuple[subprocess.Popen, Path]]:
    logs = study_dir / "logs"
    logs.mkdir(exist_ok=True)
    procs = []
    for i, quota in enumerate(quotas):
        log = logs / f"worker-{i}.log"
        cmd = [sys.executable, "-m", "tunesmith.search.worker", str(study_dir), "--index", str(i)]
        if quota is not None:
            cmd += ["--quota", str(quota)]
        if deadline is not None:
            cmd += ["--deadline", repr(deadline)]
        with open(log, "a", encoding="utf-8") as handle:
            procs.append((subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT), log))
    return procs


def _wait(procs, study_dir: Path) -> list[str]:
    """Wait for the worker processes, printing the study's progress as trials end."""
    import optuna

    _, info = read_study(study_dir)
    study = optuna.load_study(study_name=info["study_name"], storage=open_storage(storage_url(info)))
    shown = None
    try:
        while any(p.poll() is None for p, _ in procs):
            now = counts(study)
            if now != shown:
                print("trials: " + ", ".join(f"{k} {v}" for k, v in sorted(now.items())), flush=True)
                shown = now
            time.sleep(2)
    except KeyboardInterrupt:
        for p, _ in procs:
            p.send_signal(2)  # SIGINT: each worker marks its running trial interrupted
        for p, _ in procs:
            p.wait()
        raise
    problems = []
    for i, (p, log) in enumerate(procs):
        if p.returncode != 0:
            tail = [line for line in log.read_text(errors="replace").splitlines() if line.strip()][-3:]
            problems.append(f"worker {i} ended with code {p.returncode} (log {log}): " + " | ".join(tail))
    return problems


# ---------------------------------------------------------------------------------------------------
# The command


def _new_study_dir(config: RunConfig, study_dir: str | Path | None) -> Path:
    if study_dir:
        path = Path(study_dir)
        if path.exists() and any(path.iterdir()):
            raise TunesmithError(
                f"{path} already holds files",
                where="--study-dir",
                fix=f"continue that study with `tunesmith search --study-dir {path} --resume`, or choose a new folder",
            )
        path.mkdir(parents=True, exist_ok=True)
        return path
    from tunesmith.runs.rundir import RunDir

    return RunDir.create(config.output.dir, f"search-{config.name}").path


def _absolute_data(config: RunConfig) -> None:
    """Trials run from the study folder's config; data paths must not depend on the working directory."""
    for key in ("train", "validation", "test"):
        value = getattr(config.data, key)
        if value and Path(value).exists():
            setattr(config.data, key, str(Path(value).resolve()))


def start_study(config: RunConfig, study_dir: str | Path | None = None) -> Path:
    """Create the study folder and the study in its storage (or join a study of the same name there)."""
    require("optuna", "search", "hyperparameter search")  # the first import of a search
    import optuna

    from tunesmith import pipeline

    _quiet_optuna()
    space = check_search(config)
    pipeline.validate(config)  # model reference and every record, before any trial spends time
    path = _new_study_dir(config, study_dir or config.search.study_dir)
    config = config.model_copy(deep=True)
    _absolute_data(config)
    config.search.study_dir = str(path.resolve())
    url = config.search.storage or default_storage(path)
    name = config.search.study_name or config.name
    storage = open_storage(url)
    directions = list(config.search.objectives.values())
    study = optuna.create_study(storage=storage, study_name=name, directions=directions, load_if_exists=True)
    if [d.name.lower() for d in study.directions] != directions:
        raise TunesmithError(
            f"the storage already holds a study {name!r} with other objectives",
            where="search.study_name",
            fix="choose another search.study_name, or the same objectives to join it",
        )
    joined = len(study.get_trials(deepcopy=False))
    if joined:
        print(f"joining study {name!r} in {redact(url)}: {joined} trials so far")
    elif config.search.include_default and config.search.sampler != "grid":
        # (A grid visits the config's own values anyway when they are a grid point, and does not count
        # an enqueued trial as a visit, so it would run them twice.)
        values = current_values(config, space)
        if values:
            study.enqueue_trial(values, user_attrs={"default": True})
    (path / CONFIG_FILE).write_text(dump_config(config))
    if (
        redact(url) != url
    ):  # a literal secret: kept in this process's environment (the workers inherit it), never on disk
        os.environ[STORAGE_ENV] = url
    (path / STUDY_FILE).write_text(
        json.dumps({"storage": redact(url), "study_name": name, "directions": directions}, indent=2) + "\n"
    )
    print(f"study directory: {path}\nstorage: {redact(url)}, study {name!r}")
    return path


def run_search(
    config: RunConfig | None = None,
    *,
    study_dir: str | Path | None = None,
    resume: bool = False,
    workers: int | None = None,
    n_trials: int | None = None,
    timeout: float | None = None,
    final_train: bool | None = None,
) -> SearchResult:
    """Run (or with `resume`, continue) the study that `config.search` describes; write its report,
    best.yaml and plots; with `final_train`, retrain the best config on train+validation."""
    # 1. The study folder and its config (CLI values override the YAML's and are saved for later resumes).
    if resume:
        if study_dir is None:
            raise TunesmithError(
                "--resume needs the study folder", where="--study-dir", fix="tunesmith search --study-dir DIR --resume"
            )
        path = Path(study_dir)
        saved, _ = read_study(path)
    else:
        if config is None:
            raise TunesmithError("nothing to search", fix="pass a run config with a search: section")
        saved = config
    saved = saved.model_copy(deep=True)
    for key, value in (
        ("workers", workers),
        ("n_trials", n_trials),
        ("timeout", timeout),
        ("final_train", final_train),
    ):
        if value is not None:
            setattr(saved.search, key, value)
    if not resume:
        path = start_study(saved, study_dir)
    else:
        (path / CONFIG_FILE).write_text(dump_config(saved))
    started = time.time()
    deadline = started + saved.search.timeout if saved.search.timeout else None

    # 2. Recover trials of dead workers, then share what is left among the workers.
    study, config, _ = load_study(path)
    recovered = recover(study)
    if recovered:
        print(f"resuming: trials {', '.join(map(str, recovered))} were interrupted; their values run again")
    total = config.search.n_trials
    if config.search.sampler == "grid":  # a grid ends when every point ran
        size = math.prod(len(v) for v in grid_values(check_search(config)).values())
        total = size if total is None else min(total, size)
    remaining = None if total is None else max(0, total - counted(study))
    notes: list[str] = []
    n_workers = config.search.workers
    if remaining is not None:
        print(f"{counted(study)} of {total} trials done or running; {remaining} to run on {n_workers} worker(s)")
    if n_workers == 1 or remaining == 0:
        work(path, quota=remaining, deadline=deadline)
    else:
        quotas = (
            [None] * n_workers
            if remaining is None
            else [remaining // n_workers + (i < remaining % n_workers) for i in range(n_workers)]
        )
        problems = _wait(_spawn(path, [q for q in quotas if q != 0], deadline), path)
        notes += problems
    if deadline is not None and time.time() >= deadline and total is not None and counted(study) < total:
        notes.append(
            f"timeout: {saved.search.timeout:g} s passed after {counted(study)} of {total} trials; no more were started"
        )

    # 3. Report, best config, final training.
    result = SearchResult(study_dir=path, counts=counts(study), notes=notes)
    result.report, result.best_config = write_report(study, config, path, notes)
    if config.search.final_train and result.best_config is not None:
        result.final_run = final_training(study, config, path)
    if any(n.startswith("worker ") for n in notes):
        raise TunesmithError(
            "; ".join(n for n in notes if n.startswith("worker ")),
            where=str(path),
            fix="read the worker's log; `tunesmith search --study-dir DIR --resume` continues the study",
        )
    return result
