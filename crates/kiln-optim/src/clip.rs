//! Global-norm gradient clipping, computed on the backend.
//!
//! Every gradient's sum of squares is accumulated into one slot of a
//! step-stats block (`kiln_abi::stats`) by the backend's `reduce`, and the
//! backend's `step_control` turns it into the factor AdamW applies: no host
//! read per tensor.

use kiln_abi::stats::{STAT_GRAD_FACTOR, STAT_GRAD_NORM, STAT_GRAD_SUMSQ, STAT_SLOTS};
use kiln_abi::{BackendBox, BackendExt, BufId, DType, IntoBResult, Reduce};

use crate::{OptimError, ParamRef};

/// `max_norm` as `step_control` takes it (0 = no clipping), or an error for
/// a non-positive or non-finite limit.
pub fn clip_limit(max_norm: Option<f32>) -> Result<f32, OptimError> {
    match max_norm {
        Some(max) if max <= 0.0 || !max.is_finite() => Err(OptimError::Config(format!(
            "max grad norm must be a positive number, got {max}"
        ))),
        Some(max) => Ok(max),
        None => Ok(0.0),
    }
}

/// Adds every gradient's sum of squares into `stats[STAT_GRAD_SUMSQ]`, then
/// writes the clipping factor (times `inv_loss_scale`), the skip flag and
/// the norm into `stats` (one step-stats block, already holding the step's
/// loss). Nothing is read back.
pub fn grad_norm_on_backend(
    be: &mut BackendBox,
    params: &[ParamRef],
    stats: BufId,
    max_norm: Option<f32>,
    inv_loss_scale: f32,
) -> Result<(), OptimError> {
    let limit = clip_limit(max_norm)?;
    for p in params {
        be.reduce(Reduce::SumSquares, stats, STAT_GRAD_SUMSQ, p.grad, p.len)
            .ok_or_err()?;
    }
    be.step_control(stats, limit, inv_loss_scale).ok_or_err()?;
    Ok(())
}

/// Global L2 norm of all gradients and the factor `min(1, max_norm / (norm
/// + 1e-6))` to pass to [`crate::AdamW::step`] as `grad_scale` (1 when
/// `max_norm` is `None`), with one host read. A NaN or infinite norm is an
/// error ([`OptimError::NonFiniteGradNorm`]), never a silently clipped step.
pub fn clip_scale(
    be: &mut BackendBox,
    params: &[ParamRef],
    max_norm: Option<f32>,
) -> Result<(f32, f32), OptimError> {
    clip_scale_unscaling(be, params, max_norm, 1.0)
}

/// [`clip_scale`] for gradients of `loss_scale * loss` (f16's dynamic loss
/// scale): the norm returned is the unscaled one, and the factor includes
/// `inv_loss_scale`, so AdamW sees the gradients of the loss itself.
pub fn clip_scale_unscaling(
    be: &mut BackendBox,
    params: &[ParamRef],
    max_norm: Option<f32>,
    inv_loss_scale: f32,
) -> Result<(f32, f32), OptimError> {
    let stats = be.alloc_buf(DType::F32, STAT_SLOTS)?;
    let result = grad_norm_on_backend(be, params, stats, max_norm, inv_loss_scale)
        .and_then(|()| Ok(be.download_f32(stats)?));
    be.free_buf(stats)?;
    let s = result?;
    let norm = s[STAT_GRAD_NORM];
    if !norm.is_finite() || !s[STAT_GRAD_SUMSQ].is_finite() {
        return Err(OptimError::NonFiniteGradNorm {
            norm: s[STAT_GRAD_SUMSQ].sqrt() as f64,
        });
    }
    Ok((norm, s[STAT_GRAD_FACTOR]))
}
