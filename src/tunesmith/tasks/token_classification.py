"""Token classification: named entities and other word tags (legal, medical, any domain).

Records come in three shapes, all turned into words with one tag each:
  words    `tokens` (or `words`) + `tags` (or `ner_tags`, `labels`): lists of the same length
  spans    `text` + `entities: [{start, end, label}]` (character offsets, end exclusive): the text is cut
           into words (WORD below, cut again at every entity boundary) and tagged BIO (IOB2)
  CoNLL    `.conll`/`.iob`/`.txt` files: one word per line, the word in the first column and its tag in
           the last, a blank line between sentences, `-DOCSTART-` lines skipped (`read`). `predict`
           reads a `.txt` whose lines are not words and tags as one sentence a line (`read_prompts`)
`data.columns` maps other column names. Tags may be BIO/IOB2, IOBES, or plain (one tag per word, no
prefixes, e.g. part-of-speech tags).

Any encoder (BERT, RoBERTa, DeBERTa, MiniLM) or decoder (Llama, Mistral, Qwen2) gets a new
`AutoModelForTokenClassification` head with one output per tag of the training split; the tag names are
saved in the model config. Words are split into sub-tokens by the model's fast tokenizer and aligned
with `word_ids()`: the first sub-token of each word carries the word's tag and the rest are ignored (-100),
as in the BERT paper's NER setup; `data.label_all_subwords: true` trains on every sub-token instead.
A word is always predicted from its first sub-token, so the two settings are scored the same way.

Scores are entity-level precision/recall/F1 from seqeval (the CoNLL evaluation's definition: an entity
counts only when its type and both boundaries are right) plus word accuracy; plain tags are scored per
word. The reference without a network is the most frequent training tag of each word.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from tunesmith.data.formats import task_columns
from tunesmith.errors import TunesmithError
from tunesmith.extras import require
from tunesmith.tasks.labels import check_labels_seen, head_kwargs, training_label_names

peft_task_type = "TOKEN_CLS"  # PEFT then trains the new `classifier`/`score` head fully (modules_to_save)
target_unit = "tok"  # count_targets counts tagged sub-tokens

WORD_COLUMNS = ("tokens", "words")
TAG_COLUMNS = ("tags", "ner_tags", "labels")
CANONICAL = ("tokens", "tags", "text", "entities")
CONLL_EXTENSIONS = (".conll", ".iob", ".iob2", ".bio", ".txt")

# Words of a text record: letters/digits joined by - . @ + / : ' (so e-mail addresses, year ranges, URLs
# and licence ids such as GPL-2+ stay one word), or any other single non-space character (punctuation).
WORD = re.compile(r"\w+(?:[-.@+/:'’]+\w+)*\+*|\S")
PREFIXED = re.compile(r"^([BIES])-(.+)$")
# A CoNLL line's last column as the tagging schemes spell it (BIO, IOBES, BILOU), to tell a CoNLL `.txt`
# from a `.txt` of sentences (read_prompts).
TAG = re.compile(r"^(O|[BIESLU]-\S+)$")


@dataclass
class TaggedWords:
    where: str
    tokens: list[str]
    tags: list[str] | None  # None: an unlabelled record (prediction input)
    text: str  # the record's text, or the words joined by spaces
    offsets: list[tuple[int, int]] | None = None  # each word's characters in `text` (records with a text)

    def content_key(self) -> tuple:
        return ("tagged_words", tuple(self.tokens))


@dataclass
class EncodedTokens:
    input_ids: list[int]
    where: str
    labels: list[int]  # tag index per sub-token, -100 where no loss is taken
    word_ids: list[int | None]
    n_words: int
    weights: list[float] | None = None  # class weight per sub-token (train.class_weights)
    truncated: bool = False
    full_length: int = 0
    trained_tokens: int = 0  # the data report's loss-bearing tokens per record
    tags: list[str] = field(default_factory=list)


def load_processor(resolved, model_cfg):
    from tunesmith.models.load import load_tokenizer

    tokenizer = load_tokenizer(resolved, model_cfg)
    if not getattr(tokenizer, "is_fast", False):
        raise TunesmithError(
            f"the tokenizer of {resolved.path} is a slow (Python) tokenizer; aligning tags with "
            "sub-tokens needs a fast one (word_ids)",
            where="model.name",
            fix="use a model whose folder has a tokenizer.json",
        )
    add_prefix_space(tokenizer)
    return tokenizer


def add_prefix_space(tokenizer) -> None:
    """Byte-level BPE (RoBERTa, GPT-2, Llama 3, SmolLM2, Qwen) marks the start of a word with the space
    before it ('Ġword'). Words handed over one by one have no space, so each would be tokenised as if glued
    to the previous word, unlike running text (transformers' RoBERTa tokenizer refuses such input
    outright). Setting the pre-tokenizer's add_prefix_space, as RobertaTokenizer(add_prefix_space=True)
    does, fixes it, and the setting is saved with the run's tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.pre_tokenizer is None:
        return
    from tokenizers import pre_tokenizers

    pre = backend.pre_tokenizer
    parts = [pre]
    if isinstance(pre, pre_tokenizers.Sequence):
        parts, i = [], 0
        while True:
            try:
                parts.append(pre[i])
            except IndexError:
                break
            i += 1
    changed = False
    for part in parts:
        if isinstance(part, pre_tokenizers.ByteLevel) and not part.add_prefix_space:
            part.add_prefix_space = True  # the Sequence holds the same object, so this edits it in place
            changed = True
    if changed:
        backend.pre_tokenizer = pre
        tokenizer.add_prefix_space = True


