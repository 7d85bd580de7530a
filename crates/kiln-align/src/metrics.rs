//! `OUT/metrics.jsonl` for the alignment stages, and progress on stderr.
//!
//! One flat JSON object per line: `{"step": 12, "split": "train", "loss":
//! 1.23, "lr": 0.0001, ...}`. `split` is `"train"` for optimizer steps and
//! `"eval"` for held-out evaluations; the other keys are the method's
//! figures (TRL's names where they exist: `loss`, `lr`, `grad_norm`,
//! `tokens_per_s`, `elapsed_s`, `accuracy`, `margin`, `rewards/chosen`, ...).
//! NaN / infinite values are written as `null` (JSON has neither) and read
//! back as NaN, so a bad step still leaves a parseable line.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Map, Number, Value};

/// `"train"` or `"eval"` (the `split` field).
pub const TRAIN: &str = "train";
pub const EVAL: &str = "eval";

/// One line of a metrics file.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub step: u64,
    pub split: String,
    /// Every other numeric field (non-finite values as NaN).
    pub values: BTreeMap<String, f64>,
}

impl Record {
    pub fn new(step: u64, split: &str) -> Self {
        Record {
            step,
            split: split.to_string(),
            values: BTreeMap::new(),
        }
    }

    /// Adds a figure (builder style).
    pub fn with(mut self, key: &str, value: f64) -> Self {
        self.values.insert(key.to_string(), value);
        self
    }

    /// [`Record::with`] when there is a value (f16's loss scale, say).
    pub fn with_optional(self, key: &str, value: Option<f64>) -> Self {
        match value {
            Some(v) => self.with(key, v),
            None => self,
        }
    }

    pub fn get(&self, key: &str) -> Option<f64> {
        self.values.get(key).copied()
    }

    pub fn to_json(&self) -> Value {
        let mut o = Map::new();
        o.insert("step".into(), Value::from(self.step));
        o.insert("split".into(), Value::from(self.split.clone()));
        for (k, &v) in &self.values {
            let v = Number::from_f64(v).map_or(Value::Null, Value::Number);
            o.insert(k.clone(), v);
        }
        Value::Object(o)
    }

    pub fn from_json(line: &str) -> Result<Record, String> {
        let v: Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
        let o = v.as_object().ok_or("not a JSON object")?;
        let step = o
            .get("step")
            .and_then(Value::as_u64)
            .ok_or("missing integer field \"step\"")?;
        let split = o
            .get("split")
            .and_then(Value::as_str)
            .ok_or("missing string field \"split\"")?
            .to_string();
        let mut values = BTreeMap::new();
        for (k, v) in o {
            if k == "step" || k == "split" {
                continue;
            }
            let x = match v {
                Value::Null => f64::NAN,
                Value::Number(n) => n.as_f64().unwrap_or(f64::NAN),
                other => return Err(format!("field {k:?} is {other}, expected a number")),
            };
            values.insert(k.clone(), x);
        }
        Ok(Record {
            step,
            split,
            values,
        })
    }
}

/// Writes records to a new metrics file, one flushed line each (a killed
/// run loses at most the line being written).
pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

impl MetricsLog {
    /// Creates (or truncates) `path`; its directory must exist.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        Ok(MetricsLog {
            path: path.to_path_buf(),
            file: File::create(path)?,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn append(&mut self, record: &Record) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(&record.to_json()).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.file.flush()
    }
}

/// Reads a metrics file back (tests, the report); a bad line is an error
/// naming `FILE:LINE`.
pub fn read_metrics(path: &Path) -> std::io::Result<Vec<Record>> {
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            Record::from_json(l)
                .map_err(|e| std::io::Error::other(format!("{}:{}: {e}", path.display(), i + 1)))
        })
        .collect()
}

/// Progress of a training stage on stderr: a bar (step, chosen figures,
/// ETA) on a terminal; where stderr is not a terminal (logs, CI) the bar
/// hides itself and a plain line is printed every `log_every` steps, at the
/// last step and for every eval record.
pub struct Progress {
    bar: ProgressBar,
    stage: String,
    total: u64,
    log_every: u64,
    started: Instant,
    /// Made by [`Progress::hidden`]: no lines either.
    silent: bool,
}

