//! PPO (RLHF) and GRPO objectives over per-token numbers, no model inside.
//!
//! Every per-token array is a right-padded `[rows, cols]` batch in row-major
//! order, described by a [`ResponseLayout`]: row `i` holds `lens[i]` response
//! tokens followed by padding. Padding slots are ignored on input and set to
//! zero on output. Losses return their value together with the gradient with
//! respect to the per-token log-probs (or values) the trainer feeds back into
//! the model.
//!
//! Conventions follow TRL's PPO trainer / "The N+ implementation details of
//! RLHF with PPO" (per-token KL reward, GAE, masked whitening, clipped policy
//! and value losses) and DeepSeekMath's GRPO (group-normalised advantages and
//! a k3 KL term inside the loss); one deliberate difference is noted at
//! [`token_rewards`].

use serde::{Deserialize, Serialize};

/// Which response tokens of a right-padded `[rows, cols]` batch are real.
#[derive(Clone, Copy, Debug)]
pub struct ResponseLayout<'a> {
    /// Padded response length (columns).
    pub cols: usize,
    /// Real tokens per row (each <= cols); one entry per row.
    pub lens: &'a [usize],
}

impl<'a> ResponseLayout<'a> {
    pub fn new(cols: usize, lens: &'a [usize]) -> Self {
        assert!(
            lens.iter().all(|&l| l <= cols),
            "ResponseLayout: a response length exceeds the padded length {cols}: {lens:?}"
        );
        ResponseLayout { cols, lens }
    }

    pub fn rows(&self) -> usize {
        self.lens.len()
    }

    /// Number of flat entries, rows * cols.
    pub fn size(&self) -> usize {
        self.rows() * self.cols
    }

    /// Number of real tokens.
    pub fn count(&self) -> usize {
        self.lens.iter().sum()
    }

    /// Flat indices of the real tokens, row by row.
    pub fn valid_indices(&self) -> impl Iterator<Item = usize> + '_ {
        self.lens
            .iter()
            .enumerate()
            .flat_map(move |(i, &l)| (0..l).map(move |t| i * self.cols + t))
    }

    fn check(&self, name: &str, x: &[f32]) {
        assert_eq!(
            x.len(),
            self.size(),
            "{name}: {} values for a [{} x {}] batch",
            x.len(),
            self.rows(),
            self.cols
        );
    }
}

/// Mean of `x` over the real tokens (0 when there are none).
pub fn masked_mean(x: &[f32], layout: ResponseLayout) -> f32 {
    layout.check("masked_mean", x);
    let n = layout.count();
    if n == 0 {
        return 0.0;
    }
    let s: f64 = layout.valid_indices().map(|k| x[k] as f64).sum();
    (s / n as f64) as f32
}

/// Per-row sums of `x` over the real tokens.
pub fn row_sums(x: &[f32], layout: ResponseLayout) -> Vec<f32> {
    layout.check("row_sums", x);
    layout
        .lens
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            x[i * layout.cols..i * layout.cols + l]
                .iter()
                .map(|&v| v as f64)
                .sum::<f64>() as f32
        })
        .collect()
}

/// Whitening over the real tokens: `(x - mean) / sqrt(var + 1e-8)` with the
/// unbiased (Bessel) variance, as TRL's `masked_whiten`. With
/// `shift_mean = false` the mean is added back (reward whitening). Fewer than
/// two real tokens carry no spread: the result is `x - mean` (or `x`).
pub fn masked_whiten(x: &[f32], layout: ResponseLayout, shift_mean: bool) -> Vec<f32> {
    layout.check("masked_whiten", x);
    let n = layout.count();
    let mut out = vec![0.0f32; x.len()];
    if n == 0 {
        return out;
    }
    let mean = layout.valid_indices().map(|k| x[k] as f64).sum::<f64>() / n as f64;
    let scale = if n >= 2 {
        let var = layout
            .valid_indices()
            .map(|k| (x[k] as f64 - mean).powi(2))
            .sum::<f64>()
            / (n - 1) as f64;
        1.0 / (var + 1e-8).sqrt()
    } else {
        1.0
    };
    let back = if shift_mean { 0.0 } else { mean };
    for k in layout.valid_indices() {
        out[k] = ((x[k] as f64 - mean) * scale + back) as f32;
    }
    out
}

