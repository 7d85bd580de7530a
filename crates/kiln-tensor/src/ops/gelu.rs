//! GELU, tanh approximation (GPT-2's `gelu_new`).

use rayon::prelude::*;

use super::fastmath::sigmoid;
use super::CHUNK;

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const COEF: f32 = 0.044_715;

/// `0.5 x (1 + tanh(u))` written as `x * sigmoid(2u)` (the same function),
/// which stays accurate in both tails and vectorises.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    let u = SQRT_2_OVER_PI * (x + COEF * x * x * x);
    x * sigmoid(2.0 * u)
}

/// d gelu(x) / dx = s + x * 2 s (1 - s) * u'(x), with s = sigmoid(2u)
/// (llm.c's `0.5 (1 + tanh) + x 0.5 sech^2 u'` in sigmoid form).
#[inline(always)]
pub fn gelu_grad(x: f32) -> f32 {
    let u = SQRT_2_OVER_PI * (x + COEF * x * x * x);
    let s = sigmoid(2.0 * u);
    let du = SQRT_2_OVER_PI * (1.0 + 3.0 * COEF * x * x);
    s + x * 2.0 * s * (1.0 - s) * du
}

simd_fn! {
    pub(crate) fn forward_chunk(out: &mut [f32], inp: &[f32]) {
        for (o, &x) in out.iter_mut().zip(inp) {
            *o = gelu(x);
        }
    }
}

simd_fn! {
    fn backward_chunk(dinp: &mut [f32], inp: &[f32], dout: &[f32]) {
        for ((d, &x), &g) in dinp.iter_mut().zip(inp).zip(dout) {
            *d += gelu_grad(x) * g;
        }
    }
}

pub fn forward(out: &mut [f32], inp: &[f32]) {
    out.par_chunks_mut(CHUNK)
        .zip(inp.par_chunks(CHUNK))
        .for_each(|(o, x)| forward_chunk(o, x));
}

/// `dinp += gelu'(inp) * dout`.
pub fn backward(dinp: &mut [f32], inp: &[f32], dout: &[f32]) {
    dinp.par_chunks_mut(CHUNK)
        .zip(inp.par_chunks(CHUNK).zip(dout.par_chunks(CHUNK)))
        .for_each(|(d, (x, g))| backward_chunk(d, x, g));
}
