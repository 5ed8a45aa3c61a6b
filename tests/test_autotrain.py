"""`tunesmith autotrain`: task detection from the data's columns, the planner's choice, a search and a
final training that keep the time budget, on a tiny BERT built from a config (real MiniLM tokenizer)."""

from __future__ import annotations

import json
import time

import pytest

from test_search import sections, tiny_bert  # noqa: F401 - the same tiny model and data fixtures
from tunesmith.errors import TunesmithError


@pytest.mark.parametrize("columns, task", [
    (["messages"], "chat"), (["prompt", "completion"], "chat"), (["instruction", "input", "output"], "chat"),
    (["text", "label", "package"], "text-classification"), (["text", "text_pair", "score"], "text-classification"),
    (["tokens", "tags"], "token-classification"), (["document", "summary"], "summarization"),
    (["image", "label"], "image-classification"), (["image", "text"], "text-to-image"), (["text"], "continued-pretraining"),
])
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


def test_autotrain_keeps_its_budget_and_says_where_everything_is(sections, tiny_bert, tmp_path, capsys):  # noqa: F811
    from tunesmith.cli import main

    budget = 20
    started = time.time()
    assert main(["autotrain", "--data", str(sections), "--model", str(tiny_bert), "--budget", f"{budget}s",
                 "--trials", "4", "--output", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "-> task text-classification" in out and "method lora" in out
    assert "final model:" in out and "cut to keep the budget:" in out and "study:" in out
    study = next((tmp_path / "runs").glob("*-search-autotrain-text-classification"))
    final = next((study / "final").glob("*-final"))
    summary = json.loads((final / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["tuned"]["accuracy"] >= 0
    # The promise: training ended (weights saved) within the budget; only the test scoring comes after.
    trained = max(f.stat().st_mtime for f in (final / "adapter").iterdir())
    assert trained - started <= budget, f"trained {trained - started:.1f} s after the start of a {budget} s budget"
    report = (study / "report.md").read_text()
    assert "| complete |" in report and "default values" in report
    assert (study / "best.yaml").exists()
