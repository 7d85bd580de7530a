//! The hand-written lexers split exactly like fancy-regex on the verbatim
//! patterns: random strings over a tricky alphabet, arbitrary Unicode,
//! generated varied text and real text.

mod common;

use kiln_tokenizer::{Lexer, Pattern, PreTokenizer};
use proptest::prelude::*;
use std::sync::OnceLock;

/// The reference splitters, compiled once.
fn regex_for(l: Lexer) -> &'static PreTokenizer {
    static RES: OnceLock<[PreTokenizer; 3]> = OnceLock::new();
    let res = RES.get_or_init(|| {
        [Pattern::Gpt2, Pattern::Cl100k, Pattern::O200k].map(|p| PreTokenizer::regex(&p).unwrap())
    });
    &res[l as usize]
}

const ALL: [Lexer; 3] = [Lexer::Gpt2, Lexer::Cl100k, Lexer::O200k];

fn check(s: &str) -> Result<(), TestCaseError> {
    for l in ALL {
        let ours = l.pieces(s);
        let theirs = regex_for(l).pieces(s);
        prop_assert_eq!(&ours, &theirs, "{:?} on {:?}", l, s);
        prop_assert_eq!(ours.concat(), s);
    }
    Ok(())
}

#[test]
fn hf_spellings_split_like_tiktoken_spellings() {
    use kiln_tokenizer::pattern::{CL100K_PATTERN_HF, GPT2_PATTERN_HF};
    let docs = common::corpus(11, 40, 3000);
    for (hf, l) in [
        (GPT2_PATTERN_HF, Lexer::Gpt2),
        (CL100K_PATTERN_HF, Lexer::Cl100k),
    ] {
        let re = PreTokenizer::Regex(Box::new(fancy_regex::Regex::new(hf).unwrap()));
        for d in &docs {
            assert_eq!(re.pieces(d), l.pieces(d));
        }
    }
}

#[test]
fn generated_and_real_text() {
    let mut docs = common::corpus(7, 200, 4000);
    docs.extend(common::real_text());
    for d in &docs {
        check(d).unwrap();
    }
}

#[test]
fn known_splits() {
    assert_eq!(
        Lexer::Cl100k.pieces("Hello world's  1234\n\n"),
        vec!["Hello", " world", "'s", " ", " ", "123", "4", "\n\n"]
    );
    assert_eq!(
        Lexer::Gpt2.pieces("Hello world's  1234\n\n"),
        vec!["Hello", " world", "'s", " ", " 1234", "\n\n"]
    );
    assert_eq!(
        Lexer::O200k.pieces("HTTPServer DON'T"),
        vec!["HTTPServer", " DON'T"]
    );
}

fn tricky_string() -> impl Strategy<Value = String> {
    let atoms = prop::sample::select(vec![
        "a", "B", "é", "ſ", "ǅ", "ʰ", "ᾈ", "\u{301}", "\u{94d}", "中", "ア", "ا", "1", "٣", "½",
        " ", "  ", "\t", "\n", "\r", "\u{a0}", "\u{3000}", "\u{85}", "\u{b}", "'", "'s", "'S",
        "'ll", "'LL", "'rE", "'ve", "'d", "'M", "'t", "'ſ", "'x", "!", ".", "/", "^", "😀",
        "\u{fe0f}", "\u{200d}",
    ]);
    proptest::collection::vec(atoms, 0..30).prop_map(|v| v.concat())
}

/// Runs of o200k's letter classes from every category and script width:
/// Lu, Ll, Lt, Lm, Lo, Mn, Mc, Me (1 to 4 bytes), with what may surround
/// them (prefixes, contractions, digits, whitespace, emoji).
fn letter_class_runs() -> impl Strategy<Value = String> {
    let atoms = prop::sample::select(vec![
        "A",
        "z",
        "Ω",
        "ω",
        "Ж",
        "ж",
        "ß",
        "ǅ",
        "ᾈ",
        "𐐀",
        "𐐨",
        "ʰ",
        "ー",
        "ꜝ",
        "中",
        "한",
        "ا",
        "𠀀",
        "\u{301}",
        "\u{94d}",
        "\u{903}",
        "\u{20dd}",
        "\u{1d167}",
        "'",
        "'s",
        "'S",
        "'ll",
        "'Ve",
        "'ſ",
        "'q",
        "7",
        "٣",
        "Ⅻ",
        "²",
        " ",
        "   ",
        "\n",
        "\r\n",
        "\t",
        "\u{3000}",
        ".",
        "/",
        "_",
        "😀",
        "\u{fe0f}",
        "\u{200d}",
    ]);
    proptest::collection::vec(atoms, 0..40).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1500))]

    #[test]
    fn lexer_equals_regex_on_letter_class_runs(s in letter_class_runs()) {
        check(&s)?;
    }

    #[test]
    fn lexer_equals_regex_on_random_letter_categories(
        s in "[\\p{Lu}\\p{Ll}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}\\p{N}'sStT \\r\\n\\t.!/]{0,40}"
    ) {
        check(&s)?;
    }

    #[test]
    fn lexer_equals_regex_on_tricky_strings(s in tricky_string()) {
        check(&s)?;
    }

    #[test]
    fn lexer_equals_regex_on_any_unicode(s in "\\PC{0,40}") {
        check(&s)?;
    }

    #[test]
    fn lexer_equals_regex_on_any_chars(s in any::<String>()) {
        check(&s)?;
    }
}
