//! `kiln sft`: supervised fine-tuning of a pretrained model on chats
//! (JSONL, OpenAI `messages` or prompt/completion), loss on assistant tokens
//! only. Writes OUT/metrics.jsonl, OUT/summary.json and OUT/model/ (model +
//! tokenizer.json, loadable by every later stage). `--dp N` trains on N
//! data-parallel thread ranks (cmd/align_dp.rs).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kiln_abi::BackendBox;
use kiln_align::data::{encode_chats, read_chats, OnBad};
use kiln_align::metrics::{MetricsLog, Progress};
use kiln_align::policy::Policy;
use kiln_align::sft::{split_eval, train_sft_across, SftConfig, SftSummary};

use super::align_dp::DpArgs;
use super::lora_args::LoraArgs;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Model directory: a pretrain checkpoint, or a policy written by a
    /// kiln alignment stage.
    #[arg(long)]
    pub model: PathBuf,
    /// Chats, one JSON object per line.
    #[arg(long)]
    pub data: PathBuf,
    /// Output directory (metrics.jsonl, summary.json, model/).
    #[arg(long)]
    pub out: PathBuf,
    /// TOML file with SFT settings (keys as in `SftConfig`, e.g. batch_size);
    /// flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Tokenizer file (default: MODEL/tokenizer.json).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Skip and count bad lines and chats too long for the model instead
    /// of stopping at the first.
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
    #[arg(long)]
    pub eval_fraction: Option<f32>,
}

/// `kiln sft`'s command line: [`Args`] (what the pipeline passes too) plus
/// switches that only turn a setting on over the TOML file. The pipeline
/// sets those through its `SftConfig` instead, so its `Args` stay as they are.
#[derive(clap::Args, Debug, Clone)]
pub struct Cli {
    #[command(flatten)]
    pub args: Args,
    /// Pack several chats into each row of the model's context (positions
    /// restart per chat, no attention across chats): the same loss and
    /// gradients with fewer padded positions. Same as `packing = true` in
    /// the TOML file.
    #[arg(long)]
    pub packing: bool,
    #[command(flatten)]
    pub lora: LoraArgs,
    #[command(flatten)]
    pub dp: DpArgs,
}

/// Reads a TOML settings file of type `T` (unknown keys refused), naming
/// the file in every error.
pub fn read_toml<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("config {}: cannot read", path.display()))?;
    toml::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "config {}: {} (valid keys are the {what} settings, e.g. batch_size)",
            path.display(),
            e.to_string().trim_end()
        )
    })
}

