//! SiLU, sigmoid and ReLU, forward and backward (GELU has its own file).

use rayon::prelude::*;

use super::fastmath::sigmoid;
use super::CHUNK;

/// Which pointwise function (GELU is [`super::gelu`]).
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Silu,
    Sigmoid,
    Relu,
}

#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x * sigmoid(x)
}

/// d silu / dx = s (1 + x (1 - s)).
#[inline(always)]
pub fn silu_grad(x: f32) -> f32 {
    let s = sigmoid(x);
    s * (1.0 + x * (1.0 - s))
}

#[inline(always)]
fn apply(kind: Kind, x: f32) -> f32 {
    match kind {
        Kind::Silu => silu(x),
        Kind::Sigmoid => sigmoid(x),
        Kind::Relu => x.max(0.0),
    }
}

#[inline(always)]
fn grad(kind: Kind, x: f32) -> f32 {
    match kind {
        Kind::Silu => silu_grad(x),
        Kind::Sigmoid => {
            let s = sigmoid(x);
            s * (1.0 - s)
        }
        Kind::Relu => {
            if x > 0.0 {
                1.0
            } else {
                0.0
            }
        }
    }
}

simd_fn! {
    fn forward_chunk(kind: Kind, out: &mut [f32], inp: &[f32]) {
        for (o, &x) in out.iter_mut().zip(inp) {
            *o = apply(kind, x);
        }
    }
}

simd_fn! {
    fn backward_chunk(kind: Kind, dinp: &mut [f32], inp: &[f32], dout: &[f32]) {
        for ((d, &x), &g) in dinp.iter_mut().zip(inp).zip(dout) {
            *d += grad(kind, x) * g;
        }
    }
}

pub fn forward(kind: Kind, out: &mut [f32], inp: &[f32]) {
    out.par_chunks_mut(CHUNK)
        .zip(inp.par_chunks(CHUNK))
        .for_each(|(o, x)| forward_chunk(kind, o, x));
}

/// `dinp += f'(inp) * dout`.
pub fn backward(kind: Kind, dinp: &mut [f32], inp: &[f32], dout: &[f32]) {
    dinp.par_chunks_mut(CHUNK)
        .zip(inp.par_chunks(CHUNK).zip(dout.par_chunks(CHUNK)))
        .for_each(|(d, (x, g))| backward_chunk(kind, d, x, g));
}
