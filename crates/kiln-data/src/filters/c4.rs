//! C4 rules (Raffel et al. 2020; datatrove's `C4QualityFilter`). The filter
//! works line by line and rewrites the document: removed lines are returned
//! with their rule so they can be reported.

use super::Rejection;
use crate::words::spacy::tables;
use crate::words::{py_len, py_split, py_splitlines, py_strip};
use serde::Deserialize;

const NAME: &str = "c4";
const POLICY: [&str; 6] = [
    "terms of use",
    "privacy policy",
    "cookie policy",
    "uses cookies",
    "use of cookies",
    "use cookies",
];

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct C4 {
    pub enabled: bool,
    pub remove_citations: bool,
    /// Drop lines that do not end in `. ? ! " '` (FineWeb turns this off).
    pub filter_no_terminal_punct: bool,
    pub min_num_sentences: usize,
    pub min_words_per_line: usize,
    pub max_word_length: usize,
    pub filter_lorem_ipsum: bool,
    pub filter_javascript: bool,
    pub filter_curly_bracket: bool,
    pub filter_policy: bool,
}

impl Default for C4 {
    fn default() -> Self {
        C4 {
            enabled: true,
            remove_citations: true,
            filter_no_terminal_punct: true,
            min_num_sentences: 5,
            min_words_per_line: 3,
            max_word_length: 1000,
            filter_lorem_ipsum: true,
            filter_javascript: true,
            filter_curly_bracket: true,
            filter_policy: true,
        }
    }
}

/// A line the filter removed: 1-based line number in the document, rule, text.
#[derive(Clone, Debug, PartialEq)]
pub struct RemovedLine {
    pub line: usize,
    pub rule: &'static str,
    pub text: String,
}

/// The outcome: the rewritten text and the removed lines, or a rejection of
/// the whole document.
#[derive(Debug, PartialEq)]
pub enum C4Outcome {
    Keep {
        text: String,
        removed: Vec<RemovedLine>,
    },
    Drop(Rejection),
}

impl C4 {
    pub fn apply(&self, text: &str) -> C4Outcome {
        let mut kept: Vec<String> = Vec::new();
        let mut removed = Vec::new();
        let mut sentences = 0usize;
        for (i, raw) in py_splitlines(text).into_iter().enumerate() {
            let line = py_strip(raw);
            let mut drop = |rule| {
                removed.push(RemovedLine {
                    line: i + 1,
                    rule,
                    text: raw.to_string(),
                })
            };
            let words: Vec<&str> = py_split(line).collect();
            if words.iter().any(|w| py_len(w) > self.max_word_length) {
                drop("max_word_length");
                continue;
            }
            let line = if self.remove_citations {
                remove_citations(line)
            } else {
                line.to_string()
            };
            let line = line.as_str();
            if self.filter_no_terminal_punct
                && (!line.ends_with(['.', '?', '!', '"', '\'']) || line.ends_with("..."))
            {
                drop("no_terminal_punct");
                continue;
            }
            if words.len() < self.min_words_per_line {
                drop("too_few_words");
                continue;
            }
            let lower = line.to_lowercase();
            if self.filter_lorem_ipsum && lower.contains("lorem ipsum") {
                return C4Outcome::Drop(Rejection::new(NAME, "lorem_ipsum", 1.0, 0.0));
            }
            if self.filter_javascript && lower.contains("javascript") {
                drop("javascript");
                continue;
            }
            if self.filter_curly_bracket && line.contains('{') {
                return C4Outcome::Drop(Rejection::new(NAME, "curly_bracket", 1.0, 0.0));
            }
            if self.filter_policy && POLICY.iter().any(|p| lower.contains(p)) {
                drop("policy");
                continue;
            }
            sentences += crate::words::count_sentences(line);
            kept.push(line.to_string());
        }
        if sentences < self.min_num_sentences {
            return C4Outcome::Drop(Rejection::new(
                NAME,
                "too_few_sentences",
                sentences as f64,
                self.min_num_sentences as f64,
            ));
        }
        C4Outcome::Keep {
            text: kept.join("\n"),
            removed,
        }
    }
}

