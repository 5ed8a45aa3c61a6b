#!/usr/bin/env python3
"""Build debian_sections.csv: Debian package descriptions labelled by archive section.

Source: the Debian package index that apt knows about on this machine, read with
``apt-cache dumpavail``. The text is written by Debian maintainers; nothing is
generated.

For every package record:

* ``text``    -- the short description (the first line of ``Description``) plus the
  first paragraph of the long description when the index has one, whitespace
  normalised and cut at a word boundary to at most MAX_CHARS characters. The
  package name is never part of the text.
* ``label``   -- the ``Section`` field with any ``contrib/``, ``non-free/`` or
  ``non-free-firmware/`` prefix removed.
* ``package`` -- the package name (kept for reference, not meant as a feature).

Filtering, in this order:

1. keep only packages whose label is in SECTIONS;
2. drop packages whose description (short or long) contains the word
   "transitional" or the phrase "dummy package" (case-insensitive);
3. drop duplicate texts (compared case-insensitively): a text that occurs in more
   than one of the chosen sections is dropped everywhere, since its label is
   ambiguous; within one section only the first package (by name) keeps it.

Then, with one ``random.Random(13)``: for each section (in the order of SECTIONS)
sort the remaining packages by name and draw PER_SECTION of them with
``rng.sample``; finally shuffle all rows with the same generator. The output
only depends on the package index, so the same index always gives the same file.

If ``apt-cache dumpavail`` prints nothing, run ``apt-get update`` once first.

Usage:
    python examples/data/make_debian_sections.py [--out PATH]
"""

import argparse
import csv
import os
import random
import re
import subprocess
import sys

# Chosen from the bookworm main index by package counts (each has 200+ packages)
# and so that a bag-of-words baseline is neither trivial nor hopeless.
SECTIONS = ["database", "editors", "games", "graphics", "mail", "net", "science", "sound"]
PER_SECTION = 150
SEED = 13
MAX_CHARS = 300

SECTION_PREFIXES = ("contrib/", "non-free/", "non-free-firmware/")
DROP_RE = re.compile(r"\btransitional\b|\bdummy package\b", re.IGNORECASE)

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "debian_sections.csv")


def read_index():
    """Return the output of ``apt-cache dumpavail`` as text."""
    try:
        proc = subprocess.run(
            ["apt-cache", "dumpavail"],
            check=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    except FileNotFoundError:
        sys.exit("apt-cache not found: this script needs a Debian-based system")
    except subprocess.CalledProcessError as err:
        sys.exit("apt-cache dumpavail failed: " + err.stderr.decode("utf-8", "replace"))
    text = proc.stdout.decode("utf-8", "replace")
    if not text.strip():
        sys.exit("apt-cache dumpavail printed nothing; run `apt-get update` first")
    return text


def parse_records(text):
    """Yield one dict per package record (field name -> list of raw lines)."""
    for block in re.split(r"\n\s*\n", text):
        fields = {}
        current = None
        for line in block.split("\n"):
            if not line:
                continue
            if line[0] in " \t":
                if current is not None:
                    fields[current].append(line)
                continue
            name, sep, value = line.partition(":")
            if not sep:
                continue
            current = name.strip()
            fields[current] = [value.strip()]
        if "Package" in fields:
            yield fields


def normalise(s):
    return " ".join(s.split())


def cap(s, limit=MAX_CHARS):
    """Cut s to at most limit characters, at a word boundary when possible."""
    if len(s) <= limit:
        return s
    cut = s[:limit]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:-")


def description_parts(lines):
    """Return (short, first paragraph of the long description) from Description lines."""
    short = lines[0]
    para = []
    for line in lines[1:]:
        body = line[1:] if line.startswith(" ") else line.lstrip()
        if body.strip() == ".":  # paragraph separator
            if para:
                break
            continue
        para.append(body)
    return short, " ".join(para)


def label_of(section):
    for prefix in SECTION_PREFIXES:
        if section.startswith(prefix):
            return section[len(prefix):]
    return section


def build_rows(index_text, sections=SECTIONS, per_section=PER_SECTION, seed=SEED):
    wanted = set(sections)
    candidates = []  # (package, label, text)
    seen_packages = set()
    for rec in parse_records(index_text):
        package = rec["Package"][0]
        if package in seen_packages or "Description" not in rec or "Section" not in rec:
            continue
        label = label_of(rec["Section"][0])
        if label not in wanted:
            continue
        seen_packages.add(package)
        short, long_para = description_parts(rec["Description"])
        if DROP_RE.search(short) or DROP_RE.search(" ".join(rec["Description"])):
            continue
        text = normalise(short)
        if long_para:
            text = text + " " + normalise(long_para)
        text = cap(text)
        if text:
            candidates.append((package, label, text))

    # Duplicate texts: ambiguous across sections -> drop all; within a section keep first.
    candidates.sort()
    labels_for_text = {}
    for package, label, text in candidates:
        labels_for_text.setdefault(text.casefold(), set()).add(label)
    by_section = {s: [] for s in sections}
    kept_keys = set()
    for package, label, text in candidates:
        key = text.casefold()
        if len(labels_for_text[key]) > 1 or key in kept_keys:
            continue
        kept_keys.add(key)
        by_section[label].append((package, label, text))

    rng = random.Random(seed)
    rows = []
    for section in sections:
        pool = sorted(by_section[section])
        if len(pool) < per_section:
            sys.exit("section %r has only %d usable packages (need %d)"
                     % (section, len(pool), per_section))
        rows.extend(rng.sample(pool, per_section))
    rng.shuffle(rows)
    return rows


def write_csv(rows, path):
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label", "package"])
        for package, label, text in rows:
            writer.writerow([text, label, package])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=DEFAULT_OUT, help="output CSV path")
    args = parser.parse_args()
    rows = build_rows(read_index())
    write_csv(rows, args.out)
    counts = {}
    for _, label, _ in rows:
        counts[label] = counts.get(label, 0) + 1
    print("wrote %d rows to %s" % (len(rows), args.out))
    for label in sorted(counts):
        print("  %-10s %d" % (label, counts[label]))


if __name__ == "__main__":
    main()
