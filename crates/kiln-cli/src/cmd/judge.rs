//! `kiln judge`: the programmatic judge's score of any chat model directory
//! (kiln's, or an open model with its own chat template) on the embedded
//! held-out tasks, printed as one JSON object. The pipeline's eval stage
//! judges the same way (same tasks, temperature and seeds), so the figures
//! compare with its summary.json.

use std::path::PathBuf;

use anyhow::{Context, Result};
use kiln_align::policy::Policy;
use kiln_eval::evaluate::evaluate_policy_samples;
use kiln_eval::tasks::eval_tasks;
use kiln_model::SampleOptions;
use serde_json::{json, Map, Value};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The model directory (a kiln policy, or a Hugging Face Llama-family
    /// directory with a chat_template in its tokenizer_config.json).
    #[arg(long)]
    model: PathBuf,
    /// A PEFT LoRA adapter (e.g. a LoRA run's OUT/adapter/) to run on top
    /// of the model, unmerged.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Tokenizer file (default: MODEL/tokenizer.json).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Held-out tasks to judge (kinds in turn: arithmetic, words, lists,
    /// sentiment).
    #[arg(long, default_value_t = 48)]
    tasks: usize,
    /// Replies sampled per task (temperature 1; their mean is the task's score).
    #[arg(long, default_value_t = 4)]
    samples: usize,
    /// Longest reply in tokens.
    #[arg(long, default_value_t = 48)]
    max_new_tokens: usize,
    /// Sampling seed (reply j of task i uses seed + i * samples + j).
    #[arg(long, default_value_t = 4242)]
    seed: u64,
    /// Compute threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    #[command(flatten)]
    backend: crate::backend::BackendArg,
}

/// The seed of the pipeline's held-out task draw (tasks/eval.jsonl).
const EVAL_TASK_SEED: u64 = 4;

pub fn run(args: Args) -> Result<()> {
    anyhow::ensure!(
        args.tasks > 0 && args.samples > 0,
        "--tasks and --samples must be at least 1"
    );
    let mut be = crate::backend::open(&args.backend, args.threads)?;
    // Frozen: the judge only samples, so no gradient buffers.
    let mut policy = Policy::load_frozen(&mut be, &args.model, args.tokenizer.as_deref())
        .with_context(|| format!("loading {}", args.model.display()))?;
    if let Some(adapter) = &args.adapter {
        super::lora_args::load_adapter(&mut be, &mut policy.model, adapter)?;
    }
    anyhow::ensure!(
        args.max_new_tokens < policy.max_seq_len(),
        "--max-new-tokens {} leaves no room for a prompt in the model's context of {}",
        args.max_new_tokens,
        policy.max_seq_len()
    );
    let tasks = eval_tasks(args.tasks, EVAL_TASK_SEED);
    let opts = SampleOptions {
        max_new_tokens: args.max_new_tokens,
        temperature: 1.0,
        top_k: None,
        top_p: None,
        seed: args.seed,
        stop_token: None,
    };
    eprintln!(
        "judge: {} tasks x {} replies from {}",
        tasks.len(),
        args.samples,
        args.model.display()
    );
    let eval = evaluate_policy_samples(
        &mut be,
        &mut policy.model,
        &policy.tokenizer,
        &policy.template,
        &tasks,
        args.samples,
        &opts,
    )?;
    let by_kind: Map<String, Value> = eval
        .per_kind
        .iter()
        .map(|k| (k.kind.name().to_string(), json!(k.mean)))
        .collect();
    let example = eval.responses.first().map(
        |r| json!({"prompt": r.task.prompt, "reply": r.text, "score": r.score, "reason": r.reason}),
    );
    println!(
        "{}",
        json!({
            "model": args.model,
            "judge": eval.mean_score,
            "by_kind": by_kind,
            "ended_rate": eval.ended_rate,
            "mean_reply_tokens": eval.mean_reply_tokens,
            "tasks": tasks.len(),
            "samples": args.samples,
            "example": example,
        })
    );
    Ok(())
}
