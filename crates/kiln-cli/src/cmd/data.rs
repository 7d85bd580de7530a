//! `kiln data ...`.

use anyhow::{bail, Context};
use kiln_data::curate::{curate, CurateOptions, Progress};
use kiln_data::filters::perplexity::ScorerHandle;
use kiln_data::CurateConfig;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

mod perplexity;
mod tasks;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Tokenize documents into llm.c-format token shards.
    Tokenize(super::data_tokenize::Args),
    /// Curate raw text: normalise, filter, deduplicate, decontaminate.
    Curate(CurateArgs),
    /// Show examples of rejected documents and lines, per reason.
    Inspect(InspectArgs),
    /// Write the embedded chat tasks as training files (sft.jsonl,
    /// prompts.jsonl).
    Tasks(tasks::TasksArgs),
}

#[derive(clap::Args)]
pub struct CurateArgs {
    /// Input files or directories (.txt, .jsonl, .jsonl.gz, .jsonl.zst).
    #[arg(long, required = true, num_args = 1..)]
    pub input: Vec<PathBuf>,
    /// Output directory (kept/, rejected/, stats.json).
    #[arg(long)]
    pub output: PathBuf,
    /// TOML config; every key optional, defaults are the sources' thresholds
    /// (see docs/data.md).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Stop at the first bad input record instead of recording it.
    #[arg(long)]
    pub strict: bool,
    /// Run only part i of N, e.g. 3/16: the input files k with k mod N = i
    /// (each input file is one shard, so split a large corpus into several
    /// files to spread it over machines). Run once more without --shard to
    /// deduplicate across shards and write kept/.
    #[arg(long)]
    pub shard: Option<String>,
    /// Use FineWeb's settings (C4 without the terminal-punctuation rule)
    /// as the base before --config.
    #[arg(long)]
    pub fineweb: bool,
    /// Evaluation JSONL files for 13-gram decontamination (added to the config's list).
    #[arg(long)]
    pub eval: Vec<PathBuf>,
    /// Score every document with this kiln checkpoint (or pretrain run
    /// directory) and keep its perplexity; enables the perplexity filter.
    #[arg(long)]
    pub perplexity_model: Option<PathBuf>,
    /// The tokenizer the --perplexity-model was trained with.
    #[arg(long)]
    pub perplexity_tokenizer: Option<PathBuf>,
    /// Remove documents whose perplexity under the model is above this.
    #[arg(long)]
    pub max_perplexity: Option<f64>,
    /// Remove documents whose perplexity under the model is below this.
    #[arg(long)]
    pub min_perplexity: Option<f64>,
    /// The backend the perplexity model runs on.
    #[command(flatten)]
    pub backend: crate::backend::BackendArg,
}

#[derive(clap::Args)]
pub struct InspectArgs {
    /// A curate output directory.
    pub dir: PathBuf,
    /// Only rules whose "filter/rule" name contains this.
    #[arg(long)]
    pub reason: Option<String>,
    /// Examples per rule.
    #[arg(long, default_value_t = 3)]
    pub sample: usize,
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Tokenize(a) => super::data_tokenize::run(a),
        Command::Curate(a) => run_curate(a),
        Command::Inspect(a) => run_inspect(a),
        Command::Tasks(a) => tasks::run(a),
    }
}

fn parse_shard(s: &str) -> anyhow::Result<(usize, usize)> {
    let (i, n) = s.split_once('/').context("--shard takes i/N, e.g. 0/8")?;
    let (i, n): (usize, usize) = (i.trim().parse()?, n.trim().parse()?);
    if n == 0 || i >= n {
        bail!("--shard {s}: need 0 <= i < N");
    }
    Ok((i, n))
}

fn run_curate(a: CurateArgs) -> anyhow::Result<()> {
    let mut config = match &a.config {
        Some(p) if a.fineweb => {
            bail!(
                "--fineweb and --config {}: set c4.filter_no_terminal_punct in the file instead",
                p.display()
            )
        }
        Some(p) => CurateConfig::from_toml_file(p)?,
        None if a.fineweb => CurateConfig::fineweb(),
        None => CurateConfig::default(),
    };
    config.decontamination.eval.extend(a.eval.iter().cloned());
    attach_perplexity_scorer(&mut config, &a)?;
    let opts = CurateOptions {
        inputs: a.input.clone(),
        output: a.output.clone(),
        config,
        strict: a.strict,
        shard: a.shard.as_deref().map(parse_shard).transpose()?,
    };
    let mut pool = rayon::ThreadPoolBuilder::new();
    if let Some(n) = a.workers {
        pool = pool.num_threads(n.max(1));
    }
    let pool = pool.build()?;
    let progress = Progress::default();
    let done = std::sync::atomic::AtomicBool::new(false);
    let report = std::thread::scope(|s| {
        s.spawn(|| show_progress(&progress, &done));
        let r = pool.install(|| curate(&opts, &progress));
        done.store(true, Ordering::Relaxed);
        r
    })?;
    eprintln!();
    eprintln!(
        "shards run: {}, already done (skipped): {}",
        report.shards_run.len(),
        report.shards_skipped.len()
    );
    match &report.stats {
        Some(stats) => {
            println!("{}", stats.table());
            println!("wrote {}/kept, {}/rejected, {}/stats.json", a.output.display(), a.output.display(), a.output.display());
            if opts.config.perplexity.enabled {
                print_perplexity_quantiles(&a.output.join("kept"))?;
            }
        }
        None => println!("stage 1 done for the selected shards; run again without --shard to deduplicate and write kept/"),
    }
    Ok(())
}

