#!/usr/bin/env python3
"""Build copyright_entities.jsonl: real copyright statements tagged with YEAR, HOLDER, EMAIL and LICENSE.

Source: the machine-readable ``copyright`` files (DEP-5, "copyright-format/1.0") that Debian packages
install under ``/usr/share/doc/<package>/copyright``. Only packages of Priority ``required``,
``important`` or ``standard`` are read: the base system that every Debian installation has, so the
input does not depend on what else a machine happens to have installed. The text is written by
Debian maintainers and upstream authors; nothing is generated.

Each ``Files:`` paragraph that has a ``Copyright:`` and a ``License:`` field becomes one record whose
text is those two fields as the file writes them (whitespace inside a line normalised, continuation
lines indented by one space, as DEP-5 does)::

    Copyright: 2008 Karel Zak <kzak@redhat.com>
     1999-2008 by Theodore Ts'o
    License: LGPL

The entities come from the structure of the fields, not from a model or a person:

* ``YEAR``    -- the years of one statement, as written (``1999-2008``, ``1989, 1990, 1993``);
* ``HOLDER``  -- the name after the years (``Karel Zak``, ``Free Software Foundation, Inc.``);
* ``EMAIL``   -- the address in ``<...>`` after the holder, without the brackets;
* ``LICENSE`` -- each licence of the ``License:`` short name; ``GPL-1+ or Artistic`` gives two,
  ``GPL-3+ with Bison exception`` one (the exception belongs to the licence).

Filtering, in this order (a paragraph is kept whole or dropped whole, so no holder is ever left
untagged inside a kept text):

1. every line of the Copyright field must match STATEMENT: an optional ``Copyright``/``(C)``/``©``,
   years, an optional ``by``, the holder, an optional ``<email>``, an optional "All rights reserved.";
   lines without years (a bare name) are dropped with their paragraph, since the year is what makes a
   line a dated copyright statement;
2. a holder that lists several parties (a comma, ``and``, ``&`` or ``;``, except the comma before a
   company suffix such as ``, Inc.``) or holds a URL is dropped: one span could not say where one
   party ends;
3. a holder cut off in the source (TRUNCATED: findutils wraps "Free Software Foundation" after
   "Free" and never continues it) drops its paragraph;
4. at most MAX_LINES statements per paragraph;
5. a text seen before (the same paragraph in two packages) is kept once.

Packages are read in name order and the records shuffled with ``random.Random(SEED)``, so the same
package versions always give the same file. The output was built on Debian 12.11 (bookworm).

Usage:
    python examples/data/make_copyright_entities.py [--out PATH]
"""

import argparse
import json
import os
import random
import re
import subprocess
import sys

PRIORITIES = ("required", "important", "standard")
MAX_LINES = 8
SEED = 11

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "copyright_entities.jsonl")
DOC = "/usr/share/doc"

YEAR = r"(?:19|20)\d\d"
# A year list: 1999-2008 / 2002-2003, 2005, 2011-2012 / 2000,2001 / 2010-present.
YEARS = rf"{YEAR}(?:\s*(?:-|–|,)\s*(?:{YEAR}|present))*"
STATEMENT = re.compile(
    r"^(?:Copyright\s*)?(?:\([cC]\)\s*|©\s*)?"
    rf"(?P<years>{YEARS})\s*,?\s*(?:by\s+)?"
    r"(?P<holder>[^\W\d_][^<>()@\d]*?)\s*,?\s*"
    r"(?:<(?P<email>[^<>\s]+@[^<>\s]+)>)?"
    r"\s*\.?\s*(?:All [Rr]ights [Rr]eserved\.?)?\s*$"
)
COMPANY = re.compile(r",\s*(?:Inc|Ltd|LLC|GmbH|Corp|Co|AG|Oy|AB|Limited|Incorporated)\b\.?")
SEVERAL = re.compile(r",| and | & |;")
# A period that ends an abbreviation belongs to the name ("Inc.", "Ltd.", "Jeffrey E."); others end the sentence.
ABBREVIATION = re.compile(r"(?:\b(?:Inc|Ltd|Co|Corp|Jr|Sr|Bros)|\b[A-Z])\.$")
LICENCE_SPLIT = re.compile(r"\s+(?:and|or)\s+|\s*,\s*")
# Holders the source cut off: findutils' generated copyright file ends lines with "..., Free".
TRUNCATED = ("Free", "Free Software")


