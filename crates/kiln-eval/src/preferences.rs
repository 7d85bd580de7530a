//! Preference pairs ranked by the judge.
//!
//! - [`sample_pairs`]: sample a policy `k` times per prompt, judge every
//!   reply, keep (best, worst) when their scores differ by at least
//!   `min_gap` (a clear preference, not judge noise).
//! - [`synthetic_pairs`]: a reference answer against a flawed one, with no
//!   model (deterministic; for tests and a reward model warm-up).

use kiln_abi::BackendBox;
use kiln_model::{Gpt, Rng, SampleOptions};
use kiln_tokenizer::{ChatTemplate, Message, Tokenizer};
use serde::{Deserialize, Serialize};

use crate::evaluate::{generate_replies, judged, EvalResponse};
use crate::judge::score;
use crate::tasks::{flawed_answer, reference_answer, train_tasks, truncated_answer, Flaw, Task};
use crate::EvalError;

/// A pair with the judge's scores (`chosen_score > rejected_score`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgedPair {
    pub task: Task,
    pub chosen: String,
    pub rejected: String,
    pub chosen_score: f32,
    pub rejected_score: f32,
    /// How the rejected reply is wrong, for written pairs (None for
    /// sampled ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flaw: Option<Flaw>,
}

impl JudgedPair {
    /// The prompt as messages (one user message).
    pub fn prompt(&self) -> Vec<Message> {
        self.task.messages()
    }
    pub fn gap(&self) -> f32 {
        self.chosen_score - self.rejected_score
    }
}

/// `n` pairs over the training prompts: a reference answer (score 1)
/// against a flawed one, a share `truncated_share` of them cut short (see
/// [`written_pairs`]). Deterministic from `seed`.
pub fn synthetic_pairs(n: usize, seed: u64, truncated_share: f32) -> Vec<JudgedPair> {
    written_pairs(train_tasks(n, seed), seed, truncated_share)
}

/// The `truncated_share` that makes the longer and the shorter reply the
/// rejected one about equally often. The SFT flaws alone (share 0) reject
/// the longer reply in ~60% of pairs and the shorter in ~15%, so a reward
/// model can learn "shorter is better" (PPO then shortens replies).
pub const BALANCED_TRUNCATED_SHARE: f32 = 0.45;

/// Changes whenever [`written_pairs`] writes different pairs for the same
/// settings, so that `kiln pipeline` reruns the stages that used them.
pub const WRITTEN_PAIRS_VERSION: u32 = 2;

/// A reference answer against a flawed one for each of `tasks` (what
/// [`synthetic_pairs`] does for training tasks; on evaluation tasks it
/// measures a reward model on prompts it never saw): a share
/// `truncated_share` cut short ([`truncated_answer`]; a one-digit sum
/// cannot be), the rest with the SFT data's flaws. Share 0 draws no extra
/// random numbers, so it writes the pairs of `WRITTEN_PAIRS_VERSION` 1.
pub fn written_pairs(tasks: Vec<Task>, seed: u64, truncated_share: f32) -> Vec<JudgedPair> {
    let mut rng = Rng::new(seed ^ 0x9a12_5000);
    tasks
        .into_iter()
        .map(|task| {
            let chosen = reference_answer(&task, &mut rng);
            let truncated = if truncated_share > 0.0 && rng.next_f32() < truncated_share {
                truncated_answer(&task, &mut rng)
            } else {
                None
            };
            let (rejected, flaw) = match truncated {
                Some(t) => (t, Flaw::Truncated),
                None => flawed_answer(&task, &mut rng),
            };
            JudgedPair {
                flaw: Some(flaw),
                chosen_score: score(&task, &chosen),
                rejected_score: score(&task, &rejected),
                task,
                chosen,
                rejected,
            }
        })
        .collect()
}

/// How [`sample_pairs`] samples and filters.
#[derive(Debug, Clone)]
pub struct PairSampling {
    /// Replies per prompt (>= 2).
    pub k: usize,
    /// Smallest judge-score gap between best and worst that makes a pair.
    pub min_gap: f32,
    /// Sampling settings; reply i of prompt p uses seed `sample.seed + p*k + i`.
    pub sample: SampleOptions,
}

