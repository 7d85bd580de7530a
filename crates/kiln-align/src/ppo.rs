//! PPO for RLHF (Ziegler et al. 2019; InstructGPT; TRL's PPO trainer):
//! a policy, a value model (initialised from the reward model), a frozen
//! reference, and a score per episode (a reward model or a program).
//!
//! One iteration: roll out a batch of prompts (see [`crate::rollout`]),
//! shape per-token rewards (score at the last response token minus
//! beta x KL at every token), GAE advantages (whitened) and returns, then
//! several PPO epochs over shuffled minibatches, each one AdamW step on the
//! policy (clipped surrogate) and on the value model (clipped value loss).
//! Every figure of the iteration goes into one metrics record.

use kiln_abi::BackendBox;
use kiln_model::{Precision, Rng, SampleOptions};
use serde::{Deserialize, Serialize};

use crate::loss::ppo::{
    clipped_policy_loss, clipped_value_loss, gae, masked_mean, masked_whiten, penalise_missing_eos,
    row_sums, token_rewards, KlControl, KlController, KlEstimator, ResponseLayout,
};
use crate::metrics::{Record, TRAIN};
use crate::optim::{AlignOptimizer, OptimConfig};
use crate::policy::Policy;
use crate::rollout::{
    gather_responses, response_logprobs, rollout, scatter_responses, ProgramScore, Rollout, Scorer,
    ValueModel,
};
use crate::AlignError;

/// Sampling settings shared by PPO and GRPO rollouts (the same sampler as
/// `kiln generate`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingConfig {
    /// Short replies keep rollouts (the dominant cost) cheap.
    pub max_new_tokens: usize,
    /// 1.0 samples from the policy itself: the log-probs PPO trains on are
    /// those of the untempered policy, so another temperature makes the
    /// rollouts slightly off-policy.
    pub temperature: f32,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            max_new_tokens: 24,
            temperature: 1.0,
            top_k: None,
            top_p: None,
        }
    }
}

impl SamplingConfig {
    pub fn options(&self, seed: u64) -> SampleOptions {
        SampleOptions {
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            seed,
            stop_token: None,
        }
    }

    pub fn validate(&self) -> Result<(), AlignError> {
        if self.max_new_tokens == 0 {
            return Err(AlignError::Config(
                "max_new_tokens must be at least 1".into(),
            ));
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(AlignError::Config(format!(
                "temperature must be positive for on-policy sampling, got {}",
                self.temperature
            )));
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(AlignError::Config(format!(
                    "top_p must be in (0, 1], got {p}"
                )));
            }
        }
        Ok(())
    }
}

/// `ppo.toml`: every key optional.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PpoConfig {
    pub seed: u64,
    /// Rollout batches (each followed by `ppo_epochs` passes over it).
    pub iterations: u64,
    /// Prompts (episodes) per rollout batch.
    pub batch_size: usize,
    pub minibatch_size: usize,
    pub ppo_epochs: usize,
    pub sampling: SamplingConfig,
    /// KL coefficient: fixed, or adaptive when `kl_target` is set
    /// (Ziegler et al.: `init = kl_coef`, horizon `kl_horizon` episodes).
    pub kl_coef: f64,
    pub kl_target: Option<f64>,
    pub kl_horizon: f64,
    pub kl_estimator: KlEstimator,
    pub gamma: f32,
    /// GAE lambda of the policy's advantages.
    pub lambda: f32,
    /// GAE lambda of the value targets (None: `lambda`). 1.0 regresses the
    /// value on the episode's return itself, unbiased by the value model's
    /// own errors (VC-PPO, Yuan et al. 2025: decoupled GAE).
    pub value_lambda: Option<f32>,
    /// Rollout batches that train only the value model before PPO starts
    /// (the policy is frozen): a value head initialised from the reward
    /// model scores whole replies, not prefixes, and its errors would
    /// otherwise bias the first advantages (VC-PPO's value pretraining).
    pub value_warmup: u64,
    pub clip_eps: f32,
    pub clip_value: f32,
    pub vf_coef: f32,
    /// Subtracted from the score of a reply that never emitted the end
    /// token (None: no penalty).
    pub missing_eos_penalty: Option<f32>,
    /// Whiten the per-token rewards (mean kept) before GAE.
    pub whiten_rewards: bool,
    /// Policy learning rate (AdamW, constant after `warmup`).
    pub lr: f32,
    pub value_lr: f32,
    pub warmup: u64,
    pub grad_clip: Option<f32>,
    pub weight_decay: f32,
    /// The policy's precision: "f32", "bf16" or "f16" (16-bit weights, activations
    /// and gradients; f32 master weights and AdamW moments). The value
    /// model trains in f32.
    #[serde(skip_serializing_if = "crate::precision::is_f32")]
    pub precision: String,
}

