#!/usr/bin/env python3
"""Exports the rules datatrove's English word segmentation runs on, as data
for kiln-data's Rust port (crates/kiln-data/src/words/spacy_en.json).

datatrove's `split_into_words` / `split_into_sentences` are
`spacy.blank("en")` plus the rule-based sentencizer. What that tokenizer
does is fixed by data: the prefix, suffix, infix and URL regular
expressions and the special cases ("don't" -> "do" "n't", "e.g.", ":)").
This script writes that data, nothing else: every regex as the syntax tree
Python's own `re` parser gives (so the Rust side matches with the same
leftmost-first, greedy semantics), character classes resolved to code
point ranges, the special cases, and the few character properties the
filters use (Python's str.isspace / str.isalpha, Unicode category P,
datatrove's punctuation sets).

    pip install datatrove spacy regex
    python3 scripts/make_spacy_en_tables.py

spaCy is MIT-licensed (Copyright (C) 2016-2024 ExplosionAI GmbH,
2016 spaCy GmbH, 2015 Matthew Honnibal); datatrove is Apache-2.0.
"""
import importlib.metadata
import json
import os
import sys
import unicodedata

try:
    import re._parser as sre_parse
    import re._constants as C
except ImportError:  # Python < 3.11
    import sre_parse
    import sre_constants as C
import re

import spacy
from datatrove.pipeline.filters.c4_filters import CITATION_REGEX
from datatrove.utils.text import PUNCTUATION_SET, TERMINAL_PUNCTUATION
from spacy.lang.tokenizer_exceptions import URL_PATTERN
from spacy.pipeline.sentencizer import Sentencizer

MAX = 0x10FFFF
OUT = os.path.join(os.path.dirname(__file__), "..", "crates", "kiln-data", "src", "words", "spacy_en.json")


def ranges_of(pred):
    """Sorted inclusive [lo, hi] code point ranges where pred(chr(c))."""
    out, lo = [], None
    for c in range(MAX + 2):
        ok = c <= MAX and not (0xD800 <= c <= 0xDFFF) and pred(chr(c))
        if ok and lo is None:
            lo = c
        elif not ok and lo is not None:
            out.append([lo, c - 1])
            lo = None
    return out


def category_ranges():
    cats = {}
    for name, rx in [
        ("DIGIT", r"\d"), ("SPACE", r"\s"), ("WORD", r"\w"),
    ]:
        r = re.compile(rx)
        cats[name] = ranges_of(lambda ch, r=r: r.match(ch) is not None)
    return cats


CATS = category_ranges()


def complement(rs):
    out, prev = [], 0
    for lo, hi in rs:
        if lo > prev:
            out.append([prev, lo - 1])
        prev = hi + 1
    if prev <= MAX:
        out.append([prev, MAX])
    return out


def normalise(rs):
    rs = sorted(rs)
    out = []
    for lo, hi in rs:
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return out


def category(cat):
    name = str(cat).replace("CATEGORY_", "").replace("UNI_", "")
    neg = name.startswith("NOT_")
    base = CATS[name[4:] if neg else name]
    return complement(base) if neg else base


class Writer:
    def __init__(self):
        self.sets, self.index = [], {}

    def set_id(self, rs):
        key = json.dumps(rs)
        if key not in self.index:
            self.index[key] = len(self.sets)
            self.sets.append(rs)
        return self.index[key]

    def in_set(self, items):
        rs, neg = [], False
        for op, av in items:
            op = str(op)
            if op == "NEGATE":
                neg = True
            elif op == "LITERAL":
                rs.append([av, av])
            elif op == "RANGE":
                rs.append([av[0], av[1]])
            elif op == "CATEGORY":
                rs.extend(category(av))
            else:
                raise SystemExit(f"unsupported class item {op}")
        rs = normalise(rs)
        return complement(rs) if neg else rs

    def nodes(self, seq):
        out = []
        for op, av in seq:
            op = str(op)
            if op == "LITERAL":
                out.append({"lit": av})
            elif op == "NOT_LITERAL":
                out.append({"set": self.set_id(complement([[av, av]]))})
            elif op == "IN":
                out.append({"set": self.set_id(self.in_set(av))})
            elif op == "MAX_REPEAT":
                lo, hi, sub = av
                out.append({"rep": [lo, -1 if hi == C.MAXREPEAT else hi, self.nodes(sub)]})
            elif op == "SUBPATTERN":
                group, add_flags, del_flags, sub = av
                out.extend(self.nodes(sub))
            elif op == "BRANCH":
                out.append({"alt": [self.nodes(b) for b in av[1]]})
            elif op in ("ASSERT", "ASSERT_NOT"):
                direction, sub = av
                out.append({"look": [direction, op == "ASSERT_NOT", self.nodes(sub)]})
            elif op == "AT":
                at = str(av)
                if at == "AT_BEGINNING":
                    out.append({"bol": True})
                elif at == "AT_END":
                    out.append({"eol": True})
                else:
                    raise SystemExit(f"unsupported anchor {at}")
            else:
                raise SystemExit(f"unsupported regex op {op}")
        return out

    def regex(self, pattern):
        return self.nodes(sre_parse.parse(pattern).data)


def main():
    nlp = spacy.blank("en")
    tok = nlp.tokenizer
    assert tok.token_match is None, "English has no token_match: the port assumes that"
    assert tok.faster_heuristics, "the port assumes faster_heuristics=True"
    w = Writer()
    exceptions = {}
    for key, subs in tok.rules.items():
        exceptions[key] = [s.get(65, s.get("ORTH")) for s in subs]
        assert "".join(exceptions[key]) == key
    url = tok.url_match.__self__.pattern
    assert url == "(?u)" + URL_PATTERN
    data = {
        "generator": "scripts/make_spacy_en_tables.py",
        "spacy": spacy.__version__,
        "datatrove": importlib.metadata.version("datatrove"),
        "python": sys.version.split()[0],
        "unicode": unicodedata.unidata_version,
        "prefix": w.regex(tok.prefix_search.__self__.pattern),
        "suffix": w.regex(tok.suffix_search.__self__.pattern),
        "infix": w.regex(tok.infix_finditer.__self__.pattern),
        "url": w.regex(url),
        "citation": w.regex(CITATION_REGEX.pattern),
        "exceptions": exceptions,
        "py_space": ranges_of(str.isspace),
        "py_alpha": ranges_of(str.isalpha),
        "category_p": ranges_of(lambda ch: unicodedata.category(ch).startswith("P")),
        "punctuation_set": sorted(ord(c) for c in PUNCTUATION_SET),
        "terminal_punctuation": sorted(ord(c) for c in TERMINAL_PUNCTUATION),
        "sentencizer_punct": sorted(ord(c) for c in Sentencizer.default_punct_chars),
        "sets": w.sets,
    }
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=True, separators=(",", ":"))
    print(f"wrote {OUT}: {len(exceptions)} special cases, {len(w.sets)} character sets")


if __name__ == "__main__":
    main()
