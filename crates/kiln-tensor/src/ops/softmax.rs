//! Row softmax with an optional log-sum-exp, and its backward (the router's
//! probabilities and z-loss).

use rayon::prelude::*;

use super::attention::softmax_in_place;
use super::{dot, max, sum};

/// `out[r] = softmax(inp[r])`; `lse[r] = logsumexp(inp[r])` when asked.
pub fn forward(out: &mut [f32], lse: Option<&mut [f32]>, inp: &[f32], cols: usize) {
    out.par_chunks_mut(cols)
        .zip(inp.par_chunks(cols))
        .for_each(|(o, x)| {
            o.copy_from_slice(x);
            softmax_in_place(o);
        });
    if let Some(lse) = lse {
        lse.par_iter_mut()
            .zip(inp.par_chunks(cols))
            .for_each(|(l, x)| {
                let m = max(x);
                let e: Vec<f32> = x.iter().map(|&v| (v - m).exp()).collect();
                *l = m + sum(&e).ln();
            });
    }
}

/// `dinp += out * (dout - sum_j dout*out) + dlse * out` per row.
pub fn backward(dinp: &mut [f32], out: &[f32], dout: &[f32], dlse: Option<&[f32]>, cols: usize) {
    dinp.par_chunks_mut(cols)
        .zip(out.par_chunks(cols).zip(dout.par_chunks(cols)))
        .enumerate()
        .for_each(|(r, (d, (y, g)))| {
            let s = dot(y, g);
            let z = dlse.map_or(0.0, |l| l[r]);
            for ((d, &y), &g) in d.iter_mut().zip(y).zip(g) {
                *d += y * (g - s) + z * y;
            }
        });
}
