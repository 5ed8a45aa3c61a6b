"""A newcomer's first hour (issue 15): `--version` and a help text for every argument; `predict` on the
inputs people have (prompts without answers), checked before the model loads; `eval` that shows its
progress and keeps every evaluation; `chat` slash commands handled by the tool, not sent to the model."""

from __future__ import annotations

import io
import json
import time
from importlib.metadata import version
from pathlib import Path

import pytest
from conftest import read_jsonl, train_chat_run

from tunesmith import pipeline
from tunesmith.cli import build_parser, main
from tunesmith.config import dump_config, load_config
from tunesmith.errors import TunesmithError


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_llama_dir) -> Path:
    """One trained tiny LoRA chat run, shared by the predict, eval and chat tests."""
    return train_chat_run(tmp_path_factory.mktemp("first-hour"), tiny_llama_dir, "eval.compare_base=false")


def _unfinished_run(folder: Path, *overrides: str) -> Path:
    """A run folder with only its config.yaml: enough to read predict inputs, no weights to load."""
    config = load_config(None, ["data.train=unused.jsonl", *overrides])
    run = folder / "unfinished-run"
    run.mkdir()
    (run / "config.yaml").write_text(dump_config(config))
    return run


def _jsonl(path: Path, *records) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


# ---------------------------------------------------------------------------------------------------
# item 10: --version, help texts


def test_version_prints_the_package_s_version_installed_or_not(capsys, monkeypatch):
    import importlib.metadata

    import tunesmith

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)  # a source tree never installed
    with pytest.raises(SystemExit) as stopped:
        main(["--version"])
    assert stopped.value.code == 0
    assert capsys.readouterr().out == f"tunesmith {tunesmith.__version__}\n"


def test_the_version_is_written_once_and_the_installed_metadata_has_it():
    import tomllib

    import tunesmith

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "tunesmith.__version__"}
    assert version("tunesmith") == tunesmith.__version__


def _commands(parser):
    for action in parser._actions:
        if action.choices and isinstance(action.choices, dict):  # a subparsers action
            for name, sub in action.choices.items():
                yield name, sub
                for deeper, subsub in _commands(sub):
                    yield f"{name} {deeper}", subsub


# The commands cli.py defines (plan/, runs/ and search/ add their own).
OWN_COMMANDS = ("init", "validate", "train", "eval", "predict", "chat", "merge")


def test_every_argument_of_every_command_has_help():
    parser = build_parser()
    commands = [("tunesmith", parser)] + [(n, p) for n, p in _commands(parser) if n.split()[0] in OWN_COMMANDS]
    missing = [f"{name}: {a.dest}" for name, sub in commands for a in sub._actions if not (a.help or "").strip()]
    assert not missing


# ---------------------------------------------------------------------------------------------------
# item 6: predict takes prompt-only records, checked before the model loads


def test_predict_checks_the_input_before_loading_the_model(tmp_path):
    run = _unfinished_run(tmp_path)  # no adapter/: loading the model first would fail with "did not finish"
    inputs = _jsonl(tmp_path / "in.jsonl", {"prompt": "Where is my order?"}, {"question": "Refund please"})
    output = tmp_path / "out.jsonl"
    started = time.perf_counter()
    with pytest.raises(TunesmithError) as error:
        pipeline.predict(run, str(inputs), str(output))
    assert time.perf_counter() - started < 5
    assert error.value.where == f"{inputs}:2" and "question" in error.value.message
    assert "prompt" in (error.value.fix or "")
    assert not output.exists()


