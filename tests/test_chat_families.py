"""Chat SFT on the other decoder families the guide names (Mistral, BitNet, DBRX), built tiny from their
configs with the real SmolLM2 tokenizer: train -> evaluate -> predict, and the adapter reloads with stock
transformers + peft. (Llama runs through every method in test_train_tiny.py.)

BitNet here is transformers' `bitnet` architecture with float weights (sub-norms, squared-ReLU MLP);
the packed 1.58-bit inference kernels need the checkpoint's quantisation config and a GPU, and are not
a training format. DBRX is a mixture of experts: its experts are fused 3-D parameters, not nn.Linear, so
`all-linear` LoRA adapts attention (Wqkv, out_proj) and the router; `full`/`freeze` train the experts.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import _save_tiny, read_jsonl
from safetensors.torch import load_file

from tunesmith import pipeline


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory, tokenizer):
    from transformers import BitNetConfig, DbrxConfig, MistralConfig

    ids = dict(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    decoder = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        **ids,
    )
    configs = {
        "mistral": MistralConfig(**decoder, tie_word_embeddings=True),
        "bitnet": BitNetConfig(**decoder),
        "dbrx": DbrxConfig(
            vocab_size=len(tokenizer),
            d_model=64,
            n_heads=4,
            n_layers=2,
            max_seq_len=512,
            attn_config={"kv_n_heads": 2, "clip_qkv": 8, "rope_theta": 10000.0},
            ffn_config={"ffn_hidden_size": 128, "moe_num_experts": 4, "moe_top_k": 2},
            **ids,
        ),
    }
    return {name: _save_tiny(tmp_path_factory.mktemp(name), config, tokenizer) for name, config in configs.items()}


def _losses(run) -> list[float]:
    return [r["loss"] for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]


@pytest.mark.parametrize("family", ["mistral", "bitnet", "dbrx"])
def test_lora_chat_trains_evaluates_predicts_and_reloads(family, family_dirs, make_config, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model_dir = family_dirs[family]
    run = pipeline.train(
        make_config("method.name=lora", "method.r=4", "train.load_best_at_end=false", model=model_dir)
    ).run_dir
    curve = _losses(run)
    assert curve[-1] < curve[0], curve
    assert {"rougeL", "exact_match"} <= set(json.loads((run / "summary.json").read_text())["tuned"])

    inputs = tmp_path / "in.jsonl"
    inputs.write_text(json.dumps({"prompt": "Where is my order?", "completion": ""}) + "\n")
    assert pipeline.predict(run, str(inputs), str(tmp_path / "out.jsonl"), max_new_tokens=4) == 1
    assert read_jsonl(tmp_path / "out.jsonl")[0]["messages"][-1]["role"] == "assistant"
    assert "rougeL" in pipeline.evaluate_run(run, max_samples=2)["tuned"]

    ids = torch.randint(0, 2000, (2, 10))
    stock = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), run / "adapter").eval()
    ours = pipeline.load_tuned(run).model
    with torch.no_grad():
        assert torch.allclose(ours(input_ids=ids).logits, stock(input_ids=ids).logits, atol=1e-5)


def test_dbrx_freeze_trains_the_top_block_experts_and_final_norm(family_dirs, make_config):
    model_dir = family_dirs["dbrx"]
    run = pipeline.train(make_config("method.name=freeze", "method.freeze_train_top=1", model=model_dir)).run_dir
    before, after = load_file(str(model_dir / "model.safetensors")), load_file(str(run / "model" / "model.safetensors"))
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert not any(name.startswith("transformer.blocks.0.") for name in changed), changed
    assert any(name.startswith("transformer.blocks.1.ffn.experts") for name in changed), changed
    assert "transformer.norm_f.weight" in changed
