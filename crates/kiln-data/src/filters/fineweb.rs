//! FineWeb's own rules (Penedo et al. 2024; datatrove's
//! `FineWebQualityFilter`, HEAD semantics: blank lines ignored).

use super::{ratio, Rejection};
use crate::words::{is_terminal_punct, py_len, py_strip};
use serde::Deserialize;
use std::collections::HashSet;

const NAME: &str = "fineweb";

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FineWeb {
    pub enabled: bool,
    /// Min fraction of lines ending in terminal punctuation.
    pub line_punct_thr: f64,
    /// Lines of at most `short_line_length` chars; max fraction of them.
    pub short_line_thr: f64,
    pub short_line_length: usize,
    /// Max fraction of characters in duplicated lines.
    pub char_duplicates_ratio: f64,
    /// Max newlines per word.
    pub new_line_ratio: f64,
}

impl Default for FineWeb {
    fn default() -> Self {
        FineWeb {
            enabled: true,
            line_punct_thr: 0.12,
            short_line_thr: 0.67,
            short_line_length: 30,
            char_duplicates_ratio: 0.01,
            new_line_ratio: 0.3,
        }
    }
}

impl FineWeb {
    pub fn check(&self, text: &str, n_words: usize) -> Option<Rejection> {
        let r = |rule, v, t| Some(Rejection::new(NAME, rule, v, t));
        let lines: Vec<&str> = text
            .split('\n')
            .filter(|l| !py_strip(l).is_empty())
            .collect();
        if lines.is_empty() {
            return r("empty", 0.0, 1.0);
        }
        let punct = lines
            .iter()
            .filter(|l| l.ends_with(is_terminal_punct))
            .count();
        let f = ratio(punct, lines.len());
        if f < self.line_punct_thr {
            return r("line_punct_ratio", f, self.line_punct_thr);
        }
        let short = lines
            .iter()
            .filter(|l| py_len(l) <= self.short_line_length)
            .count();
        let f = ratio(short, lines.len());
        if f > self.short_line_thr {
            return r("short_line_ratio", f, self.short_line_thr);
        }
        let mut seen = HashSet::new();
        let dup_chars: usize = lines
            .iter()
            .filter(|l| !seen.insert(**l))
            .map(|l| py_len(l))
            .sum();
        let non_nl = text.chars().filter(|&c| c != '\n').count();
        let f = ratio(dup_chars, non_nl);
        if f > self.char_duplicates_ratio {
            return r("char_dup_ratio", f, self.char_duplicates_ratio);
        }
        let f = ratio(text.matches('\n').count(), n_words);
        if f > self.new_line_ratio {
            return r("list_ratio", f, self.new_line_ratio);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::words::split_words;

    fn check(f: &FineWeb, t: &str) -> Option<&'static str> {
        f.check(t, split_words(t).len()).map(|r| r.rule)
    }

    /// A long line (> 30 chars) with many words, unique per i.
    fn line(i: usize, end: &str) -> String {
        format!("line number {i} has quite a few words in it for sure{end}")
    }

    #[test]
    fn punctuation_ratio() {
        let f = FineWeb::default();
        // 3 of 25 lines end in '.': 0.12 keep; 2 of 25: 0.08 drop.
        let mk = |k: usize| {
            (0..25)
                .map(|i| line(i, if i < k { "." } else { "" }))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(check(&f, &mk(3)), None);
        assert_eq!(check(&f, &mk(2)), Some("line_punct_ratio"));
        assert_eq!(check(&f, "\n \n"), Some("empty"));
    }

    #[test]
    fn short_line_ratio() {
        let f = FineWeb {
            new_line_ratio: 10.0,
            ..Default::default()
        };
        // 67 short of 100: keep (0.67 not > 0.67); 68: drop.
        let mk = |k: usize| {
            (0..100)
                .map(|i| {
                    if i < k {
                        format!("short {i}.")
                    } else {
                        line(i, ".")
                    }
                })
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(check(&f, &mk(67)), None);
        assert_eq!(check(&f, &mk(68)), Some("short_line_ratio"));
    }

    #[test]
    fn duplicate_line_chars() {
        let f = FineWeb::default();
        // 100 unique lines of ~52 chars + one duplicate: ~1% of chars.
        let mut l: Vec<String> = (100..200).map(|i| line(i, ".")).collect();
        let total: usize = l.iter().map(|x| x.chars().count()).sum();
        let dup = l[0].chars().count();
        l.push(l[0].clone());
        // 53 / 5353 = 0.0099: keep; a second duplicate, 106 / 5406: drop.
        assert_eq!((dup, total), (53, 5300));
        assert_eq!(check(&f, &l.join("\n")), None);
        l.push(l[1].clone());
        assert_eq!(check(&f, &l.join("\n")), Some("char_dup_ratio"));
    }

    #[test]
    fn newline_ratio() {
        let f = FineWeb {
            short_line_thr: 1.0,
            ..Default::default()
        };
        // Lines of 3 tokens ("a b0 ."): 29 newlines / 90 tokens = 0.32 > 0.3 -> drop.
        let t = (0..30)
            .map(|i| format!("a b{i}."))
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(check(&f, &t), Some("list_ratio"));
        // Lines of 5 tokens ("a b0 c d ."): 29 / 149 < 0.3 keep.
        let t = (0..30)
            .map(|i| format!("a b{i} c d"))
            .collect::<Vec<_>>()
            .join(".\n");
        assert_eq!(check(&f, &t), None);
    }
}
