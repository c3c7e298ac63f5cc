//! Decoding an infer body as a server receives it: KServe v2 JSON, or Triton's binary tensor
//! data extension, where `Inference-Header-Content-Length: N` says that the first N bytes are the
//! JSON header and the rest is the inputs' raw little-endian data, in input order, each
//! `parameters.binary_data_size` bytes long. The outputs asked for, and whether the scores go
//! back in binary (`binary_data_output`, or an output's `binary_data`), come with the request.

use serde::Deserialize;
use streamrec_graph::ModelSpec;

use crate::error::{RequestError, Result, TensorProblem};
use crate::request::{InferRequest, InferTensor};
use crate::response::OUTPUT;
use crate::tensor::TensorData;

/// Request or tensor parameters read here; others are accepted and ignored.
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

/// A decoded infer body: the request, and what the client asked to get back.
#[derive(Debug)]
pub struct Decoded {
    /// The request (its values not yet checked against a model).
    pub request: InferRequest,
    /// The names of the outputs asked for (none: all of them).
    pub outputs: Vec<String>,
    /// Whether the scores go back as binary data.
    pub binary_output: bool,
}

impl Decoded {
    /// Checks that every output asked for is one the model has (`score`).
    pub fn check_outputs(&self, spec: &ModelSpec) -> Result<()> {
        match self.outputs.iter().find(|o| o.as_str() != OUTPUT) {
            Some(o) => Err(RequestError::UnknownOutput {
                output: o.clone(),
                model: spec.name.clone(),
            }),
            None => Ok(()),
        }
    }
}

