//! Fused softmax + cross-entropy over a padded vocabulary.

use rayon::prelude::*;

use super::fastmath::exp;
use super::{max, sum};

/// Rows per parallel task.
const ROWS_PER_TASK: usize = 4;

simd_fn! {
    /// `p = softmax(x)`; returns the max and the sum of `exp(x - max)`.
    fn softmax_row(p: &mut [f32], x: &[f32]) -> (f32, f32) {
        let m = max(x);
        for (p, &x) in p.iter_mut().zip(x) {
            *p = exp(x - m);
        }
        let s = sum(p);
        let inv = 1.0 / s;
        for p in p.iter_mut() {
            *p *= inv;
        }
        (m, s)
    }
}

/// `probs[i,..v]` = softmax of `logits[i,..v]`, `probs[i,v..vp] = 0`;
/// `losses[i] = -log_softmax(logits[i])[target]`, or 0 when `target >= v`.
pub fn forward(
    losses: &mut [f32],
    probs: &mut [f32],
    logits: &[f32],
    targets: &[u32],
    v: usize,
    vp: usize,
) {
    let per = ROWS_PER_TASK;
    probs
        .par_chunks_mut(vp * per)
        .zip(losses.par_chunks_mut(per))
        .zip(logits.par_chunks(vp * per).zip(targets.par_chunks(per)))
        .for_each(|((probs, losses), (logits, targets))| {
            for (((p, loss), x), &tgt) in probs
                .chunks_mut(vp)
                .zip(losses.iter_mut())
                .zip(logits.chunks(vp))
                .zip(targets)
            {
                let x = &x[..v];
                let (m, s) = softmax_row(&mut p[..v], x);
                p[v..].fill(0.0);
                // log-sum-exp form: finite even when the target's prob underflows.
                *loss = if (tgt as usize) < v {
                    m + s.ln() - x[tgt as usize]
                } else {
                    0.0
                };
            }
        });
}

/// `dlogits[i,j] += dlosses[i] * (probs[i,j] - [j == target])` for `j < v`;
/// rows whose target is ignored (`>= v`) and padding columns get nothing.
pub fn backward(
    dlogits: &mut [f32],
    probs: &[f32],
    targets: &[u32],
    dlosses: &[f32],
    v: usize,
    vp: usize,
) {
    let per = ROWS_PER_TASK;
    dlogits
        .par_chunks_mut(vp * per)
        .zip(probs.par_chunks(vp * per))
        .zip(targets.par_chunks(per).zip(dlosses.par_chunks(per)))
        .for_each(|((dl, pr), (targets, dlosses))| {
            for ((d, p), (&tgt, &g)) in dl
                .chunks_mut(vp)
                .zip(pr.chunks(vp))
                .zip(targets.iter().zip(dlosses))
            {
                let tgt = tgt as usize;
                if tgt >= v {
                    continue;
                }
                for (d, &p) in d[..v].iter_mut().zip(&p[..v]) {
                    *d += g * p;
                }
                d[tgt] -= g;
            }
        });
}
