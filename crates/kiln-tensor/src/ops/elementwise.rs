//! Residual add, axpy, scaling.

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

/// `dst += alpha * src` (`alpha == 1` gives exactly `dst += src`).
pub fn axpy(dst: &mut [f32], src: &[f32], alpha: f32) {
    dst.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(d, s)| {
            for (d, s) in d.iter_mut().zip(s) {
                *d += alpha * s;
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
