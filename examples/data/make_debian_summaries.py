#!/usr/bin/env python3
"""Build debian_summaries.jsonl: Debian package descriptions and their one-line synopses.

Source: the dpkg database of this machine, ``/var/lib/dpkg/status``. Each installed package's
``Description`` field holds the synopsis (its first line, at most ~80 characters) and the long
description below it, both written by the package's Debian maintainer; nothing is generated. The
synopsis summarises the long description, so the pair is a small, real, abstractive summarisation
task. (apt's own index on this machine, ``apt-cache dumpavail``, carries only synopses: its long
descriptions live in ``Translation-en`` files that this image does not download.)

Each output line is ``{"document": <long description>, "summary": <synopsis>, "package": <name>}``:

* ``document`` -- the long description, its lines joined with single spaces (the ``.`` lines that
  separate paragraphs are dropped), whitespace normalised;
* ``summary``  -- the synopsis, whitespace normalised;
* ``package``  -- the package name, for reference only.

Filtering, in this order:

1. only packages whose status is "install ok installed" and that have a long description;
2. drop descriptions containing "transitional" or "dummy package" (case-insensitive);
3. drop documents under MIN_WORDS or over MAX_WORDS words and synopses under 2 words;
4. one package per source package, so that near-identical descriptions (libfoo1 and libfoo-dev)
   cannot land in both the training and the test split: the package named like its source, else
   the first by name;
5. drop repeated documents or synopses (compared case-insensitively); the first package by name
   keeps them.

The rows are sorted by package name and shuffled with ``random.Random(SEED)``, so the same dpkg
database always gives the same file; another machine's set of installed packages gives another.

Usage:
    python examples/data/make_debian_summaries.py [--status PATH] [--out PATH]
"""

import argparse
import json
import os
import random
import re
import sys

SEED = 17
MIN_WORDS = 15
MAX_WORDS = 200

DROP_RE = re.compile(r"\btransitional\b|\bdummy package\b", re.IGNORECASE)
HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "debian_summaries.jsonl")
DEFAULT_STATUS = "/var/lib/dpkg/status"

# The dpkg status file has the same stanza format as the apt index the sections data set reads.
sys.path.insert(0, HERE)
from make_debian_sections import normalise, parse_records  # noqa: E402


def document_of(lines):
    """The long description: continuation lines without their leading space and without '.' separators."""
    kept = [line[1:] if line.startswith(" ") else line for line in lines]
    return normalise(" ".join(line for line in kept if line.strip() != "."))


def build_rows(status_text):
    candidates = []  # (source, package, document, summary)
    for rec in parse_records(status_text):
        if rec.get("Status", [""])[0] != "install ok installed" or len(rec.get("Description", [])) < 2:
            continue
        package = rec["Package"][0]
        source = rec.get("Source", [package])[0].split()[0]  # "Source: foo (1.2-3)" names a version
        summary, document = normalise(rec["Description"][0]), document_of(rec["Description"][1:])
        if DROP_RE.search(summary) or DROP_RE.search(document):
            continue
        if not MIN_WORDS <= len(document.split()) <= MAX_WORDS or len(summary.split()) < 2:
            continue
        candidates.append((source, package, document, summary))

    by_source = {}
    for source, package, document, summary in sorted(candidates):
        chosen = by_source.get(source)
        if chosen is None or (package == source and chosen[1] != source):
            by_source[source] = (source, package, document, summary)

    rows, seen_documents, seen_summaries = [], set(), set()
    for _, package, document, summary in sorted(by_source.values(), key=lambda r: r[1]):
        if document.casefold() in seen_documents or summary.casefold() in seen_summaries:
            continue
        seen_documents.add(document.casefold())
        seen_summaries.add(summary.casefold())
        rows.append({"document": document, "summary": summary, "package": package})
    random.Random(SEED).shuffle(rows)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--status", default=DEFAULT_STATUS, help="dpkg status file")
    parser.add_argument("--out", default=DEFAULT_OUT, help="output JSONL path")
    args = parser.parse_args()
    with open(args.status, encoding="utf-8", errors="replace") as handle:
        rows = build_rows(handle.read())
    with open(args.out, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    words = sorted(len(r["document"].split()) for r in rows)
    summary_words = sorted(len(r["summary"].split()) for r in rows)
    print("wrote %d rows to %s" % (len(rows), args.out))
    print("document words: median %d, max %d; summary words: median %d, max %d"
          % (words[len(words) // 2], words[-1], summary_words[len(summary_words) // 2], summary_words[-1]))


if __name__ == "__main__":
    main()
