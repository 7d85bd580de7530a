//! Rollouts for PPO and GRPO: sample responses to a batch of prompts with
//! the policy, then measure them: per-token log-probs under the policy and
//! the frozen reference, entropies, values, and the episode score.
//!
//! Layout: everything per token is a right-padded `[rows, cols]` array over
//! the *response* tokens only (see [`crate::loss::ppo::ResponseLayout`]),
//! `cols` the longest response of the batch. Response token `j` of row `i`
//! is predicted at position `prompt_len_i - 1 + j` of the model batch
//! (`TokenBatch::next_token` over `prompt ++ response`); its value is read
//! at the same position (the state that has seen the prompt and the
//! response before token `j`).

use kiln_abi::BackendBox;
use kiln_model::SampleOptions;
use kiln_optim::ParamRef;

use crate::batch::{prompt_completion, LmSequence, TokenBatch};
use crate::loss::ppo::ResponseLayout;
use crate::policy::Policy;
use crate::reward::RewardModel;
use crate::AlignError;

/// A per-position value function (the PPO critic), e.g. a reward model's
/// head read at every position.
pub trait ValueModel {
    /// Value at every position of `batch` (its input tokens), `[b*t]`.
    /// Activations are kept for [`ValueModel::backward_values`].
    fn values(&mut self, be: &mut BackendBox, batch: &TokenBatch) -> Result<Vec<f32>, AlignError>;
    /// `grads += Σ_i dvalues[i] · ∂V_i/∂θ` for the last [`ValueModel::values`].
    fn backward_values(&mut self, be: &mut BackendBox, dvalues: &[f32]) -> Result<(), AlignError>;
    /// Every trainable parameter (model and head) for the optimizer.
    fn param_refs(&self) -> Vec<ParamRef>;
}

/// Where an episode's score comes from.
/// A programmatic score of a reply: `f(prompt_index, reply_text)`.
pub type ProgramScore<'f> = dyn Fn(usize, &str) -> f32 + 'f;

pub enum Scorer<'a> {
    /// A learned reward model: score of `prompt ++ response` (the full ids).
    Model(&'a mut dyn SequenceScorer),
    /// A programmatic reward (RL from verifiable rewards):
    /// `f(prompt_index, response_text)`.
    Program(&'a ProgramScore<'a>),
}

/// A model that scores whole token sequences (reads the last token).
pub trait SequenceScorer {
    fn score_sequences(
        &mut self,
        be: &mut BackendBox,
        seqs: &[Vec<u32>],
    ) -> Result<Vec<f32>, AlignError>;
}

/// A reward model is PPO's critic: its head read at every position.
impl ValueModel for RewardModel {
    fn values(&mut self, be: &mut BackendBox, batch: &TokenBatch) -> Result<Vec<f32>, AlignError> {
        RewardModel::values(self, be, batch)
    }
    fn backward_values(&mut self, be: &mut BackendBox, dvalues: &[f32]) -> Result<(), AlignError> {
        self.backward(be, dvalues)
    }
    fn param_refs(&self) -> Vec<ParamRef> {
        RewardModel::param_refs(self)
    }
}

impl SequenceScorer for RewardModel {
    fn score_sequences(
        &mut self,
        be: &mut BackendBox,
        seqs: &[Vec<u32>],
    ) -> Result<Vec<f32>, AlignError> {
        let views: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        let batch = TokenBatch::whole(&views, self.lm.pad_id()).map_err(AlignError::Input)?;
        self.scores(be, &batch)
    }
}

/// A batch of sampled responses with everything PPO / GRPO needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    /// Which prompt (index into the caller's prompt list) each row answers.
    pub prompt_index: Vec<usize>,
    pub prompts: Vec<Vec<u32>>,
    /// Sampled ids, the end token included when it was emitted.
    pub responses: Vec<Vec<u32>>,
    /// The response ended with the template's end token.
    pub has_eos: Vec<bool>,
    /// Decoded reply text (before the end token).
    pub texts: Vec<String>,
    /// Padded response length.
    pub cols: usize,
    /// Response tokens per row.
    pub lens: Vec<usize>,
    /// Policy log-probs of the sampled tokens at sampling time, `[rows*cols]`.
    pub logp: Vec<f32>,
    /// Reference log-probs, `[rows*cols]`.
    pub ref_logp: Vec<f32>,
    /// Entropy of the policy's next-token distribution, `[rows*cols]`.
    pub entropy: Vec<f32>,
    /// Critic values, `[rows*cols]` (empty without a value model).
    pub values: Vec<f32>,
    /// Episode scores (before any missing-end penalty), `[rows]`.
    pub scores: Vec<f32>,
}

impl Rollout {
    pub fn rows(&self) -> usize {
        self.lens.len()
    }

