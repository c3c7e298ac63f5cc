//! Errors of the runtime: bad inputs, bad weights, backend failures.

use std::path::PathBuf;

/// Everything that can go wrong while loading a model or running a request.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A request input is malformed; the message names the input, position and value.
    #[error("{0}")]
    Input(String),
    /// A weight tensor is missing or has the wrong shape or dtype.
    #[error("weights: {0}")]
    Weights(String),
    /// A weight tensor read from a file holds a value that is not finite (NaN, +inf or -inf).
    #[error(
        "weights: {}: tensor `{tensor}` holds {value} at {}",
        .path.display(),
        describe_index(*.index, .shape)
    )]
    NonFinite {
        /// The weights file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The first value that is not finite.
        value: f32,
        /// Its flat (row-major) index in the tensor.
        index: usize,
        /// The tensor's shape.
        shape: Vec<usize>,
    },
    /// A file could not be read or written.
    #[error("{path}: {reason}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The batch is larger than the engine was built for.
    #[error("batch size {batch} exceeds the engine's max batch {max}")]
    BatchTooLarge {
        /// Requested.
        batch: usize,
        /// Allowed.
        max: usize,
    },
    /// A kernel or stream failed while running a request.
    #[error("execution failed: {0}")]
    Execution(String),
    /// The device kernels could not be built or loaded (NVRTC rejected a source, the driver
    /// refused a module); the message carries NVRTC's log or the driver's error. Unlike
    /// [`RuntimeError::Unavailable`], a device and the libraries are there: this is a defect
    /// to fix, not a machine without CUDA.
    #[error("CUDA kernels could not be built: {0}")]
    Kernel(String),
    /// A captured graph no longer matches its buffers (they were reallocated); capture again.
    #[error("stale graph: {0}")]
    StaleGraph(String),
    /// The backend cannot be used (e.g. no CUDA device).
    #[error("{0}")]
    Unavailable(String),
    /// A planning or graph error.
    #[error(transparent)]
    Graph(#[from] streamrec_graph::GraphError),
    /// The CPU instruction set asked for cannot run here.
    #[error(transparent)]
    Isa(#[from] streamrec_kernels::cpu::IsaError),
}

/// Result alias of this crate.
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// Where a flat index lies in a tensor: `index 37`, and for a 2-D tensor
/// `index 37 (row 2, column 5)`.
pub(crate) fn describe_index(index: usize, shape: &[usize]) -> String {
    match shape {
        [_, cols] if *cols > 0 => format!(
            "index {index} (row {}, column {})",
            index / cols,
            index % cols
        ),
        _ => format!("index {index}"),
    }
}
