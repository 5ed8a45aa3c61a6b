"""One LoRA training step on a CUDA GPU: the chunked loss, the attention kernel and train.compile, each alone.

    python -m bench.gpu_step        # (PYTHONPATH=src where tunesmith is not installed); writes $OUT/gpu.json or /tmp/gpu.json

A SmolLM2-135M-shaped Llama (the published shape, random weights: speed and memory do not depend on the
values), bf16 weights with fp32 LoRA r=16 on all linear layers, bf16 autocast, AdamW: what tunesmith trains
on a GPU. Two batches: "chat" (8 rows of 512-1024 tokens, right-padded, the last 30% of each row carries
loss) and "all" (8 x 2048, every token carries loss, as continued pre-training or packed rows). Per
setting: the first step's seconds, the median of 6 steps after 2 warm-up, trained tokens/s, and CUDA's
peak allocation above the model. Also the chunked path's loss and gradients against the logits path.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
import traceback

import torch
import transformers
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig

from tunesmith.models.attention import choose_attention, flash_attn_installed
from tunesmith.train.compile import compiled_blocks
from tunesmith.train.loss import causal_lm_loss_sum, configure_loss, innermost_model

OUT = os.environ.get("OUT", "/tmp")
R: dict = {}  # the results, written to OUT/gpu.json after every setting
SMOL = dict(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    rope_theta=100000.0,
    tie_word_embeddings=True,
    pad_token_id=2,
    bos_token_id=1,
    eos_token_id=2,
)
dev = torch.device("cuda")


def build(attn):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**SMOL), attn_implementation=attn, dtype=torch.bfloat16)
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0))
    for n, p in model.named_parameters():
        if "lora_B" in n:  # a fresh adapter's B is zero: give A gradients to compare
            torch.nn.init.normal_(p, std=0.01)
    return model.to(dev)


def batch(kind, seed=0):
    g = torch.Generator().manual_seed(seed)
    if kind == "chat":  # 8 rows of 512..1024 tokens, right-padded, answer = last 30% of each row
        B, T = 8, 1024
        ids = torch.randint(3, 49152, (B, T), generator=g)
        mask = torch.zeros(B, T, dtype=torch.long)
        labels = torch.full((B, T), -100)
        for r in range(B):
            n = int(torch.randint(512, 1025, (1,), generator=g))
            mask[r, :n] = 1
            ids[r, n:] = 2
            a = int(n * 0.7)
            labels[r, a:n] = ids[r, a:n]
    else:  # "all": 8 x 2048, every token carries loss (continued pre-training / packed rows)
        B, T = 8, 2048
        ids = torch.randint(3, 49152, (B, T), generator=g)
        mask = torch.ones(B, T, dtype=torch.long)
        labels = ids.clone()
    return ids.to(dev), mask.to(dev), labels.to(dev)


def measure(model, kind, chunk, steps=6, warm=2):
    configure_loss(model, chunk)
    ids, mask, labels = batch(kind)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    times, first = [], None
    for s in range(steps + warm):
        torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            total, count = causal_lm_loss_sum(model, ids, mask, labels)
        (total / count).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t
        if s == 0:
            first = dt
        if s >= warm:
            times.append(dt)
    tokens = int((labels[:, 1:] != -100).sum())
    peak = torch.cuda.max_memory_allocated() - base
    del opt
    return {
        "kind": kind,
        "chunk": chunk,
        "first_step_s": round(first, 3),
        "step_s": round(statistics.median(times), 4),
        "trained_tok_per_s": round(tokens / statistics.median(times)),
        "peak_GiB_over_model": round(peak / 2**30, 3),
        "trained_tokens": tokens,
        "verified": getattr(innermost_model(model), "_tunesmith_chunked_loss_verified", None),
    }


def grads_of(model, kind, chunk):
    configure_loss(model, chunk)
    ids, mask, labels = batch(kind, seed=5)
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        total, count = causal_lm_loss_sum(model, ids, mask, labels)
    (total / count).backward()
    g = torch.cat([p.grad.float().flatten() for p in model.parameters() if p.grad is not None])
    model.zero_grad(set_to_none=True)
    return float(total.detach()), g


def step(name, fn):
    t = time.perf_counter()
    try:
        R[name] = fn()
    except Exception:
        R[name] = {"error": traceback.format_exc()[-2000:]}
    print(name, round(time.perf_counter() - t, 1), "s:", json.dumps(R[name])[:600], flush=True)
    json.dump(R, open(f"{OUT}/gpu.json", "w"), indent=1)


def compare_paths(model) -> dict:
    l0, g0 = grads_of(model, "chat", 0)
    l1, g1 = grads_of(model, "chat", 1024)
    return {
        "loss_plain": l0,
        "loss_chunked": l1,
        "rel_diff": abs(l0 - l1) / abs(l0),
        "grad_cosine": float(torch.nn.functional.cosine_similarity(g0, g1, dim=0)),
        "grad_rel_norm_diff": float((g0 - g1).norm() / g0.norm()),
    }


def compiled_step(model) -> dict:
    with compiled_blocks(model, True, "cuda"):
        return measure(model, "chat", 1024, steps=6, warm=2)


def main() -> int:
    R.update(
        {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "gpu": torch.cuda.get_device_name(),
            "flash_attn_installed": flash_attn_installed(),
            "auto_attention_bf16": choose_attention(
                "auto", torch.bfloat16, cuda=True, flash_installed=flash_attn_installed(), flash_supported=lambda: True
            ),
        }
    )
    # 1. The chunked loss against the logits path, then each chunk size on both batches.
    model = build("sdpa")
    R["attn_loaded"] = model.config._attn_implementation
    step("equality_bf16", lambda: compare_paths(model))
    for kind in ("chat", "all"):
        for chunk in (0, 1024, 4096):
            step(f"{kind}_chunk{chunk}", lambda: measure(model, kind, chunk))
    # 2. Eager attention instead of sdpa.
    del model
    torch.cuda.empty_cache()
    eager = build("eager")
    step("chat_chunk1024_eager_attention", lambda: measure(eager, "chat", 1024))  # noqa: F821 (step calls it before the del)
    del eager
    torch.cuda.empty_cache()
    # 3. Compiled blocks (the first step compiles), then eager again on the same model.
    model = build("sdpa")
    step("chat_chunk1024_compiled", lambda: compiled_step(model))
    step("chat_chunk1024_after_compile_eager", lambda: measure(model, "chat", 1024))
    print(json.dumps(R, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
