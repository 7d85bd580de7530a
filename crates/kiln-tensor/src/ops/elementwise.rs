//! Residual add/accumulate, scaling, sums of squares.

use rayon::prelude::*;

use super::CHUNK;

/// `out = a + b`.
pub fn add(out: &mut [f32], a: &[f32], b: &[f32]) {
    out.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(o, (a, b))| {
            for ((o, a), b) in o.iter_mut().zip(a).zip(b) {
                *o = a + b;
            }
        });
}

/// `dst += src`.
pub fn accumulate(dst: &mut [f32], src: &[f32]) {
    dst.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(d, s)| {
            for (d, s) in d.iter_mut().zip(s) {
                *d += s;
            }
        });
}

/// `buf *= factor`.
pub fn scale(buf: &mut [f32], factor: f32) {
    buf.par_chunks_mut(CHUNK).for_each(|c| {
        for v in c {
            *v *= factor;
        }
    });
}

/// Sum of squares in f64: fixed chunks, each summed in four f64 lanes, then
/// the chunk sums added in order.
pub fn sum_squares(x: &[f32]) -> f64 {
    let partial: Vec<f64> = x
        .par_chunks(CHUNK)
        .map(|c| {
            let mut acc = [0f64; 4];
            let quads = c.chunks_exact(4);
            let rest = quads.remainder();
            for q in quads {
                for l in 0..4 {
                    let v = q[l] as f64;
                    acc[l] += v * v;
                }
            }
            let mut s = (acc[0] + acc[2]) + (acc[1] + acc[3]);
            for &v in rest {
                s += (v as f64) * (v as f64);
            }
            s
        })
        .collect();
    partial.iter().sum()
}
