"""Frozen layers: train only the top N transformer blocks, the final norm and the output head.

The lower blocks hold general features that transfer; the top ones specialise (Yosinski et al. 2014,
"How transferable are features in deep neural networks?"). With tied input/output embeddings (SmolLM2,
many small LMs) training the head also trains the input embeddings: they are one tensor.
Encoder-decoder models (BART, T5, BERT2BERT) have two stacks; the top N blocks of each train, so the
source representation the decoder attends to adapts as well as the decoder.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Literal

from pydantic import Field

from tunesmith.errors import TunesmithError
from tunesmith.methods.base import Footprint, MethodSettings, Recommendable


class Config(MethodSettings):
    name: Literal["freeze"] = Field(
        "freeze", description="freeze: train only the top blocks, the final norm and the head"
    )
    freeze_train_top: int = Field(
        2,
        ge=0,
        description="train only the top N transformer blocks plus final norm and head; more adapts more and costs memory per block",
    )
    freeze_trainable_modules: list[str] = Field(
        default_factory=list,
        description="parameter name patterns (fnmatch) to train instead of the top blocks, e.g. ['*.mlp.*', 'lm_head*']",
    )


summary = "train only the top N blocks, the final norm and the head: full-weight updates where they matter most, a fraction of the memory"
# No diffusion UNet: it has no single stack of blocks with a head after it.
model_kinds = frozenset({"causal-lm", "classifier", "tagger", "seq2seq", "vision"})
saves_adapter = False
footprint = Footprint(trains_base=True, efficiency=1.0, half_base_on_gpu=False)
recommend = Recommendable(
    quality=1.25,
    learning_rate=5e-5,
    automatic=False,  # how many blocks to train is the user's judgement
    trade_off="training the top blocks keeps the general features of the lower ones (Yosinski et al. 2014) at "
    "a fraction of full fine-tuning's gradient and optimizer memory",
)


def trained_blocks(shape: Any, cfg: Config) -> int:
    return min(cfg.freeze_train_top, int(shape.layers))


def trainable_parameters(shape: Any, cfg: Config) -> int:
    return int(min(shape.parameters, trained_blocks(shape, cfg) * shape.block_parameters + shape.head_parameters))


def search_space(cfg: Config) -> dict[str, dict[str, Any]]:
    return {
        "train.learning_rate": {"type": "log-float", "low": 1e-5, "high": 1e-4},
        "train.weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
        "method.freeze_train_top": {"type": "int", "low": 1, "high": 4},
    }


# Names HF models give the norm after the last block (Llama/Mistral, Falcon/Phi, GPT-2, DBRX).
FINAL_NORM_NAMES = ("norm", "final_layernorm", "ln_f", "norm_f")
# Task heads after the block stack: classifiers (BERT/RoBERTa/DeBERTa `classifier`, decoder LLMs
# `score`, DistilBERT `pre_classifier`) and BERT's pooler, which feeds the classifier; BERT's LM head
# `cls.predictions` (transform + bias), the output layer of BERT decoders (BERT2BERT).
HEAD_NAMES = ("classifier", "score", "pre_classifier", "pooler", "qa_outputs", "predictions")


def load_kwargs(cfg: Config) -> dict[str, Any]:
    return {}


def transformer_blocks(model: Any) -> tuple[str, Any]:
    """The ModuleList holding the most parameters: the stack of transformer blocks in every HF decoder/
    encoder. Not the longest list: a 2-block T5 stack is shorter than the 3-entry `layer` list inside each
    of its decoder blocks, and an MoE layer may list more experts than the model has blocks; the stack
    contains those inner lists, so it always holds more parameters."""
    import torch

    best: tuple[str, Any] = ("", None)
    most = -1
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList):
            size = sum(p.numel() for p in module.parameters())
            if size > most:
                best, most = (name, module), size
    if best[1] is None:
        raise TunesmithError(
            f"{type(model).__name__} has no stack of blocks to freeze",
            where="method.freeze_train_top",
            fix="list the modules to train in method.freeze_trainable_modules, or use an adapter method (method.name)",
        )
    return best


def block_stacks(model: Any) -> list[tuple[str, Any]]:
    """The block stacks to cut: the encoder's and the decoder's for encoder-decoder models (the largest
    ModuleList alone would be one of the two), else the model's one stack. Names are the model's."""
    if not getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        return [transformer_blocks(model)]
    names = {id(module): name for name, module in model.named_modules()}
    stacks = []
    for part in (model.get_encoder(), model.get_decoder()):
        inner, blocks = transformer_blocks(part)
        stacks.append((".".join(n for n in (names[id(part)], inner) if n), blocks))
    return stacks


def apply(model: Any, method_cfg: Config, gradient_checkpointing: bool = False, task_type: str | None = None) -> Any:
    for param in model.parameters():
        param.requires_grad_(False)
    names = dict(model.named_parameters())
    if method_cfg.freeze_trainable_modules:
        chosen = [n for n in names if any(fnmatch.fnmatch(n, p) for p in method_cfg.freeze_trainable_modules)]
        if not chosen:
            raise TunesmithError(
                f"no parameter matches {method_cfg.freeze_trainable_modules}",
                where="method.freeze_trainable_modules",
                fix=f"use fnmatch patterns over names such as {list(names)[:3]}",
            )
    else:
        stacks = block_stacks(model)
        top = method_cfg.freeze_train_top
        fewest = min(len(blocks) for _, blocks in stacks)
        if top > fewest:
            raise TunesmithError(
                f"the model has {fewest} blocks"
                + (" per stack" if len(stacks) > 1 else "")
                + f", fewer than freeze_train_top={top}",
                where="method.freeze_train_top",
                fix=f"use a value from 0 to {fewest}, or method.name: full to train everything",
            )
        chosen = [
            n
            for n in names
            for prefix, blocks in stacks
            if any(n.startswith(f"{prefix}.{i}.") for i in range(len(blocks) - top, len(blocks)))
        ]
        # The final norm and the head sit after the block stack and map its output to the task.
        head = model.get_output_embeddings()
        head_ids = {id(p) for p in head.parameters()} if head is not None else set()
        for name, param in names.items():
            if any(name.startswith(f"{prefix}.") for prefix, _ in stacks):
                continue
            module_name = name.rsplit(".", 1)[0]
            is_final_norm = module_name.endswith(FINAL_NORM_NAMES)
            is_task_head = any(part in HEAD_NAMES for part in module_name.split("."))
            if id(param) in head_ids or is_final_norm or is_task_head:
                chosen.append(name)
    for name in chosen:
        names[name].requires_grad_(True)
    if gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return model
