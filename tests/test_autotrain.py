"""`tunesmith autotrain`: task detection from the data's columns, the planner's choice, a search and a
final training that keep the time budget, on a tiny BERT built from a config (real MiniLM tokenizer).
The budget runs on an injected fake clock, so which trials and steps run is exact, not timing-dependent."""

from __future__ import annotations

import importlib
import json
import re

import pytest
from test_search import sections, tiny_bert  # noqa: F401 - the same tiny model and data fixtures

from tunesmith.errors import TunesmithError


@pytest.mark.parametrize(
    "columns, task",
    [
        (["messages"], "chat"),
        (["prompt", "completion"], "chat"),
        (["instruction", "input", "output"], "chat"),
        (["text", "label", "package"], "text-classification"),
        (["text", "text_pair", "score"], "text-classification"),
        (["tokens", "tags"], "token-classification"),
        (["document", "summary"], "summarization"),
        (["image", "label"], "image-classification"),
        (["image", "text"], "text-to-image"),
        (["text"], "continued-pretraining"),
    ],
)
def test_task_is_detected_from_the_columns(columns, task):
    from tunesmith.search.autotrain import detect_task

    assert detect_task(columns, "data.csv") == task


def test_unknown_columns_and_bad_budgets_are_one_message(sections, tmp_path):  # noqa: F811
    from tunesmith.search.autotrain import autotrain, detect_task

    with pytest.raises(TunesmithError) as caught:
        detect_task(["question", "answer"], "qa.csv")
    assert caught.value.where == "qa.csv" and "--task" in caught.value.fix
    for budget, says in (("5s", "cannot load a model"), ("soon", "cannot read the duration")):
        with pytest.raises(TunesmithError) as caught:
            autotrain(str(sections), budget=budget, output=str(tmp_path))
        assert says in caught.value.message and caught.value.where == "--budget"


def test_budget_plans_the_final_training_first_on_a_fake_clock():
    from tunesmith.config import load_config
    from tunesmith.search.budget import Budget

    now = [0.0]
    budget = Budget(1000, start=0.0, clock=lambda: now[0], prior_seconds_per_example=1.0)
    config = load_config(None, ["task=text-classification", "train.batch_size=16", "train.max_steps=8"])
    # Only the planner's estimate (16 s a step): the first run is what measures, so it always fits.
    assert budget.estimate(config, 8) == 8 * 16.0 and budget.fits(2000.0, 2000.0)

    # A run of 8 steps with passes at 4 and 8, each 3 s: loaded by 20 s, 2 s a step, scored by 40 s.
    budget.run_deadline = 1000.0
    limited = budget.limit(config)
    assert limited.train.eval_every == 4  # two passes: halfway (speed) and the end (the objective's weights)
    assert limited.train.save_every == 8  # one checkpoint, after the last pass: none timed as training
    for step, starts, ends in ((4, 28.0, 31.0), (8, 39.0, 42.0)):
        now[0] = starts
        budget.evaluation_starts(step)
        now[0] = ends
        assert not budget.should_stop(step)
    now[0] = 50.0
    budget.measured({"steps": 8})
    # Speed: the steps between one pass's end and the next one's start, (39 - 31) / (8 - 4) = 2 s a step, / 16
    # examples (the validation passes are not training); loading is the time before step 1, 28 - 4 * 2 = 20 s;
    # the rest of the run (loading, validation, scoring) is a search run's overhead, 50 - 8 * 2 = 34 s.
    assert budget.speed(config) == 2.0 / 16 and budget.load == 20.0 and budget.overhead == 34.0
    assert budget.estimate(config, 100) == 34.0 + 100 * 2.0
    assert budget.estimate(config, 100, final=True) == 20.0 + 100 * 2.0  # no validation split, scored after

    # At 50 s, 950 s are left: a 40 s run and an 800 s final training fit with the slack (40 / 0.85 + 800 /
    # 0.95 = 889); with a 900 s final training (994 s with the slack) they do not.
    assert budget.fits(40.0, 800.0) and not budget.fits(40.0, 900.0)
    # A run that overruns the time kept for the final training is stopped at its next pass, marked cut; one
    # that reached its last step has ended, late or not.
    budget.run_deadline = 500.0
    budget.limit(config)
    now[0] = 505.0
    assert not budget.should_stop(8) and not budget.cut
    now[0] = 510.0
    assert budget.should_stop(4) and budget.cut

    # The final training: 300 steps (20 + 600 s) fit in the 490 s left? No: cut to what fits with the slack,
    # int(0.95 * (490 - 20) / 2) = 223 steps. 230 steps (480 s) fit at the measured speed: whole, though the
    # slack would not hold them (the slack sizes a cut, never decides one).
    final = load_config(None, ["task=text-classification", "train.batch_size=16"])
    assert budget.limit_final(final, 230).train.max_steps == 230
    assert budget.limit_final(final, 300).train.max_steps == 223
    assert budget.notes() == ["final training: 223 of 300 planned steps (490 s were left; 2.00 s a step, measured)"]
    now[0] = 995.0
    assert budget.limit_final(final, 300) is None  # 5 s left: not even the loading


