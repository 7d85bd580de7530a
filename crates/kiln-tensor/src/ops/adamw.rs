//! AdamW, in PyTorch's `torch.optim.AdamW` (single-tensor, non-fused) order.

use rayon::prelude::*;

use super::CHUNK;

/// Hyper-parameters of one step; `step` counts from 1.
#[derive(Clone, Copy, Debug)]
pub struct Hyper {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub grad_scale: f32,
    /// `control[STAT_GRAD_FACTOR]`, multiplied in after `grad_scale`.
    pub grad_factor: Option<f32>,
    pub step: u64,
}

pub fn step(params: &mut [f32], grads: &[f32], m: &mut [f32], v: &mut [f32], hp: Hyper) {
    // Bias corrections in f64 like PyTorch (Python floats), then used as f32.
    let bc1 = 1.0 - (hp.beta1 as f64).powf(hp.step as f64);
    let bc2 = 1.0 - (hp.beta2 as f64).powf(hp.step as f64);
    let step_size = (hp.lr as f64 / bc1) as f32;
    let bc2_sqrt = bc2.sqrt() as f32;
    let decay = 1.0 - hp.lr * hp.weight_decay;
    let (b1, b2, eps, gs) = (hp.beta1, hp.beta2, hp.eps, hp.grad_scale);
    let factor = hp.grad_factor;
    params
        .par_chunks_mut(CHUNK)
        .zip(grads.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
        .for_each(|((p, g), (m, v))| {
            for ((p, &g), (m, v)) in p.iter_mut().zip(g).zip(m.iter_mut().zip(v.iter_mut())) {
                let mut g = g * gs;
                if let Some(f) = factor {
                    g *= f;
                }
                *p *= decay;
                *m += (1.0 - b1) * (g - *m);
                *v = *v * b2 + (1.0 - b2) * g * g;
                let denom = v.sqrt() / bc2_sqrt + eps;
                *p -= step_size * (*m / denom);
            }
        });
}
