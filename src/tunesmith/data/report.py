"""The data report `tunesmith validate` prints: what training will actually see."""

from __future__ import annotations

from tunesmith.data.split import find_duplicates


def _percentiles(values: list[int], points=(50, 90, 99, 100)) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    picks = [ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))] for p in points]
    return "  ".join(f"p{p} {v}" for p, v in zip(points, picks))


def _empty_turns(examples) -> int:
    """Chat turns or texts that are empty or whitespace."""
    count = 0
    for example in examples:
        messages = getattr(example, "messages", None)
        if messages is not None:
            count += sum(1 for m in messages if not m["content"].strip())
        elif hasattr(example, "text"):  # examples of other shapes (source/target, images) are checked by their task
            count += not (example.text or "").strip()
    return count


def data_report(config, resolved, tokenizer, splits, encoded, task) -> str:
    """`task` is the run's task module (`tasks.get_task(config.task)`), passed in by the caller: its
    `describe` shows the first training example as the model will see it (data sits below tasks)."""
    lines = [
        f"model: {config.model.name} -> {resolved.path} ({resolved.source})",
        f"task: {config.task}; format: {splits.format}; max_length: {config.data.max_length}"
        + (f"; loss on: {config.data.train_on}" if getattr(task, "packable", False) else ""),  # conversations
        "",
        f"{'split':<11}{'records':>8}{'truncated':>11}{'duplicates':>12}{'empty turns':>13}   tokens per record",
    ]
    for name, examples in splits.items():
        enc = encoded[name]
        truncated = sum(e.truncated for e in enc)
        lengths = [e.full_length for e in enc]
        lines.append(
            f"{name:<11}{len(examples):>8}{truncated:>11}{find_duplicates(examples):>12}"
            f"{_empty_turns(examples):>13}   {_percentiles(lengths)}"
        )
    if splits.bad is not None and splits.bad.count:
        lines += ["", f"skipped bad records (data.on_bad_record: skip): {splits.bad.count}; the first:"]
        lines += [f"  {where}" for where in splits.bad.first]
    trained = [e.trained_tokens for e in encoded["train"] if hasattr(e, "trained_tokens")]
    if trained:
        lines += ["", f"loss-bearing tokens per training record: {_percentiles(trained)}; total {sum(trained):,}"]
    if encoded["train"]:
        lines += ["", task.describe(encoded["train"][0], tokenizer)]
    return "\n".join(lines)