def test_predict_reads_every_prompt_only_shape_of_a_chat_run(tmp_path):
    run = _unfinished_run(tmp_path)
    inputs = _jsonl(
        tmp_path / "in.jsonl",
        {"messages": [{"role": "user", "content": "Where is my order?"}]},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]},
        {"messages": [{"role": "user", "content": "Refund?"}, {"role": "assistant", "content": "Sure."}]},
        {"conversations": [{"from": "human", "value": "Hello"}]},
        {"prompt": "Is the shop open?"},
        {"prompt": "Is it?", "completion": "Yes."},
        {"text": "Plain question"},
        {"instruction": "Translate", "input": "Hallo"},
        {"instruction": "Say hi"},
        {"instruction": "Say bye", "output": "Bye."},
    )
    prompts = pipeline.read_predict_input(run, str(inputs))
    assert [p.messages for p in prompts] == [
        [{"role": "user", "content": "Where is my order?"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        [{"role": "user", "content": "Refund?"}],
        [{"role": "user", "content": "Hello"}],
        [{"role": "user", "content": "Is the shop open?"}],
        [{"role": "user", "content": "Is it?"}],
        [{"role": "user", "content": "Plain question"}],
        [{"role": "user", "content": "Translate\n\nHallo"}],
        [{"role": "user", "content": "Say hi"}],
        [{"role": "user", "content": "Say bye"}],
    ]
    assert [p.reference for p in prompts] == [None, None, "Sure.", None, None, "Yes.", None, None, None, "Bye."]
    assert prompts[3].where == f"{inputs}:4"

    lines = tmp_path / "in.txt"
    lines.write_text("Where is my order?\n\nRefund please\n")
    prompts = pipeline.read_predict_input(run, str(lines))
    assert [(p.where, p.messages) for p in prompts] == [
        (f"{lines}:1", [{"role": "user", "content": "Where is my order?"}]),
        (f"{lines}:3", [{"role": "user", "content": "Refund please"}]),
    ]


def test_predict_input_gets_the_runs_system_prompt_and_names_bad_lines(tmp_path):
    run = _unfinished_run(tmp_path, "data.system_prompt=You are a support agent.")
    inputs = _jsonl(tmp_path / "in.jsonl", {"prompt": "Hi"}, {"messages": [{"role": "system", "content": "Own."}]})
    with pytest.raises(TunesmithError) as error:
        pipeline.read_predict_input(run, str(inputs))
    assert error.value.where == f"{inputs}:2" and "user" in error.value.message
    _jsonl(inputs, {"prompt": "Hi"})
    (prompt,) = pipeline.read_predict_input(run, str(inputs))
    assert prompt.messages[0] == {"role": "system", "content": "You are a support agent."}


@pytest.mark.parametrize(
    "task, record, wanted",
    [
        ("continued-pretraining", {"prompt": "This License applies to"}, "This License applies to"),
        ("continued-pretraining", "This License applies to", "This License applies to"),  # a .txt line
        ("summarization", {"text": "A utility to list open files."}, "A utility to list open files."),
        ("summarization", "A utility to list open files.", "A utility to list open files."),
        ("text-classification", {"text": "ODBC driver for PostgreSQL"}, "ODBC driver for PostgreSQL"),
        ("text-classification", "ODBC driver for PostgreSQL", "ODBC driver for PostgreSQL"),
    ],
)
def test_predict_reads_unlabelled_records_of_every_text_task(task, record, wanted, tmp_path):
    run = _unfinished_run(tmp_path, f"task={task}")
    if isinstance(record, str):
        inputs = tmp_path / "in.txt"
        inputs.write_text(record + "\n")
    else:
        inputs = _jsonl(tmp_path / "in.jsonl", record)
    (example,) = pipeline.read_predict_input(run, str(inputs))
    assert wanted in (getattr(example, "text", None), getattr(example, "source", None))


def test_predict_answers_prompt_only_records_and_keeps_references(finished_run, tmp_path, capsys):
    inputs = _jsonl(
        tmp_path / "in.jsonl",
        {"messages": [{"role": "user", "content": "Where is my order?"}]},
        {"prompt": "Refund please"},
        {"prompt": "Is it open?", "completion": "Yes."},
    )
    output = tmp_path / "out.jsonl"
    assert (
        main(["predict", str(finished_run), "--input", str(inputs), "--output", str(output), "--max-new-tokens", "3"])
        == 0
    )
    assert f"wrote 3 predictions to {output}" in capsys.readouterr().out
    rows = read_jsonl(output)
    assert [row["messages"][-2]["content"] for row in rows] == ["Where is my order?", "Refund please", "Is it open?"]
    assert all(row["messages"][-1]["role"] == "assistant" for row in rows)
    assert ["reference" in row for row in rows] == [False, False, True] and rows[2]["reference"] == "Yes."


# ---------------------------------------------------------------------------------------------------
# item 7: eval shows progress and keeps every evaluation


def test_eval_shows_progress_and_keeps_each_evaluation(finished_run, capsys):
    first = pipeline.evaluate_run(finished_run, max_samples=2)
    err = capsys.readouterr().err
    assert "generating 2 answers: 2/2" in err and err.count("generating 2 answers") >= 2  # tuned, then base
    second = pipeline.evaluate_run(finished_run, max_samples=3)
    earlier = json.loads((finished_run / "eval-1.json").read_text())
    later = json.loads((finished_run / "eval-2.json").read_text())
    assert earlier["settings"]["max_samples"] == 2 and later["settings"]["max_samples"] == 3
    assert earlier["test_file"] == later["test_file"] == str(finished_run / "data" / "test.jsonl")
    assert earlier["tuned"] == first["tuned"] and later["tuned"] == second["tuned"]
    assert earlier["tuned"]["test_samples"] == 2 and later["tuned"]["test_samples"] == 3
    # eval.json is the latest evaluation, as before
    assert json.loads((finished_run / "eval.json").read_text()) == later


# ---------------------------------------------------------------------------------------------------
# item 8: chat slash commands


def test_chat_handles_slash_commands_itself(finished_run):
    from tunesmith.chat import chat_loop

    stdout = io.StringIO()
    lines = "/help\n/reset\n/bogus\n/system Be brief.\n//etc/hosts is a file\nhello\n/exit\n"
    history = chat_loop(str(finished_run), max_new_tokens=3, stdin=io.StringIO(lines), stdout=stdout)
    shown = stdout.getvalue()
    banner = shown.split("you> ")[0]
    assert all(command in banner for command in ("/help", "/reset", "/system", "/exit"))
    assert "history cleared" in shown
    assert "unknown command /bogus" in shown
    assert "system prompt set" in shown
    assert shown.count("model> ") == 2  # only the two lines meant for the model went to it
    assert [turn["content"] for turn in history if turn["role"] != "assistant"] == [
        "Be brief.",
        "/etc/hosts is a file",
        "hello",
    ]


# ---------------------------------------------------------------------------------------------------
# predict on a token-classification run: a .txt of sentences is sentences, a CoNLL .txt is CoNLL


def test_a_txt_of_sentences_is_read_as_one_sentence_a_line_by_a_tagging_run(tmp_path):
    """Token classification reads a .txt as CoNLL in training; read so, sentences became words tagged with
    their sentence's last word (['Where', 'John'] tagged ['please', 'this'])."""
    run = _unfinished_run(tmp_path, "task=token-classification")
    lines = tmp_path / "sentences.txt"
    lines.write_text("Where is my order please\n\nJohn Smith wrote this, in 2021.\n")
    first, second = pipeline.read_predict_input(run, str(lines))
    assert (first.where, first.tokens, first.tags) == (f"{lines}:1", ["Where", "is", "my", "order", "please"], None)
    # Cut into words as a {"text": ...} record is, with each word's characters for the entities found.
    assert second.tokens == ["John", "Smith", "wrote", "this", ",", "in", "2021", "."]
    assert second.text == "John Smith wrote this, in 2021." and second.offsets is not None


def test_a_conll_txt_is_still_read_as_conll_by_predict(tmp_path):
    run = _unfinished_run(tmp_path, "task=token-classification")
    conll = tmp_path / "tagged.txt"
    conll.write_text("-DOCSTART- -X- O\n\nJohn B-PER\nSmith I-PER\nwrote O\n\nIt O\nrained O\n")
    first, second = pipeline.read_predict_input(run, str(conll))
    assert (first.tokens, first.tags) == (["John", "Smith", "wrote"], ["B-PER", "I-PER", "O"])
    assert second.tokens == ["It", "rained"]
    # Plain tags (part of speech) are told from a sentence's last word by the run's tag names.
    (run / "task.json").write_text(json.dumps({"labels": ["DT", "NN", "VBD", "."], "scheme": "plain"}))
    conll.write_text("The DT\ncat NN\nsat VBD\n. .\n")
    (sentence,) = pipeline.read_predict_input(run, str(conll))
    assert (sentence.tokens, sentence.tags) == (["The", "cat", "sat", "."], ["DT", "NN", "VBD", "."])
    # A tokenised sentence ends in ".", Penn's tag of a full stop: still a sentence.
    conll.write_text("The cat sat .\n")
    (sentence,) = pipeline.read_predict_input(run, str(conll))
    assert sentence.tokens == ["The", "cat", "sat", "."] and sentence.tags is None


def test_a_txt_of_one_word_a_line_without_tags_is_refused_by_a_tagging_run(tmp_path):
    run = _unfinished_run(tmp_path, "task=token-classification")
    words = tmp_path / "words.txt"
    words.write_text("John\nSmith\nwrote\n\nIt\nrained\n")
    with pytest.raises(TunesmithError) as error:
        pipeline.read_predict_input(run, str(words))
    assert error.value.where == str(words) and "without its tag column" in error.value.message
    assert "each sentence on one line" in (error.value.fix or "")
    words.write_text("Paris\nLondon\n")  # a list of one-word texts is that
    assert [e.tokens for e in pipeline.read_predict_input(run, str(words))] == [["Paris"], ["London"]]


def test_chat_starts_with_the_system_prompt_the_run_trained_with(finished_run, tmp_path):
    """predict and eval give the model the run's data.system_prompt; chat must too (--system replaces it)."""
    import shutil

    import yaml

    from tunesmith.chat import chat_loop

    run = tmp_path / "run-with-system-prompt"
    shutil.copytree(finished_run, run)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    saved["data"]["system_prompt"] = "You triage support tickets."
    (run / "config.yaml").write_text(yaml.safe_dump(saved))

    stdout = io.StringIO()
    history = chat_loop(str(run), max_new_tokens=2, stdin=io.StringIO("hello\n/system\n/exit\n"), stdout=stdout)
    assert history[0] == {"role": "system", "content": "You triage support tickets."}
    assert stdout.getvalue().count("system prompt: You triage support tickets.") == 2  # at start, and /system
    replaced = chat_loop(
        str(run), system="Be brief.", max_new_tokens=2, stdin=io.StringIO("hi\n"), stdout=io.StringIO()
    )
    assert replaced[0] == {"role": "system", "content": "Be brief."}