def installed_base_packages():
    """Names of installed packages of the base priorities, sorted."""
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Package}\t${Priority}\n"], check=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE).stdout.decode("utf-8", "replace")
    except (FileNotFoundError, subprocess.CalledProcessError) as err:
        sys.exit("dpkg-query failed (this script needs a Debian-based system): %s" % err)
    names = set()
    for line in out.splitlines():
        name, _, priority = line.partition("\t")
        if priority.strip() in PRIORITIES:
            names.add(name.split(":")[0])
    return sorted(names)


def paragraphs(text):
    """Yield each deb822 paragraph as a dict: field name -> list of lines (first line's value, then continuations)."""
    for block in re.split(r"\n[ \t]*\n", text):
        fields = {}
        current = None
        for line in block.split("\n"):
            if not line.strip() or line.startswith("#"):
                continue
            if line[0] in " \t":
                if current is not None:
                    fields[current].append(line.strip())
                continue
            name, sep, value = line.partition(":")
            if not sep:
                fields = {}
                break
            current = name.strip()
            fields[current] = [value.strip()]
        if fields:
            yield fields


def holder_span(line, match):
    """(start, end) of the holder in line: with the period of "Inc.", without one that ends the sentence."""
    start, end = match.span("holder")
    holder = line[start:end].rstrip(" ,")
    # STATEMENT leaves a final period outside the holder; it comes back when it ends an abbreviation.
    if line[start + len(holder):start + len(holder) + 1] == "." and ABBREVIATION.search(holder + "."):
        holder += "."
    return start, start + len(holder)


def statement_entities(line):
    """Entities (start, end, label) of one copyright line, or None when the line is not one clean statement."""
    match = STATEMENT.match(line)
    if not match:
        return None
    holder = match.group("holder")
    if SEVERAL.search(COMPANY.sub("", holder)) or "://" in holder or "www." in holder:
        return None
    start, end = holder_span(line, match)
    if end <= start or line[start:end] in TRUNCATED:
        return None
    entities = [(match.start("years"), match.end("years"), "YEAR"), (start, end, "HOLDER")]
    if match.group("email"):
        entities.append((match.start("email"), match.end("email"), "EMAIL"))
    return entities


def licence_entities(value):
    """Entities (start, end, "LICENSE") of a License short name such as 'GPL-2+ or Artistic'."""
    entities, position = [], 0
    for piece in LICENCE_SPLIT.split(value):
        if not piece:
            continue
        start = value.index(piece, position)
        entities.append((start, start + len(piece), "LICENSE"))
        position = start + len(piece)
    return entities


def record_of(fields):
    """One record {text, entities} from a Files paragraph, or None when it does not pass the filters."""
    lines = [" ".join(line.split()) for line in fields["Copyright"] if line.strip() and line.strip() != "."]
    licence = " ".join(fields["License"][0].split())
    if not lines or not licence or len(lines) > MAX_LINES:
        return None
    text, entities = "", []
    for i, line in enumerate(lines):
        found = statement_entities(line)
        if found is None:
            return None
        prefix = "Copyright: " if i == 0 else "\n "
        offset = len(text) + len(prefix)
        text += prefix + line
        entities += [(offset + s, offset + e, label) for s, e, label in found]
    text += "\nLicense: "
    entities += [(len(text) + s, len(text) + e, label) for s, e, label in licence_entities(licence)]
    text += licence
    return {"text": text, "entities": [{"start": s, "end": e, "label": label} for s, e, label in entities]}


def build_records(packages, doc=DOC, seed=SEED):
    records, seen = [], set()
    for package in packages:
        path = os.path.join(doc, package, "copyright")
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
        if "copyright-format" not in text.split("\n", 1)[0]:
            continue  # not machine-readable: no fields to take labels from
        for fields in paragraphs(text):
            if not {"Files", "Copyright", "License"} <= set(fields):
                continue
            record = record_of(fields)
            if record is None or record["text"] in seen:
                continue
            seen.add(record["text"])
            record["package"] = package
            records.append(record)
    random.Random(seed).shuffle(records)
    return records


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=DEFAULT_OUT, help="output JSONL path")
    args = parser.parse_args()
    records = build_records(installed_base_packages())
    with open(args.out, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    counts = {}
    for record in records:
        for entity in record["entities"]:
            counts[entity["label"]] = counts.get(entity["label"], 0) + 1
    print("wrote %d records from %d packages to %s" % (len(records), len({r["package"] for r in records}), args.out))
    for label in sorted(counts):
        print("  %-8s %d" % (label, counts[label]))


if __name__ == "__main__":
    main()
