//! Hand-written lexers for the three fixed pre-tokenization patterns
//! (GPT-2/r50k, cl100k, o200k). Each function returns where the regex's
//! leftmost-first match starting at `i` ends, following the alternatives in
//! their regex order and reproducing the backtracking of `\s+(?!\S)`,
//! `\s*[\r\n]` and o200k's `U*L+`. Every step moves forward, so splitting is
//! linear in the input (no backtracking blow-up, no recursion).
//!
//! `tests/lexer_vs_regex.rs` checks them against fancy-regex on the verbatim
//! patterns.

use crate::char_class::{classes, LETTER, LOWERISH, NUMBER, SPACE, UPPERISH};

/// Which fixed pattern a lexer implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lexer {
    Gpt2,
    Cl100k,
    O200k,
}

struct Text<'a> {
    b: &'a [u8],
    t: &'static [u8],
}

impl Text<'_> {
    /// (code point, byte length) of the char starting at `i` (< len).
    #[inline(always)]
    fn ch(&self, i: usize) -> (u32, usize) {
        let b0 = self.b[i];
        if b0 < 0x80 {
            return (b0 as u32, 1);
        }
        // Input is a valid &str, so the sequence is well formed.
        if b0 < 0xE0 {
            (((b0 as u32 & 0x1F) << 6) | (self.b[i + 1] as u32 & 0x3F), 2)
        } else if b0 < 0xF0 {
            (
                ((b0 as u32 & 0x0F) << 12)
                    | ((self.b[i + 1] as u32 & 0x3F) << 6)
                    | (self.b[i + 2] as u32 & 0x3F),
                3,
            )
        } else {
            (
                ((b0 as u32 & 0x07) << 18)
                    | ((self.b[i + 1] as u32 & 0x3F) << 12)
                    | ((self.b[i + 2] as u32 & 0x3F) << 6)
                    | (self.b[i + 3] as u32 & 0x3F),
                4,
            )
        }
    }

    #[inline(always)]
    fn class(&self, cp: u32) -> u8 {
        self.t[cp as usize]
    }

    /// Class bits at `i`, or None at the end.
    #[inline(always)]
    fn class_at(&self, i: usize) -> Option<(u32, u8, usize)> {
        if i >= self.b.len() {
            return None;
        }
        let (c, n) = self.ch(i);
        Some((c, self.class(c), n))
    }

    /// End of the run of chars from `i` whose class satisfies `pred`.
    #[inline(always)]
    fn run(&self, mut i: usize, pred: impl Fn(u32, u8) -> bool) -> usize {
        while i < self.b.len() {
            let (c, n) = self.ch(i);
            if !pred(c, self.class(c)) {
                break;
            }
            i += n;
        }
        i
    }

    /// Up to `max` chars of class `bit` from `i`.
    #[inline(always)]
    fn run_max(&self, mut i: usize, bit: u8, max: usize) -> usize {
        for _ in 0..max {
            match self.class_at(i) {
                Some((_, cl, n)) if cl & bit != 0 => i += n,
                _ => break,
            }
        }
        i
    }

    /// Whitespace run from `i`: (end, start of its last char, end of its
    /// last `\r`/`\n` if any).
    #[inline(always)]
    fn space_run(&self, mut i: usize) -> (usize, usize, Option<usize>) {
        let mut last_start = i;
        let mut last_nl = None;
        while i < self.b.len() {
            let (c, n) = self.ch(i);
            if self.class(c) & SPACE == 0 {
                break;
            }
            if c == '\r' as u32 || c == '\n' as u32 {
                last_nl = Some(i + n);
            }
            last_start = i;
            i += n;
        }
        (i, last_start, last_nl)
    }

    /// `'s|'t|'re|'ve|'m|'ll|'d` at `i` (which holds the apostrophe);
    /// `fold` = case-insensitive, where `s` also matches U+017F (long s),
    /// as Unicode simple case folding does in the regex engines.
    #[inline(always)]
    fn contraction(&self, i: usize, fold: bool) -> Option<usize> {
        if self.b.get(i) != Some(&b'\'') {
            return None;
        }
        let j = i + 1;
        let lower = |k: usize| -> Option<u8> {
            let &c = self.b.get(k)?;
            Some(if fold { c.to_ascii_lowercase() } else { c })
        };
        match lower(j) {
            Some(b's' | b'd' | b'm' | b't') => return Some(j + 1),
            Some(b'l') if lower(j + 1) == Some(b'l') => return Some(j + 2),
            Some(b'v' | b'r') if lower(j + 1) == Some(b'e') => return Some(j + 2),
            _ => {}
        }
        if fold && self.b.get(j..j + 2) == Some(&[0xC5, 0xBF]) {
            return Some(j + 2);
        }
        None
    }
}

