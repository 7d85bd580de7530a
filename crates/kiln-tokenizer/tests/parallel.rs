//! `encode_parallel` gives exactly `encode`'s ids: one large text cut at
//! safe places and encoded on several threads, for every built-in pattern,
//! every special-token policy, on varied generated text (small chunks, so
//! there are many cuts) and on real text; and a custom regex pattern, which
//! is never cut.

mod common;

use kiln_tokenizer::{Pattern, SpecialMode, SpecialPolicy, Tokenizer};
use proptest::prelude::*;
use std::sync::OnceLock;

fn encodings() -> &'static [(&'static str, Tokenizer)] {
    static E: OnceLock<Vec<(&'static str, Tokenizer)>> = OnceLock::new();
    E.get_or_init(|| {
        ["r50k_base", "cl100k_base", "o200k_base"]
            .into_iter()
            .map(|n| (n, common::load_encoding(n)))
            .collect()
    })
}

/// Generated text with specials, newlines before letters (the cut places)
/// and around them everything that could make a cut unsafe.
fn text(seed: u64, len: usize) -> String {
    let mut rng = common::Rng::new(seed);
    let mut s = String::new();
    while s.len() < len {
        match rng.below(8) {
            0 => s.push_str(rng.pick(&[
                "\nword", " \nWord", "\n\nx", ";\ny", "é\nz", "1\nq", "\r\nA",
            ])),
            1 => s.push_str("<|endoftext|>"),
            _ => s.push_str(&common::fragment(&mut rng)),
        }
    }
    s
}

fn policies() -> [SpecialPolicy; 3] {
    [
        SpecialPolicy::allow_all(),
        SpecialPolicy::all_text(),
        SpecialPolicy::uniform(SpecialMode::Special).with("<|endoftext|>", SpecialMode::Text),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn parallel_ids_equal_sequential_ids(seed in any::<u64>(), len in 0usize..3000, chunk in 1usize..200) {
        let t = text(seed, len);
        for (name, tok) in encodings() {
            for policy in policies() {
                let want = tok.encode(&t, &policy).unwrap();
                let got = tok.encode_parallel(&t, &policy, chunk).unwrap();
                prop_assert_eq!(got, want, "{} chunk {}", name, chunk);
            }
        }
    }
}

#[test]
fn real_text_in_small_chunks() {
    let t = common::real_text().join("\n");
    assert!(t.len() > 100_000, "too little real text: {} bytes", t.len());
    for (name, tok) in encodings() {
        let want = tok.encode(&t, &SpecialPolicy::allow_all()).unwrap();
        for chunk in [64, 4096] {
            let got = tok
                .encode_parallel(&t, &SpecialPolicy::allow_all(), chunk)
                .unwrap();
            assert!(got == want, "{name}: chunk {chunk} changed the ids");
        }
    }
}

#[test]
fn a_disallowed_special_is_the_same_error() {
    let (_, tok) = &encodings()[1];
    let t = format!("{}<|endoftext|> tail", "abc\ndef\n".repeat(50));
    let policy = SpecialPolicy::deny_all();
    let want = tok.encode(&t, &policy).unwrap_err().to_string();
    let got = tok.encode_parallel(&t, &policy, 8).unwrap_err().to_string();
    assert_eq!(got, want);
    assert!(got.contains("400"), "{got}");
}

#[test]
fn a_custom_pattern_is_cut_only_at_special_tokens() {
    // Splitting on spaces only: "ab\ncd" is one pre-token, so a cut at the
    // newline would change the ids.
    let tok = kiln_tokenizer::train(
        &["ab\ncd ab\ncd ab\ncd"],
        270,
        Pattern::from_regex(r"\S+|\s+"),
        &["<|endoftext|>"],
        0,
    )
    .unwrap();
    let t = "ab\ncd ".repeat(40) + "<|endoftext|>" + &"ab\ncd ".repeat(40);
    let want = tok.encode(&t, &SpecialPolicy::allow_all()).unwrap();
    let got = tok
        .encode_parallel(&t, &SpecialPolicy::allow_all(), 1)
        .unwrap();
    assert_eq!(got, want);
}
