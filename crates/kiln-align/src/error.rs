//! The error every alignment API returns; each variant names the file,
//! setting or input involved.

use std::path::PathBuf;

use kiln_model::ModelError;
use kiln_optim::OptimError;

use crate::optim::DIVERGENCE_FACTOR;

#[derive(Debug, thiserror::Error)]
pub enum AlignError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("optimizer: {0}")]
    Optim(#[from] OptimError),
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    #[error(transparent)]
    Chat(#[from] kiln_tokenizer::ChatError),
    #[error("tokenizer {}: {problem}", path.display())]
    Tokenizer { path: PathBuf, problem: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A saved model / head directory that cannot be used.
    #[error("{}: {problem}", path.display())]
    Format { path: PathBuf, problem: String },
    /// A setting that makes no sense (the message names it and the fix).
    #[error("config: {0}")]
    Config(String),
    /// A data-parallel collective failed (another rank died or timed out;
    /// the message names the rank and the operation).
    #[error("data parallel: {0}")]
    Parallel(String),
    /// Inputs of the wrong shape or order of calls (a caller bug).
    #[error("{0}")]
    Input(String),
    #[error(
        "stopped at step {step}: {limit} consecutive steps had a non-finite or diverging loss \
         (over {DIVERGENCE_FACTOR}x the first step's) or a non-finite gradient norm (last loss \
         {loss}, grad norm {grad_norm}); nothing was saved. Lower the learning rate or check the data"
    )]
    NonFinite {
        step: u64,
        limit: u32,
        loss: f32,
        grad_norm: f32,
    },
}

impl AlignError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        AlignError::Io {
            path: path.into(),
            source,
        }
    }
    pub fn format(path: impl Into<PathBuf>, problem: impl Into<String>) -> Self {
        AlignError::Format {
            path: path.into(),
            problem: problem.into(),
        }
    }
}

impl From<kiln_abi::BackendError> for AlignError {
    fn from(e: kiln_abi::BackendError) -> Self {
        AlignError::Model(ModelError::Backend(e))
    }
}
