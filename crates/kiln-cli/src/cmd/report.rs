//! `kiln report RUN_DIR [--out FILE]`: writes a self-contained HTML report
//! (training curves, evaluation, samples) of a run directory and prints
//! where it went.

use std::path::PathBuf;

use anyhow::{Context, Result};

#[derive(clap::Args)]
pub struct Args {
    /// Run directory (as written by `kiln pipeline`, or stage directories
    /// with metrics.jsonl, summary.json and eval/results.json).
    run_dir: PathBuf,
    /// Where to write the page (default: RUN_DIR/report.html).
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let out = args
        .out
        .unwrap_or_else(|| args.run_dir.join(kiln_report::REPORT_FILE));
    kiln_report::write_report_to(&args.run_dir, &out)
        .with_context(|| format!("writing the report of {}", args.run_dir.display()))?;
    println!("{}", out.display());
    Ok(())
}
