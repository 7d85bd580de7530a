#!/usr/bin/env python3
"""Regenerates crates/kiln-tokenizer/tests/fixtures/hf_families/: tiny tokenizer.json files of
the families open models ship, built by Hugging Face `tokenizers`, with HF's ids and decodes.

Each family is trained (BpeTrainer, a few hundred tokens) on the first 60,000 characters of
tests/fixtures/text/kjv_excerpt.txt, then given the normalizer / pre-tokenizer / decoder of
the models it stands for:
  qwen2          NFC normalizer, Split(Qwen2 regex, Isolated) + ByteLevel(use_regex=false)
  llama3         no normalizer, Split(Llama 3 regex) + ByteLevel, ignore_merges
  bytelevel_aps  Sequence[NFKC, Lowercase], ByteLevel(add_prefix_space=true)  (GPT-2/RoBERTa),
                 <mask> with lstrip
  split_aps      NFD, Split(regex) + ByteLevel(add_prefix_space=true, use_regex=false),
                 added tokens with rstrip and single_word
  smollm         Digits(individual_digits=true) + ByteLevel(use_regex=true)  (SmolLM, StarCoder)
  stripped       Sequence[Strip(left, right), NFD, StripAccents, Lowercase], ByteLevel
  digit_runs     Digits(individual_digits=false) + ByteLevel(add_prefix_space=true)
  llama2         SentencePiece BPE: Sequence[Prepend("▁"), Replace(" ", "▁")] normalizer, no
                 pre-tokenizer, byte_fallback + fuse_unk, <0xNN> tokens 3..258, decoder
                 Sequence[Replace("▁", " "), ByteFallback, Fuse, Strip(" ", 1, 0)]
                 (Llama 2, TinyLlama, Mistral 7B v0.1)
  mistral        the same model with Metaspace(prepend_scheme="first", split=false) as
                 pre-tokenizer and no normalizer (transformers' non-legacy Llama/Mistral files)
  metaspace      Metaspace(prepend_scheme="always", split=true), Metaspace decoder
  metaspace_never  Metaspace(prepend_scheme="never", split=true), NFKC normalizer
  sp_unk         no byte fallback: absent characters become <unk>, fused (fuse_unk)
  sp_unfused     no byte fallback, fuse_unk=false (one <unk> per character), ignore_merges
  sp_ascii_bytes byte fallback with <0x00>..<0x7F> only: other characters outside the
                 vocabulary become <unk>, which HF puts after any byte tokens that follow
  spm_legacy     a real SentencePiece BPE model (sentencepiece's trainer, byte_fallback,
                 split_digits, whitespace-only pieces, as Llama 2 was trained) converted as
                 transformers' LlamaConverter does with legacy=True: the Prepend + Replace
                 normalizer, merges from the piece scores
  spm_metaspace  the same model converted with legacy=False: Metaspace(first, split=false)
                 (the two spm_ families need `pip install sentencepiece protobuf`; without
                 them they are skipped)

Written per family: <family>.tokenizer.json and <family>.cases.json, a list of
{"text", "ids", "decoded"}: HF's ids for the text (added tokens matched, no post-processor
specials) and HF's decode of those ids (skip_special_tokens=False). The texts cover prose, code,
leading/trailing/multiple spaces, newlines and tabs, accents in NFC and NFD, CJK, emoji,
characters absent from the vocabulary (byte fallback) and added tokens inside text.

HF's trainer breaks count ties in hash order, so a rerun may renumber a few tokens; each
cases file always holds the ids of the tokenizer.json written with it.

Run from the repository root:  python3 scripts/make_hf_tokenizer_fixtures.py [FAMILY...]
  (--out DIR writes elsewhere; tests/hf_python.rs uses `build(family, path)` through
  scripts/tokenizer_hf_check.py for its live comparison.)
"""
import argparse
import json
import os
import sys

from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers,
                        trainers)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "crates", "kiln-tokenizer", "tests", "fixtures", "hf_families")
TEXT = os.path.join(ROOT, "tests", "fixtures", "text", "kjv_excerpt.txt")

QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
WORDS_REGEX = r"\p{L}+|\p{N}+|[^\s\p{L}\p{N}]+|\s+"

BYTE_LEVEL = ["qwen2", "llama3", "bytelevel_aps", "split_aps", "smollm", "stripped", "digit_runs"]
SENTENCEPIECE = ["llama2", "mistral", "metaspace", "metaspace_never", "sp_unk", "sp_unfused",
                 "sp_ascii_bytes"]
SPM = ["spm_legacy", "spm_metaspace"]


