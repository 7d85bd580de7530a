//! GELU, tanh approximation (GPT-2's `gelu_new`).

use rayon::prelude::*;

use super::CHUNK;

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const COEF: f32 = 0.044_715;

#[inline]
pub fn gelu(x: f32) -> f32 {
    let u = SQRT_2_OVER_PI * (x + COEF * x * x * x);
    0.5 * x * (1.0 + u.tanh())
}

/// d gelu(x) / dx.
#[inline]
pub fn gelu_grad(x: f32) -> f32 {
    let u = SQRT_2_OVER_PI * (x + COEF * x * x * x);
    let th = u.tanh();
    let sech2 = 1.0 - th * th;
    0.5 * (1.0 + th) + 0.5 * x * sech2 * SQRT_2_OVER_PI * (1.0 + 3.0 * COEF * x * x)
}

pub fn forward(out: &mut [f32], inp: &[f32]) {
    out.par_chunks_mut(CHUNK)
        .zip(inp.par_chunks(CHUNK))
        .for_each(|(o, x)| {
            for (o, &x) in o.iter_mut().zip(x) {
                *o = gelu(x);
            }
        });
}

/// `dinp += gelu'(inp) * dout`.
pub fn backward(dinp: &mut [f32], inp: &[f32], dout: &[f32]) {
    dinp.par_chunks_mut(CHUNK)
        .zip(inp.par_chunks(CHUNK).zip(dout.par_chunks(CHUNK)))
        .for_each(|(d, (x, g))| {
            for ((d, &x), &g) in d.iter_mut().zip(x).zip(g) {
                *d += gelu_grad(x) * g;
            }
        });
}