/// How the per-token KL to the reference is estimated from one sample
/// (Schulman, "Approximating KL divergence"): with `d = logp_ref - logp`,
/// k1 = -d (unbiased, can be negative), k3 = e^d - 1 - d (unbiased, >= 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KlEstimator {
    K1,
    K3,
}

impl KlEstimator {
    pub fn per_token(self, logp: f32, ref_logp: f32) -> f32 {
        let d = (ref_logp - logp) as f64;
        (match self {
            KlEstimator::K1 => -d,
            KlEstimator::K3 => d.exp_m1() - d,
        }) as f32
    }

    /// d(per_token)/d(logp).
    pub fn grad(self, logp: f32, ref_logp: f32) -> f32 {
        let d = (ref_logp - logp) as f64;
        (match self {
            KlEstimator::K1 => 1.0,
            KlEstimator::K3 => -d.exp_m1(),
        }) as f32
    }
}

/// The KL coefficient beta: fixed, or adapted towards a target KL (Ziegler et
/// al. 2019): `e = clip(KL / target - 1, -0.2, 0.2)`,
/// `beta <- beta * (1 + e * n_steps / horizon)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum KlControl {
    Fixed {
        coef: f64,
    },
    Adaptive {
        init_coef: f64,
        target: f64,
        horizon: f64,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct KlController {
    control: KlControl,
    coef: f64,
}

impl KlController {
    pub fn new(control: KlControl) -> Self {
        let coef = match control {
            KlControl::Fixed { coef } => coef,
            KlControl::Adaptive { init_coef, .. } => init_coef,
        };
        KlController { control, coef }
    }

    /// The current beta.
    pub fn coef(&self) -> f64 {
        self.coef
    }

    /// Feeds the KL measured on the last rollout batch (summed over a
    /// response, averaged over the batch) and the number of episodes it held.
    pub fn update(&mut self, current_kl: f64, n_steps: u64) {
        if let KlControl::Adaptive {
            target, horizon, ..
        } = self.control
        {
            let err = (current_kl / target - 1.0).clamp(-0.2, 0.2);
            self.coef *= 1.0 + err * n_steps as f64 / horizon;
        }
    }
}

/// Scores after the "EOS trick": responses that never emitted the end token
/// lose `penalty` (TRL's `missing_eos_penalty`).
pub fn penalise_missing_eos(scores: &[f32], has_eos: &[bool], penalty: f32) -> Vec<f32> {
    assert_eq!(scores.len(), has_eos.len(), "penalise_missing_eos: lengths");
    scores
        .iter()
        .zip(has_eos)
        .map(|(&s, &eos)| if eos { s } else { s - penalty })
        .collect()
}

/// Per-token rewards and KL of a rollout batch.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenRewards {
    /// `-beta * kl_t` at every real token, plus the score at the row's last
    /// real token; 0 on padding.
    pub rewards: Vec<f32>,
    /// The per-token KL estimate (0 on padding).
    pub kl: Vec<f32>,
}

/// `r_t = -beta * kl_t`, and the sequence score is added at the last real
/// response token: the end token when the response has one. (TRL puts it on
/// the first padding slot after the end token, a known quirk of its port,
/// huggingface/trl#3750; the score belongs to the action that ended the
/// episode.) An empty response has no token to carry its score.
pub fn token_rewards(
    scores: &[f32],
    logp: &[f32],
    ref_logp: &[f32],
    layout: ResponseLayout,
    kl_coef: f32,
    estimator: KlEstimator,
) -> TokenRewards {
    layout.check("token_rewards logp", logp);
    layout.check("token_rewards ref_logp", ref_logp);
    assert_eq!(
        scores.len(),
        layout.rows(),
        "token_rewards: one score per row"
    );
    let mut rewards = vec![0.0f32; layout.size()];
    let mut kl = vec![0.0f32; layout.size()];
    for k in layout.valid_indices() {
        kl[k] = estimator.per_token(logp[k], ref_logp[k]);
        rewards[k] = -kl_coef * kl[k];
    }
    for (i, &l) in layout.lens.iter().enumerate() {
        if l > 0 {
            rewards[i * layout.cols + l - 1] += scores[i];
        }
    }
    TokenRewards { rewards, kl }
}

