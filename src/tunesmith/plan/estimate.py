"""Memory, throughput and time of a fine-tuning run, from a model's config alone (no torch, no weights).

Three parts:
  1. shapes: a config.json -> the sizes that matter (parameters, linear layers, transformer stacks)
  2. memory: weights, adapters, gradients, optimizer states, activations, logits, framework, each in
     bytes, sharded by ZeRO/FSDP, against the device's memory; the largest batch that fits
  3. speed: FLOPs per example -> tokens/s at a calibrated fraction of the hardware's peak -> time and cost

The defaults mirror what `tunesmith train` does (models/load.py, train/precision.py, methods/*.py): fp32
trainable weights with bf16 autocast where the hardware has bf16, a bf16 frozen base for LoRA on bf16
GPUs, fp32 adapters, and PEFT's `prepare_model_for_kbit_training` casting everything QLoRA does not
quantise to fp32. Every formula is documented, with its source, in docs/planner.md.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.errors import TunesmithError
from tunesmith.methods import DEFAULT_METHOD, METHODS, get_method
from tunesmith.methods.base import MethodModule, MethodSettings
from tunesmith.methods.lora import adapter_parameters
from tunesmith.plan.catalog import Entry, model_config
from tunesmith.plan.hardware import GiB, Hardware, MiB, get_hardware

OPTIMIZERS = ("adamw", "adamw8bit", "paged_adamw8bit")
ATTENTION = ("sdpa", "eager", "flash")
DTYPES = ("auto", "fp32", "bf16", "fp16")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}

# 8-bit Adam (Dettmers et al. 2022, "8-bit Optimizers via Block-wise Quantization"): two 1-byte states
# per parameter plus one fp32 absmax per block of 2048 values.
ADAM8_BYTES = 2 * (1 + 4 / 2048)
# The fp32 logits, their log-softmax (kept by cross-entropy for backward) and the fp32 gradient.
LOGIT_BYTES = 12
# Chunked output layer + cross-entropy (train/loss.py): per loss position, the fp32 gradient of the final
# hidden state that its autograd function keeps for backward, and the gathered hidden state (8 bytes per unit).
CHUNKED_LOSS_HIDDEN_BYTES = 8

# Calibration constants. MFU = achieved / peak dense FLOP/s at the training precision, by hardware kind,
# for full fine-tuning with a good kernel set; each method's footprint.efficiency scales it for the extra small kernels of
# LoRA adapters and the 4-bit dequantisation of QLoRA (each method's `footprint.efficiency`). Fit them on measured runs: MFU = tokens/s x
# FLOPs/token / peak (see docs/planner.md). "cpu" was fitted on the quickstart run (SmolLM2-135M, LoRA
# r=16, bf16 autocast, 2 Zen 4 cores: 207 processed tokens/s); the GPU values are typical published MFUs
# of Hugging Face + PyTorch fine-tuning, not yet measured by tunesmith.
MFU = {"datacenter-gpu": 0.40, "consumer-gpu": 0.35, "apple": 0.20, "cpu": 0.42}
# CUDA context, cuBLAS/cuDNN workspaces and allocator slack on GPUs; the Python + torch + transformers
# + peft process on CPUs (measured: 0.43 GiB RSS after the imports) and on Apple's unified memory.
FRAMEWORK_BYTES = {"gpu": 1.0 * GiB - 64 * MiB, "other": 0.5 * GiB}
# Allocated through torch's caching allocator, so inside max_memory_allocated: cuBLAS's 32 MiB workspace on
# Hopper, one per handle, and backward runs on autograd's own thread with its own handle. Fitted: small
# MiniLM-L6 runs on the H100 allocated 60-110 MiB more than their tensors.
CUBLAS_WORKSPACE_BYTES = 64 * MiB
# bf16 autocast (measured with bench/memory.py and autograd's saved-tensor hooks on SmolLM2-135M, torch 2.13,
# 2 Zen 4 cores; then checked with torch.cuda.max_memory_allocated on an H100, torch 2.11: the same terms
# brought full and freeze on SmolLM2-135M/360M-shaped models from 0.58-0.89 to 0.93-1.15 of measured; see
# bench/MEMORY_RESULTS.md). Over fp32 weights:
#  - the residual stream stays fp32 (fp32 embeddings; fp32 + bf16 adds to fp32), so every norm keeps its fp32
#    input and output and each projection reading the stream keeps its own bf16 cast (autocast caches casts
#    of leaf weights only): full fine-tuning kept 27.4 KB per token per block where the 16-bit count below
#    gives 20.0 KB, +7.4 KB = 12.9 bytes per hidden unit;
#  - PEFT casts each LoRA input to the fp32 adapter dtype and its lora_dropout keeps the fp32 mask: LoRA kept
#    15.6 KB per token per block more than full fine-tuning = 3.1 bytes per input feature of each adapted
#    linear (sum of fan_in 4,992 per block); QLoRA 25.2 KB more = 5.0 bytes on the CPU (bitsandbytes' CPU
#    4-bit matmul also keeps its own copy of each input), 3 on the H100 (fitted: 5 over-predicted QLoRA by
#    16-31%). On a GPU, LoRA over bf16 weights keeps the same 3 bytes (fitted on SmolLM2-135M/360M-shaped
#    and MiniLM-L6: 2.4-3.2) and no stream term. These are each method's `footprint.adapter_input_bytes`;
#  - with the freeze method and a tied head (SmolLM2) the embedding trains, so the gradient runs through every
#    frozen block: they kept 14.5 KB per token per block, 0.53 of a trained block.
AUTOCAST_STREAM_BYTES = 13  # per hidden unit, per token, per block
FROZEN_BLOCK_SHARE = 0.53

# CPU heap retention (see _cpu_heap_retention), per token: bytes per hidden unit of every block that keeps
# activations (the fp32 stream's freed norm and residual temporaries), and per input feature of each adapted
# linear (PEFT's fp32 input cast and lora_dropout output, freed after the adapter matmul); QLoRA also keeps
# freed dequantised weights, per 4-bit parameter (the methods' footprint.heap_adapter_input_bytes and
# heap_dequant_bytes). Least squares gave 24.7, 5.8, 7.3 and 3.9; without them
# LoRA/QLoRA were predicted at 0.61-0.91 of measured RSS, with them 24 of 24 points within 15%.
HEAP_STREAM_BYTES = 25

DECODERS = ("llama", "mistral", "qwen2", "gemma", "gemma2", "phi3", "bitnet", "dbrx")
ENCODERS = ("bert", "roberta", "xlm-roberta", "deberta-v2")
SEQ2SEQ = ("t5", "mt5", "bart", "encoder-decoder")
VISION = ("vit", "resnet", "efficientnet")
SUPPORTED = DECODERS + ENCODERS + SEQ2SEQ + VISION


class UnsupportedModel(TunesmithError):
    """The config's model_type has no shape builder; the recommender falls back to parameter counts."""


# ---------------------------------------------------------------------------------------------------
# 1. Shapes


@dataclass(frozen=True)
class Linear:
    """One kind of adaptable layer: PEFT matches `name` by suffix; LoRA adds r*(fan_in + fan_out) to each."""

    name: str
    fan_in: int
    fan_out: int
    count: int


