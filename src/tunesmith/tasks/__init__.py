"""Tasks: what a record becomes, which model class learns it, how it is scored. One registry line each.

A task module provides:
  load_processor(resolved, model_cfg) -> tokenizer (text) or image processor; saved beside the weights
  model_class() -> the transformers Auto class to load
  peft_task_type: str
  target_unit: str                      what count_targets counts ("tok", "ex"), for the progress display
  normalise(records, data_cfg) -> (examples, format name)   records of any reader -> the task's examples
  to_record(example) -> dict            the canonical record (how a run saves its test split)
  stratify_key: (example -> hashable) or None   splits keep each key's share; None: plain random split
  setup(splits, config) -> meta         what is learned from the data before loading (label names)
  model_kwargs(meta) -> dict            from_pretrained extras (the new head's size and label names)
  encode(examples, tokenizer, config, meta) -> encoded examples
  collate(encoded, pad_id) -> dict of tensors
  count_targets(batch) -> loss-bearing targets in a batch, before the forward pass
  loss_sum(model, batch) -> (summed loss, number of loss-bearing targets)
  evaluate_test(model, tokenizer, examples, config, meta) -> (metrics, per-example rows)
  predict(model, tokenizer, examples, config, meta) -> one output dict per example
  baseline(splits, config, meta) -> metrics | None   a non-neural reference on the same split
  plots(rows, meta, folder) -> paths    task plots of the tuned test predictions
  describe(encoded, tokenizer) -> str   one example as the model sees it (`tunesmith validate`)
The training loop only calls these; it knows nothing task-specific.
"""

from __future__ import annotations

import importlib

# Task name -> module. Imported on first use, so a run pays only for its own task's dependencies
# (diffusers for text-to-image, seqeval for token classification).
TASKS = {
    "chat": "chat",
    "continued-pretraining": "continued_pretraining",
    "text-classification": "text_classification",
    "token-classification": "token_classification",
    "summarization": "summarization",
    "image-classification": "image_classification",
    "text-to-image": "text_to_image",
}


def get_task(name: str):
    return importlib.import_module(f"tunesmith.tasks.{TASKS[name]}")
