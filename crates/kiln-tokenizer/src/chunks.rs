//! Cutting one large text into pieces that encode independently, so a long
//! file can be encoded on several threads with the ids of a single pass.
//!
//! A cut at `p` is safe for the three built-in patterns when
//! `text[p - 2]` is an ASCII character other than whitespace, `text[p - 1]`
//! is `\n` and `text[p]` is an ASCII letter. Then the pre-token holding that
//! newline ends at `p` in the whole text and in the piece before the cut:
//! it is `\n` alone (after a letter or digit), or punctuation with the
//! newlines after it (cl100k, o200k); no alternative lets a letter take a
//! newline as its prefix, and the single-character whitespace run leaves
//! `\s++$` at the piece's end no room to match differently (a longer run
//! would: r50k splits " \n" before "b" into " " and "\n", but matches it
//! whole at the end of a text). The piece after the cut starts at a letter,
//! as a pre-token does in the whole text. BPE then works within pre-tokens,
//! so the ids agree. Custom regex patterns are never cut.

/// Byte offsets where `text` may be cut: about every `target` bytes, at the
/// first safe place at or after each target (none if there is none).
pub(crate) fn cut_points(text: &str, target: usize) -> Vec<usize> {
    let b = text.as_bytes();
    let mut cuts = Vec::new();
    let mut from = target.max(2);
    while from < b.len() {
        match find_safe(b, from) {
            Some(p) => {
                cuts.push(p);
                from = p + target.max(1);
            }
            None => break,
        }
    }
    cuts
}

/// The first safe cut at or after `from` (>= 2).
fn find_safe(b: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < b.len() {
        // Find the next newline first: memchr-like scans are cheap.
        let nl = i - 1 + b[i - 1..].iter().position(|&c| c == b'\n')?;
        let p = nl + 1;
        if p >= b.len() {
            return None;
        }
        if nl >= 1 && is_safe(b, p) {
            return Some(p);
        }
        i = p + 1;
    }
    None
}

#[inline]
fn is_safe(b: &[u8], p: usize) -> bool {
    let before = b[p - 2];
    b[p - 1] == b'\n'
        && before.is_ascii()
        && !before.is_ascii_whitespace()
        && b[p].is_ascii_alphabetic()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_only_between_a_newline_and_a_letter_after_a_visible_character() {
        let text = "ab\ncd \nef\n\ngh;\nij";
        let cuts = cut_points(text, 1);
        // "ab\n|cd", ";\n|ij"; not after " \n" nor "\n\n".
        assert_eq!(cuts, vec![3, 15]);
        for &p in &cuts {
            assert!(is_safe(text.as_bytes(), p));
        }
    }

    #[test]
    fn targets_space_the_cuts_and_text_without_a_safe_place_is_whole() {
        let line = "word word word\n";
        let text = line.repeat(100);
        let cuts = cut_points(&text, 10 * line.len());
        assert_eq!(cuts.len(), 9);
        assert!(cuts.windows(2).all(|w| w[1] - w[0] >= 10 * line.len()));
        assert!(cut_points("no newline at all", 1).is_empty());
        assert!(cut_points("ends with\n", 1).is_empty());
        assert!(cut_points("", 1).is_empty());
        assert!(cut_points("é\nx", 1).is_empty(), "a multi-byte char before");
    }
}
