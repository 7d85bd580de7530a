//! Judging every stage's model on the held-out tasks: mean judge score
//! (overall and per task kind), win rate against the SFT model, KL to the
//! SFT model on the model's own samples, and the replies side by side.
//! Always the programmatic judge, never the learned reward model.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kiln_align::policy::Policy;
use kiln_eval::evaluate::{evaluate_policy_samples, kl_to_reference, win_rate, Evaluation};
use kiln_eval::tasks::Task;
use kiln_model::SampleOptions;
use serde_json::{json, Map, Value};

/// Sampling temperature of the judged replies: 1, the policy's own
/// distribution, where the KL estimate on the same replies is unbiased and
/// greedy decoding's ties (two models giving the same most likely answer)
/// do not hide what alignment changed.
const EVAL_TEMPERATURE: f32 = 1.0;
/// Replies per model shown side by side in results.json and the report.
const SHOWN_SAMPLES: usize = 12;

/// One model to judge: its stage name and directory.
pub(super) struct Candidate {
    pub stage: String,
    pub dir: PathBuf,
}

/// Judges `candidates` on `tasks`, `samples` replies per task; writes
/// `eval/results.json` and returns the figures for summary.json.
/// `tokenizer` serves directories that lack tokenizer.json (pretraining
/// checkpoints).
pub(super) fn judge_models(
    out: &Path,
    candidates: &[Candidate],
    tasks: &[Task],
    samples: usize,
    tokenizer: &Path,
    max_new_tokens: usize,
    threads: Option<usize>,
) -> Result<Value> {
    let mut be = crate::backend::open(&Default::default(), threads)?;
    let judged_opts = SampleOptions {
        max_new_tokens,
        temperature: EVAL_TEMPERATURE,
        top_k: None,
        top_p: None,
        seed: 4242,
        stop_token: None,
    };
    let sft_dir = candidates
        .iter()
        .find(|c| c.stage == "sft")
        .map(|c| c.dir.clone())
        .context("evaluation needs the SFT model (the baseline of win rates and KL)")?;
    let mut sft = Policy::load(&mut be, &sft_dir, Some(tokenizer))?;

    let mut evals: Vec<(&str, Evaluation)> = Vec::new();
    let mut models = Map::new();
    for c in candidates {
        let mut policy = Policy::load(&mut be, &c.dir, Some(tokenizer))
            .with_context(|| format!("loading the {} model {}", c.stage, c.dir.display()))?;
        let eval = evaluate_policy_samples(
            &mut be,
            &mut policy.model,
            &policy.tokenizer,
            &policy.template,
            tasks,
            samples,
            &judged_opts,
        )?;
        let kl = kl_to_reference(&mut be, &mut policy.model, &mut sft.model, &eval)?;
        policy.release(&mut be)?;
        let by_kind: Map<String, Value> = eval
            .per_kind
            .iter()
            .map(|k| (k.kind.name().to_string(), json!(k.mean)))
            .collect();
        eprintln!(
            "eval: {:<9} judge {:.3}  ended {:>5.1}%  reply {:>4.1} tokens  KL to SFT {:.3}",
            c.stage,
            eval.mean_score,
            100.0 * eval.ended_rate,
            eval.mean_reply_tokens,
            kl
        );
        models.insert(
            c.stage.to_string(),
            json!({
                "judge": eval.mean_score,
                "by_kind": by_kind,
                "ended_rate": eval.ended_rate,
                "mean_reply_tokens": eval.mean_reply_tokens,
                "kl_to_sft": kl,
            }),
        );
        evals.push((c.stage.as_str(), eval));
    }
    sft.release(&mut be)?;

    let baseline = &evals
        .iter()
        .find(|(s, _)| *s == "sft")
        .expect("the SFT model was evaluated")
        .1;
    for (stage, eval) in &evals {
        let w = win_rate(eval, baseline)?;
        models[*stage]["win_rate_vs_sft"] = json!(w);
        if *stage != "sft" {
            eprintln!(
                "eval: {stage} wins {:.1}% against SFT (mean of {samples} replies per task; ties half)",
                100.0 * w
            );
        }
    }

    // The first reply of each shown task, side by side.
    let shown: Vec<Value> = (0..tasks.len().min(SHOWN_SAMPLES))
        .map(|i| {
            let task = &tasks[i];
            let responses: Map<String, Value> = evals
                .iter()
                .map(|(s, e)| (s.to_string(), json!(e.responses[i * samples].text)))
                .collect();
            let scores: Map<String, Value> = evals
                .iter()
                .map(|(s, e)| (s.to_string(), json!(e.responses[i * samples].score)))
                .collect();
            json!({ "prompt": task.prompt, "kind": task.kind().name(),
                    "responses": responses, "scores": scores })
        })
        .collect();

    let results = json!({
        "tasks": tasks.len(),
        "samples_per_task": samples,
        "temperature": EVAL_TEMPERATURE,
        "models": models,
        "samples": shown,
    });
    let path = out.join("eval").join("results.json");
    std::fs::create_dir_all(out.join("eval"))?;
    kiln_stdx::fs::write_atomic(&path, serde_json::to_string_pretty(&results)?.as_bytes())
        .with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(json!({
        "models": results["models"].clone(),
        "tasks": tasks.len(),
        "samples_per_task": samples,
    }))
}

/// The eval tasks written by the tasks stage.
pub(super) fn read_tasks(path: &Path) -> Result<Vec<Task>> {
    super::super::grpo::read_tasks(path)
}
