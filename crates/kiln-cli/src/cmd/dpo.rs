//! `kiln dpo`: preference optimisation (DPO / robust / IPO / hinge / SimPO)
//! of an SFT model on `{"prompt", "chosen", "rejected"}` JSONL. The
//! reference is the SFT model itself; its log-probs are computed once and
//! cached in OUT/ref_logps.json (reused when model and data are unchanged).
//! Writes OUT/metrics.jsonl, OUT/summary.json and OUT/model/. `--dp N`
//! trains on N data-parallel thread ranks (cmd/align_dp.rs), all reading
//! the reference log-probs computed once before they start.

use std::path::PathBuf;

use anyhow::{Context, Result};
use kiln_abi::BackendBox;
use kiln_align::data::{encode_pairs, read_preferences, OnBad};
use kiln_align::dpo::{
    lora_reference_logps, out_paths, reference_logps, summary_json, train_across, DpoConfig,
    DpoSummary, RefSource,
};
use kiln_align::metrics::{MetricsLog, Progress};
use kiln_align::policy::Policy;

use super::align_dp::DpArgs;
use super::lora_args::LoraArgs;
use super::sft::read_toml;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The SFT model directory: the policy's start and the frozen reference.
    #[arg(long)]
    pub model: PathBuf,
    /// Preference pairs, one `{"prompt", "chosen", "rejected"}` per line.
    #[arg(long)]
    pub data: PathBuf,
    /// Output directory (metrics.jsonl, summary.json, ref_logps.json, model/).
    #[arg(long)]
    pub out: PathBuf,
    /// Objective: sigmoid (DPO), robust, ipo, hinge or simpo.
    #[arg(long)]
    pub loss: Option<String>,
    /// β (default 0.1).
    #[arg(long)]
    pub beta: Option<f64>,
    /// TOML file with DPO settings (keys as in `DpoConfig`, e.g. batch_size,
    /// label_smoothing, simpo_gamma); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Tokenizer file (default: MODEL/tokenizer.json).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Skip and count bad lines (missing field, empty completion, pair
    /// longer than the context) instead of stopping at the first.
    #[arg(long)]
    pub skip_bad: bool,
    /// Compute threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub backend: crate::backend::BackendArg,
    #[arg(long)]
    pub epochs: Option<u64>,
    /// Optimizer steps (overrides epochs).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Pairs per optimizer step.
    #[arg(long)]
    pub batch_size: Option<usize>,
    #[arg(long)]
    pub lr: Option<f32>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Precision policy: f32, bf16 or f16 (16-bit weights, activations and
    /// gradients with f32 master weights and AdamW moments; f16 adds a
    /// dynamic loss scale). Same as `precision` in the TOML file.
    #[arg(long)]
    pub precision: Option<String>,
}

fn config_of(args: &Args) -> Result<DpoConfig> {
    let mut c: DpoConfig = match &args.config {
        Some(p) => read_toml(p, "DPO")?,
        None => DpoConfig::default(),
    };
    if let Some(v) = &args.loss {
        c.loss = v.clone();
    }
    if let Some(v) = args.beta {
        c.beta = v;
    }
    if let Some(v) = args.epochs {
        c.epochs = v;
    }
    if let Some(v) = args.steps {
        c.steps = Some(v);
    }
    if let Some(v) = args.batch_size {
        c.batch_size = v;
        c.micro_batch = c.micro_batch.min(v);
    }
    if let Some(v) = args.lr {
        c.lr = v;
        c.min_lr = c.min_lr.min(v);
    }
    if let Some(v) = args.seed {
        c.seed = v;
    }
    if let Some(v) = &args.precision {
        c.precision = v.clone();
    }
    c.validate().context("dpo settings")?;
    Ok(c)
}

/// `kiln dpo`'s command line: [`Args`] (what the pipeline passes too)
/// plus the LoRA and data-parallel switches.
#[derive(clap::Args, Debug, Clone)]
pub struct Cli {
    #[command(flatten)]
    pub args: Args,
    #[command(flatten)]
    pub lora: LoraArgs,
    #[command(flatten)]
    pub dp: DpArgs,
}

pub fn run(cli: Cli) -> Result<()> {
    let args = cli.args;
    let s = run_dpo_with(&args, &cli.lora, &cli.dp)?;
    let written = if cli.lora.is_on() {
        super::lora_args::ADAPTER_DIR
    } else {
        "model"
    };
    println!(
        "done: {} {} steps, loss {:.4} -> {:.4}, pairs: accuracy {:.3} -> {:.3}, margin {:.4} -> {:.4}, {:.0} tokens/s; model {}",
        s.loss_type,
        s.steps,
        s.first_loss,
        s.last_loss,
        s.before.rewards_accuracies,
        s.after.rewards_accuracies,
        s.before.rewards_margins,
        s.after.rewards_margins,
        s.tokens_per_s,
        args.out.join(written).display()
    );
    Ok(())
}