def model_class():
    from transformers import AutoModelForTokenClassification

    return AutoModelForTokenClassification


# ---------------------------------------------------------------------------------------------------
# Reading: CoNLL files (other formats go through tunesmith's read_records)


def read(source: str, data_cfg, split: str | None = None, bad=None) -> list:
    """The task's reader: CoNLL-style files here, every other source through read_records. `bad`
    (data.on_bad_record) raises, or counts and skips, a record that cannot be read."""
    from tunesmith.data.readers import read_records

    path = Path(str(source))
    if path.is_file() and path.suffix.lower() in CONLL_EXTENSIONS:
        return read_conll(path, bad)
    return read_records(source, split=split, bad=bad)


def read_prompts(source: str, data_cfg, meta: dict, bad=None) -> list:
    """What `predict` reads: a `.txt` file that reads as CoNLL (`looks_like_conll`) as in training, any
    other `.txt` as one sentence a line (a `{"text": line}` record, cut into words as a text record is), as
    every other task reads a `.txt` of prompts; other sources as `read`. `meta` is the run's task.json: its
    tag names tell a CoNLL line of plain tags (`cat NN`) from the last word of a sentence."""
    from tunesmith.data.prompts import read_prompt_records
    from tunesmith.data.readers import read_text_file, split_lines

    path = Path(str(source))
    if path.is_file() and path.suffix.lower() == ".txt":
        lines = split_lines(read_text_file(path, str(source)))
        if not looks_like_conll(lines, meta.get("labels", ())):
            _refuse_words_without_tags(lines, str(source))
            return read_prompt_records(source, data_cfg, None, bad)
    return read(source, data_cfg, None, bad)


def looks_like_conll(lines: list[str], run_tags: Collection[str] = ()) -> bool:
    """Whether most word lines are a word and a tag: at least two columns, the last spelled like a tag
    (O, B-X, I-X, E-X, S-X, L-X, U-X) or one of the run's tags with a letter in it (plain tags such as
    NN; a tokenised sentence ends in `.`, which is also Penn's tag of a full stop). Most, not all: a CoNLL
    file with a broken line is still CoNLL, and read_conll names the line."""

    def tagged(columns: list[str]) -> bool:
        last = columns[-1]
        return len(columns) > 1 and bool(TAG.match(last) or (last in run_tags and any(c.isalpha() for c in last)))

    words = [line.split() for line in lines if line.strip() and line.split()[0] != "-DOCSTART-"]
    return sum(map(tagged, words)) * 2 > len(words)


