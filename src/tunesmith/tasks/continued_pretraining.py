"""Continued pre-training: adapt a causal LM to a domain's raw text (legal, medical, a code base).

Records are plain text (`text` column, `data.columns` maps another name). Each split is tokenised,
documents are joined with the EOS token and the stream is cut into blocks of `data.max_length`
tokens, every token learned: the packing of GPT-style pre-training, so no compute goes to padding
(attention crosses document boundaries inside a block, as in pre-training itself). The score is
perplexity on the test split, base vs tuned.
"""

from __future__ import annotations

import math

import torch

from tunesmith.data.chat_template import EncodedExample
from tunesmith.data.formats import Example
from tunesmith.data.prompts import plain_prompts
from tunesmith.errors import TunesmithError
from tunesmith.tasks import chat
from tunesmith.tasks.progress import GenerationProgress

peft_task_type = "CAUSAL_LM"
# What `data.packing` is told for this task: it needs no packing option (pipeline.pack_splits).
packing_note = " (it always packs its text into blocks of data.max_length tokens)"
target_unit = "tok"

# The causal-LM pieces are the chat task's: same model class, batches and token-normalised loss.
load_processor = chat.load_processor
model_class = chat.model_class
collate = chat.collate
count_targets = chat.count_targets
loss_sum = chat.loss_sum
model_kwargs = chat.model_kwargs
stratify_key = chat.stratify_key
baseline = chat.baseline
plots = chat.plots


def normalise(records: list, data_cfg) -> tuple[list[Example], str]:
    if data_cfg.format not in ("auto", "text"):
        raise TunesmithError(
            f"continued pre-training reads plain text, not data.format={data_cfg.format!r}",
            where="data.format",
            fix="set data.format: text (or auto) and give a text column",
        )
    examples, fmt = chat.normalise(records, data_cfg.model_copy(update={"format": "text"}))
    return examples, fmt


def normalise_prompts(records: list, data_cfg) -> tuple[list[Example], str]:
    """What `predict` continues: a `text` or `prompt` column, or the lines of a .txt file (data/prompts.py)."""
    return plain_prompts(records, data_cfg)


def to_record(example: Example) -> dict:
    return {"text": example.text}


def setup(splits, config) -> dict:
    return {}


def encode(examples: list[Example], tokenizer, config, meta: dict | None = None) -> list[EncodedExample]:
    """Pack the split's documents into full blocks of data.max_length tokens (the tail block may be shorter)."""
    block = config.data.max_length
    stream: list[int] = []
    for example in examples:
        stream += tokenizer(example.text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if not examples:
        return []
    source = examples[0].where.rsplit(":", 1)[0]
    blocks = []
    for start in range(0, len(stream), block):
        ids = stream[start : start + block]
        if len(ids) < 2:
            continue  # nothing to predict
        blocks.append(
            EncodedExample(
                ids, list(ids), f"{source}: tokens {start}-{start + len(ids)}", False, len(ids), [(0, len(ids))]
            )
        )
    return blocks


@torch.no_grad()
def evaluate_test(
    model, tokenizer, examples: list[Example], config, meta: dict | None = None
) -> tuple[dict, list[dict]]:
    """Perplexity of the packed test split: exp(mean token loss)."""
    blocks = encode(examples, tokenizer, config)
    if not blocks:
        return {}, []
    model.eval()
    total, tokens = 0.0, 0
    for start in range(0, len(blocks), config.eval.batch_size):
        batch = collate(blocks[start : start + config.eval.batch_size], tokenizer.pad_token_id)
        batch = {k: v.to(model.device) for k, v in batch.items()}
        loss, n = loss_sum(model, batch)
        total += float(loss)
        tokens += int(n)
    mean = total / max(tokens, 1)
    return {"test_loss": mean, "perplexity": math.exp(min(mean, 50.0)), "test_tokens": tokens}, []


@torch.no_grad()
def predict(
    model, tokenizer, examples: list[Example], config, meta: dict | None = None, max_new_tokens: int | None = None
) -> list[dict]:
    """Continue each text greedily."""
    model.eval()
    rows = []
    shown = GenerationProgress(len(examples), "continuations")
    for example in examples:
        inputs = tokenizer(example.text, return_tensors="pt", add_special_tokens=False).to(model.device)
        output = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens or config.eval.max_new_tokens,
            do_sample=False,
            use_cache=True,
            pad_token_id=tokenizer.pad_token_id,
        )
        rows.append(
            {
                "text": example.text,
                "continuation": tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True),
            }
        )
        shown.advance(1)
    return rows


def describe(encoded: EncodedExample, tokenizer) -> str:
    return (
        f"first training record: a packed block of {len(encoded.input_ids)} tokens, all learned (first 200 shown):\n\n"
        + tokenizer.decode(encoded.input_ids[:200])
    )
