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


# ---------------------------------------------------------------------------------------------------
# data.max_length against the model's positions (models/limits.py)


def test_max_length_over_the_position_table_names_the_limit_and_the_fix(tiny_llama_dir):
    from transformers import AutoConfig

    from tunesmith.models.limits import check_max_length

    config = AutoConfig.from_pretrained(tiny_llama_dir)  # the tiny Llama: max_position_embeddings 512
    check_max_length(512, config)  # exactly the table fits
    with pytest.raises(TunesmithError) as info:
        check_max_length(1024, config)
    error = info.value
    assert error.where == "data.max_length" and "1024" in error.message and "512" in error.message
    assert "max_position_embeddings" in error.message and error.fix.startswith("data.max_length: 512")


def test_each_family_reads_its_own_position_field():
    from transformers import BertConfig, EncoderDecoderConfig, GPT2Config, RobertaConfig, T5Config

    from tunesmith.models.limits import position_limit

    tiny = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    assert position_limit(GPT2Config(n_positions=128, n_embd=32, n_layer=2, n_head=2)).limit == 128
    # RoBERTa numbers positions after its padding index (pad 1: positions 2..), so 130 rows hold 128 tokens.
    assert position_limit(RobertaConfig(max_position_embeddings=130, pad_token_id=1, **tiny)).limit == 128
    bert = BertConfig(max_position_embeddings=256, **tiny)
    pair = EncoderDecoderConfig.from_encoder_decoder_configs(bert, BertConfig(max_position_embeddings=64, **tiny))
    assert position_limit(pair).limit == 256  # data.max_length is the source: the encoder's table
    assert position_limit({"model_type": "mpt", "max_seq_len": 2048}).limit == 2048  # plain config.json dicts too
    # T5's relative position buckets have no table to overflow.
    t5 = T5Config(d_model=32, num_layers=2, num_heads=2, d_ff=64)
    assert position_limit(t5) is None
    # ...and its tokenizer's model_max_length (512, its pre-training length) is not taken for one.
    assert position_limit(t5, type("T5Tokenizer", (), {"model_max_length": 512})()) is None


def test_tokenizer_length_is_a_fallback_only_when_it_is_real():
    from tunesmith.models.limits import check_max_length, position_limit

    class Tokenizer:
        model_max_length = 256

    assert position_limit({"model_type": "custom"}, Tokenizer()).limit == 256
    with pytest.raises(TunesmithError, match="model_max_length"):
        check_max_length(300, {"model_type": "custom"}, tokenizer=Tokenizer())
    Tokenizer.model_max_length = int(1e30)  # transformers' "not set" value: no limit known, nothing refused
    check_max_length(100_000, {"model_type": "custom"}, tokenizer=Tokenizer())
    # The config's own table wins over a tokenizer that claims more.
    Tokenizer.model_max_length = 4096
    assert position_limit({"model_type": "bert", "max_position_embeddings": 512}, Tokenizer()).limit == 512


# ---------------------------------------------------------------------------------------------------
# Third-party noise on model loading (models/noise.py)

BUILD_A_LORA_MODEL = """
import logging, sys, warnings
from tunesmith.config import load_config
from tunesmith.models.build import training_model
from tunesmith.models.resolve import resolve_model
from tunesmith.tasks import get_task

model_dir, data = sys.argv[1], sys.argv[2]
config = load_config(None, [f"model.name={model_dir}", f"data.train={data}", "method.name=lora",
                            "train.gradient_checkpointing=true"])
training_model(config, resolve_model(model_dir), get_task("chat"), {}, 0)
# Other messages from the same logger and the same module still reach the user.
logging.getLogger("bitsandbytes.backends.cpu.ops").warning("a genuine bitsandbytes warning")
warnings.warn_explicit("a genuine transformers deprecation", FutureWarning, "modeling_utils.py", 1,
                       module="transformers.modeling_utils")
print("built")
"""


def test_building_a_lora_model_shows_only_messages_that_concern_the_user(tiny_llama_dir, small_chat_file):
    import subprocess
    import sys

    # A fresh process: bitsandbytes logs on its first import, which an earlier test may have done here.
    done = subprocess.run(
        [sys.executable, "-c", BUILD_A_LORA_MODEL, str(tiny_llama_dir), str(small_chat_file)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and "built" in done.stdout, done.stderr
    assert "gemm_4bit_forward" not in done.stderr and "kernels" not in done.stderr
    assert "is_gradient_checkpointing" not in done.stderr and "gradient_checkpointing_enable" not in done.stderr
    assert "a genuine bitsandbytes warning" in done.stderr and "a genuine transformers deprecation" in done.stderr


def test_a_run_longer_than_its_model_is_refused_before_any_data_is_read(make_config, tiny_llama_dir, tokenizer):
    from tunesmith.models.limits import check_run_lengths

    resolved = resolve_model(str(tiny_llama_dir))
    check_run_lengths(make_config("data.max_length=512"), resolved, tokenizer)
    with pytest.raises(TunesmithError) as info:
        check_run_lengths(make_config("data.max_length=2048"), resolved, tokenizer)
    assert info.value.where == "data.max_length" and "512" in info.value.fix


def test_a_default_length_beyond_the_model_is_lowered_a_written_one_refused(tiny_llama_dir, tokenizer, capsys):
    """data.max_length left at its default (1024) was never the user's choice: it is fitted to a 512-position
    model with a note; the same 1024 written by the user is refused."""
    from tunesmith.config import load_config
    from tunesmith.models.limits import check_run_lengths

    def make_config(*overrides):
        return load_config(None, [f"model.name={tiny_llama_dir}", "data.train=x.jsonl", *overrides])

    resolved = resolve_model(str(tiny_llama_dir))
    config = make_config()
    assert "max_length" not in config.data.model_fields_set and config.data.max_length == 1024
    check_run_lengths(config, resolved, tokenizer)
    assert config.data.max_length == 512
    assert "data.max_length lowered from the default 1024 to 512" in capsys.readouterr().out
    with pytest.raises(TunesmithError) as info:
        check_run_lengths(make_config("data.max_length=1024"), resolved, tokenizer)
    assert info.value.where == "data.max_length"


def test_a_summary_longer_than_the_decoder_is_refused(tmp_path):
    from transformers import BertConfig, EncoderDecoderConfig

    from tunesmith.config import load_config
    from tunesmith.models.limits import check_run_lengths
    from tunesmith.models.resolve import ResolvedModel

    tiny = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    pair = EncoderDecoderConfig.from_encoder_decoder_configs(
        BertConfig(max_position_embeddings=256, **tiny), BertConfig(max_position_embeddings=64, **tiny)
    )
    pair.save_pretrained(tmp_path)  # config.json alone: the check reads no weights
    resolved = ResolvedModel(str(tmp_path), None, "local", str(tmp_path))

    def config(*overrides):
        return load_config(None, ["task=summarization", f"model.name={tmp_path}", "data.train=x.jsonl", *overrides])

    check_run_lengths(config("data.max_length=256", "data.max_target_length=64"), resolved)
    with pytest.raises(TunesmithError) as info:
        check_run_lengths(config("data.max_length=256", "data.max_target_length=128"), resolved)
    assert info.value.where == "data.max_target_length" and info.value.fix.startswith("data.max_target_length: 64")
