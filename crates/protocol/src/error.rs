//! The protocol's errors: every one names the tensor (or the body, input or output) and the
//! problem, in one line that a server returns as a 400 body as it is.
//!
//! Causes (a JSON syntax error, an I/O error) are part of the message and deliberately not the
//! `source()`, so a reporter that prints the chain says each cause once.

use std::path::PathBuf;

use streamrec_graph::limits::{MAX_BATCH, MAX_BATCH_INDICES};

use crate::response::OUTPUT;

/// Why a request body, file or tensor was refused.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The body (or the JSON header of a binary body) is not a KServe v2 request.
    #[error("request body is not a valid KServe v2 request: {0}")]
    Json(serde_json::Error),
    /// A request file is larger than the limit (its size known before reading).
    #[error("request body is {len} bytes, more than the limit of {max} (--max-request-bytes)")]
    FileTooLarge {
        /// The file's size.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// A request file turned out larger than the limit while reading (its size was unknown).
    #[error("request body is more than the limit of {max} bytes (--max-request-bytes)")]
    FileOverLimit {
        /// The limit.
        max: usize,
    },
    /// A request file could not be read.
    #[error("{}: {cause}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        cause: std::io::Error,
    },
    /// `Inference-Header-Content-Length` points past the end of the body.
    #[error("Inference-Header-Content-Length is {header} but the body has only {body} bytes")]
    HeaderLength {
        /// The header's value.
        header: usize,
        /// The body's length.
        body: usize,
    },
    /// Binary data is left over after the last input's.
    #[error("{0} bytes of binary data follow the last input's")]
    TrailingBinary(usize),
    /// A gRPC request whose `raw_input_contents` is not one entry per input.
    #[error(
        "raw_input_contents has {entries} entries for {inputs} inputs (one per input, in input order)"
    )]
    RawContentsCount {
        /// Entries in `raw_input_contents`.
        entries: usize,
        /// Inputs in the request.
        inputs: usize,
    },
    /// An input of the model is not in the request.
    #[error("input `{0}` is missing")]
    MissingInput(String),
    /// An input is given twice.
    #[error("input `{0}` appears more than once")]
    DuplicateInput(String),
    /// The request has an input the model does not have.
    #[error("input `{input}` is not an input of model `{model}`")]
    UnknownInput {
        /// The input's name.
        input: String,
        /// The model's name.
        model: String,
    },
    /// The request asks for an output the model does not have.
    #[error("output `{output}` is not an output of model `{model}` (it has `{OUTPUT}`)")]
    UnknownOutput {
        /// The output's name.
        output: String,
        /// The model's name.
        model: String,
    },
    /// One tensor is wrong.
    #[error("{tensor}: {problem}")]
    Tensor {
        /// The tensor's name (`dense`, a feature, or `<feature>_offsets`).
        tensor: String,
        /// What is wrong with it.
        problem: TensorProblem,
    },
}

impl RequestError {
    /// A problem of tensor `tensor`.
    pub fn tensor(tensor: impl Into<String>, problem: TensorProblem) -> Self {
        RequestError::Tensor {
            tensor: tensor.into(),
            problem,
        }
    }
}