/// Applies the perplexity flags over the config's `[perplexity]` section and
/// loads the scorer when the filter is on.
fn attach_perplexity_scorer(config: &mut CurateConfig, a: &CurateArgs) -> anyhow::Result<()> {
    let p = &mut config.perplexity;
    if let Some(m) = &a.perplexity_model {
        p.model = Some(m.clone());
        p.enabled = true;
    }
    if let Some(t) = &a.perplexity_tokenizer {
        p.tokenizer = Some(t.clone());
    }
    if a.max_perplexity.is_some() {
        p.max_perplexity = a.max_perplexity;
    }
    if a.min_perplexity.is_some() {
        p.min_perplexity = a.min_perplexity;
    }
    if !p.enabled {
        let flags = a.max_perplexity.is_some()
            || a.min_perplexity.is_some()
            || a.perplexity_tokenizer.is_some();
        if flags {
            bail!("--max-perplexity / --min-perplexity / --perplexity-tokenizer need --perplexity-model DIR (the model that scores documents)");
        }
        return Ok(());
    }
    let (Some(model), Some(tokenizer)) = (&p.model, &p.tokenizer) else {
        bail!("the perplexity filter needs both --perplexity-model DIR and --perplexity-tokenizer FILE (or perplexity.model and perplexity.tokenizer in the config)");
    };
    let scorer = perplexity::ModelScorer::load(model, tokenizer, &a.backend)?;
    p.scorer = ScorerHandle::new(std::sync::Arc::new(scorer));
    p.validate().map_err(|e| anyhow::anyhow!(e))?;
    Ok(())
}

/// Quantiles of the kept documents' perplexities: where to put the
/// thresholds for a wanted band (CCNet's head/middle/tail are cut at the
/// 30th and 60th percentiles).
fn print_perplexity_quantiles(kept: &std::path::Path) -> anyhow::Result<()> {
    use std::io::BufRead;
    let mut values = Vec::new();
    for f in kiln_data::read::list_inputs(&[kept.to_path_buf()])? {
        let r = kiln_data::read::open(&f).with_context(|| format!("{}", f.display()))?;
        for line in r.lines() {
            let v: serde_json::Value = serde_json::from_str(&line?)?;
            values.extend(v.get("perplexity").and_then(|p| p.as_f64()));
        }
    }
    if values.is_empty() {
        return Ok(());
    }
    values.sort_by(f64::total_cmp);
    let q = |p: f64| values[((values.len() - 1) as f64 * p).round() as usize];
    println!(
        "perplexity of the {} kept documents: min {:.1}, p10 {:.1}, p30 {:.1}, p50 {:.1}, p60 {:.1}, p90 {:.1}, max {:.1}",
        values.len(),
        values[0],
        q(0.1),
        q(0.3),
        q(0.5),
        q(0.6),
        q(0.9),
        values[values.len() - 1]
    );
    Ok(())
}

fn show_progress(p: &Progress, done: &std::sync::atomic::AtomicBool) {
    let start = Instant::now();
    let bar = indicatif::ProgressBar::new_spinner();
    while !done.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
        let secs = start.elapsed().as_secs_f64().max(1e-9);
        let docs = p.docs.load(Ordering::Relaxed);
        let bytes = p.bytes.load(Ordering::Relaxed);
        let kept = p.kept.load(Ordering::Relaxed);
        let pct = if docs > 0 {
            100.0 * kept as f64 / docs as f64
        } else {
            0.0
        };
        bar.set_message(format!(
            "{docs} docs  {:.0} docs/s  {:.1} MB/s  kept {pct:.1}% (before dedup)",
            docs as f64 / secs,
            bytes as f64 / 1e6 / secs
        ));
        bar.tick();
    }
    bar.finish_and_clear();
}

fn run_inspect(a: InspectArgs) -> anyhow::Result<()> {
    let samples = kiln_data::inspect::samples(&a.dir, a.reason.as_deref(), a.sample)?;
    if samples.is_empty() {
        println!(
            "no rejected records{}",
            a.reason
                .map(|r| format!(" matching {r:?}"))
                .unwrap_or_default()
        );
    }
    for (rule, (count, examples)) in samples {
        println!("== {rule}: {count} records");
        for r in examples {
            let mut text: String = r.text.chars().take(300).collect();
            if text.len() < r.text.len() {
                text.push('…');
            }
            let value = r
                .value
                .map(|v| format!(" value={v:.4}"))
                .unwrap_or_default();
            let thr = r
                .threshold
                .map(|v| format!(" threshold={v}"))
                .unwrap_or_default();
            let line = r
                .doc_line
                .map(|l| format!(" doc_line={l}"))
                .unwrap_or_default();
            let detail = r
                .detail
                .as_deref()
                .map(|d| format!(" ({d})"))
                .unwrap_or_default();
            println!(
                "-- {} {}:{}{line}{value}{thr}{detail}",
                r.id, r.file, r.line
            );
            println!("   {}", text.replace('\n', "\n   "));
        }
    }
    Ok(())
}
