//! KServe v2 REST bodies: infer requests in JSON or with Triton's binary tensor data extension,
//! responses, and model metadata.
//!
//! A JSON body is deserialised by type straight into the tensors (the runtime's
//! [`TensorData`]); no generic JSON tree is built. With the binary extension the HTTP header
//! `Inference-Header-Content-Length: N` says that the first N bytes are the JSON header and the
//! rest is the inputs' raw little-endian data, in input order, each `parameters.binary_data_size`
//! bytes long. Every check of the engine (shapes, datatypes, offsets, index ranges, finite
//! values) runs on the result before it can reach a kernel.

use serde::Deserialize;
use serde_json::{json, Value};
use streamrec_graph::ModelSpec;
use streamrec_runtime::request::{InferRequest, InferTensor, TensorData};
use streamrec_runtime::Batch;

/// The HTTP header of Triton's binary tensor data extension.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// The name of the one output.
pub const OUTPUT: &str = "score";

/// Request or tensor parameters this server reads; others are accepted and ignored.
#[derive(Debug, Default, Deserialize)]
struct Params {
    #[serde(default)]
    binary_data_size: Option<u64>,
    #[serde(default)]
    binary_data: Option<bool>,
    #[serde(default)]
    binary_data_output: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct WireInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Option<Params>,
    #[serde(default)]
    data: Option<TensorData>,
}

#[derive(Debug, Deserialize)]
struct WireOutput {
    name: String,
    #[serde(default)]
    parameters: Option<Params>,
}

#[derive(Debug, Deserialize)]
struct WireRequest {
    #[serde(default)]
    id: Option<String>,
    inputs: Vec<WireInput>,
    #[serde(default)]
    outputs: Option<Vec<WireOutput>>,
    #[serde(default)]
    parameters: Option<Params>,
}

/// A parsed, validated infer request.
#[derive(Debug)]
pub struct Parsed {
    /// The request id, echoed in the response.
    pub id: Option<String>,
    /// The samples, validated against the model.
    pub batch: Batch,
    /// Whether the scores go back as binary data.
    pub binary_output: bool,
}

/// Parses an infer body. `header_len` is the value of `Inference-Header-Content-Length` when
/// the body uses the binary extension. The error is the message of a 400 response.
pub fn parse_infer(
    body: &[u8],
    header_len: Option<usize>,
    spec: &ModelSpec,
) -> Result<Parsed, String> {
    let (head, mut bin) = match header_len {
        Some(n) if n > body.len() => {
            return Err(format!(
                "Inference-Header-Content-Length is {n} but the body has only {} bytes",
                body.len()
            ))
        }
        Some(n) => body.split_at(n),
        None => (body, &[][..]),
    };
    let req: WireRequest = serde_json::from_slice(head)
        .map_err(|e| format!("request body is not a valid KServe v2 request: {e}"))?;
    let mut inputs = Vec::with_capacity(req.inputs.len());
    for inp in req.inputs {
        let size = inp.parameters.as_ref().and_then(|p| p.binary_data_size);
        let data = match (inp.data, size) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "{}: has both `data` and `parameters.binary_data_size`",
                    inp.name
                ))
            }
            (Some(d), None) => d,
            (None, Some(size)) => {
                let size = usize::try_from(size)
                    .ok()
                    .filter(|&s| s <= bin.len())
                    .ok_or_else(|| {
                        format!(
                            "{}: binary_data_size {size} runs past the end of the binary data ({} bytes left)",
                            inp.name,
                            bin.len()
                        )
                    })?;
                let (mine, rest) = bin.split_at(size);
                bin = rest;
                decode(&inp.name, &inp.datatype, mine)?
            }
            (None, None) => {
                return Err(format!(
                    "{}: no data: give `data`, or `parameters.binary_data_size` with binary data \
                     (Inference-Header-Content-Length)",
                    inp.name
                ))
            }
        };
        inputs.push(InferTensor {
            name: inp.name,
            shape: inp.shape,
            datatype: inp.datatype,
            data,
        });
    }
    if !bin.is_empty() {
        return Err(format!(
            "{} bytes of binary data follow the last input's",
            bin.len()
        ));
    }
    let mut binary_output = req
        .parameters
        .as_ref()
        .and_then(|p| p.binary_data_output)
        .unwrap_or(false);
    for o in req.outputs.iter().flatten() {
        if o.name != OUTPUT {
            return Err(format!(
                "output `{}` is not an output of model `{}` (it has `{OUTPUT}`)",
                o.name, spec.name
            ));
        }
        if let Some(b) = o.parameters.as_ref().and_then(|p| p.binary_data) {
            binary_output = b;
        }
    }
    let batch = InferRequest {
        id: req.id.clone(),
        inputs,
    }
    .into_batch(spec)
    .map_err(|e| e.to_string())?;
    Ok(Parsed {
        id: req.id,
        batch,
        binary_output,
    })
}

