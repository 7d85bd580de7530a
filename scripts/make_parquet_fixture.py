#!/usr/bin/env python3
"""Writes crates/kiln-data/tests/fixtures/fineweb_sample.parquet: a tiny file
with FineWeb's columns, written by pyarrow (snappy, 2 rows per row group) so
the Rust reader is tested on a file from the tool FineWeb itself used.

    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install pyarrow
    /tmp/venv/bin/python scripts/make_parquet_fixture.py
"""
import os
import random

import pyarrow as pa
import pyarrow.parquet as pq

WORDS = ("river people morning garden window letter market teacher winter story village "
         "mountain kitchen friend music evening doctor bridge forest child table summer road "
         "house water light paper city answer question family country history language "
         "picture journey walked carried opened remembered wrote found watched built painted "
         "quiet bright old small famous careful gentle early ancient warm").split()
GLUE = "the of and to with that in a was from by on".split()


def english(seed, sentences=10):
    rng = random.Random(seed)
    out = []
    for _ in range(sentences):
        n = 9 + rng.randrange(7)
        w = [rng.choice(GLUE) if i % 2 else rng.choice(WORDS) for i in range(n)]
        s = " ".join(w)
        out.append(s[0].upper() + s[1:] + ".")
    return "\n".join(out)


def main():
    good = [english(s) for s in (1, 2, 3)]
    rows = [
        ("<urn:uuid:a1>", good[0]),
        ("<urn:uuid:a2>", good[1]),
        ("<urn:uuid:a3>", None),  # null text: reported as bad input
        ("<urn:uuid:a4>", good[0]),  # exact duplicate of the first
        ("<urn:uuid:a5>", "Too short to keep."),
        ("<urn:uuid:a6>", good[2]),
    ]
    n = len(rows)
    table = pa.table({
        "text": pa.array([t for _, t in rows], pa.string()),
        "id": pa.array([i for i, _ in rows], pa.string()),
        "dump": pa.array(["CC-MAIN-2024-10"] * n, pa.string()),
        "url": pa.array([f"https://example.com/{k}" for k in range(n)], pa.string()),
        "date": pa.array(["2024-02-21T00:00:00Z"] * n, pa.string()),
        "language": pa.array(["en"] * n, pa.string()),
        "language_score": pa.array([0.9 + k / 100 for k in range(n)], pa.float64()),
        "token_count": pa.array([100 + k for k in range(n)], pa.int64()),
    })
    out = os.path.join(os.path.dirname(__file__), "..", "crates", "kiln-data", "tests",
                       "fixtures", "fineweb_sample.parquet")
    pq.write_table(table, out, row_group_size=2, compression="snappy")
    print(out, os.path.getsize(out), "bytes")


if __name__ == "__main__":
    main()
