//! KServe v2 inference requests: [`InferRequest`] (an optional id and named input tensors) and
//! [`InferTensor`], parsed from JSON bodies and files with a size limit, and written as JSON or
//! with Triton's binary tensor data extension.
//!
//! StreamRec's models take `dense` FP32 `[B, dense]` and, per sparse feature `<name>`, INT64 or
//! INT32 indices `<name>` `[N]` and offsets `<name>_offsets` `[B]`; checking a request against
//! a model is [`crate::validate`]'s job.

use std::fmt;
use std::io::Read;
use std::path::Path;

use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use streamrec_graph::ModelSpec;

use crate::error::{RequestError, Result};
use crate::response::Encoded;
use crate::tensor::{Builder, DataSeed, TensorData};

/// The name of the offsets input of feature `feature`: `<feature>_offsets`.
pub fn offsets_name(feature: &str) -> String {
    format!("{feature}_offsets")
}

/// One named input tensor.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InferTensor {
    /// Input name.
    pub name: String,
    /// Shape.
    pub shape: Vec<i64>,
    /// `FP32`, `INT64`, ...
    pub datatype: String,
    /// Row-major values (nested arrays are flattened).
    pub data: TensorData,
}

impl<'de> Deserialize<'de> for InferTensor {
    /// The keys may come in any order; other keys (e.g. `parameters`) are ignored. A value in
    /// `data` that is not a number is an error naming the tensor and the position.
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct TensorVisitor;
        impl<'de> Visitor<'de> for TensorVisitor {
            type Value = InferTensor;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an input tensor {name, shape, datatype, data}")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<InferTensor, A::Error> {
                let mut name: Option<String> = None;
                let mut shape: Option<Vec<i64>> = None;
                let mut datatype: Option<String> = None;
                let mut data: Option<Builder> = None;
                fn once<T, E: de::Error>(slot: &Option<T>, field: &'static str) -> Result<(), E> {
                    match slot {
                        Some(_) => Err(E::duplicate_field(field)),
                        None => Ok(()),
                    }
                }
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match &*key {
                        "name" => {
                            once(&name, "name")?;
                            name = Some(map.next_value()?);
                        }
                        "shape" => {
                            once(&shape, "shape")?;
                            shape = Some(map.next_value()?);
                        }
                        "datatype" => {
                            once(&datatype, "datatype")?;
                            datatype = Some(map.next_value()?);
                        }
                        "data" => {
                            once(&data, "data")?;
                            data = Some(map.next_value_seed(DataSeed)?);
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                let name = name.ok_or_else(|| de::Error::missing_field("name"))?;
                let data = data.ok_or_else(|| de::Error::missing_field("data"))?;
                if let Some((i, what)) = data.not_a_number {
                    return Err(de::Error::custom(format!(
                        "{name}: value at position {i} is {what}, expected a number"
                    )));
                }
                Ok(InferTensor {
                    shape: shape.ok_or_else(|| de::Error::missing_field("shape"))?,
                    datatype: datatype.ok_or_else(|| de::Error::missing_field("datatype"))?,
                    name,
                    data: data.data,
                })
            }
        }
        d.deserialize_map(TensorVisitor)
    }
}

/// A KServe v2 inference request body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InferRequest {
    /// Optional request id, echoed in the response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Inputs.
    pub inputs: Vec<InferTensor>,
}

impl InferTensor {
    /// The `dense` input: FP32 `[size, width]`.
    pub fn dense(size: usize, width: usize, values: Vec<f32>) -> Self {
        InferTensor {
            name: "dense".into(),
            shape: vec![size as i64, width as i64],
            datatype: "FP32".into(),
            data: TensorData::from_f32(values),
        }
    }

    /// A one-dimensional integer input (indices or offsets) of `datatype` (`INT64` or `INT32`).
    pub fn ints(name: impl Into<String>, datatype: &str, values: Vec<i64>) -> Self {
        InferTensor {
            name: name.into(),
            shape: vec![values.len() as i64],
            datatype: datatype.into(),
            data: TensorData::from_i64(values),
        }
    }
}

/// Samples that can be written as a request's inputs: the runtime's `Batch` is one (what
/// [`InferRequest::from_batch`] takes).
pub trait ToInputs {
    /// The inputs for `spec`, in its order: `dense`, then per feature its indices and offsets.
    fn to_inputs(&self, spec: &ModelSpec) -> Vec<InferTensor>;
}

// What deref coercion gave callers of the runtime's former `from_batch(&spec, &Batch)`: a
// batch behind a reference or a smart pointer is one too.
impl<T: ToInputs + ?Sized> ToInputs for &T {
    fn to_inputs(&self, spec: &ModelSpec) -> Vec<InferTensor> {
        (**self).to_inputs(spec)
    }
}

impl<T: ToInputs + ?Sized> ToInputs for Box<T> {
    fn to_inputs(&self, spec: &ModelSpec) -> Vec<InferTensor> {
        (**self).to_inputs(spec)
    }
}

