"""Model references: starter names, hub ids of starters offline, local directories, GGUF files."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tunesmith.errors import TunesmithError
from tunesmith.models.resolve import resolve_model
from tunesmith.models.starters import STARTERS


def test_starter_name_resolves_to_the_converted_cache(starter_dir):
    resolved = resolve_model("smollm2-135m-instruct")
    assert resolved.source == "starter" and resolved.path == str(starter_dir)
    assert (starter_dir / "model.safetensors").exists() and (starter_dir / "tokenizer.json").exists()


def test_hub_id_of_a_starter_falls_back_to_the_package_offline(monkeypatch, starter_dir):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    resolved = resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert resolved.source == "starter" and resolved.path == str(starter_dir)


def test_other_hub_id_offline_says_how_to_use_a_local_directory(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TunesmithError) as info:
        resolve_model("meta-llama/Llama-3.2-1B")
    message = str(info.value)
    assert "unreachable" in message and "--local-dir" in message and "model.name" in message


def test_local_directory_and_gguf_file(tiny_llama_dir):
    assert resolve_model(str(tiny_llama_dir)).source == "local"
    spec = importlib.util.find_spec(STARTERS["smollm2-135m-instruct"].package)
    gguf = next(iter(spec.submodule_search_locations)) + "/SmolLM2-135M-Instruct.Q4_1.gguf"
    resolved = resolve_model(gguf)
    assert resolved.source == "gguf" and resolved.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_nonsense_reference_lists_the_starters():
    with pytest.raises(TunesmithError, match="smollm2-135m-instruct"):
        resolve_model("not-a-model")


def test_packaged_minilm_is_a_plain_hf_directory():
    resolved = resolve_model("all-minilm-l6-v2")
    assert resolved.source == "starter"
    assert (Path(resolved.path) / "config.json").exists()
