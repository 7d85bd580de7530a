//! Global-norm gradient clipping.

use kiln_abi::{BackendBox, IntoBResult};

use crate::{OptimError, ParamRef};

/// Global L2 norm of all gradients (each tensor's sum of squares accumulated
/// in f64 by the backend) and the factor `min(1, max_norm / (norm + 1e-6))`
/// to pass to [`crate::AdamW::step`] as `grad_scale` (1 when `max_norm` is
/// `None`). A NaN or infinite norm is an error
/// ([`OptimError::NonFiniteGradNorm`]), never a silently clipped step.
pub fn clip_scale(
    be: &mut BackendBox,
    params: &[ParamRef],
    max_norm: Option<f32>,
) -> Result<(f32, f32), OptimError> {
    let mut sum = 0f64;
    for p in params {
        sum += be.sum_squares(p.grad, p.len).ok_or_err()?;
    }
    let norm = sum.sqrt();
    if !norm.is_finite() {
        return Err(OptimError::NonFiniteGradNorm { norm });
    }
    let scale = match max_norm {
        Some(max) if max <= 0.0 || !max.is_finite() => {
            return Err(OptimError::Config(format!(
                "max grad norm must be a positive number, got {max}"
            )))
        }
        Some(max) => (max as f64 / (norm + 1e-6)).min(1.0) as f32,
        None => 1.0,
    };
    Ok((norm as f32, scale))
}
