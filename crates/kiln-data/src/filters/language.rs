//! Language identification with `whatlang` (pure Rust, trigram profiles
//! compiled into the binary: nothing is downloaded at run time).
//!
//! datatrove uses fastText lid.176 with a 0.65 threshold; whatlang's
//! confidence is a different scale, so the default threshold here was chosen
//! on the embedded corpus (see docs/data.md), not copied.

use super::Rejection;
use serde::Deserialize;

const NAME: &str = "language";

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Language {
    pub enabled: bool,
    /// ISO 639-3 codes to keep (whatlang's `Lang::code()`, e.g. "eng").
    /// Empty: keep any language detected with enough confidence.
    pub languages: Vec<String>,
    /// Minimum detector confidence (0..1).
    pub threshold: f64,
    /// Only the first `max_chars` characters are looked at (speed).
    pub max_chars: usize,
}

impl Default for Language {
    fn default() -> Self {
        Language {
            enabled: true,
            languages: vec!["eng".into()],
            threshold: 0.5,
            max_chars: 1000,
        }
    }
}

/// What the detector said: language code and confidence.
#[derive(Clone, Debug, PartialEq)]
pub struct Detected {
    pub lang: &'static str,
    pub confidence: f64,
}

pub fn detect(text: &str, max_chars: usize) -> Option<Detected> {
    let end = text
        .char_indices()
        .nth(max_chars)
        .map_or(text.len(), |(i, _)| i);
    whatlang::detect(&text[..end]).map(|info| Detected {
        lang: info.lang().code(),
        confidence: info.confidence(),
    })
}

impl Language {
    /// Keeps the document when the detected language is wanted and the
    /// confidence is at least the threshold.
    pub fn check(&self, text: &str) -> (Option<Detected>, Option<Rejection>) {
        let d = detect(text, self.max_chars);
        let rej = match &d {
            None => Some(Rejection::new(NAME, "undetected", 0.0, self.threshold)),
            Some(d)
                if !self.languages.is_empty() && !self.languages.iter().any(|l| l == d.lang) =>
            {
                Some(Rejection::new(
                    NAME,
                    "other_language",
                    d.confidence,
                    self.threshold,
                ))
            }
            Some(d) if d.confidence < self.threshold => Some(Rejection::new(
                NAME,
                "low_confidence",
                d.confidence,
                self.threshold,
            )),
            _ => None,
        };
        (d, rej)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_english_drops_german() {
        let f = Language::default();
        let en = "The quick brown fox jumps over the lazy dog, and then it runs into the forest where it lives with its family.";
        let de = "Der schnelle braune Fuchs springt über den faulen Hund und läuft dann in den Wald, wo er mit seiner Familie lebt.";
        let (d, r) = f.check(en);
        assert_eq!(d.unwrap().lang, "eng");
        assert!(r.is_none());
        let (d, r) = f.check(de);
        assert_eq!(d.unwrap().lang, "deu");
        assert_eq!(r.unwrap().rule, "other_language");
    }

    #[test]
    fn threshold_and_empty_list() {
        let en = "The quick brown fox jumps over the lazy dog, and then it runs into the forest.";
        let conf = detect(en, 2000).unwrap().confidence;
        let at = Language {
            threshold: conf,
            ..Default::default()
        };
        assert!(at.check(en).1.is_none());
        let above = Language {
            threshold: conf + 1e-6,
            ..Default::default()
        };
        assert_eq!(above.check(en).1.unwrap().rule, "low_confidence");
        let any = Language {
            languages: vec![],
            threshold: 0.0,
            ..Default::default()
        };
        let de =
            "Der schnelle braune Fuchs springt über den faulen Hund und läuft dann in den Wald.";
        assert!(any.check(de).1.is_none());
    }
}
