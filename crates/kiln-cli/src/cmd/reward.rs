//! `kiln reward`: trains a reward model (transformer + scalar head read at
//! the last token) on preference pairs with the Bradley-Terry loss. Writes
//! OUT/metrics.jsonl, OUT/summary.json and OUT/model/ (a transformers
//! `GPT2ForSequenceClassification` with its tokenizer files), the input of
//! PPO's reward and value models. `--dp N` trains on N data-parallel
//! thread ranks (cmd/align_dp.rs).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use kiln_align::data::{encode_pairs, read_preferences, OnBad};
use kiln_align::metrics::{MetricsLog, Progress};
use kiln_align::reward::{
    read_margins, train_reward_across, RewardConfig, RewardExample, RewardModel, RewardSummary,
};
use kiln_align::sft::split_eval;

use super::align_dp::DpArgs;
use super::lora_args::LoraArgs;
use super::sft::read_toml;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Model directory to start from: a policy (usually the SFT model;
    /// a fresh score head is added) or a reward model written by `kiln
    /// reward` (training continues with its head: a new RLHF round).
    #[arg(long)]
    pub model: PathBuf,
    /// Preference pairs: {"prompt", "chosen", "rejected"[, "margin"]} per line.
    #[arg(long)]
    pub data: PathBuf,
    /// Output directory (metrics.jsonl, summary.json, model/).
    #[arg(long)]
    pub out: PathBuf,
    /// TOML file with reward settings (keys as in `RewardConfig`); flags
    /// override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Tokenizer file (default: MODEL/tokenizer.json).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Skip and count bad lines and pairs too long for the model.
    #[arg(long)]
    pub skip_bad: bool,
    /// Compute threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub backend: crate::backend::BackendArg,
    #[arg(long)]
    pub epochs: Option<u32>,
    #[arg(long)]
    pub max_steps: Option<u64>,
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
    /// Reward centering coefficient (TRL recommends 0.01).
    #[arg(long)]
    pub center_coef: Option<f32>,
    #[arg(long)]
    pub eval_fraction: Option<f32>,
}

fn config_of(args: &Args) -> Result<RewardConfig> {
    let mut c: RewardConfig = match &args.config {
        Some(p) => read_toml(p, "reward")?,
        None => RewardConfig::default(),
    };
    if let Some(v) = args.epochs {
        c.epochs = v;
    }
    if let Some(v) = args.max_steps {
        c.max_steps = v;
    }
    if let Some(v) = args.batch_size {
        c.batch_size = v;
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
    if let Some(v) = args.center_coef {
        c.center_coef = v;
    }
    if let Some(v) = args.eval_fraction {
        c.eval_fraction = v;
    }
    c.validate().context("reward settings")?;
    Ok(c)
}

/// `kiln reward`'s command line: [`Args`] (what the pipeline passes too)
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
    let s = run_reward_with(&args, &cli.lora, &cli.dp)?;
    let acc = |e: Option<kiln_align::reward::RewardEval>| {
        e.map_or("-".to_string(), |e| format!("{:.3}", e.accuracy))
    };
    println!(
        "done: {} steps, loss {:.4} -> {:.4}, held-out accuracy {} -> {}, {:.1} pairs/s; model {}",
        s.steps,
        s.first_loss,
        s.last_loss,
        acc(s.eval_before),
        acc(s.eval),
        s.pairs_per_s,
        args.out.join("model").display()
    );
    Ok(())
}

/// The model training starts from: `--model`'s reward model when it is
/// one (its score head kept), else a fresh head on `--model`'s policy.
/// `say` tells the user which (data-parallel ranks past 0 load quietly).
fn load_start(
    be: &mut kiln_abi::BackendBox,
    args: &Args,
    lora: &LoraArgs,
    seed: u64,
    say: bool,
) -> Result<RewardModel> {
    let context = || format!("loading model {}", args.model.display());
    super::out_dir::check_finished_model(&args.model)?;
    if RewardModel::is_saved_in(&args.model) {
        if say {
            eprintln!(
                "reward: {} is a reward model: training continues from it",
                args.model.display()
            );
        }
        return RewardModel::load(be, &args.model, args.tokenizer.as_deref()).with_context(context);
    }
    // Frozen under LoRA: the base then never holds gradient buffers.
    let policy = lora
        .load_policy(be, &args.model, args.tokenizer.as_deref())
        .with_context(context)?;
    Ok(RewardModel::from_policy(be, policy, seed)?)
}