def _refuse_words_without_tags(lines: list[str], name: str) -> None:
    """One word a line, in groups split by blank lines, is CoNLL without its tag column: read as sentences,
    each word would be tagged alone, without the sentence around it."""
    if any(len(line.split()) > 1 for line in lines):
        return
    groups: list[int] = []  # the number of word lines in each run of lines between blank ones
    size = 0
    for line in lines + [""]:
        if line.strip():
            size += 1
        elif size:
            groups.append(size)
            size = 0
    if len(groups) > 1 and max(groups) > 1:
        raise TunesmithError(
            "the file holds one word a line in groups split by blank lines: a CoNLL file without its tag column",
            where=name,
            fix="write each sentence on one line (words split by spaces), or give each word a tag after it "
            "(e.g. O) to read the file as CoNLL",
        )


def read_conll(path: Path, bad=None) -> list:
    """One record per sentence: the first column is the word, the last the tag (CoNLL-2003 has POS and
    chunk columns in between); `-DOCSTART-` lines and blank lines end a sentence. A sentence with a
    line of one column is bad as a whole (data.on_bad_record skips all of it)."""
    from tunesmith.data.bad_records import drop
    from tunesmith.data.readers import RawRecord, read_text_file, split_lines

    name = str(path)
    records: list[RawRecord] = []
    words: list[str] = []
    tags: list[str] = []
    start, broken = 0, False
    for lineno, line in enumerate(split_lines(read_text_file(path, name)), start=1):
        columns = line.split()
        if not columns or columns[0] == "-DOCSTART-":
            if words and not broken:
                records.append(RawRecord({"tokens": words, "tags": tags}, f"{name}:{start}"))
            words, tags, broken = [], [], False
            continue
        if not words:
            start = lineno
        if len(columns) < 2:
            drop(
                bad,
                TunesmithError(
                    f"the line has one column ({columns[0]!r}); a CoNLL line is a word and its tag",
                    where=f"{name}:{lineno}",
                    fix="write each word and its tag separated by a space or tab, one word per line",
                ),
            )
            broken = True
        words.append(columns[0])
        tags.append(columns[-1])
    if words and not broken:
        records.append(RawRecord({"tokens": words, "tags": tags}, f"{name}:{start}"))
    if not records:
        raise TunesmithError(
            "no sentences: the file holds no word lines",
            where=name,
            fix="write one word and its tag per line, with a blank line between sentences",
        )
    return records


# ---------------------------------------------------------------------------------------------------
# Records -> examples


def _field(fields: dict, canonical: str, aliases: tuple[str, ...], columns: dict):
    """The value of a column: the user's mapped name first, then the canonical name and its aliases."""
    for name in (columns.get(canonical), *aliases):
        if name is not None and name in fields:
            return name, fields[name]
    return None, None


def _tags_of(value, n_words: int, where: str, column: str) -> list[str]:
    if not isinstance(value, (list, tuple)):
        raise TunesmithError(
            f"{column} is {type(value).__name__}, not a list of tags",
            where=where,
            fix='give one tag per word, e.g. ["B-PER", "I-PER", "O"]',
        )
    for i, tag in enumerate(value):
        if not isinstance(tag, str) or not tag.strip():
            kind = "empty" if isinstance(tag, str) else f"a {type(tag).__name__}"
            raise TunesmithError(
                f"tag {i} ({tag!r}) is {kind}, not a tag name",
                where=where,
                fix="write tags as names such as 'B-PER'; for integer ids (datasets' ClassLabel) map them to names "
                "first, e.g. with features['ner_tags'].feature.int2str",
            )
    if len(value) != n_words:
        raise TunesmithError(f"{n_words} words but {len(value)} tags", where=where, fix="give exactly one tag per word")
    return [tag.strip() for tag in value]


def _from_words(fields: dict, where: str, columns: dict, name: str, words) -> TaggedWords:
    if not isinstance(words, (list, tuple)) or not words:
        raise TunesmithError(
            f"{name} must be a non-empty list of words",
            where=where,
            fix='give the sentence\'s words as a list of strings, e.g. ["Jane", "Doe"]',
        )
    for i, word in enumerate(words):
        if not isinstance(word, str) or not word.strip():
            raise TunesmithError(
                f"word {i} ({word!r}) is not a non-empty string",
                where=where,
                fix="remove empty words (and their tags) or fill them in",
            )
    tag_column, tags = _field(fields, "tags", TAG_COLUMNS, columns)
    tags = None if tag_column is None else _tags_of(tags, len(words), where, tag_column)
    return TaggedWords(where, list(words), tags, " ".join(words))


