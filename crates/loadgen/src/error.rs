//! The load generator's error type: every message is one line naming the flag, file or field.

use std::path::PathBuf;

/// Everything that can go wrong before or around a run. Failed requests are not errors: they
/// are counted in the results.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A bad setting (a flag or an option of the library); the message names it.
    #[error("{0}")]
    Invalid(String),
    /// A file that could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A file whose content is wrong; the message names the line or field.
    #[error("{}: {msg}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// The server could not be reached or answered something unusable (outside a run).
    #[error("{0}")]
    Http(String),
}

impl LoadError {
    /// A bad setting.
    pub fn invalid(msg: impl Into<String>) -> Self {
        LoadError::Invalid(msg.into())
    }

    /// A file with bad content.
    pub fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        LoadError::Format {
            path: path.into(),
            msg: msg.into(),
        }
    }

    /// A file that could not be read or written.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        LoadError::Io {
            path: path.into(),
            source,
        }
    }
}
