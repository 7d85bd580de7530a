//! GRPO (DeepSeekMath, arXiv 2402.03300): no value model. Each prompt is
//! answered `group_size` times; a reply's advantage is its score relative to
//! its group (`(r - mean) / (std + 1e-4)`), given to every token of the
//! reply; the loss is PPO's clipped surrogate plus `beta` x the k3 KL to
//! the frozen reference, inside the loss. Scores come from a reward model
//! or from a program (RL from verifiable rewards).

use kiln_abi::BackendBox;
use kiln_model::{Precision, Rng};
use serde::{Deserialize, Serialize};

use crate::loss::ppo::{
    group_advantages, grpo_loss, penalise_missing_eos, GroupScale, GrpoAggregation, KlEstimator,
    ResponseLayout,
};
use crate::metrics::Record;
use crate::optim::{AlignOptimizer, OptimConfig};
use crate::policy::Policy;
use crate::ppo::{rollout_figures, rollout_seed, shuffle, Mean, PromptSampler, SamplingConfig};
use crate::rollout::{response_logprobs, rollout, scatter_responses, Scorer};
use crate::AlignError;

/// `grpo.toml`: every key optional.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpoConfig {
    pub seed: u64,
    pub iterations: u64,
    /// Prompts per rollout batch (each answered `group_size` times).
    pub batch_prompts: usize,
    pub group_size: usize,
    /// Replies per optimizer step.
    pub minibatch_size: usize,
    /// Passes over each rollout batch (1 = one update per sample).
    pub epochs: usize,
    pub sampling: SamplingConfig,
    /// Weight of the k3 KL to the reference inside the loss.
    pub beta: f32,
    pub clip_eps: f32,
    pub scale: GroupScale,
    pub aggregation: GrpoAggregation,
    pub missing_eos_penalty: Option<f32>,
    pub lr: f32,
    pub warmup: u64,
    pub grad_clip: Option<f32>,
    pub weight_decay: f32,
    /// Precision policy: "f32", "bf16" or "f16" (16-bit weights, activations and
    /// gradients; f32 master weights and AdamW moments; f16 adds a dynamic
    /// loss scale).
    #[serde(skip_serializing_if = "crate::precision::is_f32")]
    pub precision: String,
}

impl Default for GrpoConfig {
    fn default() -> Self {
        GrpoConfig {
            precision: crate::precision::default_precision(),
            seed: 0,
            iterations: 20,
            batch_prompts: 4,
            group_size: 4,
            minibatch_size: 8,
            epochs: 1,
            sampling: SamplingConfig::default(),
            beta: 0.04,
            clip_eps: 0.2,
            scale: GroupScale::Group,
            aggregation: GrpoAggregation::SequenceMean,
            missing_eos_penalty: Some(1.0),
            lr: 1e-5,
            warmup: 0,
            grad_clip: Some(1.0),
            weight_decay: 0.0,
        }
    }
}

impl GrpoConfig {
    pub fn validate(&self) -> Result<(), AlignError> {
        crate::precision::parse_precision(&self.precision)?;
        let bad = |m: String| Err(AlignError::Config(m));
        self.sampling.validate()?;
        if self.batch_prompts == 0 || self.minibatch_size == 0 || self.epochs == 0 {
            return bad("batch_prompts, minibatch_size and epochs must be at least 1".into());
        }
        if self.group_size < 2 {
            return bad(format!(
                "group_size must be at least 2 (advantages are relative to the group), got {}",
                self.group_size
            ));
        }
        if !(self.beta.is_finite() && self.beta >= 0.0) {
            return bad(format!("beta must be >= 0, got {}", self.beta));
        }
        if !(self.clip_eps.is_finite() && self.clip_eps > 0.0) {
            return bad(format!("clip_eps must be positive, got {}", self.clip_eps));
        }
        Ok(())
    }

    fn optim(&self) -> OptimConfig {
        OptimConfig {
            lr: self.lr,
            min_lr: self.lr,
            warmup: self.warmup,
            weight_decay: self.weight_decay,
            grad_clip: self.grad_clip,
            ..OptimConfig::default()
        }
    }
}