def split_words(text: str, cuts: Set[int] = frozenset()) -> list[tuple[int, int]]:
    """Character spans of the words of `text` (WORD), each also cut at the offsets in `cuts`."""
    spans = []
    for match in WORD.finditer(text):
        start = match.start()
        for cut in sorted(c for c in cuts if match.start() < c < match.end()):
            spans.append((start, cut))
            start = cut
        spans.append((start, match.end()))
    return spans


def spans_to_bio(text: str, entities: list[tuple[int, int, str]]) -> tuple[list[tuple[int, int]], list[str]]:
    """Words of `text` (cut at entity boundaries, so no word straddles one) and their BIO tags."""
    offsets = split_words(text, {b for s, e, _ in entities for b in (s, e)})
    tags = ["O"] * len(offsets)
    for start, end, label in entities:
        inside = [i for i, (s, e) in enumerate(offsets) if s >= start and e <= end]
        for n, i in enumerate(inside):
            tags[i] = ("B-" if n == 0 else "I-") + label
    return offsets, tags


def _entities_of(value, text: str, where: str) -> list[tuple[int, int, str]]:
    fix = (
        'give entities as [{"start": 0, "end": 4, "label": "PER"}] with character offsets into the text (end exclusive)'
    )
    if not isinstance(value, (list, tuple)):
        raise TunesmithError(f"entities is {type(value).__name__}, not a list", where=where, fix=fix)
    out = []
    for i, entity in enumerate(value):
        if not isinstance(entity, dict) or not {"start", "end", "label"} <= set(entity):
            raise TunesmithError(f"entity {i} ({entity!r}) lacks start, end or label", where=where, fix=fix)
        start, end, label = entity["start"], entity["end"], entity["label"]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, end)) or not 0 <= start < end <= len(
            text
        ):
            raise TunesmithError(
                f"entity {i} has offsets {start!r}..{end!r}, outside the text's {len(text)} characters or empty",
                where=where,
                fix=fix,
            )
        if not isinstance(label, str) or not label.strip() or PREFIXED.match(label) or label == "O":
            raise TunesmithError(
                f"entity {i} has label {label!r}; a span's label is its type",
                where=where,
                fix="use the entity type as the label, e.g. 'PER' (not 'B-PER' or 'O')",
            )
        if not text[start:end].strip():
            raise TunesmithError(f"entity {i} ({start}..{end}) covers only whitespace", where=where, fix=fix)
        out.append((start, end, label.strip()))
    out.sort()
    for (s1, e1, l1), (s2, e2, l2) in zip(out, out[1:]):
        if s2 < e1:
            raise TunesmithError(
                f"entities {text[s1:e1]!r} ({l1}) and {text[s2:e2]!r} ({l2}) overlap; a word has one tag",
                where=where,
                fix="keep one of the overlapping entities (nested entities are not supported)",
            )
    return out


def _from_text(fields: dict, where: str, columns: dict, name: str, text) -> TaggedWords:
    if not isinstance(text, str) or not text.strip():
        raise TunesmithError(
            f"{name} is empty or not a string", where=where, fix="remove the record or fill in its text"
        )
    entity_column, entities = _field(fields, "entities", ("entities",), columns)
    if entity_column is None:  # an unlabelled text: fine for prediction, refused for training by `setup`
        offsets, tags = split_words(text), None
    else:
        offsets, tags = spans_to_bio(text, _entities_of(entities, text, where))
    return TaggedWords(where, [text[s:e] for s, e in offsets], tags, text, offsets)


def scheme_of(tags) -> str:
    """'BIO' (IOB1/IOB2), 'IOBES' or 'plain' (no prefixes): how the tags spell entities."""
    prefixes = {m.group(1) for t in tags if (m := PREFIXED.match(t))}
    if not prefixes:
        return "plain"
    return "IOBES" if prefixes & {"E", "S"} else "BIO"