#[inline(always)]
fn is_punct(cl: u8) -> bool {
    cl & (SPACE | LETTER | NUMBER) == 0
}

#[inline(always)]
fn is_newline(c: u32) -> bool {
    c == '\r' as u32 || c == '\n' as u32
}

/// Whitespace tail shared by the patterns: `\s+(?!\S)` then a fallback.
/// `nl_first`: cl100k/o200k try `\s*[\r\n]` before `\s+(?!\S)`; `end_first`:
/// r50k/cl100k try `\s++$` before everything.
#[inline(always)]
fn space_piece(t: &Text, i: usize, n: usize, nl: bool) -> usize {
    let (end, last_start, last_nl) = t.space_run(i);
    if end == t.b.len() {
        // `\s++$` (r50k, cl100k) and `\s+(?!\S)` at the end (o200k) agree,
        // except o200k tries `\s*[\r\n]+` first.
        if nl {
            if let Some(e) = last_nl {
                // cl100k has `\s++$` before `\s*[\r\n]`: whole run.
                return e;
            }
        }
        return end;
    }
    if nl {
        if let Some(e) = last_nl {
            return e;
        }
    }
    if last_start > i {
        last_start
    } else {
        i + n
    }
}

fn next_gpt2(t: &Text, i: usize) -> usize {
    let (c, cl, n) = t.class_at(i).expect("i < len");
    if c == '\'' as u32 {
        if let Some(e) = t.contraction(i, false) {
            return e;
        }
    }
    // ` ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++`
    let (start, cls) = if cl & SPACE == 0 {
        (i, cl)
    } else if c == ' ' as u32 {
        match t.class_at(i + 1) {
            Some((_, cl2, _)) if cl2 & SPACE == 0 => (i + 1, cl2),
            _ => (usize::MAX, 0),
        }
    } else {
        (usize::MAX, 0)
    };
    if start != usize::MAX {
        return if cls & LETTER != 0 {
            t.run(start, |_, k| k & LETTER != 0)
        } else if cls & NUMBER != 0 {
            t.run(start, |_, k| k & NUMBER != 0)
        } else {
            t.run(start, |_, k| is_punct(k))
        };
    }
    // `\s++$|\s+(?!\S)|\s`
    let (end, last_start, _) = t.space_run(i);
    if end == t.b.len() {
        end
    } else if last_start > i {
        last_start
    } else {
        i + n
    }
}

fn next_cl100k(t: &Text, i: usize) -> usize {
    let (c, cl, n) = t.class_at(i).expect("i < len");
    if c == '\'' as u32 {
        if let Some(e) = t.contraction(i, true) {
            return e;
        }
    }
    // `[^\r\n\p{L}\p{N}]?+\p{L}++`
    if cl & LETTER != 0 {
        return t.run(i + n, |_, k| k & LETTER != 0);
    }
    if cl & NUMBER == 0 && !is_newline(c) {
        if let Some((_, cl2, n2)) = t.class_at(i + n) {
            if cl2 & LETTER != 0 {
                return t.run(i + n + n2, |_, k| k & LETTER != 0);
            }
        }
    }
    // `\p{N}{1,3}+`
    if cl & NUMBER != 0 {
        return t.run_max(i, NUMBER, 3);
    }
    // ` ?[^\s\p{L}\p{N}]++[\r\n]*+`
    let punct_start = if is_punct(cl) {
        Some(i)
    } else if c == ' ' as u32 {
        match t.class_at(i + 1) {
            Some((_, cl2, _)) if is_punct(cl2) => Some(i + 1),
            _ => None,
        }
    } else {
        None
    };
    if let Some(s) = punct_start {
        let e = t.run(s, |_, k| is_punct(k));
        return t.run(e, |c, _| is_newline(c));
    }
    // `\s++$|\s*[\r\n]|\s+(?!\S)|\s`
    let (end, last_start, last_nl) = t.space_run(i);
    if end == t.b.len() {
        end
    } else if let Some(e) = last_nl {
        e
    } else if last_start > i {
        last_start
    } else {
        i + n
    }
}

