//! RMSNorm over the last dimension (Llama), forward and backward:
//! `out = x * rstd * w`, `rstd = 1/sqrt(mean(x^2) + eps)`.

use rayon::prelude::*;

use super::dot;

/// Rows per parallel task (fixed, so the `dweight` partials, one per task
/// added in task order, do not depend on the thread count).
const ROWS_PER_TASK: usize = 16;

pub fn forward(
    out: &mut [f32],
    rstd: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    cols: usize,
    eps: f32,
) {
    let per = ROWS_PER_TASK;
    out.par_chunks_mut(cols * per)
        .zip(rstd.par_chunks_mut(per))
        .zip(inp.par_chunks(cols * per))
        .for_each(|((out, rstd), inp)| {
            for (r, (o, x)) in out.chunks_mut(cols).zip(inp.chunks(cols)).enumerate() {
                let ms = dot(x, x) / cols as f32;
                let s = 1.0 / (ms + eps).sqrt();
                for ((o, &x), &w) in o.iter_mut().zip(x).zip(weight) {
                    *o = x * s * w;
                }
                rstd[r] = s;
            }
        });
}

/// Accumulates `dinp += rstd * (w*g - n * mean(w*g*n))` with `n = x * rstd`,
/// and `dweight += g * n`.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    dinp: &mut [f32],
    dweight: &mut [f32],
    dout: &[f32],
    inp: &[f32],
    weight: &[f32],
    rstd: &[f32],
    cols: usize,
) {
    let per = ROWS_PER_TASK;
    let partials: Vec<Vec<f32>> = dinp
        .par_chunks_mut(cols * per)
        .zip(dout.par_chunks(cols * per).zip(inp.par_chunks(cols * per)))
        .zip(rstd.par_chunks(per))
        .map(|((dinp, (dout, inp)), rstd)| {
            let mut pw = vec![0f32; cols];
            let mut norm = vec![0f32; cols];
            let mut wd = vec![0f32; cols];
            for (r, ((di, g), x)) in dinp
                .chunks_mut(cols)
                .zip(dout.chunks(cols))
                .zip(inp.chunks(cols))
                .enumerate()
            {
                let s = rstd[r];
                for (((n, w), &x), (&g, &wt)) in norm
                    .iter_mut()
                    .zip(wd.iter_mut())
                    .zip(x)
                    .zip(g.iter().zip(weight))
                {
                    *n = x * s;
                    *w = wt * g;
                }
                let mean_wd_norm = dot(&wd, &norm) / cols as f32;
                for (((d, &w), &n), (&g, pw)) in di
                    .iter_mut()
                    .zip(&wd)
                    .zip(&norm)
                    .zip(g.iter().zip(pw.iter_mut()))
                {
                    *d += (w - n * mean_wd_norm) * s;
                    *pw += n * g;
                }
            }
            pw
        })
        .collect();
    dweight[..cols]
        .par_iter_mut()
        .enumerate()
        .for_each(|(j, dw)| {
            let mut sw = 0f32;
            for p in &partials {
                sw += p[j];
            }
            *dw += sw;
        });
}
