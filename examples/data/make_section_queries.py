#!/usr/bin/env python3
"""Build section_queries.jsonl: a reranking set (query, passage, relevance) from debian_sections.csv.

Passages are the real Debian package descriptions of debian_sections.csv (see make_debian_sections.py).
Queries are eight short searches, one per archive section, written here (QUERIES). Each of PER_SECTION
packages per section becomes two records: with its own section's query (relevance 1.0) and with the query
of another section drawn at random (relevance 0.0). One `random.Random(23)`; the output depends only on
debian_sections.csv.
"""

import csv
import json
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))
PER_SECTION = 40
QUERIES = {
    "database": "database server or client",
    "editors": "text editor for writing code",
    "games": "a game to play",
    "graphics": "image editing and viewing",
    "mail": "read and send email",
    "net": "network tools and servers",
    "science": "scientific computing and research",
    "sound": "audio playback and recording",
}


def main():
    rows = list(csv.DictReader(open(os.path.join(HERE, "debian_sections.csv"), encoding="utf-8")))
    rng = random.Random(23)
    records = []
    for section, query in QUERIES.items():
        packages = sorted((r for r in rows if r["label"] == section), key=lambda r: r["package"])[:PER_SECTION]
        for row in packages:
            other = rng.choice([s for s in QUERIES if s != section])
            records.append({"query": query, "passage": row["text"], "relevance": 1.0, "package": row["package"]})
            records.append({"query": QUERIES[other], "passage": row["text"], "relevance": 0.0, "package": row["package"]})
    rng.shuffle(records)
    with open(os.path.join(HERE, "section_queries.jsonl"), "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    print(f"wrote {len(records)} records")


if __name__ == "__main__":
    main()
