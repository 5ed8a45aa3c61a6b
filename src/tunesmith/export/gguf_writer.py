"""A merged Llama-family model (SmolLM2, Llama 3, other Llama-architecture checkpoints with a byte-level BPE
tokenizer) written as one GGUF file with the `gguf` package, llama.cpp's own Python writer: hyperparameters,
tensors under llama.cpp's names, the tokenizer, the run's chat template and its stop tokens.

What this follows from llama.cpp's convert_hf_to_gguf.py (LlamaModel, get_vocab_base), rather than calling
it (the script is not part of any package):
  - Q and K projections are permuted from Hugging Face's rotate-half layout to llama.cpp's interleaved one;
  - the pre-tokenizer is identified by hashing the token ids of a fixed probe text (`_PROBE_TEXT`), since
    llama.cpp implements each model family's split regex in C++ under a name (`tokenizer.ggml.pre`);
  - 1-D tensors (norms) stay float32; Q8_0 rows need a length divisible by 32, else they stay 16-bit;
  - Llama 3.1's rope scaling is one factor per rotary frequency, written as the `rope_freqs` tensor.
"""

from __future__ import annotations

import math
from hashlib import sha256
from pathlib import Path
from typing import Any

from tunesmith.errors import TunesmithError

# HF architectures written as llama.cpp's "llama" graph. Mistral's is the same graph (sliding-window
# attention aside, which only matters past its 4,096-token window).
LLAMA_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")

# llama.cpp's probe text and the hashes of the pre-tokenizers of the Llama family whose GGUF names it
# knows (convert_hf_to_gguf.py, get_vocab_base_pre). An unknown hash is refused: llama.cpp would split
# text with another regex and the model would read different tokens than it was trained on.
_PROBE_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 "
    "3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, "
    "'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
_PRE_TOKENIZERS = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # SmolLM, SmolLM2
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Llama 3, 3.1, 3.2
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",  # Mistral Nemo
}


def unsupported_model(model_config: Any, tokenizer: Any) -> str | None:
    """Why this model cannot be written by `write_gguf`, or None. Read before any weight is merged."""
    architectures = getattr(model_config, "architectures", None) or []
    if not set(architectures) & set(LLAMA_ARCHITECTURES):
        return (
            f"GGUF export covers the Llama family ({', '.join(LLAMA_ARCHITECTURES)}), not {architectures or 'this'} "
            "model: export --format merged and convert it with llama.cpp's convert_hf_to_gguf.py"
        )
    rope = _rope(model_config)
    if rope.get("rope_type", "default") not in ("default", "llama3"):
        return (
            f"rope scaling {rope.get('rope_type')!r} is not written to GGUF by tunesmith yet (default and Llama 3.1's "
            "are): export --format merged and convert it with llama.cpp's convert_hf_to_gguf.py"
        )
    if getattr(model_config, "mlp_bias", False):
        return "an MLP with biases is not the llama.cpp llama graph: export --format merged"
    window = getattr(model_config, "sliding_window", None)
    if window and window < model_config.max_position_embeddings:
        return (
            f"sliding-window attention ({window} of {model_config.max_position_embeddings} positions) is not in "
            "llama.cpp's llama graph, which would attend to the whole context: export --format merged"
        )
    if max(tokenizer.get_vocab().values()) >= model_config.vocab_size:
        return (
            f"the tokenizer has ids beyond the model's {model_config.vocab_size} embeddings (added tokens without "
            "resized embeddings): export --format merged"
        )
    kind = tokenizer_kind(tokenizer)
    if kind == "llama":
        # Measured with a Llama-2-style tokenizer (tests/test_export_gguf.py): transformers 5 encodes the text
        # after a special token ("<s>[INST] ...") without a leading ▁, llama.cpp's SentencePiece tokenizer with
        # one ("▁[INST]"), as sentencepiece itself does. A GGUF would read other tokens than the model learnt.
        return (
            "the tokenizer is SentencePiece-style (Llama 2, Mistral 7B): llama.cpp puts a ▁ before text that "
            "follows a special token and transformers 5, which trained this run, does not, so the file would read "
            "chat prompts as tokens the model never saw: export --format merged and serve it with transformers "
            "or vLLM"
        )
    if kind is None:
        return (
            "the tokenizer is not byte-level BPE (SmolLM2, Llama 3, Mistral Nemo): export --format merged and "
            "convert it with llama.cpp's convert_hf_to_gguf.py"
        )
    if pre_tokenizer(tokenizer) is None:
        return (
            "the tokenizer's pre-tokenizer is not one llama.cpp knows by name (smollm, llama-bpe, tekken), so "
            "llama.cpp would split text differently: export --format merged and use convert_hf_to_gguf.py"
        )
    return None


