//! Run statistics: per filter, documents and bytes removed (and lines, for
//! line-level rules), time spent, and counts per rule. They are computed from
//! the rejection records themselves, so stats.json and rejected/ always agree.

use crate::pii::PiiCounts;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Stages in pipeline order (also the order of the summary table).
pub const STAGES: [&str; 11] = [
    "input",
    "language",
    "gopher_repetition",
    "gopher_quality",
    "c4",
    "fineweb",
    "decontamination",
    "perplexity",
    "exact_dedup",
    "minhash",
    "line_dedup",
];

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FilterStats {
    pub docs_removed: u64,
    pub bytes_removed: u64,
    pub lines_removed: u64,
    pub line_bytes_removed: u64,
    pub time_s: f64,
    pub rules: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub input_docs: u64,
    pub input_bytes: u64,
    pub kept_docs: u64,
    pub kept_bytes: u64,
    pub filters: BTreeMap<String, FilterStats>,
    pub pii: PiiTotals,
    pub wall_s: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PiiTotals {
    pub emails: u64,
    pub ips: u64,
    pub phones: u64,
}

impl PiiTotals {
    pub fn add(&mut self, c: &PiiCounts) {
        self.emails += c.emails;
        self.ips += c.ips;
        self.phones += c.phones;
    }
}

impl Stats {
    pub fn filter(&mut self, name: &str) -> &mut FilterStats {
        self.filters.entry(name.to_string()).or_default()
    }

    pub fn merge(&mut self, o: &Stats) {
        self.input_docs += o.input_docs;
        self.input_bytes += o.input_bytes;
        self.kept_docs += o.kept_docs;
        self.kept_bytes += o.kept_bytes;
        self.pii.emails += o.pii.emails;
        self.pii.ips += o.pii.ips;
        self.pii.phones += o.pii.phones;
        for (k, f) in &o.filters {
            let s = self.filter(k);
            s.docs_removed += f.docs_removed;
            s.bytes_removed += f.bytes_removed;
            s.lines_removed += f.lines_removed;
            s.line_bytes_removed += f.line_bytes_removed;
            s.time_s += f.time_s;
            for (r, n) in &f.rules {
                *s.rules.entry(r.clone()).or_default() += n;
            }
        }
    }

    /// The human summary table.
    pub fn table(&self) -> String {
        let mb = |b: u64| b as f64 / 1e6;
        let mut s = format!(
            "{:<18} {:>9} {:>9} {:>9} {:>9} {:>8}  top rules\n",
            "stage", "docs", "MB", "lines", "line MB", "time s"
        );
        for name in STAGES {
            let Some(f) = self.filters.get(name) else {
                continue;
            };
            let mut rules: Vec<_> = f.rules.iter().collect();
            rules.sort_by(|a, b| b.1.cmp(a.1));
            let top: Vec<String> = rules
                .iter()
                .take(3)
                .map(|(r, n)| format!("{r}={n}"))
                .collect();
            s += &format!(
                "{:<18} {:>9} {:>9.2} {:>9} {:>9.3} {:>8.2}  {}\n",
                name,
                f.docs_removed,
                mb(f.bytes_removed),
                f.lines_removed,
                mb(f.line_bytes_removed),
                f.time_s,
                top.join(" ")
            );
        }
        let pct = if self.input_docs > 0 {
            100.0 * self.kept_docs as f64 / self.input_docs as f64
        } else {
            0.0
        };
        s += &format!(
            "input {} docs / {:.2} MB -> kept {} docs ({:.1}%) / {:.2} MB in {:.1} s\n",
            self.input_docs,
            mb(self.input_bytes),
            self.kept_docs,
            pct,
            mb(self.kept_bytes),
            self.wall_s
        );
        if self.pii != PiiTotals::default() {
            s += &format!(
                "pii redacted: {} emails, {} ips, {} phones\n",
                self.pii.emails, self.pii.ips, self.pii.phones
            );
        }
        s
    }
}
