"""Build examples/data/licence_paragraphs.jsonl: real legal text for continued pre-training.

Source: the licence texts Debian ships in /usr/share/common-licenses (package base-files): GPL,
LGPL, GFDL, MPL, Apache, Artistic, BSD, CC0. Each paragraph (text between blank lines, whitespace
folded) of at least 80 characters becomes one {"text", "source"} record, in file order; a paragraph
several licences share (the GPL's and LGPL's common clauses) is kept once, at its first licence, since a
repeat would land in train and test both (the data report warns of such leakage). Stdlib only;
the output is deterministic for a given base-files version.

    python examples/data/make_licence_paragraphs.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path

SOURCE = Path("/usr/share/common-licenses")
TARGET = Path(__file__).with_name("licence_paragraphs.jsonl")
MIN_CHARS = 80


def paragraphs(text: str) -> list[str]:
    blocks = re.split(r"\n\s*\n", text)
    return [" ".join(block.split()) for block in blocks if len(" ".join(block.split())) >= MIN_CHARS]


def main() -> None:
    rows = []
    for path in sorted(SOURCE.iterdir()):
        if path.is_symlink() or not path.is_file():
            continue  # GPL -> GPL-3 and the like: each text once
        rows += [{"text": p, "source": path.name} for p in paragraphs(path.read_text(encoding="utf-8", errors="replace"))]
    first = {}
    for row in rows:
        first.setdefault(row["text"], row)  # the first licence that has the paragraph keeps it
    rows = list(first.values())
    TARGET.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"{len(rows)} paragraphs from {len({r['source'] for r in rows})} licences -> {TARGET}")


if __name__ == "__main__":
    main()
