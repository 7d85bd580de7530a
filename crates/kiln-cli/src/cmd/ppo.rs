//! `kiln ppo`: RLHF with PPO. The policy and the frozen reference start
//! from the SFT model, the value model from the reward model, which also
//! scores every reply. Writes OUT/metrics.jsonl (one line per rollout
//! batch), OUT/summary.json and OUT/model/.

use std::path::PathBuf;

use anyhow::{Context, Result};
use kiln_align::data::{encode_prompts, read_prompts, OnBad};
use kiln_align::metrics::{MetricsLog, Progress, Record};
use kiln_align::policy::Policy;
use kiln_align::ppo::{train_ppo, PpoConfig, PpoModels};
use kiln_align::reward::RewardModel;
use kiln_align::rollout::Scorer;
use kiln_align::AlignError;

use super::sft::read_toml;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The SFT model directory (policy and reference start from it).
    #[arg(long)]
    pub policy: PathBuf,
    /// The frozen reference the KL penalty is measured against (default:
    /// `--policy`). A later RLHF round starts the policy from the last
    /// round's model and keeps the SFT model as its reference.
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// The reward model directory written by `kiln reward` (scorer and
    /// the value model's starting point).
    #[arg(long)]
    pub reward: PathBuf,
    /// Prompts, one `{"prompt": ...}` per line.
    #[arg(long)]
    pub prompts: PathBuf,
    /// Output directory (metrics.jsonl, summary.json, model/).
    #[arg(long)]
    pub out: PathBuf,
    /// TOML file with PPO settings (keys as in `PpoConfig`); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Skip and count bad prompt lines instead of stopping at the first.
    #[arg(long)]
    pub skip_bad: bool,
    /// The prompts file holds tasks (as for `kiln grpo --judge`): PPO still
    /// optimises the reward model, and the task judge's score of every
    /// rollout is logged as `gold_score`, to see when the two part.
    #[arg(long)]
    pub gold_judge: bool,
    /// Compute threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub backend: crate::backend::BackendArg,
    #[arg(long)]
    pub iterations: Option<u64>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    #[arg(long)]
    pub lr: Option<f32>,
    #[arg(long)]
    pub kl_coef: Option<f64>,
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Precision policy: f32, bf16 or f16 (16-bit weights, activations and
    /// gradients with f32 master weights and AdamW moments; f16 adds a
    /// dynamic loss scale). Same as `precision` in the TOML file.
    #[arg(long)]
    pub precision: Option<String>,
}

fn config_of(args: &Args) -> Result<PpoConfig> {
    let mut c: PpoConfig = match &args.config {
        Some(p) => read_toml(p, "PPO")?,
        None => PpoConfig::default(),
    };
    if let Some(v) = args.iterations {
        c.iterations = v;
    }
    if let Some(v) = args.batch_size {
        c.batch_size = v;
        c.minibatch_size = c.minibatch_size.min(v);
    }
    if let Some(v) = args.lr {
        c.lr = v;
    }
    if let Some(v) = args.kl_coef {
        c.kl_coef = v;
    }
    if let Some(v) = args.max_new_tokens {
        c.sampling.max_new_tokens = v;
    }
    if let Some(v) = args.seed {
        c.seed = v;
    }
    if let Some(v) = &args.precision {
        c.precision = v.clone();
    }
    c.validate().context("ppo settings")?;
    Ok(c)
}

pub fn run(args: Args) -> Result<()> {
    let s = run_ppo(&args)?;
    println!(
        "done: {} iterations, reward {:.4} -> {:.4}, KL to the reference {:.4}; model {}",
        s.iterations,
        s.reward_first,
        s.reward_last,
        s.kl_last,
        args.out.join("model").display()
    );
    Ok(())
}

/// The figures `summary.json` holds (first / last iteration; value warm-up
/// iterations count in `iterations`, and `reward_first` is the frozen
/// policy's reward when there are any).
#[derive(Debug, Clone, serde::Serialize)]
pub struct RlSummary {
    pub iterations: u64,
    /// The mean reward of the first / last five iterations' rollouts (one
    /// iteration's are noisy); metrics.jsonl has every iteration.
    pub reward_first: f64,
    pub reward_last: f64,
    pub kl_last: f64,
    pub entropy_last: f64,
    pub response_len_last: f64,
    /// The judge's mean score of the rollouts of the first / last five
    /// iterations (`--gold-judge`; one iteration's 32 rollouts are noisy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gold_first: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gold_last: Option<f64>,
    pub elapsed_s: f64,
}

impl RlSummary {
    pub fn of(records: &[Record], elapsed_s: f64) -> RlSummary {
        let get = |r: Option<&Record>, k: &str| r.and_then(|r| r.get(k)).unwrap_or(f64::NAN);
        let last = records.last();
        RlSummary {
            iterations: records.len() as u64,
            reward_first: mean_of(records.iter().take(5), "reward").unwrap_or(f64::NAN),
            reward_last: mean_of(records.iter().rev().take(5), "reward").unwrap_or(f64::NAN),
            kl_last: get(last, "kl"),
            entropy_last: get(last, "entropy"),
            response_len_last: get(last, "response_len"),
            gold_first: mean_of(records.iter().take(5), "gold_score"),
            gold_last: mean_of(records.iter().rev().take(5), "gold_score"),
            elapsed_s,
        }
    }
}

