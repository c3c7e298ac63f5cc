//! Errors of the runtime: bad inputs, bad weights, backend failures.

use std::path::PathBuf;

use streamrec_graph::limits::{MAX_BATCH, MAX_BATCH_INDICES};

/// Everything that can go wrong while loading a model or running a request. Each variant
/// names what failed; the strings inside carry another library's own message (the driver's,
/// the allocator's, a panic's).
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A batch is not valid for the model (the engine's and the backends' own checks).
    #[error(transparent)]
    Batch(#[from] BatchError),
    /// A request or batch refused by the protocol's checks (naming the input, position and
    /// value).
    #[error(transparent)]
    Request(streamrec_protocol::RequestError),
    /// An engine or backend option out of range.
    #[error("{option} {reason}")]
    Config {
        /// The option.
        option: &'static str,
        /// Why it is refused.
        reason: String,
    },
    /// Memory the machine would not give.
    #[error("cannot allocate {what} ({reason}); {hint}")]
    Alloc {
        /// What the memory was for, with its size.
        what: String,
        /// The allocator's reason.
        reason: String,
        /// What to do about it.
        hint: &'static str,
    },
    /// An activation's size overflows.
    #[error("{op}: an activation of {batch} x {width} floats overflows")]
    ActivationOverflow {
        /// The op.
        op: String,
        /// The max batch.
        batch: usize,
        /// Its width.
        width: usize,
    },
    /// A weight tensor is missing, has the wrong shape or dtype, or cannot be held.
    #[error("weights: {0}")]
    Weights(#[from] WeightsError),
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
    /// An op of the CPU backend failed or panicked while running a request.
    #[error("execution failed: op `{op}`{}: {reason}", if *.panicked { " panicked" } else { "" })]
    Op {
        /// The op.
        op: String,
        /// Whether it panicked (a kernel's bounds check, for instance).
        panicked: bool,
        /// The error or the panic's message.
        reason: String,
    },
    /// A device call failed while running a request (the driver's message).
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
    /// The backend cannot be used here (no CUDA device, or a feature it lacks).
    #[error("{backend} backend unavailable: {reason}")]
    Unavailable {
        /// The backend (`cpu`, `CUDA`).
        backend: &'static str,
        /// Why.
        reason: String,
    },
    /// Per-op spans were asked for (a profile) where there are none.
    #[error("{0}")]
    NoOpSpans(NoSpans),
    /// A planning or graph error.
    #[error(transparent)]
    Graph(#[from] streamrec_graph::GraphError),
    /// The CPU instruction set asked for cannot run here.
    #[error(transparent)]
    Isa(#[from] streamrec_kernels::cpu::IsaError),
}

/// Why there are no per-op spans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NoSpans {
    /// The request ran as a CUDA-graph replay, timed only as a whole.
    #[error(
        "per-op times need eager execution: with CUDA graphs on, a request is timed only as a \
         whole graph replay (run with graphs off)"
    )]
    GraphReplay,
    /// Nothing was recorded.
    #[error("no per-op spans were recorded (was the engine built with tracing on?)")]
    NotRecorded,
}

/// What is wrong with a batch: the engine's checks of its shape and the limits (the values of
/// a request are checked by the protocol crate, [`streamrec_protocol::RequestError`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// No samples.
    #[error("batch size must be > 0")]
    Empty,
    /// More samples than the limit.
    #[error("{what} {size} is more than the limit of {MAX_BATCH} (limits::MAX_BATCH)")]
    TooManySamples {
        /// Which size (`batch size`, `the concatenated batch's size`, ...).
        what: &'static str,
        /// Its samples.
        size: usize,
    },
    /// More indices in one feature than the limit.
    #[error(
        "feature {feature} of the concatenated batch has {indices} indices, more than the \
         limit of {MAX_BATCH_INDICES} (limits::MAX_BATCH_INDICES)"
    )]
    TooManyIndices {
        /// The feature (spec order).
        feature: usize,
        /// Its indices.
        indices: usize,
    },
    /// `size * width` overflows.
    #[error("dense: [{size}, {width}] has too many values (the product overflows)")]
    DenseOverflow {
        /// Samples.
        size: usize,
        /// The model's dense width.
        width: usize,
    },
    /// The dense values do not fill `[size, width]`.
    #[error("dense: expected {expected} values ([{size}, {width}]), got {got}")]
    DenseCount {
        /// `size * width`.
        expected: usize,
        /// Samples.
        size: usize,
        /// The model's dense width.
        width: usize,
        /// Values given.
        got: usize,
    },
    /// Not one index list per feature of the model.
    #[error("expected {expected} sparse features, got {got}")]
    FeatureCount {
        /// The model's features.
        expected: usize,
        /// Given.
        got: usize,
    },
    /// Not one offset per sample.
    #[error("feature {feature}: expected {expected} offsets, got {got}")]
    OffsetCount {
        /// The feature (spec order).
        feature: usize,
        /// Samples.
        expected: usize,
        /// Given.
        got: usize,
    },
    /// Offsets out of order or past the indices.
    #[error("feature {feature}: offset {offset} at position {position} is not in order within 0..={len}")]
    OffsetOrder {
        /// The feature (spec order).
        feature: usize,
        /// The offset.
        offset: i64,
        /// Its position.
        position: usize,
        /// The feature's index count.
        len: i64,
    },
    /// An index outside its table.
    #[error("feature {feature}: index {index} out of range for a table of {rows} rows")]
    IndexRange {
        /// The feature (spec order).
        feature: usize,
        /// The index.
        index: i64,
        /// The table's rows.
        rows: usize,
    },
    /// More indices than the device's input packet can address.
    #[error("the batch has {indices} indices, more than one packet can address")]
    PacketOverflow {
        /// Indices over all features.
        indices: usize,
    },
    /// Concatenation of nothing.
    #[error("no batch to concatenate")]
    NothingToConcat,
    /// Concatenation of batches validated for different models.
    #[error("the batches to concatenate were validated for different models")]
    MixedModels,
    /// A batch validated for another model than the engine's.
    #[error("the batch was validated for another model than `{model}`")]
    OtherModel {
        /// The engine's model.
        model: String,
    },
}

