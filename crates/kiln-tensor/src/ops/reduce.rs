//! Reductions into a step-stats slot and the step's control values.

use rayon::prelude::*;

use super::CHUNK;

/// Sum in f64: fixed chunks, each summed in four f64 lanes, then the chunk
/// sums added in order (deterministic for any thread count).
pub fn sum(x: &[f32]) -> f64 {
    lanes(x, |v| v)
}

/// Sum of squares in f64, same order as [`sum`] (the former `sum_squares` op).
pub fn sum_squares(x: &[f32]) -> f64 {
    lanes(x, |v| v * v)
}

fn lanes(x: &[f32], f: impl Fn(f64) -> f64 + Sync) -> f64 {
    let partial: Vec<f64> = x
        .par_chunks(CHUNK)
        .map(|c| {
            let mut acc = [0f64; 4];
            let quads = c.chunks_exact(4);
            let rest = quads.remainder();
            for q in quads {
                for l in 0..4 {
                    acc[l] += f(q[l] as f64);
                }
            }
            let mut s = (acc[0] + acc[2]) + (acc[1] + acc[3]);
            for &v in rest {
                s += f(v as f64);
            }
            s
        })
        .collect();
    partial.iter().sum()
}

/// `max |x|`; NaN wins (returned as soon as one is seen in order).
pub fn max_abs(x: &[f32]) -> f32 {
    let partial: Vec<f32> = x
        .par_chunks(CHUNK)
        .map(|c| {
            let mut m = 0f32;
            for &v in c {
                if v.is_nan() {
                    return f32::NAN;
                }
                m = m.max(v.abs());
            }
            m
        })
        .collect();
    partial.iter().fold(0f32, |a, &b| {
        if a.is_nan() || b.is_nan() {
            f32::NAN
        } else {
            a.max(b)
        }
    })
}
