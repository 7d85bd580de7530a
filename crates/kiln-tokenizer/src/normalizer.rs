//! Text normalizers, as Hugging Face `tokenizers` applies them to the text
//! between added tokens before pre-tokenization: Unicode normal forms,
//! lowercasing, accent and whitespace stripping, a prefix (`Prepend`) and
//! literal replacement (`Replace`).
//!
//! The Unicode tables are unicode-normalization's; HF's fork of that crate
//! is older, so characters assigned since may normalize differently there.

use unicode_normalization::UnicodeNormalization;

/// One normalizer step; a list of them runs in order (HF's `Sequence`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Normalizer {
    Nfc,
    Nfd,
    Nfkc,
    Nfkd,
    /// Each character lowercased on its own (`char::to_lowercase`, as HF
    /// does: no final-sigma rule).
    Lowercase,
    /// Drop combining marks (after NFD/NFKD this removes accents).
    StripAccents,
    /// Drop leading / trailing whitespace.
    Strip {
        left: bool,
        right: bool,
    },
    /// Put this text in front of a non-empty input.
    Prepend(String),
    /// Replace every (non-overlapping, leftmost) occurrence of a literal.
    Replace {
        pattern: String,
        content: String,
    },
}

impl Normalizer {
    fn apply(&self, s: &str) -> String {
        match self {
            Normalizer::Nfc => s.nfc().collect(),
            Normalizer::Nfd => s.nfd().collect(),
            Normalizer::Nfkc => s.nfkc().collect(),
            Normalizer::Nfkd => s.nfkd().collect(),
            Normalizer::Lowercase => s.chars().flat_map(char::to_lowercase).collect(),
            Normalizer::StripAccents => s
                .chars()
                .filter(|&c| !unicode_normalization::char::is_combining_mark(c))
                .collect(),
            Normalizer::Strip { left, right } => {
                let mut t = s;
                if *left {
                    t = t.trim_start_matches(char::is_whitespace);
                }
                if *right {
                    t = t.trim_end_matches(char::is_whitespace);
                }
                t.to_string()
            }
            Normalizer::Prepend(p) if !s.is_empty() => format!("{p}{s}"),
            Normalizer::Prepend(_) => String::new(),
            Normalizer::Replace { pattern, content } => s.replace(pattern.as_str(), content),
        }
    }
}

/// Runs `steps` in order over `text`.
pub fn normalize(steps: &[Normalizer], text: &str) -> String {
    let mut s = text.to_string();
    for n in steps {
        s = n.apply(&s);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_run_in_order() {
        let llama2 = [
            Normalizer::Prepend("\u{2581}".into()),
            Normalizer::Replace {
                pattern: " ".into(),
                content: "\u{2581}".into(),
            },
        ];
        assert_eq!(normalize(&llama2, "a b"), "\u{2581}a\u{2581}b");
        assert_eq!(normalize(&llama2, ""), "");
        assert_eq!(normalize(&[Normalizer::Nfc], "e\u{301}"), "\u{e9}");
        assert_eq!(normalize(&[Normalizer::Nfd], "\u{e9}"), "e\u{301}");
        assert_eq!(normalize(&[Normalizer::Nfkc], "\u{fb01}"), "fi");
        // Per character: a final capital sigma lowercases to σ, not ς.
        assert_eq!(normalize(&[Normalizer::Lowercase], "ΟΣ"), "οσ");
        let strip = [
            Normalizer::Nfd,
            Normalizer::StripAccents,
            Normalizer::Strip {
                left: true,
                right: false,
            },
        ];
        assert_eq!(normalize(&strip, " \tcafé naïve "), "cafe naive ");
    }
}
