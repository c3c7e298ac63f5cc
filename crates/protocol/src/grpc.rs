//! The KServe v2 gRPC messages (`inference.GRPCInferenceService`, as Triton serves it) and the
//! decoding of a `ModelInferRequest` into the same [`Decoded`] request an HTTP body gives, so
//! both front ends validate it with one set of rules and the same errors.
//!
//! [`pb`] holds the messages, the service trait a server implements and a client over any
//! transport; the server and the load generator bring their own (tonic's).

use crate::binary::Decoded;
use crate::error::{RequestError, Result, TensorProblem};
use crate::request::{InferRequest, InferTensor};
use crate::tensor::TensorData;

/// The code generated from `proto/grpc_service.proto` and `proto/model_config.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("inference");
}

/// Decodes a `ModelInfer` request: each input's values from its `raw_input_contents` entry
/// (little-endian, one entry per input, in input order, like Triton's binary extension) or from
/// its typed `contents`. The model name and version are the caller's to check; the outputs
/// asked for come back in [`Decoded::outputs`] (scores go back raw, so `binary_output` is
/// false).
pub fn decode_infer(req: pb::ModelInferRequest) -> Result<Decoded> {
    let pb::ModelInferRequest {
        id,
        inputs,
        outputs,
        raw_input_contents: raw,
        ..
    } = req;
    if !raw.is_empty() && raw.len() != inputs.len() {
        return Err(RequestError::RawContentsCount {
            entries: raw.len(),
            inputs: inputs.len(),
        });
    }
    let mut raw = raw.into_iter();
    let mut decoded = Vec::with_capacity(inputs.len());
    for t in inputs {
        let data = match (raw.next(), t.contents) {
            (Some(_), Some(_)) => {
                return Err(RequestError::tensor(t.name, TensorProblem::BothContents))
            }
            (Some(bytes), None) => TensorData::from_le(&t.name, &t.datatype, &bytes)?,
            (None, Some(c)) => typed(&t.datatype, c),
            (None, None) => typed(&t.datatype, Default::default()),
        };
        decoded.push(InferTensor {
            name: t.name,
            shape: t.shape,
            datatype: t.datatype,
            data,
        });
    }
    Ok(Decoded {
        request: InferRequest {
            id: (!id.is_empty()).then_some(id),
            inputs: decoded,
        },
        outputs: outputs.into_iter().map(|o| o.name).collect(),
        binary_output: false,
    })
}

/// Typed contents as values: the field the client filled (an empty tensor when none is).
fn typed(datatype: &str, c: pb::InferTensorContents) -> TensorData {
    if !c.fp32_contents.is_empty() {
        TensorData::from_f32(c.fp32_contents)
    } else if !c.int64_contents.is_empty() {
        TensorData::from_i64(c.int64_contents)
    } else if !c.int_contents.is_empty() {
        TensorData::from_i64(c.int_contents.into_iter().map(i64::from).collect())
    } else if datatype == "FP32" {
        TensorData::from_f32(Vec::new())
    } else {
        TensorData::from_i64(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::model_infer_request::InferInputTensor;

    fn tensor(name: &str, datatype: &str) -> InferInputTensor {
        InferInputTensor {
            name: name.into(),
            datatype: datatype.into(),
            shape: vec![1],
            ..Default::default()
        }
    }

    #[test]
    fn raw_contents_decode_in_input_order() {
        let req = pb::ModelInferRequest {
            model_name: "m".into(),
            id: "7".into(),
            inputs: vec![
                tensor("a", "INT64"),
                tensor("b", "FP32"),
                tensor("c", "INT32"),
            ],
            raw_input_contents: vec![
                5i64.to_le_bytes().to_vec(),
                1.5f32.to_le_bytes().to_vec(),
                (-3i32).to_le_bytes().to_vec(),
            ],
            outputs: vec![pb::model_infer_request::InferRequestedOutputTensor {
                name: "score".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let d = decode_infer(req).unwrap();
        assert_eq!(d.request.id.as_deref(), Some("7"));
        assert_eq!(d.request.inputs[0].data.as_i64(), Some(&[5][..]));
        assert_eq!(d.request.inputs[1].data.to_f32(), vec![1.5]);
        assert_eq!(d.request.inputs[2].data.as_i64(), Some(&[-3][..]));
        assert_eq!(d.outputs, vec!["score".to_string()]);
    }

    #[test]
    fn typed_contents_decode_as_given() {
        let mut a = tensor("a", "INT32");
        a.contents = Some(pb::InferTensorContents {
            int_contents: vec![4, -1],
            ..Default::default()
        });
        let mut b = tensor("b", "FP32");
        b.contents = Some(pb::InferTensorContents {
            fp32_contents: vec![0.25],
            ..Default::default()
        });
        let req = pb::ModelInferRequest {
            inputs: vec![a, b, tensor("empty", "INT64")],
            ..Default::default()
        };
        let d = decode_infer(req).unwrap();
        assert_eq!(d.request.id, None);
        assert_eq!(d.request.inputs[0].data.as_i64(), Some(&[4, -1][..]));
        assert_eq!(d.request.inputs[1].data.to_f32(), vec![0.25]);
        assert!(d.request.inputs[2].data.is_empty());
    }

    #[test]
    fn raw_contents_must_be_one_per_input_and_not_beside_typed_ones() {
        let req = pb::ModelInferRequest {
            inputs: vec![tensor("a", "INT64"), tensor("b", "INT64")],
            raw_input_contents: vec![vec![0; 8]],
            ..Default::default()
        };
        let e = decode_infer(req).unwrap_err().to_string();
        assert!(e.contains("1 entries for 2 inputs"), "{e}");
        let mut a = tensor("a", "INT64");
        a.contents = Some(Default::default());
        let req = pb::ModelInferRequest {
            inputs: vec![a],
            raw_input_contents: vec![vec![0; 8]],
            ..Default::default()
        };
        let e = decode_infer(req).unwrap_err().to_string();
        assert!(e.starts_with("a: has both `contents`"), "{e}");
        let req = pb::ModelInferRequest {
            inputs: vec![tensor("a", "INT64")],
            raw_input_contents: vec![vec![0; 7]],
            ..Default::default()
        };
        let e = decode_infer(req).unwrap_err().to_string();
        assert!(e.contains("not a multiple of the 8-byte INT64"), "{e}");
    }
}