/// o200k's two letter alternatives after their optional prefix, from `s`,
/// in one scan: `U*W+C?`, else (when `alt2`) `U+W*C?` (U = upper-ish,
/// W = lower-ish, C = contraction). Greedy `U*` then `W+` either continues
/// with the W run after the U run, or backtracks to just after the U run's
/// last char that is also W (Lm, Lo, marks); `U+W*` is then the U run.
#[inline(always)]
fn o200k_letters(t: &Text, s: usize, alt2: bool) -> Option<usize> {
    let len = t.b.len();
    let mut j = s;
    let mut after_both = None;
    // Class of the char at `j` once the U run ends there (0 at the end).
    let mut stop = 0;
    while j < len {
        let (c, n) = t.ch(j);
        let cl = t.class(c);
        if cl & UPPERISH == 0 {
            stop = cl;
            break;
        }
        j += n;
        if cl & LOWERISH != 0 {
            after_both = Some(j);
        }
    }
    let end = if stop & LOWERISH != 0 {
        t.run(j, |_, cl| cl & LOWERISH != 0)
    } else if let Some(e) = after_both {
        e
    } else if alt2 && j > s {
        j
    } else {
        return None;
    };
    Some(t.contraction(end, true).unwrap_or(end))
}

fn next_o200k(t: &Text, i: usize) -> usize {
    let (c, cl, n) = t.class_at(i).expect("i < len");
    if cl & (UPPERISH | LOWERISH) != 0 {
        if cl & LETTER != 0 {
            // A letter cannot be the prefix, and it starts one of the two.
            return o200k_letters(t, i, true).expect("a letter starts a match");
        }
        // A mark is both a possible prefix and lower-ish: the prefixed
        // `U*W+` first, then the unprefixed one, which cannot fail.
        return o200k_letters(t, i + n, false)
            .or_else(|| o200k_letters(t, i, false))
            .expect("a mark starts a match");
    }
    // `\p{N}{1,3}` (a digit is no prefix, and the letter alternatives
    // need a letter or mark at `i` or after a prefix).
    if cl & NUMBER != 0 {
        return t.run_max(i, NUMBER, 3);
    }
    // Punctuation or whitespace here; a letter or mark after it.
    let next = t.class_at(i + n).map_or(0, |(_, cl2, _)| cl2);
    if next & (UPPERISH | LOWERISH) != 0 && !is_newline(c) {
        return o200k_letters(t, i + n, true).expect("a letter or mark starts a match");
    }
    // ` ?[^\s\p{L}\p{N}]+[\r\n/]*`
    let punct_start = if is_punct(cl) {
        Some(i)
    } else if c == ' ' as u32 && i + n < t.b.len() && is_punct(next) {
        Some(i + 1)
    } else {
        None
    };
    if let Some(s) = punct_start {
        let e = t.run(s, |_, k| is_punct(k));
        return t.run(e, |c, _| is_newline(c) || c == '/' as u32);
    }
    if cl & SPACE != 0 {
        return space_piece(t, i, n, true);
    }
    // Unreachable for valid text (every char is L, N, space or punct),
    // kept so the lexer always advances.
    i + n
}

#[inline(always)]
fn drive<'a>(
    t: &Text,
    text: &'a str,
    next: impl Fn(&Text, usize) -> usize,
    mut f: impl FnMut(&'a str),
) {
    let mut i = 0;
    while i < t.b.len() {
        let e = next(t, i);
        debug_assert!(e > i);
        f(&text[i..e]);
        i = e;
    }
}

impl Lexer {
    /// Calls `f` with each pre-token of `text`, in order; the pieces
    /// concatenate to `text`.
    #[inline]
    pub fn split<'a>(self, text: &'a str, f: impl FnMut(&'a str)) {
        let t = Text {
            b: text.as_bytes(),
            t: classes(),
        };
        // One loop per lexer, so `next` inlines into it (a function
        // pointer cost a call per pre-token).
        match self {
            Lexer::Gpt2 => drive(&t, text, next_gpt2, f),
            Lexer::Cl100k => drive(&t, text, next_cl100k, f),
            Lexer::O200k => drive(&t, text, next_o200k, f),
        }
    }

    /// The pre-tokens of `text` as a vector (tests, tools).
    pub fn pieces(self, text: &str) -> Vec<&str> {
        let mut v = Vec::new();
        self.split(text, |p| v.push(p));
        v
    }
}
