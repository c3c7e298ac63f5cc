//! The KServe v2 REST bodies as the server uses them: the wire format itself (JSON and Triton's
//! binary tensor data extension, responses, model metadata, error bodies) is
//! [`streamrec_protocol`]'s, re-exported here; this module turns an infer body into a
//! [`ValidatedBatch`] for the batcher (validated once, here), and answers `GET /v2` (the server's own metadata).
//!
//! Every check of the engine (shapes, datatypes, offsets, index ranges, finite values) runs on
//! a request before it can reach a kernel.

use serde_json::{json, Value};
use streamrec_graph::ModelSpec;
use streamrec_protocol::Decoded;
pub use streamrec_protocol::{
    encode_response, error_body, model_metadata, Encoded, RequestError, HEADER_LENGTH, OUTPUT,
};
use streamrec_runtime::ValidatedBatch;

/// A parsed, validated infer request.
#[derive(Debug)]
pub struct Parsed {
    /// The request id, echoed in the response.
    pub id: Option<String>,
    /// The samples, validated against the model.
    pub batch: ValidatedBatch,
    /// Whether the scores go back as binary data.
    pub binary_output: bool,
}

/// Decodes an infer body and validates it against `spec`. `header_len` is the value of
/// `Inference-Header-Content-Length` when the body uses the binary extension.
pub fn parse(
    body: &[u8],
    header_len: Option<usize>,
    spec: &ModelSpec,
) -> Result<Parsed, RequestError> {
    validate(streamrec_protocol::decode(body, header_len)?, spec)
}

/// Validates a decoded request (an HTTP body's or a gRPC message's) against `spec`.
pub fn validate(decoded: Decoded, spec: &ModelSpec) -> Result<Parsed, RequestError> {
    decoded.check_outputs(spec)?;
    let id = decoded.request.id.clone();
    Ok(Parsed {
        id,
        batch: ValidatedBatch::from_request(decoded.request, spec)?,
        binary_output: decoded.binary_output,
    })
}

/// Server metadata (`GET /v2`).
pub fn server_metadata() -> Value {
    json!({
        "name": "streamrec",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data", "model_configuration", "statistics"],
    })
}