/// Decodes one input's raw little-endian binary data.
fn decode(name: &str, datatype: &str, raw: &[u8]) -> Result<TensorData, String> {
    let width = match datatype {
        "FP32" | "INT32" => 4,
        "INT64" => 8,
        d => {
            return Err(format!(
                "{name}: datatype {d} is not supported (use FP32 for dense, INT64 or INT32 for indices and offsets)"
            ))
        }
    };
    if !raw.len().is_multiple_of(width) {
        return Err(format!(
            "{name}: binary_data_size {} is not a multiple of the {width}-byte {datatype} element",
            raw.len()
        ));
    }
    Ok(match datatype {
        "FP32" => TensorData::from_f32(
            raw.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        "INT32" => TensorData::from_i64(
            raw.chunks_exact(4)
                .map(|c| i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect(),
        ),
        _ => TensorData::from_i64(
            raw.chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect(),
        ),
    })
}

/// An infer response: the body and, for binary output, the JSON header's length.
pub struct Encoded {
    /// The response body.
    pub body: Vec<u8>,
    /// `Some(n)` when the first n bytes are the JSON header and the rest binary scores.
    pub header_len: Option<usize>,
}

#[derive(serde::Serialize)]
struct OutParams {
    binary_data_size: usize,
}

#[derive(serde::Serialize)]
struct Output<'a> {
    name: &'static str,
    datatype: &'static str,
    shape: [usize; 2],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<OutParams>,
    /// f32 values, written in their shortest round-trip form.
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a [f32]>,
}

#[derive(serde::Serialize)]
struct Response<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    outputs: [Output<'a>; 1],
}

/// Encodes the scores of one request.
pub fn encode_response(
    model: &str,
    version: &str,
    id: Option<&str>,
    scores: &[f32],
    binary: bool,
) -> Encoded {
    let out = Response {
        model_name: model,
        model_version: version,
        id,
        outputs: [Output {
            name: OUTPUT,
            datatype: "FP32",
            shape: [scores.len(), 1],
            parameters: binary.then(|| OutParams {
                binary_data_size: scores.len() * 4,
            }),
            data: (!binary).then_some(scores),
        }],
    };
    let mut body = serde_json::to_vec(&out).expect("JSON serialises");
    if !binary {
        return Encoded {
            body,
            header_len: None,
        };
    }
    let header_len = body.len();
    body.reserve(scores.len() * 4);
    for s in scores {
        body.extend_from_slice(&s.to_le_bytes());
    }
    Encoded {
        body,
        header_len: Some(header_len),
    }
}

/// Model metadata (`GET /v2/models/{name}`): every input and output with datatype and shape,
/// -1 for a variable dimension (the batch, or the number of indices).
pub fn model_metadata(spec: &ModelSpec, version: &str) -> Value {
    let mut inputs = vec![json!({"name": "dense", "datatype": "FP32", "shape": [-1, spec.dense]})];
    for f in &spec.features {
        inputs.push(json!({"name": f.name, "datatype": "INT64", "shape": [-1]}));
        inputs.push(
            json!({"name": format!("{}_offsets", f.name), "datatype": "INT64", "shape": [-1]}),
        );
    }
    json!({
        "name": spec.name,
        "versions": [version],
        "platform": "streamrec",
        "inputs": inputs,
        "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, 1]}],
    })
}

/// Server metadata (`GET /v2`).
pub fn server_metadata() -> Value {
    json!({
        "name": "streamrec",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data"],
    })
}

/// An error body: `{"error": "..."}`.
pub fn error_body(msg: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({ "error": msg })).expect("JSON serialises")
}