/// What is wrong with one tensor.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum TensorProblem {
    /// `dense` is not FP32.
    #[error("datatype {0} is not supported, use FP32")]
    DenseDatatype(String),
    /// Indices or offsets are neither INT64 nor INT32.
    #[error("datatype {0} is not supported, use INT64 or INT32")]
    IndexDatatype(String),
    /// Binary data of a datatype this protocol does not decode.
    #[error(
        "datatype {0} is not supported (use FP32 for dense, INT64 or INT32 for indices and offsets)"
    )]
    BinaryDatatype(String),
    /// Offsets whose datatype differs from their indices'.
    #[error("datatype {datatype} differs from {feature}'s {expected}")]
    DatatypeDiffers {
        /// The offsets' datatype.
        datatype: String,
        /// The feature.
        feature: String,
        /// The indices' datatype.
        expected: String,
    },
    /// A negative dimension.
    #[error("dimension {dim} of shape {shape:?} is {value}, must be >= 0")]
    NegativeDimension {
        /// Which dimension.
        dim: usize,
        /// The shape.
        shape: Vec<i64>,
        /// Its value.
        value: i64,
    },
    /// The product of the dimensions overflows.
    #[error("shape {shape:?} has too many elements (the product of its dimensions overflows)")]
    ShapeOverflow {
        /// The shape.
        shape: Vec<i64>,
    },
    /// Indices or offsets that are not one-dimensional.
    #[error("shape {shape:?} must be one-dimensional [{dim}]")]
    NotOneDimensional {
        /// The shape.
        shape: Vec<i64>,
        /// The one dimension's name (`N` or `B`).
        dim: &'static str,
    },
    /// More values than a limit allows.
    #[error("shape {shape:?} has {count} values, more than the limit of {max} ({limit})")]
    ShapeOverLimit {
        /// The shape.
        shape: Vec<i64>,
        /// Its number of values.
        count: usize,
        /// The limit.
        max: usize,
        /// The limit's name.
        limit: &'static str,
    },
    /// A one-dimensional shape that does not match the number of values.
    #[error("shape {shape:?} does not match its {values} values")]
    ShapeMismatch {
        /// The shape.
        shape: Vec<i64>,
        /// The number of values given.
        values: usize,
    },
    /// `dense` is not `[B, width]`.
    #[error("shape {shape:?} must be [B, {width}]")]
    DenseShape {
        /// The shape.
        shape: Vec<i64>,
        /// The model's dense width.
        width: usize,
    },
    /// `dense` has no samples.
    #[error("shape {shape:?} has batch size B = 0, must be > 0")]
    EmptyBatch {
        /// The shape.
        shape: Vec<i64>,
    },
    /// More samples than [`MAX_BATCH`].
    #[error(
        "shape {shape:?} has batch size B = {size}, more than the limit of {MAX_BATCH} (limits::MAX_BATCH)"
    )]
    BatchOverLimit {
        /// The shape.
        shape: Vec<i64>,
        /// The batch size.
        size: usize,
    },
    /// `dense` has a different number of values than its shape.
    #[error("shape {shape:?} needs {need} values, got {got}")]
    DenseCount {
        /// The shape.
        shape: Vec<i64>,
        /// Values the shape needs.
        need: usize,
        /// Values given.
        got: usize,
    },
    /// An index or offset that is not an integer.
    #[error("value at position {position} is {value}, expected an integer")]
    NotAnInteger {
        /// Its position in the flat data.
        position: usize,
        /// The value as read.
        value: String,
    },
    /// An index or offset outside its datatype.
    #[error("value at position {position} is {value}, outside {datatype}")]
    OutsideDatatype {
        /// Its position in the flat data.
        position: usize,
        /// The value as read.
        value: String,
        /// `INT64` or `INT32`.
        datatype: String,
    },
    /// A dense value that is NaN or infinite.
    #[error("value at position {position} is {value}, must be finite")]
    NotFinite {
        /// Its position in the flat data.
        position: usize,
        /// The value.
        value: f32,
    },
    /// Not one offset per sample.
    #[error("expected {expected} offsets (one per sample), got {got}")]
    OffsetCount {
        /// The batch size.
        expected: usize,
        /// Offsets given.
        got: usize,
    },
    /// More indices than [`MAX_BATCH_INDICES`].
    #[error(
        "{count} indices, more than the limit of {MAX_BATCH_INDICES} (limits::MAX_BATCH_INDICES)"
    )]
    TooManyIndices {
        /// Indices given.
        count: usize,
    },
    /// The first offset is not 0.
    #[error("position 0 is {value}, must be 0")]
    FirstOffset {
        /// The first offset.
        value: i64,
    },
    /// An offset smaller than the one before it.
    #[error(
        "position {position} is {value}, less than the previous offset {previous} (offsets must not decrease)"
    )]
    DecreasingOffset {
        /// Its position.
        position: usize,
        /// The offset.
        value: i64,
        /// The offset before it.
        previous: i64,
    },
    /// An offset past the end of the indices.
    #[error("position {position} is {value}, beyond the {indices} indices")]
    OffsetPastEnd {
        /// Its position.
        position: usize,
        /// The offset.
        value: i64,
        /// The number of indices.
        indices: i64,
    },
    /// An index outside its embedding table.
    #[error("index at position {position} is {value}, out of range for a table of {rows} rows")]
    IndexOutOfRange {
        /// Its position.
        position: usize,
        /// The index.
        value: i64,
        /// The table's rows.
        rows: i64,
    },
    /// Both JSON `data` and binary data.
    #[error("has both `data` and `parameters.binary_data_size`")]
    BothData,
    /// A gRPC input with typed `contents` and an entry in `raw_input_contents`.
    #[error("has both `contents` and an entry in `raw_input_contents`")]
    BothContents,
    /// Binary data that runs past the end of the body.
    #[error("binary_data_size {size} runs past the end of the binary data ({left} bytes left)")]
    BinaryPastEnd {
        /// The declared size.
        size: u64,
        /// Bytes left in the body.
        left: usize,
    },
    /// Neither JSON `data` nor binary data.
    #[error(
        "no data: give `data`, or `parameters.binary_data_size` with binary data (Inference-Header-Content-Length)"
    )]
    NoData,
    /// Binary data whose size is not a whole number of elements.
    #[error("binary_data_size {size} is not a multiple of the {width}-byte {datatype} element")]
    BinarySize {
        /// The declared size.
        size: usize,
        /// The element's bytes.
        width: usize,
        /// The datatype.
        datatype: String,
    },
}

/// Result alias of this crate.
pub type Result<T, E = RequestError> = std::result::Result<T, E>;