impl Default for PpoConfig {
    fn default() -> Self {
        PpoConfig {
            precision: crate::precision::default_precision(),
            seed: 0,
            iterations: 20,
            batch_size: 16,
            minibatch_size: 8,
            ppo_epochs: 2,
            sampling: SamplingConfig::default(),
            kl_coef: 0.05,
            kl_target: None,
            kl_horizon: 10000.0,
            kl_estimator: KlEstimator::K1,
            gamma: 1.0,
            lambda: 0.95,
            value_lambda: None,
            value_warmup: 0,
            clip_eps: 0.2,
            clip_value: 0.2,
            vf_coef: 0.1,
            missing_eos_penalty: Some(1.0),
            whiten_rewards: false,
            lr: 1e-5,
            value_lr: 1e-4,
            warmup: 0,
            grad_clip: Some(1.0),
            weight_decay: 0.0,
        }
    }
}

impl PpoConfig {
    pub fn validate(&self) -> Result<(), AlignError> {
        crate::precision::parse_precision(&self.precision)?;
        let bad = |m: String| Err(AlignError::Config(m));
        self.sampling.validate()?;
        if self.batch_size == 0 || self.minibatch_size == 0 || self.ppo_epochs == 0 {
            return bad("batch_size, minibatch_size and ppo_epochs must be at least 1".into());
        }
        if self.minibatch_size > self.batch_size {
            return bad(format!(
                "minibatch_size ({}) exceeds batch_size ({})",
                self.minibatch_size, self.batch_size
            ));
        }
        if !(self.kl_coef.is_finite() && self.kl_coef >= 0.0) {
            return bad(format!("kl_coef must be >= 0, got {}", self.kl_coef));
        }
        if let Some(t) = self.kl_target {
            if !(t.is_finite() && t > 0.0 && self.kl_horizon > 0.0) {
                return bad(format!(
                    "kl_target ({t}) and kl_horizon ({}) must be positive",
                    self.kl_horizon
                ));
            }
        }
        let value_lambda = self.value_lambda.unwrap_or(self.lambda);
        for (name, v) in [
            ("gamma", self.gamma),
            ("lambda", self.lambda),
            ("value_lambda", value_lambda),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return bad(format!("{name} must be in [0, 1], got {v}"));
            }
        }
        for (name, v) in [
            ("clip_eps", self.clip_eps),
            ("clip_value", self.clip_value),
            ("vf_coef", self.vf_coef),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return bad(format!("{name} must be positive, got {v}"));
            }
        }
        Ok(())
    }

    pub fn kl_control(&self) -> KlControl {
        match self.kl_target {
            Some(target) => KlControl::Adaptive {
                init_coef: self.kl_coef,
                target,
                horizon: self.kl_horizon,
            },
            None => KlControl::Fixed { coef: self.kl_coef },
        }
    }

    pub(crate) fn optim(&self, lr: f32) -> OptimConfig {
        OptimConfig {
            lr,
            min_lr: lr,
            warmup: self.warmup,
            weight_decay: self.weight_decay,
            grad_clip: self.grad_clip,
            ..OptimConfig::default()
        }
    }
}

/// Deals prompt indices in batches, reshuffling after each pass over the
/// prompt set (deterministic from the seed).
pub struct PromptSampler {
    order: Vec<usize>,
    pos: usize,
    rng: Rng,
}

impl PromptSampler {
    pub fn new(n_prompts: usize, seed: u64) -> Self {
        let mut s = PromptSampler {
            order: (0..n_prompts).collect(),
            pos: 0,
            rng: Rng::new(seed ^ 0x005E_ED0F_9207),
        };
        shuffle(&mut s.order, &mut s.rng);
        s
    }

    pub fn next_batch(&mut self, n: usize) -> Vec<usize> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n && !self.order.is_empty() {
            if self.pos == self.order.len() {
                shuffle(&mut self.order, &mut self.rng);
                self.pos = 0;
            }
            out.push(self.order[self.pos]);
            self.pos += 1;
        }
        out
    }
}

/// Fisher-Yates with the model crate's RNG.
pub fn shuffle(v: &mut [usize], rng: &mut Rng) {
    for i in (1..v.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

/// The seed of iteration `k`'s rollout (distinct streams per iteration).
pub fn rollout_seed(seed: u64, iteration: u64) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(iteration.wrapping_mul(1_000_003))
}

/// `x` (`[rows*cols]` in `from`'s layout) restricted to rows `idx`, padded
/// to `cols`.
pub fn select_tokens(x: &[f32], from: ResponseLayout, idx: &[usize], cols: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; idx.len() * cols];
    for (r, &i) in idx.iter().enumerate() {
        let l = from.lens[i];
        out[r * cols..r * cols + l].copy_from_slice(&x[i * from.cols..i * from.cols + l]);
    }
    out
}

