//! A sparse mixture-of-experts MLP layer: an f32 router, top-k gates, E
//! GPT-2 style expert MLPs (plus optional shared experts), explicit
//! forward and backward over a [`Backend`](kiln_abi::Backend), and the
//! usual balancing terms. A block calls it in place of its MLP on the
//! `[N, C]` rows after its second norm (N = B*T tokens):
//! [`MoeLayer::forward`] writes `y [N, C]` and returns a [`MoeForward`]
//! (stats + what backward needs); [`MoeLayer::backward`] takes `dy`,
//! writes `dx` and accumulates parameter gradients.
//!
//! The computation, for each token row `x` with router logits `u = W_r x`:
//! - scores `s = softmax(u)` or `sigmoid(u)` ([`GateFn`]);
//! - the top-k experts by `s + b` (`b`: DeepSeek-V3's selection-only bias,
//!   zero unless [`MoeConfig::expert_bias`]), gate values from the unbiased
//!   `s`, renormalised over the k chosen when [`MoeConfig::normalize_topk`]
//!   (default for k > 1: Mixtral's `softmax(top2(u))` is exactly that;
//!   DeepSeek-V3 and Megatron do it for sigmoid; Switch top-1 keeps the raw
//!   probability, else the router would get no gradient);
//! - `y = sum_j g_j E_{i_j}(x) + sum_s S_s(x)`, `E` and `S` GPT-2 MLPs
//!   (`c_fc`, GELU tanh, `c_proj`, with biases).
//!
//! Dispatch is one row gather of the kept token slots (grouped by expert),
//! then each expert's matmuls on its rows; combine is one gate-weighted
//! scatter-add. Dropless by default; with a capacity factor C_f each expert
//! keeps its first `ceil(N k C_f / E)` slots in token order and the rest
//! contribute zero (counted in [`MoeStats`]); the gates are not
//! renormalised after a drop (Switch: the token passes by the residual).
//!
//! Balancing, each optional (reference notes §4 and §7.2):
//! - Switch aux loss `alpha E sum_e f_e P_e` (Fedus et al. 2021,
//!   arXiv:2101.03961), `f_e` = slots routed to e / (N k) before any drop,
//!   `P_e` = mean router probability (sigmoid scores renormalised over E);
//!   alpha defaults to 1e-2;
//! - the ST-MoE router z-loss `beta mean_n logsumexp(u_n)^2` (Zoph et al.
//!   2022, arXiv:2202.08906), beta 1e-3;
//! - DeepSeek-V3's auxiliary-loss-free bias (arXiv:2412.19437 §2.1),
//!   updated by [`MoeLayer::update_bias`] after a step, never by backward.
//!
//! Backward is exact for x, every expert weight and the router, through
//! the gate values and through the aux and z losses; the top-k choice is
//! not differentiated (as in PyTorch). Checked against a PyTorch fixture
//! (`scripts/make_moe_fixtures.py`, `tests/fixtures/moe_tiny/`).
//!
//! First version's limits: the router's bookkeeping on the `[N, E]` logits
//! (scores, top-k, gates, losses and their gradients) runs on the host in
//! f32 after one download of the logits (the expert row counts must reach
//! the host anyway to size the matmuls); activations must be f32; buffers
//! are allocated per forward and freed by backward (or
//! [`MoeForward::free`]). The backend's routing ops (`topk_forward`,
//! `normalize_rows_*`) can take over the router later.
//!
//! Parameter names (HF Mixtral-like, with GPT-2's MLP names inside each
//! expert; layouts are kiln's `[out, in]`, i.e. `nn.Linear`, not Conv1D),
//! under a `prefix` such as `transformer.h.3.mlp`:
//! `{prefix}.gate.weight [E, C]`, then for each expert e
//! `{prefix}.experts.{e}.c_fc.weight [H, C]`, `.c_fc.bias [H]`,
//! `.c_proj.weight [C, H]`, `.c_proj.bias [C]`, then the same under
//! `{prefix}.shared_experts.{s}.`; the selection bias (not trained) is
//! [`MoeLayer::selection_bias`] (DeepSeek-V3's `e_score_correction_bias`).

mod balance;
mod config;
mod dispatch;
mod experts;
mod layer;
mod router;

#[cfg(test)]
mod fixture_tests;
#[cfg(test)]
mod tests;

pub use balance::{
    aux_probs, logsumexp_rows, router_z_loss, switch_aux_loss, update_selection_bias,
};
pub use config::{GateFn, MoeConfig};
pub use dispatch::Dispatch;
pub use layer::{MoeForward, MoeStats};
pub use router::{route, scores, top_k, Routing};

use kiln_abi::{BackendBox, BackendExt, DType, IntoBResult};

use crate::{ModelError, Param, Rng};

/// Offsets of an expert's four parameters in its group.
pub mod slot {
    pub const FC_W: usize = 0;
    pub const FC_B: usize = 1;
    pub const PROJ_W: usize = 2;
    pub const PROJ_B: usize = 3;
    /// Parameters per expert.
    pub const PER_EXPERT: usize = 4;
}

/// Index of the router weight in [`MoeLayer::params`].
pub const ROUTER: usize = 0;

/// One MoE MLP layer: its config, parameters on the backend (router, routed
/// experts, shared experts, in that order) and the selection bias.
pub struct MoeLayer {
    pub config: MoeConfig,
    pub params: Vec<Param>,
    /// `[E]`, added to the scores only to choose the experts (used when
    /// [`MoeConfig::expert_bias`]); moved by [`MoeLayer::update_bias`].
    pub selection_bias: Vec<f32>,
}

