//! LayerNorm over the last dimension, forward and backward.

use rayon::prelude::*;

use super::{dot, sum};

/// Rows per parallel task. Fixed, so the `dweight`/`dbias` partial sums (one
/// per task, added in task order) do not depend on the thread count.
const ROWS_PER_TASK: usize = 16;

/// `out = (x - mean) * rstd * w + b`, saving `mean` and `rstd` per row.
#[allow(clippy::too_many_arguments)]
pub fn forward(
    out: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    bias: &[f32],
    cols: usize,
    eps: f32,
) {
    let per = ROWS_PER_TASK;
    out.par_chunks_mut(cols * per)
        .zip(mean.par_chunks_mut(per).zip(rstd.par_chunks_mut(per)))
        .zip(inp.par_chunks(cols * per))
        .for_each(|((out, (mean, rstd)), inp)| {
            for (r, (o, x)) in out.chunks_mut(cols).zip(inp.chunks(cols)).enumerate() {
                let m = sum(x) / cols as f32;
                let mut acc = [0f32; 8];
                let n8 = cols / 8 * 8;
                for c in x[..n8].chunks_exact(8) {
                    for l in 0..8 {
                        let d = c[l] - m;
                        acc[l] += d * d;
                    }
                }
                let mut var = sum(&acc);
                for &v in &x[n8..] {
                    var += (v - m) * (v - m);
                }
                let var = var / cols as f32;
                let s = 1.0 / (var + eps).sqrt();
                for (((o, &x), &w), &b) in o.iter_mut().zip(x).zip(weight).zip(bias) {
                    *o = (x - m) * s * w + b;
                }
                mean[r] = m;
                rstd[r] = s;
            }
        });
}

/// Accumulates `dinp`, `dweight`, `dbias` (llm.c's formulation).
#[allow(clippy::too_many_arguments)]
pub fn backward(
    dinp: &mut [f32],
    dweight: &mut [f32],
    dbias: &mut [f32],
    dout: &[f32],
    inp: &[f32],
    weight: &[f32],
    mean: &[f32],
    rstd: &[f32],
    cols: usize,
) {
    let per = ROWS_PER_TASK;
    // One (dweight, dbias) partial per task, combined below in task order.
    let partials: Vec<Vec<f32>> = dinp
        .par_chunks_mut(cols * per)
        .zip(dout.par_chunks(cols * per).zip(inp.par_chunks(cols * per)))
        .zip(mean.par_chunks(per).zip(rstd.par_chunks(per)))
        .map(|((dinp, (dout, inp)), (mean, rstd))| {
            let mut part = vec![0f32; 2 * cols];
            let (pw, pb) = part.split_at_mut(cols);
            let mut norm = vec![0f32; cols];
            let mut wd = vec![0f32; cols];
            for (r, ((di, g), x)) in dinp
                .chunks_mut(cols)
                .zip(dout.chunks(cols))
                .zip(inp.chunks(cols))
                .enumerate()
            {
                let (m, s) = (mean[r], rstd[r]);
                for (((n, w), &x), (&g, &wt)) in norm
                    .iter_mut()
                    .zip(wd.iter_mut())
                    .zip(x)
                    .zip(g.iter().zip(weight))
                {
                    *n = (x - m) * s;
                    *w = wt * g;
                }
                let mean_wd = sum(&wd) / cols as f32;
                let mean_wd_norm = dot(&wd, &norm) / cols as f32;
                for (((d, &w), &n), (&g, (pw, pb))) in di
                    .iter_mut()
                    .zip(&wd)
                    .zip(&norm)
                    .zip(g.iter().zip(pw.iter_mut().zip(pb.iter_mut())))
                {
                    *d += (w - mean_wd - n * mean_wd_norm) * s;
                    *pw += n * g;
                    *pb += g;
                }
            }
            part
        })
        .collect();
    dweight[..cols]
        .par_iter_mut()
        .zip(dbias[..cols].par_iter_mut())
        .enumerate()
        .for_each(|(j, (dw, db))| {
            let (mut sw, mut sb) = (0f32, 0f32);
            for p in &partials {
                sw += p[j];
                sb += p[cols + j];
            }
            *dw += sw;
            *db += sb;
        });
}
