//! KServe v2 inference requests and responses (the JSON the server and `streamrec run --input`
//! accept): `dense` FP32 `[B, dense]`, per feature `<name>` INT64/INT32 `[N]` indices and
//! `<name>_offsets` `[B]` offsets; the response holds `score` FP32 `[B, 1]`.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use streamrec_graph::ModelSpec;

use crate::batch::{Batch, IndexVec, SparseInput};
use crate::error::{Result, RuntimeError};

/// One named input tensor.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InferTensor {
    /// Input name.
    pub name: String,
    /// Shape.
    pub shape: Vec<i64>,
    /// `FP32`, `INT64`, ...
    pub datatype: String,
    /// Row-major values (nested arrays are flattened).
    pub data: Value,
}

/// A KServe v2 inference request body.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InferRequest {
    /// Optional request id, echoed in the response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Inputs.
    pub inputs: Vec<InferTensor>,
}

fn bad(msg: String) -> RuntimeError {
    RuntimeError::Input(msg)
}

fn flatten<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(a) => a.iter().for_each(|x| flatten(x, out)),
        x => out.push(x),
    }
}

fn numbers(t: &InferTensor) -> Vec<&Value> {
    let mut flat = Vec::new();
    flatten(&t.data, &mut flat);
    flat
}

fn ints(t: &InferTensor) -> Result<IndexVec> {
    let flat = numbers(t);
    let conv = |i: usize, v: &Value| -> Result<i64> {
        v.as_i64().ok_or_else(|| {
            bad(format!(
                "{}: value at position {i} is {v}, expected an integer",
                t.name
            ))
        })
    };
    match t.datatype.as_str() {
        "INT64" => Ok(IndexVec::I64(
            flat.iter()
                .enumerate()
                .map(|(i, v)| conv(i, v))
                .collect::<Result<_>>()?,
        )),
        "INT32" => Ok(IndexVec::I32(
            flat.iter()
                .enumerate()
                .map(|(i, v)| {
                    let x = conv(i, v)?;
                    i32::try_from(x).map_err(|_| {
                        bad(format!(
                            "{}: value at position {i} is {x}, outside INT32",
                            t.name
                        ))
                    })
                })
                .collect::<Result<_>>()?,
        )),
        d => Err(bad(format!(
            "{}: datatype {d} is not supported, use INT64 or INT32",
            t.name
        ))),
    }
}

impl InferRequest {
    /// Parses a request body.
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| {
            bad(format!(
                "request body is not a valid KServe v2 request: {e}"
            ))
        })
    }

    /// Converts to a batch and validates it against the spec (shapes, dtypes, offsets, index
    /// ranges, finite dense values).
    pub fn to_batch(&self, spec: &ModelSpec) -> Result<Batch> {
        let find = |name: &str| -> Result<&InferTensor> {
            let mut it = self.inputs.iter().filter(|t| t.name == name);
            let t = it
                .next()
                .ok_or_else(|| bad(format!("input `{name}` is missing")))?;
            if it.next().is_some() {
                return Err(bad(format!("input `{name}` appears more than once")));
            }
            Ok(t)
        };
        for t in &self.inputs {
            let known = t.name == "dense"
                || spec.feature_index(&t.name).is_some()
                || t.name
                    .strip_suffix("_offsets")
                    .is_some_and(|f| spec.feature_index(f).is_some());
            if !known {
                return Err(bad(format!(
                    "input `{}` is not an input of model `{}`",
                    t.name, spec.name
                )));
            }
        }
        let d = find("dense")?;
        if d.datatype != "FP32" {
            return Err(bad(format!(
                "dense: datatype {} is not supported, use FP32",
                d.datatype
            )));
        }
        if d.shape.len() != 2 || d.shape[1] != spec.dense as i64 || d.shape[0] <= 0 {
            return Err(bad(format!(
                "dense: shape {:?} must be [B, {}] with B > 0",
                d.shape, spec.dense
            )));
        }
        let size = d.shape[0] as usize;
        let dense = numbers(d)
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_f64().map(|x| x as f32).ok_or_else(|| {
                    bad(format!(
                        "dense: value at position {i} is {v}, expected a number"
                    ))
                })
            })
            .collect::<Result<Vec<f32>>>()?;
        let mut sparse = Vec::with_capacity(spec.features.len());
        for f in &spec.features {
            let it = find(&f.name)?;
            let ot = find(&format!("{}_offsets", f.name))?;
            let indices = ints(it)?;
            let offsets = ints(ot)?;
            if it.shape != [indices.len() as i64] {
                return Err(bad(format!(
                    "{}: shape {:?} does not match its {} values",
                    f.name,
                    it.shape,
                    indices.len()
                )));
            }
            if ot.shape != [offsets.len() as i64] {
                return Err(bad(format!(
                    "{}_offsets: shape {:?} does not match its {} values",
                    f.name,
                    ot.shape,
                    offsets.len()
                )));
            }
            if it.datatype != ot.datatype {
                return Err(bad(format!(
                    "{}_offsets: datatype {} differs from {}'s {}",
                    f.name, ot.datatype, f.name, it.datatype
                )));
            }
            sparse.push(SparseInput { indices, offsets });
        }
        let batch = Batch {
            size,
            dense,
            sparse,
        };
        batch.validate(spec)?;
        Ok(batch)
    }

    /// The request body for a batch.
    pub fn from_batch(spec: &ModelSpec, batch: &Batch) -> Self {
        let ints = |name: String, v: &IndexVec| InferTensor {
            name,
            shape: vec![v.len() as i64],
            datatype: v.datatype().into(),
            data: match v {
                IndexVec::I32(x) => serde_json::to_value(x),
                IndexVec::I64(x) => serde_json::to_value(x),
            }
            .expect("integers serialise"),
        };
        let mut inputs = vec![InferTensor {
            name: "dense".into(),
            shape: vec![batch.size as i64, spec.dense as i64],
            datatype: "FP32".into(),
            data: serde_json::to_value(&batch.dense).expect("floats serialise"),
        }];
        for (f, s) in spec.features.iter().zip(&batch.sparse) {
            inputs.push(ints(f.name.clone(), &s.indices));
            inputs.push(ints(format!("{}_offsets", f.name), &s.offsets));
        }
        Self { id: None, inputs }
    }
}

/// The response body for scores.
pub fn response_json(model: &str, id: Option<&str>, scores: &[f32]) -> Value {
    let mut v = serde_json::json!({
        "model_name": model,
        "outputs": [{"name": "score", "shape": [scores.len(), 1], "datatype": "FP32", "data": scores}],
    });
    if let Some(id) = id {
        v["id"] = Value::String(id.into());
    }
    v
}
