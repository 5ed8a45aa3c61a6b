"""Preference tuning (task: preference): the pair layouts and their errors, the encoding's loss mask, the
reference model in each of its forms, and short DPO / SimPO / ORPO runs of the tiny Llama."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import EXAMPLES, read_jsonl

from tunesmith.data.preference import normalise_pairs
from tunesmith.data.readers import RawRecord
from tunesmith.errors import TunesmithError

PAIRS = EXAMPLES / "data" / "debian_preferences.jsonl"


def _records(*rows: dict) -> list[RawRecord]:
    return [RawRecord(row, f"pairs.jsonl:{i + 1}") for i, row in enumerate(rows)]


def _pairs(*rows: dict, **data):
    from tunesmith.config import DataConfig

    return normalise_pairs(_records(*rows), DataConfig(**data))[0]


USER = {"role": "user", "content": "Which editor?"}


def test_every_layout_gives_the_same_pair():
    explicit = _pairs({"prompt": "Which editor?", "chosen": "vim", "rejected": "ed"})[0]
    assert (explicit.prompt, explicit.chosen, explicit.rejected) == ([USER], "vim", "ed")
    as_messages = _pairs(
        {
            "prompt": [USER],
            "chosen": [{"role": "assistant", "content": "vim"}],
            # Some exports repeat the prompt in each answer: it is removed.
            "rejected": [USER, {"role": "assistant", "content": "ed"}],
        }
    )[0]
    implicit = _pairs(
        {
            "chosen": [USER, {"role": "assistant", "content": "vim"}],
            "rejected": [USER, {"role": "assistant", "content": "ed"}],
        }
    )[0]
    for pair in (as_messages, implicit):
        assert (pair.prompt, pair.chosen, pair.rejected) == ([USER], "vim", "ed")
    # Anthropic HH's texts: the shared prefix, up to its last whitespace, is the prompt.
    text = _pairs({"chosen": "Human: hi Assistant: hello there", "rejected": "Human: hi Assistant: hello? go away"})[0]
    assert (text.prompt, text.chosen, text.rejected) == ("Human: hi Assistant:", " hello there", " hello? go away")
    plain = _pairs({"chosen": "Q: 2+2? A: four", "rejected": "Q: 2+2? A: five"})[0]
    assert (plain.prompt, plain.chosen, plain.rejected) == ("Q: 2+2? A: ", "four", "five")
    mapped = _pairs(
        {"question": "Which editor?", "better": "vim", "worse": "ed"},
        columns={"prompt": "question", "chosen": "better", "rejected": "worse"},
    )[0]
    assert (mapped.chosen, mapped.rejected) == ("vim", "ed")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "q", "chosen": "same", "rejected": " same "}, "the chosen and rejected answers are the same"),
        ({"prompt": "q", "chosen": "", "rejected": "no"}, "the chosen answer ('chosen') is empty"),
        (
            {
                "chosen": [USER, {"role": "assistant", "content": "vim"}],
                "rejected": [{"role": "user", "content": "Which shell?"}, {"role": "assistant", "content": "sh"}],
            },
            "their prompts differ",
        ),
        (
            {"prompt": [USER], "chosen": "vim", "rejected": [{"role": "user", "content": "other"}]},
            "prompt differs from the record's prompt",
        ),
        ({"prompt": "q", "chosen": "vim", "rejected": 3}, "must be a string or a list of {role, content} messages"),
        ({"prompt": "q", "chosen": "vim"}, "rejected"),
    ],
)
def test_a_pair_that_teaches_nothing_is_an_error_with_its_line(row, message):
    with pytest.raises(TunesmithError) as error:
        _pairs({"prompt": "fine", "chosen": "a", "rejected": "b"}, row)
    assert message in error.value.message and error.value.where == "pairs.jsonl:2" and error.value.fix


def test_unknown_column_roles_are_refused():
    with pytest.raises(TunesmithError, match="preference pairs do not have") as error:
        _pairs({"prompt": "q", "chosen": "a", "rejected": "b"}, columns={"completion": "answer"})
    assert error.value.where == "data.columns"


def test_the_loss_mask_covers_the_answer_alone(tokenizer, tmp_path, tiny_llama_dir):
    from tunesmith.config import load_config
    from tunesmith.tasks import preference

    config = load_config(None, ["task=preference", f"model.name={tiny_llama_dir}", "data.max_length=64"])
    history = [USER, {"role": "assistant", "content": "vim"}, {"role": "user", "content": "And a pager?"}]
    pair = _pairs({"prompt": history, "chosen": "less", "rejected": "more or less"})[0]
    encoded = preference.encode([pair], tokenizer, config)[0]
    # The earlier assistant turn ("vim") is prompt, not answer: only each answer and its end-of-turn carry loss.
    chosen = tokenizer.decode([i for i, label in zip(encoded.chosen_ids, encoded.chosen_labels) if label != -100])
    rejected = tokenizer.decode([i for i, lab in zip(encoded.rejected_ids, encoded.rejected_labels) if lab != -100])
    assert chosen.strip() == "less<|im_end|>" and rejected.strip() == "more or less<|im_end|>"
    assert "[[less<|im_end|>]]" in preference.describe(encoded, tokenizer).replace("\n", "")
    batch = preference.collate([encoded, encoded], tokenizer.pad_token_id)
    assert batch["input_ids"].shape[0] == 4 and preference.count_targets(batch) == 2
    # An answer cut by max_length is reported; one cut away entirely is an error naming the record.
    short = load_config(None, ["task=preference", f"model.name={tiny_llama_dir}", "data.max_length=64"])
    long_pair = _pairs({"prompt": history, "chosen": "less " * 30, "rejected": "more"})[0]
    cut = preference.encode([long_pair], tokenizer, short)
    assert cut[0].truncated and "raise data.max_length" in preference.findings(cut, short)[0]
    for cut_at in (8, 48):  # before the first assistant turn (chat's own check), or inside the last user turn
        with pytest.raises(TunesmithError, match="max_length") as error:
            preference.encode(
                [long_pair], tokenizer, load_config(None, ["task=preference", f"data.max_length={cut_at}"])
            )
        assert error.value.where == "pairs.jsonl:1" and "raise data.max_length" in error.value.fix


def test_preference_options_belong_to_the_preference_task():
    from tunesmith.config import load_config

    with pytest.raises(TunesmithError, match="train.beta applies to task preference"):
        load_config(None, ["task=chat", "train.beta=0.3"])
    # An option of another loss would be ignored: refused.
    with pytest.raises(TunesmithError, match="label_smoothing applies to loss_type sigmoid and simpo, not ipo"):
        load_config(None, ["task=preference", "train.loss_type=ipo", "train.label_smoothing=0.1"])
    with pytest.raises(TunesmithError, match="simpo_gamma applies to loss_type simpo"):
        load_config(None, ["task=preference", "train.simpo_gamma=1.0"])
    assert load_config(None, ["task=preference", "train.beta=0.3", "train.loss_type=ipo"]).train.beta == 0.3


def _pair_file(folder: Path, count: int = 40) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "pairs.jsonl"
    path.write_text("\n".join(PAIRS.read_text().splitlines()[:count]) + "\n")
    return path


FAST = [
    "task=preference",
    "data.max_length=192",
    "data.split=[0.6,0.2,0.2]",
    "train.batch_size=4",
    "train.max_steps=18",  # three epochs of the 24 training pairs: the loss must fall on pairs seen before
    "train.eval_every=6",
    "train.log_every=1",
    "train.precision=fp32",
    "eval.max_new_tokens=4",
    "eval.report_samples=1",
]


def _train(tmp_path: Path, model: Path, *overrides: str):
    from tunesmith import pipeline
    from tunesmith.config import load_config

    config = load_config(
        None,
        [f"model.name={model}", f"data.train={_pair_file(tmp_path)}", f"output.dir={tmp_path / 'runs'}", *FAST]
        + list(overrides),
    )
    result = pipeline.train(config)
    return result, read_jsonl(result.run_dir / "metrics.jsonl")


def _epoch_mean(steps: list[dict], epoch: int, key: str) -> float:
    """The mean of `key` over the logged steps of one epoch (6 steps of 4 pairs), first (0) or last (-1)."""
    chosen = steps[:6] if epoch == 0 else steps[-6:]
    return sum(m[key] for m in chosen) / len(chosen)


def test_dpo_with_lora_uses_the_adapter_off_model_as_its_reference(tmp_path, tiny_llama_dir, capsys):
    result, metrics = _train(tmp_path, tiny_llama_dir, "method.name=lora", "train.learning_rate=1e-2")
    assert "the model with its adapter switched off" in capsys.readouterr().out
    steps = [m for m in metrics if "loss" in m]
    # Step 1: the fresh adapter is the reference, so every reward is 0 and the DPO loss is log 2.
    assert steps[0]["loss"] == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-4)
    assert steps[0]["rewards_margin"] == pytest.approx(0.0, abs=1e-4)
    assert _epoch_mean(steps, -1, "loss") < _epoch_mean(steps, 0, "loss") - 0.05
    assert _epoch_mean(steps, -1, "rewards_margin") > 0.05
    assert any("eval_rewards_accuracy" in m for m in metrics)
    summary = result.summary
    # Base vs tuned on the test split: the base is its own reference (margin 0), the tuned moved towards chosen.
    assert summary["base"]["rewards_margin"] == pytest.approx(0.0, abs=1e-4)
    assert summary["tuned"]["rewards_margin"] > 0
    assert 0.0 <= summary["tuned"]["preference_accuracy"] <= 1.0
    rows = json.loads((result.run_dir / "test_predictions.json").read_text())["tuned"]
    assert rows[0]["prediction"] is not None and "logp_chosen" in rows[0]
    assert "## Samples" in (result.run_dir / "report.md").read_text()


def test_full_fine_tuning_keeps_a_frozen_copy_and_cached_matches_it(tmp_path, tiny_llama_dir):
    from tunesmith.pipeline import load_tuned

    settings = ("method.name=full", "train.learning_rate=1e-3", "train.max_steps=4")
    copy_run, copy_metrics = _train(tmp_path / "copy", tiny_llama_dir, *settings)
    cached_run, cached_metrics = _train(tmp_path / "cached", tiny_llama_dir, *settings, "train.reference=cached")
    copy_steps = [m for m in copy_metrics if "loss" in m]
    cached_steps = [m for m in cached_metrics if "loss" in m]
    # The same reference either way (fp32): the same losses and rewards, step by step.
    for a, b in zip(copy_steps, cached_steps):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-4)
        assert a["rewards_chosen"] == pytest.approx(b["rewards_chosen"], abs=1e-4)
    assert copy_steps[0]["loss"] == pytest.approx(0.6931, abs=1e-3)
    # The weights trained (the copy did not take the updates in their place).
    tuned = load_tuned(copy_run.run_dir).model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    assert not torch.equal(tuned.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight)


@pytest.mark.parametrize("loss_type", ["simpo", "orpo", "ipo"])
def test_the_other_losses_train(tmp_path, tiny_llama_dir, loss_type):
    extra = ["train.beta=2.0"] if loss_type == "simpo" else []
    result, metrics = _train(
        tmp_path, tiny_llama_dir, "method.name=lora", "train.learning_rate=1e-2", f"train.loss_type={loss_type}", *extra
    )
    steps = [m for m in metrics if "loss" in m]
    assert _epoch_mean(steps, -1, "loss") < _epoch_mean(steps, 0, "loss"), steps
    if loss_type in ("simpo", "orpo"):  # no reference: the rewards are scaled log-probabilities
        assert "rewards_chosen" in steps[0] and "rewards_margin" not in result.summary["tuned"]


def test_the_adapter_reference_is_refused_for_full_fine_tuning():
    from tunesmith.config import load_config
    from tunesmith.tasks.preference import reference_mode

    config = load_config(None, ["task=preference", "method.name=full", "train.reference=adapter"])
    with pytest.raises(TunesmithError, match="train.reference: adapter needs an adapter") as error:
        reference_mode(config)
    assert "cached" in error.value.fix


def test_sft_then_dpo_is_two_commands(tmp_path, tiny_llama_dir):
    # model.from_run: the SFT run's adapter is merged into its base once (into that run's model_merged/) and the
    # DPO run starts from it; the DPO run records where it came from.
    from conftest import train_chat_run

    from tunesmith.config import load_saved_config

    (tmp_path / "sft").mkdir()
    sft = train_chat_run(tmp_path / "sft", tiny_llama_dir, "eval.compare_base=false")
    result, _ = _train(
        tmp_path / "dpo", tiny_llama_dir, f"model.from_run={sft}", "method.name=lora", "train.max_steps=2"
    )
    merged = sft / "model_merged"
    assert (merged / "config.json").exists()
    saved = load_saved_config(result.run_dir / "config.yaml")
    assert saved.model.name == str(merged) and saved.model.from_run == str(sft)
    assert result.summary["from_run"] == str(sft)


def test_a_run_of_another_model_kind_cannot_be_started_from(tmp_path):
    from tunesmith.config import dump_config, load_config
    from tunesmith.pipeline import model_of_run

    classifier = tmp_path / "classifier-run"
    classifier.mkdir()
    (classifier / "config.yaml").write_text(dump_config(load_config(None, ["task=text-classification"])))
    with pytest.raises(TunesmithError, match="is a text-classification run") as error:
        model_of_run(classifier, "preference")
    assert error.value.where == "model.from_run" and "task: chat" in error.value.fix
