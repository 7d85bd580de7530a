//! Gopher repetition rules (Rae et al. 2021, Table A1; datatrove's
//! `GopherRepetitionFilter`). All character fractions are over the document
//! length in characters (code points), as in datatrove.

use super::{ratio, Rejection};
use crate::fxhash::{mix_ids, FxHashMap, FxHashSet};
use crate::words::{py_len, py_strip};
use serde::Deserialize;
use xxhash_rust::xxh3::xxh3_128;

const NAME: &str = "gopher_repetition";

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GopherRepetition {
    pub enabled: bool,
    pub dup_para_frac: f64,
    pub dup_para_char_frac: f64,
    pub dup_line_frac: f64,
    pub dup_line_char_frac: f64,
    /// (n, max fraction of characters in the most common n-gram).
    pub top_n_grams: Vec<(usize, f64)>,
    /// (n, max fraction of characters in duplicated n-grams).
    pub dup_n_grams: Vec<(usize, f64)>,
}

impl Default for GopherRepetition {
    fn default() -> Self {
        GopherRepetition {
            enabled: true,
            dup_para_frac: 0.3,
            dup_para_char_frac: 0.2,
            dup_line_frac: 0.3,
            dup_line_char_frac: 0.2,
            top_n_grams: vec![(2, 0.2), (3, 0.18), (4, 0.16)],
            dup_n_grams: vec![
                (5, 0.15),
                (6, 0.14),
                (7, 0.13),
                (8, 0.12),
                (9, 0.11),
                (10, 0.1),
            ],
        }
    }
}

/// (number of duplicate elements, their total characters): an element is a
/// duplicate when it was seen before (the first occurrence is not).
pub fn find_duplicates<'a>(elements: impl Iterator<Item = &'a str>) -> (usize, usize) {
    let mut seen = FxHashSet::default();
    let (mut n, mut chars) = (0, 0);
    for e in elements {
        if !seen.insert(e) {
            n += 1;
            chars += py_len(e);
        }
    }
    (n, chars)
}

/// Words as dense ids plus their lengths in characters, so n-grams can be
/// compared as integer keys.
pub struct WordIds {
    pub ids: Vec<u32>,
    pub lens: Vec<u32>,
    /// The words concatenated, and where each ends in it: any n words
    /// joined without spaces are one slice, hashed without copying.
    joined: String,
    ends: Vec<usize>,
}

impl WordIds {
    pub fn new(words: &[&str]) -> Self {
        let mut map: FxHashMap<&str, u32> = FxHashMap::default();
        let mut ids = Vec::with_capacity(words.len());
        let mut lens = Vec::with_capacity(words.len());
        let mut joined = String::with_capacity(words.iter().map(|w| w.len()).sum());
        let mut ends = Vec::with_capacity(words.len() + 1);
        ends.push(0);
        for w in words {
            let next = map.len() as u32;
            ids.push(*map.entry(w).or_insert(next));
            lens.push(py_len(w) as u32);
            joined.push_str(w);
            ends.push(joined.len());
        }
        WordIds {
            ids,
            lens,
            joined,
            ends,
        }
    }

    fn chars(&self, i: usize, n: usize) -> usize {
        self.lens[i..i + n].iter().map(|&l| l as usize).sum()
    }

    /// Characters of the most common n-gram times its count; n-grams are
    /// the words joined by single spaces (datatrove's `find_top_duplicate`).
    pub fn top_ngram_chars(&self, n: usize) -> usize {
        if self.ids.len() < n || n == 0 {
            return 0;
        }
        let keys: Vec<u64> = self.ids.windows(n).map(mix_ids).collect();
        let mut counts: FxHashMap<u64, u32> = FxHashMap::default();
        counts.reserve(keys.len());
        for &k in &keys {
            *counts.entry(k).or_default() += 1;
        }
        // Ties go to the first n-gram seen, as Python's Counter.most_common does.
        let (mut best_i, mut best_c) = (0usize, 0u32);
        for (i, k) in keys.iter().enumerate() {
            let c = counts[k];
            if c > best_c {
                (best_i, best_c) = (i, c);
            }
        }
        (self.chars(best_i, n) + n - 1) * best_c as usize
    }

