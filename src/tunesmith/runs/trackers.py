"""External experiment trackers: TensorBoard, MLflow and Weights & Biases, through accelerate's trackers.

`track.report_to` names them. Each gets the config once, as flat dotted params with secrets stripped,
every record the loop writes to metrics.jsonl (loss, lr, grad_norm, eval_loss, ...) at its step, and
the final test metrics (`test/<metric>`, `base/<metric>`) at the end. metrics.jsonl stays the record of
truth: a tracker that fails mid-run (a server gone away) is dropped with a warning and training goes on,
while one that cannot start (package missing, store unreachable) stops the run before any weights load.

The packages are an optional extra (`pip install 'tunesmith[track]'`); nothing here imports them at
module level.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

from tunesmith.errors import TunesmithError
from tunesmith.extras import require as require_extra
from tunesmith.redact import SECRET_KEY, has_masked_secret, redact, redact_tree  # noqa: F401  (redact is re-exported)

TRACKERS = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}  # name -> module it needs
EXTRA = "pip install 'tunesmith[track]'"

# ---------------------------------------------------------------------------------------------------
# Params: the config, flat, with secrets stripped (by tunesmith/redact.py, the one redaction, which also
# cleans config.yaml, summaries, study files and errors)


def flatten(tree: dict, prefix: str = "") -> dict:
    """{'train': {'learning_rate': 1e-4}} -> {'train.learning_rate': 1e-4}: the config's sections are
    opened, one level, as RunConfig nests them; lists and mappings inside a field (data.split,
    search.space) become JSON text, since trackers take scalars only."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and prefix == "":
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, (dict, list, tuple)):
            out[name] = json.dumps(value, default=str)
        else:
            out[name] = value
    return out


def safe_params(config) -> dict:
    """The run config (a RunConfig, or a saved config.yaml's mapping) as flat params for the trackers,
    the index and `runs compare`: keys that name secrets are dropped, secrets inside values are masked."""
    flat = flatten(redact_tree(config if isinstance(config, dict) else config.model_dump(mode="json")))
    return {k: redact(v) if isinstance(v, str) else v for k, v in flat.items() if not SECRET_KEY.search(k.rsplit(".", 1)[-1])}


def numeric(record: dict) -> dict:
    """The finite numbers of a metrics record, without its step (trackers take the step apart)."""
    return {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(v)}


# ---------------------------------------------------------------------------------------------------
# Starting the trackers


def require(names: list[str]) -> None:
    """Every tracker asked for can be imported, else an error naming the extra that installs them (all of them)."""
    for name in names:
        require_extra(TRACKERS[name], "track", f"the {name} tracker", where="track.report_to",
                      alternative=f"remove {name} from track.report_to")


def mlflow_uri(config) -> str:
    """track.mlflow_tracking_uri ($VARs expanded, so a password can stay in the environment), else
    MLFLOW_TRACKING_URI, else a SQLite file beside the runs index."""
    uri = config.track.mlflow_tracking_uri
    if has_masked_secret(uri):  # a resumed run's config.yaml: its literal password was never written
        raise TunesmithError(f"track.mlflow_tracking_uri {uri} was saved with its password masked (tunesmith never writes "
                             "secrets to disk)", where="track.mlflow_tracking_uri",
                             fix="write the password as an environment variable reference, e.g. "
                                 "postgresql://user:${MLFLOW_DB_PASSWORD}@host/db, or pass the original config again: "
                                 "tunesmith train run.yaml --resume RUN_DIR")
    return (os.path.expandvars(uri) if uri else None) or os.environ.get("MLFLOW_TRACKING_URI") \
        or f"sqlite:///{(Path(config.output.dir) / 'mlflow.db').resolve()}"


