//! C4 rules (Raffel et al. 2020; datatrove's `C4QualityFilter`). The filter
//! works line by line and rewrites the document: removed lines are returned
//! with their rule so they can be reported.

use super::Rejection;
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
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            let mut drop = |rule| {
                removed.push(RemovedLine {
                    line: i + 1,
                    rule,
                    text: raw.to_string(),
                })
            };
            let words: Vec<&str> = line.split_whitespace().collect();
            if words
                .iter()
                .any(|w| w.chars().count() > self.max_word_length)
            {
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
            sentences += count_sentences(line);
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

/// Removes `[12]`, `[]`, `[edit]`, `[citation needed]` (Wikipedia residue).
pub fn remove_citations(line: &str) -> String {
    if !line.contains('[') {
        return line.to_string();
    }
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(i) = rest.find('[') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let close = after.find(']');
        let inner = close.map(|c| &after[..c]);
        match inner {
            Some(s)
                if s.bytes().all(|b| b.is_ascii_digit())
                    || s == "edit"
                    || s == "citation needed" =>
            {
                rest = &after[close.unwrap() + 1..];
            }
            _ => {
                out.push('[');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Sentences in a line, approximating spaCy's rule-based sentencizer: a run
/// of `.`, `!` or `?` (optionally followed by closing quotes/brackets) ends a
/// sentence when whitespace or the line end follows it; text after the last
/// terminator is one more sentence. Every non-empty line has at least one.
pub fn count_sentences(line: &str) -> usize {
    let b = line.as_bytes();
    let mut n = 0;
    let mut i = 0;
    let mut tail_has_text = false;
    while i < b.len() {
        if matches!(b[i], b'.' | b'!' | b'?') {
            let mut j = i;
            while j < b.len() && matches!(b[j], b'.' | b'!' | b'?') {
                j += 1;
            }
            while j < b.len() && matches!(b[j], b'"' | b'\'' | b')' | b']') {
                j += 1;
            }
            if (j == b.len() || b[j].is_ascii_whitespace()) && tail_has_text {
                n += 1;
                tail_has_text = false;
            }
            i = j;
            continue;
        }
        if !b[i].is_ascii_whitespace() {
            tail_has_text = true;
        }
        i += 1;
    }
    if tail_has_text {
        n += 1;
    }
    n
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
    fn sentence_counting() {
        assert_eq!(count_sentences("One. Two! Three?"), 3);
        assert_eq!(count_sentences("No terminator here"), 1);
        assert_eq!(count_sentences("He said \"go.\" Then left"), 2);
        assert_eq!(count_sentences("3.5 is a number."), 1);
        assert_eq!(count_sentences("Wait... what?"), 2);
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