fn config_of(args: &Args, packing: bool) -> Result<SftConfig> {
    let mut c: SftConfig = match &args.config {
        Some(p) => read_toml(p, "SFT")?,
        None => SftConfig::default(),
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
    if let Some(v) = args.eval_fraction {
        c.eval_fraction = v;
    }
    c.packing |= packing;
    c.validate().context("sft settings")?;
    Ok(c)
}

pub fn run(cli: Cli) -> Result<()> {
    let summary = sft_with(&cli.args, cli.packing, &cli.lora, &cli.dp, true)?;
    let written = if cli.lora.is_on() {
        super::lora_args::ADAPTER_DIR
    } else {
        "model"
    };
    println!(
        "done: {} steps, loss {:.4} -> {:.4}, val loss {} -> {}, {:.0} tokens/s, {} rows \
         ({:.0}% real tokens{}); {}",
        summary.steps,
        summary.first_loss,
        summary.last_loss,
        fmt_opt(summary.eval_loss_before),
        fmt_opt(summary.eval_loss),
        summary.tokens_per_s,
        summary.rows,
        100.0 * summary.packing_efficiency,
        if summary.packing { ", packed" } else { "" },
        cli.args.out.join(written).display()
    );
    Ok(())
}

fn fmt_opt(x: Option<f32>) -> String {
    x.map_or("-".into(), |v| format!("{v:.4}"))
}

/// The whole command as a function (the pipeline calls it); settings from
/// the TOML file and `args`.
pub fn run_sft(args: &Args) -> Result<SftSummary> {
    let one = DpArgs::default();
    sft_with(args, false, &LoraArgs::default(), &one, false)
}

/// [`run_sft`], with packing forced on when `packing`, and LoRA adapters
/// trained instead of the whole model when `lora` says so, on `dp`'s
/// ranks; `memory` adds the parameter counts and peak memory to
/// summary.json (the command line does, the pipeline keeps its summaries
/// as they were).
fn sft_with(
    args: &Args,
    packing: bool,
    lora: &LoraArgs,
    dp: &DpArgs,
    memory: bool,
) -> Result<SftSummary> {
    let config = config_of(args, packing)?;
    let ranks = dp.ranks(args.threads)?;
    let on_bad = if args.skip_bad {
        OnBad::Skip
    } else {
        OnBad::Error
    };
    let mut be = crate::backend::open(&args.backend, ranks.threads())?;
    let mut policy = load_policy(&mut be, args, lora, config.seed)?;
    let chats = read_chats(&args.data, on_bad)?;
    let encoded = encode_chats(
        &policy.tokenizer,
        &policy.template,
        &chats,
        policy.max_seq_len(),
        on_bad,
    )?;
    if let Some(report) = encoded.skip_report() {
        eprintln!("warning: {report}");
    }
    let (train, eval) = split_eval(&encoded.items, config.eval_fraction, config.seed);
    if train.is_empty() {
        bail!("{}: no chats left to train on", args.data.display());
    }
    let _lock = super::out_dir::claim(&args.out)?;
    let metrics_path = args.out.join("metrics.jsonl");
    let mut metrics = MetricsLog::create(&metrics_path)
        .with_context(|| format!("creating {}", metrics_path.display()))?;
    let world = ranks.world();
    let per_step = config.chats_per_step() * world;
    let mut total = train.len().div_ceil(per_step) as u64 * config.epochs as u64;
    if config.max_steps > 0 {
        total = total.min(config.max_steps);
    }
    eprintln!(
        "sft: {} train / {} eval chats ({} skipped), {} steps of {} chats{}, lr {} -> {}, model {} ({} params)",
        train.len(),
        eval.len(),
        encoded.skipped.len(),
        total,
        per_step,
        if config.packing {
            format!(" packed into rows of {}", policy.max_seq_len())
        } else {
            String::new()
        },
        config.lr,
        config.min_lr,
        args.model.display(),
        policy.model.num_params()
    );
    ranks.announce(config.chats_per_step(), "chats");
    let threads = ranks.threads();
    let progress = Progress::new("sft", total, config.log_every);
    let result = ranks.run(
        |replicas| {
            let log = Some(&mut metrics);
            let (be, p) = (&mut be, &mut policy);
            Ok(train_sft_across(
                be, p, &train, &eval, &config, log, &progress, replicas,
            )?)
        },
        |replicas| {
            let mut be = crate::backend::open(&args.backend, threads)?;
            let mut p = load_policy(&mut be, args, lora, config.seed)?;
            let hidden = Progress::hidden("sft", total);
            train_sft_across(
                &mut be, &mut p, &train, &eval, &config, None, &hidden, replicas,
            )?;
            Ok(())
        },
    );
    progress.finish();
    let summary = result?;
    let mut json = serde_json::to_value(&summary)?;
    json["skipped_lines"] = encoded.skipped.len().into();
    if policy.model.lora().is_some() {
        super::lora_args::save_adapter(&mut be, &policy.model, &args.out, &args.model)?;
        json["lora"] = serde_json::to_value(&policy.model.lora().unwrap().config)?;
    } else {
        policy.save(&mut be, &args.out.join("model"))?;
    }
    if memory {
        json["memory"] = super::lora_args::memory_figures(&policy.model);
    }
    let path = args.out.join("summary.json");
    kiln_stdx::fs::write_atomic(&path, serde_json::to_string_pretty(&json)?.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(summary)
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
