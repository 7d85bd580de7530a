use kiln_abi::BackendError;

/// Why an optimizer call failed.
#[derive(Debug, thiserror::Error)]
pub enum OptimError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The global gradient norm is NaN or infinite: the step must be skipped
    /// (or the run stopped); scaling by it would silently corrupt the weights.
    #[error("gradient norm is not finite ({norm}): a NaN or inf reached the gradients; skip this step or lower the learning rate / loss scale")]
    NonFiniteGradNorm { norm: f64 },
    /// The parameter list or a saved state does not match the optimizer.
    #[error("optimizer state mismatch: {0}")]
    Mismatch(String),
    #[error("invalid optimizer setting: {0}")]
    Config(String),
}