def pre_tokenizer(tokenizer: Any) -> str | None:
    """llama.cpp's name for the tokenizer's pre-tokenizer, identified as convert_hf_to_gguf.py does."""
    ids = tokenizer.encode(_PROBE_TEXT)
    return _PRE_TOKENIZERS.get(sha256(str(ids).encode()).hexdigest())


def write_gguf(
    model: Any,
    tokenizer: Any,
    path: Path,
    *,
    outtype: str,
    chat_template: str,
    stop_ids: list[int],
    name: str,
) -> None:
    """Write `model` (merged, plain weights) and `tokenizer` to `path` with tensors in `outtype`
    ("f32", "f16", "bf16" or "q8_0"); `stop_ids` are the run's end-of-answer tokens."""
    import gguf

    config = model.config
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    try:
        _write_hyperparameters(writer, config, outtype, name)
        _write_vocabulary(writer, tokenizer, config, chat_template, stop_ids)
        _write_tensors(writer, model, outtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


# GGUF's file types (general.file_type) and tensor types for the outtypes written directly.
def _types(outtype: str) -> tuple[Any, Any]:
    import gguf

    q = gguf.GGMLQuantizationType
    f = gguf.LlamaFileType
    return {
        "f32": (f.ALL_F32, q.F32),
        "f16": (f.MOSTLY_F16, q.F16),
        "bf16": (f.MOSTLY_BF16, q.BF16),
        "q8_0": (f.MOSTLY_Q8_0, q.Q8_0),
    }[outtype]


def _rope(config: Any) -> dict[str, Any]:
    # transformers 5 keeps rope_theta and the scaling type in rope_parameters; older configs at the top level.
    rope = dict(getattr(config, "rope_parameters", None) or {})
    scaling = getattr(config, "rope_scaling", None)
    if scaling:
        rope.setdefault("rope_type", scaling.get("rope_type", scaling.get("type")))
    rope.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    return rope


def _write_hyperparameters(writer: Any, config: Any, outtype: str, name: str) -> None:
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    writer.add_name(name)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(_rope(config)["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(_types(outtype)[0])


def tokenizer_kind(tokenizer: Any) -> str | None:
    """llama.cpp's tokenizer model for this tokenizer: "gpt2" (byte-level BPE, written here), "llama"
    (SentencePiece BPE: ▁ for spaces, bytes as <0xNN> tokens; refused), or None (neither)."""
    import json

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # a slow tokenizer: no tokenizer.json to read
        return None
    model = json.loads(backend.to_str()).get("model", {})
    if model.get("type") != "BPE":
        return None
    return "llama" if model.get("byte_fallback") else "gpt2"


def _write_vocabulary(writer: Any, tokenizer: Any, config: Any, chat_template: str, stop_ids: list[int]) -> None:
    """Every id's token text and type, how to split text (merges, or scores), the special ids and flags."""
    _write_byte_level_tokens(writer, tokenizer, config)
    if not stop_ids:
        raise TunesmithError(
            "the run has no stop token (no EOS in the tokenizer or the generation config): llama.cpp would never stop",
            where="--format gguf",
            fix="set the tokenizer's eos_token, or export --format merged",
        )
    # EOS is the tokenizer's own when it is one of the run's stop tokens; another stop token (Llama 3's
    # <|eot_id|>, a template's end-of-turn) becomes the end-of-turn token, which llama.cpp also stops at.
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id in stop_ids else stop_ids[0]
    writer.add_eos_token_id(eos)
    others = [i for i in stop_ids if i != eos]
    if others:
        writer.add_eot_token_id(others[0])
    for kind in ("bos", "pad", "unk"):
        token_id = getattr(tokenizer, f"{kind}_token_id", None)
        if token_id is not None:
            getattr(writer, f"add_{kind}_token_id")(token_id)
    # Whether the tokenizer itself prepends BOS: llama.cpp must encode a prompt to the same ids.
    writer.add_add_bos_token(adds_bos_token(tokenizer))
    writer.add_chat_template(chat_template)


def _token_types(tokenizer: Any, config: Any) -> tuple[list[str], list[Any]]:
    """Token texts by id up to the embedding's size, and their llama.cpp types (as get_vocab_base does)."""
    import gguf

    by_id = {i: token for token, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder  # id -> AddedToken, special or not
    tokens, types = [], []
    for i in range(config.vocab_size):
        if i not in by_id:  # rows the embedding has beyond the tokenizer (padding to a multiple of 64)
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(by_id[i])
        if i == tokenizer.unk_token_id:
            types.append(gguf.TokenType.UNKNOWN)
        elif i in added:
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def _write_byte_level_tokens(writer: Any, tokenizer: Any, config: Any) -> None:
    """Byte-level BPE ("gpt2" in llama.cpp): tokens, merges, and the pre-tokenizer's name."""
    import json

    tokens, types = _token_types(tokenizer, config)
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer(tokenizer))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)


def adds_bos_token(tokenizer: Any) -> bool:
    """Whether encoding a text prepends BOS (Llama 3 does, SmolLM2 does not)."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a")["input_ids"][:1] == [bos]


def _permute(weight: Any, heads: int) -> Any:
    """Hugging Face's rotate-half Q/K rows -> llama.cpp's interleaved pairs (convert_hf_to_gguf.py's permute)."""
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def _llama3_rope_factors(config: Any) -> Any | None:
    """Llama 3.1's rope scaling as llama.cpp reads it: one factor per rotary frequency (the `rope_freqs`
    tensor), computed as convert_hf_to_gguf.py and transformers' _compute_llama3_parameters do. None for
    unscaled rope."""
    import numpy as np

    rope = _rope(config)
    if rope.get("rope_type") != "llama3":
        return None
    dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    freqs = 1.0 / (float(rope["rope_theta"]) ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor = rope.get("factor", 8.0)
    low, high = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old_context = rope.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = old_context / low, old_context / high
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


def _write_tensors(writer: Any, model: Any, outtype: str) -> None:
    import gguf
    import numpy as np
    import torch

    config = model.config
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    tensor_type = _types(outtype)[1]
    factors = _llama3_rope_factors(config)
    if factors is not None:
        writer.add_tensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", factors)
    state = model.state_dict()
    # llama.cpp reuses token_embd for a missing output.weight: left out only when the two really are one.
    tied = "lm_head.weight" in state and torch.equal(state["lm_head.weight"], state["model.embed_tokens.weight"])
    for hf_name, tensor in state.items():
        if hf_name == "lm_head.weight" and tied:
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise TunesmithError(
                f"tensor {hf_name} has no llama.cpp name: this checkpoint is not a plain Llama-family model",
                where="--format gguf",
                fix="export --format merged and convert it with llama.cpp's convert_hf_to_gguf.py",
            )
        data = tensor.detach().to(torch.float32).cpu().numpy()
        if hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            data = _permute(data, heads)
        elif hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            data = _permute(data, kv_heads)
        if data.ndim < 2:  # norms and biases: float32, as llama.cpp computes them
            writer.add_tensor(name, data.astype(np.float32))
        elif tensor_type == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(name, data)
        elif tensor_type == gguf.GGMLQuantizationType.F16 or (
            tensor_type == gguf.GGMLQuantizationType.Q8_0 and data.shape[-1] % 32
        ):
            writer.add_tensor(name, data.astype(np.float16))
        else:  # bf16 and q8_0: packed by gguf's own quantiser, as convert_hf_to_gguf.py does
            writer.add_tensor(name, gguf.quants.quantize(data, tensor_type), raw_dtype=tensor_type)