/// Generalised advantage estimation per row, backwards over the real tokens
/// with V = 0 after the last one:
/// `delta_t = r_t + gamma V_{t+1} - V_t`, `A_t = delta_t + gamma lambda A_{t+1}`,
/// `returns_t = A_t + V_t`. Returns (advantages, returns), 0 on padding.
pub fn gae(
    rewards: &[f32],
    values: &[f32],
    layout: ResponseLayout,
    gamma: f32,
    lambda: f32,
) -> (Vec<f32>, Vec<f32>) {
    layout.check("gae rewards", rewards);
    layout.check("gae values", values);
    let mut adv = vec![0.0f32; layout.size()];
    let mut ret = vec![0.0f32; layout.size()];
    let (gamma, lambda) = (gamma as f64, lambda as f64);
    for (i, &l) in layout.lens.iter().enumerate() {
        let base = i * layout.cols;
        let (mut next_v, mut next_a) = (0.0f64, 0.0f64);
        for t in (0..l).rev() {
            let v = values[base + t] as f64;
            let delta = rewards[base + t] as f64 + gamma * next_v - v;
            let a = delta + gamma * lambda * next_a;
            adv[base + t] = a as f32;
            ret[base + t] = (a + v) as f32;
            next_v = v;
            next_a = a;
        }
    }
    (adv, ret)
}

/// The clipped surrogate, its gradient and diagnostics.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyLoss {
    /// Mean over real tokens of `max(-A rho, -A clip(rho, 1-eps, 1+eps))`.
    pub loss: f32,
    /// d(loss)/d(new_logp), 0 on padding.
    pub grad: Vec<f32>,
    /// Share of real tokens where the clipped term is the larger (no gradient).
    pub clip_frac: f32,
    /// `0.5 * mean (new_logp - old_logp)^2`.
    pub approx_kl: f32,
    /// Mean of rho over real tokens.
    pub ratio_mean: f32,
}

/// PPO's clipped policy loss with `rho = exp(new_logp - old_logp)`.
pub fn clipped_policy_loss(
    new_logp: &[f32],
    old_logp: &[f32],
    advantages: &[f32],
    layout: ResponseLayout,
    clip_eps: f32,
) -> PolicyLoss {
    layout.check("clipped_policy_loss new_logp", new_logp);
    layout.check("clipped_policy_loss old_logp", old_logp);
    layout.check("clipped_policy_loss advantages", advantages);
    let n = layout.count();
    let mut grad = vec![0.0f32; layout.size()];
    if n == 0 {
        return PolicyLoss {
            loss: 0.0,
            grad,
            clip_frac: 0.0,
            approx_kl: 0.0,
            ratio_mean: 0.0,
        };
    }
    let inv_n = 1.0 / n as f64;
    let eps = clip_eps as f64;
    let (mut loss, mut clipped, mut akl, mut ratio_sum) = (0.0f64, 0usize, 0.0f64, 0.0f64);
    for k in layout.valid_indices() {
        let log_ratio = new_logp[k] as f64 - old_logp[k] as f64;
        let ratio = log_ratio.exp();
        let a = advantages[k] as f64;
        let unclipped = -a * ratio;
        let clipped_term = -a * ratio.clamp(1.0 - eps, 1.0 + eps);
        if clipped_term > unclipped {
            clipped += 1;
            loss += clipped_term;
        } else {
            loss += unclipped;
            grad[k] = (-a * ratio * inv_n) as f32;
        }
        akl += 0.5 * log_ratio * log_ratio;
        ratio_sum += ratio;
    }
    PolicyLoss {
        loss: (loss * inv_n) as f32,
        grad,
        clip_frac: (clipped as f64 * inv_n) as f32,
        approx_kl: (akl * inv_n) as f32,
        ratio_mean: (ratio_sum * inv_n) as f32,
    }
}

