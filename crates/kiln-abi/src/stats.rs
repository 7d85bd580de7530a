//! The step-statistics slots: how a training step keeps its loss, gradient
//! norm and skip decision on the backend and reads the host once.
//!
//! A step-stats block is `STAT_SLOTS` consecutive f32 elements (a view of a
//! larger buffer is fine). The forward pass adds each micro-batch's summed
//! loss into `STAT_LOSS` ([`crate::Backend::reduce`]); the backward pass adds
//! each gradient's sum of squares into `STAT_GRAD_SUMSQ`; a data-parallel run
//! all-reduces the block; [`crate::Backend::step_control`] then writes the
//! clipping factor and the skip flag, which [`crate::AdamWArgs::control`]
//! reads. The host downloads the block once, after the optimizer step, for
//! its logs and its loss scaler.

/// Sum of the step's token losses (divide by the token count on the host).
pub const STAT_LOSS: usize = 0;
/// Sum of squares of every gradient element (still multiplied by the loss scale squared).
pub const STAT_GRAD_SUMSQ: usize = 1;
/// Written by `step_control`: the factor AdamW multiplies gradients by
/// (unscale and clip in one).
pub const STAT_GRAD_FACTOR: usize = 2;
/// Written by `step_control`: 1 when the loss or a gradient is not finite
/// (the step is skipped), else 0.
pub const STAT_SKIP: usize = 3;
/// Written by `step_control`: the global gradient norm after unscaling.
pub const STAT_GRAD_NORM: usize = 4;
/// Elements of one step-stats block.
pub const STAT_SLOTS: usize = 8;

/// What `step_control` computes, as a reference for backends and tests:
/// `(factor, skip, norm)` from the summed loss and squared-gradient sum.
///
/// `norm = sqrt(sumsq) * inv_loss_scale`; with `max_norm > 0` and
/// `norm > max_norm` the gradients are clipped by `max_norm / (norm + 1e-6)`
/// (PyTorch `clip_grad_norm_`); the factor includes `inv_loss_scale`.
pub fn step_control_reference(
    loss: f32,
    sumsq: f32,
    max_norm: f32,
    inv_loss_scale: f32,
) -> (f32, f32, f32) {
    let norm = ((sumsq as f64).sqrt() * inv_loss_scale as f64) as f32;
    let skip = !(loss.is_finite() && sumsq.is_finite());
    let clip = if max_norm > 0.0 && norm > max_norm {
        max_norm / (norm + 1e-6)
    } else {
        1.0
    };
    (
        if skip { 0.0 } else { clip * inv_loss_scale },
        if skip { 1.0 } else { 0.0 },
        norm,
    )
}
