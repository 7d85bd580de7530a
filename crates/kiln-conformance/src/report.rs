//! What a run of the suite found: one entry per check, pass, fail or skip.

use std::fmt;

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    /// What went wrong, with the figures (got, want, where).
    Fail(String),
    /// Why the check did not apply (an op the backend does not list).
    Skip(String),
}

/// One check: which method it exercised and how it ended.
#[derive(Debug, Clone)]
pub struct CheckResult {
    /// The `Backend` method under test (an entry of `kiln_abi::METHODS`).
    pub op: &'static str,
    /// What was checked, e.g. `matmul [bf16] trans_b+bias: views`.
    pub name: String,
    pub outcome: Outcome,
}

/// Every check of one run, in the order they ran.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The backend as its `info()` describes it.
    pub backend: String,
    pub checks: Vec<CheckResult>,
}

impl Report {
    pub fn push(&mut self, op: &'static str, name: impl Into<String>, outcome: Outcome) {
        self.checks.push(CheckResult {
            op,
            name: name.into(),
            outcome,
        });
    }

    pub fn passed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Pass))
    }

    pub fn skipped(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Skip(_)))
    }

    pub fn failures(&self) -> Vec<&CheckResult> {
        self.checks
            .iter()
            .filter(|c| matches!(c.outcome, Outcome::Fail(_)))
            .collect()
    }

    /// True when no check failed (skips are fine).
    pub fn all_passed(&self) -> bool {
        self.failures().is_empty()
    }

    /// The methods with at least one failing check, in `METHODS` order.
    pub fn failing_ops(&self) -> Vec<&'static str> {
        kiln_abi::METHODS
            .iter()
            .copied()
            .filter(|m| self.failures().iter().any(|c| c.op == *m))
            .collect()
    }

    /// One line: counts of passed, failed and skipped checks.
    pub fn summary(&self) -> String {
        format!(
            "{}: {} checks, {} passed, {} failed, {} skipped",
            self.backend,
            self.checks.len(),
            self.passed(),
            self.failures().len(),
            self.skipped()
        )
    }

    fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.checks.iter().filter(|c| f(&c.outcome)).count()
    }
}

/// Failures first (each with its message), then skips, then the summary.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.checks {
            if let Outcome::Fail(msg) = &c.outcome {
                writeln!(f, "FAIL {}: {msg}", c.name)?;
            }
        }
        for c in &self.checks {
            if let Outcome::Skip(msg) = &c.outcome {
                writeln!(f, "skip {}: {msg}", c.name)?;
            }
        }
        write!(f, "{}", self.summary())
    }
}
