//! `kiln grpo`: group-relative policy optimisation. Scores come from a
//! reward model (`--reward RM_DIR`) or from the programmatic task judge
//! (`--judge`, RL from verifiable rewards; the prompts file is then a tasks
//! JSONL, one `{"prompt": ..., "spec": {...}}` per line). Writes
//! OUT/metrics.jsonl, OUT/summary.json and OUT/model/.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kiln_align::grpo::{train_grpo, GrpoConfig};
use kiln_align::metrics::Progress;
use kiln_align::policy::Policy;
use kiln_align::reward::RewardModel;
use kiln_align::rollout::Scorer;
use kiln_align::AlignError;
use kiln_eval::Task;

use super::ppo::{load_prompts, open_metrics, write_summary, RlSummary};
use super::sft::read_toml;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The SFT model directory (policy and reference start from it).
    #[arg(long)]
    pub policy: PathBuf,
    /// Score replies with this reward model directory.
    #[arg(long, conflicts_with = "judge", required_unless_present = "judge")]
    pub reward: Option<PathBuf>,
    /// Score replies with the programmatic task judge (prompts = tasks JSONL).
    #[arg(long)]
    pub judge: bool,
    /// Prompts (`{"prompt": ...}` per line) or, with --judge, tasks.
    #[arg(long)]
    pub prompts: PathBuf,
    /// Output directory (metrics.jsonl, summary.json, model/).
    #[arg(long)]
    pub out: PathBuf,
    /// TOML file with GRPO settings (keys as in `GrpoConfig`); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Skip and count bad prompt lines instead of stopping at the first.
    #[arg(long)]
    pub skip_bad: bool,
    /// Compute threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub backend: crate::backend::BackendArg,
    #[arg(long)]
    pub iterations: Option<u64>,
    #[arg(long)]
    pub group_size: Option<usize>,
    #[arg(long)]
    pub lr: Option<f32>,
    #[arg(long)]
    pub beta: Option<f32>,
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

fn config_of(args: &Args) -> Result<GrpoConfig> {
    let mut c: GrpoConfig = match &args.config {
        Some(p) => read_toml(p, "GRPO")?,
        None => GrpoConfig::default(),
    };
    if let Some(v) = args.iterations {
        c.iterations = v;
    }
    if let Some(v) = args.group_size {
        c.group_size = v;
    }
    if let Some(v) = args.lr {
        c.lr = v;
    }
    if let Some(v) = args.beta {
        c.beta = v;
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
    c.validate().context("grpo settings")?;
    Ok(c)
}

/// Reads a tasks JSONL (one [`Task`] per line); errors name FILE:LINE.
pub fn read_tasks(path: &Path) -> Result<Vec<Task>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("tasks {}: cannot read", path.display()))?;
    let mut tasks = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let task: Task = serde_json::from_str(line).map_err(|e| {
            anyhow::anyhow!(
                "{}:{}: not a task ({e}); --judge needs lines like \
                 {{\"prompt\": \"What is 3 + 4?\", \"spec\": {{\"kind\": \"arithmetic\", \"a\": 3, \"b\": 4}}}}",
                path.display(),
                i + 1
            )
        })?;
        tasks.push(task);
    }
    if tasks.is_empty() {
        bail!("{}: no tasks", path.display());
    }
    Ok(tasks)
}

/// Reads a tasks JSONL and encodes each task's prompt, leaving room for
/// `max_new` reply tokens: (prompt ids, tasks), in file order.
pub fn load_tasks(
    path: &Path,
    policy: &Policy,
    max_new: usize,
) -> Result<(Vec<Vec<u32>>, Vec<Task>)> {
    let tasks = read_tasks(path)?;
    let mut ids = Vec::with_capacity(tasks.len());
    for (i, t) in tasks.iter().enumerate() {
        let p = policy
            .template
            .encode_prompt(&policy.tokenizer, &t.messages())
            .with_context(|| format!("{}: task {}", path.display(), i + 1))?;
        if p.len() + max_new > policy.max_seq_len() {
            bail!(
                "{}: task {} has a {}-token prompt; with max_new_tokens {max_new} it exceeds \
                 the model's context of {}",
                path.display(),
                i + 1,
                p.len(),
                policy.max_seq_len()
            );
        }
        ids.push(p);
    }
    Ok((ids, tasks))
}

pub fn run(args: Args) -> Result<()> {
    let s = run_grpo(&args)?;
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

/// The whole command as a function (the pipeline calls it).
pub fn run_grpo(args: &Args) -> Result<RlSummary> {
    let cfg = config_of(args)?;
    let mut be = crate::backend::open(&args.backend, args.threads)?;
    for dir in [Some(&args.policy), args.reward.as_ref()]
        .into_iter()
        .flatten()
    {
        super::out_dir::check_finished_model(dir)?;
    }
    let load = |be: &mut _| {
        Policy::load(be, &args.policy, None)
            .with_context(|| format!("loading policy {}", args.policy.display()))
    };
    let mut policy = load(&mut be)?;
    let mut reference = load(&mut be)?;
    let max_new = cfg.sampling.max_new_tokens;

    let (prompts, tasks) = if args.judge {
        load_tasks(&args.prompts, &policy, max_new)?
    } else {
        (
            load_prompts(&args.prompts, &policy, max_new, args.skip_bad)?,
            Vec::new(),
        )
    };
    let judge_fn = |i: usize, reply: &str| kiln_eval::judge::score(&tasks[i], reply);
    let mut rm = match &args.reward {
        Some(dir) => Some(
            RewardModel::load(&mut be, dir, None)
                .with_context(|| format!("loading reward model {}", dir.display()))?,
        ),
        None => None,
    };
    let scorer = match rm.as_mut() {
        Some(m) => Scorer::Model(m),
        None => Scorer::Program(&judge_fn),
    };

    let (_lock, mut metrics) = open_metrics(&args.out)?;
    eprintln!(
        "grpo: {} prompts, {} iterations of {} prompts x {} replies, max_new_tokens {}, \
         beta {}, lr {}, scores from {}",
        prompts.len(),
        cfg.iterations,
        cfg.batch_prompts,
        cfg.group_size,
        max_new,
        cfg.beta,
        cfg.lr,
        if args.judge {
            "the task judge"
        } else {
            "the reward model"
        }
    );
    let progress = Progress::new("grpo", cfg.iterations, 1);
    let result = train_grpo(
        &mut be,
        &mut policy,
        &mut reference,
        scorer,
        &prompts,
        &cfg,
        |r| {
            progress.record(r);
            metrics
                .append(r)
                .map_err(|e| AlignError::io(metrics.path().to_path_buf(), e))
        },
    );
    progress.finish();
    let records = result?;
    policy.save(&mut be, &args.out.join("model"))?;
    let summary = RlSummary::of(&records, progress.elapsed_s());
    write_summary(&args.out, &summary)?;
    Ok(summary)
}
