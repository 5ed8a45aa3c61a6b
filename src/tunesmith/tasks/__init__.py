"""Tasks: what a record becomes, which model class learns it, how it is scored. One module per task; its
registration line and card (name, model kind, metrics, init settings) are in tunesmith/taskcards.py.

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

Optional hooks (the pipeline looks them up with getattr; tasks without them take the default path):
  packable = True   data.packing may pack its encoded examples (input_ids, labels) into rows
      (data/packing.py); collate must then accept PackedRow lists and loss_sum their position_ids
  read(source, data_cfg, split, bad=None) -> records   the task's own reader (image folders, IDX files, prompt
      lists); a record it cannot use goes to `bad` (data/bad_records.py: raised, or skipped and counted).
      Without it, `predict` reads its input with data/prompts.py's read_prompt_records (also .txt prompts)
  read_prompts(source, data_cfg, meta, bad=None) -> records   what `predict` reads where it differs from
      `read`; `meta` is the run's task.json (token classification: a .txt of sentences, one a line, or a
      CoNLL file, told apart by the run's tag names)
  normalise_prompts(records, data_cfg) -> (examples, format name)   what `predict` reads, where it differs
      from `normalise`: records without the answer a training record needs (chat: conversations ending in
      a user turn, data/prompts.py; text classification: texts without labels). Without it, `normalise`
  load_model(config, resolved, meta, weights=None) -> model   for models that are not one transformers
      Auto class (a diffusers pipeline): the base with config.method applied (weights=None), or a finished
      run's model from its weights folder; replaces load_base_model + method.apply + PeftModel loading.
      The model is an nn.Module whose forward loss_sum calls, with save_pretrained(folder); adapter
      methods also give disable_adapter() (a context manager) and merge_and_unload()
  before_training(model, encoded, config, meta, autocast) -> note | None   one-time work on every process once
      the model is built, before anything calls loss_sum (batch-size probe, base scores, training): preference
      tuning's reference model (a frozen copy, or log-probabilities cached on the encoded examples)
  step_metrics(training) -> dict        the task's own means since the last call (preference: rewards and
      margins), logged by the loop beside the loss and, prefixed eval_, beside the validation loss
  findings(encoded, config) -> lines    warnings for `tunesmith validate` beyond the counts (answers cut short)
  before_fit(model, processor, config, meta)   one-time work that needs the loaded base model, before the
      base scores and training (text-to-image: generating the class images of prior preservation)
  samples(model, processor, config, meta, folder, label) -> paths   outputs of fixed inputs written under
      folder (plots/) for the report: label "base" before training (adapter off), "tuned" after
  predict_to(model, processor, examples, config, meta, output) -> count   predictions that are files
      (images): written into the folder `output` with an index, instead of predict's JSONL
"""

from __future__ import annotations

import importlib
from types import ModuleType

from tunesmith.taskcards import get_card


def get_task(name: str) -> ModuleType:
    """The module of a registered task (tunesmith/taskcards.py), imported on first use: a run pays only for
    its own task's dependencies (diffusers for text-to-image, seqeval for token classification)."""
    return importlib.import_module(f"tunesmith.tasks.{get_card(name).module}")
