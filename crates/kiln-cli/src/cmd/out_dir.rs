//! The output directory of a training command (sft, reward, dpo, ppo, grpo):
//! one run at a time, and a finished run is recognisable.
//!
//! `summary.json` is the completion marker: written last, after `model/`.
//! A run claims its `--out` (exclusive lock, stale temps removed), then
//! removes `summary.json` and `model/` before writing anything, so a run
//! killed midway leaves nothing that reads as finished; a later command
//! given that `model/` refuses it ([`check_finished_model`]).

use std::path::Path;

use anyhow::{bail, Context, Result};
use kiln_stdx::lock::DirLock;

/// The completion marker of a training command's output directory.
pub const SUMMARY: &str = "summary.json";

/// Locks `out` for this run and removes the previous run's result.
pub fn claim(out: &Path) -> Result<DirLock> {
    let lock = DirLock::claim(out)
        .with_context(|| format!("{}: cannot claim the output directory", out.display()))?;
    let summary = out.join(SUMMARY);
    match std::fs::remove_file(&summary) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("{}: cannot remove", summary.display()))
        }
        _ => {}
    }
    let model = out.join("model");
    if model.exists() {
        // A rename first: a kill during the removal leaves a temp name
        // (removed by the next claim), never a half-deleted model/.
        let doomed = kiln_stdx::fs::temp_sibling(&model);
        std::fs::rename(&model, &doomed)
            .and_then(|_| std::fs::remove_dir_all(&doomed))
            .with_context(|| {
                format!(
                    "{}: cannot remove the previous run's model",
                    model.display()
                )
            })?;
    }
    Ok(lock)
}

/// Refuses `model` when it is the `model/` of a training run that did not
/// finish (its directory has metrics.jsonl but no summary.json).
pub fn check_finished_model(model: &Path) -> Result<()> {
    if model.file_name().is_none_or(|n| n != "model") {
        return Ok(());
    }
    let Some(run) = model.parent() else {
        return Ok(());
    };
    if run.join("metrics.jsonl").is_file() && !run.join(SUMMARY).is_file() {
        bail!(
            "{}: the run in {} did not finish (no {SUMMARY}); rerun it, or pass a finished model",
            model.display(),
            run.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claimed_dir_loses_its_result_and_an_unfinished_model_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("sft");
        std::fs::create_dir_all(out.join("model")).unwrap();
        std::fs::write(out.join("model/model.safetensors"), b"x").unwrap();
        std::fs::write(out.join("metrics.jsonl"), b"{}\n").unwrap();
        std::fs::write(out.join(SUMMARY), b"{}").unwrap();
        check_finished_model(&out.join("model")).unwrap();
        let lock = claim(&out).unwrap();
        assert!(!out.join(SUMMARY).exists() && !out.join("model").exists());
        assert!(claim(&out).is_err(), "a second claim while the first holds");
        drop(lock);
        std::fs::create_dir_all(out.join("model")).unwrap();
        let e = check_finished_model(&out.join("model"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("did not finish") && e.contains("sft"), "{e}");
    }
}
