//! What can go wrong while reading a run directory or writing its report.

use std::path::{Path, PathBuf};

/// Every error names the file (and line, where there is one) so the user
/// can open it and see the problem.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}: {problem}", path.display())]
    Malformed {
        path: PathBuf,
        line: usize,
        problem: String,
    },
    #[error("{}: not a run directory (it does not exist or is not a directory)", path.display())]
    NotARunDir { path: PathBuf },
}

impl ReportError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        ReportError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn malformed(path: &Path, line: usize, problem: impl Into<String>) -> Self {
        ReportError::Malformed {
            path: path.to_path_buf(),
            line,
            problem: problem.into(),
        }
    }
}
