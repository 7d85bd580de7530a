//! Text normalisation applied to every document before filtering: Unicode
//! NFC, control characters removed, line endings and whitespace tidied.
//! It is idempotent (`normalize(normalize(x)) == normalize(x)`, proptested).

use unicode_normalization::{is_nfc_quick, IsNormalized, UnicodeNormalization};

/// NFC; `\r\n` and `\r` to `\n`; control characters other than `\n` and `\t`
/// removed; unusual spaces (NBSP, thin space, ...) to ASCII space; trailing
/// whitespace on each line removed; more than two consecutive newlines
/// collapsed to two; leading/trailing blank lines removed.
pub fn normalize(text: &str) -> String {
    // Clean first, compose last: removing a control character can bring a
    // combining mark next to a new base character.
    let out = clean(text);
    match is_nfc_quick(out.chars()) {
        IsNormalized::Yes => out,
        _ => out.nfc().collect(),
    }
}

fn clean(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut newlines = 0usize;
    let mut pending_ws = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let c = match c {
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    continue;
                }
                '\n'
            }
            '\u{a0}' | '\u{2000}'..='\u{200a}' | '\u{202f}' | '\u{205f}' | '\u{3000}' => ' ',
            '\u{200b}' | '\u{feff}' | '\u{00ad}' => continue, // zero-width, BOM, soft hyphen
            c if c.is_control() && c != '\n' && c != '\t' => continue,
            c if c.is_whitespace() && c != '\n' && c != '\t' => ' ',
            c => c,
        };
        if c == '\n' {
            pending_ws.clear(); // trailing whitespace of the line
            newlines += 1;
            continue;
        }
        if c == ' ' || c == '\t' {
            pending_ws.push(c);
            continue;
        }
        if newlines > 0 {
            if !out.is_empty() {
                for _ in 0..newlines.min(2) {
                    out.push('\n');
                }
            }
            newlines = 0;
        }
        if !pending_ws.is_empty() {
            out.push_str(&pending_ws);
            pending_ws.clear();
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tidies_whitespace_and_controls() {
        assert_eq!(normalize("a \r\nb\u{0}c\t \n\n\n\nd  "), "a\nbc\n\nd");
        assert_eq!(normalize("\n\n  x"), "  x");
        assert_eq!(normalize("non\u{a0}breaking"), "non breaking");
    }

    #[test]
    fn composes_to_nfc() {
        assert_eq!(normalize("cafe\u{301}"), "caf\u{e9}");
    }

    proptest! {
        #[test]
        fn idempotent(s in "\\PC*|[ \\t\\r\\n\\u{a0}\\u{301}a-z\\u{0}-\\u{1f}]{0,40}") {
            let once = normalize(&s);
            prop_assert_eq!(normalize(&once), once.clone());
            prop_assert!(!once.chars().any(|c| c.is_control() && c != '\n' && c != '\t'));
        }
    }
}