/// Decodes an infer body. `header_len` is the value of `Inference-Header-Content-Length` when
/// the body uses the binary extension.
pub fn decode(body: &[u8], header_len: Option<usize>) -> Result<Decoded> {
    let (head, mut bin) = match header_len {
        Some(n) if n > body.len() => {
            return Err(RequestError::HeaderLength {
                header: n,
                body: body.len(),
            })
        }
        Some(n) => body.split_at(n),
        None => (body, &[][..]),
    };
    let req: WireRequest = serde_json::from_slice(head).map_err(RequestError::Json)?;
    let mut inputs = Vec::with_capacity(req.inputs.len());
    for inp in req.inputs {
        let size = inp.parameters.as_ref().and_then(|p| p.binary_data_size);
        let data = match (inp.data, size) {
            (Some(_), Some(_)) => {
                return Err(RequestError::tensor(inp.name, TensorProblem::BothData))
            }
            (Some(d), None) => d,
            (None, Some(size)) => {
                let Some(len) = usize::try_from(size).ok().filter(|&s| s <= bin.len()) else {
                    return Err(RequestError::tensor(
                        inp.name,
                        TensorProblem::BinaryPastEnd {
                            size,
                            left: bin.len(),
                        },
                    ));
                };
                let (mine, rest) = bin.split_at(len);
                bin = rest;
                TensorData::from_le(&inp.name, &inp.datatype, mine)?
            }
            (None, None) => return Err(RequestError::tensor(inp.name, TensorProblem::NoData)),
        };
        inputs.push(InferTensor {
            name: inp.name,
            shape: inp.shape,
            datatype: inp.datatype,
            data,
        });
    }
    if !bin.is_empty() {
        return Err(RequestError::TrailingBinary(bin.len()));
    }
    let mut binary_output = req
        .parameters
        .as_ref()
        .and_then(|p| p.binary_data_output)
        .unwrap_or(false);
    let mut outputs = Vec::new();
    for o in req.outputs.into_iter().flatten() {
        if let Some(b) = o.parameters.as_ref().and_then(|p| p.binary_data) {
            binary_output = b;
        }
        outputs.push(o.name);
    }
    Ok(Decoded {
        request: InferRequest { id: req.id, inputs },
        outputs,
        binary_output,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request() -> InferRequest {
        InferRequest {
            id: Some("r-1".into()),
            inputs: vec![
                InferTensor::dense(2, 2, vec![0.5, -1.0, 0.25, 2.0]),
                InferTensor::ints("C1", "INT32", vec![3, 4, 5]),
                InferTensor::ints("C1_offsets", "INT32", vec![0, 1]),
            ],
        }
    }

    /// A binary body whose JSON header is `head` followed by `raw`.
    fn framed(head: serde_json::Value, raw: &[u8]) -> (Vec<u8>, usize) {
        let mut body = serde_json::to_vec(&head).unwrap();
        let n = body.len();
        body.extend_from_slice(raw);
        (body, n)
    }

    fn refused(body: &[u8], header_len: Option<usize>) -> String {
        decode(body, header_len).unwrap_err().to_string()
    }

    #[test]
    fn json_and_binary_bodies_decode_to_the_same_request() {
        let req = request();
        let json = decode(&req.to_json(), None).unwrap();
        assert_eq!(json.request, req);
        assert!(!json.binary_output && json.outputs.is_empty());
        let enc = req.to_binary();
        let n = enc.header_len.unwrap();
        let head: serde_json::Value = serde_json::from_slice(&enc.body[..n]).unwrap();
        assert_eq!(head["inputs"][1]["parameters"]["binary_data_size"], 12);
        assert_eq!(head["parameters"]["binary_data_output"], true);
        let bin = decode(&enc.body, Some(n)).unwrap();
        assert_eq!(bin.request, req);
        assert!(bin.binary_output);
    }

    #[test]
    fn an_output_asks_for_binary_scores_and_must_be_the_models() {
        let mut head = serde_json::to_value(request()).unwrap();
        head["parameters"] = json!({"binary_data_output": true});
        head["outputs"] = json!([{"name": "score", "parameters": {"binary_data": false}}]);
        let d = decode(&serde_json::to_vec(&head).unwrap(), None).unwrap();
        assert!(!d.binary_output);
        assert_eq!(d.outputs, vec!["score".to_string()]);
        head["outputs"] = json!([{"name": "prob"}]);
        let d = decode(&serde_json::to_vec(&head).unwrap(), None).unwrap();
        let spec = streamrec_graph::ModelSpec::parse(
            "dense = 2\n[bottom]\nlayers = [4]\n[sparse]\ncount = 1\nrows = 9\ndim = 4\n\
             [top]\nlayers = [1]\n[interaction]\nkind = \"cat\"\n",
            "tiny",
            None,
        )
        .unwrap();
        assert_eq!(
            d.check_outputs(&spec).unwrap_err().to_string(),
            "output `prob` is not an output of model `tiny` (it has `score`)"
        );
    }

    #[test]
    fn malformed_framing_is_refused_naming_the_input() {
        let sized = |size: usize| {
            json!({"inputs": [
            {"name": "dense", "shape": [1, 2], "datatype": "FP32",
             "parameters": {"binary_data_size": size}}]})
        };
        let (body, n) = framed(sized(8), &[0; 8]);
        assert_eq!(
            refused(&body, Some(body.len() + 1)),
            format!(
                "Inference-Header-Content-Length is {} but the body has only {} bytes",
                body.len() + 1,
                body.len()
            )
        );
        assert!(decode(&body, Some(n)).is_ok());
        let (body, n) = framed(sized(12), &[0; 8]);
        assert_eq!(
            refused(&body, Some(n)),
            "dense: binary_data_size 12 runs past the end of the binary data (8 bytes left)"
        );
        let (body, n) = framed(sized(8), &[0; 11]);
        assert_eq!(
            refused(&body, Some(n)),
            "3 bytes of binary data follow the last input's"
        );
        let (body, n) = framed(
            json!({"inputs": [{"name": "C1", "shape": [1], "datatype": "INT64", "data": [1],
                               "parameters": {"binary_data_size": 8}}]}),
            &[0; 8],
        );
        assert_eq!(
            refused(&body, Some(n)),
            "C1: has both `data` and `parameters.binary_data_size`"
        );
        let (body, _) = framed(
            json!({"inputs": [{"name": "C4", "shape": [1], "datatype": "INT64"}]}),
            &[],
        );
        assert!(refused(&body, None).starts_with("C4: no data: give `data`"));
        assert!(refused(b"{", None).starts_with("request body is not a valid KServe v2 request: "));
    }
}
