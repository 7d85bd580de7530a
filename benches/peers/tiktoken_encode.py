#!/usr/bin/env python3
"""Peer for the end-to-end tokenizer figures (benches/benches/tokenizer.rs
and docs/perf.md): OpenAI's tiktoken encodes a text file with
`encode_ordinary` on one thread, and reports the best of N passes as JSON.

  python3 tiktoken_encode.py ENCODING TEXT_FILE [--reps N] [--ids OUT.u32]

ENCODING is cl100k_base or o200k_base; the rank files are read from
tiktoken-rs's assets in the cargo registry (tiktoken itself would download
them; this runs offline). `--ids` writes the ids as little-endian u32 so a
caller can check kiln's ids against them. Needs `pip install tiktoken`.
"""
import glob
import json
import os
import sys
import time


def assets_dir():
    home = os.environ.get("CARGO_HOME") or os.path.expanduser("~/.cargo")
    hits = glob.glob(os.path.join(home, "registry/src/*/tiktoken-rs-0.12.1/assets"))
    if not hits:
        sys.exit("tiktoken-rs 0.12.1 assets not found under CARGO_HOME; run cargo fetch")
    return hits[0]


def encoding(name):
    import tiktoken
    import tiktoken_ext.openai_public as public
    from tiktoken.load import load_tiktoken_bpe

    local = os.path.join(assets_dir(), name + ".tiktoken")
    # tiktoken's constructors fetch the rank file by URL; point them at the
    # same file on disk (its expected hash is still checked).
    public.load_tiktoken_bpe = lambda _url, expected_hash=None: load_tiktoken_bpe(
        local, expected_hash=expected_hash
    )
    return tiktoken.Encoding(**getattr(public, name)())


def main():
    args = sys.argv[1:]
    reps, ids_out = 3, None
    if "--reps" in args:
        i = args.index("--reps")
        reps = int(args[i + 1])
        del args[i : i + 2]
    if "--ids" in args:
        i = args.index("--ids")
        ids_out = args[i + 1]
        del args[i : i + 2]
    if len(args) != 2:
        sys.exit(__doc__)
    name, path = args
    enc = encoding(name)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    nbytes = len(text.encode("utf-8"))
    best, ids = None, None
    for _ in range(reps):
        t = time.perf_counter()
        ids = enc.encode_ordinary(text)
        dt = time.perf_counter() - t
        best = dt if best is None else min(best, dt)
    if ids_out:
        import array

        a = array.array("I", ids)
        if sys.byteorder != "little":
            a.byteswap()
        with open(ids_out, "wb") as f:
            a.tofile(f)
    print(
        json.dumps(
            {
                "encoding": name,
                "tiktoken": __import__("tiktoken").__version__,
                "bytes": nbytes,
                "tokens": len(ids),
                "best_s": best,
                "mb_per_s": nbytes / 1e6 / best,
            }
        )
    )


if __name__ == "__main__":
    main()