def repair_bio(tags: list[str]) -> tuple[list[str], int]:
    """An I- tag that continues nothing (after O or another type) starts an entity: it becomes B-. This is
    how seqeval's default mode (and the CoNLL-2000 script) reads such a tag, and it turns IOB1 data (the
    original CoNLL-2003 files, where I- starts most entities) into IOB2, so the model learns one scheme and
    the scores do not change. Repaired rather than refused, and counted in the format line."""
    out, repaired = list(tags), 0
    for i, tag in enumerate(tags):
        match = PREFIXED.match(tag)
        if match and match.group(1) == "I":
            previous = PREFIXED.match(out[i - 1]) if i else None
            if previous is None or previous.group(2) != match.group(2):
                out[i] = "B-" + match.group(2)
                repaired += 1
    return out, repaired


def normalise(records: list, data_cfg) -> tuple[list[TaggedWords], str]:
    columns = task_columns(data_cfg, CANONICAL, "token classification")
    examples, shapes = [], set()
    for record in records:
        fields = record.fields
        name, words = _field(fields, "tokens", WORD_COLUMNS, columns)
        if name is not None:
            examples.append(_from_words(fields, record.where, columns, name, words))
            shapes.add("words")
            continue
        name, text = _field(fields, "text", ("text",), columns)
        if name is None:
            found = ", ".join(map(str, fields)) or "none"
            raise TunesmithError(
                f"no words or text column (columns found: {found})",
                where=record.where,
                fix="give `tokens` + `tags` lists or `text` + `entities` spans, or map yours with data.columns, "
                "e.g. data.columns: {tokens: words, tags: ner_tags}",
            )
        examples.append(_from_text(fields, record.where, columns, name, text))
        shapes.add("text spans")
    labelled = [(e, e.tags) for e in examples if e.tags is not None]
    scheme = scheme_of(t for _, tags in labelled for t in tags)
    if scheme != "plain":
        for example, tags in labelled:
            bare = next((t for t in tags if t != "O" and not PREFIXED.match(t)), None)
            if bare is not None:
                raise TunesmithError(
                    f"tag {bare!r} has no B-/I- prefix while other tags have one",
                    where=example.where,
                    fix=f"write it as B-{bare} / I-{bare} (or O), or drop the prefixes everywhere for plain tagging",
                )
    repaired = 0
    if scheme == "BIO":
        for example, tags in labelled:
            example.tags, n = repair_bio(tags)
            repaired += n
    name = (
        f"{scheme} tags from {' and '.join(sorted(shapes))}"
        if labelled
        else f"unlabelled {' and '.join(sorted(shapes))}"
    )
    if repaired:
        name += f"; {repaired} I- tags that began an entity read as B-"
    return examples, name


def to_record(example: TaggedWords) -> dict:
    return {"tokens": example.tokens, "tags": example.tags}


stratify_key = None  # a record holds many tags: plain seeded random split


# ---------------------------------------------------------------------------------------------------
# Tags, head, encoding


def setup(splits, config) -> dict:
    """Tag names from the training split (O first); every record must be tagged; class weights when asked."""
    for split_name, examples in splits.items():
        for example in examples:
            if example.tags is None:
                raise TunesmithError(
                    f"a {split_name} record has no tags",
                    where=example.where,
                    fix="give it `tags` (one per word) or `entities` (spans of its text), or map "
                    "your column with data.columns",
                )
    counts = Counter(tag for e in splits.train for tag in e.tags)
    names = training_label_names(counts)
    names = (["O"] if "O" in names else []) + [n for n in names if n != "O"]
    check_labels_seen(splits, counts, lambda e: e.tags)
    weights = None
    if config.train.class_weights:
        # sklearn's "balanced" weights, per tag: rare entity tags weigh more than the many O words.
        total = sum(counts.values())
        weights = [total / (len(names) * counts[name]) for name in names]
    return {"labels": names, "scheme": scheme_of(names), "class_weights": weights}


def model_kwargs(meta: dict) -> dict:
    return head_kwargs(meta["labels"])


