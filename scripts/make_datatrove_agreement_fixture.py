#!/usr/bin/env python3
"""Builds crates/kiln-data/tests/fixtures/datatrove_agreement.jsonl.zst: about
1,200 real documents of technical and web-like text, plus injected junk and
duplicates, each with datatrove's decision under the four FineWeb-recipe
quality filters. tests/datatrove_agreement.rs holds kiln to it.

Technical text (permissively licensed only):
  * manual pages under /usr/share/man/man{1,3,5,7,8} whose Debian package's
    copyright file (DEP-5) licenses them Expat/MIT, BSD, ISC, Apache,
    Artistic (Perl's dual licence), PSF, X11 or zlib; rendered with `man -l`;
  * package READMEs: the description in site-packages' *.dist-info/METADATA
    of packages whose licence metadata is MIT/BSD/Apache/PSF/ISC;
  * licence texts from those dist-info folders (MIT, BSD, Apache, PSF);
  * docstrings of the Python standard library (PSF licence).
Web-like prose: documents of kiln's embedded corpus (data/corpus/raw.jsonl.zst,
sources and licences in data/corpus/NOTICE).
Junk: generated here (navigation menus, keyword spam, tables, lorem ipsum,
cookie notices, code, bullet lists); duplicates: exact copies and
paragraph-repeated variants of other documents.

Texts are normalised as `kiln data curate` does before its filters (NFC,
line endings, control characters, spaces, trailing whitespace, blank lines)
so both sides judge the text kiln's filters see. Long documents are cut at
a line boundary after 20,000 characters.

    pip install 'datatrove[processing]' spacy
    python3 scripts/make_datatrove_agreement_fixture.py

Each output line: {"id", "kind" (technical|web|junk|duplicate), "source",
"text", "words" (len(split_into_words(text))), "sentences" (sum of
len(split_into_sentences(line)) over the stripped non-empty lines), and
"datatrove": {filter: null (kept) or the reason it gave}}.
Deterministic for the same machine packages (fixed seed, sorted inputs).
"""
import glob
import gzip
import importlib
import inspect
import json
import os
import pkgutil
import random
import re
import subprocess
import sys
import unicodedata

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "crates", "kiln-data", "tests", "fixtures", "datatrove_agreement.jsonl.zst")
MAX_CHARS = 20_000
rng = random.Random(20261201)

PERMISSIVE = re.compile(r"\b(Expat|MIT|BSD|ISC|Apache|Artistic|PSF|Python|X11|Zlib|public[- ]domain)", re.I)
COPYLEFT = re.compile(r"\b(L?GPL|AGPL|MPL|EPL|CDDL|CC-BY-SA|GFDL)", re.I)


# ------------------------------------------------------------ normalisation
SPACES = {"\u00a0", "\u202f", "\u205f", "\u3000"} | {chr(c) for c in range(0x2000, 0x200B)}


