//! Error types. Loading errors name the file and the field or line at fault.

use std::path::PathBuf;

/// A tokenizer file (or in-memory description) is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}: {location}: {problem}")]
pub struct LoadError {
    /// File path, or a short description such as `tokenizer.json (memory)`.
    pub source_name: String,
    /// The JSON field path (`model.merges[12]`) or `line N`.
    pub location: String,
    /// What is wrong and, where possible, how to fix it.
    pub problem: String,
}

impl LoadError {
    pub fn new(
        source_name: impl Into<String>,
        location: impl Into<String>,
        problem: impl Into<String>,
    ) -> Self {
        LoadError {
            source_name: source_name.into(),
            location: location.into(),
            problem: problem.into(),
        }
    }
}

/// Encoding refused the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error(
        "the text contains the special token {token:?} at byte {byte_offset}, which this call \
         does not allow; allow it (encode it as the special token) or encode it as plain text"
    )]
    DisallowedSpecial { token: String, byte_offset: usize },
}

/// Decoding failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("token id {0} is not in the vocabulary")]
    UnknownId(u32),
    #[error("the decoded bytes are not valid UTF-8 (valid up to byte {valid_up_to}); use decode_lossy or decode_bytes")]
    InvalidUtf8 { valid_up_to: usize },
}

/// Any tokenizer error, for callers that do not care which stage failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Encode(#[from] EncodeError),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("training: {0}")]
    Train(String),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
