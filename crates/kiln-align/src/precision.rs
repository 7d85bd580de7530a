//! Post-training precision: f32, or bf16 mixed precision (16-bit weights,
//! activations and gradients; f32 master weights and AdamW moments; the
//! optimizer rewrites the 16-bit copies after each update).
//!
//! f16 is refused here: it needs a dynamic loss scale on every backward of
//! every objective, which only pretraining has (kiln-train's `LossScaler`).

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
    match Precision::parse(p).map_err(AlignError::Config)? {
        Precision::F16 => Err(AlignError::Config(
            "precision f16 needs a dynamic loss scale, which post-training does not have \
             (only pretraining does); use bf16: same memory, f32's range, no scaling"
                .into(),
        )),
        ok => Ok(ok),
    }
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
