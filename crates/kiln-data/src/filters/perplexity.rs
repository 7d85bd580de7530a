//! Model-based filtering (CCNet, Wenzek et al. 2020): score every document
//! with a language model trained on clean text and drop the ones it finds
//! too surprising (junk, boilerplate, other registers) or, optionally,
//! suspiciously predictable (`min_perplexity`).
//!
//! kiln-data knows no models: the caller supplies a [`DocScorer`] (kiln-cli
//! implements one with a kiln checkpoint and its tokenizer). CCNet keeps
//! percentile buckets (head/middle/tail); percentiles need the whole
//! corpus's scores before the first decision, which a streaming, sharded
//! run does not have, so this filter takes fixed thresholds instead: every
//! kept document carries its `perplexity`, and the thresholds for a wanted
//! band are read off those values (CCNet also fixed its cut-offs from the
//! percentiles of a sample, per language).

use super::Rejection;
use serde::Deserialize;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

const NAME: &str = "perplexity";

/// Scores one document with a language model.
pub trait DocScorer: Send + Sync {
    /// The document's perplexity: `exp` of the model's mean next-token
    /// cross-entropy (nats) over the document. `Err` says why the document
    /// cannot be scored (it is then removed, with the message).
    fn score(&self, text: &str) -> Result<f64, String>;

    /// Names the model (path, size, modification time): it is part of the
    /// config hash, so a resumed run with another model redoes its shards.
    fn describe(&self) -> String;
}

/// The scorer of a run (set in code, never read from TOML).
#[derive(Clone, Default)]
pub struct ScorerHandle(pub Option<Arc<dyn DocScorer>>);

impl ScorerHandle {
    pub fn new(scorer: Arc<dyn DocScorer>) -> Self {
        ScorerHandle(Some(scorer))
    }
}

impl fmt::Debug for ScorerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(s) => write!(f, "Scorer({})", s.describe()),
            None => f.write_str("NoScorer"),
        }
    }
}

impl PartialEq for ScorerHandle {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (Some(a), Some(b)) => a.describe() == b.describe(),
            (None, None) => true,
            _ => false,
        }
    }
}

/// The `[perplexity]` section. Off by default (it needs a model).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Perplexity {
    pub enabled: bool,
    /// kiln checkpoint directory (model.safetensors + config.json); read by
    /// the CLI, which builds the scorer.
    pub model: Option<PathBuf>,
    /// The tokenizer the model was trained with (tokenizer.json).
    pub tokenizer: Option<PathBuf>,
    /// Drop documents whose perplexity is above this.
    pub max_perplexity: Option<f64>,
    /// Drop documents whose perplexity is below this.
    pub min_perplexity: Option<f64>,
    #[serde(skip)]
    pub scorer: ScorerHandle,
}

/// What the filter found for one document.
#[derive(Clone, Debug, PartialEq)]
pub enum PerplexityOutcome {
    /// Scored: the value, and the rule it broke if any.
    Scored {
        value: f64,
        rejection: Option<Rejection>,
    },
    /// The scorer could not score the document (the message says why).
    Failed(String),
}

impl Perplexity {
    /// Checks the thresholds and that a scorer is attached when enabled;
    /// the message names the key and the fix.
    pub fn validate(&self) -> Result<(), String> {
        if !self.enabled {
            return Ok(());
        }
        if self.scorer.0.is_none() {
            return Err("perplexity filter enabled but no scorer attached: give \
                 `kiln data curate` --perplexity-model DIR and --perplexity-tokenizer FILE \
                 (or perplexity.model / perplexity.tokenizer in the config)"
                .into());
        }
        for (key, v) in [
            ("max_perplexity", self.max_perplexity),
            ("min_perplexity", self.min_perplexity),
        ] {
            if let Some(x) = v {
                if !(x.is_finite() && x >= 1.0) {
                    return Err(format!(
                        "perplexity.{key} = {x}: a perplexity is a finite number >= 1"
                    ));
                }
            }
        }
        if let (Some(lo), Some(hi)) = (self.min_perplexity, self.max_perplexity) {
            if lo > hi {
                return Err(format!(
                    "perplexity.min_perplexity ({lo}) is above max_perplexity ({hi}): \
                     every document would be removed"
                ));
            }
        }
        Ok(())
    }