impl<T: ToInputs + ?Sized> ToInputs for std::sync::Arc<T> {
    fn to_inputs(&self, spec: &ModelSpec) -> Vec<InferTensor> {
        (**self).to_inputs(spec)
    }
}

/// Request-level parameters of a binary request's JSON header.
#[derive(Serialize)]
struct HeadParams {
    binary_data_output: bool,
}

/// Tensor-level parameters of a binary request's JSON header.
#[derive(Serialize)]
struct SizeParams {
    binary_data_size: usize,
}

#[derive(Serialize)]
struct HeadInput<'a> {
    name: &'a str,
    datatype: &'a str,
    shape: &'a [i64],
    parameters: SizeParams,
}

#[derive(Serialize)]
struct Head<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    inputs: Vec<HeadInput<'a>>,
    parameters: HeadParams,
}

impl InferRequest {
    /// Parses a request body.
    pub fn from_json(text: &str) -> Result<Self> {
        Self::from_slice(text.as_bytes())
    }

    /// Parses a request body given as bytes (e.g. an HTTP body); the caller bounds its size.
    pub fn from_slice(body: &[u8]) -> Result<Self> {
        serde_json::from_slice(body).map_err(RequestError::Json)
    }

    /// The request body for a batch of samples (e.g. the runtime's `Batch`).
    pub fn from_batch<B: ToInputs + ?Sized>(spec: &ModelSpec, batch: &B) -> Self {
        InferRequest {
            id: None,
            inputs: batch.to_inputs(spec),
        }
    }

    /// The body as KServe v2 JSON.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a request serialises")
    }

    /// The body with Triton's binary tensor data extension: a JSON header (each input with
    /// `parameters.binary_data_size`, and `binary_data_output` so the scores come back in
    /// binary too), then every input's raw little-endian data in input order. The header's
    /// length is what `Inference-Header-Content-Length` must say.
    pub fn to_binary(&self) -> Encoded {
        let mut raw = Vec::new();
        let mut inputs = Vec::with_capacity(self.inputs.len());
        for t in &self.inputs {
            let before = raw.len();
            t.data.write_le(&t.datatype, &mut raw);
            inputs.push(HeadInput {
                name: &t.name,
                datatype: &t.datatype,
                shape: &t.shape,
                parameters: SizeParams {
                    binary_data_size: raw.len() - before,
                },
            });
        }
        let head = Head {
            id: self.id.as_deref(),
            inputs,
            parameters: HeadParams {
                binary_data_output: true,
            },
        };
        let mut body = serde_json::to_vec(&head).expect("a header serialises");
        let header_len = body.len();
        body.extend_from_slice(&raw);
        Encoded {
            body,
            header_len: Some(header_len),
        }
    }
}

/// Reads and parses a request file of at most `max_bytes` bytes. The size is checked before
/// reading (the file's metadata) and while reading (at most `max_bytes + 1` bytes are read), so
/// an oversized body is refused without being loaded.
pub fn read_request_file(path: &Path, max_bytes: usize) -> Result<InferRequest> {
    let io = |cause: std::io::Error| RequestError::Io {
        path: path.into(),
        cause,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let limit = max_bytes as u64;
    if len > limit {
        return Err(RequestError::FileTooLarge {
            len,
            max: max_bytes,
        });
    }
    let mut body = Vec::with_capacity(len as usize);
    file.take(limit.saturating_add(1))
        .read_to_end(&mut body)
        .map_err(io)?;
    if body.len() as u64 > limit {
        return Err(RequestError::FileOverLimit { max: max_bytes });
    }
    InferRequest::from_slice(&body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_in_any_order_and_a_bad_value_names_its_tensor() {
        let r = InferRequest::from_json(
            r#"{"inputs": [{"data": [[1, 2]], "datatype": "INT64", "x": {}, "shape": [2], "name": "C1"}]}"#,
        )
        .unwrap();
        assert_eq!(r.inputs[0].data.as_i64(), Some(&[1, 2][..]));
        let e = InferRequest::from_json(
            r#"{"inputs": [{"data": [1, null], "datatype": "INT64", "shape": [2], "name": "C1"}]}"#,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("C1: value at position 1 is null, expected a number"),
            "{e}"
        );
    }

    #[test]
    fn request_files_are_read_within_their_limit() {
        let p = std::env::temp_dir().join(format!("protocol-request-{}.json", std::process::id()));
        let body = InferRequest {
            id: None,
            inputs: vec![InferTensor::dense(1, 1, vec![0.5])],
        }
        .to_json();
        std::fs::write(&p, &body).unwrap();
        assert!(read_request_file(&p, body.len()).is_ok());
        assert_eq!(
            read_request_file(&p, 10).unwrap_err().to_string(),
            format!(
                "request body is {} bytes, more than the limit of 10 (--max-request-bytes)",
                body.len()
            )
        );
        std::fs::remove_file(&p).unwrap();
        let e = read_request_file(&p, 10).unwrap_err();
        assert!(matches!(e, RequestError::Io { .. }), "{e:?}");
    }
}