def _continuation(names: list[str]) -> dict[int, int]:
    """B-X -> I-X by index, for sub-tokens after a word's first when every sub-token is labelled (an entity
    has one beginning; HF's run_ner.py does the same with label_all_tokens)."""
    index = {name: i for i, name in enumerate(names)}
    return {
        i: index[f"I-{m.group(2)}"]
        for i, name in enumerate(names)
        if (m := PREFIXED.match(name)) and m.group(1) == "B" and f"I-{m.group(2)}" in index
    }


def encode(examples: list[TaggedWords], tokenizer, config, meta: dict) -> list[EncodedTokens]:
    index = {name: i for i, name in enumerate(meta["labels"])}
    continuation = _continuation(meta["labels"])
    class_weights = meta.get("class_weights")
    all_subwords = config.data.label_all_subwords
    max_length = config.data.max_length
    out = []
    for example in examples:
        encoded = tokenizer(example.tokens, is_split_into_words=True)
        full_length = len(encoded["input_ids"])
        if full_length > max_length:
            encoded = tokenizer(example.tokens, is_split_into_words=True, truncation=True, max_length=max_length)
        word_ids = encoded.word_ids()
        labels, previous = [], None
        for word in word_ids:
            # Unlabelled records and tags unseen in training (only in `predict` inputs) carry no loss.
            tag = index.get(example.tags[word], -100) if (word is not None and example.tags) else -100
            if word is None or (word == previous and not all_subwords):
                labels.append(-100)
            else:
                labels.append(continuation.get(tag, tag) if word == previous else tag)
            previous = word
        trained = sum(label != -100 for label in labels)
        weights = [class_weights[label] if label != -100 else 0.0 for label in labels] if class_weights else None
        out.append(
            EncodedTokens(
                input_ids=encoded["input_ids"],
                where=example.where,
                labels=labels,
                word_ids=word_ids,
                n_words=len(example.tokens),
                weights=weights,
                truncated=full_length > max_length,
                full_length=full_length,
                trained_tokens=trained,
                tags=list(example.tags or []),
            )
        )
    return out


