//! Gopher quality rules (Rae et al. 2021, App. A; datatrove's
//! `GopherQualityFilter`, HEAD semantics: distinct stop words).

use super::{ratio, Rejection};
use crate::words::{is_alpha, is_space, is_symbol_token, py_len, py_splitlines};
use serde::Deserialize;

const NAME: &str = "gopher_quality";

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GopherQuality {
    pub enabled: bool,
    pub min_doc_words: usize,
    pub max_doc_words: usize,
    pub min_avg_word_length: f64,
    pub max_avg_word_length: f64,
    /// Max ratio of '#' and of ellipses ("..." or "…") to words.
    pub max_symbol_word_ratio: f64,
    pub max_bullet_lines_ratio: f64,
    pub max_ellipsis_lines_ratio: f64,
    /// Min fraction of words containing a letter (datatrove's
    /// `max_non_alpha_words_ratio`, which is really a minimum).
    pub min_alpha_words_ratio: f64,
    pub min_stop_words: usize,
    pub stop_words: Vec<String>,
}

impl Default for GopherQuality {
    fn default() -> Self {
        GopherQuality {
            enabled: true,
            min_doc_words: 50,
            max_doc_words: 100_000,
            min_avg_word_length: 3.0,
            max_avg_word_length: 10.0,
            max_symbol_word_ratio: 0.1,
            max_bullet_lines_ratio: 0.9,
            max_ellipsis_lines_ratio: 0.3,
            min_alpha_words_ratio: 0.8,
            min_stop_words: 2,
            stop_words: ["the", "be", "to", "of", "and", "that", "have", "with"]
                .map(String::from)
                .to_vec(),
        }
    }
}

