"""Frozen layers: train only the top N transformer blocks, the final norm and the output head.

The lower blocks hold general features that transfer; the top ones specialise (Yosinski et al. 2014,
"How transferable are features in deep neural networks?"). With tied input/output embeddings (SmolLM2,
many small LMs) training the head also trains the input embeddings: they are one tensor.
Encoder-decoder models (BART, T5, BERT2BERT) have two stacks; the top N blocks of each train, so the
source representation the decoder attends to adapts as well as the decoder.
"""

from __future__ import annotations

import fnmatch

import torch

from tunesmith.errors import TunesmithError

saves_adapter = False

# Names HF models give the norm after the last block (Llama/Mistral, Falcon/Phi, GPT-2, DBRX).
FINAL_NORM_NAMES = ("norm", "final_layernorm", "ln_f", "norm_f")
# Task heads after the block stack: classifiers (BERT/RoBERTa/DeBERTa `classifier`, decoder LLMs
# `score`, DistilBERT `pre_classifier`) and BERT's pooler, which feeds the classifier; BERT's LM head
# `cls.predictions` (transform + bias), the output layer of BERT decoders (BERT2BERT).
HEAD_NAMES = ("classifier", "score", "pre_classifier", "pooler", "qa_outputs", "predictions")


def load_kwargs(method_cfg) -> dict:
    return {}


def transformer_blocks(model) -> tuple[str, torch.nn.ModuleList]:
    """The ModuleList holding the most parameters: the stack of transformer blocks in every HF decoder/
    encoder. Not the longest list: a 2-block T5 stack is shorter than the 3-entry `layer` list inside each
    of its decoder blocks, and an MoE layer may list more experts than the model has blocks; the stack
    contains those inner lists, so it always holds more parameters."""
    best, most = ("", None), -1
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList):
            size = sum(p.numel() for p in module.parameters())
            if size > most:
                best, most = (name, module), size
    if best[1] is None:
        raise TunesmithError(
            f"{type(model).__name__} has no stack of blocks to freeze",
            where="method.freeze_train_top",
            fix="list the modules to train in method.freeze_trainable_modules, or use method.name: lora",
        )
    return best


def block_stacks(model) -> list[tuple[str, torch.nn.ModuleList]]:
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


def apply(model, method_cfg, gradient_checkpointing: bool = False):
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
                f"the model has {fewest} blocks" + (" per stack" if len(stacks) > 1 else "") + f", fewer than freeze_train_top={top}",
                where="method.freeze_train_top",
                fix=f"use a value from 0 to {fewest}, or method.name: full to train everything",
            )
        chosen = [n for n in names for prefix, blocks in stacks
                  if any(n.startswith(f"{prefix}.{i}.") for i in range(len(blocks) - top, len(blocks)))]
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
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return model