    /// Characters in duplicated n-grams (datatrove's `find_all_duplicate`):
    /// slide over the words; an n-gram seen before adds its characters and
    /// skips ahead n words. As in datatrove an n-gram is its words joined
    /// without spaces, so "ab c" and "a bc" are the same n-gram (compared
    /// by a 128-bit hash of the joined text).
    pub fn duplicated_ngram_chars(&self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        let words = self.ids.len();
        let mut seen: FxHashSet<u128> = FxHashSet::default();
        seen.reserve(words);
        let mut total = 0;
        let mut i = 0;
        while i + n <= words {
            let gram = &self.joined.as_bytes()[self.ends[i]..self.ends[i + n]];
            if !seen.insert(xxh3_128(gram)) {
                total += self.chars(i, n);
                i += n;
            } else {
                i += 1;
            }
        }
        total
    }
}

/// [`WordIds::top_ngram_chars`] on words.
pub fn top_ngram_chars(words: &[&str], n: usize) -> usize {
    WordIds::new(words).top_ngram_chars(n)
}

/// [`WordIds::duplicated_ngram_chars`] on words.
pub fn duplicated_ngram_chars(words: &[&str], n: usize) -> usize {
    WordIds::new(words).duplicated_ngram_chars(n)
}

/// Paragraphs: `re.split(r"\n{2,}", text.strip())`.
fn paragraphs(text: &str) -> impl Iterator<Item = &str> {
    let t = py_strip(text);
    let mut rest = t;
    let mut done = t.is_empty();
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        match rest.find("\n\n") {
            Some(i) => {
                let p = &rest[..i];
                rest = rest[i..].trim_start_matches('\n');
                Some(p)
            }
            None => {
                done = true;
                Some(rest)
            }
        }
    })
}

/// Lines: `re.split("\n+", text)`.
fn lines(text: &str) -> impl Iterator<Item = &str> {
    let leading = text.starts_with('\n');
    let trailing = text.ends_with('\n') && !text.is_empty();
    let core = text.trim_matches('\n');
    let body = core.split('\n').filter(|l| !l.is_empty());
    let empty_core = core.is_empty();
    std::iter::once("")
        .filter(move |_| leading || empty_core)
        .chain(body)
        .chain(std::iter::once("").filter(move |_| trailing && !empty_core))
}

impl GopherRepetition {
    pub fn check(&self, text: &str, words: &[&str]) -> Option<Rejection> {
        let text_chars = py_len(text);
        let r = |rule, v, t| Some(Rejection::new(NAME, rule, v, t));
        let n_para = paragraphs(text).count();
        let (dp, dpc) = find_duplicates(paragraphs(text));
        let f = ratio(dp, n_para);
        if f > self.dup_para_frac {
            return r("dup_para_frac", f, self.dup_para_frac);
        }
        let f = ratio(dpc, text_chars);
        if f > self.dup_para_char_frac {
            return r("dup_para_char_frac", f, self.dup_para_char_frac);
        }
        let n_lines = lines(text).count();
        let (dl, dlc) = find_duplicates(lines(text));
        let f = ratio(dl, n_lines);
        if f > self.dup_line_frac {
            return r("dup_line_frac", f, self.dup_line_frac);
        }
        let f = ratio(dlc, text_chars);
        if f > self.dup_line_char_frac {
            return r("dup_line_char_frac", f, self.dup_line_char_frac);
        }
        let ids = WordIds::new(words);
        for &(n, thr) in &self.top_n_grams {
            let f = ratio(ids.top_ngram_chars(n), text_chars);
            if f > thr {
                return r(top_rule(n), f, thr);
            }
        }
        for &(n, thr) in &self.dup_n_grams {
            let f = ratio(ids.duplicated_ngram_chars(n), text_chars);
            if f > thr {
                return r(dup_rule(n), f, thr);
            }
        }
        None
    }
}

fn top_rule(n: usize) -> &'static str {
    match n {
        2 => "top_2_gram",
        3 => "top_3_gram",
        4 => "top_4_gram",
        _ => "top_n_gram",
    }
}

