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
pub use clip::clip_scale;
pub use error::OptimError;
pub use schedule::LrSchedule;

use kiln_abi::BufId;

/// One parameter tensor as the optimizer sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParamRef {
    /// f32 values, updated in place.
    pub value: BufId,
    /// f32 gradients of the same length.
    pub grad: BufId,
    /// Number of elements.
    pub len: usize,
    /// Whether weight decay applies (2-D weights yes; biases and norms no).
    pub decay: bool,
}
