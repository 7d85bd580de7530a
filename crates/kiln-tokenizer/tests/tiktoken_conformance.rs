//! Identical ids to tiktoken-rs (the reference implementation of OpenAI's
//! encodings) on several MB of varied text and on random strings.

mod common;

use kiln_tokenizer::{SpecialPolicy, Tokenizer};
use proptest::prelude::*;
use std::sync::OnceLock;

struct Pair {
    kiln: Tokenizer,
    tt: tiktoken_rs::CoreBPE,
}

fn r50k() -> &'static Pair {
    static P: OnceLock<Pair> = OnceLock::new();
    P.get_or_init(|| Pair {
        kiln: common::load_encoding("r50k_base"),
        tt: tiktoken_rs::r50k_base().unwrap(),
    })
}
fn p50k() -> &'static Pair {
    static P: OnceLock<Pair> = OnceLock::new();
    P.get_or_init(|| Pair {
        kiln: common::load_encoding("p50k_base"),
        tt: tiktoken_rs::p50k_base().unwrap(),
    })
}
fn cl100k() -> &'static Pair {
    static P: OnceLock<Pair> = OnceLock::new();
    P.get_or_init(|| Pair {
        kiln: common::load_encoding("cl100k_base"),
        tt: tiktoken_rs::cl100k_base().unwrap(),
    })
}
fn o200k() -> &'static Pair {
    static P: OnceLock<Pair> = OnceLock::new();
    P.get_or_init(|| Pair {
        kiln: common::load_encoding("o200k_base"),
        tt: tiktoken_rs::o200k_base().unwrap(),
    })
}

fn check_docs(p: &Pair, docs: &[String], what: &str) -> usize {
    let mut bytes = 0;
    for (i, d) in docs.iter().enumerate() {
        let ours = p.kiln.encode_ordinary(d);
        let theirs = p.tt.encode_ordinary(d);
        if ours != theirs {
            let at = ours.iter().zip(&theirs).position(|(a, b)| a != b);
            panic!(
                "{what} doc {i}: ids differ at token {at:?} (ours {} tokens, tiktoken-rs {})\n{:?}",
                ours.len(),
                theirs.len(),
                d.chars().take(300).collect::<String>()
            );
        }
        assert_eq!(p.kiln.decode(&ours).unwrap(), *d);
        bytes += d.len();
    }
    bytes
}

fn varied_corpus(seed: u64) -> Vec<String> {
    // ~1.5 MB of generated text per encoding + real text.
    let mut docs = common::corpus(seed, 300, 5_000);
    docs.extend(common::real_text());
    docs
}

#[test]
fn r50k_matches_tiktoken_on_varied_text() {
    let n = check_docs(r50k(), &varied_corpus(1), "r50k");
    assert!(n > 1_000_000, "tested {n} bytes");
}

#[test]
fn p50k_matches_tiktoken_on_varied_text() {
    check_docs(p50k(), &common::corpus(5, 60, 5_000), "p50k");
}

#[test]
fn cl100k_matches_tiktoken_on_varied_text() {
    let n = check_docs(cl100k(), &varied_corpus(2), "cl100k");
    assert!(n > 1_000_000, "tested {n} bytes");
}

#[test]
fn o200k_matches_tiktoken_on_varied_text() {
    let n = check_docs(o200k(), &varied_corpus(3), "o200k");
    assert!(n > 1_000_000, "tested {n} bytes");
}

#[test]
fn long_runs_match_tiktoken() {
    // Pieces over 100 bytes take tiktoken's heap path and our heap path.
    let docs: Vec<String> = vec![
        "a".repeat(5000),
        "ab".repeat(3000),
        "x".repeat(777) + " " + &"Zy".repeat(400),
        " ".repeat(3000) + "end",
        "\n".repeat(500) + &" \n".repeat(300),
        "1".repeat(2000),
        "^".repeat(4000),
        "é".repeat(1500),
        "👍".repeat(800),
    ];
    for p in [r50k(), cl100k(), o200k()] {
        check_docs(p, &docs, "long runs");
    }
}

#[test]
fn special_tokens_match_tiktoken() {
    let text = "a<|endoftext|>b <|fim_prefix|>x<|fim_suffix|><|endofprompt|> <|endoftext|>";
    for p in [r50k(), cl100k(), o200k()] {
        let ours = p.kiln.encode(text, &SpecialPolicy::allow_all()).unwrap();
        let theirs = p.tt.encode_with_special_tokens(text);
        assert_eq!(ours, theirs);
        assert_eq!(p.kiln.encode_ordinary(text), p.tt.encode_ordinary(text));
    }
}

fn tricky_string() -> impl Strategy<Value = String> {
    let atoms = prop::sample::select(vec![
        "a",
        "Z",
        "é",
        "ſ",
        "ǅ",
        "ʰ",
        "\u{301}",
        "中",
        "ア",
        "ㄱ",
        "ا",
        "ह",
        "\u{94d}",
        "1",
        "٣",
        "½",
        "Ⅻ",
        " ",
        "  ",
        "\t",
        "\n",
        "\r",
        "\r\n",
        "\u{a0}",
        "\u{3000}",
        "\u{85}",
        "'",
        "'s",
        "'S",
        "'ll",
        "'Re",
        "'ve",
        "'ſ",
        "!",
        "...",
        "/",
        "//",
        "^",
        "$",
        "-",
        "😀",
        "👍🏽",
        "\u{200d}",
        "\u{fe0f}",
        "<|endoftext|>",
        "don't",
        "HTTP",
        "Hello",
        "x\u{0}",
    ]);
    proptest::collection::vec(atoms, 0..40).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(600))]

    #[test]
    fn random_strings_match_tiktoken(s in tricky_string()) {
        for p in [r50k(), cl100k(), o200k()] {
            prop_assert_eq!(p.kiln.encode_ordinary(&s), p.tt.encode_ordinary(&s), "{:?}", s);
        }
    }

    #[test]
    fn arbitrary_unicode_matches_tiktoken(s in "\\PC{0,60}") {
        for p in [r50k(), cl100k(), o200k()] {
            prop_assert_eq!(p.kiln.encode_ordinary(&s), p.tt.encode_ordinary(&s), "{:?}", s);
        }
    }
}
