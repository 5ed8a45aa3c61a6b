"""How many tokens a model can read at once, from its config, and the check of `data.max_length` against it.

A learned position table (BERT, GPT-2, RoBERTa, BART) has one row per position: a longer input indexes
past it and fails deep inside the forward pass with an index error (or a CUDA assert). Rotary models
(Llama, Mistral, Qwen) run past `max_position_embeddings` but were never trained there, so quality falls
apart without a word. Both are caught here, before any data is tokenised, with the limit and the fix.

Reads plain config attributes only (a transformers config or a config.json dict), so the planner can
use it without torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunesmith.errors import TunesmithError

# The config fields that hold the number of positions, in the order families name them: most
# (Llama, BERT, BART, ...) max_position_embeddings; GPT-2, GPT-J and CodeGen n_positions (older
# GPT-2 configs n_ctx); MPT max_seq_len; ChatGLM and Qwen (v1) seq_length.
POSITION_FIELDS = ("max_position_embeddings", "n_positions", "max_seq_len", "n_ctx", "seq_length")
# RoBERTa-style embeddings number positions from padding_idx + 1 (transformers'
# create_position_ids_from_input_ids), so a table of 514 rows with pad id 1 holds 512 tokens.
POSITIONS_AFTER_PADDING = ("roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "data2vec-text", "xmod")
# Relative position buckets (T5 and its descendants) have no table to overflow.
RELATIVE_POSITIONS = ("t5", "mt5", "umt5", "longt5", "switch_transformers")
# transformers sets tokenizer.model_max_length to int(1e30) when the tokenizer files do not say; any
# value this large is that placeholder, not a limit.
UNSET_TOKENIZER_LENGTH = 10**7


@dataclass(frozen=True)
class PositionLimit:
    limit: int  # the most tokens one input may have
    source: str  # where the number comes from, for the message: "max_position_embeddings in its config"


def _get(config: Any, key: str) -> Any:
    return config.get(key) if isinstance(config, dict) else getattr(config, key, None)


def _from_config(config: Any) -> PositionLimit | None:
    model_type = _get(config, "model_type") or ""
    if model_type in RELATIVE_POSITIONS:
        return None
    # An encoder-decoder pair (BERT2BERT) reads data.max_length tokens with its encoder; a multimodal
    # model reads text with its text model.
    for part in ("encoder", "text_config"):
        inner = _get(config, part)
        if inner is not None and not isinstance(inner, (int, str)):
            return _from_config(inner)
    for field in POSITION_FIELDS:
        value = _get(config, field)
        if isinstance(value, int) and value > 0:
            if model_type in POSITIONS_AFTER_PADDING:
                offset = (_get(config, "pad_token_id") or 0) + 1
                return PositionLimit(
                    value - offset,
                    f"{field} {value} in its config, less {offset} ({model_type} numbers positions after its padding id)",
                )
            return PositionLimit(value, f"{field} in its config")
    return None


def position_limit(model_config: Any, tokenizer: Any = None) -> PositionLimit | None:
    """The most tokens the model reads in one input, or None when neither its config nor its tokenizer
    says (relative positions, vision models). The config's position table decides; the tokenizer's
    `model_max_length` stands in only when the config names none and the tokenizer sets a real value."""
    found = _from_config(model_config)
    if found is not None:
        return found
    if (_get(model_config, "model_type") or "") in RELATIVE_POSITIONS:
        # No table to overflow: T5's tokenizer says 512 (what it was pre-trained on), not a limit.
        return None
    length = getattr(tokenizer, "model_max_length", None)
    if isinstance(length, int) and 0 < length < UNSET_TOKENIZER_LENGTH:
        return PositionLimit(length, "model_max_length of its tokenizer")
    return None


def check_max_length(
    max_length: int, model_config: Any, where: str = "data.max_length", tokenizer: Any = None, name: str | None = None
) -> None:
    """Refuse a max length the model cannot read, naming its limit and the setting that fits."""
    name = name or _get(model_config, "_name_or_path") or _get(model_config, "model_type") or "the model"
    _refuse_beyond(max_length, position_limit(model_config, tokenizer), where, name)


def _refuse_beyond(max_length: int, found: PositionLimit | None, where: str, name: str) -> None:
    if found is None or max_length <= found.limit:
        return
    raise TunesmithError(
        f"{max_length} tokens is longer than {name} can read: {found.limit} positions ({found.source})",
        where=where,
        fix=f"{where}: {found.limit} (or less): the model has no positions beyond it",
    )


def _read_model_config(resolved: Any, model_cfg: Any) -> Any | None:
    """The transformers config of the model a run loads, or None where there is none to read (a diffusers
    pipeline folder) or it cannot be read: loading the model then reports that with its own fix."""
    from transformers import AutoConfig

    kwargs: dict[str, Any] = {"trust_remote_code": model_cfg.trust_remote_code}
    if resolved.gguf_file:
        kwargs["gguf_file"] = resolved.gguf_file
    if model_cfg.revision and resolved.source == "hub":
        kwargs["revision"] = model_cfg.revision
    try:
        return AutoConfig.from_pretrained(resolved.path, **kwargs)
    except (OSError, ValueError, KeyError):
        return None


def check_run_lengths(config: Any, resolved: Any, tokenizer: Any = None) -> None:
    """A run's `data.max_length` (and, for tasks that read it, `data.max_target_length` against the
    decoder) checked against the model it loads, before any data is tokenised. A length the user wrote
    beyond the model's limit is refused; the default (1024), which they did not choose, is lowered to the
    limit with a note instead (MiniLM reads 512). Image tasks have no token lengths."""
    from tunesmith.taskcards import get_card

    card = get_card(config.task)
    if card.images:
        return
    model_config = _read_model_config(resolved, config.model)
    if model_config is None:
        return
    limits = {"max_length": position_limit(model_config, tokenizer)}
    if "max_target_length" in card.data_fields:
        # BERT2BERT's decoder has its own table; BART's one table serves both. The tokenizer's length is
        # the source's, so it is no fallback here.
        limits["max_target_length"] = position_limit(getattr(model_config, "decoder", None) or model_config)
    for field, found in limits.items():
        value = getattr(config.data, field)
        if found is not None and value > found.limit and field not in config.data.model_fields_set:
            print(
                f"note: data.{field} lowered from the default {value} to {found.limit}, the most "
                f"{config.model.name} reads ({found.source})"
            )
            setattr(config.data, field, found.limit)
        else:
            _refuse_beyond(value, found, f"data.{field}", config.model.name)