def test_an_edge_value_widens_its_range_once_and_within_the_field():
    from tunesmith.config import SearchParam, load_config
    from tunesmith.search.halving import _edge
    from tunesmith.search.space import widened

    config = load_config(None, ["task=text-classification"])
    rate = SearchParam(type="log-float", low=1e-5, high=3e-4)
    assert _edge(rate, 2.9e-4) == "top" and _edge(rate, 1.1e-5) == "bottom" and _edge(rate, 5e-5) is None
    wider = widened(rate, "top", config, "train.learning_rate")
    assert (wider.low, wider.high) == (1e-5, pytest.approx(9e-4))
    warmup = SearchParam(type="float", low=0.0, high=0.2)
    assert widened(warmup, "bottom", config, "train.warmup_ratio") is None  # a ratio cannot go below 0
    assert widened(warmup, "top", config, "train.warmup_ratio").high == pytest.approx(0.3)
    epochs = SearchParam(type="int", low=1, high=3)
    assert _edge(epochs, 3) == "top" and _edge(epochs, 2) is None
    assert widened(epochs, "top", config, "train.epochs").high == 4
    assert widened(epochs, "bottom", config, "train.epochs") is None  # no fewer than one epoch


class StepClock:
    """Fake seconds for the budget: LOAD each time a run starts (`pipeline.train`: loading, scoring), STEP
    per 16 examples trained (the loop's progress update, scaled by the run's batch size), EVAL per
    validation pass and SCORE per scoring of a search run's objective (neither of which the final training
    does: a budget that counted them as training would plan the final too long and cut it). Nothing else
    moves it, so every decision the budget takes is exact arithmetic, whatever the machine's speed."""

    LOAD, STEP, EVAL, SCORE = 30.0, 60.0, 45.0, 40.0

    def __init__(self):
        self.now = 1000.0
        self.step = self.STEP

    def __call__(self) -> float:
        return self.now


def _step_clock(monkeypatch) -> StepClock:
    """A StepClock that the pipeline's loading, steps, validation passes and objective scoring advance."""
    from tunesmith import pipeline
    from tunesmith.search import objective
    from tunesmith.train import loop
    from tunesmith.train.progress import ProgressReporter

    clock = StepClock()
    update, train = ProgressReporter.update, pipeline.train

    def step(self, *args, **kwargs):
        clock.now += clock.step
        return update(self, *args, **kwargs)

    def run(config, *args, **kwargs):
        clock.now += clock.LOAD
        clock.step = clock.STEP * config.train.batch_size / 16
        return train(config, *args, **kwargs)

    def costs(seconds: float, function):
        def timed(*args, **kwargs):
            clock.now += seconds
            return function(*args, **kwargs)

        return timed

    monkeypatch.setattr(ProgressReporter, "update", step)
    monkeypatch.setattr(pipeline, "train", run)
    monkeypatch.setattr(loop, "validation_loss", costs(clock.EVAL, loop.validation_loss))
    monkeypatch.setattr(objective, "_objective_scores", costs(clock.SCORE, objective._objective_scores))
    return clock