/// The mean of `key` over `records` that have it (None when none has).
fn mean_of<'r>(records: impl Iterator<Item = &'r Record>, key: &str) -> Option<f64> {
    let values: Vec<f64> = records.filter_map(|r| r.get(key)).collect();
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// Reads and encodes the prompts, leaving room for the replies.
pub fn load_prompts(
    path: &std::path::Path,
    policy: &Policy,
    max_new_tokens: usize,
    skip_bad: bool,
) -> Result<Vec<Vec<u32>>> {
    let on_bad = if skip_bad { OnBad::Skip } else { OnBad::Error };
    let data = read_prompts(path, on_bad)?;
    let encoded = encode_prompts(
        &policy.tokenizer,
        &policy.template,
        &data,
        policy.max_seq_len(),
        max_new_tokens,
        on_bad,
    )?;
    if let Some(report) = encoded.skip_report() {
        eprintln!("warning: {report}");
    }
    Ok(encoded.items)
}

/// Claims OUT ([`super::out_dir::claim`]: hold the lock until the run ends)
/// and opens OUT/metrics.jsonl.
pub fn open_metrics(out: &std::path::Path) -> Result<(kiln_stdx::lock::DirLock, MetricsLog)> {
    let lock = super::out_dir::claim(out)?;
    let path = out.join("metrics.jsonl");
    let log = MetricsLog::create(&path).with_context(|| format!("creating {}", path.display()))?;
    Ok((lock, log))
}

/// Writes OUT/summary.json.
pub fn write_summary(out: &std::path::Path, summary: &RlSummary) -> Result<()> {
    let path = out.join("summary.json");
    kiln_stdx::fs::write_atomic(&path, serde_json::to_string_pretty(summary)?.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// The whole command as a function (the pipeline calls it).
pub fn run_ppo(args: &Args) -> Result<RlSummary> {
    let cfg = config_of(args)?;
    let mut be = crate::backend::open(&args.backend, args.threads)?;
    for dir in [
        Some(&args.policy),
        args.reference.as_ref(),
        Some(&args.reward),
    ]
    .into_iter()
    .flatten()
    {
        super::out_dir::check_finished_model(dir)?;
    }
    let load = |be: &mut _, dir: &std::path::Path| {
        Policy::load(be, dir, None).with_context(|| format!("loading policy {}", dir.display()))
    };
    let mut policy = load(&mut be, &args.policy)?;
    let mut reference = load(&mut be, args.reference.as_ref().unwrap_or(&args.policy))?;
    if let Some(dir) = &args.reference {
        let (p, r) = (
            policy.tokenizer.vocab_size(),
            reference.tokenizer.vocab_size(),
        );
        if p != r {
            anyhow::bail!(
                "--reference {}: its tokenizer has {r} tokens, the policy's {p}; \
                 the reference must share the policy's tokenizer (use the model the policy was fine-tuned from)",
                dir.display()
            );
        }
    }
    let load_rm = |be: &mut _| {
        RewardModel::load(be, &args.reward, None)
            .with_context(|| format!("loading reward model {}", args.reward.display()))
    };
    let mut scorer_rm = load_rm(&mut be)?;
    let mut value = load_rm(&mut be)?;
    let max_new = cfg.sampling.max_new_tokens;
    let (prompts, tasks) = if args.gold_judge {
        super::grpo::load_tasks(&args.prompts, &policy, max_new)?
    } else {
        let prompts = load_prompts(&args.prompts, &policy, max_new, args.skip_bad)?;
        (prompts, Vec::new())
    };
    let (_lock, mut metrics) = open_metrics(&args.out)?;
    eprintln!(
        "ppo: {} prompts, {} iterations of {} episodes ({} epochs, minibatch {}), \
         max_new_tokens {}, kl_coef {}{}, lr {} / value {}",
        prompts.len(),
        cfg.iterations,
        cfg.batch_size,
        cfg.ppo_epochs,
        cfg.minibatch_size,
        cfg.sampling.max_new_tokens,
        cfg.kl_coef,
        cfg.kl_target
            .map_or(String::new(), |t| format!(" (adaptive, target {t})")),
        cfg.lr,
        cfg.value_lr
    );
    if cfg.value_warmup > 0 {
        eprintln!(
            "ppo: {} value warm-up iterations first (policy frozen)",
            cfg.value_warmup
        );
    }
    let progress = Progress::new("ppo", cfg.value_warmup + cfg.iterations, 1);
    let judge_fn = |i: usize, reply: &str| kiln_eval::judge::score(&tasks[i], reply);
    let models = PpoModels {
        policy: &mut policy,
        reference: &mut reference,
        value: &mut value,
        scorer: Scorer::Model(&mut scorer_rm),
        gold: args
            .gold_judge
            .then_some(&judge_fn as &kiln_align::rollout::ProgramScore),
    };
    let result = train_ppo(&mut be, models, &prompts, &cfg, |r| {
        progress.record(r);
        metrics
            .append(r)
            .map_err(|e| AlignError::io(metrics.path().to_path_buf(), e))
    });
    progress.finish();
    let records = result?;
    policy.save(&mut be, &args.out.join("model"))?;
    let summary = RlSummary::of(&records, progress.elapsed_s());
    write_summary(&args.out, &summary)?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_align::metrics::TRAIN;

    #[test]
    fn reward_and_gold_figures_average_the_first_and_last_five_iterations() {
        let recs: Vec<Record> = (1..=8)
            .map(|i| {
                Record::new(i, TRAIN)
                    .with("reward", 10.0 * i as f64)
                    .with("gold_score", i as f64)
            })
            .collect();
        let s = RlSummary::of(&recs, 1.0);
        assert_eq!((s.gold_first, s.gold_last), (Some(3.0), Some(6.0)));
        assert_eq!((s.reward_first, s.reward_last), (30.0, 60.0));
        let plain: Vec<Record> = (1..=3).map(|i| Record::new(i, TRAIN)).collect();
        let s = RlSummary::of(&plain, 1.0);
        assert_eq!((s.gold_first, s.gold_last), (None, None));
    }
}