/// Name and shape of every parameter of a layer under `prefix`, in order.
pub fn param_specs(cfg: &MoeConfig, prefix: &str) -> Vec<(String, Vec<usize>)> {
    let (c, h) = (cfg.n_embd, cfg.hidden);
    let mut out = vec![(format!("{prefix}.gate.weight"), vec![cfg.n_experts, c])];
    let mlp = |group: &str, i: usize| {
        let p = format!("{prefix}.{group}.{i}");
        [
            (format!("{p}.c_fc.weight"), vec![h, c]),
            (format!("{p}.c_fc.bias"), vec![h]),
            (format!("{p}.c_proj.weight"), vec![c, h]),
            (format!("{p}.c_proj.bias"), vec![c]),
        ]
    };
    for e in 0..cfg.n_experts {
        out.extend(mlp("experts", e));
    }
    for s in 0..cfg.n_shared {
        out.extend(mlp("shared_experts", s));
    }
    out
}

impl MoeLayer {
    /// Uploads `values` (one per [`param_specs`] entry, in order); with
    /// `grads`, zeroed f32 gradient buffers too.
    pub fn from_values<V: AsRef<[f32]>>(
        be: &mut BackendBox,
        config: MoeConfig,
        prefix: &str,
        values: impl IntoIterator<Item = V>,
        grads: bool,
    ) -> Result<MoeLayer, ModelError> {
        config.validate()?;
        let specs = param_specs(&config, prefix);
        let mut params = Vec::with_capacity(specs.len());
        let mut values = values.into_iter();
        for (name, shape) in specs {
            let len: usize = shape.iter().product();
            let v = values
                .next()
                .ok_or_else(|| ModelError::Input(format!("moe: no values given for {name}")))?;
            let v = v.as_ref();
            if v.len() != len {
                return Err(ModelError::Input(format!(
                    "moe: {name} {shape:?} needs {len} values, got {}",
                    v.len()
                )));
            }
            let value = be.from_f32(v)?;
            let grad = if grads {
                Some(be.alloc_buf(DType::F32, len)?)
            } else {
                None
            };
            params.push(Param {
                decay: shape.len() == 2,
                name,
                shape,
                value,
                grad,
                value_16: None,
            });
        }
        if values.next().is_some() {
            return Err(ModelError::Input(
                "moe: more values given than the layer has parameters".into(),
            ));
        }
        let selection_bias = vec![0.0; config.n_experts];
        Ok(MoeLayer {
            config,
            params,
            selection_bias,
        })
    }

    /// A random layer: matrices N(0, `std`^2) (`c_proj`: `proj_std`, GPT-2
    /// scales the projections into the residual stream), biases zero.
    pub fn init(
        be: &mut BackendBox,
        config: MoeConfig,
        prefix: &str,
        rng: &mut Rng,
        (std, proj_std): (f32, f32),
        grads: bool,
    ) -> Result<MoeLayer, ModelError> {
        let values: Vec<Vec<f32>> = param_specs(&config, prefix)
            .into_iter()
            .map(|(name, shape)| {
                let len: usize = shape.iter().product();
                let s = if name.ends_with("c_proj.weight") {
                    proj_std
                } else {
                    std
                };
                if shape.len() == 2 {
                    (0..len).map(|_| s * rng.normal()).collect()
                } else {
                    vec![0.0; len]
                }
            })
            .collect();
        MoeLayer::from_values(be, config, prefix, values, grads)
    }

    /// Index in [`MoeLayer::params`] of routed expert `e`'s parameter `slot`.
    pub fn expert_index(&self, e: usize, slot: usize) -> usize {
        1 + e * slot::PER_EXPERT + slot
    }

    /// Index of shared expert `s`'s parameter `slot`.
    pub fn shared_index(&self, s: usize, slot: usize) -> usize {
        1 + (self.config.n_experts + s) * slot::PER_EXPERT + slot
    }

    /// Zeroes every gradient buffer.
    pub fn zero_grad(&self, be: &mut BackendBox) -> Result<(), ModelError> {
        for g in self.params.iter().filter_map(|p| p.grad) {
            be.zero(g).ok_or_err()?;
        }
        Ok(())
    }

    /// DeepSeek-V3's balancing step after an optimizer step:
    /// `b_e += gamma * sign(mean(loads) - loads[e])`, with `loads` the
    /// step's [`MoeStats::load`] summed over micro-batches and ranks.
    pub fn update_bias(&mut self, loads: &[f32]) -> Result<(), ModelError> {
        if loads.len() != self.config.n_experts {
            return Err(ModelError::Input(format!(
                "moe update_bias: {} loads for {} experts",
                loads.len(),
                self.config.n_experts
            )));
        }
        let gamma = self.config.bias_update_rate;
        update_selection_bias(&mut self.selection_bias, loads, gamma);
        Ok(())
    }

    /// Frees every parameter and gradient buffer.
    pub fn free(self, be: &mut BackendBox) -> Result<(), ModelError> {
        for p in self.params {
            be.free(p.value).ok_or_err()?;
            if let Some(g) = p.grad {
                be.free(g).ok_or_err()?;
            }
            if let Some(v) = p.value_16 {
                be.free(v).ok_or_err()?;
            }
        }
        Ok(())
    }
}
