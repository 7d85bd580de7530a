//! Errors of generation-based evaluation.

use kiln_model::ModelError;
use kiln_tokenizer::ChatError;

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("model: {0}")]
    Model(#[from] ModelError),
    #[error("chat template: {0}")]
    Chat(#[from] ChatError),
    /// Inputs that do not fit together (e.g. evaluations of different tasks).
    #[error("{0}")]
    Input(String),
}
