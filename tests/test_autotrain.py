"""`tunesmith autotrain`: task detection from the data's columns, the planner's choice, a search and a
final training that keep the time budget, on a tiny BERT built from a config (real MiniLM tokenizer).
The budget runs on an injected fake clock, so which trials and steps run is exact, not timing-dependent."""

from __future__ import annotations

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


def test_budget_decisions_on_a_fake_clock():
    from tunesmith.config import load_config
    from tunesmith.search.budget import Budget

    now = [0.0]
    budget = Budget(200, 4, 130, start=0.0, clock=lambda: now[0])  # the search: 130 s, slices of 32.5 s
    config = load_config(None, ["task=text-classification", "train.batch_size=16"])  # 130 records: 9 steps

    # Trial 0: no measure yet, so its 9 planned steps and a validation pass every 9 // 4 = 2 steps.
    assert budget.can_start()
    first = budget.limit(config, 0)
    assert first.train.max_steps is None and first.train.eval_every == 2
    for step, at in ((2, 14.0), (4, 24.0), (6, 34.0)):  # loaded by 4 s, then 5 s a step
        now[0] = at
        assert budget.should_stop(step) is (at >= 32.5)  # the pass at step 6 is past the slice's end
    now[0] = 36.0  # scored
    budget.measured({"steps": 6})
    # The speed comes from the passes, (34 - 14) / (6 - 2), not from the trial's whole time (36 / 6).
    assert budget.seconds_per_step == 5.0 and budget.overhead == 36.0 - 6 * 5.0

    # Trial 1 at 36 s: 94 s left > 6 + 32.5 / 4 needed; int(0.85 * (32.5 - 6) / 5) = 4 steps, a pass each.
    assert budget.can_start()
    second = budget.limit(config, 1)
    assert (second.train.max_steps, second.train.eval_every) == (4, 1)
    now[0] = 70.0  # a slow first step: past its slice's end (36 + 32.5)
    assert budget.should_stop(1)
    now[0] = 72.0
    budget.measured({"steps": 1})  # one pass: the earlier measure stands, the rest is overhead
    assert budget.seconds_per_step == 5.0 and budget.overhead == 72.0 - 36.0 - 5.0

    # At 100 s: 30 s of the search left < 31 + 8.125 needed: no third trial.
    now[0] = 100.0
    assert not budget.can_start()
    # The final training (145 records: 10 steps) at 100 s: int(0.85 * (100 - 31) / 5) = 11 fit, all 10 run;
    # at 150 s: int(0.85 * (50 - 31) / 5) = 3 of them; at 190 s: none fits, it is skipped.
    final = budget.limit_final(config, 145)
    assert final.train.max_steps is None and final.eval.compare_base is False
    # At 115 s the whole schedule fits at the measured speed (31 + 10 * 5 = 81 <= 85 s left), though not with
    # the safety margin: it runs whole; the margin only sizes a cut.
    now[0] = 115.0
    assert budget.limit_final(config, 145).train.max_steps is None
    now[0] = 150.0
    assert budget.limit_final(config, 145).train.max_steps == 3
    now[0] = 190.0
    assert budget.limit_final(config, 145) is None
    assert budget.notes() == [
        "trial 1: 4 of its 9 planned steps (a 32 s slice)",
        "2 of 4 planned trials not started: 30 s of the search's 130 s were left",
        "final training: 3 of 10 planned steps (50 s were left)",
        "final training skipped: 10 s left, less than one step after loading",
        "a trial stopped at step 6: its 32 s slice was spent",
        "a trial stopped at step 1: its 32 s slice was spent",
    ]