    /// Scores `text` and applies the thresholds (a value equal to a
    /// threshold is kept). Without a scorer, nothing is scored.
    pub fn check(&self, text: &str) -> PerplexityOutcome {
        let Some(scorer) = &self.scorer.0 else {
            return PerplexityOutcome::Failed("no scorer attached".into());
        };
        let value = match scorer.score(text) {
            Ok(v) if v.is_finite() => v,
            Ok(v) => return PerplexityOutcome::Failed(format!("the model's perplexity is {v}")),
            Err(e) => return PerplexityOutcome::Failed(e),
        };
        let rejection = match (self.max_perplexity, self.min_perplexity) {
            (Some(hi), _) if value > hi => Some(Rejection::new(NAME, "high_perplexity", value, hi)),
            (_, Some(lo)) if value < lo => Some(Rejection::new(NAME, "low_perplexity", value, lo)),
            _ => None,
        };
        PerplexityOutcome::Scored { value, rejection }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake model: the perplexity is the number of characters.
    struct LengthScorer;

    impl DocScorer for LengthScorer {
        fn score(&self, text: &str) -> Result<f64, String> {
            if text.contains("unscorable") {
                return Err("cannot score this".into());
            }
            Ok(text.chars().count() as f64)
        }
        fn describe(&self) -> String {
            "length".into()
        }
    }

    fn filter(max: Option<f64>, min: Option<f64>) -> Perplexity {
        Perplexity {
            enabled: true,
            max_perplexity: max,
            min_perplexity: min,
            scorer: ScorerHandle::new(Arc::new(LengthScorer)),
            ..Default::default()
        }
    }

    fn rule(p: &Perplexity, text: &str) -> Option<&'static str> {
        match p.check(text) {
            PerplexityOutcome::Scored { rejection, .. } => rejection.map(|r| r.rule),
            PerplexityOutcome::Failed(e) => panic!("unexpected failure {e}"),
        }
    }

    #[test]
    fn max_threshold_keeps_equal_and_drops_just_above() {
        let p = filter(Some(10.0), None);
        assert_eq!(rule(&p, &"a".repeat(10)), None);
        assert_eq!(rule(&p, &"a".repeat(11)), Some("high_perplexity"));
        match p.check(&"a".repeat(11)) {
            PerplexityOutcome::Scored {
                value,
                rejection: Some(r),
            } => {
                assert_eq!(value, 11.0);
                assert_eq!((r.filter, r.value, r.threshold), ("perplexity", 11.0, 10.0));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn min_threshold_keeps_equal_and_drops_just_below() {
        let p = filter(Some(100.0), Some(5.0));
        assert_eq!(rule(&p, "aaaaa"), None);
        assert_eq!(rule(&p, "aaaa"), Some("low_perplexity"));
        assert_eq!(rule(&p, &"a".repeat(101)), Some("high_perplexity"));
    }

    #[test]
    fn without_thresholds_every_document_is_scored_and_kept() {
        let p = filter(None, None);
        assert_eq!(
            p.check("abc"),
            PerplexityOutcome::Scored {
                value: 3.0,
                rejection: None
            }
        );
    }

    #[test]
    fn scorer_errors_are_reported() {
        let p = filter(Some(10.0), None);
        assert_eq!(
            p.check("unscorable"),
            PerplexityOutcome::Failed("cannot score this".into())
        );
    }

    #[test]
    fn validate_names_the_problem() {
        let no_scorer = Perplexity {
            enabled: true,
            ..Default::default()
        };
        assert!(no_scorer
            .validate()
            .unwrap_err()
            .contains("--perplexity-model"));
        assert!(Perplexity::default().validate().is_ok());
        let e = filter(Some(0.5), None).validate().unwrap_err();
        assert!(e.contains("max_perplexity"), "{e}");
        let e = filter(Some(5.0), Some(6.0)).validate().unwrap_err();
        assert!(e.contains("min_perplexity"), "{e}");
        assert!(filter(Some(6.0), Some(5.0)).validate().is_ok());
    }

    #[test]
    fn the_scorer_is_part_of_the_config_identity() {
        let a = filter(Some(10.0), None);
        assert!(format!("{a:?}").contains("Scorer(length)"));
        assert_eq!(a, filter(Some(10.0), None));
        assert_ne!(a, Perplexity::default());
    }
}
