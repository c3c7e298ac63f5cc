//! StreamRec's KServe v2 wire format, in one home for the server, the load generator and
//! `streamrec run --input/--emit-request`.
//!
//! - [`request`]: [`InferRequest`], [`InferTensor`] and [`TensorData`] (one flat vector per
//!   tensor, deserialised without a generic JSON tree), request files with a size limit, and
//!   encoding as JSON or with Triton's binary tensor data extension.
//! - [`binary`]: [`decode`] an infer body as a server receives it (JSON or binary extension).
//! - [`validate`]: [`InferRequest::validate`] checks a request against a
//!   [`streamrec_graph::ModelSpec`] (names, shapes, datatypes, offsets, index ranges, finite
//!   values) and gives its values as [`ValidInputs`].
//! - [`grpc`]: the KServe v2 gRPC messages and service stubs ([`grpc::pb`]), and
//!   [`grpc::decode_infer`], which turns a `ModelInferRequest` into the same [`Decoded`] request.
//! - [`response`]: the `score` response (JSON or binary), model metadata, error bodies.
//! - [`limits`]: the default body limit and the request bounds; [`error`]: [`RequestError`],
//!   each naming the tensor and the problem.
//!
//! The crate knows no engine: the runtime turns [`ValidInputs`] into its `Batch` and a `Batch`
//! into a request ([`ToInputs`]).
//!
//! ```
//! use streamrec_protocol::{decode, InferRequest, InferTensor};
//!
//! let req = InferRequest {
//!     id: Some("r1".into()),
//!     inputs: vec![
//!         InferTensor::dense(1, 2, vec![0.5, -1.0]),
//!         InferTensor::ints("C1", "INT64", vec![3, 4]),
//!     ],
//! };
//! // The same request in JSON and with the binary extension.
//! let json = decode(&req.to_json(), None)?;
//! let bin = req.to_binary();
//! let binary = decode(&bin.body, bin.header_len)?;
//! assert_eq!(json.request, req);
//! assert_eq!(binary.request, req);
//! assert!(binary.binary_output && !json.binary_output);
//! # Ok::<(), streamrec_protocol::RequestError>(())
//! ```

#![warn(missing_docs)]

pub mod binary;
pub mod error;
pub mod grpc;
pub mod limits;
pub mod request;
pub mod response;
pub mod tensor;
pub mod validate;

pub use binary::{decode, Decoded};
pub use error::{RequestError, Result, TensorProblem};
pub use request::{offsets_name, read_request_file, InferRequest, InferTensor, ToInputs};
pub use response::{
    encode_response, error_body, model_metadata, response_json, Encoded, HEADER_LENGTH, OUTPUT,
};
pub use tensor::TensorData;
pub use validate::{
    check_dense_values, check_feature, IndexSeq, IndexType, ValidFeature, ValidInputs,
};