/// The whole command as a function (the pipeline calls it).
pub fn run_dpo(args: &Args) -> Result<DpoSummary> {
    run_dpo_with(args, &LoraArgs::default(), &DpArgs::default())
}

/// `--model` as the policy to train (LoRA adapters added when `lora` says
/// so); every data-parallel rank loads its own copy the same way.
fn load_policy(be: &mut BackendBox, args: &Args, lora: &LoraArgs, seed: u64) -> Result<Policy> {
    super::out_dir::check_finished_model(&args.model)?;
    let mut policy = lora
        .load_policy(be, &args.model, args.tokenizer.as_deref())
        .with_context(|| format!("loading model {}", args.model.display()))?;
    lora.apply(be, &mut policy.model, seed)?;
    Ok(policy)
}

/// [`run_dpo`], training LoRA adapters when `lora` says so: the reference
/// is then the policy with its adapters off (the frozen base), and the
/// adapter goes to OUT/adapter/. Trains on `dp`'s ranks.
fn run_dpo_with(args: &Args, lora: &LoraArgs, dp: &DpArgs) -> Result<DpoSummary> {
    let config = config_of(args)?;
    let kind = config.objective()?;
    let ranks = dp.ranks(args.threads)?;
    let on_bad = if args.skip_bad {
        OnBad::Skip
    } else {
        OnBad::Error
    };
    let mut be = crate::backend::open(&args.backend, ranks.threads())?;
    let mut policy = load_policy(&mut be, args, lora, config.seed)?;
    let pairs = read_preferences(&args.data, on_bad)?;
    let encoded = encode_pairs(
        &policy.tokenizer,
        &policy.template,
        &pairs,
        policy.max_seq_len(),
        on_bad,
    )?;
    if let Some(report) = encoded.skip_report() {
        eprintln!("warning: {report}");
    }
    let _lock = super::out_dir::claim(&args.out)?;
    let (metrics_path, cache_path, model_out, summary_path) = out_paths(&args.out);
    let pad = policy.pad_id();
    let (refs, source) = if kind.uses_reference() && policy.model.lora().is_some() {
        lora_reference_logps(
            &mut be,
            &mut policy.model,
            &args.model,
            lora.adapter.as_deref(),
            &encoded.items,
            pad,
            config.micro_batch,
            &cache_path,
        )
        .context("reference log-probs (the model DPO starts from)")?
    } else if kind.uses_reference() {
        reference_logps(
            &mut be,
            &args.model,
            &encoded.items,
            pad,
            config.micro_batch,
            &cache_path,
        )
        .context("reference log-probs")?
    } else {
        (vec![[0.0, 0.0]; encoded.len()], RefSource::NotNeeded)
    };
    let total = config.total_steps_across(encoded.len(), ranks.world());
    eprintln!(
        "dpo: {} pairs ({} skipped), loss {} beta {}, {} steps of {} pairs, lr {}, reference log-probs {}",
        encoded.len(),
        encoded.skipped.len(),
        kind.name(),
        config.beta,
        total,
        config.batch_size * ranks.world(),
        config.lr,
        match source {
            RefSource::Computed => format!("computed ({})", cache_path.display()),
            RefSource::Reused => format!("reused from {}", cache_path.display()),
            RefSource::NotNeeded => "not needed".into(),
        }
    );
    let mut metrics = MetricsLog::create(&metrics_path)
        .with_context(|| format!("creating {}", metrics_path.display()))?;
    ranks.announce(config.batch_size, "pairs");
    let threads = ranks.threads();
    let pairs = &encoded.items;
    let progress = Progress::new("dpo", total, config.log_every);
    let result = ranks.run(
        |replicas| {
            let log = Some(&mut metrics);
            let (be, model) = (&mut be, &mut policy.model);
            Ok(train_across(
                be, model, pairs, &refs, pad, &config, log, &progress, replicas,
            )?)
        },
        |replicas| {
            let mut be = crate::backend::open(&args.backend, threads)?;
            let mut p = load_policy(&mut be, args, lora, config.seed)?;
            let hidden = Progress::hidden("dpo", total);
            let model = &mut p.model;
            train_across(
                &mut be, model, pairs, &refs, pad, &config, None, &hidden, replicas,
            )?;
            Ok(())
        },
    );
    progress.finish();
    let summary = result?;
    let mut json = summary_json(&summary, source, encoded.skipped.len());
    if policy.model.lora().is_some() {
        super::lora_args::save_adapter(&mut be, &policy.model, &args.out, &args.model)?;
        let mut v: serde_json::Value = serde_json::from_str(&json)?;
        v["lora"] = serde_json::to_value(&policy.model.lora().unwrap().config)?;
        v["memory"] = super::lora_args::memory_figures(&policy.model);
        json = serde_json::to_string_pretty(&v)?;
    } else {
        policy.save(&mut be, &model_out)?;
    }
    kiln_stdx::fs::write_atomic(&summary_path, json.as_bytes())
        .with_context(|| format!("writing {}", summary_path.display()))?;
    Ok(summary)
}
