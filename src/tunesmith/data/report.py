"""The data report `tunesmith validate` prints: what training will actually see."""

from __future__ import annotations

from tunesmith.data.split import find_repeats


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


def split_sources(splits) -> str:
    """Each split's records and the file they came from, its path absolute: which file a run used is
    never a guess (relative paths in a config are read from the config file's folder). For `validate`
    and the start of training."""
    lines = [f"{'split':<11}{'records':>8}   read from"]
    carved = [name for name, source in splits.sources.items() if source.carved]
    for name, examples in splits.items():
        source = splits.sources.get(name)
        if source is None:
            origin = "(none: its data.split share is 0)" if not examples else "-"
        elif source.carved:
            origin = f"{source.path} (carved out by data.split)"
        elif name == "train" and carved:
            moved = source.read - len(examples)
            origin = f"{source.path} ({source.read} records, {moved} of them carved into {' and '.join(carved)})"
        else:
            origin = source.path
        lines.append(f"{name:<11}{len(examples):>8}   {origin}")
    return "\n".join(lines)


def data_report(config, resolved, tokenizer, splits, encoded, task) -> str:
    """`task` is the run's task module (`tasks.get_task(config.task)`), passed in by the caller: its
    `describe` shows the first training example as the model will see it (data sits below tasks).
    A split missing from `encoded` (training encodes no test split) shows no token counts."""
    lines = [
        f"model: {config.model.name} -> {resolved.path} ({resolved.source})",
        f"task: {config.task}; format: {splits.format}; max_length: {config.data.max_length}"
        + (f"; loss on: {config.data.train_on}" if getattr(task, "packable", False) else ""),  # conversations
        "",
        split_sources(splits),
        "",
        f"{'split':<11}{'records':>8}{'truncated':>11}{'duplicates':>12}{'empty turns':>13}   tokens per record",
    ]
    for name, examples in splits.items():
        enc = encoded.get(name)
        truncated = "-" if enc is None else sum(e.truncated for e in enc)
        lengths = [e.full_length for e in enc or []]
        lines.append(
            f"{name:<11}{len(examples):>8}{truncated:>11}{find_repeats(examples).count:>12}"
            f"{_empty_turns(examples):>13}   {_percentiles(lengths)}"
        )
    if splits.bad is not None and splits.bad.count:
        lines += ["", f"skipped bad records (data.on_bad_record: skip): {splits.bad.count}; the first:"]
        lines += [f"  {where}" for where in splits.bad.first]
    trained = [e.trained_tokens for e in encoded.get("train", []) if hasattr(e, "trained_tokens")]
    if trained:
        lines += ["", f"loss-bearing tokens per training record: {_percentiles(trained)}; total {sum(trained):,}"]
    findings = getattr(task, "findings", None)  # a task's own warnings (preference: answers cut by max_length)
    for name, enc in encoded.items():
        for line in findings(enc, config) if findings is not None else []:
            lines += ["", f"{name}: {line}"]
    if encoded.get("train"):
        lines += ["", task.describe(encoded["train"][0], tokenizer)]
    return "\n".join(lines)