def test_autotrain_spends_its_budget_and_finishes_the_winner_on_an_injected_clock(
    sections,  # noqa: F811
    tiny_bert,  # noqa: F811
    tmp_path,
    monkeypatch,
    capsys,
):
    from tunesmith.config import load_saved_config
    from tunesmith.search.autotrain import autotrain
    from tunesmith.train.loop import total_optimizer_steps

    clock = _step_clock(monkeypatch)
    result = autotrain(str(sections), model=str(tiny_bert), budget="120m", output=str(tmp_path / "runs"), clock=clock)
    out = capsys.readouterr().out
    assert "-> task text-classification" in out and "objective: f1_macro on the validation split" in out

    # 1. The budget is spent: search and final training together use at least 90% of it, and no more.
    budget = 120 * 60
    assert 0.9 * budget <= result.trained_seconds <= budget, result.spent
    assert result.spent["used_share"] >= 0.9 and result.spent["search_seconds"] > 0
    # 2. The final training ran the chosen config's whole schedule on train+validation: nothing was cut.
    chosen = load_saved_config(result.best_config)
    final = json.loads((result.final_run / "summary.json").read_text())
    whole = total_optimizer_steps(final["data"]["train"], chosen.train, 1)
    assert final["steps"] == whole and final["status"] == "completed"
    assert not [c for c in result.cuts if c.startswith("final training")], result.cuts
    # 3. Successive halving: every run trained a rung of its own schedule, at least one was promoted, and
    #    only whole-schedule runs are complete trials.
    import optuna

    study = optuna.load_study(
        study_name="autotrain-text-classification", storage=f"sqlite:///{result.study_dir}/study.db"
    )
    runs = [t for t in study.trials if t.user_attrs.get("rung") is not None]
    assert len(runs) >= 4 and any("promoted from trial" in t.user_attrs["note"] for t in runs)
    for t in runs:
        steps, full = map(int, re.search(r"(\d+) of (\d+) steps", t.user_attrs["note"]).groups())
        assert (t.state.name == "COMPLETE") == (steps == full), t.user_attrs
    assert runs[0].user_attrs.get("default") and "known-good 1" in [t.user_attrs.get("known_good") for t in runs]
    # No run is resumed, so none keeps its checkpoints (they filled 16 GB in a 15-minute search).
    assert not list((result.study_dir / "trials").glob("*/checkpoints"))
    # 4. The report says where the budget went, the ranges, and how far the search moved from the defaults.
    report = (result.study_dir / "report.md").read_text()
    for section in ("## Autotrain", "### Budget", "### Ranges", "### Distance from the defaults"):
        assert section in report
    assert f"| {budget} s |" in report and "| `train.learning_rate` |" in report
    record = json.loads((result.study_dir / "autotrain.json").read_text())
    assert record["used_share"] == result.spent["used_share"] and record["test"] == result.test
    # The test accuracy is the share of right answers in the predictions written to disk.
    rows = json.loads((result.final_run / "test_predictions.json").read_text())["tuned"]
    assert final["tuned"]["accuracy"] == pytest.approx(sum(r["prediction"] == r["reference"] for r in rows) / len(rows))


class _Trial:
    number, params = 0, {}

    def __init__(self, **user_attrs):
        self.user_attrs = user_attrs


def test_the_final_training_runs_the_whole_schedule_of_a_trial_the_budget_cut(sections, tmp_path):  # noqa: F811
    # A trial stopped by its time slice at step 6 (best so far at 3) was still learning: the final training must not stop
    # at its "best step" (what left a 15-minute autotrain with a final run of a third of its schedule). A
    # trial that early stopping ended at step 6 after its best at 3 says how long to train: that one stands.
    from tunesmith.config import load_config
    from tunesmith.search.report import final_config

    config = load_config(
        None, ["task=text-classification", "model.name=x", f"data.train={sections}", "train.batch_size=16"]
    )
    cut = final_config(config, _Trial(steps=6, best_step=3, cut_by_budget=True), tmp_path / "a")
    assert cut.train.max_steps is None
    stopped = final_config(config, _Trial(steps=6, best_step=3), tmp_path / "b")
    assert stopped.train.max_steps is not None and stopped.train.max_steps >= 3