/// Running means of the per-minibatch figures of one iteration.
#[derive(Default)]
pub(crate) struct Mean {
    sum: f64,
    n: u64,
}

impl Mean {
    pub(crate) fn add(&mut self, x: f32) {
        self.sum += x as f64;
        self.n += 1;
    }
    pub(crate) fn get(&self) -> f64 {
        if self.n == 0 {
            f64::NAN
        } else {
            self.sum / self.n as f64
        }
    }
}

/// Figures of the rollout half of an iteration (shared with GRPO).
pub(crate) fn rollout_figures(ro: &Rollout, kl_per_token: &[f32]) -> Record {
    let layout = ro.layout();
    let n = ro.rows().max(1) as f64;
    let kl_seq = row_sums(kl_per_token, layout);
    let mean = |x: &[f32]| x.iter().map(|&v| v as f64).sum::<f64>() / n;
    Record::new(0, TRAIN)
        .with("reward", mean(&ro.scores))
        .with("kl", mean(&kl_seq))
        .with("entropy", masked_mean(&ro.entropy, layout) as f64)
        .with("response_len", ro.lens.iter().sum::<usize>() as f64 / n)
        .with(
            "eos_frac",
            ro.has_eos.iter().filter(|&&e| e).count() as f64 / n,
        )
}

/// The models and data one PPO run works on.
pub struct PpoModels<'a> {
    pub policy: &'a mut Policy,
    pub reference: &'a mut Policy,
    pub value: &'a mut dyn ValueModel,
    pub scorer: Scorer<'a>,
    /// A score PPO does not optimise but logs as `gold_score` per
    /// iteration, `f(prompt_index, reply_text)`: with a programmatic judge
    /// it shows when the reward model stops agreeing with it (reward
    /// over-optimisation, Gao et al. 2022).
    pub gold: Option<&'a ProgramScore<'a>>,
}