    pub fn layout(&self) -> ResponseLayout<'_> {
        ResponseLayout::new(self.cols, &self.lens)
    }

    /// The rows `idx`, in that order (a minibatch), re-padded to their own
    /// longest response.
    pub fn select(&self, idx: &[usize]) -> Rollout {
        let cols = idx.iter().map(|&i| self.lens[i]).max().unwrap_or(0);
        let per_token = |x: &[f32]| -> Vec<f32> {
            if x.is_empty() {
                return Vec::new();
            }
            let mut out = vec![0.0f32; idx.len() * cols];
            for (r, &i) in idx.iter().enumerate() {
                let l = self.lens[i];
                out[r * cols..r * cols + l].copy_from_slice(&x[i * self.cols..i * self.cols + l]);
            }
            out
        };
        let pick = |v: &Vec<usize>| idx.iter().map(|&i| v[i]).collect::<Vec<_>>();
        Rollout {
            prompt_index: pick(&self.prompt_index),
            prompts: idx.iter().map(|&i| self.prompts[i].clone()).collect(),
            responses: idx.iter().map(|&i| self.responses[i].clone()).collect(),
            has_eos: idx.iter().map(|&i| self.has_eos[i]).collect(),
            texts: idx.iter().map(|&i| self.texts[i].clone()).collect(),
            cols,
            lens: pick(&self.lens),
            logp: per_token(&self.logp),
            ref_logp: per_token(&self.ref_logp),
            entropy: per_token(&self.entropy),
            values: per_token(&self.values),
            scores: idx.iter().map(|&i| self.scores[i]).collect(),
        }
    }

    /// The model batch (`prompt ++ response`, only the response learned)
    /// whose targets are this rollout's response tokens.
    pub fn model_batch(&self, pad: u32) -> Result<TokenBatch, AlignError> {
        model_batch(&self.prompts, &self.responses, pad)
    }
}

/// `prompt ++ response` rows in the next-token layout, only the response
/// tokens being targets. Rows with an empty response are refused.
pub fn model_batch(
    prompts: &[Vec<u32>],
    responses: &[Vec<u32>],
    pad: u32,
) -> Result<TokenBatch, AlignError> {
    let seqs: Vec<(Vec<u32>, Vec<bool>)> = prompts
        .iter()
        .zip(responses)
        .map(|(p, r)| prompt_completion(p, r))
        .collect();
    let views: Vec<LmSequence<'_>> = seqs
        .iter()
        .map(|(ids, learn)| LmSequence { ids, learn })
        .collect();
    TokenBatch::next_token(&views, pad).map_err(AlignError::Input)
}

/// Copies the per-position numbers of `batch` (`[b*t]`) that predict
/// response tokens into the response layout `[rows*cols]`.
pub fn gather_responses(
    per_position: &[f32],
    batch: &TokenBatch,
    prompt_lens: &[usize],
    layout: ResponseLayout,
) -> Vec<f32> {
    assert_eq!(
        per_position.len(),
        batch.b * batch.t,
        "gather_responses: [b*t]"
    );
    let mut out = vec![0.0f32; layout.size()];
    for (i, (&p, &l)) in prompt_lens.iter().zip(layout.lens).enumerate() {
        let src = i * batch.t + p - 1;
        out[i * layout.cols..i * layout.cols + l].copy_from_slice(&per_position[src..src + l]);
    }
    out
}

/// The inverse of [`gather_responses`]: response-layout numbers (e.g.
/// gradients) placed at their model-batch positions, 0 elsewhere.
pub fn scatter_responses(
    per_token: &[f32],
    batch: &TokenBatch,
    prompt_lens: &[usize],
    layout: ResponseLayout,
) -> Vec<f32> {
    assert_eq!(
        per_token.len(),
        layout.size(),
        "scatter_responses: [rows*cols]"
    );
    let mut out = vec![0.0f32; batch.b * batch.t];
    for (i, (&p, &l)) in prompt_lens.iter().zip(layout.lens).enumerate() {
        let dst = i * batch.t + p - 1;
        out[dst..dst + l].copy_from_slice(&per_token[i * layout.cols..i * layout.cols + l]);
    }
    out
}

/// Checks that every prompt leaves room for `max_new_tokens` in the
/// context (the scorer reads `prompt ++ response` whole).
pub fn check_prompt_room(
    prompts: &[Vec<u32>],
    max_new_tokens: usize,
    max_seq_len: usize,
) -> Result<(), AlignError> {
    if max_new_tokens == 0 {
        return Err(AlignError::Config(
            "max_new_tokens must be at least 1".into(),
        ));
    }
    for (i, p) in prompts.iter().enumerate() {
        if p.is_empty() {
            return Err(AlignError::Input(format!("prompt {i} is empty")));
        }
        if p.len() + max_new_tokens > max_seq_len {
            return Err(AlignError::Config(format!(
                "prompt {i} has {} tokens; with max_new_tokens {max_new_tokens} it exceeds the \
                 model's context of {max_seq_len}; use shorter prompts or lower max_new_tokens",
                p.len()
            )));
        }
    }
    Ok(())
}