impl GopherQuality {
    /// `words` are `text`'s tokens from [`crate::words::split_words`].
    pub fn check(&self, text: &str, words: &[&str]) -> Option<Rejection> {
        let n_words = words.len();
        let mut n_content = 0usize;
        let mut content_chars = 0usize;
        for w in words.iter().filter(|w| !is_symbol_token(w)) {
            n_content += 1;
            content_chars += py_len(w);
        }
        let r = |rule, v, t| Some(Rejection::new(NAME, rule, v, t));
        if n_content < self.min_doc_words {
            return r("short_doc", n_content as f64, self.min_doc_words as f64);
        }
        if n_content > self.max_doc_words {
            return r("long_doc", n_content as f64, self.max_doc_words as f64);
        }
        let avg = ratio(content_chars, n_content);
        if avg < self.min_avg_word_length {
            return r("below_avg_word_length", avg, self.min_avg_word_length);
        }
        if avg > self.max_avg_word_length {
            return r("above_avg_word_length", avg, self.max_avg_word_length);
        }
        let hashes = ratio(text.matches('#').count(), n_words);
        if hashes > self.max_symbol_word_ratio {
            return r("too_many_hashes", hashes, self.max_symbol_word_ratio);
        }
        let ellipses = ratio(
            text.matches("...").count() + text.matches('…').count(),
            n_words,
        );
        if ellipses > self.max_symbol_word_ratio {
            return r("too_many_ellipsis", ellipses, self.max_symbol_word_ratio);
        }
        let (mut n_lines, mut bullets, mut end_ellipsis) = (0usize, 0usize, 0usize);
        for line in py_splitlines(text) {
            n_lines += 1;
            let l = line.trim_start_matches(is_space);
            if l.starts_with('•') || l.starts_with('-') {
                bullets += 1;
            }
            let l = line.trim_end_matches(is_space);
            if l.ends_with("...") || l.ends_with('…') {
                end_ellipsis += 1;
            }
        }
        let b = ratio(bullets, n_lines);
        if b > self.max_bullet_lines_ratio {
            return r("too_many_bullets", b, self.max_bullet_lines_ratio);
        }
        let e = ratio(end_ellipsis, n_lines);
        if e > self.max_ellipsis_lines_ratio {
            return r("too_many_end_ellipsis", e, self.max_ellipsis_lines_ratio);
        }
        let alpha = ratio(
            words.iter().filter(|w| w.chars().any(is_alpha)).count(),
            n_words,
        );
        if alpha < self.min_alpha_words_ratio {
            return r("below_alpha_threshold", alpha, self.min_alpha_words_ratio);
        }
        let mut seen = vec![false; self.stop_words.len()];
        for w in words {
            if let Some(i) = self.stop_words.iter().position(|s| s == w) {
                seen[i] = true;
            }
        }
        let distinct = seen.iter().filter(|&&s| s).count();
        if distinct < self.min_stop_words {
            return r(
                "not_enough_stop_words",
                distinct as f64,
                self.min_stop_words as f64,
            );
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::words::split_words;

    fn check(f: &GopherQuality, t: &str) -> Option<&'static str> {
        f.check(t, &split_words(t)).map(|r| r.rule)
    }

    /// `n` words of length 4 ("word"), with "the" and "and" among them.
    fn doc(n: usize) -> String {
        let mut w = vec!["word"; n];
        w[0] = "the";
        w[1] = "and";
        w.join(" ")
    }

    #[test]
    fn word_count_bounds() {
        let f = GopherQuality::default();
        assert_eq!(check(&f, &doc(50)), None);
        assert_eq!(check(&f, &doc(49)), Some("short_doc"));
        let f = GopherQuality {
            max_doc_words: 60,
            ..Default::default()
        };
        assert_eq!(check(&f, &doc(60)), None);
        assert_eq!(check(&f, &doc(61)), Some("long_doc"));
    }

    #[test]
    fn average_word_length_bounds() {
        let f = GopherQuality::default();
        // 25 x "the" (3) and 25 x "and" (3): mean exactly 3 -> keep.
        let t = ["the", "and"].repeat(25).join(" ");
        assert_eq!(check(&f, &t), None);
        let t = format!("{} be", ["the", "and"].repeat(25).join(" "));
        assert_eq!(check(&f, &t), Some("below_avg_word_length"));
        let long = "abcdefghij"; // 10 chars
        let t = format!("the and {}", vec![long; 48].join(" "));
        assert!(f
            .check(&t, &split_words(&t))
            .is_none_or(|r| r.rule != "above_avg_word_length"));
        let t = format!("the and {}", vec!["abcdefghijklm"; 48].join(" "));
        assert_eq!(check(&f, &t), Some("above_avg_word_length"));
    }

    #[test]
    fn hash_and_ellipsis_ratios() {
        let f = GopherQuality::default();
        // 100 words + 10 '#' tokens: 10 / 110 < 0.1 keep; 12 / 112 > 0.1 drop.
        let base = doc(100);
        assert_eq!(check(&f, &format!("{base}{}", " #".repeat(10))), None);
        assert_eq!(
            check(&f, &format!("{base}{}", " #".repeat(12))),
            Some("too_many_hashes")
        );
        assert_eq!(
            check(&f, &format!("{base}{}", " ...".repeat(12))),
            Some("too_many_ellipsis")
        );
    }

    #[test]
    fn bullet_and_end_ellipsis_lines() {
        let f = GopherQuality::default();
        let line = "the and word word word word word word word word";
        // 9 of 10 bullet lines = 0.9 (not > 0.9) keep; 10 of 10 drop.
        let mut lines: Vec<String> = (0..9).map(|_| format!("- {line}")).collect();
        lines.push(line.into());
        assert_eq!(check(&f, &lines.join("\n")), None);
        lines[9] = format!("• {line}");
        assert_eq!(check(&f, &lines.join("\n")), Some("too_many_bullets"));
        // 3 of 10 lines end with an ellipsis: keep; 4 of 10: drop.
        let mut lines: Vec<String> = (0..10).map(|_| format!("{line} word word")).collect();
        for l in lines.iter_mut().take(3) {
            l.push('…');
        }
        assert_eq!(check(&f, &lines.join("\n")), None);
        lines[3].push('…');
        assert_eq!(check(&f, &lines.join("\n")), Some("too_many_end_ellipsis"));
    }

    #[test]
    fn alpha_ratio_and_stop_words() {
        let f = GopherQuality::default();
        // 80 words with letters + 20 numbers: 0.8 keep; 21 numbers: drop.
        let t = format!("{} {}", doc(80), vec!["1234"; 20].join(" "));
        assert_eq!(check(&f, &t), None);
        let t = format!("{} {}", doc(80), vec!["1234"; 21].join(" "));
        assert_eq!(check(&f, &t), Some("below_alpha_threshold"));
        // One distinct stop word, many times: drop; two: keep. Case-sensitive.
        assert_eq!(
            check(
                &f,
                &vec!["the"; 60]
                    .join(" ")
                    .replace("the", "word")
                    .replacen("word", "the", 5)
            ),
            Some("not_enough_stop_words")
        );
        assert_eq!(
            check(&f, &format!("The And {}", vec!["word"; 60].join(" "))),
            Some("not_enough_stop_words")
        );
    }
}
