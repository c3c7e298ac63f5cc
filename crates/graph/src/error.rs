//! Errors of the graph crate: spec validation, I/O and planning.

use std::path::PathBuf;

/// Everything that can go wrong while reading specs and building graphs or plans.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// A spec field is wrong.
    #[error("{field}: {reason}")]
    Spec {
        /// The field, e.g. `sparse[3].rows`.
        field: String,
        /// Why it is wrong.
        reason: String,
    },
    /// The TOML itself is malformed or has unknown fields.
    #[error("{0}")]
    Toml(String),
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Something else that is invalid (profiles, measured costs, plans).
    #[error("{0}")]
    Invalid(String),
}
