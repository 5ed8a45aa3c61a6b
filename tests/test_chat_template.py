"""Rendering and loss masks on the real SmolLM2 tokenizer and chat template."""

from __future__ import annotations

import pytest

from tunesmith.data.chat_template import IGNORE_INDEX, encode_chat, show_mask
from tunesmith.data.formats import Example
from tunesmith.errors import TunesmithError


def chat(*turns) -> Example:
    roles = {"s": "system", "u": "user", "a": "assistant"}
    return Example(where="t.jsonl:1", messages=[{"role": roles[r], "content": c} for r, c in turns])


def trained_text(encoded, tokenizer) -> list[str]:
    return [tokenizer.decode(encoded.input_ids[s:e]) for s, e in encoded.assistant_spans]


def test_only_assistant_turns_carry_loss_and_end_with_eos(tokenizer):
    encoded = encode_chat(
        chat(("s", "Be brief."), ("u", "Hi"), ("a", "Hello!"), ("u", "Bye"), ("a", "Goodbye.")),
        tokenizer,
        max_length=256,
    )
    assert trained_text(encoded, tokenizer) == ["Hello!<|im_end|>", "Goodbye.<|im_end|>"]
    assert encoded.labels[encoded.assistant_spans[0][1] - 1] == tokenizer.eos_token_id
    # Everything outside the spans is ignored.
    inside = {i for s, e in encoded.assistant_spans for i in range(s, e)}
    assert all(label == IGNORE_INDEX for i, label in enumerate(encoded.labels) if i not in inside)


def test_train_on_all_labels_every_token(tokenizer):
    encoded = encode_chat(chat(("u", "Hi"), ("a", "Hello!")), tokenizer, max_length=256, train_on="all")
    assert encoded.labels == encoded.input_ids


def test_mask_is_shown_in_brackets(tokenizer):
    encoded = encode_chat(chat(("u", "Hi"), ("a", "Hello!")), tokenizer, max_length=256)
    assert "[[Hello!<|im_end|>]]" in show_mask(encoded, tokenizer)


def test_fallback_template_when_tokenizer_has_none(tokenizer):
    import copy

    bare = copy.deepcopy(tokenizer)
    bare.chat_template = None
    encoded = encode_chat(chat(("u", "Hi"), ("a", "Hello!")), bare, max_length=256)
    assert trained_text(encoded, bare) == ["Hello!<|im_end|>"]


def test_template_without_end_of_turn_token_is_refused(tokenizer):
    template = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    )
    with pytest.raises(TunesmithError, match="would not learn to stop") as info:
        encode_chat(chat(("u", "Hi"), ("a", "Hello!")), tokenizer, max_length=256, template=template)
    assert "t.jsonl:1" in str(info.value)


def test_prompt_longer_than_max_length_is_an_error_naming_the_record(tokenizer):
    with pytest.raises(TunesmithError, match="data.max_length=16") as info:
        encode_chat(chat(("u", "word " * 50), ("a", "ok")), tokenizer, max_length=16)
    assert "t.jsonl:1" in str(info.value)


def test_long_answer_is_truncated_and_counted(tokenizer):
    encoded = encode_chat(chat(("u", "Hi"), ("a", "yes " * 100)), tokenizer, max_length=40)
    assert encoded.truncated and len(encoded.input_ids) == 40 and encoded.full_length > 40
    assert encoded.trained_tokens > 0


def test_plain_text_learns_every_token_and_the_end(tokenizer):
    encoded = encode_chat(Example(where="t:1", text="Contract law governs agreements."), tokenizer, max_length=64)
    assert encoded.labels == encoded.input_ids
    assert encoded.input_ids[-1] == tokenizer.eos_token_id


def test_stop_tokens_include_the_models_generation_config_eos(tokenizer, tiny_llama_dir, tmp_path):
    # Llama 3 ends a turn with <|eot_id|>, listed in generation_config.json, not as the tokenizer's EOS.
    # chat, serve and the merged export must all stop there: they read the model's generation config.
    from transformers import AutoModelForCausalLM

    from tunesmith.data.chat_template import stop_token_ids
    from tunesmith.merging import _save_generation_config

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_start|>")
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, end_of_turn]
    assert stop_token_ids(tokenizer, model) == {tokenizer.eos_token_id, end_of_turn}
    assert stop_token_ids(tokenizer) == {tokenizer.eos_token_id}
    _save_generation_config(tokenizer, model, tmp_path)
    import json

    saved = json.loads((tmp_path / "generation_config.json").read_text())
    assert sorted(saved["eos_token_id"]) == sorted({tokenizer.eos_token_id, end_of_turn})