fn dup_rule(n: usize) -> &'static str {
    const R: [&str; 11] = [
        "duplicated_n_grams",
        "duplicated_n_grams",
        "duplicated_n_grams",
        "duplicated_n_grams",
        "duplicated_n_grams",
        "duplicated_5_n_grams",
        "duplicated_6_n_grams",
        "duplicated_7_n_grams",
        "duplicated_8_n_grams",
        "duplicated_9_n_grams",
        "duplicated_10_n_grams",
    ];
    R.get(n).copied().unwrap_or("duplicated_n_grams")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::words::split_words;
    use proptest::prelude::*;
    use std::collections::HashSet;

    fn check(f: &GopherRepetition, t: &str) -> Option<&'static str> {
        f.check(t, &split_words(t)).map(|r| r.rule)
    }

    /// Distinct words w0 w1 ... so no n-gram repeats.
    fn distinct(n: usize, off: usize) -> String {
        (off..off + n)
            .map(|i| format!("w{i:04}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn splitting_matches_python_regexes() {
        assert_eq!(
            paragraphs("\n a\n\n\nb\n\n").collect::<Vec<_>>(),
            vec!["a", "b"]
        );
        assert_eq!(lines("a\n\nb").collect::<Vec<_>>(), vec!["a", "b"]);
        assert_eq!(lines("\na\n").collect::<Vec<_>>(), vec!["", "a", ""]);
        assert_eq!(lines("").collect::<Vec<_>>(), vec![""]);
    }

    #[test]
    fn duplicate_line_fraction_threshold() {
        let f = GopherRepetition {
            dup_line_char_frac: 1.0,
            dup_para_char_frac: 1.0,
            dup_para_frac: 1.0,
            top_n_grams: vec![],
            dup_n_grams: vec![],
            ..Default::default()
        };
        // 10 lines, 3 duplicates: 0.3 keep; 4 duplicates: drop.
        let mut l: Vec<String> = (0..10).map(|i| distinct(3, i * 3)).collect();
        for i in 1..=3 {
            l[i] = l[0].clone();
        }
        assert_eq!(check(&f, &l.join("\n")), None);
        l[4] = l[0].clone();
        assert_eq!(check(&f, &l.join("\n")), Some("dup_line_frac"));
    }

    #[test]
    fn duplicate_paragraph_rules() {
        let d = GopherRepetition::default();
        // 10 paragraphs with 3 duplicated ones (but short: small char fraction).
        let long: Vec<String> = (0..10).map(|i| distinct(40, i * 40)).collect();
        let mut p = long.clone();
        p[9] = "same para".into();
        p[8] = "same para".into();
        p[7] = "same para".into();
        p[6] = "same para".into(); // 3 dups of 10 = 0.3: keep
        assert_eq!(check(&d, &p.join("\n\n")), None);
        p[5] = "same para".into(); // 4 dups: 0.4 > 0.3
        assert_eq!(check(&d, &p.join("\n\n")), Some("dup_para_frac"));
        // One long duplicated paragraph among 4: 1/4 of paragraphs (keep) but
        // about 25% of characters (drop).
        let mut p = long[..3].to_vec();
        p.push(long[0].clone());
        assert_eq!(check(&d, &p.join("\n\n")), Some("dup_para_char_frac"));
    }

    #[test]
    fn top_ngram_threshold() {
        let f = GopherRepetition {
            dup_n_grams: vec![],
            top_n_grams: vec![(2, 0.2)],
            ..Default::default()
        };
        // "ab cd" (5 chars) repeated k times in a text of ~L chars.
        let filler = distinct(200, 0); // 200*6-1 = 1199 chars
        let text = |k: usize| format!("{filler} {}", vec!["ab cd"; k].join(" x "));
        // fraction = 5k / len; find k just below and above 0.2.
        let frac = |k: usize| {
            let t = text(k);
            top_ngram_chars(&split_words(&t), 2) as f64 / t.chars().count() as f64
        };
        let k_keep = (1..200).take_while(|&k| frac(k) <= 0.2).last().unwrap();
        assert_eq!(check(&f, &text(k_keep)), None);
        assert_eq!(check(&f, &text(k_keep + 1)), Some("top_2_gram"));
    }

    #[test]
    fn duplicated_ngram_chars_skips_ahead() {
        // a b c d e a b c d e: the second 5-gram "abcde" is a duplicate (5 chars).
        let w = split_words("a b c d e a b c d e");
        assert_eq!(duplicated_ngram_chars(&w, 5), 5);
        assert_eq!(duplicated_ngram_chars(&w, 10), 0);
        let f = GopherRepetition::default();
        let t = format!("{} {}", distinct(100, 0), distinct(100, 0));
        assert_eq!(check(&f, &t), Some("duplicated_5_n_grams"));
        assert_eq!(check(&f, &distinct(200, 0)), None);
    }

    proptest! {
        /// The duplicate count never exceeds the element count, and the first
        /// occurrence of each element is never counted.
        #[test]
        fn duplicates_bounded(v in proptest::collection::vec("[ab]{0,2}", 0..30)) {
            let (n, _) = find_duplicates(v.iter().map(|s| s.as_str()));
            let distinct: HashSet<&String> = v.iter().collect();
            prop_assert_eq!(n, v.len() - distinct.len());
        }
    }
}
