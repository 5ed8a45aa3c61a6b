"""Tasks: what a record becomes, which model class learns it, how it is scored. One registry line each.

A task module provides:
  model_class() -> the transformers Auto class to load
  peft_task_type: str
  encode(examples, tokenizer, config) -> list of encoded examples (input_ids, labels, where)
  collate(encoded, pad_id) -> dict of tensors
  count_targets(batch) -> loss-bearing targets in a batch, before the forward pass
  loss_sum(model, batch) -> (summed loss, number of loss-bearing targets)
  evaluate_test(model, tokenizer, examples, config) -> (metrics, per-example outputs)
The training loop only calls these; it knows nothing task-specific.
"""

from __future__ import annotations

from tunesmith.tasks import chat

TASKS = {
    "chat": chat,
}


def get_task(name: str):
    return TASKS[name]