impl Default for PairSampling {
    fn default() -> Self {
        PairSampling {
            k: 4,
            min_gap: 0.25,
            sample: SampleOptions {
                max_new_tokens: 32,
                temperature: 1.0,
                ..SampleOptions::default()
            },
        }
    }
}

/// What [`sample_pairs`] saw.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PairStats {
    pub prompts: usize,
    pub samples: usize,
    pub pairs: usize,
    /// Prompts whose best and worst replies were closer than `min_gap`
    /// (or had the same text).
    pub no_clear_preference: usize,
    /// Mean judge score of all samples.
    pub mean_sample_score: f32,
    pub mean_chosen_score: f32,
    pub mean_rejected_score: f32,
}

/// The best and the worst reply of one prompt (the first of each on ties),
/// when their scores differ by at least `min_gap` and their texts differ.
/// Blank replies (the end token at once) take no part: a pair file cannot
/// hold an empty completion (its readers refuse one).
pub fn clear_preference(
    group: &[EvalResponse],
    min_gap: f32,
) -> Option<(&EvalResponse, &EvalResponse)> {
    let replies = || group.iter().filter(|r| !r.text.trim().is_empty());
    let best = replies().reduce(|a, b| if b.score > a.score { b } else { a })?;
    let worst = replies().reduce(|a, b| if b.score < a.score { b } else { a })?;
    (best.score - worst.score >= min_gap && best.text != worst.text).then_some((best, worst))
}

