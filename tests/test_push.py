"""`tunesmith push` (issue 16 part 5) against a local fake of the hub's HTTP API (tests/fake_hub.py): the
real huggingface_hub client creates the repository and commits the files over HTTP to 127.0.0.1, so what
is asserted is what the hub would have received."""

from __future__ import annotations

import argparse
import json
import socket
import time
from pathlib import Path

import pytest
import yaml
from conftest import train_chat_run
from fake_hub import FakeHub

from tunesmith.errors import TunesmithError
from tunesmith.push import push_run
from tunesmith.push.cli import add_commands


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_llama_dir) -> Path:
    """One trained tiny LoRA chat run with base-vs-tuned metrics in its summary.json."""
    return train_chat_run(tmp_path_factory.mktemp("push"), tiny_llama_dir)


@pytest.fixture()
def hub(monkeypatch):
    # conftest switches the hub off for the whole suite (HF_HUB_OFFLINE=1); this fake is the one hub allowed.
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with FakeHub() as fake:
        yield fake


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_push_sends_the_adapter_config_and_card_to_a_private_repo(finished_run, hub):
    pushed = push_run(finished_run, "alice/support-lora", private=True, token="hf_test_token", endpoint=hub.endpoint)

    repo = hub.repos["alice/support-lora"]
    assert repo.private and pushed["private"]
    adapter = finished_run / "adapter"
    weights = {p.name for p in adapter.iterdir() if p.is_file()} - {"README.md"}  # peft's template card replaced
    assert set(repo.files) == weights | {"config.yaml", "README.md"}
    assert "adapter_model.safetensors" in repo.files and "adapter_config.json" in repo.files
    for name in weights:  # byte-identical: what the hub holds is what the run saved
        assert repo.files[name] == (adapter / name).read_bytes(), name
    assert repo.files["config.yaml"] == (finished_run / "config.yaml").read_bytes()
    assert len(repo.commits) == 1  # one commit: never half a push

    # Every write carried the token as a bearer token; no request went to an endpoint the fake lacks.
    writes = [r for r in hub.requests if r["method"] == "POST"]
    assert {r["path"].split("?")[0] for r in writes} >= {
        "/api/repos/create",
        "/api/models/alice/support-lora/preupload/main",
        "/api/models/alice/support-lora/commit/main",
    }
    assert all(r["authorization"] == "Bearer hf_test_token" for r in writes)
    assert hub.unknown_requests() == []


def test_the_model_card_has_front_matter_metrics_and_commands(finished_run, hub, tiny_llama_dir):
    push_run(finished_run, "alice/card", token="hf_test_token", endpoint=hub.endpoint)
    card = hub.repos["alice/card"].files["README.md"].decode()
    summary = json.loads((finished_run / "summary.json").read_text())

    meta = _front_matter(card)
    assert meta["base_model"] == str(tiny_llama_dir)
    assert meta["library_name"] == "peft"
    assert meta["tags"] == ["tunesmith", "chat", "lora"]
    assert "license" not in meta  # a local tiny model has no known licence: omitted, not guessed
    assert not hub.repos["alice/card"].private
    assert "| metric | base | tuned |" in card
    for name in ("rougeL", "exact_match"):
        assert f"| {name} | {summary['base'][name]:.4g} | {summary['tuned'][name]:.4g} |" in card
    for split, count in summary["data"].items():
        assert f"| {split} | {count} |" in card
    assert "| r | `8` |" in card
    assert "tunesmith train config.yaml" in card
    assert 'AutoPeftModelForCausalLM.from_pretrained("alice/card")' in card
    assert hub.validated_cards == [card]  # the client had the hub check the front matter


def test_pushing_again_reuses_the_repository(finished_run, hub):
    for _ in range(2):
        push_run(finished_run, "alice/again", token="hf_test_token", endpoint=hub.endpoint)
    assert len(hub.repos["alice/again"].commits) == 2


def test_merged_push_sends_the_checked_merged_export(finished_run, hub):
    push_run(finished_run, "alice/merged", merged=True, token="hf_test_token", endpoint=hub.endpoint)
    files = hub.repos["alice/merged"].files
    assert "model.safetensors" in files and "adapter_config.json" not in files
    assert json.loads(files["export.json"])["passed"] is True
    assert _front_matter(files["README.md"].decode())["library_name"] == "transformers"
    assert "AutoModelForCausalLM" in files["README.md"].decode()


def test_no_token_says_how_to_log_in(finished_run, hub, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)  # no saved login either
    with pytest.raises(TunesmithError) as error:
        push_run(finished_run, "alice/x", endpoint=hub.endpoint)
    assert "token" in error.value.message
    assert "huggingface-cli login" in (error.value.fix or "") and "HF_TOKEN" in (error.value.fix or "")
    assert hub.requests == []  # refused before any request


def test_hf_token_from_the_environment_is_used(finished_run, hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    push_run(finished_run, "alice/env", endpoint=hub.endpoint)
    assert {r["authorization"] for r in hub.requests if r["method"] == "POST"} == {"Bearer hf_from_env"}


def test_an_unreachable_hub_is_named_quickly(finished_run, hub):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    with pytest.raises(TunesmithError) as error:
        push_run(finished_run, "alice/x", token="hf_test_token", endpoint=endpoint)
    assert time.perf_counter() - started < 10
    assert endpoint in error.value.message and error.value.where == "--endpoint"


def test_offline_mode_is_reported(finished_run, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(TunesmithError) as error:
        push_run(finished_run, "alice/x", token="hf_test_token", endpoint="http://127.0.0.1:9")
    assert "HF_HUB_OFFLINE" in error.value.message + (error.value.fix or "")


def test_a_repo_id_without_an_account_is_refused(finished_run):
    with pytest.raises(TunesmithError) as error:
        push_run(finished_run, "just-a-name", token="hf_test_token")
    assert error.value.where == "--repo"


def test_the_command_parses_and_calls_push(finished_run, hub):
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())
    args = parser.parse_args(
        ["push", str(finished_run), "--repo", "alice/cli", "--private", "--token", "hf_cli", "--endpoint", hub.endpoint]
    )
    args.func(args)
    assert hub.repos["alice/cli"].private
    assert {r["authorization"] for r in hub.requests if r["method"] == "POST"} == {"Bearer hf_cli"}


def test_every_task_kind_gets_the_loader_its_model_needs():
    """The card's load snippet follows the task card's model kind: a classifier or tagger run (hyphenated
    task names) is not left without one, and a diffusion run gets none rather than a wrong one."""
    from tunesmith.config import load_config
    from tunesmith.push.card import render_card

    expected = {
        "chat": "AutoPeftModelForCausalLM",
        "continued-pretraining": "AutoPeftModelForCausalLM",
        "summarization": "AutoPeftModelForSeq2SeqLM",
        "text-classification": "AutoPeftModelForSequenceClassification",
        "token-classification": "AutoPeftModelForTokenClassification",
        "image-classification": "from peft import AutoPeftModel\n",
    }
    for task, loader in expected.items():
        config = load_config(None, [f"task={task}", "data.train=x.jsonl"])
        card = render_card(config, {}, "alice/x", merged=False, saves_adapter=True)
        assert loader in card, task
    diffusion = load_config(None, ["task=text-to-image", "data.train=images", "method.name=lora"])
    assert "## Load" not in render_card(diffusion, {}, "alice/x", merged=False, saves_adapter=True)
