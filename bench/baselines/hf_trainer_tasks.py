"""The plain Hugging Face `Trainer` baseline of `python -m bench.autotrain`: what a transformers user writes.

    python -m bench.baselines.hf_trainer_tasks SPEC.json

One function per task, each the recipe of the transformers docs with `TrainingArguments` left at its
defaults (learning rate 5e-5, 3 epochs, per-device batch 8, linear decay without warmup, AdamW, no
weight decay, fp32, seed 42), full fine-tuning, no validation split (the default `eval_strategy` is
"no"). The only choices made are the ones the docs make too: truncation at the example config's
`data.max_length` (every record of these data sets fits under it), labels from the training split, the
first sub-token of each word tagged (the token-classification guide), and for chat every token of
the conversation as the causal LM target (the plain recipe; `DataCollatorForSeq2Seq` pads labels with
-100, as in `hf_default.py`).

It imports nothing of tunesmith (the result says `imported_tunesmith`). The driver writes the train split
(the records tunesmith trains on, in its canonical columns) and the spec; the trained model and
tokenizer are saved to `spec.output_dir`, where the driver scores them with tunesmith's own test scoring,
as it scores every other runner, so predictions, metric code and test records are the same for all.
"""

from __future__ import annotations

import sys
import time

from bench.baselines import common

# Not the defaults, and why they change nothing that is measured: checkpoints (every 500 steps by
# default, more than any of these runs has) would only cost time, the final model is saved once below;
# the progress bar is replaced by a loss line every 50 steps, for the driver's log.
QUIET = dict(save_strategy="no", report_to="none", disable_tqdm=True, logging_steps=50)


def _arguments(spec: common.Spec):
    from transformers import TrainingArguments

    return TrainingArguments(output_dir=spec.output_dir, seed=spec.seed, **QUIET)


def text_classification(spec: common.Spec):
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer

    rows = common.read_jsonl(spec.train_file)
    names = sorted({row["label"] for row in rows})
    label2id = {name: i for i, name in enumerate(names)}
    tokenizer = AutoTokenizer.from_pretrained(spec.model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(
        spec.model_dir, num_labels=len(names), id2label=dict(enumerate(names)), label2id=label2id
    )

    def tokenize(row):
        return dict(tokenizer(row["text"], truncation=True, max_length=spec.max_length), labels=label2id[row["label"]])

    train = Dataset.from_list(rows).map(tokenize, remove_columns=["text", "label"])
    # The tokenizer as processing_class: the Trainer then pads each batch with DataCollatorWithPadding.
    return Trainer(model=model, args=_arguments(spec), train_dataset=train, processing_class=tokenizer)


def token_classification(spec: common.Spec):
    from datasets import Dataset
    from transformers import AutoModelForTokenClassification, AutoTokenizer, DataCollatorForTokenClassification, Trainer

    rows = common.read_jsonl(spec.train_file)
    names = sorted({tag for row in rows for tag in row["tags"]})
    label2id = {name: i for i, name in enumerate(names)}
    tokenizer = AutoTokenizer.from_pretrained(spec.model_dir)
    model = AutoModelForTokenClassification.from_pretrained(
        spec.model_dir, num_labels=len(names), id2label=dict(enumerate(names)), label2id=label2id
    )

    def tokenize_and_align(row):
        # The token-classification guide: each word's first sub-token carries its tag, the rest and the
        # special tokens -100.
        encoded = tokenizer(row["tokens"], is_split_into_words=True, truncation=True, max_length=spec.max_length)
        labels, previous = [], None
        for word in encoded.word_ids():
            labels.append(-100 if word is None or word == previous else label2id[row["tags"][word]])
            previous = word
        return dict(encoded, labels=labels)

    train = Dataset.from_list(rows).map(tokenize_and_align, remove_columns=["tokens", "tags"])
    collator = DataCollatorForTokenClassification(tokenizer)
    return Trainer(
        model=model, args=_arguments(spec), train_dataset=train, data_collator=collator, processing_class=tokenizer
    )


def chat(spec: common.Spec):
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer

    tokenizer = AutoTokenizer.from_pretrained(spec.model_dir)
    model = AutoModelForCausalLM.from_pretrained(spec.model_dir)

    train = common.plain_chat_dataset(tokenizer, spec)
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True)
    return Trainer(
        model=model, args=_arguments(spec), train_dataset=train, data_collator=collator, processing_class=tokenizer
    )


TASKS = {"text-classification": text_classification, "token-classification": token_classification, "chat": chat}


def run(spec: common.Spec) -> dict:
    from transformers import set_seed

    # Before the model is built: the new classification head is initialised from this seed (the Trainer
    # seeds again only after the model exists), as the transformers example scripts do.
    set_seed(spec.seed)
    trainer = TASKS[spec.task](spec)
    started, cpu_started = time.perf_counter(), time.process_time()
    output = trainer.train()
    train_seconds, train_cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    peak = common.peak_memory()
    trainer.save_model(spec.output_dir)  # the model with its tokenizer (processing_class), for the driver's scoring
    return dict(
        peak,
        train_seconds=train_seconds,
        train_cpu_seconds=train_cpu_seconds,
        steps=trainer.state.global_step,
        train_loss=output.training_loss,
        device=common.device_name(),
        output_dir=spec.output_dir,
        imported_tunesmith="tunesmith" in sys.modules,
    )


if __name__ == "__main__":
    common.emit(run(common.Spec.read(sys.argv[1])))
