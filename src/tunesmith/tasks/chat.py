"""Chat / instruction supervised fine-tuning of a causal language model."""

from __future__ import annotations

import torch

from tunesmith.data.chat_template import (
    IGNORE_INDEX,
    EncodedExample,
    encode_chat,
    render,
    show_mask,
    stop_token_ids,
    template_for,
)
from tunesmith.data.formats import Example, detect_format
from tunesmith.data.formats import normalise as normalise_format
from tunesmith.data.packing import PackedRow, attention_implementation, collate_packed, varlen_layout
from tunesmith.data.prompts import Prompt, chat_prompts
from tunesmith.evaluate.metrics import exact_match, rouge_l
from tunesmith.tasks.progress import GenerationProgress
from tunesmith.train import padding_free
from tunesmith.train.loss import causal_lm_loss_sum, count_trained_tokens

peft_task_type = "CAUSAL_LM"
target_unit = "tok"  # what count_targets counts, for the progress bar: trained (loss-bearing) tokens
packable = True  # data.packing: encoded examples may be packed into rows (data/packing.py)


def normalise(records: list, data_cfg) -> tuple[list[Example], str]:
    """Chat/instruction records (and plain text) in any format of `data/formats.py`."""
    fmt = detect_format(records, data_cfg.columns) if data_cfg.format == "auto" else data_cfg.format
    return normalise_format(records, fmt, data_cfg.columns, data_cfg.system_prompt), fmt


def normalise_prompts(records: list, data_cfg) -> tuple[list[Prompt], str]:
    """What `predict` reads: conversations to answer, with or without their answers (data/prompts.py)."""
    return chat_prompts(records, data_cfg)


def to_record(example: Example) -> dict:
    """The canonical record of an example (how the run saves its test split)."""
    return {"messages": example.messages} if example.messages is not None else {"text": example.text}


def setup(splits, config) -> dict:
    """Nothing to learn from the data before loading the model (classification learns its labels here)."""
    return {}


def model_kwargs(meta: dict) -> dict:
    return {}


stratify_key = None  # chat splits are plain random (see tasks/__init__.py)


def baseline(splits, config, meta: dict) -> dict | None:
    return None  # the base model itself is the baseline


def plots(rows: list[dict], meta: dict, folder) -> list[str]:
    return []


def describe(encoded: EncodedExample, tokenizer) -> str:
    """One encoded example as the model sees it, for `tunesmith validate`."""
    return "first training record as the model sees it ([[...]] carries loss):\n\n" + show_mask(encoded, tokenizer)


def load_processor(resolved, model_cfg):
    from tunesmith.models.load import load_tokenizer

    return load_tokenizer(resolved, model_cfg)


def model_class():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM


def encode(examples: list[Example], tokenizer, config, meta: dict | None = None) -> list[EncodedExample]:
    stop_ids = stop_token_ids(tokenizer)
    return [
        encode_chat(
            example,
            tokenizer,
            max_length=config.data.max_length,
            train_on=config.data.train_on,
            template=config.data.chat_template,
            stop_ids=stop_ids,
        )
        for example in examples
    ]


def collate(batch: list[EncodedExample] | list[PackedRow], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example of the batch (dynamic padding); packed rows (data.packing) get
    position ids restarting per example and no attention mask (data/packing.py)."""
    if isinstance(batch[0], PackedRow):
        return collate_packed(batch, pad_id)
    width = max(len(e.input_ids) for e in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, example in enumerate(batch):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def count_targets(batch: dict[str, torch.Tensor]) -> int:
    """Loss-bearing positions of a batch, known before the forward pass (for loss normalisation)."""
    return count_trained_tokens(batch["labels"])


def loss_sum(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    if "position_ids" in batch:  # packed rows
        batch = varlen_layout(batch, attention_implementation(model))
        return causal_lm_loss_sum(model, batch["input_ids"], None, batch["labels"], batch["position_ids"])
    if padding_free.is_enabled(model):  # train.padding_free: the same examples, without the padding
        row = padding_free.flatten(batch)
        return causal_lm_loss_sum(model, row["input_ids"], None, row["labels"], row["position_ids"])
    return causal_lm_loss_sum(model, batch["input_ids"], batch["attention_mask"], batch["labels"])


# ---------------------------------------------------------------------------------------------------
# Generation and test metrics


def prompt_and_reference(example: Example) -> tuple[list[dict], str]:
    """The conversation up to its last assistant turn, and that turn's text as the reference."""
    messages = example.messages
    if messages is None:
        raise TypeError(f"{example.where}: a plain-text example has no conversation to answer")
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last], messages[last]["content"]