def spm_available():
    """sentencepiece, protobuf and transformers are installed (found, not imported: importing
    transformers takes seconds)."""
    from importlib.util import find_spec
    try:
        return all(find_spec(m) for m in ("sentencepiece", "google.protobuf", "transformers"))
    except ModuleNotFoundError:  # no `google` package at all
        return False


FAMILIES = BYTE_LEVEL + SENTENCEPIECE + (SPM if spm_available() else [])

SPECIALS = {
    "qwen2": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    "llama3": ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"],
    "bytelevel_aps": ["<s>", "</s>", "<mask>"],
    "split_aps": ["<|endoftext|>", "[WORD]"],
    "smollm": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    "stripped": ["<|endoftext|>"],
    "digit_runs": ["<|endoftext|>"],
}
SP_SPECIALS = ["<unk>", "<s>", "</s>"]
# Added tokens with matching options: RoBERTa's <mask> takes the spaces before it (lstrip);
# the others test rstrip and single_word.
FLAGS = {"<mask>": dict(lstrip=True), "<|endoftext|>": dict(rstrip=True),
         "[WORD]": dict(single_word=True)}


def added(specials, family):
    flagged = family in ("bytelevel_aps", "split_aps")
    return [AddedToken(t, special=True, normalized=False, **(FLAGS.get(t, {}) if flagged else {}))
            for t in specials]

TEXTS = [
    "",
    "And the king said unto him, Go in peace.",
    "Hello world",
    " leading space",
    "   three leading spaces",
    "trailing space ",
    "trailing spaces   ",
    "multiple    spaces  inside",
    " ",
    "   ",
    "line one\nline two\n\nline four\n",
    "\n\nstarts with newlines",
    "tabs\tand\t\ttabs\t",
    " \t \n mixed whitespace \r\n",
    "def f(x):\n    return x * 2  # double\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "numbers 1234567890 and 3.14159, 2024-06-01",
    "café naïve résumé",                       # NFC accents
    "cafe\u0301 nai\u0308ve re\u0301sume\u0301",  # the same in NFD
    "Ångström Ǆ ﬁ ① ｆｕｌｌ",                  # NFKC folds these
    "ΣΊΣΥΦΟΣ Straße İstanbul",                 # lowercase edge cases
    "中文字符测试，还有日本語のテキスト。",
    "한국어 텍스트",
    "emoji 😀🎉 and 👩‍👩‍👧 family",
    "absent chars: ☃ ∮ ⅋ ᚠ 𝔘",
    "☃5☃ é9é ①2 x☃",                           # unknown next to byte-fallback digits
    "It's they're we've I'm you'll he'd",
    "ALL CAPS AND MiXeD cAsE",
    "symbols !@#$%^&*()_+-=[]{}|;':\",./<>?`~",
    "▁already▁has▁metaspace",
    "x" * 60,
    "the " * 20,
]


def special_texts(specials):
    a, b = specials[0], specials[-1]
    return [
        f"{a}start",
        f"text {a} middle {b}end",
        f"{a}{b}",
        f"before{a}",
        f" {a} spaced {a} ",
        f"{b}\n{a}line",
        f"x  {b}  y {a}\t\tz",
        f"word{b} {b}. ({b})",
    ]


def training_text():
    with open(TEXT, encoding="utf-8") as f:
        return f.read()[:60000]


def train_byte_level(family):
    tok = Tokenizer(models.BPE(ignore_merges=(family == "llama3")))
    if family == "qwen2":
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    elif family == "llama3":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    elif family == "bytelevel_aps":
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    elif family == "split_aps":
        tok.normalizer = normalizers.NFD()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(WORDS_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=False),
        ])
    elif family == "smollm":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ])
    elif family == "digit_runs":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=False),
            pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True),
        ])
    elif family == "stripped":
        tok.normalizer = normalizers.Sequence([
            normalizers.Strip(left=True, right=True), normalizers.NFD(), normalizers.StripAccents(),
            normalizers.Lowercase()])
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=added(SPECIALS[family], family),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([training_text()], trainer)
    return tok


