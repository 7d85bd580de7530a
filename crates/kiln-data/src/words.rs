//! The one word splitter every word-based rule uses.
//!
//! datatrove splits English with spaCy's tokenizer (`spacy.blank("en")`);
//! this is a small rule set that agrees with it on the counts the filters
//! use (measured agreement of keep/drop decisions is in docs/data.md):
//!
//! * a word is a run of alphanumeric characters (`char::is_alphanumeric`,
//!   plus `_`), joined across an apostrophe (`'` or `’`) that has letters on
//!   both sides, and across `.` or `,` between digits (`3.5`, `1,000`);
//! * a run of dots (`...`) is one token; every other non-space,
//!   non-alphanumeric character is a token of its own (`-`, `,`, `#`, `%`);
//! * whitespace separates and is never part of a token.
//!
//! Where it differs from spaCy: contractions stay one token (`don't`, spaCy
//! `do` + `n't`); abbreviations lose their dot (`Mr` `.`, spaCy `Mr.`);
//! URLs and e-mail addresses are split at their punctuation (spaCy keeps
//! them whole); emoticons like `:)` are two tokens.

/// Splits `text` into word and punctuation tokens (slices of `text`).
pub fn split_words(text: &str) -> Vec<&str> {
    let mut out = Vec::with_capacity(text.len() / 5 + 1);
    for_each_word(text, |w| out.push(w));
    out
}

/// Calls `f` on every token of `text`, in order, without allocating.
pub fn for_each_word<'a>(text: &'a str, mut f: impl FnMut(&'a str)) {
    let bytes = text.as_bytes();
    let mut chars = text.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        if c.is_whitespace() {
            continue;
        }
        if is_word_char(c) {
            let mut end = start + c.len_utf8();
            let mut prev = c;
            while let Some(&(i, d)) = chars.peek() {
                if is_word_char(d) {
                    end = i + d.len_utf8();
                    prev = d;
                    chars.next();
                    continue;
                }
                // Joiners: an apostrophe between letters, '.' or ',' between digits.
                let joins = match d {
                    '\'' | '’' => prev.is_alphabetic(),
                    '.' | ',' => prev.is_ascii_digit(),
                    _ => false,
                };
                if joins {
                    let next_i = i + d.len_utf8();
                    let next = text[next_i..].chars().next();
                    let ok = match (d, next) {
                        ('\'' | '’', Some(n)) => n.is_alphabetic(),
                        ('.' | ',', Some(n)) => n.is_ascii_digit(),
                        _ => false,
                    };
                    if ok {
                        chars.next();
                        continue;
                    }
                }
                break;
            }
            f(&text[start..end]);
        } else if c == '.' {
            let mut end = start + 1;
            while end < bytes.len() && bytes[end] == b'.' {
                end += 1;
                chars.next();
            }
            f(&text[start..end]);
        } else {
            f(&text[start..start + c.len_utf8()]);
        }
    }
}

#[inline]
pub fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// A token made only of punctuation/symbol characters (datatrove's
/// `PUNCTUATION_SET` membership, approximated as "no alphanumeric char").
#[inline]
pub fn is_symbol_token(w: &str) -> bool {
    !w.chars().any(is_word_char)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_the_documented_rules() {
        assert_eq!(
            split_words("Don't stop-believing, Mr. Smith... it's 3.5% #1!"),
            vec![
                "Don't",
                "stop",
                "-",
                "believing",
                ",",
                "Mr",
                ".",
                "Smith",
                "...",
                "it's",
                "3.5",
                "%",
                "#",
                "1",
                "!"
            ]
        );
    }

    #[test]
    fn numbers_and_apostrophes_only_join_inside() {
        assert_eq!(
            split_words("1,000 a, b 'quoted' 5."),
            vec!["1,000", "a", ",", "b", "'", "quoted", "'", "5", "."]
        );
        assert_eq!(split_words("rock’n’roll"), vec!["rock’n’roll"]);
    }

    #[test]
    fn unicode_words_and_whitespace() {
        assert_eq!(
            split_words("  Ünïcode\tcafé\n\nnaïve  "),
            vec!["Ünïcode", "café", "naïve"]
        );
        assert_eq!(split_words("日本語"), vec!["日本語"]);
        assert!(split_words(" \n\t ").is_empty());
    }

    #[test]
    fn symbol_tokens() {
        assert!(is_symbol_token("..."));
        assert!(is_symbol_token("#"));
        assert!(!is_symbol_token("a#"));
        assert!(!is_symbol_token("3"));
    }
}
