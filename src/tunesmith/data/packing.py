"""Packing (`data.packing`): several encoded examples per row, so no compute goes to padding.

A chat data set mixes short and long records; dynamic padding pads every row of a micro-batch to its
longest one, and on such data a third or more of the computed positions can be padding. Packing fills
rows of up to `data.max_length` tokens with whole examples (first-fit decreasing: deterministic, a pure
function of the lengths, so a resumed run packs exactly as the interrupted one did) and keeps each
example on its own:
  - labels are the example's own, except that its first position carries no label: the previous
    example's last token must not learn to predict it (no loss crosses an example boundary);
  - position ids restart at 0 for every example (RoPE and learned positions see what they would alone);
  - attention stays inside each example. A batch is given no attention mask, and transformers (>= 4.53;
    `masking_utils.find_packed_sequence_indices`) reads the example boundaries from the restarting
    position ids and builds a block-diagonal causal mask for sdpa, eager and flex attention. Flash
    attention takes the variable-length path instead, but only for a batch of one row
    (`modeling_flash_attention_utils._is_packed_sequence`), so for it the rows are laid end to end
    (`varlen_layout`), as `DataCollatorWithFlattening` does.
Two silent failures exist, and `check_packing` tests the loaded model for both before training: a KV
cache in the forward pass (then transformers skips the detection; the loss passes use_cache=False), and
an attention implementation that ignores the boundaries (a custom kernel, remote model code).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tunesmith.data.chat_template import IGNORE_INDEX
from tunesmith.errors import TunesmithError
from tunesmith.models.attention import VARLEN_ATTENTION, attention_implementation, varlen_kwargs


@dataclass
class PackedRow:
    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]
    where: str  # the first example's location and how many share the row
    lengths: list[int] = field(default_factory=list)  # the examples' token counts, in row order
    truncated: bool = False  # some example in the row was cut by data.max_length
    full_length: int = 0  # tokens in the row (preflight and batch_size: auto size memory by it)

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of `lengths` grouped into bins of at most `capacity`: longest first, each into the first
    bin it fits. A max-tree over the bins' free space finds that bin in O(log n) (a linear scan is
    O(n * bins), minutes on 100k records); bins not yet opened are the tree's leaves to the right, full."""
    if any(n > capacity for n in lengths):
        raise ValueError("an item is longer than the capacity")  # encode cuts examples to max_length first
    size = 1
    while size < max(len(lengths), 1):
        size *= 2
    free = [0] * size + [capacity] * size  # leaves at [size, 2 * size)
    for node in range(size - 1, 0, -1):
        free[node] = max(free[2 * node], free[2 * node + 1])
    bins: list[list[int]] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        need, node = lengths[index], 1
        while node < size:  # descend to the leftmost leaf with room
            node = 2 * node if free[2 * node] >= need else 2 * node + 1
        slot = node - size
        if slot == len(bins):
            bins.append([])
        bins[slot].append(index)
        free[node] -= need
        node //= 2
        while node:
            free[node] = max(free[2 * node], free[2 * node + 1])
            node //= 2
    return bins


def pack_examples(examples: list, max_length: int) -> list[PackedRow]:
    """Encoded causal-LM examples (input_ids, labels, where) packed into rows of <= max_length tokens."""
    rows = []
    for members in first_fit_decreasing([len(e.input_ids) for e in examples], max_length):
        input_ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        for index in members:
            example = examples[index]
            input_ids += example.input_ids
            # Position 0 of a standalone example is never a target (nothing precedes it); packed, it would
            # be the target of the previous example's last token.
            labels += [IGNORE_INDEX] + list(example.labels[1:])
            positions += range(len(example.input_ids))
        first = examples[members[0]]
        rows.append(
            PackedRow(
                input_ids,
                labels,
                positions,
                f"{first.where} (+{len(members) - 1} more packed)" if len(members) > 1 else first.where,
                [len(examples[i].input_ids) for i in members],
                any(getattr(examples[i], "truncated", False) for i in members),
                len(input_ids),
            )
        )
    return rows


def padding_share(rows_or_examples: list, batch_size: int) -> float:
    """Share of computed positions that are padding when consecutive items form micro-batches of
    `batch_size`, each padded to its longest item (what dynamic padding computes)."""
    computed = real = 0
    for start in range(0, len(rows_or_examples), batch_size):
        lengths = [len(e.input_ids) for e in rows_or_examples[start : start + batch_size]]
        computed += max(lengths) * len(lengths)
        real += sum(lengths)
    return 1.0 - real / max(computed, 1)


def collate_packed(rows: list[PackedRow], pad_id: int) -> dict:
    """Rows right-padded to the longest; the padding is a sequence of its own (positions from 0), so it
    attends to nothing real, and carries no label. No attention mask: see the module docstring."""
    import torch

    width = max(len(r.input_ids) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row.input_ids)
        input_ids[i, :n] = torch.tensor(row.input_ids)
        labels[i, :n] = torch.tensor(row.labels)
        position_ids[i, :n] = torch.tensor(row.position_ids)
        position_ids[i, n:] = torch.arange(width - n)
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}


def varlen_layout(batch: dict, attn_implementation: str | None) -> dict:
    """The packed batch as the model's attention needs it: rows as they are, or for flash attention one
    row of all rows end to end (each row starts an example or padding, whose first label is empty, so
    the shifted loss still never crosses a boundary)."""
    if attn_implementation not in VARLEN_ATTENTION:
        return batch
    return {key: value.reshape(1, -1) for key, value in batch.items()}


def check_packing(model, setting: str = "data.packing") -> None:
    """Refuse packing where the model would attend across examples (or restart no positions): two
    examples packed must give the logits each gives alone. The packed difference is compared with what
    crossing would change (the same row with one causal mask over both), so the test holds in any dtype.
    Three small forward passes in eval mode; the model's train/eval mode is restored."""
    import torch

    attn = attention_implementation(model)
    vocab = model.get_input_embeddings().num_embeddings
    generator = torch.Generator().manual_seed(0)
    low = min(1000, vocab // 2)  # past the special tokens most vocabularies start with
    a, b = (torch.randint(low, vocab, (n,), generator=generator).tolist() for n in (12, 8))
    rows = [
        PackedRow(a + b, list(a + b), list(range(12)) + list(range(8)), "probe"),
        PackedRow(b, list(b), list(range(8)), "probe"),
    ]
    device = next(model.parameters()).device
    packed = {k: v.to(device) for k, v in varlen_layout(collate_packed(rows, 0), attn).items()}
    boundaries = {}
    if attn in VARLEN_ATTENTION:
        boundaries = varlen_kwargs(packed["position_ids"])
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(
                input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False, **boundaries
            ).logits
            logits = logits.float().reshape(2, 20, -1)
            alone = model(input_ids=torch.tensor([b], device=device), use_cache=False).logits.float()[0]
            ids = torch.tensor([a + b], device=device)
            crossed = model(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                use_cache=False,
                position_ids=torch.tensor([rows[0].position_ids], device=device),
            ).logits.float()[0, 12:]
    finally:
        model.train(was_training)
    off = max(float((logits[0, 12:] - alone).abs().max()), float((logits[1, :8] - alone).abs().max()))
    crossing = float((crossed - alone).abs().max())
    if off > 0.1 * crossing:
        raise TunesmithError(
            f"with {setting} the model attends across packed examples (attention implementation {attn!r}): "
            f"a packed example's logits differ from the same example's alone by {off:.3g}",
            where=setting,
            fix=f"set model.attn_implementation: sdpa (or eager, flash_attention_2), or {setting}: false",
        )