/// The whole command as a function (the pipeline calls it).
pub fn run_reward(args: &Args) -> Result<RewardSummary> {
    run_reward_with(args, &LoraArgs::default(), &DpArgs::default())
}

/// The model one rank trains: [`load_start`], then LoRA adapters when
/// `lora` says so (the same seed on every rank: the same start).
fn load_model(
    be: &mut kiln_abi::BackendBox,
    args: &Args,
    lora: &LoraArgs,
    seed: u64,
    say: bool,
) -> Result<RewardModel> {
    let mut rm = load_start(be, args, lora, seed, say)?;
    lora.apply(be, &mut rm.lm.model, seed)?;
    Ok(rm)
}

/// [`run_reward`], training LoRA adapters and the score head (the rest
/// frozen) when `lora` says so, on `dp`'s ranks. The adapter goes to
/// OUT/adapter/, and OUT/model/ holds the merged reward model later stages
/// read as any other.
fn run_reward_with(args: &Args, lora: &LoraArgs, dp: &DpArgs) -> Result<RewardSummary> {
    let config = config_of(args)?;
    let ranks = dp.ranks(args.threads)?;
    let on_bad = if args.skip_bad {
        OnBad::Skip
    } else {
        OnBad::Error
    };
    let mut be = crate::backend::open(&args.backend, ranks.threads())?;
    let mut rm = load_model(&mut be, args, lora, config.seed, true)?;
    let pairs = read_preferences(&args.data, on_bad)?;
    let encoded = encode_pairs(
        &rm.lm.tokenizer,
        &rm.lm.template,
        &pairs,
        rm.lm.max_seq_len(),
        on_bad,
    )?;
    if let Some(report) = encoded.skip_report() {
        eprintln!("warning: {report}");
    }
    let margins = read_margins(&args.data, &encoded.lines)?;
    let examples: Vec<RewardExample> = encoded
        .items
        .iter()
        .zip(margins)
        .map(|(pair, margin)| RewardExample {
            pair: pair.clone(),
            margin,
        })
        .collect();
    let (train, eval) = split_eval(&examples, config.eval_fraction, config.seed);
    if train.is_empty() {
        bail!("{}: no pairs left to train on", args.data.display());
    }
    let _lock = super::out_dir::claim(&args.out)?;
    let metrics_path = args.out.join("metrics.jsonl");
    let mut metrics = MetricsLog::create(&metrics_path)
        .with_context(|| format!("creating {}", metrics_path.display()))?;
    let per_step = config.pairs_per_step() * ranks.world();
    let mut total = train.len().div_ceil(per_step) as u64 * config.epochs as u64;
    if config.max_steps > 0 {
        total = total.min(config.max_steps);
    }
    eprintln!(
        "reward: {} train / {} eval pairs ({} skipped), {} steps of {} pairs, lr {} -> {}, centering {}",
        train.len(),
        eval.len(),
        encoded.skipped.len(),
        total,
        per_step,
        config.lr,
        config.min_lr,
        config.center_coef
    );
    ranks.announce(config.pairs_per_step(), "pairs");
    let threads = ranks.threads();
    let progress = Progress::new("reward", total, config.log_every);
    let result = ranks.run(
        |replicas| {
            let log = Some(&mut metrics);
            let (be, rm) = (&mut be, &mut rm);
            Ok(train_reward_across(
                be, rm, &train, &eval, &config, log, &progress, replicas,
            )?)
        },
        |replicas| {
            let mut be = crate::backend::open(&args.backend, threads)?;
            let mut rm = load_model(&mut be, args, lora, config.seed, false)?;
            let hidden = Progress::hidden("reward", total);
            train_reward_across(
                &mut be, &mut rm, &train, &eval, &config, None, &hidden, replicas,
            )?;
            Ok(())
        },
    );
    progress.finish();
    let summary = result?;
    let mut json = serde_json::to_value(&summary)?;
    json["skipped_lines"] = encoded.skipped.len().into();
    if let Some(cfg) = rm.lm.model.lora().map(|l| l.config.clone()) {
        json["memory"] = super::lora_args::memory_figures(&rm.lm.model);
        json["lora"] = serde_json::to_value(&cfg)?;
        super::lora_args::save_adapter(&mut be, &rm.lm.model, &args.out, &args.model)?;
        rm.lm.model.merge_lora(&mut be)?;
    }
    rm.save(&mut be, &args.out.join("model"))?;
    let path = args.out.join("summary.json");
    kiln_stdx::fs::write_atomic(&path, serde_json::to_string_pretty(&json)?.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(summary)
}
