#!/usr/bin/env python3
"""End-to-end tokenizer figures for docs/perf.md: the `kiln` binary's
`tokenizer encode` (process start, loading the rank file, reading the text,
encoding, writing and fsyncing the .bin shard) against tiktoken's
single-thread `encode_ordinary` of the same text (in process, rank file
already loaded), interleaved in one run, best of N rounds. Wall time and
CPU time are both reported: on a loaded machine CPU time is the steadier
per-thread figure. kiln's ids are checked equal to tiktoken's.

  python3 benches/peers/tokenizer_e2e.py --kiln target/release/kiln --text FILE
      [--rounds 3] [--encodings cl100k_base,o200k_base] [--threads 1,2]

Needs `pip install tiktoken` (see tiktoken_encode.py for the offline rank
files). kiln runs with `--specials text`: special-token text is plain text,
as in `encode_ordinary`.
"""
import argparse
import array
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tiktoken_encode import assets_dir, encoding  # noqa: E402

HEADER_BYTES = 256 * 4


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_kiln(kiln, name, text, out, threads):
    cmd = [
        kiln, "tokenizer", "encode",
        "--tokenizer", os.path.join(assets_dir(), name + ".tiktoken"),
        "--input", text, "--output", out, "--specials", "text",
        "--threads", str(threads),
    ]
    cpu0, t0 = children_cpu(), time.perf_counter()
    subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0, children_cpu() - cpu0


def read_shard(path):
    with open(path, "rb") as f:
        data = f.read()
    header = array.array("i", data[:HEADER_BYTES])
    version, count = header[1], header[2]
    ids = array.array("H" if version == 1 else "I", data[HEADER_BYTES:])
    assert len(ids) == count, f"{path}: header says {count} tokens, file holds {len(ids)}"
    return ids


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kiln", required=True)
    ap.add_argument("--text", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--encodings", default="cl100k_base,o200k_base")
    ap.add_argument("--threads", default="1,2")
    a = ap.parse_args()
    with open(a.text, encoding="utf-8") as f:
        text = f.read()
    nbytes = len(text.encode("utf-8"))
    threads = [int(t) for t in a.threads.split(",")]
    names = a.encodings.split(",")
    encs = {n: encoding(n) for n in names}
    best = {}

    def keep(key, wall, cpu):
        w, c = best.get(key, (float("inf"), float("inf")))
        best[key] = (min(w, wall), min(c, cpu))

    tmp = tempfile.mkdtemp(prefix="kiln-tok-e2e-")
    load = os.getloadavg()
    for _ in range(a.rounds):
        for n in names:
            for t in threads:
                out = os.path.join(tmp, f"{n}-{t}.bin")
                keep((n, f"kiln {t}t"), *run_kiln(a.kiln, n, a.text, out, t))
            cpu0, t0 = time.process_time(), time.perf_counter()
            ids = encs[n].encode_ordinary(text)
            keep((n, "tiktoken 1t"), time.perf_counter() - t0, time.process_time() - cpu0)
            for t in threads:
                got = read_shard(os.path.join(tmp, f"{n}-{t}.bin"))
                if list(got) != ids:
                    first = next(i for i, (x, y) in enumerate(zip(got, ids)) if x != y) \
                        if len(got) == len(ids) else min(len(got), len(ids))
                    sys.exit(f"{n}, {t} threads: kiln's ids differ from tiktoken's at token {first}")
    rows = []
    for n in names:
        tw, tc = best[(n, "tiktoken 1t")]
        for t in threads:
            kw, kc = best[(n, f"kiln {t}t")]
            rows.append({
                "encoding": n, "kiln_threads": t, "bytes": nbytes,
                "kiln_wall_mb_s": nbytes / 1e6 / kw, "kiln_cpu_mb_s": nbytes / 1e6 / kc,
                "tiktoken_wall_mb_s": nbytes / 1e6 / tw, "tiktoken_cpu_mb_s": nbytes / 1e6 / tc,
                "ratio_wall": tw / kw, "ratio_cpu_per_thread": tc / kc,
            })
    print(json.dumps({"load_avg_before": load, "load_avg_after": os.getloadavg(),
                      "rounds": a.rounds, "rows": rows}, indent=1))
    print("\n| encoding | kiln threads | kiln MB/s wall | tiktoken MB/s wall | wall ratio | kiln MB/s CPU | tiktoken MB/s CPU | CPU ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['encoding']} | {r['kiln_threads']} | {r['kiln_wall_mb_s']:.1f} | {r['tiktoken_wall_mb_s']:.1f} "
              f"| {r['ratio_wall']:.2f}x | {r['kiln_cpu_mb_s']:.1f} | {r['tiktoken_cpu_mb_s']:.1f} | {r['ratio_cpu_per_thread']:.2f}x |")


if __name__ == "__main__":
    main()
