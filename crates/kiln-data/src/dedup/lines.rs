//! Line (or paragraph) dedup with a Bloom filter, for corpora larger than
//! memory (CCNet's paragraph dedup, dolma's `dedupe` paragraphs): a line
//! seen in an earlier kept document is removed from later ones, and a
//! document left with fewer than `min_doc_words` words is dropped. Memory is
//! the filter alone, fixed by `expected_items` and `fp_rate`
//! (see [`super::bloom`]); a false positive removes a line that was not a
//! duplicate, at about `fp_rate` per line checked.
//!
//! Lines are compared after CCNet's normalisation (lowercase, digits to 0,
//! punctuation and symbols removed, whitespace collapsed). Lines shorter
//! than `min_chars` after normalisation (blank lines, "Chapter 2") are never
//! removed nor remembered. A document's lines are remembered only if the
//! document is kept, so a dropped document cannot cost later ones lines.

use super::bloom::Bloom;
use crate::words::split_words;
use serde::Deserialize;
use xxhash_rust::xxh3::xxh3_128;

/// `[line_dedup]` in the curate config (off by default).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LineDedupConfig {
    pub enabled: bool,
    /// "line" (split on `\n`) or "paragraph" (split on blank lines).
    pub unit: Unit,
    /// Lines the filter is sized for; beyond it the false-positive rate grows.
    pub expected_items: u64,
    /// Target false-positive rate at `expected_items`.
    pub fp_rate: f64,
    /// Units shorter than this (normalised chars) are kept and not remembered.
    pub min_chars: usize,
    /// A document with a unit removed and fewer words left is dropped.
    pub min_doc_words: usize,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    Line,
    Paragraph,
}

impl Default for LineDedupConfig {
    fn default() -> Self {
        LineDedupConfig {
            enabled: false,
            unit: Unit::Line,
            expected_items: 10_000_000,
            fp_rate: 1e-3,
            min_chars: 10,
            min_doc_words: 50,
        }
    }
}

/// A removed line or paragraph: its 1-based line in the document and text.
#[derive(Clone, Debug, PartialEq)]
pub struct RemovedUnit {
    pub line: usize,
    pub text: String,
}

#[derive(Debug, PartialEq)]
pub enum LineDedupOutcome {
    /// Nothing removed.
    Unchanged,
    /// Some units removed; `text` is what is left.
    Rewritten {
        text: String,
        removed: Vec<RemovedUnit>,
    },
    /// Units removed and fewer than `min_doc_words` words left in `text`.
    Drop {
        text: String,
        removed: Vec<RemovedUnit>,
        words: usize,
    },
}

pub struct LineDeduper {
    cfg: LineDedupConfig,
    bloom: Bloom,
}

/// CCNet's `normalize_for_dedup`: lowercase, digits to 0, punctuation and
/// symbols dropped, whitespace runs to one space, trimmed.
pub fn normalize_unit(s: &str, out: &mut String) {
    out.clear();
    let mut space = false;
    for c in s.chars() {
        if c.is_whitespace() {
            space = !out.is_empty();
        } else if c.is_alphanumeric() {
            if space {
                out.push(' ');
                space = false;
            }
            if c.is_numeric() {
                out.push('0');
            } else if c.is_ascii() {
                out.push(c.to_ascii_lowercase());
            } else {
                out.extend(c.to_lowercase());
            }
        }
    }
}

impl LineDeduper {
    pub fn new(cfg: LineDedupConfig) -> Self {
        let bloom = Bloom::for_items(cfg.expected_items, cfg.fp_rate);
        LineDeduper { cfg, bloom }
    }

    pub fn config(&self) -> &LineDedupConfig {
        &self.cfg
    }

    pub fn bloom(&self) -> &Bloom {
        &self.bloom
    }

    /// The chance that the last removal was a false positive (the filter's
    /// current rate), reported with each removed line.
    pub fn current_fp_rate(&self) -> f64 {
        self.bloom.current_fp_rate()
    }

