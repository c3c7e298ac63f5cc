//! Errors of the serving crate.

/// What can stop the server from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A setting is wrong; the message names it.
    #[error("serve config: {0}")]
    Config(String),
    /// The address could not be bound or the runtime not started.
    #[error("{0}")]
    Io(String),
    /// The engine failed its warm-up.
    #[error("warm-up failed: {0}")]
    Engine(#[from] streamrec_runtime::RuntimeError),
}
