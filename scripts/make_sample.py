"""Rebuild the bundled MedQuAD sample from a MedQuAD JSONL file (whole documents, seeded).

Usage: python scripts/make_sample.py PATH/medquad_visible.jsonl.gz  (the MedQuAD question/answer pairs, one JSON per line)
"""

import gzip
import json
import random
import sys
from collections import defaultdict

TARGET_ROWS = 3000
FIELDS = ("uid", "source", "doc_id", "url", "focus", "cuis", "qtype", "question")

rows = [json.loads(line) for line in gzip.open(sys.argv[1], "rt", encoding="utf-8")]
by_doc = defaultdict(list)
for row in rows:
    by_doc[row["doc_id"]].append(row)
docs = sorted(by_doc)
random.Random(2026).shuffle(docs)
sample = []
for doc in docs:
    if len(sample) >= TARGET_ROWS:
        break
    sample.extend(by_doc[doc])
# gzip mtime=0 keeps the file byte-identical across rebuilds.
with open("medembed/resources/medquad_sample.jsonl.gz", "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as out:
    for row in sample:
        record = {name: row[name] for name in FIELDS}
        record["answer"] = row["answer_clean"]
        out.write((json.dumps(record, ensure_ascii=False) + "\n").encode())
print(f"{len(sample)} rows from {len(set(r['doc_id'] for r in sample))} documents")