def render_prompts(tokenizer, conversations: list[list[dict]], chat_template: str | None = None) -> list[str]:
    """Each conversation as the model sees it when it answers: the run's chat template (data.chat_template,
    else the tokenizer's, else the fallback) with the generation prompt."""
    template = template_for(tokenizer, chat_template)
    return [render(tokenizer, conv, template, add_generation_prompt=True) for conv in conversations]


@torch.no_grad()
def generate(
    model,
    tokenizer,
    conversations: list[list[dict]],
    *,
    max_new_tokens: int,
    batch_size: int,
    chat_template: str | None = None,
    progress: bool = False,
) -> list[str]:
    """Greedy answers, batched with left padding so every prompt ends where generation starts.
    `progress` prints a line per batch to stderr (eval, predict; not the interactive chat)."""
    texts = render_prompts(tokenizer, conversations, chat_template)
    model.eval()
    answers: list[str] = []
    shown = GenerationProgress(len(texts), enabled=progress)
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        new_tokens, _ = generate_tokens(model, tokenizer, chunk, max_new_tokens)
        answers += [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
        shown.advance(len(chunk))
    return answers


def generate_tokens(
    model, tokenizer, texts: list[str], max_new_tokens: int, **settings
) -> tuple[torch.Tensor, torch.Tensor]:
    """The tokens generated after each rendered prompt of `texts` ([rows, new tokens]; after the first stop
    token only padding) and the prompts' attention mask. One left-padded batch, so every prompt ends where
    generation starts; greedy, stopping at the run's stop tokens, unless `settings` (generate's keyword
    arguments: do_sample, temperature, num_return_sequences, streamer, ...) say otherwise. `generate` and
    the server (serve/generation.py) both decode through here, so their greedy answers are the same."""
    previous_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = previous_side
    inputs = inputs.to(model.device)
    defaults = {
        "do_sample": False,
        "use_cache": True,  # training turns the cache off in the config; generation needs it
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": sorted(stop_token_ids(tokenizer, model)) or None,
    }
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, **(defaults | settings))
    return output[:, inputs["input_ids"].shape[1] :], inputs["attention_mask"]


def predict(
    model, tokenizer, prompts: list[Prompt], config, meta: dict | None = None, max_new_tokens: int | None = None
) -> list[dict]:
    """Answer each prompt (`normalise_prompts`): its conversation plus a generated assistant turn, and the
    record's own answer as `reference` where it had one."""
    answers = generate(
        model,
        tokenizer,
        [p.messages for p in prompts],
        max_new_tokens=max_new_tokens or config.eval.max_new_tokens,
        batch_size=config.eval.batch_size,
        chat_template=config.data.chat_template,
        progress=True,
    )
    rows = []
    for prompt, answer in zip(prompts, answers):
        row: dict = {"messages": prompt.messages + [{"role": "assistant", "content": answer}]}
        if prompt.reference is not None:
            row["reference"] = prompt.reference
        rows.append(row)
    return rows


def evaluate_test(
    model, tokenizer, examples: list[Example], config, meta: dict | None = None
) -> tuple[dict, list[dict]]:
    """ROUGE-L and exact match of greedy answers against the reference answers of the test split."""
    chats = [e for e in examples if e.messages is not None]
    if config.eval.max_samples is not None:
        chats = chats[: config.eval.max_samples]
    if not chats:
        return {}, []
    prompts, references = zip(*(prompt_and_reference(e) for e in chats))
    predictions = generate(
        model,
        tokenizer,
        list(prompts),
        max_new_tokens=config.eval.max_new_tokens,
        batch_size=config.eval.batch_size,
        chat_template=config.data.chat_template,
        progress=True,
    )
    metrics = {
        "rougeL": rouge_l(predictions, list(references)),
        "exact_match": exact_match(predictions, list(references)),
        "test_samples": len(chats),
    }
    rows = [
        {"where": e.where, "prompt": p[-1]["content"] if p else "", "reference": r, "prediction": y}
        for e, p, r, y in zip(chats, prompts, references, predictions)
    ]
    return metrics, rows