impl Progress {
    pub fn new(stage: &str, total_steps: u64, log_every: u64) -> Self {
        Self::with_target(stage, total_steps, log_every, false)
    }

    /// Prints nothing (library callers and tests).
    pub fn hidden(stage: &str, total_steps: u64) -> Self {
        Self::with_target(stage, total_steps, 1, true)
    }

    fn with_target(stage: &str, total: u64, log_every: u64, silent: bool) -> Self {
        let target = if silent {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        let bar = ProgressBar::with_draw_target(Some(total), target);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} {bar:30} {pos}/{len} steps | {msg} | {elapsed_precise} < {eta_precise}",
            )
            .expect("static template"),
        );
        bar.set_prefix(stage.to_string());
        Progress {
            bar,
            stage: stage.to_string(),
            total,
            log_every: log_every.max(1),
            started: Instant::now(),
            silent,
        }
    }

    /// Seconds since the progress was created.
    pub fn elapsed_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Shows a record: train records update the bar, eval records always
    /// print a line.
    pub fn record(&self, r: &Record) {
        let msg = summary(r);
        if r.split == TRAIN {
            self.bar.set_position(r.step);
            self.bar.set_message(msg.clone());
            let due = r.step.is_multiple_of(self.log_every) || r.step == self.total;
            if self.bar.is_hidden() && due && !self.is_silent() {
                eprintln!("{} step {}/{} | {msg}", self.stage, r.step, self.total);
            }
        } else {
            self.line(&format!(
                "{} {} @ step {} | {msg}",
                self.stage, r.split, r.step
            ));
        }
    }

    /// A line of text above the bar (or on its own where the bar is hidden).
    pub fn line(&self, msg: &str) {
        if self.is_silent() {
            return;
        }
        if self.bar.is_hidden() {
            eprintln!("{msg}");
        } else {
            self.bar.println(msg);
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }

    fn is_silent(&self) -> bool {
        self.silent
    }
}

/// `key value | key value` with the figures a human watches first.
fn summary(r: &Record) -> String {
    const FIRST: [&str; 4] = ["loss", "accuracy", "grad_norm", "lr"];
    let mut parts: Vec<String> = Vec::new();
    for k in FIRST {
        if let Some(v) = r.get(k) {
            parts.push(format!("{k} {}", fmt_num(v)));
        }
    }
    for (k, &v) in &r.values {
        if !FIRST.contains(&k.as_str()) && k != "elapsed_s" {
            parts.push(format!("{k} {}", fmt_num(v)));
        }
    }
    parts.join(" | ")
}

fn fmt_num(v: f64) -> String {
    if v.is_nan() {
        "nan".into()
    } else if v != 0.0 && (v.abs() < 1e-3 || v.abs() >= 1e5) {
        format!("{v:.3e}")
    } else {
        format!("{v:.4}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_with_nan_as_null() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metrics.jsonl");
        let mut log = MetricsLog::create(&p).unwrap();
        let a = Record::new(1, TRAIN).with("loss", 2.5).with("lr", 1e-4);
        let b = Record::new(1, EVAL)
            .with("loss", f64::NAN)
            .with("accuracy", 0.75);
        log.append(&a).unwrap();
        log.append(&b).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            text.lines().nth(1).unwrap().contains("\"loss\":null"),
            "{text}"
        );
        let back = read_metrics(&p).unwrap();
        assert_eq!(back[0], a);
        assert_eq!(back[1].split, EVAL);
        assert!(back[1].get("loss").unwrap().is_nan());
        assert_eq!(back[1].get("accuracy"), Some(0.75));
    }

    #[test]
    fn a_bad_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.jsonl");
        std::fs::write(
            &p,
            "{\"step\":1,\"split\":\"train\"}\n{\"split\":\"train\"}\n",
        )
        .unwrap();
        let e = read_metrics(&p).unwrap_err().to_string();
        assert!(e.contains("m.jsonl:2") && e.contains("step"), "{e}");
    }

    #[test]
    fn summary_puts_loss_first() {
        let r = Record::new(3, TRAIN)
            .with("tokens_per_s", 100.0)
            .with("loss", 1.0);
        assert!(summary(&r).starts_with("loss 1.0000"), "{}", summary(&r));
    }
}
