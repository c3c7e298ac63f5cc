//! KServe v2 responses: the `score` output in JSON or as binary data, the body `streamrec run
//! --input` prints, model metadata, and error bodies.

use serde_json::{json, Value};
use streamrec_graph::ModelSpec;

/// The HTTP header of Triton's binary tensor data extension.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// The name of the one output.
pub const OUTPUT: &str = "score";

/// An encoded body (a response, or a request with the binary extension): the bytes and, for
/// binary data, the JSON header's length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    /// The body.
    pub body: Vec<u8>,
    /// `Some(n)` when the first n bytes are the JSON header and the rest binary data.
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

/// An error body: `{"error": "..."}`.
pub fn error_body(msg: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({ "error": msg })).expect("JSON serialises")
}

/// The response body for scores, as `streamrec run --input` prints it (no model version).
pub fn response_json(model: &str, id: Option<&str>, scores: &[f32]) -> Value {
    let mut v = json!({
        "model_name": model,
        "outputs": [{"name": OUTPUT, "shape": [scores.len(), 1], "datatype": "FP32", "data": scores}],
    });
    if let Some(id) = id {
        v["id"] = Value::String(id.into());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_scores_follow_the_json_header() {
        let enc = encode_response("tiny", "1", Some("a"), &[0.25, 0.5], true);
        let n = enc.header_len.unwrap();
        let head: Value = serde_json::from_slice(&enc.body[..n]).unwrap();
        assert_eq!(head["id"], "a");
        assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], 8);
        assert_eq!(&enc.body[n..n + 4], &0.25f32.to_le_bytes());
        let enc = encode_response("tiny", "1", None, &[0.25], false);
        assert_eq!(enc.header_len, None);
        let v: Value = serde_json::from_slice(&enc.body).unwrap();
        assert_eq!(v["outputs"][0]["data"], json!([0.25]));
        assert!(v.get("id").is_none());
    }

    #[test]
    fn run_response_and_error_bodies() {
        let v = response_json("tiny", Some("x"), &[0.5]);
        assert_eq!(v["outputs"][0]["shape"], json!([1, 1]));
        assert_eq!(v["id"], "x");
        assert_eq!(error_body("bad"), br#"{"error":"bad"}"#.to_vec());
    }
}