/// What is wrong with the weights.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// The file is not safetensors.
    #[error("{}: not a safetensors file: {reason}", .path.display())]
    NotSafetensors {
        /// The file.
        path: PathBuf,
        /// The parser's reason.
        reason: String,
    },
    /// A tensor the graph needs is not there.
    #[error("{}tensor `{tensor}` is missing{}", at(.path), .expected.as_ref().map(|s| format!(" (expected f32 {s:?})")).unwrap_or_default())]
    Missing {
        /// The file, when read from one.
        path: Option<PathBuf>,
        /// The tensor.
        tensor: String,
        /// Its expected shape, when known.
        expected: Option<Vec<usize>>,
    },
    /// A tensor of another dtype than f32.
    #[error("{}tensor `{tensor}` has dtype {dtype}, expected F32", at(.path))]
    Dtype {
        /// The file.
        path: Option<PathBuf>,
        /// The tensor.
        tensor: String,
        /// Its dtype.
        dtype: String,
    },
    /// A tensor of another shape than its op needs.
    #[error("{}tensor `{tensor}` has shape {shape:?}, {needed_by} {expected:?}", at(.path))]
    Shape {
        /// The file, when read from one.
        path: Option<PathBuf>,
        /// The tensor.
        tensor: String,
        /// Its shape.
        shape: Vec<usize>,
        /// Who needs the other shape (`expected`, `op `x` needs`).
        needed_by: String,
        /// The shape needed.
        expected: Vec<usize>,
    },
    /// A tensor could not be written.
    #[error("tensor `{tensor}`: {reason}")]
    Write {
        /// The tensor.
        tensor: String,
        /// The writer's reason.
        reason: String,
    },
    /// A tensor too large to allocate.
    #[error("{tensor}: cannot allocate {len} floats ({reason}); {hint}")]
    Alloc {
        /// The tensor (or what it is for).
        tensor: String,
        /// Floats.
        len: usize,
        /// The allocator's reason.
        reason: String,
        /// What to do about it.
        hint: &'static str,
    },
    /// More bytes than the machine can address.
    #[error(
        "the model's weights need more bytes than this machine can address; shrink the tables \
         with --row-cap N (or `row_cap` in the spec)"
    )]
    Unaddressable,
    /// More bytes than the memory available.
    #[error(
        "the model's weights need {need_gib:.1} GiB but only {avail_gib:.1} GiB of memory is \
         available; shrink the tables with --row-cap N (or `row_cap` in the spec)"
    )]
    OverMemory {
        /// GiB needed.
        need_gib: f64,
        /// GiB available.
        avail_gib: f64,
    },
    /// A fold (a branch layer folded into its table) whose tensors do not fit together.
    #[error("fold: {0}")]
    Fold(String),
}

/// `path: ` or nothing.
fn at(path: &Option<PathBuf>) -> String {
    path.as_ref()
        .map(|p| format!("{}: ", p.display()))
        .unwrap_or_default()
}

impl From<streamrec_protocol::RequestError> for RuntimeError {
    fn from(e: streamrec_protocol::RequestError) -> Self {
        match e {
            streamrec_protocol::RequestError::Io { path, cause } => RuntimeError::Io {
                path,
                reason: cause.to_string(),
            },
            e => RuntimeError::Request(e),
        }
    }
}

impl RuntimeError {
    /// Whether the request (or batch) was at fault, not the engine: a refused input.
    pub fn is_input(&self) -> bool {
        matches!(self, RuntimeError::Batch(_) | RuntimeError::Request(_))
    }
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