/// Trains `policy` with GRPO on `prompts` (encoded, each ending with
/// `<|assistant|>`); `on_record` receives each iteration's metrics.
pub fn train_grpo(
    be: &mut BackendBox,
    policy: &mut Policy,
    reference: &mut Policy,
    mut scorer: Scorer<'_>,
    prompts: &[Vec<u32>],
    cfg: &GrpoConfig,
    mut on_record: impl FnMut(&Record) -> Result<(), AlignError>,
) -> Result<Vec<Record>, AlignError> {
    cfg.validate()?;
    if prompts.is_empty() {
        return Err(AlignError::Input("GRPO needs at least one prompt".into()));
    }
    let pad = policy.pad_id();
    let rows_per_iter = cfg.batch_prompts * cfg.group_size;
    let total = cfg.iterations * (cfg.epochs * rows_per_iter.div_ceil(cfg.minibatch_size)) as u64;
    crate::precision::apply_precision(be, &mut policy.model, &cfg.precision)?;
    let mut opt = AlignOptimizer::new(be, policy.param_refs(), &cfg.optim(), total)?
        .scale_losses_for(policy.model.precision());
    // f16: updates skipped for overflowing gradients, so far.
    let mut overflows = 0u64;
    let mut sampler = PromptSampler::new(prompts.len(), cfg.seed);
    let mut shuffle_rng = Rng::new(cfg.seed ^ 0x6E90);
    let mut records = Vec::new();

    for it in 0..cfg.iterations {
        let chosen = sampler.next_batch(cfg.batch_prompts);
        // Each prompt's group sits in consecutive rows.
        let idx: Vec<usize> = chosen
            .iter()
            .flat_map(|&p| std::iter::repeat_n(p, cfg.group_size))
            .collect();
        let opts = cfg.sampling.options(rollout_seed(cfg.seed, it));
        let ro = rollout(
            be,
            policy,
            reference,
            None,
            &mut scorer,
            prompts,
            &idx,
            &opts,
        )?;
        let layout = ro.layout();
        let scores = match cfg.missing_eos_penalty {
            Some(p) => penalise_missing_eos(&ro.scores, &ro.has_eos, p),
            None => ro.scores.clone(),
        };
        let adv = group_advantages(&scores, cfg.group_size, cfg.scale);
        let zero_std_groups = scores
            .chunks(cfg.group_size)
            .filter(|g| g.iter().all(|&s| s == g[0]))
            .count();

        let (mut loss_m, mut clip_m, mut kl_m) =
            (Mean::default(), Mean::default(), Mean::default());
        let mut rows: Vec<usize> = (0..ro.rows()).collect();
        for _epoch in 0..cfg.epochs {
            shuffle(&mut rows, &mut shuffle_rng);
            for mb in rows.chunks(cfg.minibatch_size) {
                let sub = ro.select(mb);
                let sub_layout = sub.layout();
                let sub_adv: Vec<f32> = mb.iter().map(|&i| adv[i]).collect();
                let batch = sub.model_batch(pad)?;
                let prompt_lens: Vec<usize> = sub.prompts.iter().map(Vec::len).collect();
                let (new_logp, _) =
                    response_logprobs(be, policy, &batch, &prompt_lens, sub_layout, false)?;
                let g = grpo_loss(
                    &new_logp,
                    &sub.logp,
                    &sub.ref_logp,
                    &sub_adv,
                    sub_layout,
                    cfg.clip_eps,
                    cfg.beta,
                    cfg.aggregation,
                );
                opt.zero_grad(be)?;
                let ls = opt.loss_scale();
                let grad: Vec<f32> = g.grad.iter().map(|d| d * ls).collect();
                policy.backward_logprobs(
                    be,
                    &scatter_responses(&grad, &batch, &prompt_lens, sub_layout),
                )?;
                if opt.step(be, g.loss)?.overflowed {
                    overflows += 1;
                }
                loss_m.add(g.loss);
                clip_m.add(g.clip_frac);
                kl_m.add(g.kl);
            }
        }

        let kl_k3 = k3_per_token(&ro.logp, &ro.ref_logp, layout);
        let mut rec = rollout_figures(&ro, &kl_k3);
        rec.step = it + 1;
        let n = scores.len() as f64;
        let mean = scores.iter().map(|&s| s as f64).sum::<f64>() / n;
        let std = (scores
            .iter()
            .map(|&s| (s as f64 - mean).powi(2))
            .sum::<f64>()
            / n)
            .sqrt();
        let f16 = policy.model.precision() == Precision::F16;
        let rec = rec
            .with_optional("loss_scale", f16.then(|| f64::from(opt.loss_scale())))
            .with_optional("overflows", f16.then_some(overflows as f64))
            .with("reward_std", std)
            .with(
                "frac_reward_zero_std",
                zero_std_groups as f64 / cfg.batch_prompts as f64,
            )
            .with("policy_loss", loss_m.get())
            .with("clip_frac", clip_m.get())
            .with("kl_token", kl_m.get())
            .with("lr", opt.next_lr() as f64);
        on_record(&rec)?;
        records.push(rec);
    }
    opt.release(be)?;
    Ok(records)
}

fn k3_per_token(logp: &[f32], ref_logp: &[f32], layout: ResponseLayout) -> Vec<f32> {
    let mut out = vec![0.0f32; layout.size()];
    for k in layout.valid_indices() {
        out[k] = KlEstimator::K3.per_token(logp[k], ref_logp[k]);
    }
    out
}
