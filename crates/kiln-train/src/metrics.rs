//! `RUN_DIR/metrics.jsonl`: one JSON object per optimizer step.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What one optimizer step did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// 1-based: the number of steps done after this one.
    pub step: u64,
    /// Mean next-token cross-entropy (nats) over the step's micro-batches
    /// (`null` in the file when it was NaN or infinite).
    #[serde(with = "non_finite_as_null")]
    pub loss: f32,
    pub lr: f32,
    /// Global L2 norm of the gradient before clipping (`null` if non-finite).
    #[serde(with = "non_finite_as_null")]
    pub grad_norm: f32,
    pub tokens_per_s: f64,
    /// Seconds since this process started training.
    pub elapsed_s: f64,
    /// True when the update was skipped (non-finite loss or gradient).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
    /// f16 training: the loss scale the step ran with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<f32>,
}

/// JSON has no NaN or infinity: such values are written as `null` and read
/// back as NaN, so a skipped step still leaves a parseable line.
mod non_finite_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(x: &f32, s: S) -> Result<S::Ok, S::Error> {
        if x.is_finite() {
            s.serialize_f32(*x)
        } else {
            s.serialize_none()
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
        Ok(Option::<f32>::deserialize(d)?.unwrap_or(f32::NAN))
    }
}

/// Appends step records, one line each, flushed per line so a killed run
/// loses at most the line being written.
pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

impl MetricsLog {
    /// Opens `path` for appending after keeping only records of steps
    /// `<= keep_through` (a resumed run rewrites the steps after its
    /// checkpoint, so they must not appear twice).
    pub fn open(path: &Path, keep_through: u64) -> std::io::Result<Self> {
        if path.exists() {
            let mut kept = Vec::new();
            let mut dropped = false;
            for line in BufReader::new(File::open(path)?).lines() {
                let line = line?;
                // A half-written last line (killed mid-write) is dropped too.
                match serde_json::from_str::<StepRecord>(&line) {
                    Ok(r) if r.step <= keep_through => {
                        kept.extend_from_slice(line.as_bytes());
                        kept.push(b'\n');
                    }
                    _ => dropped = true,
                }
            }
            if dropped {
                kiln_stdx::fs::write_atomic(path, &kept)?;
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn append(&mut self, record: &StepRecord) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.file.flush()
    }
}

/// Reads a metrics file back (for tests and reports).
pub fn read_metrics(path: &Path) -> std::io::Result<Vec<StepRecord>> {
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .map(|l| serde_json::from_str(l).map_err(std::io::Error::other))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(step: u64) -> StepRecord {
        StepRecord {
            step,
            loss: 1.5,
            lr: 1e-3,
            grad_norm: 0.5,
            tokens_per_s: 100.0,
            elapsed_s: 1.0,
            skipped: false,
            loss_scale: None,
        }
    }

    #[test]
    fn reopen_keeps_only_steps_up_to_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metrics.jsonl");
        let mut m = MetricsLog::open(&p, 0).unwrap();
        for s in 1..=5 {
            m.append(&rec(s)).unwrap();
        }
        drop(m);
        // simulate a kill mid-line
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"step\":6,\"lo").unwrap();
        drop(f);
        let mut m = MetricsLog::open(&p, 3).unwrap();
        m.append(&rec(4)).unwrap();
        let steps: Vec<u64> = read_metrics(&p).unwrap().iter().map(|r| r.step).collect();
        assert_eq!(steps, vec![1, 2, 3, 4]);
        // non-finite values survive as null -> NaN
        let mut bad = rec(5);
        bad.loss = f32::NAN;
        bad.grad_norm = f32::INFINITY;
        bad.skipped = true;
        m.append(&bad).unwrap();
        let back = read_metrics(&p).unwrap().pop().unwrap();
        assert!(back.loss.is_nan() && back.grad_norm.is_nan() && back.skipped);
        let line = std::fs::read_to_string(&p).unwrap();
        let first: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
        for key in [
            "step",
            "loss",
            "lr",
            "grad_norm",
            "tokens_per_s",
            "elapsed_s",
        ] {
            assert!(first.get(key).is_some(), "{key} missing in {line}");
        }
    }
}
