//! The curate configuration (TOML). Every section and field is optional and
//! defaults to the source's value; an unknown key is an error that names it.

use crate::decontam::DecontamConfig;
use crate::dedup::exact::ExactDedup;
use crate::dedup::lines::LineDedupConfig;
use crate::dedup::minhash::MinHashConfig;
use crate::filters::{
    c4::C4, fineweb::FineWeb, gopher_quality::GopherQuality, gopher_repetition::GopherRepetition,
    language::Language, perplexity::Perplexity,
};
use crate::pii::PiiConfig;
use crate::split::InputConfig;
use serde::Deserialize;
use std::path::Path;

/// Input sanity limits (bad input is rejected with a reason, not dropped).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Documents longer than this (bytes, after normalisation) are rejected as huge.
    pub max_doc_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_doc_bytes: 10 << 20,
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NormalizeConfig {
    pub enabled: bool,
}

impl Default for NormalizeConfig {
    fn default() -> Self {
        NormalizeConfig { enabled: true }
    }
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CurateConfig {
    pub input: InputConfig,
    pub limits: Limits,
    pub normalize: NormalizeConfig,
    pub language: Language,
    pub gopher_repetition: GopherRepetition,
    pub gopher_quality: GopherQuality,
    pub c4: C4,
    pub fineweb: FineWeb,
    pub decontamination: DecontamConfig,
    pub pii: PiiConfig,
    pub perplexity: Perplexity,
    pub exact_dedup: ExactDedup,
    pub minhash: MinHashConfig,
    pub line_dedup: LineDedupConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Toml { path: String, message: String },
}

impl CurateConfig {
    /// FineWeb's settings (examples/fineweb.py): C4 without the terminal
    /// punctuation rule; everything else at the defaults.
    pub fn fineweb() -> Self {
        let mut c = CurateConfig::default();
        c.c4.filter_no_terminal_punct = false;
        c
    }

    pub fn from_toml_str(s: &str, path: &str) -> Result<Self, ConfigError> {
        toml::from_str(s).map_err(|e| ConfigError::Toml {
            path: path.into(),
            message: e.to_string(),
        })
    }

    /// Reads a TOML file; relative eval paths are resolved against the
    /// file's directory.
    pub fn from_toml_file(path: &Path) -> Result<Self, ConfigError> {
        let p = path.display().to_string();
        let s = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: p.clone(),
            source,
        })?;
        let mut c = Self::from_toml_str(&s, &p)?;
        if let Some(dir) = path.parent() {
            for e in &mut c.decontamination.eval {
                if e.is_relative() {
                    *e = dir.join(&*e);
                }
            }
            let p = &mut c.perplexity;
            for e in [&mut p.model, &mut p.tokenizer].into_iter().flatten() {
                if e.is_relative() {
                    *e = dir.join(&*e);
                }
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_toml_keeps_defaults() {
        let c = CurateConfig::from_toml_str(
            "[gopher_quality]\nmin_doc_words = 20\n[c4]\nfilter_no_terminal_punct = false\n",
            "x",
        )
        .unwrap();
        assert_eq!(c.gopher_quality.min_doc_words, 20);
        assert_eq!(c.gopher_quality.max_doc_words, 100_000);
        assert!(!c.c4.filter_no_terminal_punct);
        assert_eq!(c.minhash.num_buckets, 14);
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = CurateConfig::from_toml_str("[gopher_quality]\nmin_doc_wrods = 20\n", "cfg.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("min_doc_wrods") && e.contains("cfg.toml"), "{e}");
        let e = CurateConfig::from_toml_str("[gopher]\n", "cfg.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("gopher"), "{e}");
    }
}
