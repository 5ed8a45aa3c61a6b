#!/usr/bin/env python3
"""Build bench/data/chat.jsonl: the chat data set of the SFT speed benchmark (`python -m bench.sft`).

Speed claims about padding, packing and length-grouped batching mean something only on data whose
lengths vary as real chat data does: many short exchanges, a long tail of long ones, some
multi-turn. So the conversations here mix short and long turns built from real text already in
this repository (examples/data, see its README), never filler:

  ticket     the demo's support tickets as they are: system prompt, ticket, one line of JSON (~150 tokens)
  explain    "what is the Debian package X for?" -> its maintainer's long description (short prompt, long answer)
  synopsis   a long description -> its one-line synopsis (long prompt, short answer)
  section    a package synopsis -> its archive section (a few tokens each way)
  licence    a licence paragraph -> which licence it comes from (medium prompt, one-token answer)
  quote      "quote the licence X from ... on" -> 2 to 9 consecutive paragraphs (the long tail: some pass
             512 tokens and are cut by the benchmark's sequence cap, as real data is)
  multi      2 to 4 exchanges in one conversation: a package explained and then summarised, a licence
             named and then continued, or unrelated questions in a row

Each record is {"messages": [...], "kind": <one of the above>}. The generator is stdlib only and
deterministic (`random.Random(SEED)` over inputs read in file order), so the same repository always
gives the same file; the benchmark checks the file's SHA-256 prefix into each result.

    python bench/data/make_chat.py [--out PATH] [--count N]
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from pathlib import Path

SEED = 6
COUNT = 640  # 64 validation + 576 training records: 72 optimizer steps of 8, more than any default run needs
ROOT = Path(__file__).resolve().parents[2]
SOURCES = ROOT / "examples" / "data"
DEFAULT_OUT = Path(__file__).with_name("chat.jsonl")

# Kind -> weight. Chosen for a median around 150 tokens with a long tail (see the module docstring).
KINDS = {"ticket": 22, "explain": 14, "synopsis": 14, "section": 10, "licence": 10, "quote": 12, "multi": 18}

# A paragraph longer than this is never put in a question: its prompt alone would pass the benchmark's
# 512-token cap and leave no answer token to train on (it still appears in `quote` answers).
MAX_QUESTION_CHARS = 1200

SYSTEM_PROMPTS = [
    None,  # the model's own default system turn (SmolLM2's template adds one)
    None,
    "You are a concise assistant for Debian users.",
    "You answer questions about free software packages and their licences accurately and briefly.",
]


def _jsonl(name: str) -> list[dict]:
    return [json.loads(line) for line in (SOURCES / name).read_text(encoding="utf-8").splitlines() if line.strip()]


def load_sources() -> dict:
    with open(SOURCES / "debian_sections.csv", newline="", encoding="utf-8") as handle:
        sections = list(csv.DictReader(handle))
    licences: dict[str, list[str]] = {}
    for row in _jsonl("licence_paragraphs.jsonl"):  # in file order, so consecutive paragraphs follow each other
        licences.setdefault(row["source"], []).append(row["text"])
    return {
        "tickets": _jsonl("support_tickets.jsonl"),
        "packages": _jsonl("debian_summaries.jsonl"),
        "sections": sections,
        "licences": {name: paras for name, paras in licences.items() if len(paras) >= 3},
    }


def _turn(user: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


# One exchange of each single-turn kind: (user text, assistant text).


def explain(rng, src):
    row = rng.choice(src["packages"])
    ask = rng.choice(["What is the Debian package {p} for?", "What does {p} do?", "Tell me about the {p} package."])
    return ask.format(p=row["package"]), row["document"]


def synopsis(rng, src):
    row = rng.choice([r for r in src["packages"] if len(r["document"]) <= MAX_QUESTION_CHARS])
    return (
        "Write a one-line synopsis (under 80 characters) for this Debian package description:\n\n" + row["document"]
    ), row["summary"]


def section(rng, src):
    row = rng.choice(src["sections"])
    return (
        f'Which Debian archive section fits a package described as "{row["text"]}"? Answer with the section name only.'
    ), row["label"]


def licence(rng, src):
    name = rng.choice(sorted(src["licences"]))
    paragraph = rng.choice([p for p in src["licences"][name] if len(p) <= MAX_QUESTION_CHARS])
    return "Which licence is this paragraph from?\n\n" + paragraph, name


def quote(rng, src):
    name = rng.choice(sorted(src["licences"]))
    paras = src["licences"][name]
    count = rng.randint(2, 9)
    start = rng.randrange(0, max(1, len(paras) - count))
    chosen = paras[start : start + count]
    opening = " ".join(chosen[0].split()[:8])
    return (
        f'Quote the {name} licence text from the paragraph that begins "{opening}", {len(chosen)} paragraphs.'
    ), "\n\n".join(chosen)


SINGLE = {"explain": explain, "synopsis": synopsis, "section": section, "licence": licence, "quote": quote}


def multi(rng, src) -> list[dict]:
    style = rng.choice(["package", "licence", "mixed"])
    if style == "package":
        row = rng.choice(src["packages"])
        turns = _turn(f"What is {row['package']} for?", row["document"])
        turns += _turn(
            rng.choice(["Say that in one line.", "And in one short line?", "Summarise that for a package list."]),
            row["summary"],
        )
        return turns
    if style == "licence":
        name = rng.choice(sorted(src["licences"]))
        paras = src["licences"][name]
        start = rng.choice([i for i in range(len(paras) - 2) if len(paras[i]) <= MAX_QUESTION_CHARS])
        turns = _turn("Which licence is this paragraph from?\n\n" + paras[start], name)
        for follow in range(1, rng.randint(2, 3)):
            turns += _turn(
                "Quote the paragraph that follows it." if follow == 1 else "And the next one?", paras[start + follow]
            )
        return turns
    turns = []
    for _ in range(rng.randint(2, 4)):
        user, answer = SINGLE[rng.choice(["explain", "synopsis", "section", "licence"])](rng, src)
        turns += _turn(user, answer)
    return turns


def conversation(rng, src, kind: str) -> list[dict]:
    if kind == "ticket":
        return rng.choice(src["tickets"])["messages"]
    turns = multi(rng, src) if kind == "multi" else _turn(*SINGLE[kind](rng, src))
    system = rng.choice(SYSTEM_PROMPTS)
    return ([{"role": "system", "content": system}] if system else []) + turns


def build(count: int = COUNT) -> list[dict]:
    src = load_sources()
    rng = random.Random(SEED)
    names, weights = zip(*KINDS.items())
    rows = []
    for _ in range(count):
        kind = rng.choices(names, weights)[0]
        rows.append({"messages": conversation(rng, src, kind), "kind": kind})
    return rows


def write(path: Path = DEFAULT_OUT, count: int = COUNT) -> Path:
    rows = build(count)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--count", type=int, default=COUNT)
    args = parser.parse_args()
    path = write(args.out, args.count)
    print(f"{args.count} conversations -> {path} ({path.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