def _make(name: str, run_path: Path, config, run_name: str, saved: dict):
    """The accelerate tracker for `name`, not yet started. `saved` holds ids from an earlier start of the
    same run (resume continues the same MLflow / W&B run)."""
    from accelerate import tracking

    tags = redact_tree(dict(config.track.tags))
    if name == "tensorboard":
        # runs/<id>/tensorboard/: `tensorboard --logdir runs/` shows every run, named by its folder.
        return tracking.TensorBoardTracker("tensorboard", run_path)
    if name == "mlflow":
        import mlflow

        uri = mlflow_uri(config)
        mlflow.set_tracking_uri(uri)
        # A new experiment in a local SQLite store keeps its artifacts beside the database, not in the cwd.
        artifacts = str((Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve()) if uri.startswith("sqlite:///") else None
        return tracking.MLflowTracker(experiment_name=config.track.experiment, logging_dir=artifacts,
                                      run_id=saved.get("mlflow_run_id"), tags=tags or None, run_name=run_name)
    if name == "wandb":
        kwargs = {"name": run_name, "dir": str(run_path), "entity": config.track.wandb_entity,
                  "tags": [f"{k}:{v}" for k, v in tags.items()] or None}
        if saved.get("wandb_run_id"):
            kwargs.update(id=saved["wandb_run_id"], resume="allow")
        return tracking.WandBTracker(config.track.experiment, **kwargs)
    raise ValueError(name)


def _start(name: str, tracker) -> None:
    """Start one tracker; a failure is the user's to fix (unreachable store, not logged in)."""
    try:
        if name == "mlflow":
            _start_mlflow(tracker)
        else:
            tracker.start()
    except TunesmithError:
        raise
    except Exception as exc:
        fixes = {
            "mlflow": "check track.mlflow_tracking_uri (sqlite:///path/mlflow.db needs no server; http(s):// needs `mlflow server` running)",
            "wandb": "run `wandb login`, or set WANDB_MODE=offline to log to disk and `wandb sync` later",
            "tensorboard": f"check that the run folder is writable; {EXTRA}",
        }
        raise TunesmithError(f"cannot start the {name} tracker: {redact(f'{type(exc).__name__}: {exc}')}",
                             where="track.mlflow_tracking_uri" if name == "mlflow" else "track.report_to", fix=fixes[name]) from None


def _start_mlflow(tracker) -> None:
    from mlflow.exceptions import MlflowException

    try:
        tracker.start()
    except MlflowException as exc:
        # Two search workers creating the experiment at once: the loser finds it on a second look.
        if "already exists" not in str(exc).lower():
            raise
        tracker.start()


class Trackers:
    """The started trackers of one run. Calls never raise: a tracker that fails is dropped with a warning."""

    def __init__(self, run_path: Path, config, *, resumed: bool):
        names = list(dict.fromkeys(config.track.report_to))
        require(names)
        self.ids_path = Path(run_path) / "trackers.json"
        saved = json.loads(self.ids_path.read_text()) if resumed and self.ids_path.exists() else {}
        run_name = redact(config.track.run_name or Path(run_path).name)  # shown in the trackers like a param
        self.active: dict = {}
        try:
            for name in names:
                tracker = _make(name, Path(run_path), config, run_name, saved)
                _start(name, tracker)
                self.active[name] = tracker
        except BaseException:
            self.finish(failed=True)
            raise
        from tunesmith.runs.atomic import atomic_write_text  # a kill mid-write must not leave a torn file to resume with

        atomic_write_text(self.ids_path, json.dumps(self._ids(), indent=2) + "\n")
        self._call("store_init_configuration", safe_params(config))

    def _ids(self) -> dict:
        ids = {}
        if "mlflow" in self.active:
            ids["mlflow_run_id"] = self.active["mlflow"].active_run.info.run_id
            ids["mlflow_tracking_uri"] = redact(__import__("mlflow").get_tracking_uri())
        if "wandb" in self.active:
            ids["wandb_run_id"] = self.active["wandb"].run.id
        return ids

    def _call(self, method: str, *args, **kwargs) -> None:
        for name, tracker in list(self.active.items()):
            try:
                getattr(tracker, method)(*args, **kwargs)
            except Exception as exc:
                warnings.warn(f"the {name} tracker failed ({redact(str(exc))}); it gets nothing more from this run, "
                              "metrics.jsonl still has everything", stacklevel=2)
                self.active.pop(name)

    def log(self, record: dict) -> None:
        values = numeric(record)
        if values:
            self._call("log", values, step=record.get("step"))

    def finish(self, *, failed: bool = False, interrupted: bool = False) -> None:
        """Close every tracker; MLflow's run is ended as FAILED / KILLED when the run did not complete."""
        for name, tracker in list(self.active.items()):
            try:
                if name == "mlflow" and (failed or interrupted):
                    import mlflow

                    mlflow.end_run(status="KILLED" if interrupted else "FAILED")
                elif name == "wandb" and (failed or interrupted):
                    tracker.run.finish(exit_code=1)
                else:
                    tracker.finish()
            except Exception as exc:
                warnings.warn(f"the {name} tracker did not close cleanly: {redact(str(exc))}", stacklevel=2)
        self.active = {}
