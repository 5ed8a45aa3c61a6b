"""Hyperparameter search on a real Optuna storage (SQLite; one test on a real PostgreSQL server), each
trial a real `pipeline.train` run of a tiny BERT classifier built from a config with the real MiniLM
tokenizer: every sampler and pruner, failed trials, resume after SIGKILL, two workers, the report, the
final training, and one message for each kind of bad input."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import pytest
from conftest import EXAMPLES, postgres_bin

from tunesmith.config import dump_config, load_config
from tunesmith.errors import TunesmithError

DEBIAN = EXAMPLES / "data" / "debian_sections.csv"


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    import torch
    from transformers import AutoModel, AutoTokenizer, BertConfig

    from tunesmith.models.resolve import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("all-minilm-l6-v2").path)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-bert")
    AutoModel.from_config(
        BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=128,
        )
    ).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def sections(tmp_path_factory) -> Path:
    keep = {"database", "games", "mail", "sound"}
    rows = [r for r in csv.DictReader(DEBIAN.open()) if r["label"] in keep][:160]
    path = tmp_path_factory.mktemp("data") / "sections.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text", "label", "package"])
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture()
def search_config(tmp_path, tiny_bert, sections):
    def build(*overrides: str):
        return load_config(
            None,
            [
                "task=text-classification",
                f"model.name={tiny_bert}",
                f"data.train={sections}",
                "data.max_length=48",
                f"output.dir={tmp_path / 'runs'}",
                "train.batch_size=16",
                "train.max_steps=4",
                "train.eval_every=1",
                "train.log_every=1",
                "train.learning_rate=1e-3",
                "train.precision=fp32",
                "method.name=full",
                "search.n_trials=3",
                "search.pruner=none",
                *overrides,
            ],
        )

    return build


def trials_of(study_dir: Path) -> list:
    from tunesmith.search.study import load_study

    study, _, _ = load_study(study_dir)
    return study.get_trials(deepcopy=False)


LR_WD = "search.space={train.learning_rate: {type: log-float, low: 1.0e-4, high: 3.0e-2}, train.weight_decay: {type: float, low: 0, high: 0.1}}"


# ---------------------------------------------------------------------------------------------------
# Bad input: one message each, before any trial runs


@pytest.mark.parametrize(
    "overrides, where, says, fix",
    [
        (
            ["search.space={train.learning_rat: {type: log-float, low: 1.0e-5, high: 1.0e-3}}"],
            "search.space.train.learning_rat",
            "no such config key",
            "did you mean 'train.learning_rate'",
        ),
        (
            ["search.space={learning_rate: {type: log-float, low: 1.0e-5, high: 1.0e-3}}"],
            "search.space.learning_rate",
            "no such config key",
            "train.learning_rate",
        ),
        (
            ["search.space={train.learning_rate: {type: log-float, low: 1.0e-3, high: 1.0e-5}}"],
            "search.space.train.learning_rate",
            "empty range",
            "swap",
        ),
        (
            ["search.space={method.r: {type: int, low: 8, high: 8}}"],
            "search.space.method.r",
            "empty range",
            "method.r: 8",
        ),
        (
            ["search.space={method.r: {type: categorical, choices: [8]}}"],
            "search.space.method.r",
            "one choice",
            "two or more",
        ),
        (
            ["search.space={train.learning_rate: {type: log-float, low: 0, high: 1.0e-3}}"],
            "search.space.train.learning_rate",
            "low > 0",
            "type: float",
        ),
        (
            ["search.space={method.dropout: {type: float, low: 0, high: 1.5}}"],
            "search.space.method.dropout",
            "does not fit",
            "accepts",
        ),
        (
            ["search.space={output.dir: {type: categorical, choices: [a, b]}}"],
            "search.space.output.dir",
            "cannot be searched",
            "",
        ),
        (
            ["search.objectives={acuracy: maximize}"],
            "search.objectives",
            "does not produce the metric 'acuracy'",
            "did you mean 'accuracy'",
        ),
        (["search.objectives={rougeL: maximize}"], "search.objectives", "does not produce", "f1_macro"),
        (
            ["search.objectives={eval_loss: minimize, trainable_parameters: minimize}", "search.pruner=median"],
            "search.pruner",
            "single objective",
            "pruner: none",
        ),
        (
            ["search.objectives={eval_loss: minimize, train_seconds: minimize}", "search.sampler=cmaes"],
            "search.sampler",
            "single objective",
            "nsga2",
        ),
        (
            [LR_WD, "search.sampler=grid"],
            "search.space.train.learning_rate",
            "grid sampler needs a finite set",
            "add a step",
        ),
        (["data.split=[0.9, 0.0, 0.1]"], "data.split", "validation split", "data.validation"),
    ],
)
def test_bad_search_input_is_one_clear_message(search_config, overrides, where, says, fix):
    from tunesmith.search.space import check_search

    with pytest.raises(TunesmithError) as caught:
        check_search(search_config(*overrides))
    assert caught.value.where == where, caught.value.render()
    assert says in caught.value.message, caught.value.render()
    assert fix in (caught.value.fix or ""), caught.value.render()


def test_a_storage_that_cannot_be_reached_is_one_message(search_config, tmp_path):
    from tunesmith.search.study import run_search

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = search_config(f"search.storage=postgresql+psycopg://tuner:s3cret@127.0.0.1:{port}/optuna")
    with pytest.raises(TunesmithError) as caught:
        run_search(config, study_dir=tmp_path / "study")
    assert caught.value.where == "search.storage" and "cannot open the study storage" in caught.value.message
    assert "s3cret" not in caught.value.render() and "tuner:***@" in caught.value.message


def test_cli_reports_bad_search_input_without_a_traceback(search_config, tmp_path, capsys):
    from tunesmith.cli import main

    path = tmp_path / "bad.yaml"
    path.write_text(dump_config(search_config("search.space={method.r: {type: categorical, choices: [8]}}")))
    assert main(["search", str(path)]) == 2
    err = capsys.readouterr().err
    assert "search.space.method.r" in err and "one choice" in err and "Traceback" not in err
    assert main(["search", "--study-dir", str(tmp_path / "nothing"), "--resume"]) == 2
    assert "not a study directory" in capsys.readouterr().err


def test_default_space_is_lora_aware(search_config):
    from tunesmith.search.space import check_search

    lora = check_search(search_config("method.name=lora", "train.max_steps=null"))
    assert (lora["train.learning_rate"].low, lora["train.learning_rate"].high) == (1e-4, 5e-4)
    assert lora["train.learning_rate"].type == "log-float"
    assert {"method.r", "method.alpha", "method.dropout", "train.epochs"} <= set(lora)
    full = check_search(search_config("method.name=full", "train.max_steps=null"))
    assert full["train.learning_rate"].high <= 1e-4 and "method.r" not in full
    # With a fixed step count, epochs would change nothing: not searched.
    assert "train.epochs" not in check_search(search_config("method.name=lora"))


# ---------------------------------------------------------------------------------------------------
# Samplers and pruners on real trials


@pytest.mark.parametrize("sampler", ["random", "tpe", "gp", "cmaes"])
def test_single_objective_samplers_run_real_trials(search_config, sampler):
    from optuna.trial import TrialState

    from tunesmith.search.study import run_search

    result = run_search(search_config(LR_WD, f"search.sampler={sampler}"))
    trials = trials_of(result.study_dir)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert trials[0].user_attrs["default"] and trials[0].params["train.learning_rate"] == pytest.approx(1e-3)
    assert len({t.params["train.learning_rate"] for t in trials}) == 3  # the sampler proposed new values
    for t in trials:
        assert 1e-4 <= t.params["train.learning_rate"] <= 3e-2
        run = Path(t.user_attrs["run_dir"])
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] == "completed" and run.parent == result.study_dir / "trials"
        config = load_config(run / "config.yaml")
        assert config.train.learning_rate == pytest.approx(t.params["train.learning_rate"])
        # The objective is the validation loss of the kept (best) pass of that run.
        passes = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if "eval_loss" in line]
        assert t.values[0] == pytest.approx(min(p["eval_loss"] for p in passes))


def test_grid_visits_every_point_once_and_stops(search_config):
    from tunesmith.search.study import run_search

    config = search_config(
        "search.sampler=grid",
        "search.n_trials=20",
        "search.space={train.learning_rate: {type: categorical, choices: [1.0e-3, 1.0e-2]}, "
        "train.weight_decay: {type: float, low: 0, high: 0.1, step: 0.1}}",
    )
    result = run_search(config)
    trials = trials_of(result.study_dir)
    points = {(t.params["train.learning_rate"], t.params["train.weight_decay"]) for t in trials}
    assert len(trials) == 4 and points == {(1e-3, 0.0), (1e-3, 0.1), (1e-2, 0.0), (1e-2, 0.1)}
    assert sum(bool(t.user_attrs.get("default")) for t in trials) == 1  # lr 1e-3, decay 0: the config's own


def test_nsga2_two_objectives_give_a_pareto_front(search_config):
    from tunesmith.search.study import run_search

    config = search_config(
        "method.name=lora",
        "method.target_modules=[query, value]",
        "search.sampler=nsga2",
        "search.n_trials=4",
        "search.objectives={eval_loss: minimize, trainable_parameters: minimize}",
        "search.space={method.r: {type: categorical, choices: [1, 16]}, "
        "train.learning_rate: {type: log-float, low: 1.0e-3, high: 3.0e-2}}",
    )
    result = run_search(config)
    trials = trials_of(result.study_dir)
    assert len(trials) == 4 and all(len(t.values) == 2 for t in trials)
    sizes = {t.params["method.r"]: t.values[1] for t in trials}
    if len(sizes) == 2:
        assert sizes[1] < sizes[16]  # the cost objective is the real adapter size
    report = (result.study_dir / "report.md").read_text()
    assert "## Pareto front" in report and (result.study_dir / "plots" / "pareto_front.png").stat().st_size > 1000


def test_median_pruner_stops_a_trial_behind_the_first(search_config, tmp_path):
    from optuna.trial import TrialState

    from tunesmith.search.study import load_study, run_search, start_study

    # Trial 0 runs the config's lr 1e-3; trial 1, queued with lr 1e-7, barely moves, so its first
    # validation loss is behind trial 0's at that step.
    config = search_config(
        "search.n_trials=2",
        "search.pruner=median",
        "search.pruner_startup_trials=1",
        "search.space={train.learning_rate: {type: log-float, low: 1.0e-7, high: 1.0e-2}}",
    )
    study_dir = start_study(config, tmp_path / "study")
    load_study(study_dir)[0].enqueue_trial({"train.learning_rate": 1e-7})
    result = run_search(study_dir=study_dir, resume=True)
    trials = {t.params["train.learning_rate"]: t for t in trials_of(result.study_dir)}
    assert trials[1e-3].state == TrialState.COMPLETE and len(trials[1e-3].intermediate_values) == 4
    pruned = trials[1e-7]
    assert pruned.state == TrialState.PRUNED and list(pruned.intermediate_values) == [1]
    summary = json.loads((Path(pruned.user_attrs["run_dir"]) / "summary.json").read_text())
    assert summary["status"] == "pruned" and "median pruner" in summary["reason"]
    assert "| pruned |" in (result.study_dir / "report.md").read_text()


def test_hyperband_pruner_is_fed_every_validation_pass(search_config):
    from optuna.pruners import HyperbandPruner
    from optuna.trial import TrialState

    from tunesmith.search.study import load_study, run_search

    result = run_search(search_config(LR_WD, "search.pruner=hyperband", "search.n_trials=4", "search.sampler=random"))
    study, _, _ = load_study(result.study_dir)
    assert isinstance(study.pruner, HyperbandPruner)
    for t in study.get_trials(deepcopy=False):
        assert t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        steps = list(t.intermediate_values)
        assert steps == list(range(1, len(steps) + 1)) and steps  # one report per validation pass
        if t.state == TrialState.COMPLETE:
            assert steps == [1, 2, 3, 4]


def test_a_failing_trial_is_recorded_and_the_study_goes_on(search_config):
    from optuna.trial import TrialState

    from tunesmith.search.study import run_search

    config = search_config(
        "search.sampler=grid",
        "train.max_grad_norm=null",
        "search.space={train.learning_rate: {type: categorical, choices: [1.0e-3, 1.0e+30]}}",
    )
    result = run_search(config)
    trials = {t.params["train.learning_rate"]: t for t in trials_of(result.study_dir)}
    failed = trials[1e30]
    assert failed.state == TrialState.FAIL and "diverged" in failed.user_attrs["reason"]
    assert trials[1e-3].state == TrialState.COMPLETE
    summary = json.loads((Path(failed.user_attrs["run_dir"]) / "summary.json").read_text())
    assert summary["status"] == "failed" and "NaN" in summary["reason"]
    best = load_config(result.best_config)
    assert best.train.learning_rate == pytest.approx(1e-3)


def test_task_metric_objective_report_plots_and_final_training(search_config, tmp_path):
    from tunesmith.search.study import run_search
    from tunesmith.taskcards import TASKS

    config = search_config(LR_WD, "search.objectives={f1_macro: maximize}", "search.final_train=true")
    result = run_search(config, study_dir=tmp_path / "study")
    trials = trials_of(result.study_dir)
    for t in trials:
        scored = json.loads((Path(t.user_attrs["run_dir"]) / "validation_metrics.json").read_text())
        assert t.values[0] == pytest.approx(scored["f1_macro"])
        # The table of metrics the objectives may name matches what the task really reports.
        produced = {k for k, v in scored.items() if isinstance(v, float)}
        assert produced == set(TASKS["text-classification"].metrics) - {"pearson", "spearman", "ndcg@10", "mrr@10"}
    best = max(trials, key=lambda t: t.values[0])
    best_yaml = load_config(result.best_config)
    assert best_yaml.train.learning_rate == pytest.approx(best.params["train.learning_rate"])
    assert best_yaml.output.dir == config.output.dir and best_yaml.search.objectives == {"f1_macro": "maximize"}
    report = (result.study_dir / "report.md").read_text()
    assert f"Trial {best.number}: f1_macro" in report and report.count("| complete |") == 3
    for plot in ("optimization_history.png", "param_importances.png"):
        assert (result.study_dir / "plots" / plot).stat().st_size > 1000
    final = json.loads((result.final_run / "summary.json").read_text())
    data = json.loads((Path(best.user_attrs["run_dir"]) / "summary.json").read_text())["data"]
    assert final["data"] == {"train": data["train"] + data["validation"], "validation": 0, "test": data["test"]}
    # The final run's test accuracy, tuned and base, is the share of right answers in the predictions it wrote.
    written = json.loads((result.final_run / "test_predictions.json").read_text())
    for side in ("tuned", "base"):
        rows = written[side]
        assert len(rows) == data["test"] == final[side]["test_samples"], side
        right = sum(r["prediction"] == r["reference"] for r in rows)
        assert final[side]["accuracy"] == pytest.approx(right / len(rows)), side


def test_task_metrics_of_chat_match_the_table(make_config, tmp_path):
    from tunesmith.search.study import run_search
    from tunesmith.taskcards import TASKS

    config = make_config(
        "search.objectives={rougeL: maximize}",
        "search.n_trials=1",
        "search.pruner=none",
        "train.max_steps=2",
        "eval.max_samples=2",
        "eval.max_new_tokens=4",
        "search.space={train.learning_rate: {type: log-float, low: 1.0e-3, high: 1.0e-2}}",
    )
    result = run_search(config, study_dir=tmp_path / "study")
    (trial,) = trials_of(result.study_dir)
    scored = json.loads((Path(trial.user_attrs["run_dir"]) / "validation_metrics.json").read_text())
    assert {k for k, v in scored.items() if isinstance(v, float)} == set(TASKS["chat"].metrics)


# ---------------------------------------------------------------------------------------------------
# Crashes and workers


def _cli(*args: str, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, "-m", "tunesmith.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        **kwargs,
    )


def test_two_workers_killed_then_resumed_lose_no_trial_and_repeat_none(search_config, tmp_path):
    """`--workers 2` on the SQLite default storage, the whole process group killed with SIGKILL (no
    handler runs, as in a power cut) while trials train, then `--resume`."""
    import optuna
    from optuna.trial import TrialState

    config = search_config(
        LR_WD, "search.sampler=random", "search.n_trials=4", "train.max_steps=20", "train.eval_every=10"
    )
    path = tmp_path / "search.yaml"
    path.write_text(dump_config(config))
    study_dir = tmp_path / "study"
    search = _cli("search", str(path), "--study-dir", str(study_dir), "--workers", "2", start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        if (study_dir / "study.json").exists():
            info = json.loads((study_dir / "study.json").read_text())
            trials = optuna.load_study(study_name=info["study_name"], storage=info["storage"]).trials
            states = [t.state for t in trials]
            # Kill once a running trial has drawn its whole point (lr and wd), which its rerun must repeat, and
            # started under a second ago: still loading its model, so it is certainly running at the kill.
            drawn = [
                t
                for t in trials
                if t.state == TrialState.RUNNING
                and len(t.params) == 2
                and (datetime.now() - t.datetime_start).total_seconds() < 1.0
            ]
            if TrialState.COMPLETE in states and drawn:
                break
        assert search.poll() is None, search.stdout.read()[-3000:]
        time.sleep(0.1)
    else:
        pytest.fail("no trial finished while another ran")
    os.killpg(search.pid, signal.SIGKILL)
    search.wait()
    before = {t.number: t for t in trials_of(study_dir)}
    finished = {n: Path(t.user_attrs["run_dir"]) for n, t in before.items() if t.state == TrialState.COMPLETE}
    stamps = {n: (run / "summary.json").stat().st_mtime_ns for n, run in finished.items()}
    killed = sorted(n for n, t in before.items() if t.state == TrialState.RUNNING)
    assert killed and finished

    resumed = _cli("search", "--study-dir", str(study_dir), "--resume")
    out = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, out[-3000:]
    assert f"trials {', '.join(map(str, killed))} were interrupted" in out

    trials = trials_of(study_dir)
    interrupted = {t.number: t for t in trials if t.user_attrs.get("interrupted")}
    assert sorted(interrupted) == killed and all(t.state == TrialState.FAIL for t in interrupted.values())
    assert all("died" in t.user_attrs["reason"] for t in interrupted.values())
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 4  # n_trials: the interrupted ones do not count, their reruns do
    for number, lost in interrupted.items():
        reruns = [t for t in trials if t.user_attrs.get("retry_of") == number]
        assert len(reruns) == 1 and reruns[0].state == TrialState.COMPLETE
        # Every drawn value is repeated exactly. (A second worker's trial started in the last 0.1 s before the
        # kill may have drawn none, or only the learning rate: its rerun draws the rest.)
        assert {name: reruns[0].params[name] for name in lost.params} == lost.params
    assert any(len(lost.params) == 2 for lost in interrupted.values())  # the kill waited for a whole point
    assert not any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials)
    # Trials that finished before the kill were not run again; every trial number has one run directory.
    assert {n: (run / "summary.json").stat().st_mtime_ns for n, run in finished.items()} == stamps
    # (A trial killed while loading has no run directory yet.)
    names = [p.name.rsplit("-", 1)[-1] for p in (study_dir / "trials").iterdir() if p.is_dir()]
    assert len(names) == len(set(names))
    assert {f"trial{t.number:04d}" for t in complete} <= set(names) <= {f"trial{t.number:04d}" for t in trials}
    # The queued default trial ran to the end once (when the kill hit it, its rerun is that once).
    assert sum(bool(t.user_attrs.get("default")) for t in trials if not t.user_attrs.get("interrupted")) == 1
    assert f"rerun of interrupted trial {killed[0]}" in (study_dir / "report.md").read_text()


# ---------------------------------------------------------------------------------------------------
# PostgreSQL: two workers against a real server


@pytest.fixture()
def postgres_url():
    """A throwaway PostgreSQL cluster on a free loopback port (as `nobody` when we are root: the server
    refuses to run as root)."""
    pytest.importorskip("psycopg")
    bindir = postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (make setup installs Debian's postgresql package as root)")
    folder = Path(tempfile.mkdtemp(prefix="tunesmith-pg-"))  # not under pytest's 0700 tmp: `nobody` must enter
    prefix: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(folder, "nobody", "nogroup")
        prefix = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = folder / "data"
    run = lambda *cmd: subprocess.run(prefix + list(cmd), check=True, capture_output=True, text=True, cwd=folder)  # noqa: E731
    run(str(bindir / "initdb"), "-D", str(data), "-U", "tuner", "--auth=trust", "-E", "UTF8")
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
        run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "tuner", "optuna")
        yield f"postgresql+psycopg://tuner@127.0.0.1:{port}/optuna"
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def test_two_workers_on_postgresql(search_config, tmp_path, postgres_url):
    import optuna
    from optuna.trial import TrialState

    from tunesmith.search.study import run_search

    config = search_config(LR_WD, "search.sampler=tpe", "search.n_trials=4", f"search.storage={postgres_url}")
    result = run_search(config, workers=2, study_dir=tmp_path / "study")
    study = optuna.load_study(study_name=config.name, storage=postgres_url)  # read back from the server
    trials = study.get_trials(deepcopy=False)
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs["worker"] for t in trials}) == 2
    runs = sorted(p.name.rsplit("-", 1)[-1] for p in (result.study_dir / "trials").iterdir() if p.is_dir())
    assert runs == ["trial0000", "trial0001", "trial0002", "trial0003"]  # each trial ran exactly once
    assert json.loads((result.study_dir / "study.json").read_text())["storage"] == postgres_url


def test_a_search_over_methods_sets_each_method_s_own_options_only_where_sampled(make_config):
    """method.quant_type applies to the trials that sampled qlora (conditional parameters); the space is
    checked against a method that has each option."""
    from tunesmith.search.space import check_search, config_with

    config = make_config(
        "search.space={method.name: {type: categorical, choices: [lora, qlora]},"
        " method.quant_type: {type: categorical, choices: [nf4, fp4]}}"
    )
    assert set(check_search(config)) == {"method.name", "method.quant_type"}
    lora = config_with(config, {"method.name": "lora", "method.quant_type": "fp4"})
    qlora = config_with(config, {"method.name": "qlora", "method.quant_type": "fp4"})
    assert lora.method.name == "lora" and not hasattr(lora.method, "quant_type")
    assert qlora.method.quant_type == "fp4" and qlora.method.r == config.method.r
