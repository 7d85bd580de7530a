//! Why training stopped; every variant names the file or setting involved.

use std::path::PathBuf;

use kiln_model::ModelError;
use kiln_optim::OptimError;

use crate::loader::DataError;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("optimizer: {0}")]
    Optim(#[from] OptimError),
    /// A data-parallel collective failed (names the rank and the operation).
    #[error("data parallel: {0}")]
    Parallel(#[from] kiln_parallel::data_parallel::DpError),
    /// A tensor-parallel layout or collective failed.
    #[error("tensor parallel: {0}")]
    Tensor(#[from] kiln_parallel::tensor_parallel::TpError),
    /// A checkpoint directory or training-state file that cannot be used.
    #[error("checkpoint {}: {problem}", path.display())]
    Checkpoint { path: PathBuf, problem: String },
    /// A run directory in a state the command cannot work with.
    #[error("run directory {}: {problem}", path.display())]
    RunDir { path: PathBuf, problem: String },
    #[error("training config: {0}")]
    Config(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "stopped at step {step}: {limit} consecutive steps had a non-finite loss or gradient \
         norm (last loss {loss}, grad norm {grad_norm}); lower --lr, check the data, or resume \
         from an earlier checkpoint"
    )]
    NonFinite {
        step: u64,
        limit: u32,
        loss: f32,
        grad_norm: f32,
    },
}

impl TrainError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::Io {
            path: path.into(),
            source,
        }
    }
    pub(crate) fn checkpoint(path: impl Into<PathBuf>, problem: impl Into<String>) -> Self {
        TrainError::Checkpoint {
            path: path.into(),
            problem: problem.into(),
        }
    }
}
