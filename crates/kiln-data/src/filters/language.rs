//! Language identification. The default is FineWeb's: fastText's lid.176
//! (the quantised `lid.176.ftz`, embedded; read by [`crate::fasttext`]),
//! keeping English at 0.65. `whatlang` (trigram profiles) stays available.
//!
//! Technical English (manual pages, READMEs, docstrings) is full of option
//! flags, paths, numbers and code, which pull lid.176 away from English: on
//! raw text it kept 71% of such documents at 0.65. So by default the model
//! reads only the prose words of a document (letters, an inner apostrophe,
//! one trailing `.,;:!?`), which keeps 98% of them and still rejects other
//! languages (docs/perf.md has the measurements).

use super::Rejection;
use crate::fasttext::FastText;
use serde::Deserialize;
use std::sync::OnceLock;

const NAME: &str = "language";
const LID176: &[u8] = include_bytes!("../../models/lid.176.ftz");

#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// fastText lid.176 (labels are ISO 639-1 where one exists: "en").
    Lid176,
    /// whatlang 0.18 (labels are ISO 639-3: "eng").
    Whatlang,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Language {
    pub enabled: bool,
    pub backend: Backend,
    /// Language codes to keep, in the backend's labels ("en" for lid176,
    /// "eng" for whatlang). Empty: keep any language detected with enough
    /// confidence.
    pub languages: Vec<String>,
    /// Minimum detector confidence (0..1).
    pub threshold: f64,
    /// Only the first `max_chars` characters are looked at; 0 = all (as
    /// FineWeb).
    pub max_chars: usize,
    /// Identify the language of the prose words only (see the module doc).
    pub prose_only: bool,
}

impl Default for Language {
    fn default() -> Self {
        Language {
            enabled: true,
            backend: Backend::Lid176,
            languages: vec!["en".into()],
            threshold: 0.65,
            max_chars: 0,
            prose_only: true,
        }
    }
}

/// What the detector said: language code and confidence.
#[derive(Clone, Debug, PartialEq)]
pub struct Detected {
    pub lang: &'static str,
    pub confidence: f64,
}

fn lid176() -> &'static FastText {
    static M: OnceLock<FastText> = OnceLock::new();
    M.get_or_init(|| FastText::from_bytes(LID176).expect("the embedded lid.176.ftz loads"))
}

/// A word of prose: letters, optionally joined by one apostrophe, with at
/// most one trailing `.,;:!?`.
fn is_prose_word(w: &str) -> bool {
    let w = w.strip_suffix(['.', ',', ';', ':', '!', '?']).unwrap_or(w);
    let mut parts = w.splitn(2, ['\'', '’']);
    let letters = |p: &str| !p.is_empty() && p.chars().all(char::is_alphabetic);
    letters(parts.next().unwrap_or("")) && parts.next().is_none_or(letters)
}

/// The prose words of `text` joined by spaces, or `None` if it has none.
pub fn prose(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    for w in text.split_whitespace().filter(|w| is_prose_word(w)) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(w);
    }
    (!out.is_empty()).then_some(out)
}

/// The most likely language of `text` under `backend`.
pub fn detect(
    text: &str,
    backend: Backend,
    max_chars: usize,
    prose_only: bool,
) -> Option<Detected> {
    let text = match max_chars {
        0 => text,
        n => &text[..text.char_indices().nth(n).map_or(text.len(), |(i, _)| i)],
    };
    let prose = prose_only.then(|| prose(text)).flatten();
    let text = prose.as_deref().unwrap_or(text);
    match backend {
        Backend::Lid176 => {
            let p = lid176().predict(&text.replace('\n', " "));
            p.first().map(|&(lang, conf)| Detected {
                lang,
                confidence: conf as f64,
            })
        }
        Backend::Whatlang => whatlang::detect(text).map(|info| Detected {
            lang: info.lang().code(),
            confidence: info.confidence(),
        }),
    }
}

impl Language {
    /// Keeps the document when the detected language is wanted and the
    /// confidence is at least the threshold.
    pub fn check(&self, text: &str) -> (Option<Detected>, Option<Rejection>) {
        let d = detect(text, self.backend, self.max_chars, self.prose_only);
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

    const EN: &str = "The quick brown fox jumps over the lazy dog, and then it runs into the forest where it lives with its family.";
    const DE: &str = "Der schnelle braune Fuchs springt über den faulen Hund und läuft dann in den Wald, wo er mit seiner Familie lebt.";

    #[test]
    fn keeps_english_drops_german() {
        for f in [
            Language::default(),
            Language {
                backend: Backend::Whatlang,
                languages: vec!["eng".into()],
                threshold: 0.5,
                ..Default::default()
            },
        ] {
            let (d, r) = f.check(EN);
            assert!(d.unwrap().lang.starts_with("en"));
            assert!(r.is_none());
            let (d, r) = f.check(DE);
            assert!(d.unwrap().lang.starts_with("de"));
            assert_eq!(r.unwrap().rule, "other_language");
        }
    }

    #[test]
    fn english_technical_text_stays_english() {
        // A manual page's head: flags, a path and a section number.
        let man = "LS(1)  User Commands  LS(1)\n\nNAME\n       ls - list directory contents\n\nSYNOPSIS\n       ls [OPTION]... [FILE]...\n\nDESCRIPTION\n       List information about the FILEs (the current directory by default). Sort entries alphabetically if none of -cftuvSUX nor --sort is specified.\n\n       -a, --all\n              do not ignore entries starting with .\n\n       -A, --almost-all\n              do not list implied . and ..";
        let f = Language::default();
        let (d, r) = f.check(man);
        assert_eq!(r, None, "{d:?}");
        let raw = Language {
            prose_only: false,
            ..Default::default()
        };
        let (d_raw, _) = raw.check(man);
        assert!(d_raw.unwrap().confidence < d.unwrap().confidence);
    }

    #[test]
    fn prose_words() {
        assert_eq!(
            prose("Use --all, or -a: it's ~/x.txt 3 times (really)."),
            Some("Use or it's times".into())
        );
        assert_eq!(prose("-- 12 ./x"), None);
        assert!(is_prose_word("café.") && !is_prose_word("a.b") && !is_prose_word("'quoted'"));
    }

    #[test]
    fn threshold_and_empty_list() {
        let conf = detect(EN, Backend::Lid176, 0, true).unwrap().confidence;
        let at = Language {
            threshold: conf,
            ..Default::default()
        };
        assert!(at.check(EN).1.is_none());
        let above = Language {
            threshold: conf + 1e-6,
            ..Default::default()
        };
        assert_eq!(above.check(EN).1.unwrap().rule, "low_confidence");
        let any = Language {
            languages: vec![],
            threshold: 0.0,
            ..Default::default()
        };
        assert!(any.check(DE).1.is_none());
        // No prose and no language: rejected either way.
        assert!(Language::default().check("12 34 -- ..").1.is_some());
    }
}
