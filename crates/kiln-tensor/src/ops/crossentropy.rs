//! Fused softmax + cross-entropy over a padded vocabulary. The forward
//! saves each row's log-sum-exp; the backward recomputes the probabilities
//! from the logits and it (nothing `[rows, Vp]` is stored).

use rayon::prelude::*;

use super::fastmath::exp;
use super::{max, sum};

/// Rows per parallel task.
const ROWS_PER_TASK: usize = 4;

simd_fn! {
    /// `exp(x - max)` into `scratch`; returns the max and the sum (the same
    /// passes and order as the softmax the probabilities used to come from).
    fn exp_sum(scratch: &mut [f32], x: &[f32]) -> (f32, f32) {
        let m = max(x);
        for (p, &x) in scratch.iter_mut().zip(x) {
            *p = exp(x - m);
        }
        (m, sum(scratch))
    }
}

/// `lse[i] = logsumexp(logits[i,..v])`; `losses[i] = lse[i] -
/// logits[i,target]`, or 0 when `target >= v`.
pub fn forward(
    losses: &mut [f32],
    lse: &mut [f32],
    logits: &[f32],
    targets: &[u32],
    v: usize,
    vp: usize,
) {
    let per = ROWS_PER_TASK;
    lse.par_chunks_mut(per)
        .zip(losses.par_chunks_mut(per))
        .zip(logits.par_chunks(vp * per).zip(targets.par_chunks(per)))
        .for_each(|((lse, losses), (logits, targets))| {
            let mut scratch = vec![0f32; v];
            for ((l, loss), (x, &tgt)) in lse
                .iter_mut()
                .zip(losses.iter_mut())
                .zip(logits.chunks(vp).zip(targets))
            {
                let x = &x[..v];
                let (m, s) = exp_sum(&mut scratch, x);
                // log-sum-exp form: finite even when the target's prob underflows.
                *l = m + s.ln();
                *loss = if (tgt as usize) < v {
                    *l - x[tgt as usize]
                } else {
                    0.0
                };
            }
        });
}

simd_fn! {
    /// `d[j] = g * exp(x[j] - lse)` (`d` may start out as `x`: see callers).
    fn grad_row(d: &mut [f32], x: &[f32], lse: f32, g: f32) {
        for (d, &x) in d.iter_mut().zip(x) {
            *d = g * exp(x - lse);
        }
    }
}

simd_fn! {
    fn grad_row_in_place(d: &mut [f32], lse: f32, g: f32) {
        for d in d.iter_mut() {
            *d = g * exp(*d - lse);
        }
    }
}

/// One row of the backward, overwriting: `g * (p - onehot)` for `j < v`,
/// 0 in padding and for ignored targets. `x = None`: `d` holds the logits.
fn backward_row(d: &mut [f32], x: Option<&[f32]>, lse: f32, tgt: u32, g: f32, v: usize) {
    let tgt = tgt as usize;
    if tgt >= v {
        d.fill(0.0);
        return;
    }
    match x {
        Some(x) => grad_row(&mut d[..v], &x[..v], lse, g),
        None => grad_row_in_place(&mut d[..v], lse, g),
    }
    d[v..].fill(0.0);
    d[tgt] -= g;
}

/// **Overwrites** `dlogits` (`[rows, vp]`) from separate `logits`.
pub fn backward(
    dlogits: &mut [f32],
    logits: &[f32],
    lse: &[f32],
    targets: &[u32],
    dlosses: &[f32],
    v: usize,
    vp: usize,
) {
    dlogits
        .par_chunks_mut(vp * ROWS_PER_TASK)
        .zip(logits.par_chunks(vp * ROWS_PER_TASK))
        .enumerate()
        .for_each(|(blk, (dl, x))| {
            let r0 = blk * ROWS_PER_TASK;
            for (r, (d, x)) in dl.chunks_mut(vp).zip(x.chunks(vp)).enumerate() {
                let i = r0 + r;
                backward_row(d, Some(x), lse[i], targets[i], dlosses[i], v);
            }
        });
}

/// As [`backward`], in place: `buf` holds the logits and receives dlogits.
pub fn backward_in_place(
    buf: &mut [f32],
    lse: &[f32],
    targets: &[u32],
    dlosses: &[f32],
    v: usize,
    vp: usize,
) {
    buf.par_chunks_mut(vp * ROWS_PER_TASK)
        .enumerate()
        .for_each(|(blk, dl)| {
            let r0 = blk * ROWS_PER_TASK;
            for (r, d) in dl.chunks_mut(vp).enumerate() {
                let i = r0 + r;
                backward_row(d, None, lse[i], targets[i], dlosses[i], v);
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ABI 1 stored `p = exp(x - max) / sum` and the backward read it; ABI 2
    /// recomputes `exp(x - lse)`. Both are the same function; this bounds
    /// how far apart their f32 results are (the one intended change in
    /// f32 results), in units of the larger value's last place.
    #[test]
    fn recomputed_probabilities_stay_within_a_few_ulp_of_the_stored_ones() {
        let (rows, v, vp) = (64, 5000, 5000);
        let mut state = 7u64;
        let logits: Vec<f32> = (0..rows * vp)
            .map(|_| {
                state = kiln_abi::rounding::splitmix64(state);
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 24.0
            })
            .collect();
        let targets: Vec<u32> = (0..rows as u32).map(|r| r * 7 % v as u32).collect();
        let (mut losses, mut lse) = (vec![0f32; rows], vec![0f32; rows]);
        forward(&mut losses, &mut lse, &logits, &targets, v, vp);
        let ones = vec![1f32; rows];
        let mut d = vec![0f32; rows * vp];
        backward(&mut d, &logits, &lse, &targets, &ones, v, vp);
        let mut worst = 0f32;
        for r in 0..rows {
            let x = &logits[r * vp..][..v];
            let mut p = vec![0f32; v];
            let (_, s) = exp_sum(&mut p, x);
            let inv = 1.0 / s;
            for (j, p) in p.iter().enumerate() {
                let old = p * inv - if j == targets[r] as usize { 1.0 } else { 0.0 };
                let new = d[r * vp + j];
                let ulp = f32::EPSILON * old.abs().max(new.abs()).max(f32::MIN_POSITIVE);
                worst = worst.max((old - new).abs() / ulp);
            }
        }
        eprintln!("crossentropy backward: worst difference to stored probabilities {worst:.1} ulp");
        // exp(x - lse) inherits lse's own rounding (|lse| ~ 21 here, so
        // ~2e-6 absolute in the exponent, ~16 ulp of the result) plus exp's
        // few ulp: measured 27 ulp at worst for logits in +-12, V = 5000.
        assert!(worst <= 40.0, "{worst} ulp");
    }
}