/// Log-probs and entropies of the response tokens under `policy`, in the
/// response layout. Leaves the policy's activations for a backward.
pub fn response_logprobs(
    be: &mut BackendBox,
    policy: &mut Policy,
    batch: &TokenBatch,
    prompt_lens: &[usize],
    layout: ResponseLayout,
    with_entropy: bool,
) -> Result<(Vec<f32>, Option<Vec<f32>>), AlignError> {
    let lp = policy.token_logprobs(be, batch)?;
    let entropy = if with_entropy {
        let h = policy.model.token_entropies(be)?;
        Some(gather_responses(&h, batch, prompt_lens, layout))
    } else {
        None
    };
    Ok((gather_responses(&lp, batch, prompt_lens, layout), entropy))
}

/// Samples one response per prompt (`prompt_index[i]` names the prompt of
/// row `i`, so a prompt may repeat, e.g. GRPO's groups) and measures it.
/// Row `i` is sampled with seed `opts.seed + i`; generation stops at the
/// policy template's end token.
#[allow(clippy::too_many_arguments)]
pub fn rollout(
    be: &mut BackendBox,
    policy: &mut Policy,
    reference: &mut Policy,
    value_model: Option<&mut dyn ValueModel>,
    scorer: &mut Scorer<'_>,
    prompts: &[Vec<u32>],
    prompt_index: &[usize],
    opts: &SampleOptions,
) -> Result<Rollout, AlignError> {
    let rows: Vec<Vec<u32>> = prompt_index.iter().map(|&i| prompts[i].clone()).collect();
    check_prompt_room(&rows, opts.max_new_tokens, policy.max_seq_len())?;
    let end = policy.template.end_id();
    let opts = SampleOptions {
        stop_token: Some(end),
        ..opts.clone()
    };
    let responses = policy.model.generate_batch(be, &rows, &opts)?;
    let has_eos: Vec<bool> = responses.iter().map(|r| r.last() == Some(&end)).collect();
    let texts: Vec<String> = responses
        .iter()
        .map(|r| policy.template.decode_reply(&policy.tokenizer, r).0)
        .collect();
    let lens: Vec<usize> = responses.iter().map(Vec::len).collect();
    let cols = lens.iter().copied().max().unwrap_or(0);
    let layout = ResponseLayout::new(cols, &lens);
    let prompt_lens: Vec<usize> = rows.iter().map(Vec::len).collect();
    let batch = model_batch(&rows, &responses, end)?;

    let (logp, entropy) = response_logprobs(be, policy, &batch, &prompt_lens, layout, true)?;
    let (ref_logp, _) = response_logprobs(be, reference, &batch, &prompt_lens, layout, false)?;
    let values = match value_model {
        Some(vm) => {
            let v = vm.values(be, &batch)?;
            gather_responses(&v, &batch, &prompt_lens, layout)
        }
        None => Vec::new(),
    };
    let scores = match scorer {
        Scorer::Model(m) => {
            let full: Vec<Vec<u32>> = rows
                .iter()
                .zip(&responses)
                .map(|(p, r)| p.iter().chain(r).copied().collect())
                .collect();
            m.score_sequences(be, &full)?
        }
        Scorer::Program(f) => {
            let f: &dyn Fn(usize, &str) -> f32 = *f;
            prompt_index
                .iter()
                .zip(&texts)
                .map(|(&i, t)| f(i, t))
                .collect()
        }
    };
    Ok(Rollout {
        prompt_index: prompt_index.to_vec(),
        prompts: rows,
        responses,
        has_eos,
        texts,
        cols,
        lens,
        logp,
        ref_logp,
        entropy: entropy.expect("requested"),
        values,
        scores,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_and_scatter_place_response_tokens() {
        // Row 0: prompt [1, 2] + response [3, 4, 5]; row 1: prompt [6, 7, 8] + [9].
        let prompts = vec![vec![1, 2], vec![6, 7, 8]];
        let responses = vec![vec![3, 4, 5], vec![9]];
        let batch = model_batch(&prompts, &responses, 0).unwrap();
        // Inputs ids[..n-1]: row 0 [1,2,3,4], row 1 [6,7,8,pad]; t = 4.
        assert_eq!(batch.t, 4);
        let targets_as_f32: Vec<f32> = batch
            .targets
            .iter()
            .map(|&y| {
                if y == crate::batch::IGNORE {
                    -1.0
                } else {
                    y as f32
                }
            })
            .collect();
        let lens = [3, 1];
        let layout = ResponseLayout::new(3, &lens);
        let got = gather_responses(&targets_as_f32, &batch, &[2, 3], layout);
        // Gathering the targets gives back the responses.
        assert_eq!(got, vec![3.0, 4.0, 5.0, 9.0, 0.0, 0.0]);
        let back = scatter_responses(&got, &batch, &[2, 3], layout);
        let want: Vec<f32> = targets_as_f32.iter().map(|&x| x.max(0.0)).collect();
        assert_eq!(back, want);
    }

    #[test]
    fn prompts_without_room_are_refused_naming_the_fix() {
        let e = check_prompt_room(&[vec![1; 5], vec![1; 30]], 4, 32).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("prompt 1") && msg.contains("max_new_tokens"),
            "{msg}"
        );
        assert!(check_prompt_room(&[vec![1; 28]], 4, 32).is_ok());
        assert!(check_prompt_room(&[vec![]], 4, 32).is_err());
    }
}