class StepClock:
    """Fake seconds for the budget: LOAD each time a run starts (`pipeline.train`: loading, scoring) and
    STEP per training step (the loop's progress update). Nothing else moves it, so every decision the
    budget takes is exact arithmetic, whatever the machine's speed."""

    LOAD, STEP = 30.0, 60.0

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_autotrain_keeps_its_budget_on_an_injected_clock(sections, tiny_bert, tmp_path, monkeypatch, capsys):  # noqa: F811
    from tunesmith import pipeline
    from tunesmith.search.autotrain import autotrain
    from tunesmith.train.progress import ProgressReporter

    clock = StepClock()
    update, train = ProgressReporter.update, pipeline.train

    def step(self, *args, **kwargs):
        clock.now += clock.STEP
        return update(self, *args, **kwargs)

    def run(*args, **kwargs):
        clock.now += clock.LOAD
        return train(*args, **kwargs)

    monkeypatch.setattr(ProgressReporter, "update", step)
    monkeypatch.setattr(pipeline, "train", run)
    # 600 s, 2 trials: the search may use 0.65 * 600 = 390 s, a slice of 195 s per trial. (The search's
    # Optuna timeout is on the wall clock: 390 real seconds, far more than this test takes.)
    result = autotrain(
        str(sections), model=str(tiny_bert), budget="10m", trials=2, output=str(tmp_path / "runs"), clock=clock
    )
    out = capsys.readouterr().out
    assert "-> task text-classification" in out and "method lora" in out
    assert "final model:" in out and "cut to keep the budget:" in out and "study:" in out

    # What the clock decided (times from the start; 130 training records at batch 16 plan 9 steps):
    # trial 0 has no measure yet: 9 steps, a validation pass every 9 // 4 = 2. Loaded at 30, step 2 at
    #   150 (< 195, go on), step 4 at 270 (>= 195): stopped at step 4. Speed between its passes:
    #   (270 - 150) / (4 - 2) = 60 s per step; the rest, 270 - 4 * 60 = 30 s, is loading and scoring.
    # trial 1 starts at 270: 120 s of the search left > 30 + 195 / 4 needed. Its slice ends at 390 (the
    #   search's end): int(0.85 * (120 - 30) / 60) = 1 step, a pass at step 1 (360 < 390). Ends at 360.
    # n_trials (2) reached. The final training at 360: 240 s left, int(0.85 * (240 - 30) / 60) = 2 steps
    #   of the best trial's plan (10 or more steps on 145 records, or ceil(145 / 130 * its best step) >= 3
    #   when it stopped before its last pass). Loaded at 390, trained by 510 <= 600.
    trials = sorted(p for p in result.study_dir.glob("trials/*") if p.is_dir())
    summaries = [json.loads((t / "summary.json").read_text()) for t in trials]
    assert [s["steps"] for s in summaries] == [4, 1]
    assert [s["status"] for s in summaries] == ["stopped_early", "completed"]
    assert re.fullmatch(r"trial 1: 1 of its \d+ planned steps \(a 195 s slice\)", result.cuts[0]), result.cuts
    assert re.fullmatch(r"final training: 2 of \d+ planned steps \(240 s were left\)", result.cuts[1]), result.cuts
    assert result.cuts[2:] == ["a trial stopped at step 4: its 195 s slice was spent"], result.cuts
    final = json.loads((result.final_run / "summary.json").read_text())
    assert final["steps"] == 2 and final["status"] == "completed"
    assert result.seconds == 510.0  # nothing after the final training's last step moves the fake clock
    # The promise: trained (weights saved) within the budget; the test scoring after it is not counted.
    assert 500 < result.trained_seconds <= 510 <= 600

    # The test accuracy is the share of right answers in the predictions written to disk.
    rows = json.loads((result.final_run / "test_predictions.json").read_text())["tuned"]
    assert len(rows) == final["data"]["test"] == final["tuned"]["test_samples"]
    assert final["tuned"]["accuracy"] == pytest.approx(sum(r["prediction"] == r["reference"] for r in rows) / len(rows))
    assert result.test["accuracy"] == final["tuned"]["accuracy"]
    report = (result.study_dir / "report.md").read_text()
    assert "| complete |" in report and "default values" in report
    assert (result.study_dir / "best.yaml").exists()


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
