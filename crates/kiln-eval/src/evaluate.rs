//! Evaluating a policy with the judge: mean score (overall and per kind)
//! with every response kept, win rate of one policy over another, and the
//! KL divergence of a policy from its reference on its own samples.
//!
//! The judge decides; a learned reward model never does.

use kiln_abi::BackendBox;
use kiln_model::{Gpt, SampleOptions};
use kiln_tokenizer::{ChatTemplate, Tokenizer};
use serde::{Deserialize, Serialize};

use crate::judge::judge;
use crate::tasks::{Task, TaskKind};
use crate::EvalError;

/// One task, the policy's reply and the judge's verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalResponse {
    pub task: Task,
    /// The prompt as encoded (ends with `<|assistant|>`).
    pub prompt_ids: Vec<u32>,
    /// The generated tokens, `<|end|>` included when the reply ended.
    pub ids: Vec<u32>,
    /// The reply's text (up to the end of the turn).
    pub text: String,
    /// Whether the reply ended with `<|end|>` (not cut off).
    pub ended: bool,
    pub score: f32,
    pub reason: String,
}

/// Mean judge score of one task kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KindScore {
    pub kind: TaskKind,
    pub mean: f32,
    pub n: usize,
}

/// A policy's evaluation on a list of tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Replies sampled per task: `responses` holds task i's replies at
    /// `i * samples_per_task ..` (task-major).
    #[serde(default = "one_sample")]
    pub samples_per_task: usize,
    pub mean_score: f32,
    /// Kinds that occur, in [`TaskKind::ALL`] order.
    pub per_kind: Vec<KindScore>,
    /// Share of replies that ended with `<|end|>`.
    pub ended_rate: f32,
    /// Mean number of generated tokens per reply.
    pub mean_reply_tokens: f32,
    pub responses: Vec<EvalResponse>,
}

/// A prompt's ids and the generated reply's ids.
pub(crate) type PromptAndReply = (Vec<u32>, Vec<u32>);

/// Encodes each task's prompt and generates one reply per task (prompt i
/// sampled with seed `opts.seed + i`, stopping at `<|end|>`).
pub(crate) fn generate_replies(
    be: &mut BackendBox,
    model: &mut Gpt,
    tok: &Tokenizer,
    template: &ChatTemplate,
    tasks: &[Task],
    opts: &SampleOptions,
) -> Result<Vec<PromptAndReply>, EvalError> {
    let prompts = tasks
        .iter()
        .map(|t| template.encode_prompt(tok, &t.messages()))
        .collect::<Result<Vec<_>, _>>()?;
    let opts = SampleOptions {
        stop_token: Some(template.end_id()),
        ..opts.clone()
    };
    let replies = model.generate_batch(be, &prompts, &opts)?;
    Ok(prompts.into_iter().zip(replies).collect())
}

/// Judges a reply given as generated ids.
pub(crate) fn judged(
    tok: &Tokenizer,
    template: &ChatTemplate,
    task: &Task,
    prompt_ids: Vec<u32>,
    ids: Vec<u32>,
) -> EvalResponse {
    let (text, ended) = template.decode_reply(tok, &ids);
    let j = judge(task, &text);
    EvalResponse {
        task: task.clone(),
        prompt_ids,
        ids,
        text,
        ended,
        score: j.score,
        reason: j.reason,
    }
}

fn one_sample() -> usize {
    1
}

/// Samples one reply per task with `opts` (the stop token is always
/// `<|end|>`) and judges it.
pub fn evaluate_policy(
    be: &mut BackendBox,
    model: &mut Gpt,
    tok: &Tokenizer,
    template: &ChatTemplate,
    tasks: &[Task],
    opts: &SampleOptions,
) -> Result<Evaluation, EvalError> {
    evaluate_policy_samples(be, model, tok, template, tasks, 1, opts)
}

/// Samples `samples` replies per task and judges each: with sampled
/// (temperature 1) replies one sample per task is a noisy verdict, and the
/// mean of several is what a win rate should compare. Reply `j` of task
/// `i` is sampled with seed `opts.seed + i * samples + j`, so one sample
/// per task is exactly [`evaluate_policy`].
pub fn evaluate_policy_samples(
    be: &mut BackendBox,
    model: &mut Gpt,
    tok: &Tokenizer,
    template: &ChatTemplate,
    tasks: &[Task],
    samples: usize,
    opts: &SampleOptions,
) -> Result<Evaluation, EvalError> {
    if tasks.is_empty() || samples == 0 {
        return Err(EvalError::Input(format!(
            "evaluation needs at least one task and one sample per task (got {} tasks, {samples} samples)",
            tasks.len()
        )));
    }
    let repeated: Vec<Task> = tasks
        .iter()
        .flat_map(|t| std::iter::repeat_n(t.clone(), samples))
        .collect();
    let responses: Vec<EvalResponse> = generate_replies(be, model, tok, template, &repeated, opts)?
        .into_iter()
        .zip(&repeated)
        .map(|((p, ids), task)| judged(tok, template, task, p, ids))
        .collect();
    Ok(summarise_samples(responses, samples))
}

fn mean(xs: impl Iterator<Item = f32>) -> (f32, usize) {
    let (sum, n) = xs.fold((0f64, 0usize), |(s, n), x| (s + x as f64, n + 1));
    ((sum / n.max(1) as f64) as f32, n)
}

/// Aggregates judged responses, one per task (mean overall and per kind).
pub fn summarise(responses: Vec<EvalResponse>) -> Evaluation {
    summarise_samples(responses, 1)
}

