//! Word and sentence segmentation exactly as datatrove does it for English,
//! and the Python string primitives its filters count with.
//!
//! datatrove's `split_into_words` is spaCy's English tokenizer
//! (`spacy.blank("en")`) with whitespace tokens dropped, and
//! `split_into_sentences` is spaCy's rule-based sentencizer over the same
//! tokens. [`spacy`] ports that tokenizer from its rules (exported by
//! `scripts/make_spacy_en_tables.py`); agreement with datatrove on a corpus
//! of technical and web documents is tested in tests/datatrove_agreement.rs.
//!
//! So `don't` is `do` `n't`, `Mr.` and `e.g.` stay whole, URLs and e-mail
//! addresses are one token, `(1` `)` and `stop` `-` `believing` split.

mod cache;
pub(crate) mod pattern;
pub mod spacy;

use spacy::tables;

/// The words of `text` (datatrove's `split_into_words`), as slices of it.
pub fn split_words(text: &str) -> Vec<&str> {
    let mut out = Vec::with_capacity(text.len() / 5 + 1);
    for_each_word(text, |w| out.push(w));
    out
}

/// Calls `f` on every word of `text`, in order.
pub fn for_each_word<'a>(text: &'a str, mut f: impl FnMut(&'a str)) {
    for t in tables().tokenize(text) {
        if !t.space {
            f(&text[t.start..t.end]);
        }
    }
}

/// Sentences in `text` as datatrove counts them (`len(split_into_sentences(text))`):
/// spaCy's sentencizer starts a sentence at the first token after a
/// sentence-final mark (`.`, `!`, `?` and their kin, as one-character
/// tokens) that is neither such a mark nor punctuation. At least one.
pub fn count_sentences(text: &str) -> usize {
    let t = tables();
    let toks = t.tokenize(text);
    let mut n = 1;
    let mut seen_end = false;
    for tok in &toks {
        let s = &text[tok.start..tok.end];
        let mut cs = s.chars();
        let first = cs.next();
        let is_end_mark =
            matches!((first, cs.next()), (Some(c), None) if t.sentence_end.contains(c));
        if seen_end && !is_end_mark && !s.chars().all(|c| t.category_p.contains(c)) {
            n += 1;
            seen_end = false;
        } else if is_end_mark {
            seen_end = true;
        }
    }
    n
}

/// A token made only of datatrove's `PUNCTUATION_SET` characters.
#[inline]
pub fn is_symbol_token(w: &str) -> bool {
    let p = &tables().punctuation;
    w.chars().all(|c| p.contains(c))
}

/// Python's `str.isalpha()` for one character (Unicode categories L*).
#[inline]
pub fn is_alpha(c: char) -> bool {
    if c.is_ascii() {
        c.is_ascii_alphabetic()
    } else {
        tables().py_alpha.contains(c)
    }
}

/// Python's `str.isspace()` for one character.
#[inline]
pub fn is_space(c: char) -> bool {
    tables().is_py_space(c)
}

/// datatrove's `TERMINAL_PUNCTUATION` (FineWeb's line-end marks).
#[inline]
pub fn is_terminal_punct(c: char) -> bool {
    tables().terminal.contains(c)
}

/// Python's `s.strip()`.
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(is_space)
}

/// Python's `s.split()` (runs of whitespace, no empty pieces).
pub fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_space).filter(|w| !w.is_empty())
}

/// Python's `s.splitlines()`: lines end at `\n`, `\r`, `\r\n`, `\v`, `\f`,
/// `\x1c`-`\x1e`, `\x85`, U+2028 and U+2029; no empty last line.
pub fn py_splitlines(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut it = s.char_indices().peekable();
    while let Some((i, c)) = it.next() {
        let brk = matches!(
            c,
            '\n' | '\r'
                | '\x0b'
                | '\x0c'
                | '\x1c'
                | '\x1d'
                | '\x1e'
                | '\u{85}'
                | '\u{2028}'
                | '\u{2029}'
        );
        if brk {
            out.push(&s[start..i]);
            let mut next = i + c.len_utf8();
            if c == '\r' && it.peek().is_some_and(|&(_, d)| d == '\n') {
                it.next();
                next += 1;
            }
            start = next;
        }
    }
    if start < s.len() {
        out.push(&s[start..]);
    }
    out
}

/// Python's `len(s)`: code points.
#[inline]
pub fn py_len(s: &str) -> usize {
    if s.is_ascii() {
        s.len()
    } else {
        s.chars().count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values are spaCy 3.8's (`spacy.blank("en")` + sentencizer).

    #[test]
    fn words_as_spacy_splits_them() {
        assert_eq!(
            split_words("Don't stop-believing, Mr. Smith... it's 3.5% #1!"),
            vec![
                "Do",
                "n't",
                "stop",
                "-",
                "believing",
                ",",
                "Mr.",
                "Smith",
                "...",
                "it",
                "'s",
                "3.5",
                "%",
                "#",
                "1",
                "!"
            ]
        );
        assert_eq!(
            split_words("SYSTEMD - ASK - PASSWORD(1 )"),
            vec!["SYSTEMD", "-", "ASK", "-", "PASSWORD(1", ")"]
        );
        assert_eq!(
            split_words("See https://example.com/a?b=c, or mail me@x.org (e.g. now)."),
            vec![
                "See",
                "https://example.com/a?b=c",
                ",",
                "or",
                "mail",
                "me@x.org",
                "(",
                "e.g.",
                "now",
                ")",
                "."
            ]
        );
        assert_eq!(
            split_words("x:) and 10a.m. rock’n’roll 1,000 'quoted' 5."),
            vec![
                "x",
                ":)",
                "and",
                "10",
                "a.m.",
                "rock’n’roll",
                "1,000",
                "'",
                "quoted",
                "'",
                "5",
                "."
            ]
        );
        assert_eq!(
            split_words("U.S. policy vs. the E.U.: ok."),
            vec!["U.S.", "policy", "vs.", "the", "E.U.", ":", "ok", "."]
        );
        assert_eq!(
            split_words("  Ünïcode\tcafé\n\nnaïve  "),
            vec!["Ünïcode", "café", "naïve"]
        );
        assert!(split_words(" \n\t ").is_empty());
    }

    #[test]
    fn sentences_as_the_sentencizer_counts_them() {
        assert_eq!(count_sentences("Hello !  ! World. Next one?! Yes"), 5);
        assert_eq!(
            count_sentences("Don't stop-believing, Mr. Smith... it's 3.5% #1!"),
            1
        );
        assert_eq!(count_sentences("One. Two! Three?"), 3);
        assert_eq!(count_sentences("No terminator here"), 1);
    }

    #[test]
    fn python_string_primitives() {
        assert_eq!(
            py_splitlines("a\r\nb\rc\n\nd\n"),
            vec!["a", "b", "c", "", "d"]
        );
        assert_eq!(py_splitlines(""), Vec::<&str>::new());
        assert_eq!(py_strip("\x1c a \u{3000}"), "a");
        assert_eq!(
            py_split(" a\u{a0}b  c ").collect::<Vec<_>>(),
            vec!["a", "b", "c"]
        );
        assert!(is_alpha('é') && !is_alpha('\u{301}') && !is_alpha('1'));
        assert!(is_symbol_token("...") && is_symbol_token("#") && !is_symbol_token("©"));
        assert!(!is_symbol_token("a#") && !is_symbol_token("3"));
    }
}
