//! Post-training precision: f32, or bf16/f16 mixed precision (16-bit
//! weights, activations and gradients; f32 master weights and AdamW
//! moments; the optimizer rewrites the 16-bit copies after each update).
//!
//! f16 adds a dynamic loss scale: every objective multiplies its upstream
//! gradients by [`crate::optim::AlignOptimizer::loss_scale`] and the
//! optimizer unscales, backs off on overflow and grows the scale as
//! PyTorch's GradScaler does.

use kiln_abi::BackendBox;
use kiln_model::{Gpt, Precision};

use crate::AlignError;

/// Whether a config's precision is the default (kept out of serialised
/// configs, so pipeline fingerprints of f32 runs do not change).
pub fn is_f32(p: &str) -> bool {
    p == "f32"
}

pub fn default_precision() -> String {
    "f32".into()
}

/// Checks a post-training precision setting.
pub fn parse_precision(p: &str) -> Result<Precision, AlignError> {
    Precision::parse(p).map_err(AlignError::Config)
}

/// Puts `model` in the policy named `p` (before its optimizer is built:
/// gradients are reallocated).
pub fn apply_precision(be: &mut BackendBox, model: &mut Gpt, p: &str) -> Result<(), AlignError> {
    let precision = parse_precision(p)?;
    if model.precision() != precision {
        model.set_precision(be, precision)?;
    }
    Ok(())
}
