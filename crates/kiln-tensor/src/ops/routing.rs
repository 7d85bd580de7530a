//! Mixture-of-experts routing: top-k selection and gate renormalisation.

use rayon::prelude::*;

/// Per row of `scores [rows, cols]`, the `k` columns with the largest
/// `scores + bias`, largest first, ties to the lower column (a NaN key
/// counts as the smallest); `values` are the unbiased scores.
pub fn topk_forward(
    values: &mut [f32],
    indices: &mut [u32],
    scores: &[f32],
    bias: Option<&[f32]>,
    cols: usize,
    k: usize,
) {
    values
        .par_chunks_mut(k)
        .zip(indices.par_chunks_mut(k))
        .zip(scores.par_chunks(cols))
        .for_each(|((val, idx), s)| {
            let key = |j: usize| {
                let v = s[j] + bias.map_or(0.0, |b| b[j]);
                if v.is_nan() {
                    f32::NEG_INFINITY
                } else {
                    v
                }
            };
            let mut order: Vec<usize> = (0..cols).collect();
            // Stable sort by descending key keeps equal keys in column order.
            order.sort_by(|&a, &b| key(b).total_cmp(&key(a)));
            for ((v, i), &j) in val.iter_mut().zip(idx.iter_mut()).zip(&order[..k]) {
                *v = s[j];
                *i = j as u32;
            }
        });
}

/// `dscores[r, indices[r, j]] += dvalues[r, j]`.
pub fn topk_backward(dscores: &mut [f32], dvalues: &[f32], indices: &[u32], cols: usize, k: usize) {
    dscores
        .par_chunks_mut(cols)
        .zip(dvalues.par_chunks(k).zip(indices.par_chunks(k)))
        .for_each(|(d, (dv, idx))| {
            for (&g, &j) in dv.iter().zip(idx) {
                d[j as usize] += g;
            }
        });
}

/// `out[r, :] = inp[r, :] / sum(inp[r, :])`.
pub fn normalize_forward(out: &mut [f32], inp: &[f32], cols: usize) {
    out.par_chunks_mut(cols)
        .zip(inp.par_chunks(cols))
        .for_each(|(o, x)| {
            let s: f32 = super::sum(x);
            for (o, &x) in o.iter_mut().zip(x) {
                *o = x / s;
            }
        });
}

/// `dinp[r, :] += (dout - sum(dout * out)) / sum(inp[r, :])`.
pub fn normalize_backward(dinp: &mut [f32], inp: &[f32], out: &[f32], dout: &[f32], cols: usize) {
    dinp.par_chunks_mut(cols)
        .zip(
            inp.par_chunks(cols)
                .zip(out.par_chunks(cols).zip(dout.par_chunks(cols))),
        )
        .for_each(|(d, (x, (y, g)))| {
            let s = super::sum(x);
            let gy = super::dot(g, y);
            for (d, &g) in d.iter_mut().zip(g) {
                *d += (g - gy) / s;
            }
        });
}