/// The clipped value loss, its gradient and clip fraction.
#[derive(Clone, Debug, PartialEq)]
pub struct ValueLoss {
    /// `0.5 * mean max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2)`.
    pub loss: f32,
    /// d(loss)/d(new_values), 0 on padding.
    pub grad: Vec<f32>,
    /// Share of real tokens where the clipped term is the larger.
    pub clip_frac: f32,
}

/// PPO's clipped value loss (TRL's `cliprange_value`).
pub fn clipped_value_loss(
    new_values: &[f32],
    old_values: &[f32],
    returns: &[f32],
    layout: ResponseLayout,
    clip: f32,
) -> ValueLoss {
    layout.check("clipped_value_loss new_values", new_values);
    layout.check("clipped_value_loss old_values", old_values);
    layout.check("clipped_value_loss returns", returns);
    let n = layout.count();
    let mut grad = vec![0.0f32; layout.size()];
    if n == 0 {
        return ValueLoss {
            loss: 0.0,
            grad,
            clip_frac: 0.0,
        };
    }
    let inv_n = 1.0 / n as f64;
    let c = clip as f64;
    let (mut loss, mut clipped) = (0.0f64, 0usize);
    for k in layout.valid_indices() {
        let v = new_values[k] as f64;
        let old = old_values[k] as f64;
        let r = returns[k] as f64;
        let v_clip = v.clamp(old - c, old + c);
        let (e1, e2) = ((v - r).powi(2), (v_clip - r).powi(2));
        if e2 > e1 {
            // The clipped value is constant in v here (v is outside the band,
            // else v_clip == v and e2 == e1), so no gradient flows.
            clipped += 1;
            loss += e2;
        } else {
            loss += e1;
            grad[k] = ((v - r) * inv_n) as f32;
        }
    }
    ValueLoss {
        loss: (0.5 * loss * inv_n) as f32,
        grad,
        clip_frac: (clipped as f64 * inv_n) as f32,
    }
}

/// Log-probability of `token` and the entropy of the distribution
/// `softmax(logits / temperature)` over one row of the real vocabulary.
pub fn logprob_and_entropy(logits: &[f32], token: u32, temperature: f32) -> (f32, f32) {
    assert!(
        (token as usize) < logits.len(),
        "logprob_and_entropy: token {token} outside a row of {} logits",
        logits.len()
    );
    let inv_t = 1.0 / temperature as f64;
    let max = logits
        .iter()
        .fold(f64::NEG_INFINITY, |m, &z| m.max(z as f64 * inv_t));
    let mut sum = 0.0f64;
    let mut weighted = 0.0f64;
    for &z in logits {
        let s = z as f64 * inv_t - max;
        let e = s.exp();
        sum += e;
        weighted += e * s;
    }
    let log_z = sum.ln();
    let logp = logits[token as usize] as f64 * inv_t - max - log_z;
    // H = log Z - E[s] with s the shifted scaled logits.
    let entropy = log_z - weighted / sum;
    (logp as f32, entropy as f32)
}

/// How GRPO scales the group-centred rewards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupScale {
    /// Divide by the group's standard deviation (DeepSeekMath).
    Group,
    /// Divide by the whole batch's standard deviation.
    Batch,
    /// Only centre (Dr. GRPO).
    None,
}

fn std_unbiased(x: &[f32]) -> f64 {
    if x.len() < 2 {
        return 0.0;
    }
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / x.len() as f64;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / (x.len() - 1) as f64;
    var.sqrt()
}