@dataclass(frozen=True)
class Stack:
    """A run of identical transformer blocks."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int  # MLP width each token passes through (MoE: top_k experts)
    gated: bool  # GLU MLP (SwiGLU, GeGLU): gate and up projections
    norms: int  # norm layers per block whose inputs are kept
    dropout: bool  # residual/attention dropout is on in training (BERT, T5, BART)
    upcast_softmax: bool  # eager attention's softmax runs in fp32 (HF decoders, T5)
    matmul_parameters: int  # weights a token is multiplied with in one block
    tokens: str = "source"  # which length the stack runs over: source, target or image
    cross: bool = False  # decoder block with cross-attention over the source


@dataclass(frozen=True)
class Shape:
    model_type: str
    family: str  # decoder, encoder, seq2seq, vision, cnn
    parameters: int
    quantizable: int  # weights of nn.Linear layers inside the blocks: what bitsandbytes quantises to 4 bit
    block_parameters: int  # the largest block: freeze trains the top ones, ZeRO-3 gathers one at a time
    head_parameters: int  # final norm and output head: trained by the freeze method
    layers: int
    linears: tuple[Linear, ...]
    stacks: tuple[Stack, ...]
    head_matmul: int  # output head weights, applied at each output position
    outputs: int  # logits per output position: vocabulary or labels
    output_positions: str  # source, target or one
    context: int
    tied_head: bool = False  # the output head is the input embedding (it trains with the freeze method)
    image_tokens: int = 0
    conv_elements: int = 0  # CNNs: activation elements kept per image
    conv_flops: int = 0  # CNNs: forward FLOPs per image
    notes: tuple[str, ...] = ()

    def targeted(self, targets: str | list[str]) -> list[Linear]:
        """The linear layers a method's `target_modules` selects (methods count their parameters with it)."""
        return targeted(self, targets)

    @property
    def hidden(self) -> int:
        return self.stacks[0].hidden


def _num_labels(config: dict[str, Any], default: int) -> int:
    if config.get("num_labels"):
        return int(config["num_labels"])
    return len(config["id2label"]) if config.get("id2label") else default


def _decoder(c: dict[str, Any]) -> Shape:
    mt = c["model_type"]
    if mt == "dbrx":  # DBRX names its fields differently and nests attention/MoE settings.
        h, layers, heads, vocab = c["d_model"], c["n_layers"], c["n_heads"], c["vocab_size"]
        kv = c.get("attn_config", {}).get("kv_n_heads", heads)
        moe = c.get("ffn_config", {})
        inter, experts, top_k = moe["ffn_hidden_size"], moe.get("moe_num_experts", 1), moe.get("moe_top_k", 1)
        context = c.get("max_seq_len", 2048)
    else:
        h, layers, heads = c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"]
        kv, inter, vocab = c.get("num_key_value_heads") or heads, c["intermediate_size"], c["vocab_size"]
        experts = top_k = 1
        context = c.get("max_position_embeddings", 2048)
    d = c.get("head_dim") or h // heads
    q, k = heads * d, kv * d
    tied = c.get("tie_word_embeddings", mt in ("gemma", "gemma2"))

    # Linear layers of one block, named as PEFT sees them.
    if mt == "phi3":  # fused projections
        attn = [Linear("self_attn.qkv_proj", h, q + 2 * k, layers), Linear("self_attn.o_proj", q, h, layers)]
        mlp = [Linear("mlp.gate_up_proj", h, 2 * inter, layers), Linear("mlp.down_proj", inter, h, layers)]
    elif mt == "dbrx":
        attn = [Linear("attn.Wqkv", h, q + 2 * k, layers), Linear("attn.out_proj", q, h, layers)]
        # transformers keeps the experts as raw nn.Parameter tensors (DbrxExpertGLU), not nn.Linear: LoRA
        # all-linear and bitsandbytes reach only the attention and the router.
        mlp = [Linear("ffn.router.layer", h, experts, layers)]
    else:
        attn = [
            Linear("self_attn.q_proj", h, q, layers),
            Linear("self_attn.k_proj", h, k, layers),
            Linear("self_attn.v_proj", h, k, layers),
            Linear("self_attn.o_proj", q, h, layers),
        ]
        mlp = [
            Linear("mlp.gate_proj", h, inter, layers),
            Linear("mlp.up_proj", h, inter, layers),
            Linear("mlp.down_proj", inter, h, layers),
        ]
    linear_weights = sum(lin.fan_in * lin.fan_out for lin in attn + mlp)
    biases = 0
    if mt == "qwen2" or c.get("attention_bias"):
        biases += q + 2 * k + (h if c.get("attention_bias") else 0)
    norms = {"gemma2": 4}.get(mt, 2)
    norm_params = norms * h + (h + inter if mt == "bitnet" else 0)  # BitNet adds attention and FFN sub-norms
    experts_weights = 3 * experts * inter * h if mt == "dbrx" else 0
    block = linear_weights + experts_weights + biases + norm_params
    embedding = vocab * h
    head = h + (0 if tied else vocab * h)  # final norm and an untied output head
    active_mlp = 3 * top_k * inter * h if mt == "dbrx" else 0
    stack = Stack(
        layers,
        h,
        heads,
        kv,
        d,
        top_k * inter,
        True,
        norms + (1 if mt == "bitnet" else 0),
        False,
        True,
        linear_weights + active_mlp,
    )
    notes = ("mixture of experts: memory counts all experts, FLOPs the active ones",) if experts > 1 else ()
    # The freeze method trains the head; when it is tied, that is the embedding table.
    return Shape(
        mt,
        "decoder",
        embedding + layers * block + head,
        layers * linear_weights,
        block,
        h + vocab * h,
        layers,
        tuple(attn + mlp),
        (stack,),
        vocab * h,
        vocab,
        "source",
        context,
        tied_head=bool(tied),
        notes=notes,
    )


