"""Issue 15, "a newcomer's first hour", the config's part: data paths in a YAML file are read from the
file's folder (never a same-named file in the working directory), every config error names the YAML line
or the `--set` argument, the field, the allowed values in words and an example, and a data file given as
the config is recognised as one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tunesmith.config import load_config
from tunesmith.errors import TunesmithError

RECORD = '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n'


# ---------------------------------------------------------------------------------------------------
# 1. Relative data paths: the YAML's folder for what the YAML says, the working directory for --set


@pytest.fixture()
def project(tmp_path, monkeypatch):
    """configs/run.yaml with its data beside it, and a working directory holding a decoy of the same name."""
    configs, elsewhere = tmp_path / "configs", tmp_path / "scratch"
    for folder in (configs / "data", elsewhere / "data"):
        folder.mkdir(parents=True)
        for name in ("train.jsonl", "val.jsonl", "test.jsonl"):
            (folder / name).write_text(RECORD)
    monkeypatch.chdir(elsewhere)
    return configs, elsewhere


def test_yaml_data_paths_are_read_from_the_yaml_folder_even_when_the_cwd_has_the_same_file(project):
    configs, _ = project
    path = configs / "run.yaml"
    path.write_text("data:\n  train: data/train.jsonl\n  validation: data/val.jsonl\n  test: data/test.jsonl\n")
    data = load_config(path).data
    assert (data.train, data.validation, data.test) == tuple(
        str(configs / "data" / name) for name in ("train.jsonl", "val.jsonl", "test.jsonl")
    )


def test_a_missing_yaml_data_path_is_made_absolute_against_the_yaml_folder(project):
    """The data report's "file not found" then names the place that was looked at, not the cwd's copy."""
    configs, elsewhere = project
    (elsewhere / "data" / "only_here.jsonl").write_text(RECORD)
    path = configs / "run.yaml"
    path.write_text("data:\n  train: data/only_here.jsonl\n")
    assert load_config(path).data.train == str(configs / "data" / "only_here.jsonl")


def test_a_relative_config_path_is_resolved_too(project):
    configs, elsewhere = project
    (configs / "run.yaml").write_text("data:\n  train: data/train.jsonl\n")
    relative = Path("..") / "configs" / "run.yaml"
    assert load_config(relative).data.train == str(configs / "data" / "train.jsonl")


def test_set_data_paths_are_relative_to_the_working_directory(project):
    configs, elsewhere = project
    path = configs / "run.yaml"
    path.write_text("data:\n  train: data/train.jsonl\n  test: data/test.jsonl\n")
    config = load_config(path, ["data.train=data/train.jsonl", "data.validation=data/val.jsonl"])
    assert config.data.train == str(elsewhere / "data" / "train.jsonl")
    assert config.data.validation == str(elsewhere / "data" / "val.jsonl")
    assert config.data.test == str(configs / "data" / "test.jsonl")  # the YAML's own, still from its folder


def test_without_a_config_file_paths_are_relative_to_the_working_directory(project):
    _, elsewhere = project
    assert load_config(None, ["data.train=data/train.jsonl"]).data.train == str(elsewhere / "data" / "train.jsonl")


def test_hub_dataset_ids_absolute_paths_and_output_dir_are_left_as_written(project):
    configs, elsewhere = project
    path = configs / "run.yaml"
    path.write_text(
        f"data:\n  train: someorg/tickets\n  test: {elsewhere / 'data' / 'test.jsonl'}\noutput:\n  dir: runs\n"
    )
    config = load_config(path)
    assert config.data.train == "someorg/tickets"
    assert config.data.test == str(elsewhere / "data" / "test.jsonl")
    assert config.output.dir == "runs"  # output goes under the working directory, as its description says


def test_class_data_dir_of_text_to_image_is_read_from_the_yaml_folder(project):
    configs, _ = project
    path = configs / "run.yaml"
    path.write_text("task: text-to-image\ndata:\n  class_prompt: a dog\n  class_data_dir: class_images\n")
    assert load_config(path).data.class_data_dir == str(configs / "class_images")


# ---------------------------------------------------------------------------------------------------
# 4. Every config error: the line or the --set argument, the field, the allowed values, an example

# pydantic's own vocabulary, which means nothing to someone who wrote a YAML file.
INTERNALS = re.compile(
    r"constrained-|literal\[|function-(after|before|wrap|plain)|Value error|\(top level\)|Input should|"
    r"union|\blora\.|\bqlora\.|list\[str\]|valid dictionary"
)


def failure(tmp_path, text: str, overrides: list[str] | None = None) -> tuple[TunesmithError, Path]:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(TunesmithError) as info:
        load_config(path, overrides)
    assert not INTERNALS.search(info.value.render()), info.value.render()
    return info.value, path


def test_a_set_type_error_blames_the_set_argument_in_words(tmp_path):
    with pytest.raises(TunesmithError) as info:
        load_config(None, ["train.batch_size=eight"])
    err = info.value
    assert err.where == "--set train.batch_size=eight"
    assert "train.batch_size must be a whole number of at least 1, or 'auto' (got 'eight')" in err.message
    assert "--set train.batch_size=8" in err.fix
    assert not INTERNALS.search(err.render()), err.render()


def test_a_set_error_over_a_yaml_file_blames_the_set_argument_not_the_file(tmp_path):
    err, _ = failure(tmp_path, "train:\n  batch_size: 4\n", ["train.batch_size=eight"])
    assert err.where == "--set train.batch_size=eight"


def test_a_yaml_type_error_names_the_line_of_its_key(tmp_path):
    err, path = failure(tmp_path, "name: demo\ntrain:\n  epochs: 1\n  batch_size: eight\n")
    assert err.where == f"{path}:4"
    assert "train.batch_size must be a whole number of at least 1, or 'auto' (got 'eight')" in err.message
    assert "train.batch_size: 8" in err.fix


@pytest.mark.parametrize(
    ("text", "line", "says", "example"),
    [
        (
            "method:\n  name: lora\n  r: -4\n",
            3,
            "method.r must be a whole number of at least 1 (got -4)",
            "method.r: 8",
        ),
        ("train:\n  epochs: 0\n", 2, "train.epochs must be a number above 0 (got 0)", "train.epochs: 1"),
        (
            "train:\n  warmup_ratio: 1.5\n",
            2,
            "train.warmup_ratio must be a number of at least 0 and below 1 (got 1.5)",
            "train.warmup_ratio: 0.05",
        ),
        ("data:\n  max_length: 4\n", 2, "data.max_length must be a whole number of at least 8 (got 4)", "1024"),
        (
            "train:\n  max_steps: 0.5\n",
            2,
            "train.max_steps must be a whole number of at least 1, or null",
            "max_steps:",
        ),
        ("seed: lucky\n", 1, "seed must be a whole number (got 'lucky')", "seed: 42"),
        ("train:\n  compile: maybe\n", 2, "train.compile must be true or false (got 'maybe')", "train.compile: false"),
        ("name: 123\n", 1, "name must be text (got 123)", 'name: "123"'),
        (
            "model:\n  dtype: fp16\n",
            2,
            "model.dtype must be one of 'auto', 'float32', 'bfloat16', 'float16' (got 'fp16')",
            "model.dtype: float16",
        ),
        (
            "track:\n  report_to: [tensorbord]\n",
            2,
            "track.report_to must be a list of: 'tensorboard', 'mlflow', 'wandb' (got ['tensorbord'])",
            "track.report_to:",
        ),
        ("data:\n  columns: [prompt]\n", 2, "data.columns must be a mapping of names to text", "data.columns: {"),
        ("train: 5\n", 1, "train must be a section of keys (got 5)", "train: {"),
        ("method: lora\n", 1, "method must be a section of keys (got 'lora')", "method: {name: lora}"),
        ("data:\n  split: [0.5, 0.1]\n", 2, "data.split must be three numbers (got [0.5, 0.1])", "[0.8, 0.1, 0.1]"),
    ],
)
def test_wrong_types_and_ranges_say_what_is_allowed_with_an_example(tmp_path, text, line, says, example):
    err, path = failure(tmp_path, text)
    assert err.where == f"{path}:{line}"
    assert says in err.message
    assert example in err.fix


def test_a_bad_method_name_lists_the_methods_and_the_closest(tmp_path):
    err, path = failure(tmp_path, "task: chat\nmethod:\n  name: lroa\n  r: 4\n")
    assert err.where == f"{path}:3"
    assert "method.name must be one of 'full', 'freeze', 'lora'" in err.message and "(got 'lroa')" in err.message
    assert "did you mean 'lora'?" in err.fix


def test_a_split_that_does_not_sum_to_one_points_at_data_split(tmp_path):
    err, path = failure(tmp_path, "data:\n  train: x.jsonl\n  split: [0.8, 0.2, 0.1]\n")
    assert err.where == f"{path}:3"
    assert err.message.startswith("data.split") and "sum to 1" in err.message
    assert "data.split: [0.8, 0.1, 0.1]" in err.fix


def test_a_validator_on_several_fields_points_at_the_field_it_concerns(tmp_path):
    err, path = failure(tmp_path, "method:\n  name: qlora\n  init: pissa\n")
    assert err.where == f"{path}:3" and "method.init" in err.message and "rewrites the base weights" in err.message
    err, path = failure(tmp_path, "task: chat\ndata:\n  max_length: 64\n  max_target_length: 64\n")
    assert err.where == f"{path}:4" and "data.max_target_length applies to task summarization" in err.message


def test_an_unknown_key_names_its_line_and_the_closest_key(tmp_path):
    err, path = failure(tmp_path, "train:\n  epochs: 1\n  learning_rat: 1e-4\n")
    assert err.where == f"{path}:3"
    assert "unknown key 'train.learning_rat'" in err.message and "did you mean 'train.learning_rate'?" in err.fix


@pytest.mark.parametrize(
    ("text", "fix"),
    [
        ("epochs: 3\n", "did you mean 'train.epochs'?"),  # a key in the wrong section
        ("train:\n  max_length: 256\n", "did you mean 'data.max_length'?"),
        ("train:\n  lr: 1e-4\n", "did you mean 'train.learning_rate'?"),  # other tools' names
        ("method:\n  lora_alpha: 32\n", "did you mean 'method.alpha'?"),
        ("model_name_or_path: gpt2\n", "did you mean 'model.name'?"),
    ],
)
def test_an_unknown_key_suggests_its_section_or_tunesmith_s_name_for_it(tmp_path, text, fix):
    err, _ = failure(tmp_path, text)
    assert fix in err.fix


def test_the_cli_blames_the_set_argument_not_the_example_file(capsys):
    from conftest import EXAMPLES

    from tunesmith.cli import main

    assert main(["validate", str(EXAMPLES / "quickstart.yaml"), "--set", "train.batch_size=eight"]) == 2
    err = capsys.readouterr().err
    assert (
        "error: --set train.batch_size=eight: train.batch_size must be a whole number of at least 1, or 'auto'" in err
    )
    assert "quickstart.yaml" not in err and "fix: e.g. --set train.batch_size=8" in err


def test_an_unknown_key_in_a_search_parameter_names_the_closest(tmp_path):
    err, path = failure(tmp_path, "search:\n  space:\n    train.learning_rate:\n      type: float\n      lo: 1\n")
    assert err.where == f"{path}:5"
    assert "unknown key 'search.space.train.learning_rate.lo'" in err.message
    assert "did you mean 'search.space.train.learning_rate.low'?" in err.fix


def test_a_custom_validator_message_keeps_its_words_without_pydantic_s(tmp_path):
    err, path = failure(tmp_path, "task: chatt\n")
    assert err.where == f"{path}:1" and "task: unknown task 'chatt'" in err.message


def test_several_problems_each_name_their_own_place(tmp_path):
    err, path = failure(tmp_path, "train:\n  epochs: 0\nmethod:\n  r: 4\n", ["method.r=-4"])
    assert err.where == str(path) and "2 problems" in err.message
    assert f"{path}:2: train.epochs must be a number above 0" in err.message
    assert "--set method.r=-4: method.r must be a whole number of at least 1" in err.message
    assert "e.g. train.epochs: 1" in err.message and "e.g. --set method.r=8" in err.message


def test_a_key_written_twice_is_an_error_naming_both_lines(tmp_path):
    err, path = failure(tmp_path, "train:\n  epochs: 1\n  epochs: 3\n")
    assert err.where == f"{path}:3" and "train.epochs" in err.message and "line 2" in err.message


# ---------------------------------------------------------------------------------------------------
# 5. A data file given where the run config goes


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("tickets.jsonl", RECORD * 3),
        ("tickets.csv", "question,answer\nq,a\n"),
        ("tickets.json", "[" + RECORD.strip() + "]"),
        ("tickets.yaml", RECORD * 3),  # JSON lines under a config's name
    ],
)
def test_a_data_file_given_as_the_config_is_recognised(tmp_path, capsys, name, text):
    from tunesmith.cli import main

    path = tmp_path / name
    path.write_text(text)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "is a data file, not a run config" in err and "invalid YAML" not in err
    assert f"data.train: {path}" in err and "tunesmith init --task chat > run.yaml" in err


def test_a_data_folder_given_as_the_config_is_named_so(tmp_path, capsys):
    from tunesmith.cli import main

    assert main(["validate", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is a folder, not a run config" in err and f"data.train: {tmp_path}" in err


def test_a_json_run_config_is_still_a_config(tmp_path):
    path = tmp_path / "run.json"
    path.write_text('{"train": {"epochs": 2}}')
    assert load_config(path).train.epochs == 2


def test_a_json_config_of_misspelt_keys_is_not_called_a_data_file(tmp_path, capsys):
    from tunesmith.cli import main

    path = tmp_path / "run.json"
    path.write_text('{"trian": {"epochs": 1}}')  # every key misspelt: still a config, so the key is named
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "data file" not in err
    assert "unknown key 'trian'" in err and "did you mean 'train'?" in err


def test_an_empty_json_object_is_a_config_of_defaults_as_an_empty_yaml_file_is(tmp_path):
    path = tmp_path / "run.json"
    path.write_text("{}")
    assert load_config(path) == load_config(None)


@pytest.mark.parametrize(
    "text",
    [
        '{"data": [{"text": "a"}, {"text": "b"}]}',  # records under one key, which the readers unwrap
        '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}',
        '{"instruction": "q", "output": "a"}',  # one alpaca record: its `output` is text, not the config section
        '{"text": "a", "label": "b"}',
    ],
)
def test_a_json_object_that_looks_like_records_is_a_data_file(tmp_path, text):
    path = tmp_path / "tickets.json"
    path.write_text(text)
    with pytest.raises(TunesmithError, match="is a data file, not a run config"):
        load_config(path)


# ---------------------------------------------------------------------------------------------------
# 6. model.name: a folder beside the config is read from the config's folder, as data paths are


@pytest.fixture()
def model_beside_config(project):
    """configs/models/x (a model folder) beside configs/run.yaml, which names it `models/x`."""
    configs, elsewhere = project
    (configs / "models" / "x").mkdir(parents=True)
    (configs / "models" / "x" / "config.json").write_text("{}")
    (configs / "run.yaml").write_text("model:\n  name: models/x\n")
    return configs, elsewhere


def test_a_model_folder_beside_the_config_is_read_from_the_config_s_folder(model_beside_config):
    from tunesmith.models.resolve import resolve_model

    configs, _ = model_beside_config
    name = load_config(configs / "run.yaml").model.name
    assert name == str(configs / "models" / "x")
    assert resolve_model(name).source == "local"  # not "the model hub is unreachable, so 'models/x' ..."


def test_a_gguf_file_beside_the_config_and_a_path_that_can_only_be_local_are_made_absolute(project):
    configs, _ = project
    (configs / "model.gguf").write_bytes(b"GGUF")
    (configs / "run.yaml").write_text("model:\n  name: model.gguf\n")
    assert load_config(configs / "run.yaml").model.name == str(configs / "model.gguf")
    (configs / "run.yaml").write_text("model:\n  name: ./missing/model\n")  # the message then names where
    assert load_config(configs / "run.yaml").model.name == str(configs / "missing" / "model")


def test_a_set_model_name_is_read_from_the_working_directory(model_beside_config):
    configs, elsewhere = model_beside_config
    (elsewhere / "models" / "x").mkdir(parents=True)
    assert load_config(configs / "run.yaml", ["model.name=models/x"]).model.name == str(elsewhere / "models" / "x")


def test_hub_ids_and_starter_names_stay_as_written(project):
    configs, _ = project
    (configs / "run.yaml").write_text("model:\n  name: HuggingFaceTB/SmolLM2-135M-Instruct\n")
    assert load_config(configs / "run.yaml").model.name == "HuggingFaceTB/SmolLM2-135M-Instruct"
    (configs / "run.yaml").write_text("model:\n  name: smollm2-135m-instruct\n")
    assert load_config(configs / "run.yaml").model.name == "smollm2-135m-instruct"


def test_model_name_s_description_says_where_a_relative_path_is_read_from():
    from tunesmith.config import ModelConfig

    assert "config file's folder" in str(ModelConfig.model_fields["name"].description)


# ---------------------------------------------------------------------------------------------------
# 7. A hub dataset id: decided once, against the config's folder, never again against the working directory


def test_a_hub_id_in_a_config_is_not_taken_for_a_path_because_the_working_directory_has_its_owner(
    tmp_path, monkeypatch
):
    import datasets

    from tunesmith.data.readers import read_records

    (tmp_path / "cfgdir").mkdir()
    (tmp_path / "someorg").mkdir()  # in the working directory, not the config's folder
    (tmp_path / "cfgdir" / "hub.yaml").write_text("data:\n  train: someorg/somedata\n")
    monkeypatch.chdir(tmp_path)
    train = load_config("cfgdir/hub.yaml").data.train
    assert train == "someorg/somedata"
    monkeypatch.setattr(datasets, "load_dataset", lambda name, split=None: [{"text": "from the hub"}])
    assert read_records(train)[0].fields == {"text": "from the hub"}  # was: file not found (tried <cwd>/...)


def test_config_and_readers_share_one_list_of_data_suffixes():
    from tunesmith import config, sources
    from tunesmith.data import readers

    assert config.DATA_SUFFIXES is sources.DATA_SUFFIXES is readers.SUPPORTED_EXTENSIONS


# ---------------------------------------------------------------------------------------------------
# 8. A bad value is shown, never called "required"; a key that is no name says keys are names


def test_a_search_range_outside_a_field_s_bounds_shows_the_value_not_required():
    from tunesmith.search.space import check_search

    config = load_config(
        None, ["data.train=x.jsonl", "search.space={train.learning_rate: {type: float, low: -0.1, high: 0.1}}"]
    )
    with pytest.raises(TunesmithError) as info:
        check_search(config)
    assert "required" not in info.value.message
    assert "train.learning_rate must be a number above 0 (got -0.1)" in info.value.message


def test_a_type_error_without_the_raw_value_shows_pydantic_s_copy_of_it():
    from pydantic import ValidationError

    from tunesmith.config import RunConfig, explain_error

    with pytest.raises(ValidationError) as info:
        RunConfig.model_validate({"train": {"batch_size": "eight"}})
    message = explain_error(info.value, "somewhere").message  # no raw: the search's old call
    assert "required" not in message and "(got 'eight')" in message


@pytest.mark.parametrize(
    ("text", "line", "says", "fix"),
    [
        ("1: foo\n", 1, "the key 1 at the top of the config is a number: keys must be names", "valid keys at the top"),
        (
            "train:\n  epochs: 1\n  true: 3\n",
            3,
            "the key true in train is true or false",
            "valid keys in train: epochs",
        ),
        ("method:\n  name: lora\n  5: 3\n", 3, "the key 5 in method is a number", "valid keys in method: name, r"),
        ("data:\n  columns:\n    1: a\n", 3, "the key 1 in data.columns is a number", "e.g. data.columns: {"),
        ("search:\n  space:\n    3: {type: int}\n", 3, "the key 3 in search.space", "e.g. search.space: {train."),
    ],
)
def test_a_key_that_is_not_a_name_says_keys_are_names(tmp_path, text, line, says, fix):
    err, path = failure(tmp_path, text)
    assert says in err.message and "required" not in err.message
    assert err.where == f"{path}:{line}"
    assert fix in err.fix