    /// Removes the units of `text` seen in earlier kept documents (and
    /// repeats within it), and remembers the new ones if the document stays.
    pub fn apply(&mut self, text: &str) -> LineDedupOutcome {
        let sep = match self.cfg.unit {
            Unit::Line => "\n",
            Unit::Paragraph => "\n\n",
        };
        let mut key = String::new();
        let mut new_hashes: Vec<u128> = Vec::new();
        let mut kept: Vec<&str> = Vec::new();
        let mut removed = Vec::new();
        let mut line = 1usize;
        for unit in text.split(sep) {
            let unit_line = line;
            line += unit.matches('\n').count() + sep.len();
            normalize_unit(unit, &mut key);
            if key.chars().count() < self.cfg.min_chars {
                kept.push(unit);
                continue;
            }
            let h = xxh3_128(key.as_bytes());
            if self.bloom.contains(h) || new_hashes.contains(&h) {
                removed.push(RemovedUnit {
                    line: unit_line,
                    text: unit.to_string(),
                });
            } else {
                new_hashes.push(h);
                kept.push(unit);
            }
        }
        if removed.is_empty() {
            self.remember(&new_hashes);
            return LineDedupOutcome::Unchanged;
        }
        let text = join_units(&kept, sep);
        let words = split_words(&text).len();
        if words < self.cfg.min_doc_words {
            return LineDedupOutcome::Drop {
                text,
                removed,
                words,
            };
        }
        self.remember(&new_hashes);
        LineDedupOutcome::Rewritten { text, removed }
    }

    fn remember(&mut self, hashes: &[u128]) {
        for &h in hashes {
            self.bloom.insert(h);
        }
    }
}

/// Joins the kept units, dropping blank units left next to each other (or
/// at the ends) by a removal, so the text stays normalised.
fn join_units(units: &[&str], sep: &str) -> String {
    let mut out = String::new();
    let mut prev_blank = true;
    for u in units {
        let blank = u.trim().is_empty();
        if blank && prev_blank {
            continue;
        }
        if !out.is_empty() {
            out.push_str(sep);
        }
        out.push_str(u);
        prev_blank = blank;
    }
    while out.ends_with('\n') || out.ends_with(' ') {
        out.pop();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dedup(unit: Unit, min_doc_words: usize) -> LineDeduper {
        LineDeduper::new(LineDedupConfig {
            enabled: true,
            unit,
            expected_items: 1000,
            fp_rate: 1e-6,
            min_chars: 5,
            min_doc_words,
        })
    }

    #[test]
    fn later_copies_of_a_line_are_removed() {
        let mut d = dedup(Unit::Line, 3);
        let a = "Share this article on Facebook!\nThe river rose in the night.\nok";
        assert_eq!(d.apply(a), LineDedupOutcome::Unchanged);
        // Same line modulo case, digits and punctuation; a repeat inside
        // the document goes too; short lines stay.
        let b = "The bridge was built in 1921.\nSHARE this article on facebook\nok\nThe bridge was built in 1835!";
        match d.apply(b) {
            LineDedupOutcome::Rewritten { text, removed } => {
                assert_eq!(text, "The bridge was built in 1921.\nok");
                let got: Vec<(usize, &str)> =
                    removed.iter().map(|r| (r.line, r.text.as_str())).collect();
                assert_eq!(
                    got,
                    vec![
                        (2, "SHARE this article on facebook"),
                        (4, "The bridge was built in 1835!")
                    ]
                );
            }
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn a_document_left_too_short_is_dropped_and_not_remembered() {
        let mut d = dedup(Unit::Line, 8);
        d.apply("Cookie notice for every visitor here.");
        let short = "Cookie notice for every visitor here.\nA unique line of five words.";
        match d.apply(short) {
            LineDedupOutcome::Drop { words, text, .. } => {
                assert_eq!(text, "A unique line of five words.");
                assert_eq!(words, 7);
            }
            o => panic!("{o:?}"),
        }
        // A unique line of a dropped document was not remembered.
        assert_eq!(
            d.apply("A unique line of five words."),
            LineDedupOutcome::Unchanged
        );
    }

    #[test]
    fn paragraphs_are_units_in_paragraph_mode() {
        let mut d = dedup(Unit::Paragraph, 1);
        d.apply("First paragraph here.\nstill first.\n\nSecond one.");
        match d.apply("New words up front.\n\nFirst paragraph here.\nStill first!\n\nEnd.") {
            LineDedupOutcome::Rewritten { text, removed } => {
                assert_eq!(text, "New words up front.\n\nEnd.");
                assert_eq!(removed[0].line, 3);
            }
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn normalisation_is_ccnet_like() {
        let mut s = String::new();
        normalize_unit("  Hello, World!  It's 2024 —  ÉTÉ ", &mut s);
        assert_eq!(s, "hello world its 0000 été");
    }
}