/// Removes `[12]`, `[]`, `[edit]`, `[citation needed]` (Wikipedia residue):
/// datatrove's `CITATION_REGEX.sub("", line)`, digits being Unicode's.
pub fn remove_citations(line: &str) -> String {
    if !line.contains('[') {
        return line.to_string();
    }
    let t = tables();
    let chars: Vec<char> = line.chars().collect();
    let mut out = String::with_capacity(line.len());
    let mut pos = 0;
    for (a, b) in t.citation.find_iter(t.sets(), &chars) {
        out.extend(&chars[pos..a]);
        pos = b;
    }
    out.extend(&chars[pos..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(f: &C4, t: &str) -> Result<(String, Vec<&'static str>), &'static str> {
        match f.apply(t) {
            C4Outcome::Keep { text, removed } => {
                Ok((text, removed.iter().map(|r| r.rule).collect()))
            }
            C4Outcome::Drop(r) => Err(r.rule),
        }
    }

    const GOOD: &str = "This is a sentence that ends well.";

    #[test]
    fn citations_as_datatrove_removes_them() {
        assert_eq!(
            remove_citations("a[1] b[] c[edit] d[citation needed] e[x]"),
            "a b c d e[x]"
        );
        assert_eq!(
            remove_citations("Arabic digits[\u{663}]."),
            "Arabic digits."
        );
    }

    #[test]
    fn min_sentences_threshold() {
        let f = C4::default();
        assert!(outcome(&f, &[GOOD; 5].join("\n")).is_ok());
        assert_eq!(outcome(&f, &[GOOD; 4].join("\n")), Err("too_few_sentences"));
    }

    #[test]
    fn line_rules_rewrite_the_document() {
        let f = C4::default();
        let t = [
            GOOD,
            "Home | About", // no terminal punctuation
            "Too short.",   // 2 words
            "Please enable JavaScript to continue.",
            "Read our privacy policy now.",
            "Ends with an ellipsis...",
            GOOD,
            GOOD,
            GOOD,
            GOOD,
            "A cited claim[12] stays.[citation needed]",
        ]
        .join("\n");
        let (text, rules) = outcome(&f, &t).unwrap();
        assert_eq!(
            rules,
            vec![
                "no_terminal_punct",
                "too_few_words",
                "javascript",
                "policy",
                "no_terminal_punct"
            ]
        );
        assert_eq!(text.lines().count(), 6);
        assert!(text.ends_with("A cited claim stays."));
    }

    #[test]
    fn words_per_line_threshold_and_terminal_punct_switch() {
        let f = C4 {
            min_num_sentences: 1,
            ..Default::default()
        };
        assert_eq!(
            outcome(&f, "Three words here.").unwrap().1,
            Vec::<&str>::new()
        );
        assert_eq!(
            outcome(&f, "Two words.\nThree words here.").unwrap().1,
            vec!["too_few_words"]
        );
        let f = C4 {
            min_num_sentences: 1,
            filter_no_terminal_punct: false,
            ..Default::default()
        };
        assert_eq!(
            outcome(&f, "no punctuation at all").unwrap().1,
            Vec::<&str>::new()
        );
    }

    #[test]
    fn document_level_rules() {
        let f = C4::default();
        let base = [GOOD; 5].join("\n");
        assert_eq!(
            outcome(&f, &format!("{base}\nLorem ipsum dolor sit amet.")),
            Err("lorem_ipsum")
        );
        assert_eq!(
            outcome(&f, &format!("{base}\nvar x = {{ a: 1 }} is code.")),
            Err("curly_bracket")
        );
        // A javascript line with a brace is removed as a line first (as in datatrove).
        assert!(outcome(&f, &format!("{base}\nfunction javascript() {{ run it. }}")).is_ok());
        let long = "a".repeat(1001);
        assert_eq!(
            outcome(&f, &format!("{base}\nword {long} end.")).unwrap().1,
            vec!["max_word_length"]
        );
    }
}