def _encoder(c: dict[str, Any]) -> Shape:
    mt = c["model_type"]
    h, layers, heads, inter = c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"], c["intermediate_size"]
    vocab, positions = c["vocab_size"], c.get("max_position_embeddings", 512)
    types = c.get("type_vocab_size", 2 if mt == "bert" else 1)
    embedding = vocab * h + types * h + 2 * h
    if mt == "deberta-v2":  # relative attention: a table of 2 x buckets positions, no absolute positions
        span = c.get("position_buckets", -1)
        if span <= 0:
            span = c.get("max_relative_positions", -1) if c.get("max_relative_positions", -1) > 0 else positions
        embedding += 2 * span * h + 2 * h  # relative embeddings and their LayerNorm
        if c.get("position_biased_input", True):
            embedding += positions * h
        names = ("attention.self.query_proj", "attention.self.key_proj", "attention.self.value_proj")
    else:
        embedding += positions * h
        names = ("attention.self.query", "attention.self.key", "attention.self.value")
    linears = [Linear(n, h, h, layers) for n in names] + [
        Linear("attention.output.dense", h, h, layers),
        Linear("intermediate.dense", h, inter, layers),
        Linear("output.dense", inter, h, layers),
    ]
    linear_weights = 4 * h * h + 2 * h * inter
    block = linear_weights + 4 * h + inter + h + 2 * 2 * h  # + biases and two LayerNorms
    # Heads as the published parameter counts include them: BERT keeps its pooler (not for token
    # classification); RoBERTa-style and DeBERTa classification heads are a dense layer plus the output.
    archs = " ".join(c.get("architectures") or [])
    labels = _num_labels(c, 0)
    token_level = "TokenClassification" in archs
    if mt == "bert":
        head = (0 if token_level else h * h + h) + (h * labels + labels if labels else 0)
    elif labels and not token_level:
        head = h * h + h + h * labels + labels
    else:
        head = (h * h + h if mt != "deberta-v2" else 0) + (h * labels + labels if labels else 0)
    stack = Stack(layers, h, heads, heads, h // heads, inter, False, 2, True, False, linear_weights)
    return Shape(
        mt,
        "encoder",
        embedding + layers * block + head,
        layers * linear_weights,
        block,
        head,
        layers,
        tuple(linears),
        (stack,),
        head,
        max(labels, 2),
        "source" if token_level else "one",
        positions,
    )


def _seq2seq(c: dict[str, Any]) -> Shape:
    mt = c["model_type"]
    if mt == "bart":
        d, enc_layers, dec_layers = c["d_model"], c["encoder_layers"], c["decoder_layers"]
        heads, ffn, vocab = c["encoder_attention_heads"], c["encoder_ffn_dim"], c["vocab_size"]
        inner, gated, context = d, False, c.get("max_position_embeddings", 1024)
        names = {
            "q": "q_proj",
            "k": "k_proj",
            "v": "v_proj",
            "o": "out_proj",
            "self": "self_attn",
            "cross": "encoder_attn",
        }
        ffn_linears = [("fc1", d, ffn), ("fc2", ffn, d)]
        bias = True
        # shared token embedding (tied to the head) + learned positions with BART's offset of 2 + embedding norms
        embedding = vocab * d + 2 * (context + 2) * d + 2 * 2 * d
        head, upcast = 0, False
    else:
        d, ffn, heads = c["d_model"], c["d_ff"], c["num_heads"]
        enc_layers = c["num_layers"]
        dec_layers = c.get("num_decoder_layers") or enc_layers
        vocab, inner = c["vocab_size"], heads * c.get("d_kv", d // heads)
        gated = str(c.get("feed_forward_proj", "relu")).startswith("gated")
        context = c.get("n_positions", 512)
        names = {"q": "q", "k": "k", "v": "v", "o": "o", "self": "SelfAttention", "cross": "EncDecAttention"}
        ffn_linears = ([("wi_0", d, ffn), ("wi_1", d, ffn)] if gated else [("wi", d, ffn)]) + [("wo", ffn, d)]
        bias = False
        buckets = c.get("relative_attention_num_buckets", 32)
        embedding = vocab * d + 2 * buckets * heads + 2 * d  # shared table, relative-position biases, final norms
        head = 0 if c.get("tie_word_embeddings", True) else vocab * d
        upcast = True  # T5 computes the softmax in fp32

    def attention(kind: str, layers: int) -> list[Linear]:
        return [
            Linear(f"{names[kind]}.{names[p]}", d if p != "o" else inner, inner if p != "o" else d, layers)
            for p in "qkvo"
        ]

    def mlp(layers: int) -> list[Linear]:
        return [Linear(name, fan_in, fan_out, layers) for name, fan_in, fan_out in ffn_linears]

    linears = attention("self", enc_layers + dec_layers) + attention("cross", dec_layers) + mlp(enc_layers + dec_layers)
    attn_w, ffn_w = 4 * d * inner, sum(i * o for _, i, o in ffn_linears)
    attn_b, ffn_b = (4 * d, ffn + d) if bias else (0, 0)
    norm = 2 * d if bias else d  # LayerNorm has a bias, T5's RMS norm does not
    enc_block = attn_w + attn_b + ffn_w + ffn_b + 2 * norm
    dec_block = 2 * (attn_w + attn_b) + ffn_w + ffn_b + 3 * norm
    parameters = embedding + enc_layers * enc_block + dec_layers * dec_block + head
    encoder = Stack(enc_layers, d, heads, heads, inner // heads, ffn, gated, 2, True, upcast, attn_w + ffn_w)
    decoder = Stack(
        dec_layers, d, heads, heads, inner // heads, ffn, gated, 3, True, upcast, 2 * attn_w + ffn_w, "target", True
    )
    quantizable = enc_layers * (attn_w + ffn_w) + dec_layers * (2 * attn_w + ffn_w)
    return Shape(
        mt,
        "seq2seq",
        parameters,
        quantizable,
        dec_block,
        norm + head,
        enc_layers + dec_layers,
        tuple(linears),
        (encoder, decoder),
        vocab * d,
        vocab,
        "target",
        context,
    )


def _encoder_decoder(c: dict[str, Any]) -> Shape:
    """transformers' EncoderDecoderModel of two BERT-style halves (BERT2BERT, Rothe et al. 2020): the encoder
    as an encoder (with its pooler), the decoder as the same blocks plus cross-attention and a masked-LM head
    (dense + LayerNorm + the output layer, tied to the decoder's input embeddings, with its own bias)."""
    enc_cfg, dec_cfg = dict(c["encoder"]), dict(c["decoder"])
    for half in (enc_cfg, dec_cfg):
        half.pop("num_labels", None), half.pop("id2label", None), half.pop("architectures", None)
    if enc_cfg.get("model_type") not in ENCODERS or dec_cfg.get("model_type") not in ENCODERS:
        raise UnsupportedModel(
            f"the estimator models encoder-decoders of BERT-style halves, not "
            f"{enc_cfg.get('model_type')} + {dec_cfg.get('model_type')}",
            where="model_type",
            fix="size memory from the parameter count (16 bytes/param for full fine-tuning)",
        )
    encoder, decoder = _encoder(enc_cfg), _encoder(dec_cfg)
    h, vocab, layers = dec_cfg["hidden_size"], dec_cfg["vocab_size"], dec_cfg["num_hidden_layers"]
    cross = 4 * h * h
    cross_block = cross + 4 * h + 2 * h  # Q, K, V, output projections with biases, and their LayerNorm
    lm_head = h * h + h + 2 * h + vocab  # transform dense, LayerNorm, output bias (the weight is tied)
    dec_params = decoder.parameters - decoder.head_parameters + layers * cross_block + lm_head
    cross_linears = tuple(
        Linear(f"crossattention.{n}", h, h, layers) for n in ("self.query", "self.key", "self.value", "output.dense")
    )
    # all-linear LoRA also finds the encoder's pooler and the LM head's transform (not the tied output layer).
    cross_linears += (
        Linear("pooler.dense", enc_cfg["hidden_size"], enc_cfg["hidden_size"], 1),
        Linear("cls.predictions.transform.dense", h, h, 1),
    )
    (enc_stack,), (dec_stack,) = encoder.stacks, decoder.stacks
    dec_stack = Stack(
        dec_stack.layers,
        h,
        dec_stack.heads,
        dec_stack.kv_heads,
        dec_stack.head_dim,
        dec_stack.ffn,
        False,
        3,
        True,
        False,
        dec_stack.matmul_parameters + cross,
        "target",
        True,
    )
    return Shape(
        "encoder-decoder",
        "seq2seq",
        encoder.parameters + dec_params,
        encoder.quantizable + decoder.quantizable + layers * cross,
        decoder.block_parameters + cross_block,
        lm_head,
        encoder.layers + layers,
        encoder.linears + decoder.linears + cross_linears,
        (enc_stack, dec_stack),
        vocab * h,
        vocab,
        "target",
        min(encoder.context, decoder.context),
        tied_head=True,
    )


def _vit(c: dict[str, Any]) -> Shape:
    h, layers, heads, inter = c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"], c["intermediate_size"]
    image, patch, channels = c.get("image_size", 224), c.get("patch_size", 16), c.get("num_channels", 3)
    labels = _num_labels(c, 1000)
    tokens = (image // patch) ** 2 + 1  # patches + [CLS]
    patch_embed = channels * patch * patch * h + h
    embedding = patch_embed + h + tokens * h
    linear_weights = 4 * h * h + 2 * h * inter
    block = linear_weights + 4 * h + inter + h + 2 * 2 * h
    head = 2 * h + h * labels + labels
    linears = [Linear(f"attention.attention.{n}", h, h, layers) for n in ("query", "key", "value")] + [
        Linear("attention.output.dense", h, h, layers),
        Linear("intermediate.dense", h, inter, layers),
        Linear("output.dense", inter, h, layers),
    ]
    dropout = bool(c.get("hidden_dropout_prob", 0.0) or c.get("attention_probs_dropout_prob", 0.0))
    stack = Stack(layers, h, heads, heads, h // heads, inter, False, 2, dropout, False, linear_weights, "image")
    return Shape(
        "vit",
        "vision",
        embedding + layers * block + head,
        layers * linear_weights,
        block,
        head,
        layers,
        tuple(linears),
        (stack,),
        h * labels,
        labels,
        "one",
        image,
        image_tokens=tokens,
        conv_flops=2 * patch_embed * (tokens - 1),
    )


class _ConvCounter:
    """Accumulates a CNN's parameters, kept activation elements and forward FLOPs, conv by conv."""

    def __init__(self) -> None:
        self.params = self.elements = self.flops = 0
        self.convs: dict[str, Linear] = {}

    def conv(
        self, name: str, c_in: int, c_out: int, kernel: int, size_out: int, groups: int = 1, bn: bool = True
    ) -> None:
        weights = c_in // groups * c_out * kernel * kernel
        self.params += weights + (2 * c_out if bn else 0)
        self.flops += 2 * weights * size_out * size_out
        if groups == 1:  # PEFT's LoRA for Conv2d adds r*(c_in*k*k + c_out); depthwise convs are not adapted
            old = self.convs.get(name)
            self.convs[name] = Linear(name, c_in * kernel * kernel, c_out, (old.count if old else 0) + 1)

    def keep(self, channels: int, size: int, tensors: int = 1) -> None:
        self.elements += tensors * channels * size * size


def _resnet(c: dict[str, Any]) -> Shape:
    # HF ResNet (v1.5): stride in the 3x3 conv, a 1x1 projection shortcut where the shape changes.
    n = _ConvCounter()
    image = c.get("image_size", 224)
    size = image // 2
    n.keep(c.get("num_channels", 3), image)
    n.conv("embedder.convolution", c.get("num_channels", 3), c["embedding_size"], 7, size)
    n.keep(c["embedding_size"], size, 2)  # conv output (for BN) and ReLU output (for the pool)
    size //= 2
    n.keep(c["embedding_size"], size, 1 + 4)  # max-pool output and its int64 indices
    c_in, blocks = c["embedding_size"], 0
    bottleneck = c.get("layer_type", "bottleneck") == "bottleneck"
    for stage, (c_out, depth) in enumerate(zip(c["hidden_sizes"], c["depths"])):
        for i in range(depth):
            stride = 2 if (i == 0 and stage > 0) else 1
            size_out = size // stride
            mid = c_out // 4 if bottleneck else c_out
            if c_in != c_out or stride != 1:
                n.conv("shortcut.convolution", c_in, c_out, 1, size_out)
                n.keep(c_out, size_out)
            if bottleneck:
                n.conv("layer.0.convolution", c_in, mid, 1, size)
                n.conv("layer.1.convolution", mid, mid, 3, size_out)
                n.conv("layer.2.convolution", mid, c_out, 1, size_out)
                n.keep(mid, size, 2)
                n.keep(mid, size_out, 2)
            else:
                n.conv("layer.0.convolution", c_in, c_out, 3, size_out)
                n.conv("layer.1.convolution", c_out, c_out, 3, size_out)
                n.keep(c_out, size_out, 2)
            n.keep(c_out, size_out, 2)  # last conv output and the ReLU after the residual add
            c_in, size, blocks = c_out, size_out, blocks + 1
    return _cnn_shape("resnet", n, c_in, _num_labels(c, 1000), blocks, image)


def _efficientnet(c: dict[str, Any]) -> Shape:
    # transformers' EfficientNetConfig fields; width/depth multipliers of 1.0 (B0, Lite0) leave sizes as listed.
    n = _ConvCounter()
    image = c.get("image_size", 224)
    size = image // 2
    n.conv("embeddings.convolution", c.get("num_channels", 3), c["in_channels"][0], 3, size)
    n.keep(c["in_channels"][0], size, 2)
    blocks = 0
    for k, c_in, c_out, stride, repeats, ratio in zip(
        c["kernel_sizes"], c["in_channels"], c["out_channels"], c["strides"], c["num_block_repeats"], c["expand_ratios"]
    ):
        for i in range(repeats):
            block_in, s = (c_in, stride) if i == 0 else (c_out, 1)
            expanded, size_out = block_in * ratio, size // s
            if ratio != 1:
                n.conv("expand_conv", block_in, expanded, 1, size)
                n.keep(expanded, size, 2)
            n.conv("depthwise_conv", expanded, expanded, k, size_out, groups=expanded)
            n.keep(expanded, size_out, 2)
            se = int(block_in * c.get("squeeze_expansion_ratio", 0.25))
            if se:  # squeeze-excite: two 1x1 convs with biases on the pooled vector
                n.params += 2 * expanded * se + se + expanded
            n.conv("project_conv", expanded, c_out, 1, size_out)
            n.keep(c_out, size_out)
            size, blocks = size_out, blocks + 1
    n.conv("top_conv", c["out_channels"][-1], c.get("hidden_dim", 1280), 1, size)
    n.keep(c.get("hidden_dim", 1280), size, 2)
    return _cnn_shape("efficientnet", n, c.get("hidden_dim", 1280), _num_labels(c, 1000), blocks, image)


def _cnn_shape(model_type: str, n: _ConvCounter, features: int, labels: int, blocks: int, image: int) -> Shape:
    head = features * labels + labels
    parameters = n.params + head
    return Shape(
        model_type,
        "cnn",
        parameters,
        0,
        n.params // blocks,
        head,
        blocks,
        tuple(n.convs.values()),
        (),
        features * labels,
        labels,
        "one",
        image,
        conv_elements=n.elements,
        conv_flops=n.flops,
        notes=("CNN: activations from feature-map sizes, rough; gradient checkpointing not modelled",),
    )


def model_shape(config: dict[str, Any]) -> Shape:
    """The sizes the estimator needs, from a config.json dict. Unsupported model types raise UnsupportedModel."""
    mt = config.get("model_type")
    try:
        if mt in DECODERS:
            return _decoder(config)
        if mt in ENCODERS:
            return _encoder(config)
        if mt == "encoder-decoder":
            return _encoder_decoder(config)
        if mt in SEQ2SEQ:
            return _seq2seq(config)
        if mt == "vit":
            return _vit(config)
        if mt == "resnet":
            return _resnet(config)
        if mt == "efficientnet":
            return _efficientnet(config)
    except KeyError as exc:
        raise TunesmithError(
            f"model config of type {mt!r} lacks the field {exc.args[0]!r}",
            where="config.json",
            fix="pass the model's complete config.json",
        ) from None
    raise UnsupportedModel(
        f"the estimator does not model {mt or 'configs without model_type'!r}",
        where="model_type",
        fix=f"supported model types: {', '.join(SUPPORTED)}; for others, size memory from the parameter count "
        "(16 bytes/param for full fine-tuning with AdamW, plus activations)",
    )


# ---------------------------------------------------------------------------------------------------
# 2. Memory


def lora_parameters(shape: Shape, r: int, targets: str | list[str] = "all-linear") -> int:
    """LoRA adds A (r x fan_in) and B (fan_out x r) to each targeted layer (Hu et al. 2021): r*(in+out)."""
    return adapter_parameters(shape, r, targets)


def targeted(shape: Shape, targets: str | list[str]) -> list[Linear]:
    if isinstance(targets, str):
        if targets == "all-linear":  # PEFT: every linear layer except the output head
            return list(shape.linears)
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    chosen = [lin for lin in shape.linears if any(lin.name == t or lin.name.endswith("." + t) for t in targets)]
    if not chosen:
        names = sorted({lin.name.rsplit(".", 1)[-1] for lin in shape.linears})
        raise TunesmithError(
            f"no layer of this {shape.model_type} model matches {targets}",
            where="lora_targets",
            fix=f"use all-linear or names among: {', '.join(names)}",
        )
    return chosen


# SDPA on a CPU with attention dropout: torch's CPU flash kernel has no dropout, so SDPA falls back to its
# math path, which keeps three fp32 score-sized tensors for backward: the softmax output, the dropout mask
# (as a float scale) and the dropped probabilities reshaped for the batched matmul with V -- 12 bytes per
# score, under bf16 autocast too (measured with saved-tensor hooks on MiniLM-L6, 8x128 to 16x512). On GPUs
# the flash/memory-efficient kernels regenerate the dropout mask and keep no score matrix.
SDPA_MATH_SCORE_BYTES = 12


def attention_mode(stack: Stack, attention: str, on_gpu: bool) -> str:
    """How a stack's attention keeps its B x heads x S x S_kv scores: eager (all of them), math (SDPA's
    fallback on CPU with dropout), or fused (flash / memory-efficient kernels: none)."""
    if attention == "eager":
        return "eager"
    if attention == "sdpa" and not on_gpu and stack.dropout:
        return "math"
    return "fused"


def _score_bytes(stack: Stack, act: int, mode: str = "eager") -> int:
    """Bytes per attention score kept for backward (the score matrix is B x heads x S x S_kv)."""
    if mode != "eager":
        return SDPA_MATH_SCORE_BYTES if mode == "math" else 0
    softmax = 4 if stack.upcast_softmax else act
    cast = act if stack.upcast_softmax else 0  # the fp32 softmax is cast back for the matmul with V
    dropout = (1 + act) if stack.dropout else 0  # mask and dropped copy (Korthikanti: 5 = 2 + 1 + 2)
    return softmax + cast + dropout


def _block_bytes(stack: Stack, tokens: int, source: int, act: int, mode: str) -> float:
    """Activation bytes one block keeps for backward, per example.

    Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models", sec. 4.1):
    a GPT block keeps 34*s*b*h + 5*a*s^2*b bytes in 16-bit. Counted the same way, tensor by tensor, for
    GQA, GLU MLPs, dropout-free decoders and cross-attention; with a=heads, h=q=kv, ffn=4h, dropout
    and 2-byte activations this gives their 34h per token. `mode`: see attention_mode.
    """
    h, q, kv = stack.hidden, stack.heads * stack.head_dim, stack.kv_heads * stack.head_dim
    mask = 1 if stack.dropout else 0
    per_token = act * (h + q + 2 * kv + q) + mask * h  # QKV input, Q, K, V, output-projection input, dropout mask
    per_token += act * h + act * stack.ffn * (4 if stack.gated else 2) + mask * h  # MLP input, up/gate, activation
    per_token += act * h * stack.norms  # norm inputs
    total = tokens * per_token
    # Fused SDPA and flash attention recompute the scores in backward instead of keeping them.
    total += tokens * stack.heads * tokens * _score_bytes(stack, act, mode)
    if stack.cross:  # query input, Q and output-projection input per target token; K and V per source token
        total += tokens * (act * (h + 2 * q) + mask * h) + source * act * 2 * kv
        total += tokens * stack.heads * source * _score_bytes(stack, act, mode)
    return total


def _lengths(shape: Shape, seq_len: int, target_len: int) -> dict[str, int]:
    return {"source": seq_len, "target": target_len, "image": shape.image_tokens}


def activation_bytes(
    shape: Shape,
    seq_len: int,
    target_len: int,
    act: int,
    attention: str,
    checkpointing: bool,
    trained_blocks: int | None = None,
    on_gpu: bool = True,
) -> float:
    """Per-example activation bytes. `trained_blocks` (freeze): only the top blocks keep activations."""
    if shape.family == "cnn":
        return shape.conv_elements * act * (1 if trained_blocks is None else min(1.0, trained_blocks / shape.layers))
    lengths = _lengths(shape, seq_len, target_len)
    full, inputs, largest = 0.0, 0.0, 0.0
    remaining = trained_blocks if trained_blocks is not None else shape.layers
    for stack in reversed(shape.stacks):  # the top blocks are the last stack's last ones
        n = min(stack.layers, remaining)
        remaining -= n
        block = _block_bytes(stack, lengths[stack.tokens], seq_len, act, attention_mode(stack, attention, on_gpu))
        full += n * block
        inputs += n * lengths[stack.tokens] * stack.hidden * act
        largest = max(largest, block if n else 0.0)
    # Checkpointing keeps each block's input and recomputes one block at a time in backward.
    return inputs + largest if checkpointing else full


@dataclass
class Estimate:
    model: str
    model_type: str
    family: str
    hardware: Hardware
    method: str
    precision: str  # autocast dtype of the compute
    weight_dtype: str  # storage of the (frozen) weights
    seq_len: int
    target_len: int | None
    batch: int
    gpus: int
    zero_stage: int  # 0 = plain data parallel; FSDP full sharding is reported as 3
    grad_checkpointing: bool
    attention: str
    optimizer: str
    parameters: int
    trainable_parameters: int
    breakdown: dict[str, float]
    total_bytes: float
    device_bytes: int
    fits: bool
    max_batch: int
    flops_per_example: float
    examples_per_second: float
    tokens_per_second: float | None
    tokens_per_example: int | None
    seconds_per_epoch: float | None
    cost_per_epoch_usd: float | None
    notes: list[str] = field(default_factory=list)

    def seconds_for_tokens(self, tokens: float) -> float:
        rate = self.tokens_per_second or self.examples_per_second
        return tokens / rate


def _check(name: str, value: Any, choices: Collection[Any]) -> None:
    if value not in choices:
        raise TunesmithError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}", where=name)


def method_settings(method: str | MethodSettings, **options: Any) -> tuple[MethodModule, MethodSettings]:
    """The method module and its settings: a method name, or a method config (a run's), with the `options`
    that name's Config has set over it (others are ignored: `r` means nothing to full fine-tuning; None
    keeps the config's value or the method's default)."""
    name = method.name if isinstance(method, MethodSettings) else method
    if name not in METHODS:
        raise TunesmithError(f"method must be one of {', '.join(METHODS)}, got {name!r}", where="method")
    module = get_method(name)
    given = {k: v for k, v in options.items() if k in module.Config.model_fields and v is not None}
    if isinstance(given.get("target_modules"), str) and given["target_modules"] != "all-linear":
        given["target_modules"] = [t.strip() for t in given["target_modules"].split(",") if t.strip()]  # the CLI's form
    if isinstance(method, MethodSettings) and not given:
        return module, method
    base = method.model_dump() if isinstance(method, MethodSettings) else {}
    try:
        return module, module.Config.model_validate({**base, **given})
    except ValueError as exc:
        raise TunesmithError(f"method {name}: {exc}", where="method") from None


def _weights(m: MethodModule, cfg: MethodSettings | None, parameters: int, quantizable: int, dtype: str) -> float:
    bits: Callable[[MethodSettings | None], float] | None = getattr(m, "quantized_bits", None)
    if m.footprint.quantized and bits is not None:
        return quantizable * bits(cfg) / 8 + (parameters - quantizable) * BYTES[dtype]
    return parameters * BYTES[dtype]


def _optimizer(trainable: int, trainable_bytes: int, optimizer: str) -> float:
    # torch's AdamW keeps exp_avg and exp_avg_sq in the parameter's dtype.
    return trainable * (2 * trainable_bytes if optimizer == "adamw" else ADAM8_BYTES)


def resolve_dtypes(method: str | MethodModule, hw: Hardware, dtype: str, precision: str) -> tuple[str, str, int]:
    """(compute precision, weight storage dtype, bytes per trainable parameter), as tunesmith chooses them."""
    m = get_method(method) if isinstance(method, str) else method
    if precision == "auto":  # train/precision.py: bf16 where the hardware has it, else fp32
        precision = "bf16" if hw.bf16 else "fp32"
    if dtype == "auto":  # models/load.py: fp32 where weights train; a frozen base in bf16 on bf16 GPUs
        # QLoRA: prepare_model_for_kbit_training casts what is not 4-bit (embeddings, norms, head) to fp32.
        dtype = "bf16" if (m.footprint.half_base_on_gpu and hw.is_gpu and hw.bf16) else "fp32"
    trainable_bytes = BYTES[dtype] if m.footprint.trains_base else 4  # PEFT keeps adapters in fp32
    return precision, dtype, trainable_bytes


def parameter_memory(
    parameters: int,
    trainable: int,
    method: str | MethodModule,
    hw: Hardware,
    dtype: str = "auto",
    optimizer: str = "adamw",
    quantizable: int | None = None,
    cfg: MethodSettings | None = None,
    precision: str = "auto",
) -> dict[str, float]:
    """Weights, adapters, gradients, optimizer states and autocast copies (unsharded), from counts alone.

    Shared by `estimate` and by the recommender for architectures without a shape builder.
    """
    m = get_method(method) if isinstance(method, str) else method
    cfg = cfg if cfg is not None else m.Config.model_validate({})  # every field at its default
    precision, dtype, trainable_bytes = resolve_dtypes(m, hw, dtype, precision)
    adapters = not m.footprint.trains_base
    quantizable = parameters if quantizable is None else quantizable
    half = precision in ("bf16", "fp16")
    return {
        "weights": _weights(m, cfg, parameters, quantizable, dtype),
        "adapters": trainable * trainable_bytes if adapters else 0,
        "gradients": trainable * trainable_bytes,
        "optimizer": _optimizer(trainable, trainable_bytes, optimizer),
        # autocast caches a half copy of each weight that requires grad for the whole forward and backward
        "autocast copies": trainable * 2 if (half and trainable_bytes == 4) else 0,
    }


def _shard(memory: dict[str, float], gpus: int, stage: int, block_bytes: float) -> dict[str, float]:
    """ZeRO (Rajbhandari et al. 2020): stage 1 shards optimizer states, 2 also gradients, 3 (= FSDP full
    shard) also weights, gathering one block at a time (two with prefetch)."""
    if gpus == 1 or stage == 0:
        return memory
    out = dict(memory)
    out["optimizer"] /= gpus
    if stage >= 2:
        out["gradients"] /= gpus
    if stage == 3:
        for key in ("weights", "adapters", "autocast copies"):
            out[key] /= gpus
        out["gathered blocks"] = 2 * block_bytes
    return out


def _flops_per_example(
    shape: Shape, m: MethodModule, seq_len: int, target_len: int, checkpointing: bool, trained_blocks: int | None
) -> float:
    """Training FLOPs of one example.

    Forward = 2 FLOPs per weight per token (Kaplan et al. 2020) plus attention's QK^T and AV,
    4*S_kv*heads*head_dim per token per layer (PaLM, Chowdhery et al. 2022, app. B: 6N + 12*L*H*Q*T for
    fwd+bwd). Backward = 2x forward when weights train (activation and weight gradients: 6N total),
    1x for the frozen weights of LoRA/QLoRA (activation gradients only: ~4N) while attention still costs
    2x; the freeze method only backpropagates through its top blocks. Checkpointing adds a forward.
    """
    lengths = _lengths(shape, seq_len, target_len)
    matmul = attention = 0.0
    for stack in shape.stacks:
        tokens = lengths[stack.tokens]
        matmul += 2 * stack.layers * stack.matmul_parameters * tokens
        attention += 4 * stack.layers * stack.heads * stack.head_dim * tokens * tokens
        if stack.cross:
            attention += 4 * stack.layers * stack.heads * stack.head_dim * tokens * seq_len
    positions = {"one": 1}.get(shape.output_positions) or lengths[shape.output_positions]
    matmul += 2 * shape.head_matmul * positions + shape.conv_flops
    forward = matmul + attention
    if trained_blocks is not None:  # the freeze method: backward stops below its top blocks
        share = min(1.0, trained_blocks / shape.layers)
        backward = 2 * forward * share + 2 * shape.head_matmul * positions
        return forward + backward + (forward * share if checkpointing else 0)
    backward = 2 * forward if m.footprint.trains_base else matmul + 2 * attention
    return forward + backward + (forward if checkpointing else 0)


def estimate(
    model: str | dict[str, Any] | Entry | Path,
    method: str | MethodSettings = DEFAULT_METHOD,
    seq_len: int = 1024,
    batch: int = 8,
    grad_checkpointing: bool = False,
    hardware: str | Hardware = "auto",
    gpus: int = 1,
    zero: int | None = None,
    fsdp: bool = False,
    lora_r: int | None = None,
    lora_targets: str | list[str] | None = None,
    optimizer: str = "adamw",
    attention: str = "sdpa",
    dtype: str = "auto",
    precision: str = "auto",
    target_len: int | None = None,
    freeze_train_top: int | None = None,
    double_quant: bool | None = None,
    epoch_tokens: float | None = None,
    epoch_examples: float | None = None,
    price_per_hour: float | None = None,
    loss_chunk_tokens: int = 1024,
) -> Estimate:
    """Memory breakdown, fit, largest batch, throughput and epoch time of one fine-tuning setup.

    `model`: catalog name or hub id, model folder, config.json path, or a config dict. `seq_len` is the
    source length (encoder-decoders: `target_len` defaults to seq_len // 4; image models use the config's
    image size). `batch` is per device. `epoch_tokens` (or `epoch_examples`) gives the epoch time and cost.
    `loss_chunk_tokens`: tunesmith's `train.loss_chunk_tokens` (causal LMs; 0 = whole logits tensor).
    `method` is a method name, whose options `lora_r`, `lora_targets`, `freeze_train_top` and `double_quant`
    set where its config has them (None: the method's defaults), or a method config (`RunConfig.method`), which carries its own.
    """
    # 1. Inputs
    m, cfg = method_settings(
        method, r=lora_r, target_modules=lora_targets, freeze_train_top=freeze_train_top, double_quant=double_quant
    )
    _check("optimizer", optimizer, OPTIMIZERS)
    _check("attention", attention, ATTENTION)
    _check("dtype", dtype, DTYPES)
    _check("precision", precision, PRECISIONS)
    _check("zero", zero, (None, 0, 1, 2, 3))
    if zero and fsdp:
        raise TunesmithError(
            "choose ZeRO or FSDP, not both", where="--zero/--fsdp", fix="FSDP full sharding is ZeRO-3's equivalent"
        )
    for name, value in (("seq_len", seq_len), ("batch", batch), ("gpus", gpus), ("lora_r", lora_r or 1)):
        if not isinstance(value, int) or value < 1:
            raise TunesmithError(f"{name} must be a positive integer, got {value!r}", where=name)
    name, config, entry = model_config(str(model) if isinstance(model, Path) else model)
    shape = model_shape(config)
    hw = get_hardware(hardware)
    precision, dtype, trainable_bytes = resolve_dtypes(m, hw, dtype, precision)
    act = 2 if precision in ("bf16", "fp16") else 4
    target_len = target_len or max(1, seq_len // 4)
    stage = 3 if fsdp else (zero or 0)
    notes = list(shape.notes)
    if shape.family in ("vision", "cnn"):
        notes.append(
            f"image model: seq_len is ignored, {shape.context} px images ({shape.image_tokens or 'no'} tokens)"
        )
    elif seq_len > shape.context:
        notes.append(f"seq_len {seq_len} exceeds the model's context {shape.context}")

    # 2. What trains
    blocks_of = getattr(m, "trained_blocks", None)
    trained_blocks = blocks_of(shape, cfg) if blocks_of is not None else None
    trainable = m.trainable_parameters(shape, cfg)
    targets = getattr(cfg, "target_modules", None)  # adapted linears: autocast and heap terms per input feature

    # 3. Memory that does not depend on the batch, sharded
    fixed = parameter_memory(shape.parameters, trainable, m, hw, dtype, optimizer, shape.quantizable, cfg, precision)
    bits = getattr(m, "quantized_bits", None)
    block_bytes = shape.block_parameters * (bits(cfg) / 8 if m.footprint.quantized and bits else BYTES[dtype])
    fixed = _shard(fixed, gpus, stage, block_bytes)
    fixed["framework"] = FRAMEWORK_BYTES["gpu" if hw.is_gpu else "other"]
    if hw.is_gpu:
        fixed["cuBLAS workspaces"] = CUBLAS_WORKSPACE_BYTES

    # 4. Memory per example
    positions = {"one": 1}.get(shape.output_positions) or _lengths(shape, seq_len, target_len)[shape.output_positions]
    chunked = loss_chunk_tokens > 0 and shape.family == "decoder" and shape.output_positions != "one"
    per_example = {
        "activations": activation_bytes(
            shape, seq_len, target_len, act, attention, grad_checkpointing, trained_blocks, on_gpu=hw.is_gpu
        ),
        # Chunked (train/loss.py): per loss position only the gradient of the final hidden state (fp32) and
        # its gathered copy; the logits of one chunk at a time (below), never the whole tensor.
        "logits": positions
        * (CHUNKED_LOSS_HIDDEN_BYTES * shape.stacks[-1].hidden if chunked else shape.outputs * LOGIT_BYTES),
    }
    if chunked:
        head_trains = m.footprint.trains_base  # the gradient of a trained head is summed inside the loss
        fixed["loss chunk"] = min(loss_chunk_tokens, positions) * shape.outputs * LOGIT_BYTES + (
            shape.head_matmul * 4 if head_trains else 0
        )

    if precision in ("bf16", "fp16") and shape.family in ("decoder", "encoder"):
        _autocast(
            shape,
            m,
            hw.is_gpu,
            dtype,
            trainable,
            trained_blocks,
            targets,
            seq_len,
            act,
            attention,
            grad_checkpointing,
            fixed,
            per_example,
        )

    if (
        not hw.is_gpu
        and precision in ("bf16", "fp16")
        and shape.family in ("decoder", "encoder")
        and not grad_checkpointing
    ):
        _cpu_heap_retention(shape, m, trained_blocks, targets, seq_len, fixed, per_example)

    def moments(b: int) -> tuple[float, float]:
        """(backward peak, optimizer step peak). Backward frees each block's activations as its parameter gradients
        appear (top block first), so it holds max(activations, gradients) of the two, not their sum. The
        optimizer step holds no activations and no autocast copies, but torch's foreach AdamW makes one
        temporary per trained parameter (sqrt of exp_avg_sq). Measured: summing both over-predicted full
        fine-tuning of a SmolLM2-360M-shaped model at 2x512 by 15% on the H100."""
        held, activations = sum(fixed.values()), b * sum(per_example.values())
        gradients = fixed.get("gradients", 0.0)
        backward = held + activations - min(activations, gradients)
        step = held - fixed.get("autocast copies", 0.0) + fixed.get("optimizer", 0.0) / 2
        return backward, step

    def total_for(b: int) -> float:
        return max(moments(b))

    breakdown = {
        **{k: v for k, v in fixed.items() if k != "framework"},
        **{k: v * batch for k, v in per_example.items()},
        "framework": fixed["framework"],
    }
    total = total_for(batch)
    backward, step = moments(batch)
    peak = (
        "at the peak: gradients replace freed activations"
        if backward >= step
        else "at the peak (optimizer step): no activations, + AdamW temporaries"
    )
    breakdown[peak] = total - sum(breakdown.values())
    device = hw.memory_bytes

    # 5. Speed, time and cost
    flops = _flops_per_example(shape, m, seq_len, target_len, grad_checkpointing, trained_blocks)
    rate = hw.peak_flops(precision) * MFU[hw.kind] * m.footprint.efficiency * gpus
    examples_per_s = rate / flops
    tokens_per_example = None if shape.family in ("vision", "cnn") else seq_len
    tokens_per_s = examples_per_s * tokens_per_example if tokens_per_example else None
    seconds = None
    if epoch_examples:
        seconds = epoch_examples / examples_per_s
    elif epoch_tokens and tokens_per_s:
        seconds = epoch_tokens / tokens_per_s
    price = price_per_hour if price_per_hour is not None else hw.price_per_hour
    cost = seconds / 3600 * price * gpus if (seconds is not None and price is not None) else None
    if hw.is_gpu and not hw.bf16 and precision == "fp32":
        notes.append(
            f"{hw.name} has no bf16, so tunesmith's precision auto trains in fp32 here; precision fp16 "
            f"(train.precision: fp16) would use its {hw.bf16_tflops:g} fp16 TFLOPS instead of {hw.fp32_tflops:g}"
        )
    if trained_blocks is not None:
        notes.append(f"{cfg.name}: top {trained_blocks} of {shape.layers} blocks plus the head train")
    if (
        shape.output_positions != "one"
        and shape.family == "seq2seq"
        or (shape.family == "decoder" and shape.output_positions != "one" and not chunked)
    ):
        notes.append("logits counted at every position; tunesmith computes them only where the loss is taken")

    return Estimate(
        model=name,
        model_type=shape.model_type,
        family=shape.family,
        hardware=hw,
        method=cfg.name,
        precision=precision,
        weight_dtype=f"{m.footprint.quantized}+{dtype}" if m.footprint.quantized else dtype,
        seq_len=seq_len,
        target_len=target_len if shape.family == "seq2seq" else None,
        batch=batch,
        gpus=gpus,
        zero_stage=stage,
        grad_checkpointing=grad_checkpointing,
        attention=attention,
        optimizer=optimizer,
        parameters=shape.parameters,
        trainable_parameters=trainable,
        breakdown=breakdown,
        total_bytes=total,
        device_bytes=device,
        fits=total <= device,
        max_batch=_largest(total_for, device),
        flops_per_example=flops,
        examples_per_second=examples_per_s,
        tokens_per_second=tokens_per_s,
        tokens_per_example=tokens_per_example,
        seconds_per_epoch=seconds,
        cost_per_epoch_usd=cost,
        notes=notes,
    )


def _autocast(
    shape: Shape,
    m: MethodModule,
    on_gpu: bool,
    dtype: str,
    trainable: int,
    trained_blocks: int | None,
    targets: Any,
    seq_len: int,
    act: int,
    attention: str,
    checkpointing: bool,
    fixed: dict[str, float],
    per_example: dict[str, float],
) -> None:
    """What half-precision autocast keeps beyond the 16-bit count (measured on CPU and H100; see the constants).

    Over fp32 weights (full, freeze, QLoRA's fp32 non-4-bit parts; LoRA on CPUs): autograd keeps the half
    cast of every weight a gradient flows back through (to compute the input's gradient), frozen ones
    included: all block linears and the head for full and LoRA; the head (fp32 after
    prepare_model_for_kbit_training) for QLoRA, whose 4-bit weights are dequantised anew in backward; the
    trained top blocks and the head for freeze, all blocks when the head is the tied embedding. And the fp32
    residual stream. Over bf16 weights (LoRA on bf16 GPUs) neither exists; the adapters' fp32 inputs do.
    """
    layers = shape.layers
    fp32_weights = dtype == "fp32"
    adapters = not m.footprint.trains_base
    if fp32_weights:
        backward_blocks = layers if trained_blocks is None or shape.tied_head else trained_blocks
        linear = shape.quantizable / max(layers, 1)
        weights = shape.head_matmul + (0 if m.footprint.quantized else backward_blocks * linear)
        fixed["autocast copies"] = 2 * (weights + (trainable if adapters else 0))
    if checkpointing:
        return  # only block inputs are kept; the stream term is inside the one recomputed block
    stack = shape.stacks[0]
    per_token: float = AUTOCAST_STREAM_BYTES * stack.hidden if fp32_weights else 0
    kept = m.footprint.adapter_input_bytes[1 if on_gpu else 0]
    if kept and targets is not None:
        fan_in = sum(lin.fan_in * lin.count for lin in targeted(shape, targets)) / max(layers, 1)
        per_token += kept * fan_in
    trained = layers if trained_blocks is None else trained_blocks
    extra = seq_len * per_token * trained
    if trained_blocks is not None and shape.tied_head and fp32_weights:
        block = (
            _block_bytes(stack, seq_len, seq_len, act, attention_mode(stack, attention, on_gpu)) + seq_len * per_token
        )
        extra += FROZEN_BLOCK_SHARE * block * (layers - trained)
    per_example["activations"] += extra


def _cpu_heap_retention(
    shape: Shape,
    m: MethodModule,
    trained_blocks: int | None,
    targets: Any,
    seq_len: int,
    fixed: dict[str, float],
    per_example: dict[str, float],
) -> None:
    """Freed temporaries that stay in the process on a CPU (glibc keeps freed blocks under its dynamic mmap
    threshold, up to 32 MiB, in its heap), so RSS peaks above the tensors alive at once. Fitted by least
    squares on SmolLM2-135M and MiniLM-L6 (24 points, bench/MEMORY_RESULTS.md), checked on a
    SmolLM2-360M-shaped model; see the constants."""
    stack = shape.stacks[0]
    blocks = trained_blocks if (trained_blocks is not None and not shape.tied_head) else shape.layers
    per_token: float = HEAP_STREAM_BYTES * stack.hidden * blocks
    if m.footprint.heap_adapter_input_bytes and targets is not None:
        fan_in = sum(lin.fan_in * lin.count for lin in targeted(shape, targets))
        per_token += m.footprint.heap_adapter_input_bytes * fan_in
    if m.footprint.heap_dequant_bytes:
        fixed["freed dequantised weights"] = m.footprint.heap_dequant_bytes * shape.quantizable
    per_example["freed temporaries"] = per_token * seq_len


def run_settings(config: Any, seq_len: int | None = None, batch: int | None = None) -> dict[str, Any]:
    """A RunConfig as `estimate` arguments: the one mapping the pre-flight check and `tunesmith estimate
    run.yaml` size a run by (the recommender sizes catalog entries before a config exists; a test checks
    that its written configs, sized through here, give its own figures). Recomputation is counted only where the user asked
    for it: `auto`'s QLoRA checkpointing is sized without it, an upper bound, because the estimator's
    checkpointing terms are not yet calibrated on CPUs (a QLoRA run measured 3.77 GiB RSS against 1.25 GiB
    estimated; bench/RESULTS.md)."""
    model = config.model
    batch_size = config.train.batch_size if batch is None else batch
    return {
        "method": config.method,  # the method's own config: rank, targets, blocks, quantisation
        "seq_len": config.data.max_length if seq_len is None else seq_len,
        "batch": batch_size if isinstance(batch_size, int) else 1,  # auto: the pre-flight sizes it from 1 up
        "grad_checkpointing": config.train.gradient_checkpointing is True,
        "dtype": {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(model.dtype, "auto"),
        # auto: transformers picks sdpa where the model supports it, which is what the estimate should assume
        "attention": {"flash_attention_2": "flash", "auto": "sdpa"}.get(
            model.attn_implementation, model.attn_implementation
        ),
        "precision": config.train.precision,
        "optimizer": config.train.optimizer,
        "loss_chunk_tokens": config.train.loss_chunk_tokens,
    }


def implied_mfu(est: Estimate, measured_examples_per_s: float) -> float:
    """The MFU constant that would make `est` predict a measured speed: fit MFU[kind] with the median over runs.

    Count processed examples (or tokens / tokens_per_example), not only the tokens that carry loss.
    """
    peak = est.hardware.peak_flops(est.precision) * get_method(est.method).footprint.efficiency * est.gpus
    return measured_examples_per_s * est.flops_per_example / peak


def _largest(total_for: Callable[[int], float], limit: float, cap: int = 1 << 16) -> int:
    """Largest batch with total_for(batch) <= limit (0 if even 1 does not fit): doubling, then bisection."""
    if total_for(1) > limit:
        return 0
    low, high = 1, 2
    while high <= cap and total_for(high) <= limit:
        low, high = high, high * 2
    if high > cap:
        return low
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if total_for(mid) <= limit else (low, mid)
    return low


def human_bytes(n: float) -> str:
    return f"{n / GiB:.2f} GiB"


def human_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    hours = seconds / 3600
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} days"


def human_count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.0f}"


__all__ = [
    "Estimate",
    "Shape",
    "Stack",
    "Linear",
    "UnsupportedModel",
    "estimate",
    "model_shape",
    "lora_parameters",
    "implied_mfu",
    "parameter_memory",
    "activation_bytes",
    "resolve_dtypes",
    "method_settings",
    "run_settings",
    "MFU",
    "human_bytes",
    "human_duration",
    "human_count",
]