def normalise(text):
    """kiln_data::normalize::normalize, in Python."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    out = []
    for c in text:
        if c in SPACES:
            out.append(" ")
        elif c in "\u200b\ufeff\u00ad":
            continue
        elif unicodedata.category(c) == "Cc" and c not in "\n\t":
            continue
        elif c.isspace() and c not in "\n\t":
            out.append(" ")
        else:
            out.append(c)
    lines = [l.rstrip(" \t") for l in "".join(out).split("\n")]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")
    return unicodedata.normalize("NFC", text)


def cut(text):
    if len(text) <= MAX_CHARS:
        return text
    end = text.rfind("\n", 0, MAX_CHARS)
    return text[: end if end > 0 else MAX_CHARS]


# ---------------------------------------------------------------- technical
def dpkg_owners():
    owners = {}
    for lst in glob.glob("/var/lib/dpkg/info/*.list"):
        pkg = os.path.basename(lst)[:-5].split(":")[0]
        with open(lst, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("/usr/share/man/"):
                    owners[line.strip()] = pkg
    return owners


def package_permissive(pkg, cache={}):
    if pkg not in cache:
        ok = False
        try:
            with open(f"/usr/share/doc/{pkg}/copyright", encoding="utf-8", errors="replace") as f:
                head = f.read(20000)
            m = re.search(r"^Files:\s*\*\s*$.*?^License:\s*(.+)$", head, re.M | re.S)
            if m:
                lic = m.group(1)
                ok = bool(PERMISSIVE.search(lic)) and not (COPYLEFT.search(lic) and " or " not in lic)
        except OSError:
            pass
        cache[pkg] = ok
    return cache[pkg]


def man_pages(limit):
    owners = dpkg_owners()
    files = []
    for sec in ["man1", "man3", "man5", "man7", "man8"]:
        files += sorted(glob.glob(f"/usr/share/man/{sec}/*.gz"))
    files = [f for f in files if f in owners and package_permissive(owners[f])]
    rng.shuffle(files)
    out = []
    env = dict(os.environ, MANWIDTH="80", LANG="C.UTF-8", MAN_KEEP_FORMATTING="0")
    for f in files:
        if len(out) >= limit:
            break
        try:
            r = subprocess.run(["man", "-l", f], capture_output=True, env=env, timeout=20)
            text = subprocess.run(["col", "-bx"], input=r.stdout, capture_output=True).stdout.decode("utf-8", "replace")
        except subprocess.TimeoutExpired:
            continue
        if len(text) > 400:
            out.append((f"man:{os.path.basename(f)[:-3]}", f"man ({owners[f]})", text))
    return out


def site_packages_dirs():
    dirs = set()
    for p in sys.path:
        if p.endswith("site-packages") and os.path.isdir(p):
            dirs.add(p)
    for p in glob.glob("/root/.pyenv/versions/*/lib/python3*/site-packages") + glob.glob("/usr/lib/python3/dist-packages"):
        dirs.add(p)
    return sorted(dirs)


def dist_infos():
    seen = set()
    for d in site_packages_dirs():
        for di in sorted(glob.glob(os.path.join(d, "*.dist-info"))):
            name = os.path.basename(di).split("-")[0].lower()
            if name not in seen:
                seen.add(name)
                yield name, di


def metadata_licence(meta_head):
    lic = " ".join(re.findall(r"^(?:License|License-Expression): (.*)$", meta_head, re.M))
    lic += " " + " ".join(re.findall(r"^Classifier: License :: (.*)$", meta_head, re.M))
    return lic


def readmes_and_licences():
    readmes, licences = [], []
    for name, di in dist_infos():
        try:
            with open(os.path.join(di, "METADATA"), encoding="utf-8", errors="replace") as f:
                meta = f.read()
        except OSError:
            continue
        head, _, body = meta.partition("\n\n")
        lic = metadata_licence(head)
        if not PERMISSIVE.search(lic) or COPYLEFT.search(lic):
            continue
        if len(body.strip()) > 400:
            readmes.append((f"readme:{name}", "PyPI METADATA", body))
        for lf in sorted(glob.glob(os.path.join(di, "LICEN[CS]E*")) + glob.glob(os.path.join(di, "licenses", "*"))):
            if os.path.isfile(lf):
                with open(lf, encoding="utf-8", errors="replace") as f:
                    t = f.read()
                if len(t) > 300 and not COPYLEFT.search(t[:2000]):
                    licences.append((f"licence:{name}:{os.path.basename(lf)}", "PyPI licence file", t))
    return readmes, licences


STDLIB = [
    "argparse", "asyncio", "base64", "bisect", "calendar", "collections", "concurrent.futures", "configparser",
    "contextlib", "csv", "dataclasses", "datetime", "decimal", "difflib", "email", "enum", "fractions",
    "functools", "gzip", "hashlib", "heapq", "hmac", "html", "http.client", "http.server", "imaplib",
    "inspect", "io", "ipaddress", "itertools", "json", "logging", "lzma", "mailbox", "math", "mimetypes",
    "multiprocessing", "numbers", "operator", "optparse", "os", "pathlib", "pickle", "pprint", "queue",
    "random", "re", "sched", "secrets", "selectors", "shelve", "shlex", "shutil", "signal", "smtplib",
    "socket", "socketserver", "sqlite3", "ssl", "statistics", "string", "struct", "subprocess", "tarfile",
    "tempfile", "textwrap", "threading", "timeit", "tokenize", "traceback", "typing", "unittest",
    "urllib.parse", "urllib.request", "uuid", "warnings", "wave", "weakref", "xml.dom.minidom",
    "xml.etree.ElementTree", "zipfile", "zlib", "zoneinfo",
]


def docstrings():
    out = []
    for modname in STDLIB:
        try:
            mod = importlib.import_module(modname)
        except Exception:
            continue
        parts = []
        if mod.__doc__:
            parts.append(mod.__doc__)
        for name, obj in sorted(vars(mod).items()):
            if name.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
                continue
            doc = inspect.getdoc(obj)
            if doc and len(doc) > 200:
                out.append((f"doc:{modname}.{name}", "Python stdlib docstring", f"{name}\n\n{doc}"))
        if parts and len(parts[0]) > 300:
            out.append((f"doc:{modname}", "Python stdlib docstring", parts[0]))
    return out


# ---------------------------------------------------------------- web prose
def web_docs(limit):
    raw = subprocess.run(["zstd", "-dc", os.path.join(ROOT, "data", "corpus", "raw.jsonl.zst")], capture_output=True, check=True).stdout
    docs = [json.loads(l) for l in raw.decode("utf-8").splitlines() if l.strip()]
    rng.shuffle(docs)
    return [(f"web:{d['id']}", "embedded corpus: " + str(d.get("source", "?")), d["text"]) for d in docs[:limit]]


# --------------------------------------------------------------------- junk
WORDS = "cheap best online free buy discount deal top quality shop sale offer new price hot review".split()


def junk(n):
    out = []
    makers = [
        lambda i: "\n".join(rng.choice(["Home", "About us", "Contact", "Blog", "Shop", "FAQ", "Login", "Cart", "Search"]) for _ in range(30)),
        lambda i: " ".join(rng.choice(WORDS) for _ in range(200 + i)),
        lambda i: "\n".join(" | ".join(str(rng.randint(0, 9999)) for _ in range(6)) for _ in range(40)),
        lambda i: "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * (5 + i % 7),
        lambda i: "\n".join(["This site uses cookies to improve your experience.", "Please enable JavaScript to view this page.",
                            "Read our privacy policy and terms of use."] * (3 + i % 4)),
        lambda i: "int main() {\n  for (int i = 0; i < %d; i++) {\n    printf(\"%%d\\n\", i);\n  }\n  return 0;\n}\n" % i * 3,
        lambda i: "\n".join(f"- item {rng.choice(WORDS)} {j}" for j in range(20 + i % 10)),
        lambda i: "\n".join(f"Loading {rng.choice(WORDS)}..." for _ in range(15)),
        lambda i: "#" + " #".join(rng.choice(WORDS) for _ in range(80)),
        lambda i: "\n\n".join(["Click here to subscribe to our newsletter and get the best deals every week."] * (4 + i % 5)),
    ]
    for i in range(n):
        out.append((f"junk:{i}", "generated junk", makers[i % len(makers)](i)))
    return out


def duplicates(pool, n):
    out = []
    picks = rng.sample(pool, n)
    for i, (did, src, text) in enumerate(picks):
        if i % 2 == 0:
            out.append((f"dup:{i}:{did}", "exact copy", text))
        else:
            paras = text.split("\n\n")
            rep = paras + paras[: max(1, len(paras) // 2)]
            out.append((f"dup:{i}:{did}", "repeated paragraphs", "\n\n".join(rep)))
    return out


# ---------------------------------------------------------------- datatrove
def judge(docs):
    from datatrove.data import Document
    from datatrove.pipeline.filters import C4QualityFilter, FineWebQualityFilter, GopherQualityFilter, GopherRepetitionFilter
    from datatrove.utils.text import split_into_sentences, split_into_words

    filters = {  # datatrove's FineWeb recipe (examples/fineweb.py)
        "gopher_repetition": GopherRepetitionFilter(),
        "gopher_quality": GopherQualityFilter(),
        "c4": C4QualityFilter(filter_no_terminal_punct=False),
        "fineweb": FineWebQualityFilter(),
    }
    for i, d in enumerate(docs):
        text = d["text"]
        d["words"] = len(split_into_words(text))
        d["sentences"] = sum(len(split_into_sentences(l.strip())) for l in text.splitlines() if l.strip())
        d["datatrove"] = {}
        for name, f in filters.items():
            r = f.filter(Document(text=text, id=d["id"]))
            ok = r if isinstance(r, bool) else r[0]
            d["datatrove"][name] = None if ok else (r[1] if isinstance(r, tuple) else "?")
        if i % 100 == 0:
            print(f"  judged {i}/{len(docs)}", file=sys.stderr)


def main():
    tech = man_pages(450)
    readmes, licences = readmes_and_licences()
    rng.shuffle(readmes)
    rng.shuffle(licences)
    docs_ = docstrings()
    rng.shuffle(docs_)
    tech += readmes[:250] + licences[:60] + docs_[:300]
    web = web_docs(300)
    records, seen = [], set()
    for kind, items in [("technical", tech), ("web", web), ("junk", junk(80))]:
        for did, src, text in items:
            text = cut(normalise(text))
            if len(text) < 100 or text in seen:
                continue
            seen.add(text)
            records.append({"id": did, "kind": kind, "source": src, "text": text})
    for did, src, text in duplicates([(r["id"], r["source"], r["text"]) for r in records if r["kind"] != "junk"], 60):
        records.append({"id": did, "kind": "duplicate", "source": src, "text": cut(normalise(text))})
    counts = {}
    for r in records:
        counts[r["kind"]] = counts.get(r["kind"], 0) + 1
    print(f"{len(records)} documents: {counts}", file=sys.stderr)
    judge(records)
    payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    subprocess.run(["zstd", "-19", "-q", "-f", "-o", OUT], input=payload, check=True)
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes, {len(payload)} uncompressed)", file=sys.stderr)


if __name__ == "__main__":
    main()