/// Aggregates judged responses laid out `samples_per_task` per task,
/// task-major (means over every reply, overall and per kind).
pub fn summarise_samples(responses: Vec<EvalResponse>, samples_per_task: usize) -> Evaluation {
    let per_kind = TaskKind::ALL
        .iter()
        .filter_map(|&kind| {
            let (mean, n) = mean(
                responses
                    .iter()
                    .filter(|r| r.task.kind() == kind)
                    .map(|r| r.score),
            );
            (n > 0).then_some(KindScore { kind, mean, n })
        })
        .collect();
    let n = responses.len().max(1) as f32;
    Evaluation {
        samples_per_task: samples_per_task.max(1),
        mean_score: mean(responses.iter().map(|r| r.score)).0,
        per_kind,
        ended_rate: responses.iter().filter(|r| r.ended).count() as f32 / n,
        mean_reply_tokens: responses.iter().map(|r| r.ids.len()).sum::<usize>() as f32 / n,
        responses,
    }
}

/// How often `a` beats `b` on the same task, by judge score (the mean of
/// a task's replies when several were sampled); ties count one half. Both
/// must have evaluated the same tasks in order with as many samples each.
pub fn win_rate(a: &Evaluation, b: &Evaluation) -> Result<f32, EvalError> {
    if a.responses.len() != b.responses.len()
        || a.responses.is_empty()
        || a.samples_per_task != b.samples_per_task
        || !a.responses.len().is_multiple_of(a.samples_per_task.max(1))
    {
        return Err(EvalError::Input(format!(
            "win rate needs two evaluations of the same tasks (got {} and {} responses, {} and {} per task)",
            a.responses.len(),
            b.responses.len(),
            a.samples_per_task,
            b.samples_per_task
        )));
    }
    let k = a.samples_per_task.max(1);
    let mut wins = 0.0f64;
    let groups = a.responses.chunks(k).zip(b.responses.chunks(k));
    for (i, (ga, gb)) in groups.enumerate() {
        if let Some((ra, rb)) = ga.iter().zip(gb).find(|(ra, rb)| ra.task != rb.task) {
            return Err(EvalError::Input(format!(
                "win rate: task {i} differs ({:?} vs {:?})",
                ra.task.prompt, rb.task.prompt
            )));
        }
        let score = |g: &[EvalResponse]| g.iter().map(|r| r.score as f64).sum::<f64>();
        // Sums of equally many scores compare as their means do.
        wins += match score(ga).partial_cmp(&score(gb)) {
            Some(std::cmp::Ordering::Greater) => 1.0,
            Some(std::cmp::Ordering::Equal) => 0.5,
            _ => 0.0,
        };
    }
    Ok((wins / a.responses.chunks(k).len() as f64) as f32)
}

/// Sequences scored per forward in [`kl_to_reference`].
const KL_BATCH: usize = 16;

/// Sum over each response's tokens of `log p(token)`, for `model`, in the
/// order of `responses` (log-probs at temperature 1).
pub fn response_log_probs(
    be: &mut BackendBox,
    model: &mut Gpt,
    responses: &[EvalResponse],
) -> Result<Vec<f64>, EvalError> {
    let mut out = Vec::with_capacity(responses.len());
    for chunk in responses.chunks(KL_BATCH) {
        // Inputs are prompt + reply without its last token; targets are the
        // reply's tokens at their positions, everything else ignored.
        let t = chunk
            .iter()
            .map(|r| r.prompt_ids.len() + r.ids.len() - 1)
            .max()
            .unwrap_or(1)
            .max(1);
        let b = chunk.len();
        let mut tokens = vec![0u32; b * t];
        let mut targets = vec![u32::MAX; b * t];
        for (row, r) in chunk.iter().enumerate() {
            let seq: Vec<u32> = r.prompt_ids.iter().chain(&r.ids).copied().collect();
            let n = seq.len() - 1;
            tokens[row * t..row * t + n].copy_from_slice(&seq[..n]);
            let first = r.prompt_ids.len() - 1;
            for (j, &id) in r.ids.iter().enumerate() {
                targets[row * t + first + j] = id;
            }
        }
        let losses = model.forward_token_losses(be, &tokens, &targets, b, t)?;
        for row in 0..b {
            let nll: f64 = losses[row * t..(row + 1) * t]
                .iter()
                .map(|&l| l as f64)
                .sum();
            out.push(-nll);
        }
    }
    Ok(out)
}

/// KL(policy || reference) estimated on the policy's own replies: the mean
/// over responses of sum over reply tokens of log pi - log ref (the k1
/// estimator; sample `eval` at temperature 1 for it to be unbiased).
/// Responses with no generated token are skipped.
pub fn kl_to_reference(
    be: &mut BackendBox,
    policy: &mut Gpt,
    reference: &mut Gpt,
    eval: &Evaluation,
) -> Result<f32, EvalError> {
    let rs: Vec<EvalResponse> = eval
        .responses
        .iter()
        .filter(|r| !r.ids.is_empty() && !r.prompt_ids.is_empty())
        .cloned()
        .collect();
    if rs.is_empty() {
        return Err(EvalError::Input(
            "KL needs at least one non-empty response".into(),
        ));
    }
    let lp = response_log_probs(be, policy, &rs)?;
    let lr = response_log_probs(be, reference, &rs)?;
    let kl = lp.iter().zip(&lr).map(|(p, r)| p - r).sum::<f64>() / rs.len() as f64;
    Ok(kl as f32)
}

#[cfg(test)]
mod tests;