def collate(batch: list[EncodedTokens], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(e.input_ids) for e in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for row, example in enumerate(batch):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        attention_mask[row, :n] = 1
        labels[row, :n] = torch.tensor(example.labels)
    out = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    if batch[0].weights is not None:
        weights = torch.zeros((len(batch), width), dtype=torch.float32)
        for row, example in enumerate(batch):
            if example.weights is not None:  # class weights are on for every example of a run or for none
                weights[row, : len(example.weights)] = torch.tensor(example.weights)
        out["weights"] = weights
    return out


def logits_of(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    # token_type_ids are left out: a single sequence has type 0 everywhere (every model's default), and
    # decoders such as Llama have no such input.
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()


def count_targets(batch: dict[str, torch.Tensor]) -> int:
    """Tagged sub-tokens: the loss is a mean over them, across the whole accumulated step."""
    return int((batch["labels"] != -100).sum())


def loss_sum(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    logits = logits_of(model, batch)
    labels = batch["labels"]
    per_token = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="none")
    if "weights" in batch:
        per_token = per_token * batch["weights"].flatten()
    return per_token.sum(), (labels != -100).sum()


# ---------------------------------------------------------------------------------------------------
# Prediction and metrics


@torch.no_grad()
def word_predictions(
    model, tokenizer, examples: list[TaggedWords], config, meta: dict
) -> list[tuple[list[str], list[float | None], bool]]:
    """(tag per word, its probability, truncated?) for each example. A word is read from its first
    sub-token; a word cut off by data.max_length (or one the tokenizer turns into nothing) is predicted O
    with no score, so truncation costs recall in the scores instead of hiding."""
    model.eval()
    names = meta["labels"]
    outside = "O" if "O" in names else names[0]
    encoded = encode(examples, tokenizer, config, meta)
    out = []
    for start in range(0, len(encoded), config.eval.batch_size):
        chunk = encoded[start : start + config.eval.batch_size]
        batch = {k: v.to(model.device) for k, v in collate(chunk, tokenizer.pad_token_id or 0).items()}
        probs = torch.softmax(logits_of(model, batch), dim=-1).cpu()
        for row, example in enumerate(chunk):
            best, chosen = probs[row].max(dim=-1)
            tags: list[str] = [outside] * example.n_words
            scores: list[float | None] = [None] * example.n_words
            previous = None
            for position, word in enumerate(example.word_ids):
                if word is not None and word != previous:
                    tags[word], scores[word] = names[int(chosen[position])], round(float(best[position]), 6)
                previous = word
            out.append((tags, scores, example.truncated))
    return out


def _seqeval_tags(tags: list[str], scheme: str) -> list[str]:
    """Plain tags become one-word entities (B-tag), so seqeval scores them per word, per tag."""
    return [t if scheme != "plain" or t == "O" else f"B-{t}" for t in tags]


def entities_of(tags: list[str], scheme: str) -> list[tuple[str, int, int]]:
    """(type, first word, last word) of each entity, read as seqeval reads them (an I- after O starts one)."""
    require("seqeval", "ner", "token classification (entity-level scores)")
    from seqeval.metrics.sequence_labeling import get_entities

    return [(kind, start, end) for kind, start, end in get_entities(_seqeval_tags(tags, scheme))]


def tag_metrics(references: list[list[str]], predictions: list[list[str]], scheme: str) -> dict:
    """Entity-level precision/recall/F1 (micro, macro, weighted) and a per-type table from seqeval (the
    reference implementation of the CoNLL scores), plus word accuracy."""
    require("seqeval", "ner", "token classification (entity-level scores)")
    from seqeval.metrics import accuracy_score, classification_report

    refs = [_seqeval_tags(t, scheme) for t in references]
    preds = [_seqeval_tags(t, scheme) for t in predictions]
    report = classification_report(refs, preds, output_dict=True, zero_division=0)
    metrics: dict[str, Any] = {}
    for average in ("micro", "macro", "weighted"):
        row = report[f"{average} avg"]
        metrics.update(
            {
                f"precision_{average}": float(row["precision"]),
                f"recall_{average}": float(row["recall"]),
                f"f1_{average}": float(row["f1-score"]),
            }
        )
    metrics["token_accuracy"] = float(accuracy_score(refs, preds))
    metrics["per_class"] = {
        name: {
            "precision": float(row["precision"]),
            "recall": float(row["recall"]),
            "f1": float(row["f1-score"]),
            "support": int(row["support"]),
        }
        for name, row in report.items()
        if not name.endswith(" avg")
    }
    metrics["entities"] = int(report["micro avg"]["support"])
    metrics["test_samples"] = len(references)
    return metrics


def _shown(example: TaggedWords, tags: list[str], scheme: str) -> str:
    return (
        " | ".join(f"{kind}: {' '.join(example.tokens[s : e + 1])}" for kind, s, e in entities_of(tags, scheme))
        or "(none)"
    )


def _check_tagged(examples: list[TaggedWords]) -> list[list[str]]:
    """The tags of test records, each of which must have them."""
    references = []
    for example in examples:
        if example.tags is None:
            raise TunesmithError(
                "a test record has no tags to score against",
                where=example.where,
                fix="give test records `tags` or `entities`; for untagged text use `tunesmith predict`",
            )
        references.append(example.tags)
    return references


def evaluate_test(model, tokenizer, examples: list[TaggedWords], config, meta: dict) -> tuple[dict, list[dict]]:
    """Every test record is scored (forward passes only, no generation, so eval.max_samples is not needed)."""
    if not examples:
        return {}, []
    references = _check_tagged(examples)
    predicted = [tags for tags, _, _ in word_predictions(model, tokenizer, examples, config, meta)]
    metrics = tag_metrics(references, predicted, meta["scheme"])
    rows = [
        {
            "where": e.where,
            "prompt": e.text,
            "reference": _shown(e, r, meta["scheme"]),
            "prediction": _shown(e, p, meta["scheme"]),
            "reference_tags": r,
            "predicted_tags": p,
        }
        for e, r, p in zip(examples, references, predicted)
    ]
    return metrics, rows


def predict(model, tokenizer, examples: list[TaggedWords], config, meta: dict, **_) -> list[dict]:
    """Per record: the words, a tag per word and the entities found, each with its type, text, word span
    [word_start, word_end), character span (records with a text) and score (mean probability of its words'
    tags)."""
    rows = []
    for example, (tags, scores, truncated) in zip(examples, word_predictions(model, tokenizer, examples, config, meta)):
        entities = []
        for kind, first, last in entities_of(tags, meta["scheme"]):
            found = [s for s in scores[first : last + 1] if s is not None]
            entity = {
                "type": kind,
                "word_start": first,
                "word_end": last + 1,
                "score": round(sum(found) / len(found), 6) if found else None,
            }
            if example.offsets is not None:
                start, end = example.offsets[first][0], example.offsets[last][1]
                entity.update(text=example.text[start:end], start=start, end=end)
            else:
                entity["text"] = " ".join(example.tokens[first : last + 1])
            entities.append(entity)
        row: dict[str, Any] = {"text": example.text} if example.offsets is not None else {}
        row.update(tokens=example.tokens, tags=tags, entities=entities)
        if truncated:
            row["truncated"] = True  # words past data.max_length were not read (tagged O)
        rows.append(row)
    return rows


def baseline(splits, config, meta: dict) -> dict | None:
    """The most frequent training tag of each word (as written), O for words training never showed: what
    memorising a gazetteer gets, so the tuned model's margin is what it learned from context."""
    if not splits.test:
        return None
    _check_tagged(splits.test)
    seen: dict[str, Counter] = {}
    for example in splits.train:
        for word, tag in zip(example.tokens, example.tags):
            seen.setdefault(word, Counter())[tag] += 1
    outside = "O" if "O" in meta["labels"] else Counter(t for e in splits.train for t in e.tags).most_common(1)[0][0]
    # Counter.most_common keeps first-seen order on ties, so the result is deterministic.
    predicted = [[seen[w].most_common(1)[0][0] if w in seen else outside for w in e.tokens] for e in splits.test]
    metrics = tag_metrics([e.tags for e in splits.test], predicted, meta["scheme"])
    metrics["description"] = (
        "The baseline tags each word with its most frequent tag in the training split "
        "(O for words training never showed), scored the same way."
    )
    return metrics


def plots(rows: list[dict], meta: dict, folder) -> list[str]:
    """Word-level confusion between entity types (B-/I- folded, O kept): which types are mistaken for which."""
    from tunesmith.evaluate.classification import plot_confusion

    if not rows:
        return []

    def kind(tag: str) -> str:
        match = PREFIXED.match(tag)
        return match.group(2) if match else tag

    references = [kind(t) for r in rows for t in r["reference_tags"]]
    predictions = [kind(t) for r in rows for t in r["predicted_tags"]]
    names = sorted(set(map(kind, meta["labels"])), key=lambda n: (n != "O", n))
    return [plot_confusion(references, predictions, names, Path(folder) / "confusion.png")]


def describe(encoded: EncodedTokens, tokenizer) -> str:
    """The first record word by word: its sub-tokens and the tag the loss sees (`-` where none)."""
    pieces = tokenizer.convert_ids_to_tokens(encoded.input_ids)
    lines, previous = [], None
    for piece, word, label in zip(pieces, encoded.word_ids, encoded.labels):
        if word is None:
            lines.append(f"  {piece}")
        else:
            tag = encoded.tags[word] if label != -100 and encoded.tags else "-"
            if word == previous and tag.startswith("B-"):  # data.label_all_subwords: later pieces continue the entity
                tag = "I-" + tag[2:]
            lines.append(
                f"  {piece:<20} word {word:<4} {tag}" if word != previous else f"  {piece:<20}           {tag}"
            )
        previous = word
    shown = lines[:60] + ([f"  ... {len(lines) - 60} more sub-tokens"] if len(lines) > 60 else [])
    return (
        f"first training record as the model sees it ({encoded.n_words} words, {len(encoded.input_ids)} sub-tokens, "
        f"{encoded.trained_tokens} tagged):\n\n" + "\n".join(shown)
    )
