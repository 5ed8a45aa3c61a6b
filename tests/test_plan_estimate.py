"""Estimator arithmetic on cases whose answer is known independently."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from tunesmith.errors import TunesmithError
from tunesmith.methods.qlora import NF4_BITS
from tunesmith.plan.catalog import load_catalog
from tunesmith.plan.estimate import (
    LOGIT_BYTES,
    MFU,
    UnsupportedModel,
    activation_bytes,
    estimate,
    implied_mfu,
    lora_parameters,
    model_shape,
)
from tunesmith.plan.hardware import Hardware, get_hardware

LLAMA2_7B = load_catalog().get("llama-2-7b").config
N_7B = 6_738_415_616
# A fixed CPU like the development machine (2 Zen 4 cores at 2.6 GHz, AVX512-BF16), so results do not
# depend on where the tests run.
DEV_CPU = Hardware("dev-cpu", "cpu", 24 * 2**30, 2 * 2.596 * 64 / 1000, 2 * 2.596 * 32 / 1000, True, None, None)


def test_full_fp32_weights_of_llama2_7b():
    est = estimate("llama-2-7b", method="full", hardware="A100-80GB", dtype="fp32")
    assert est.parameters == N_7B
    assert abs(est.breakdown["weights"] / (4 * 6.74e9) - 1) < 0.01
    # AdamW keeps two fp32 states, gradients are fp32: 16 bytes/param with the weights.
    assert est.breakdown["gradients"] == 4 * N_7B and est.breakdown["optimizer"] == 8 * N_7B
    assert estimate("llama-2-7b", method="full", dtype="bf16", hardware="H100").breakdown["weights"] == 2 * N_7B


def test_lora_trainable_parameters_from_shapes():
    shape = model_shape(LLAMA2_7B)
    # per layer: q,k,v,o 4 x 8*(4096+4096) + gate,up 2 x 8*(4096+11008) + down 8*(11008+4096) = 624,640; x32
    assert lora_parameters(shape, 8) == 32 * (4 * 8 * 8192 + 3 * 8 * 15104) == 19_988_480
    assert lora_parameters(shape, 8, ["q_proj", "v_proj"]) == 4_194_304  # PEFT's well-known print-out
    assert lora_parameters(shape, 8, "q_proj,v_proj") == 4_194_304
    # GQA: SmolLM2-135M k/v project 576 -> 192. tunesmith's own quickstart run (PEFT) reported 4,884,480.
    smol = model_shape(load_catalog().get("smollm2-135m-instruct").config)
    assert lora_parameters(smol, 16) == 4_884_480
    with pytest.raises(TunesmithError, match="gate_proj"):
        lora_parameters(shape, 8, ["query"])


def test_qlora_weights():
    lora = estimate("llama-2-7b", method="lora", hardware="A100-80GB", dtype="bf16").breakdown["weights"]
    assert lora == 2 * N_7B
    # Linear weights in NF4 with double quantisation: 4.127 bits, i.e. 4.127/16 of their bf16 size.
    quantised = model_shape(LLAMA2_7B).quantizable
    assert NF4_BITS[True] == pytest.approx(4.127, abs=1e-3)
    bf16_rest = estimate("llama-2-7b", method="qlora", hardware="A100-80GB", dtype="bf16").breakdown["weights"]
    assert bf16_rest == pytest.approx(quantised * NF4_BITS[True] / 8 + (N_7B - quantised) * 2)
    assert bf16_rest < 0.3 * lora
    # tunesmith's default: PEFT's prepare_model_for_kbit_training casts embeddings, norms and head to fp32.
    default = estimate("llama-2-7b", method="qlora", hardware="A100-80GB").breakdown["weights"]
    assert bf16_rest < default < 0.35 * lora
    single = estimate("llama-2-7b", method="qlora", hardware="A100-80GB", double_quant=False).breakdown["weights"]
    assert single - default == pytest.approx(quantised * (0.5 - 0.127) / 8, rel=1e-3)


def test_checkpointing_and_attention_kernels():
    kwargs = dict(method="lora", seq_len=2048, batch=4, hardware="A100-80GB")
    plain = estimate("llama-2-7b", **kwargs)
    ckpt = estimate("llama-2-7b", grad_checkpointing=True, **kwargs)
    assert ckpt.breakdown["activations"] < plain.breakdown["activations"] / 10
    assert ckpt.flops_per_example > plain.flops_per_example  # the recomputed forward
    eager = estimate("llama-2-7b", attention="eager", **kwargs)
    assert (
        estimate("llama-2-7b", attention="flash", **kwargs).breakdown["activations"] == plain.breakdown["activations"]
    )
    # eager keeps B x heads x S^2 scores per layer: the fp32 softmax and its bf16 copy (6 bytes)
    extra = eager.breakdown["activations"] - plain.breakdown["activations"]
    assert extra == 32 * 4 * 32 * 2048**2 * 6


def test_korthikanti_formula_for_a_gpt_like_block():
    """Dropout, a*d = h, ffn = 4h, 16-bit: sbh(34 + 5as/h) per layer (Korthikanti et al. 2022, eq. 1)."""
    cfg = {
        "model_type": "bert",
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 2,
        "num_attention_heads": 16,
        "vocab_size": 1000,
    }
    shape = model_shape(cfg)
    s, h, a = 512, 1024, 16
    per_layer = activation_bytes(shape, s, 1, act=2, attention="eager", checkpointing=False) / 2
    assert per_layer == s * h * (34 + 5 * a * s / h)


def test_zero_and_fsdp_sharding():
    kwargs = dict(method="full", seq_len=1024, batch=1, hardware="A100-80GB")
    one = estimate("llama-2-7b", **kwargs).breakdown
    z1 = estimate("llama-2-7b", gpus=8, zero=1, **kwargs).breakdown
    z2 = estimate("llama-2-7b", gpus=8, zero=2, **kwargs).breakdown
    z3 = estimate("llama-2-7b", gpus=8, zero=3, **kwargs).breakdown
    fsdp = estimate("llama-2-7b", gpus=8, fsdp=True, **kwargs).breakdown
    assert z1["optimizer"] == one["optimizer"] / 8 and z1["gradients"] == one["gradients"]
    assert z2["gradients"] == one["gradients"] / 8 and z2["weights"] == one["weights"]
    assert z3["weights"] == one["weights"] / 8 and z3["gathered blocks"] > 0
    assert fsdp == z3
    assert estimate("llama-2-7b", gpus=8, **kwargs).breakdown == one  # plain DDP replicates everything
    with pytest.raises(TunesmithError, match="not both"):
        estimate("llama-2-7b", gpus=8, zero=3, fsdp=True)


def test_largest_batch_is_consistent_and_monotonic_in_memory():
    est = estimate("qwen2.5-1.5b-instruct", method="lora", seq_len=1024, batch=1, hardware="L4")
    over = estimate("qwen2.5-1.5b-instruct", method="lora", seq_len=1024, batch=est.max_batch + 1, hardware="L4")
    at = estimate("qwen2.5-1.5b-instruct", method="lora", seq_len=1024, batch=est.max_batch, hardware="L4")
    assert at.fits and not over.fits and at.total_bytes <= at.device_bytes < over.total_bytes
    l4 = get_hardware("L4")
    batches = [
        estimate(
            "qwen2.5-1.5b-instruct", seq_len=1024, hardware=dataclasses.replace(l4, memory_bytes=gib * 2**30)
        ).max_batch
        for gib in (4, 8, 16, 24, 48, 96, 192)
    ]
    assert batches == sorted(batches) and batches[0] == 0 and batches[-1] > 20


def test_throughput_matches_the_palm_formula():
    shape = model_shape(LLAMA2_7B)
    s = 2048
    attention = 12 * 32 * 32 * 128 * s  # 12 * L * H * Q * T per token, fwd + bwd
    full = estimate("llama-2-7b", method="full", seq_len=s, batch=1, hardware="H100")
    matmul = N_7B - 32000 * 4096 - 32 * 2 * 4096 - 4096  # no FLOPs for the embedding lookup and the norms
    assert full.flops_per_example / s == pytest.approx(6 * matmul + attention)
    lora = estimate("llama-2-7b", method="lora", seq_len=s, batch=1, hardware="H100")
    assert lora.flops_per_example / s == pytest.approx(4 * matmul + attention)
    assert shape.layers == 32


def test_cpu_calibration_reproduces_the_quickstart_run():
    # Measured: 40 steps of SmolLM2-135M LoRA r=16, batch 8, ~187 tokens per padded example, 207 tokens/s.
    est = estimate("smollm2-135m-instruct", method="lora", lora_r=16, seq_len=187, batch=8, hardware=DEV_CPU)
    assert est.tokens_per_second == pytest.approx(207, rel=0.05)
    assert implied_mfu(est, 207 / 187) == pytest.approx(MFU["cpu"], rel=0.05)


def test_epoch_time_and_cost():
    est = estimate(
        "llama-3.1-8b-instruct",
        method="qlora",
        seq_len=1024,
        batch=4,
        grad_checkpointing=True,
        hardware="L4",
        epoch_tokens=10_000_000,
    )
    assert est.seconds_per_epoch == pytest.approx(1e7 / est.tokens_per_second)
    assert est.cost_per_epoch_usd == pytest.approx(est.seconds_per_epoch / 3600 * 0.8)
    eight = estimate(
        "llama-3.1-8b-instruct",
        method="qlora",
        seq_len=1024,
        batch=4,
        hardware="L4",
        gpus=8,
        epoch_tokens=10_000_000,
        price_per_hour=1.0,
    )
    one = estimate("llama-3.1-8b-instruct", method="qlora", seq_len=1024, batch=4, hardware="L4")
    assert eight.tokens_per_second == pytest.approx(8 * one.tokens_per_second)  # data parallel: linear scaling
    assert one.tokens_per_second > est.tokens_per_second  # checkpointing recomputes the forward
    assert eight.cost_per_epoch_usd == pytest.approx(eight.seconds_per_epoch / 3600 * 8)
    assert estimate("llama-2-7b", hardware="M3-Max").cost_per_epoch_usd is None


def test_model_dir_raw_dict_and_entry_agree(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA2_7B))
    results = {
        estimate(ref, hardware="T4", method="qlora").total_bytes
        for ref in (tmp_path, str(tmp_path), dict(LLAMA2_7B), load_catalog().get("llama-2-7b"), "llama-2-7b")
    }
    assert len(results) == 1


@pytest.mark.parametrize("method", ["full", "freeze", "lora", "qlora"])
def test_every_supported_catalog_model_and_method(method):
    for entry in load_catalog().models:
        try:
            est = estimate(entry, method=method, seq_len=512, batch=2, hardware="H100")
        except UnsupportedModel:
            continue
        parts = {k: v for k, v in est.breakdown.items() if not k.startswith("at the peak")}
        assert all(v >= 0 and math.isfinite(v) for v in parts.values()), entry.id
        # the peak moment (backward or optimizer step) adjusts the sum of the parts; the total is their sum
        assert len(est.breakdown) == len(parts) + 1 and est.total_bytes > 0
        assert est.total_bytes == pytest.approx(sum(est.breakdown.values()))
        assert 0 < est.trainable_parameters <= est.parameters
        assert est.examples_per_second > 0 and est.total_bytes > est.breakdown["weights"]


def test_freeze_trains_the_top_blocks_and_keeps_fewer_activations():
    full = estimate("llama-2-7b", method="full", seq_len=1024, batch=1, hardware="H100")
    frozen = estimate("llama-2-7b", method="freeze", seq_len=1024, batch=1, hardware="H100", freeze_train_top=2)
    block = model_shape(LLAMA2_7B).block_parameters
    assert frozen.trainable_parameters == 2 * block + 4096 + 32000 * 4096
    assert frozen.breakdown["activations"] == pytest.approx(full.breakdown["activations"] * 2 / 32)
    assert frozen.flops_per_example < full.flops_per_example


def test_seq2seq_image_and_moe_models():
    bart = estimate("bart-large", method="full", seq_len=1024, batch=1, hardware="A10G")
    assert bart.target_len == 256
    longer = estimate("bart-large", method="full", seq_len=1024, target_len=512, batch=1, hardware="A10G")
    assert longer.breakdown["logits"] == 2 * bart.breakdown["logits"] == 2 * 256 * 50265 * LOGIT_BYTES
    vit = estimate("vit-base", method="full", seq_len=4096, batch=8, hardware="T4")
    assert vit.breakdown == estimate("vit-base", method="full", seq_len=16, batch=8, hardware="T4").breakdown
    assert model_shape(load_catalog().get("vit-base").config).image_tokens == 197
    resnet = estimate("resnet-50", method="full", batch=32, hardware="V100-16GB")
    # torchvision's ResNet-50: ~4.1 GMACs per 224 px image forward
    assert resnet.flops_per_example / 3 == pytest.approx(2 * 4.1e9, rel=0.05)
    assert 30e6 < resnet.breakdown["activations"] / 32 < 300e6
    dbrx = estimate("dbrx-base", method="full", seq_len=512, batch=1, hardware="H100")
    active = 36e9
    assert 5.5 * active < dbrx.flops_per_example / 512 < 7 * active  # FLOPs from active parameters
    assert dbrx.breakdown["weights"] == 4 * dbrx.parameters  # memory holds every expert


def test_bad_arguments_and_unsupported_models():
    with pytest.raises(TunesmithError, match="method"):
        estimate("llama-2-7b", method="prefix")
    with pytest.raises(TunesmithError, match="batch"):
        estimate("llama-2-7b", batch=0)
    with pytest.raises(UnsupportedModel, match="unet"):
        estimate("sd-1.5")
    with pytest.raises(UnsupportedModel, match="supported model types"):
        estimate({"model_type": "mamba", "hidden_size": 8})
    with pytest.raises(TunesmithError, match="num_hidden_layers"):
        estimate({"model_type": "llama", "hidden_size": 64})
    with pytest.raises(TunesmithError, match="closest"):
        estimate("llama-2-7b", hardware="A100-90GB")


def test_encoder_decoder_of_two_berts_counts_like_the_real_model():
    """BERT2BERT (the summarization starter's shape): parameters and all-linear LoRA parameters equal
    what transformers and peft build from the same config; SDPA with dropout on a CPU keeps its scores."""
    from peft import LoraConfig, get_peft_model
    from transformers import BertConfig, EncoderDecoderConfig, EncoderDecoderModel

    half = dict(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
    config = EncoderDecoderConfig.from_encoder_decoder_configs(BertConfig(**half), BertConfig(**half))
    model = EncoderDecoderModel(config=config)
    shape = model_shape(config.to_dict())
    assert shape.family == "seq2seq" and shape.parameters == sum(p.numel() for p in model.parameters())
    lora = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", task_type="SEQ_2_SEQ_LM"))
    assert lora_parameters(shape, 4) == sum(p.numel() for p in lora.parameters() if p.requires_grad)
    # CPU SDPA with dropout falls back to the math path and keeps 12 bytes per attention score; flash keeps none.
    sdpa, flash = (
        estimate(
            config.to_dict(),
            method="full",
            seq_len=256,
            target_len=64,
            batch=8,
            hardware="cpu",
            precision="fp32",
            attention=a,
        )
        for a in ("sdpa", "flash")
    )
    scores = 2 * (256 * 4 * 256) + 2 * (64 * 4 * 64 + 64 * 4 * 256)  # encoder self; decoder self + cross
    assert sdpa.breakdown["activations"] - flash.breakdown["activations"] == 8 * scores * 12