/// Trains `models.policy` (and the value model) with PPO on `prompts`
/// (encoded, each ending with `<|assistant|>`); `on_record` receives each
/// iteration's metrics (step = iteration, 1-based; the `value_warmup`
/// iterations come first, marked `value_warmup = 1`). Returns the records.
pub fn train_ppo(
    be: &mut BackendBox,
    models: PpoModels<'_>,
    prompts: &[Vec<u32>],
    cfg: &PpoConfig,
    mut on_record: impl FnMut(&Record) -> Result<(), AlignError>,
) -> Result<Vec<Record>, AlignError> {
    cfg.validate()?;
    if prompts.is_empty() {
        return Err(AlignError::Input("PPO needs at least one prompt".into()));
    }
    let PpoModels {
        policy,
        reference,
        value,
        mut scorer,
        gold,
    } = models;
    let pad = policy.pad_id();
    let steps_per_iter = (cfg.ppo_epochs * cfg.batch_size.div_ceil(cfg.minibatch_size)) as u64;
    let total = cfg.iterations * steps_per_iter;
    let value_total = (cfg.value_warmup + cfg.iterations) * steps_per_iter;
    crate::precision::apply_precision(be, &mut policy.model, &cfg.precision)?;
    let mut policy_opt = AlignOptimizer::new(be, policy.param_refs(), &cfg.optim(cfg.lr), total)?
        .scale_losses_for(policy.model.precision());
    let mut value_opt = AlignOptimizer::new(
        be,
        value.param_refs(),
        &cfg.optim(cfg.value_lr),
        value_total,
    )?;
    let mut kl_ctl = KlController::new(cfg.kl_control());
    let mut sampler = PromptSampler::new(prompts.len(), cfg.seed);
    let mut shuffle_rng = Rng::new(cfg.seed ^ 0x00A1_1CE5);
    let mut records = Vec::new();

    // f16: policy updates skipped for overflowing gradients, so far.
    let mut policy_overflows = 0u64;
    for it in 0..cfg.value_warmup + cfg.iterations {
        let warming = it < cfg.value_warmup;
        let idx = sampler.next_batch(cfg.batch_size);
        let opts = cfg.sampling.options(rollout_seed(cfg.seed, it));
        let ro = rollout(
            be,
            policy,
            reference,
            Some(&mut *value),
            &mut scorer,
            prompts,
            &idx,
            &opts,
        )?;
        let layout = ro.layout();
        let beta = kl_ctl.coef() as f32;
        let scores = match cfg.missing_eos_penalty {
            Some(p) => penalise_missing_eos(&ro.scores, &ro.has_eos, p),
            None => ro.scores.clone(),
        };
        let shaped = token_rewards(
            &scores,
            &ro.logp,
            &ro.ref_logp,
            layout,
            beta,
            cfg.kl_estimator,
        );
        let rewards = if cfg.whiten_rewards {
            masked_whiten(&shaped.rewards, layout, false)
        } else {
            shaped.rewards.clone()
        };
        let (adv, mut returns) = gae(&rewards, &ro.values, layout, cfg.gamma, cfg.lambda);
        if let Some(vl) = cfg.value_lambda.filter(|&vl| vl != cfg.lambda) {
            returns = gae(&rewards, &ro.values, layout, cfg.gamma, vl).1;
        }
        let adv = masked_whiten(&adv, layout, true);

        let (mut pg, mut vf, mut clip, mut vclip, mut akl, mut ratio) = (
            Mean::default(),
            Mean::default(),
            Mean::default(),
            Mean::default(),
            Mean::default(),
            Mean::default(),
        );
        let mut rows: Vec<usize> = (0..ro.rows()).collect();
        for _epoch in 0..cfg.ppo_epochs {
            shuffle(&mut rows, &mut shuffle_rng);
            for mb in rows.chunks(cfg.minibatch_size) {
                let sub = ro.select(mb);
                let sub_layout = sub.layout();
                let sub_adv = select_tokens(&adv, layout, mb, sub.cols);
                let sub_ret = select_tokens(&returns, layout, mb, sub.cols);
                let batch = sub.model_batch(pad)?;
                let prompt_lens: Vec<usize> = sub.prompts.iter().map(Vec::len).collect();

                if !warming {
                    let (new_logp, _) =
                        response_logprobs(be, policy, &batch, &prompt_lens, sub_layout, false)?;
                    let pl = clipped_policy_loss(
                        &new_logp,
                        &sub.logp,
                        &sub_adv,
                        sub_layout,
                        cfg.clip_eps,
                    );
                    policy_opt.zero_grad(be)?;
                    let ls = policy_opt.loss_scale();
                    let g: Vec<f32> = pl.grad.iter().map(|g| g * ls).collect();
                    policy.backward_logprobs(
                        be,
                        &scatter_responses(&g, &batch, &prompt_lens, sub_layout),
                    )?;
                    if policy_opt.step(be, pl.loss)?.overflowed {
                        policy_overflows += 1;
                    }
                    pg.add(pl.loss);
                    clip.add(pl.clip_frac);
                    akl.add(pl.approx_kl);
                    ratio.add(pl.ratio_mean);
                }

                let v_all = value.values(be, &batch)?;
                let new_v = gather_responses(&v_all, &batch, &prompt_lens, sub_layout);
                let vl =
                    clipped_value_loss(&new_v, &sub.values, &sub_ret, sub_layout, cfg.clip_value);
                let dv: Vec<f32> = vl.grad.iter().map(|g| g * cfg.vf_coef).collect();
                value_opt.zero_grad(be)?;
                value.backward_values(
                    be,
                    &scatter_responses(&dv, &batch, &prompt_lens, sub_layout),
                )?;
                value_opt.step(be, vl.loss * cfg.vf_coef)?;

                vf.add(vl.loss);
                vclip.add(vl.clip_frac);
            }
        }

        let mut rec = rollout_figures(&ro, &shaped.kl);
        rec.step = it + 1;
        let kl_mean = rec.get("kl").unwrap_or(0.0);
        let mut rec = rec
            .with("rlhf_reward", {
                let s: f64 = scores.iter().map(|&v| v as f64).sum::<f64>() / ro.rows() as f64;
                s - beta as f64 * kl_mean
            })
            .with("value_loss", vf.get())
            .with("vf_clip_frac", vclip.get())
            .with("kl_coef", beta as f64)
            .with("value_warmup", f64::from(u8::from(warming)))
            .with_optional(
                "loss_scale",
                (policy.model.precision() == Precision::F16)
                    .then(|| f64::from(policy_opt.loss_scale())),
            )
            .with_optional(
                "policy_overflows",
                (policy.model.precision() == Precision::F16).then_some(policy_overflows as f64),
            );
        if let Some(gold) = gold {
            let total: f64 = (ro.prompt_index.iter().zip(&ro.texts))
                .map(|(&i, text)| gold(i, text) as f64)
                .sum();
            rec = rec.with("gold_score", total / ro.rows().max(1) as f64);
        }
        if !warming {
            // Policy figures only where the policy was trained.
            rec = rec
                .with("policy_loss", pg.get())
                .with("clip_frac", clip.get())
                .with("approx_kl", akl.get())
                .with("ratio", ratio.get())
                .with("lr", policy_opt.next_lr() as f64);
        }
        if !warming {
            kl_ctl.update(kl_mean, ro.rows() as u64);
        }
        on_record(&rec)?;
        records.push(rec);
    }
    policy_opt.release(be)?;
    value_opt.release(be)?;
    Ok(records)
}
