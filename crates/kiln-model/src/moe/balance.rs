//! Load balancing: the Switch auxiliary loss, the ST-MoE router z-loss
//! (values and gradients, host f32) and DeepSeek-V3's bias update.
//! Formulas: reference notes §4.1, §4.4 and §7.2.

use super::config::GateFn;
use super::router::Routing;

/// The per-token router probabilities the aux loss averages, `[N, E]`:
/// softmax scores as they are; sigmoid scores renormalised over the E
/// experts (Megatron's `sigmoid` aux-loss scores), so each row sums to 1
/// and the loss keeps its minimum at uniform routing.
pub fn aux_probs(routing: &Routing) -> Vec<f32> {
    match routing.gate {
        GateFn::Softmax => routing.scores.clone(),
        GateFn::Sigmoid => {
            let mut p = routing.scores.clone();
            for row in p.chunks_mut(routing.e) {
                let s: f32 = row.iter().sum();
                row.iter_mut().for_each(|v| *v /= s);
            }
            p
        }
    }
}

/// Switch aux loss `alpha * E * sum_e f_e * P_e` for `probs [N, E]` and
/// `load [E]` (token slots routed to each expert, `N * k` in all):
/// `f_e = load_e / (N k)`, `P_e = mean_n probs[n, e]`. Equals alpha at
/// exactly uniform routing, which is its minimum.
pub fn switch_aux_loss(probs: &[f32], load: &[f32], k: usize, alpha: f32) -> f32 {
    let e = load.len();
    let n = probs.len() / e;
    if n == 0 {
        return 0.0;
    }
    let mut mean_p = vec![0.0f64; e];
    for row in probs.chunks(e) {
        for (m, &p) in mean_p.iter_mut().zip(row) {
            *m += p as f64;
        }
    }
    let slots = (n * k) as f64;
    let sum: f64 = mean_p
        .iter()
        .zip(load)
        .map(|(&p, &l)| (l as f64 / slots) * (p / n as f64))
        .sum();
    (alpha as f64 * e as f64 * sum) as f32
}

/// Adds `scale * d(aux)/d(scores)` into `dscores [N, E]`. The loads are
/// counts (not differentiated), so `d aux / d probs[n, e] = alpha E f_e / N`;
/// for sigmoid scores this goes on through the row renormalisation.
pub fn switch_aux_backward(routing: &Routing, alpha: f32, scale: f32, dscores: &mut [f32]) {
    let (n, e, k) = (routing.n, routing.e, routing.k);
    if n == 0 || alpha == 0.0 {
        return;
    }
    let load = routing.load();
    let dprobs: Vec<f32> = load
        .iter()
        .map(|&l| scale * alpha * e as f32 * (l / (n * k) as f32) / n as f32)
        .collect();
    for (s, ds) in routing.scores.chunks(e).zip(dscores.chunks_mut(e)) {
        match routing.gate {
            GateFn::Softmax => ds.iter_mut().zip(&dprobs).for_each(|(d, &g)| *d += g),
            GateFn::Sigmoid => {
                // p = s / S: ds_j = (dp_j - sum_i dp_i p_i) / S.
                let sum: f32 = s.iter().sum();
                let dot: f32 = s.iter().zip(&dprobs).map(|(&v, &g)| v / sum * g).sum();
                ds.iter_mut()
                    .zip(&dprobs)
                    .for_each(|(d, &g)| *d += (g - dot) / sum);
            }
        }
    }
}

/// Each row's log-sum-exp of `logits [rows, e]`.
pub fn logsumexp_rows(logits: &[f32], e: usize) -> Vec<f32> {
    logits
        .chunks(e)
        .map(|row| {
            let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            m + row.iter().map(|&v| (v - m).exp()).sum::<f32>().ln()
        })
        .collect()
}

/// ST-MoE router z-loss `beta * mean_n (logsumexp_e logits[n, e])^2`.
pub fn router_z_loss(logits: &[f32], e: usize, beta: f32) -> f32 {
    let lse = logsumexp_rows(logits, e);
    if lse.is_empty() {
        return 0.0;
    }
    let mean: f64 = lse.iter().map(|&z| (z as f64) * (z as f64)).sum::<f64>() / lse.len() as f64;
    (beta as f64 * mean) as f32
}

/// Adds `scale * d(z-loss)/d(logits) = scale * beta * 2 lse_n softmax(logits)_n / N`
/// into `dlogits [N, E]`.
pub fn router_z_backward(logits: &[f32], e: usize, beta: f32, scale: f32, dlogits: &mut [f32]) {
    let n = logits.len() / e;
    if n == 0 || beta == 0.0 {
        return;
    }
    let lse = logsumexp_rows(logits, e);
    for ((row, z), dl) in logits.chunks(e).zip(&lse).zip(dlogits.chunks_mut(e)) {
        let c = scale * beta * 2.0 * z / n as f32;
        for (d, &x) in dl.iter_mut().zip(row) {
            *d += c * (x - z).exp();
        }
    }
}

/// DeepSeek-V3's auxiliary-loss-free step: `b_e += gamma * sign(mean - load_e)`
/// (an overloaded expert's bias falls, an underloaded one's rises; an
/// expert exactly at the mean keeps its bias). `loads` are the step's
/// routed token slots per expert, summed over every rank.
pub fn update_selection_bias(bias: &mut [f32], loads: &[f32], gamma: f32) {
    if loads.is_empty() {
        return;
    }
    let mean = loads.iter().sum::<f32>() / loads.len() as f32;
    for (b, &l) in bias.iter_mut().zip(loads) {
        let diff = mean - l;
        if diff != 0.0 {
            *b += gamma * diff.signum();
        }
    }
}