/// GRPO's advantage per sequence: `(r_i - mean_group(r)) / (std + 1e-4)`,
/// where the rows of one prompt are consecutive groups of `group_size`.
pub fn group_advantages(scores: &[f32], group_size: usize, scale: GroupScale) -> Vec<f32> {
    assert!(group_size > 0, "group_advantages: group_size must be > 0");
    assert_eq!(
        scores.len() % group_size,
        0,
        "group_advantages: {} scores do not split into groups of {group_size}",
        scores.len()
    );
    let batch_std = std_unbiased(scores);
    let mut out = Vec::with_capacity(scores.len());
    for group in scores.chunks(group_size) {
        let mean = group.iter().map(|&v| v as f64).sum::<f64>() / group_size as f64;
        let denom = match scale {
            GroupScale::Group => std_unbiased(group) + 1e-4,
            GroupScale::Batch => batch_std + 1e-4,
            GroupScale::None => 1.0,
        };
        out.extend(group.iter().map(|&r| ((r as f64 - mean) / denom) as f32));
    }
    out
}

/// How GRPO averages its per-token loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrpoAggregation {
    /// Mean over each response's tokens, then over responses (DeepSeekMath).
    SequenceMean,
    /// Sum over all real tokens divided by their number (DAPO).
    TokenMean,
}

/// GRPO's loss, its gradient and diagnostics.
#[derive(Clone, Debug, PartialEq)]
pub struct GrpoLoss {
    pub loss: f32,
    /// d(loss)/d(new_logp), 0 on padding.
    pub grad: Vec<f32>,
    /// Mean k3 KL per real token.
    pub kl: f32,
    pub clip_frac: f32,
}

/// Per token `max(-A rho, -A clip(rho, 1-eps, 1+eps)) + beta * k3(new, ref)`
/// with the sequence advantage `A` on every token of the response, then
/// aggregated per `agg`. The KL term is differentiable (inside the loss),
/// unlike PPO where it only shapes the reward.
#[allow(clippy::too_many_arguments)]
pub fn grpo_loss(
    new_logp: &[f32],
    old_logp: &[f32],
    ref_logp: &[f32],
    seq_advantages: &[f32],
    layout: ResponseLayout,
    clip_eps: f32,
    beta: f32,
    agg: GrpoAggregation,
) -> GrpoLoss {
    layout.check("grpo_loss new_logp", new_logp);
    layout.check("grpo_loss old_logp", old_logp);
    layout.check("grpo_loss ref_logp", ref_logp);
    assert_eq!(
        seq_advantages.len(),
        layout.rows(),
        "grpo_loss: one advantage per row"
    );
    let n = layout.count();
    let mut grad = vec![0.0f32; layout.size()];
    let nonempty_rows = layout.lens.iter().filter(|&&l| l > 0).count();
    if n == 0 {
        return GrpoLoss {
            loss: 0.0,
            grad,
            kl: 0.0,
            clip_frac: 0.0,
        };
    }
    let eps = clip_eps as f64;
    let beta = beta as f64;
    let (mut loss, mut kl_sum, mut clipped) = (0.0f64, 0.0f64, 0usize);
    for (i, &l) in layout.lens.iter().enumerate() {
        if l == 0 {
            continue;
        }
        let weight = match agg {
            GrpoAggregation::SequenceMean => 1.0 / (l as f64 * nonempty_rows as f64),
            GrpoAggregation::TokenMean => 1.0 / n as f64,
        };
        let a = seq_advantages[i] as f64;
        for k in i * layout.cols..i * layout.cols + l {
            let ratio = (new_logp[k] as f64 - old_logp[k] as f64).exp();
            let unclipped = -a * ratio;
            let clipped_term = -a * ratio.clamp(1.0 - eps, 1.0 + eps);
            let (pg, mut g) = if clipped_term > unclipped {
                clipped += 1;
                (clipped_term, 0.0)
            } else {
                (unclipped, -a * ratio)
            };
            let kl = KlEstimator::K3.per_token(new_logp[k], ref_logp[k]) as f64;
            g += beta * KlEstimator::K3.grad(new_logp[k], ref_logp[k]) as f64;
            loss += weight * (pg + beta * kl);
            kl_sum += kl;
            grad[k] = (weight * g) as f32;
        }
    }
    GrpoLoss {
        loss: loss as f32,
        grad,
        kl: (kl_sum / n as f64) as f32,
        clip_frac: (clipped as f64 / n as f64) as f32,
    }
}

#[cfg(test)]
mod tests;
