use std::path::PathBuf;

use kiln_abi::BackendError;

/// Why a model call failed. Display names the file and the problem.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A checkpoint or config file that exists but is not what kiln needs.
    #[error("checkpoint {}: {problem}", path.display())]
    Format { path: PathBuf, problem: String },
    /// A configuration that cannot describe a model.
    #[error("model config: {0}")]
    Config(String),
    /// Bad arguments to forward/backward/generate (token out of range, ...).
    #[error("model input: {0}")]
    Input(String),
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.into(),
            source,
        }
    }
    pub(crate) fn format(path: impl Into<PathBuf>, problem: impl Into<String>) -> Self {
        ModelError::Format {
            path: path.into(),
            problem: problem.into(),
        }
    }
}
