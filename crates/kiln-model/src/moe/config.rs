//! What one MoE layer is: sizes, gate function, top-k, capacity and the
//! balancing coefficients, with the defaults of the sources (see the module
//! doc of [`crate::moe`]).

use crate::ModelError;

/// How router logits become expert scores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateFn {
    /// `softmax` over the E logits (Switch, GShard, Mixtral).
    Softmax,
    /// An independent `sigmoid` per expert (DeepSeek-V3's affinity).
    Sigmoid,
}

/// The configuration of one sparse MoE MLP layer.
#[derive(Clone, Debug, PartialEq)]
pub struct MoeConfig {
    /// Model width C (rows of `x` are `[C]`).
    pub n_embd: usize,
    /// Hidden width H of every expert MLP (`C -> H -> C`).
    pub hidden: usize,
    /// Routed experts E.
    pub n_experts: usize,
    /// Experts chosen per token, `1..=E`.
    pub top_k: usize,
    pub gate: GateFn,
    /// Renormalise the k chosen gate values to sum to 1. Default `top_k > 1`:
    /// Mixtral (softmax, k = 2) and DeepSeek-V3 / Megatron (sigmoid) do; with
    /// k = 1 it would make every gate 1 and starve the router of gradient,
    /// so Switch (top-1) keeps the raw probability.
    pub normalize_topk: bool,
    /// Shared experts every token goes through with weight 1 (DeepSeekMoE).
    pub n_shared: usize,
    /// `Some(C_f)`: each expert takes at most `ceil(N * k * C_f / E)` token
    /// slots per forward, in token order; the rest are dropped (counted).
    /// `None`: dropless (Megatron's default).
    pub capacity_factor: Option<f32>,
    /// Switch load-balancing loss coefficient alpha (0 = off). Default 1e-2
    /// (the paper's; frameworks differ, see the reference notes §7.1).
    pub aux_loss_coef: f32,
    /// ST-MoE router z-loss coefficient beta (0 = off). Default 1e-3.
    pub z_loss_coef: f32,
    /// DeepSeek-V3 auxiliary-loss-free balancing: a per-expert bias added to
    /// the scores only to choose the top-k. Default off.
    pub expert_bias: bool,
    /// gamma of the bias update `b_e += gamma * sign(mean_load - load_e)`
    /// (DeepSeek-V3 and Megatron: 1e-3).
    pub bias_update_rate: f32,
}

impl MoeConfig {
    /// Softmax top-`top_k` routing over `n_experts` GPT-2 style experts of
    /// width `hidden`, dropless, Switch aux loss 1e-2 and router z-loss 1e-3.
    pub fn new(n_embd: usize, hidden: usize, n_experts: usize, top_k: usize) -> MoeConfig {
        MoeConfig {
            n_embd,
            hidden,
            n_experts,
            top_k,
            gate: GateFn::Softmax,
            normalize_topk: top_k > 1,
            n_shared: 0,
            capacity_factor: None,
            aux_loss_coef: 1e-2,
            z_loss_coef: 1e-3,
            expert_bias: false,
            bias_update_rate: 1e-3,
        }
    }

    /// `Err` naming the field when the config cannot describe a layer.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::Config(format!("moe: {m}")));
        if self.n_embd == 0 || self.hidden == 0 {
            return bad("n_embd and hidden must be positive".into());
        }
        if self.n_experts == 0 {
            return bad("n_experts must be at least 1".into());
        }
        if self.top_k == 0 || self.top_k > self.n_experts {
            return bad(format!(
                "top_k = {} must be in 1..={} (n_experts)",
                self.top_k, self.n_experts
            ));
        }
        if let Some(cf) = self.capacity_factor {
            if !(cf.is_finite() && cf > 0.0) {
                return bad(format!("capacity_factor = {cf} must be finite and > 0"));
            }
        }
        for (name, v) in [
            ("aux_loss_coef", self.aux_loss_coef),
            ("z_loss_coef", self.z_loss_coef),
            ("bias_update_rate", self.bias_update_rate),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(format!("{name} = {v} must be finite and >= 0"));
            }
        }
        Ok(())
    }

    /// Token slots one expert may take for `n` tokens: `ceil(n * k * C_f / E)`
    /// (`None`: dropless).
    pub fn capacity(&self, n: usize) -> Option<usize> {
        self.capacity_factor.map(|cf| {
            let slots = (n * self.top_k) as f64 * cf as f64 / self.n_experts as f64;
            slots.ceil() as usize
        })
    }
}
