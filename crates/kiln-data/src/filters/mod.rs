//! Quality filters. Each module holds one filter with its source's
//! thresholds as `Default` and a `check` that returns the first rule the
//! document breaks (with the measured value), or `None` to keep it.

pub mod c4;
pub mod fineweb;
pub mod gopher_quality;
pub mod gopher_repetition;
pub mod language;
pub mod perplexity;

use serde::Serialize;

/// Why a filter removed a document: the rule, the value measured and the
/// threshold it crossed (written to `rejected/`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Rejection {
    pub filter: &'static str,
    pub rule: &'static str,
    pub value: f64,
    pub threshold: f64,
}

impl Rejection {
    pub fn new(filter: &'static str, rule: &'static str, value: f64, threshold: f64) -> Self {
        Rejection {
            filter,
            rule,
            value,
            threshold,
        }
    }
}

/// `num / den`, 0 when `den` is 0 (an empty text has no ratio to exceed).
#[inline]
pub(crate) fn ratio(num: usize, den: usize) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}
