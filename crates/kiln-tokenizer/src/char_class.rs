//! Unicode character classes used by the fixed pre-tokenization patterns.
//!
//! The tables come from `regex-syntax`, the same crate (and Unicode version)
//! the regex engines use, so the hand-written lexer and the fancy-regex
//! fallback can never disagree about what `\p{L}` means.

use std::sync::OnceLock;

pub const LETTER: u8 = 1; // \p{L}
pub const NUMBER: u8 = 2; // \p{N}
pub const SPACE: u8 = 4; // \s (Unicode White_Space)
/// o200k's "upper-ish" class: \p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}
pub const UPPERISH: u8 = 8;
/// o200k's "lower-ish" class: \p{Ll}\p{Lm}\p{Lo}\p{M}
pub const LOWERISH: u8 = 16;

const MAX_CP: usize = 0x11_0000;

fn class_ranges(pattern: &str) -> Vec<(u32, u32)> {
    use regex_syntax::hir::{Class, HirKind};
    let hir = regex_syntax::ParserBuilder::new()
        .build()
        .parse(pattern)
        .expect("built-in class pattern parses");
    match hir.kind() {
        HirKind::Class(Class::Unicode(cls)) => cls
            .ranges()
            .iter()
            .map(|r| (r.start() as u32, r.end() as u32))
            .collect(),
        other => panic!("class pattern {pattern} parsed to {other:?}"),
    }
}

/// One byte of class bits per code point (1.1 MB, built once).
fn table() -> &'static [u8] {
    static TABLE: OnceLock<Vec<u8>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = vec![0u8; MAX_CP];
        for (pattern, bit) in [
            (r"\p{L}", LETTER),
            (r"\p{N}", NUMBER),
            (r"\s", SPACE),
            (r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]", UPPERISH),
            (r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]", LOWERISH),
        ] {
            for (lo, hi) in class_ranges(pattern) {
                for cp in lo..=hi {
                    t[cp as usize] |= bit;
                }
            }
        }
        t
    })
}

/// Class bits of a code point.
#[inline]
pub fn class_of(table: &[u8], cp: u32) -> u8 {
    // SAFETY-free: every `char` is < 0x110000, the table length.
    table[cp as usize]
}

/// The shared table; call once per encode call and pass it down.
pub fn classes() -> &'static [u8] {
    table()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_match_expectations() {
        let t = classes();
        assert_eq!(
            class_of(t, 'a' as u32) & (LETTER | LOWERISH),
            LETTER | LOWERISH
        );
        assert_eq!(
            class_of(t, 'A' as u32) & (LETTER | UPPERISH),
            LETTER | UPPERISH
        );
        assert_eq!(class_of(t, '7' as u32), NUMBER);
        assert_eq!(class_of(t, ' ' as u32), SPACE);
        assert_eq!(class_of(t, '\u{3000}' as u32), SPACE);
        assert_eq!(class_of(t, '!' as u32), 0);
        // combining acute accent: a mark, in both o200k classes, not a letter
        assert_eq!(class_of(t, '\u{301}' as u32), UPPERISH | LOWERISH);
        // Lo (CJK) is in both o200k classes and a letter
        assert_eq!(class_of(t, '中' as u32), LETTER | UPPERISH | LOWERISH);
    }
}
