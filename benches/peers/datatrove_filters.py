#!/usr/bin/env python3
"""Peer for benches/benches/data.rs: runs datatrove's FineWeb filters and
MinHash signatures on the same documents kiln filters, and reports time and
per-document keep/drop decisions as JSON on stdout.

  python3 datatrove_filters.py DOCS.jsonl            # {"text": ...} per line
  python3 datatrove_filters.py --minhash-params      # prints seed-1 constants

Needs `pip install 'datatrove[processing]' spacy` (runs offline).
"""
import json
import sys
import time


def load(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


def main():
    if sys.argv[1:] == ["--minhash-params"]:
        import numpy as np
        p = np.uint64((1 << 61) - 1)
        gen = np.random.RandomState(1)
        a = gen.randint(1, p, dtype=np.uint64, size=(1, 112))[0]
        b = gen.randint(0, p, dtype=np.uint64, size=(1, 112))[0]
        print(json.dumps({"a": [int(x) for x in a], "b": [int(x) for x in b]}))
        return
    import datatrove
    from datatrove.data import Document
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature

    texts = load(sys.argv[1])
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    filters = {
        "gopher_repetition": GopherRepetitionFilter(),
        "gopher_quality": GopherQualityFilter(),
        "c4": C4QualityFilter(filter_no_terminal_punct=False),
        "fineweb": FineWebQualityFilter(),
    }
    # Warm up spaCy (its first call loads the language data).
    GopherQualityFilter().filter(Document(text="warm up the tokenizer.", id="w"))
    out = {"datatrove": datatrove.__version__ if hasattr(datatrove, "__version__") else "?",
           "docs": len(texts), "bytes": nbytes, "filters": {}}
    for name, f in filters.items():
        keep, reasons = [], []
        t0 = time.perf_counter()
        for i, t in enumerate(texts):
            r = f.filter(Document(text=t, id=str(i)))
            ok = r if isinstance(r, bool) else r[0]
            keep.append(bool(ok))
            reasons.append(None if ok else (r[1] if isinstance(r, tuple) else ""))
        out["filters"][name] = {"seconds": time.perf_counter() - t0, "keep": keep, "reasons": reasons}
    sig = MinhashDedupSignature(output_folder="/tmp/kiln-datatrove-minhash", config=MinhashConfig())
    t0 = time.perf_counter()
    for t in texts:
        sh = sig.get_shingles(t)
        if sh.size:
            sig.get_signature(sh)
    out["filters"]["minhash_signature"] = {"seconds": time.perf_counter() - t0}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
