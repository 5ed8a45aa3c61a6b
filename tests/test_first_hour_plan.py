"""A newcomer's first hour (issue 15), as a newcomer types it: `tunesmith init` and `tunesmith recommend
--write` in an empty folder of their own, then `tunesmith validate` on what they wrote. Nothing may depend
on a checkout of this repository or on a model hub that this machine cannot reach, unless the file says so.
"""

from __future__ import annotations

import importlib.util

import pytest
from transformers import AutoConfig

from tunesmith import cli, pipeline
from tunesmith.config import load_config
from tunesmith.models.limits import position_limit
from tunesmith.models.resolve import resolve_model
from tunesmith.models.starters import find_starter
from tunesmith.plan.catalog import load_catalog
from tunesmith.plan.recommend import availability, recommend, write_config
from tunesmith.taskcards import TASKS


def packaged_starter(task: str) -> str | None:
    """The installed starter model the task's `init` template trains, if any."""
    starter = find_starter(TASKS[task].init_settings.get("model.name", ""))
    return starter.name if starter and importlib.util.find_spec(starter.package) else None


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture()
def empty_folder(tmp_path, monkeypatch):
    """The newcomer's own folder, far from the repository's examples/."""
    folder = tmp_path / "my-project"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


@pytest.mark.parametrize("task", list(TASKS))
def test_init_template_validates_from_any_folder(task, empty_folder, capsys):
    code, template, _ = run(["init", "--task", task], capsys)
    assert code == 0
    (empty_folder / "run.yaml").write_text(template)
    config = load_config(empty_folder / "run.yaml")
    if packaged_starter(task) is None:  # a hub model (text-to-image): its data must still be there
        assert pipeline.read_splits(config).train
        return
    code, out, err = run(["validate", "run.yaml"], capsys)
    assert code == 0, err
    assert "config, model and data are valid" in out


@pytest.mark.parametrize("task", list(TASKS))
def test_recommended_config_loads_and_validates_with_the_packaged_starter(task, empty_folder, capsys):
    code, out, err = run(
        ["recommend", "--task", task, "--hardware", "cpu", "--top", "1", "--write", "rec.yaml"], capsys
    )
    assert code == 0, err
    text = (empty_folder / "rec.yaml").read_text()
    assert "trains task 'chat' only" not in text  # the stale note of the chat-only days
    config = load_config(empty_folder / "rec.yaml")
    assert config.task == task and config.data.train
    # With no --data the file trains the packaged example, and says to replace it.
    assert "packaged example data" in text and "your training file" in text
    starter = packaged_starter(task)
    if starter is None:
        assert pipeline.read_splits(config).train
        return
    # The recommended settings (method, lengths, batch) with the model that runs offline here, as the
    # offline note says; a max length the starter cannot read is cut to its limit, as that check's fix says.
    overrides = []
    if not find_starter(config.model.name):
        limit = position_limit(AutoConfig.from_pretrained(resolve_model(starter).path))
        length = min(config.data.max_length, limit.limit if limit else config.data.max_length)
        overrides = ["--set", f"model.name={starter}", "--set", f"data.max_length={length}"]
    code, out, err = run(["validate", "rec.yaml", *overrides], capsys)
    assert code == 0, err


def test_recommendation_says_when_its_model_needs_the_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (hub,) = recommend("chat", hardware="A100-80GB", top=1)
    assert find_starter(hub.entry.id) is None  # a 7B model: not packaged
    note = next(r for r in hub.reasons if r.startswith("weights:"))
    assert "unreachable" in note and hub.entry.id in note and "smollm2-135m-instruct" in note
    written = write_config(hub, tmp_path / "chat.yaml").read_text()
    assert note in written

    (starter,) = recommend("chat", hardware="cpu", top=1)
    assert any("packaged starter" in r and "offline" in r for r in starter.reasons)

    # Where the hub is reachable the note says the download happens, and what to use without a network.
    entry = load_catalog().get("qwen2.5-7b-instruct")
    online = availability(entry, "chat", online=True)
    assert "downloaded on first use" in online and "smollm2-135m-instruct" in online
    assert "unreachable" not in online


def test_recommend_offers_only_tasks_that_train_here(capsys):
    """The catalog describes more tasks than tunesmith trains (reranking, segmentation); `recommend`
    offers only registered ones, and names them when asked for another."""
    unregistered = [task for task in load_catalog().tasks if task not in TASKS]
    assert set(TASKS) <= set(load_catalog().tasks)
    for task in unregistered:
        with pytest.raises(SystemExit):
            cli.main(["recommend", "--task", task])
        assert "text-classification" in capsys.readouterr().err
