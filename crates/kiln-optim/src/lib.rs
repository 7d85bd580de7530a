//! Optimisation pieces the training loop composes: AdamW over backend
//! buffers, global-norm gradient clipping and the learning-rate schedule.
//!
//! Depends only on kiln-abi: parameters are described by [`ParamRef`]s
//! (buffer ids plus length and whether weight decay applies), so the same
//! optimizer serves any model that keeps its parameters in backend buffers.

mod adamw;
mod clip;
mod error;
mod schedule;

pub use adamw::{AdamW, AdamWConfig, AdamWState};
pub use clip::{clip_limit, clip_scale, clip_scale_unscaling, grad_norm_on_backend};
pub use error::OptimError;
pub use schedule::LrSchedule;

use kiln_abi::BufId;

/// One parameter tensor as the optimizer sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParamRef {
    /// f32 values (the master copy), updated in place.
    pub value: BufId,
    /// Gradients of the same length (f32, or 16-bit under a mixed-precision policy).
    pub grad: BufId,
    /// The 16-bit working copy the model computes with under a
    /// mixed-precision policy; AdamW rewrites it from the master after each
    /// update. `None` in f32 training.
    pub value_16: Option<BufId>,
    /// Number of elements.
    pub len: usize,
    /// Whether weight decay applies (2-D weights yes; biases and norms no).
    pub decay: bool,
}