def train_sentencepiece(family):
    """BpeTrainer on Metaspace pieces with a small alphabet (so byte fallback fires), then
    the Llama 2 layout: <unk> <s> </s>, the 256 <0xNN> tokens, the trained tokens."""
    scheme = {"llama2": "first", "mistral": "first", "metaspace": "always",
              "metaspace_never": "never", "sp_unk": "first", "sp_unfused": "first",
              "sp_ascii_bytes": "first"}[family]
    base = Tokenizer(models.BPE(unk_token="<unk>"))
    base.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme=scheme, split=True)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=[], limit_alphabet=60,
                                  show_progress=False)
    base.train_from_iterator([training_text()], trainer)
    trained = json.loads(base.to_str())["model"]
    vocab = {t: i for i, t in enumerate(SP_SPECIALS)}
    for b in range(128 if family == "sp_ascii_bytes" else 256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for t, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1]):
        if t not in vocab:
            vocab[t] = len(vocab)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained["merges"]]
    unk_only = family in ("sp_unk", "sp_unfused")
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>",
                               byte_fallback=not unk_only, fuse_unk=(family != "sp_unfused"),
                               ignore_merges=(family == "sp_unfused")))
    sp_decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                    decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    if family == "llama2":
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                               normalizers.Replace(" ", "▁")])
        tok.decoder = sp_decoder
    elif family == "mistral":
        tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=False)
        tok.decoder = sp_decoder
    elif family == "metaspace":
        tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always", split=True)
        tok.decoder = decoders.Sequence([decoders.Metaspace(prepend_scheme="always", split=True),
                                         decoders.ByteFallback(), decoders.Fuse()])
    elif family == "metaspace_never":
        tok.normalizer = normalizers.NFKC()
        tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never", split=True)
        tok.decoder = decoders.Sequence([decoders.ByteFallback(),
                                         decoders.Metaspace(prepend_scheme="never", split=True),
                                         decoders.Fuse()])
    elif unk_only or family == "sp_ascii_bytes":
        tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=True)
        tok.decoder = sp_decoder
    tok.add_special_tokens(SP_SPECIALS)
    return tok


def convert_sentencepiece(family):
    """sentencepiece's BPE trainer as Llama 2's tokenizer was trained, then the tokenizer.json
    transformers' LlamaConverter makes of it (its BPE branch, written out here: the one in
    transformers 5.24 calls SentencePieceExtractor.extract with the wrong arguments)."""
    import tempfile

    import sentencepiece as spm
    from transformers.convert_slow_tokenizer import generate_merges, import_protobuf

    with tempfile.TemporaryDirectory() as d:
        corpus = os.path.join(d, "train.txt")
        with open(corpus, "w", encoding="utf-8") as f:
            f.write(training_text())
        spm.SentencePieceTrainer.train(
            input=corpus, model_prefix=os.path.join(d, "sp"), model_type="bpe", vocab_size=600,
            byte_fallback=True, split_digits=True, character_coverage=0.999,
            normalization_rule_name="identity", add_dummy_prefix=True,
            allow_whitespace_only_pieces=True, remove_extra_whitespaces=False,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2)
        proto = import_protobuf().ModelProto()
        with open(os.path.join(d, "sp.model"), "rb") as f:
            proto.ParseFromString(f.read())
    vocab_scores = [(p.piece, p.score) for p in proto.pieces]
    vocab = {piece: i for i, (piece, _) in enumerate(vocab_scores)}
    merges = generate_merges(vocab, dict(vocab_scores))
    tok = Tokenizer(models.BPE(vocab, merges, unk_token=proto.trainer_spec.unk_piece,
                               fuse_unk=True, byte_fallback=True, dropout=None))
    if family == "spm_legacy":
        tok.normalizer = normalizers.Sequence([normalizers.Prepend(prepend="▁"),
                                               normalizers.Replace(pattern=" ", content="▁")])
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first",
                                                     split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(content=" ", left=1)])
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in SP_SPECIALS])
    return tok


def build(family, path):
    """Writes the tokenizer.json of `family` to `path`."""
    if family in BYTE_LEVEL:
        tok = train_byte_level(family)
    elif family in SPM:
        tok = convert_sentencepiece(family)
    else:
        tok = train_sentencepiece(family)
    tok.save(path)


def cases(tokenizer_path, family):
    tok = Tokenizer.from_file(tokenizer_path)
    specials = SPECIALS.get(family, SP_SPECIALS[1:])
    out = []
    for text in TEXTS + special_texts(specials):
        ids = tok.encode(text, add_special_tokens=False).ids
        out.append({"text": text, "ids": ids,
                    "decoded": tok.decode(ids, skip_special_tokens=False)})
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=OUT)
    p.add_argument("families", nargs="*", help="only these (default: all)")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    if not spm_available():
        print(f"skipping {SPM}: pip install sentencepiece protobuf", file=sys.stderr)
    for family in a.families or FAMILIES:
        path = os.path.join(a.out, f"{family}.tokenizer.json")
        build(family, path)
        c = cases(path, family)
        with open(os.path.join(a.out, f"{family}.cases.json"), "w", encoding="utf-8") as f:
            json.dump(c, f, ensure_ascii=False, indent=0)
            f.write("\n")
        vocab = Tokenizer.from_file(path).get_vocab_size()
        print(f"{family}: vocab {vocab}, {len(c)} cases", file=sys.stderr)


if __name__ == "__main__":
    main()
