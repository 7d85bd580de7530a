//! `kiln report RUN_DIR`: one self-contained `report.html` for a run
//! directory. It leads with the results (the verdict against the targets,
//! each model's judge score / win rate / KL, the curation funnel,
//! pretraining), then the training curves of every stage, each stage's
//! answers to the same prompts side by side, and every figure last, folded.
//!
//! The page has inline CSS and inline SVG drawn here (no JavaScript, no
//! fonts or images fetched), so it opens offline and can be mailed around.
//! A partial run still gets a report that says what is missing; a malformed
//! input file is an error naming `file:line`.
//!
//! Modules: [`read`] (run directory -> data), [`headline`] (the figures
//! and verdicts read by name), [`groups`] (which metrics share a chart),
//! [`plot`] (SVG charts), [`labels`] (readable names for JSON keys),
//! [`html`] (escaping, tables), [`page`] (assembly, one module per part).

mod error;
pub mod groups;
pub mod headline;
pub mod html;
pub mod labels;
pub mod page;
pub mod plot;
pub mod read;

use std::path::{Path, PathBuf};

pub use error::ReportError;
pub use read::{read_run, Run};

/// The report's file name inside the run directory.
pub const REPORT_FILE: &str = "report.html";

/// Writes `RUN_DIR/report.html` and returns its path.
pub fn write_report(run_dir: &Path) -> Result<PathBuf, ReportError> {
    let out = run_dir.join(REPORT_FILE);
    write_report_to(run_dir, &out)?;
    Ok(out)
}

/// Writes the report of `run_dir` to `out` (atomically: a reader never sees
/// half a page, and a failed run leaves the previous report in place).
pub fn write_report_to(run_dir: &Path, out: &Path) -> Result<(), ReportError> {
    let html = render_report(run_dir)?;
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| ReportError::io(parent, e))?;
    }
    kiln_stdx::fs::write_atomic(out, html.as_bytes()).map_err(|e| ReportError::io(out, e))
}

/// The report page of `run_dir` as a string.
pub fn render_report(run_dir: &Path) -> Result<String, ReportError> {
    Ok(page::render(&read_run(run_dir)?))
}

#[cfg(test)]
mod tests;
