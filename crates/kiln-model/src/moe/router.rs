//! The router's host side: scores from the logits `[N, E]`, top-k choice
//! (with the selection-only bias), gate values, and the gradient of the
//! logits through the gate path. All f32 on the host: N x E values are few,
//! and the expert sizes this produces must be known on the host anyway to
//! size the expert matmuls.

use super::config::GateFn;

/// One forward's routing decisions for `n` tokens.
#[derive(Clone, Debug, PartialEq)]
pub struct Routing {
    pub n: usize,
    pub e: usize,
    pub k: usize,
    pub gate: GateFn,
    pub normalize_topk: bool,
    /// `[N, E]`: softmax or sigmoid of the logits.
    pub scores: Vec<f32>,
    /// `[N, k]`: chosen experts, best first (by score + bias), distinct.
    pub chosen: Vec<u32>,
    /// `[N, k]`: gate values, from the unbiased scores, renormalised over
    /// the k chosen when `normalize_topk`.
    pub gates: Vec<f32>,
    /// `[N]`: sum of the chosen unbiased scores (the renormaliser).
    pub chosen_sums: Vec<f32>,
}

/// Softmax or sigmoid of each row of `logits [rows, e]`.
pub fn scores(logits: &[f32], e: usize, gate: GateFn) -> Vec<f32> {
    match gate {
        GateFn::Softmax => softmax_rows(logits, e),
        GateFn::Sigmoid => logits.iter().map(|&x| sigmoid(x)).collect(),
    }
}

pub(crate) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Row-wise softmax of `[rows, cols]` (max subtracted).
pub(crate) fn softmax_rows(x: &[f32], cols: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(cols) {
        let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let start = out.len();
        out.extend(row.iter().map(|&v| (v - m).exp()));
        let s: f32 = out[start..].iter().sum();
        out[start..].iter_mut().for_each(|v| *v /= s);
    }
    out
}

/// The `k` columns of `row` with the largest `row + bias`, largest first,
/// ties to the lower column (the backend's `topk_forward` rule; a NaN key
/// counts as the smallest).
pub fn top_k(row: &[f32], bias: Option<&[f32]>, k: usize) -> Vec<u32> {
    let key = |j: usize| {
        let v = row[j] + bias.map_or(0.0, |b| b[j]);
        if v.is_nan() {
            f32::NEG_INFINITY
        } else {
            v
        }
    };
    let mut order: Vec<usize> = (0..row.len()).collect();
    // A stable sort by descending key keeps equal keys in column order.
    order.sort_by(|&a, &b| key(b).total_cmp(&key(a)));
    order[..k].iter().map(|&j| j as u32).collect()
}

/// Routes `n` tokens from their `logits [n, e]`: scores, top-k by
/// `score + bias` (bias only chooses), gates from the unbiased scores.
pub fn route(
    logits: &[f32],
    e: usize,
    k: usize,
    gate: GateFn,
    normalize_topk: bool,
    bias: Option<&[f32]>,
) -> Routing {
    let n = logits.len() / e;
    let scores = scores(logits, e, gate);
    let mut chosen = Vec::with_capacity(n * k);
    let mut gates = Vec::with_capacity(n * k);
    let mut chosen_sums = Vec::with_capacity(n);
    for row in scores.chunks(e) {
        let idx = top_k(row, bias, k);
        let sum: f32 = idx.iter().map(|&j| row[j as usize]).sum();
        for &j in &idx {
            let s = row[j as usize];
            gates.push(if normalize_topk { s / sum } else { s });
        }
        chosen.extend(idx);
        chosen_sums.push(sum);
    }
    Routing {
        n,
        e,
        k,
        gate,
        normalize_topk,
        scores,
        chosen,
        gates,
        chosen_sums,
    }
}

impl Routing {
    /// Token slots routed to each expert, `[E]` (before any capacity drop;
    /// f32 so that ranks can sum them).
    pub fn load(&self) -> Vec<f32> {
        let mut load = vec![0.0f32; self.e];
        for &j in &self.chosen {
            load[j as usize] += 1.0;
        }
        load
    }

    /// Adds into `dscores [N, E]` the gradient reaching the scores from
    /// `dgates [N, k]` (d loss / d gate value of each slot): through the
    /// renormalisation `g_j = s_j / sum_i s_i`, then the top-k gather. The
    /// choice itself is not differentiated.
    pub fn gates_backward(&self, dgates: &[f32], dscores: &mut [f32]) {
        let (e, k) = (self.e, self.k);
        for t in 0..self.n {
            let slots = t * k..(t + 1) * k;
            let dg = &dgates[slots.clone()];
            let g = &self.gates[slots.clone()];
            let chosen = &self.chosen[slots];
            // g = s / S: ds_j = (dg_j - sum_i dg_i g_i) / S.
            let (shift, div) = if self.normalize_topk {
                let dot: f32 = dg.iter().zip(g).map(|(a, b)| a * b).sum();
                (dot, self.chosen_sums[t])
            } else {
                (0.0, 1.0)
            };
            for (&j, &d) in chosen.iter().zip(dg) {
                dscores[t * e + j as usize] += (d - shift) / div;
            }
        }
    }

    /// `dlogits [N, E] += d loss / d logits` from `dscores` through the gate
    /// function (softmax's Jacobian per row, or `s (1 - s)`).
    pub fn scores_backward(&self, dscores: &[f32], dlogits: &mut [f32]) {
        let e = self.e;
        for ((s, ds), dl) in self
            .scores
            .chunks(e)
            .zip(dscores.chunks(e))
            .zip(dlogits.chunks_mut(e))
        {
            match self.gate {
                GateFn::Softmax => {
                    let dot: f32 = s.iter().zip(ds).map(|(a, b)| a * b).sum();
                    for ((d, &p), &g) in dl.iter_mut().zip(s).zip(ds) {
                        *d += p * (g - dot);
                    }
                }
                GateFn::Sigmoid => {
                    for ((d, &p), &g) in dl.iter_mut().zip(s).zip(ds) {
                        *d += g * p * (1.0 - p);
                    }
                }
            }
        }
    }
}
