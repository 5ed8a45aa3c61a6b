"""Config: strict with what users type, lenient with what runs saved, docs generated from fields."""

from __future__ import annotations

import pytest
import yaml

from tunesmith.config import RunConfig, dump_config, load_config, load_saved_config, render_reference, render_template
from tunesmith.errors import TunesmithError


def test_defaults_have_descriptions_everywhere():
    for section_name, field in RunConfig.model_fields.items():
        assert field.description, section_name
        annotation = field.annotation
        if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
            for name, sub in annotation.model_fields.items():
                assert sub.description, f"{section_name}.{name} has no description"


def test_unknown_key_names_closest(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("method:\n  rank: 16\ntrain:\n  learning_rat: 1e-4\n")
    with pytest.raises(TunesmithError) as info:
        load_config(path)
    message = str(info.value)
    assert "unknown key 'train.learning_rat'" in message
    assert "did you mean 'train.learning_rate'" in message
    assert str(path) in message


def test_wrong_type_names_field(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  batch_size: many\n")
    with pytest.raises(TunesmithError, match="train.batch_size"):
        load_config(path)


def test_overrides_apply_and_parse_numbers(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  learning_rate: 1e-4\n")
    config = load_config(path, ["train.learning_rate=3e-4", "method.r=16", "method.target_modules=[q_proj, v_proj]"])
    assert config.train.learning_rate == pytest.approx(3e-4)
    assert config.method.r == 16
    assert config.method.target_modules == ["q_proj", "v_proj"]


def test_override_of_unknown_key_is_an_error():
    with pytest.raises(TunesmithError, match="method.rank"):
        load_config(None, ["method.rank=4"])


def test_split_must_sum_to_one():
    with pytest.raises(TunesmithError, match="data.split"):
        load_config(None, ["data.split=[0.5, 0.1, 0.1]"])


def test_template_loads_back_to_the_same_config(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(render_template())
    assert load_config(path) == RunConfig()
    assert "# LoRA rank" in render_template()
    assert "`train.learning_rate`" in render_reference()


def test_saved_config_drops_unknown_keys_with_warning(tmp_path):
    raw = yaml.safe_load(dump_config(RunConfig()))
    raw["train"]["removed_in_future"] = 1
    raw["legacy_section"] = {"x": 1}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.warns(UserWarning, match="removed_in_future"):
        config = load_saved_config(path)
    assert config == RunConfig()


def test_relative_data_paths_resolve_against_the_yaml_folder(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.jsonl").write_text('{"text": "a"}\n')
    (tmp_path / "run.yaml").write_text("data:\n  train: d/x.jsonl\n")
    config = load_config(tmp_path / "run.yaml")
    assert config.data.train == str(tmp_path / "d" / "x.jsonl")


def test_invalid_yaml_names_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  epochs: [1\n")
    with pytest.raises(TunesmithError, match=r"run.yaml:\d"):
        load_config(path)


def test_docs_config_reference_is_in_sync():
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[1] / "docs" / "config.md").read_text()
    assert render_reference() in docs, "regenerate docs/config.md from tunesmith.config.render_reference()"


def test_a_task_s_own_data_options_are_refused_for_another_task_but_saved_runs_still_load(tmp_path):
    """`data.max_target_length` means something to summarization only: set for chat it would be silently
    ignored, so it is an error naming its task; a run saved with every task's options still loads."""
    import yaml

    with pytest.raises(TunesmithError, match="applies to task summarization, not chat") as err:
        load_config(None, ["data.max_target_length=64"])
    assert err.value.where == "--set data.max_target_length=64"  # the argument that set it
    assert load_config(None, ["task=summarization", "data.max_target_length=64"]).data.max_target_length == 64
    assert load_config(None, ["data.max_target_length=128"]).task == "chat"  # the default value: a dumped config
    saved = tmp_path / "config.yaml"
    saved.write_text(yaml.safe_dump({"task": "chat", "data": {"multi_label": True, "max_length": 64}}))
    config = load_saved_config(saved)
    assert config.data.max_length == 64 and config.data.multi_label is False


def test_switching_method_drops_the_old_method_s_options_but_keeps_typos_as_errors(tmp_path):
    config = load_config(None, ["method.r=16", "method.name=full"])
    assert config.method.name == "full"
    with pytest.raises(TunesmithError, match="unknown key 'method.rr'"):
        load_config(None, ["method.rr=16", "method.name=full"])
    # Without a switch, another method's option is an error that names the methods it belongs to.
    path = tmp_path / "run.yaml"
    path.write_text("method:\n  name: lora\n  quant_type: nf4\n")
    with pytest.raises(TunesmithError, match="unknown key 'method.quant_type'") as err:
        load_config(path)
    assert "belongs to method qlora" in err.value.fix


def test_template_notes_are_comment_lines_of_the_header(tmp_path):
    text = render_template(notes=["data.train points at example data: replace it.", "second note"])
    header = text.split("\n\n", 1)[0].splitlines()
    assert header[-2:] == ["# data.train points at example data: replace it.", "# second note"]
    path = tmp_path / "run.yaml"
    path.write_text(text)
    assert load_config(path) == RunConfig()  # comments only


def test_init_puts_its_example_data_note_in_the_header(capsys):
    from tunesmith.cli import main

    assert main(["init", "--task", "chat"]) == 0
    header = capsys.readouterr().out.split("\n\n", 1)[0]
    assert "# data.train points at tunesmith's packaged example data: replace it with your file." in header
