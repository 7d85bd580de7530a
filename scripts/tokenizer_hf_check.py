#!/usr/bin/env python3
"""HF `tokenizers` side of kiln-tokenizer's conformance tests.

  encode --tokenizer tokenizer.json --texts texts.json
      prints a JSON list with the ids of each text (no added specials;
      added tokens in the text are matched, as HF always does).
  decode --tokenizer tokenizer.json --ids ids.json
      prints a JSON list with HF's decode of each id list (special tokens kept).
  families
      prints the names of the tokenizer.json families that
      scripts/make_hf_tokenizer_fixtures.py builds.
  family --name NAME --out tokenizer.json
      builds that family's tokenizer.json (trained as for the fixtures).
  gpt2 --vocab vocab.json --merges merges.txt --out tokenizer.json
      builds GPT-2's tokenizer.json with HF's own loader.
  train --input corpus.txt --vocab-size N --out tokenizer.json
      trains HF's BpeTrainer (benchmark peer); prints seconds taken.

Exit code 3 when the `tokenizers` package is missing (tests skip then).
"""
import argparse
import json
import os
import sys
import time

try:
    import tokenizers
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers, Regex
except ImportError:
    print("python package `tokenizers` is not installed (pip install tokenizers)", file=sys.stderr)
    sys.exit(3)


def cmd_encode(a):
    tok = Tokenizer.from_file(a.tokenizer)
    with open(a.texts, encoding="utf-8") as f:
        texts = json.load(f)
    out = [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
    json.dump(out, sys.stdout)


def cmd_decode(a):
    tok = Tokenizer.from_file(a.tokenizer)
    with open(a.ids, encoding="utf-8") as f:
        ids = json.load(f)
    json.dump([tok.decode(i, skip_special_tokens=False) for i in ids], sys.stdout)


def fixtures():
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import make_hf_tokenizer_fixtures
    return make_hf_tokenizer_fixtures


def cmd_families(a):
    json.dump(fixtures().FAMILIES, sys.stdout)


def cmd_family(a):
    fixtures().build(a.name, a.out)


def cmd_gpt2(a):
    bpe = models.BPE.from_file(a.vocab, a.merges)
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    tok.save(a.out)


def cmd_train(a):
    gpt4 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
            r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(gpt4), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tr = trainers.BpeTrainer(vocab_size=a.vocab_size, special_tokens=["<|endoftext|>"],
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                             show_progress=False)
    t0 = time.perf_counter()
    tok.train([a.input], tr)
    print(f"{time.perf_counter() - t0:.3f}")
    tok.save(a.out)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("encode")
    e.add_argument("--tokenizer", required=True)
    e.add_argument("--texts", required=True)
    d = sub.add_parser("decode")
    d.add_argument("--tokenizer", required=True)
    d.add_argument("--ids", required=True)
    sub.add_parser("families")
    f = sub.add_parser("family")
    f.add_argument("--name", required=True)
    f.add_argument("--out", required=True)
    g = sub.add_parser("gpt2")
    g.add_argument("--vocab", required=True)
    g.add_argument("--merges", required=True)
    g.add_argument("--out", required=True)
    t = sub.add_parser("train")
    t.add_argument("--input", required=True)
    t.add_argument("--vocab-size", type=int, required=True)
    t.add_argument("--out", required=True)
    a = p.parse_args()
    {"encode": cmd_encode, "decode": cmd_decode, "families": cmd_families, "family": cmd_family,
     "gpt2": cmd_gpt2, "train": cmd_train}[a.cmd](a)


if __name__ == "__main__":
    main()