def test_without_room_for_a_search_the_speed_is_probed_and_the_final_training_is_whole(
    sections,  # noqa: F811
    tiny_bert,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    # The planner's estimate can be far off (5x too fast for MiniLM-L6 here): when it says the final training
    # alone exceeds the budget, a few steps measure the speed, and the final training is planned by that.
    import dataclasses

    from tunesmith.config import load_saved_config

    autotrain_module = importlib.import_module("tunesmith.search.autotrain")  # the package exports the function
    from tunesmith.search.autotrain import PROBE_STEPS, autotrain
    from tunesmith.train.loop import total_optimizer_steps

    choose = autotrain_module._choose
    monkeypatch.setattr(
        autotrain_module, "_choose", lambda *args: dataclasses.replace(choose(*args), hours_per_epoch=50.0)
    )
    clock = _step_clock(monkeypatch)
    result = autotrain(str(sections), model=str(tiny_bert), budget="60m", output=str(tmp_path / "runs"), clock=clock)
    probes = [json.loads(p.read_text()) for p in result.study_dir.glob("*speed-probe*/summary.json")]
    assert [p["steps"] for p in probes] == [PROBE_STEPS]
    assert "the budget cannot hold a search" in (result.study_dir / "report.md").read_text()
    # At the measured speed (60 s a step of 16) the default's whole schedule fits the hour: it is not cut to
    # the planner's 50 hours an epoch.
    final_config = load_saved_config(result.final_run / "config.yaml")
    final = json.loads((result.final_run / "summary.json").read_text())
    assert (
        final["steps"]
        == final_config.train.max_steps
        == total_optimizer_steps(final["data"]["train"], final_config.train.model_copy(update={"max_steps": None}), 1)
    )
    assert not result.cuts, result.cuts


def test_a_draw_that_does_not_fit_is_run_with_the_most_epochs_that_do():
    # A 5-minute search drew 8 epochs at batch 8 three times (a 167 s final training each, 180 s left) and ended
    # with 40% of its budget unused; the same draw with fewer epochs fits.
    from types import SimpleNamespace

    from tunesmith.config import SearchParam, load_config
    from tunesmith.search.budget import Budget
    from tunesmith.search.halving import Halving, rung_steps

    now = [170.0]
    budget = Budget(300, start=0.0, clock=lambda: now[0])
    budget.trained, budget.load, budget.overhead = {8: [1.0, 8.0]}, 5.0, 10.0  # 1 s a step of 8
    base = load_config(None, ["task=text-classification", "train.batch_size=8"])
    setup = SimpleNamespace(base=base, space={"train.epochs": SearchParam(type="int", low=1, high=8)})
    study = SimpleNamespace(direction=SimpleNamespace(name="MAXIMIZE"))
    halving = Halving(study, setup, budget, train_examples=96, final_examples=108)  # 12 and 14 steps an epoch
    drawn = {"train.epochs": 8, "train.learning_rate": 1e-4}

    def fits(values):
        config = halving.config_of(values)
        need = budget.estimate(config, rung_steps(halving.full_steps(config, 96), 0))
        return budget.fits(need, halving.final_seconds(values))

    # 130 s left: 8 epochs (a first rung of 11 steps, 21 s, and a final training of 108 steps, 113 s: 144 s with
    # the slack) and 7 (132 s) do not fit; 6 (115 s) do, and keep the drawn learning rate.
    assert not fits(drawn)
    shorter = halving._fewer_epochs_that_fit(drawn, None)
    assert shorter == {"train.epochs": 6, "train.learning_rate": 1e-4}
    assert fits(shorter) and not fits({**drawn, "train.epochs": shorter["train.epochs"] + 1})
    now[0] = 290.0  # 10 s left: nothing fits
    assert halving._fewer_epochs_that_fit(drawn, None) is None