/// Samples `cfg.k` replies per task from `model`, judges them and keeps
/// the best against the worst where the gap is clear.
pub fn sample_pairs(
    be: &mut BackendBox,
    model: &mut Gpt,
    tok: &Tokenizer,
    template: &ChatTemplate,
    tasks: &[Task],
    cfg: &PairSampling,
) -> Result<(Vec<JudgedPair>, PairStats), EvalError> {
    if cfg.k < 2 {
        return Err(EvalError::Input(format!(
            "sampling preference pairs needs k >= 2 replies per prompt, not {}",
            cfg.k
        )));
    }
    let repeated: Vec<Task> = tasks
        .iter()
        .flat_map(|t| std::iter::repeat_n(t.clone(), cfg.k))
        .collect();
    let replies = generate_replies(be, model, tok, template, &repeated, &cfg.sample)?;
    let judgedv: Vec<_> = replies
        .into_iter()
        .zip(&repeated)
        .map(|((p, ids), task)| judged(tok, template, task, p, ids))
        .collect();

    let mut stats = PairStats {
        prompts: tasks.len(),
        samples: judgedv.len(),
        ..PairStats::default()
    };
    let mut pairs = Vec::new();
    for (task, group) in tasks.iter().zip(judgedv.chunks(cfg.k)) {
        let Some((best, worst)) = clear_preference(group, cfg.min_gap) else {
            stats.no_clear_preference += 1;
            continue;
        };
        pairs.push(JudgedPair {
            task: task.clone(),
            chosen: best.text.clone(),
            rejected: worst.text.clone(),
            chosen_score: best.score,
            rejected_score: worst.score,
            flaw: None,
        });
    }
    let n = |x: usize| x.max(1) as f32;
    stats.pairs = pairs.len();
    stats.mean_sample_score = judgedv.iter().map(|r| r.score).sum::<f32>() / n(judgedv.len());
    stats.mean_chosen_score = pairs.iter().map(|p| p.chosen_score).sum::<f32>() / n(pairs.len());
    stats.mean_rejected_score =
        pairs.iter().map(|p| p.rejected_score).sum::<f32>() / n(pairs.len());
    Ok((pairs, stats))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::eval_tasks;
    use crate::test_util::{backend, chat_tokenizer, tiny_model};

    fn reply(task: &Task, text: &str) -> EvalResponse {
        let j = crate::judge::judge(task, text);
        EvalResponse {
            task: task.clone(),
            prompt_ids: vec![1],
            ids: vec![2],
            text: text.into(),
            ended: true,
            score: j.score,
            reason: j.reason,
        }
    }

    #[test]
    fn clear_preference_takes_best_and_worst_over_the_gap() {
        let t = Task {
            prompt: "What is 3 + 4?".into(),
            spec: crate::TaskSpec::Arithmetic { a: 3, b: 4 },
        };
        // Scores 0.375, 1, 0.25, 1.
        let g: Vec<EvalResponse> = ["8", "7", "5", "7."].iter().map(|x| reply(&t, x)).collect();
        let (best, worst) = clear_preference(&g, 0.5).unwrap();
        assert_eq!((best.text.as_str(), worst.text.as_str()), ("7", "5"));
        assert!(clear_preference(&g, 0.8).is_none(), "gap 0.75 < 0.8");
        let same = vec![reply(&t, "7"), reply(&t, "7")];
        assert!(clear_preference(&same, 0.0).is_none(), "identical texts");
        assert!(clear_preference(&[], 0.0).is_none());
        // A blank reply (score 0) is never the worst one of a pair.
        let blank = vec![reply(&t, "7"), reply(&t, " "), reply(&t, "5")];
        let (best, worst) = clear_preference(&blank, 0.5).unwrap();
        assert_eq!((best.text.as_str(), worst.text.as_str()), ("7", "5"));
        assert!(clear_preference(&blank[1..2], 0.0).is_none());
    }

    #[test]
    fn sampled_pairs_account_for_every_prompt() {
        let (tok, tmpl) = chat_tokenizer();
        let mut be = backend();
        let mut model = tiny_model(&mut be, &tok, 3);
        let tasks = eval_tasks(8, 0);
        let mut cfg = PairSampling {
            k: 3,
            min_gap: 0.0,
            ..PairSampling::default()
        };
        cfg.sample.max_new_tokens = 10;
        let (pairs, stats) = sample_pairs(&mut be, &mut model, &tok, &tmpl, &tasks, &cfg).unwrap();
        assert_eq!((stats.prompts, stats.samples), (8, 24));
        assert_eq!(stats.pairs + stats.no_clear_preference, 8);
        assert_eq!(stats.pairs, pairs.len());
        for p in &pairs {
            assert!(p.chosen_score >= p.rejected_score && p.chosen != p.rejected);
            assert_eq!(p.chosen_score, score(&p.task, &p.chosen));
            assert_eq!(p.rejected_score, score(&p.task, &p.rejected));
        }
        let again = sample_pairs(&mut be, &mut model, &tok, &tmpl, &tasks, &cfg).unwrap();
        assert_eq!(again.0, pairs, "deterministic from the seed");
        cfg.k = 1;
        let err = sample_pairs(&mut be, &mut model, &tok, &tmpl, &tasks, &cfg).unwrap_err();
        assert!(err.to_string().contains("k >= 2"), "{err}");
    }

    #[test]
    fn synthetic_pairs_are_deterministic_and_clearly_ordered() {
        let a = synthetic_pairs(200, 4, 0.0);
        assert_eq!(a, synthetic_pairs(200, 4, 0.0));
        assert_ne!(a, synthetic_pairs(200, 5, 0.0));
        assert!(a.iter().all(|p| p.flaw != Some(Flaw::Truncated)));
        for p in &a {
            assert_eq!(p.chosen_score, 1.0, "{p:?}");
            assert!(p.gap() >= 0.25, "{p:?}");
            assert_ne!(p.chosen, p.rejected);
            assert!(p.flaw.is_some(), "{p:?}");
        }
    }

    /// A reward model learns whatever the length of a reply predicts: the
    /// written pairs must not make "shorter" (or "longer") a shortcut.
    #[test]
    fn written_pairs_reject_the_longer_and_the_shorter_reply_about_equally() {
        let pairs = synthetic_pairs(4000, 9, BALANCED_TRUNCATED_SHARE);
        let words = |t: &str| t.split_whitespace().count();
        let share = |f: &dyn Fn(usize, usize) -> bool| {
            let n = pairs
                .iter()
                .filter(|p| f(words(&p.chosen), words(&p.rejected)));
            n.count() as f64 / pairs.len() as f64
        };
        let longer = share(&|c, r| r > c);
        let shorter = share(&|c, r| r < c);
        assert!(longer > 0.3 && shorter > 0.3, "{longer} {shorter}");
        assert!((longer - shorter).abs() < 0.1, "{longer} {shorter}");
        let truncated = pairs.iter().filter(|p| p.flaw == Some(Flaw::Truncated));
        let share_cut = truncated.count() as f64 / pairs.len() as f64;
        assert!((0.3..0.45).contains(&share_cut), "{share_cut}");
    }
}
