//! KServe v2 inference requests and responses (the JSON the server and `streamrec run --input`
//! accept): `dense` FP32 `[B, dense]`, per feature `<name>` INT64/INT32 `[N]` indices and
//! `<name>_offsets` `[B]` offsets; the response holds `score` FP32 `[B, 1]`.
//!
//! A request is deserialised straight into one flat vector per tensor ([`TensorData`]), never
//! into a generic JSON tree, and every size computed from it uses checked arithmetic and the
//! bounds of [`streamrec_graph::limits`], so a hostile shape is a one-line error naming the input.

use std::fmt;
use std::io::Read;
use std::path::Path;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use streamrec_graph::limits::{MAX_BATCH, MAX_BATCH_INDICES};
use streamrec_graph::ModelSpec;

use crate::batch::{Batch, IndexVec, SparseInput};
use crate::error::{Result, RuntimeError};

/// The values of one tensor, flattened row-major (nested JSON arrays are flattened).
///
/// Integers are kept exactly as `i64`; as soon as a value is not an `i64` (a number with a
/// fraction or an exponent, or an integer beyond `i64`) the values switch to `f32`, and the
/// position and value of that first one are remembered so an integer tensor can name it.
/// Equality compares the values only.
#[derive(Clone, Debug)]
pub struct TensorData {
    values: Values,
    /// The first value that is not an `i64`: its position and the number as written.
    first_non_i64: Option<(usize, NonI64)>,
}

#[derive(Clone, Debug, PartialEq)]
enum Values {
    I64(Vec<i64>),
    F32(Vec<f32>),
}

/// A JSON number that does not fit an `i64`.
#[derive(Clone, Copy, Debug, PartialEq)]
enum NonI64 {
    /// Written with a fraction or an exponent, or a negative integer below `i64::MIN`.
    Float(f64),
    /// A positive integer above `i64::MAX`.
    Big(u64),
}

/// `i64::MIN` as `f64` (exact: -2^63).
const I64_MIN_F: f64 = i64::MIN as f64;

impl NonI64 {
    fn as_f32(self) -> f32 {
        match self {
            NonI64::Float(x) => x as f32,
            NonI64::Big(x) => x as f32,
        }
    }
}

impl TensorData {
    /// Integer values.
    pub fn from_i64(values: Vec<i64>) -> Self {
        Self {
            values: Values::I64(values),
            first_non_i64: None,
        }
    }

    /// Floating-point values.
    pub fn from_f32(values: Vec<f32>) -> Self {
        Self {
            values: Values::F32(values),
            first_non_i64: None,
        }
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        match &self.values {
            Values::I64(v) => v.len(),
            Values::F32(v) => v.len(),
        }
    }

    /// True when there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values when all of them are integers.
    pub fn as_i64(&self) -> Option<&[i64]> {
        match &self.values {
            Values::I64(v) => Some(v),
            Values::F32(_) => None,
        }
    }

    /// The values as `f32` (integers converted).
    pub fn to_f32(&self) -> Vec<f32> {
        match &self.values {
            Values::I64(v) => v.iter().map(|&x| x as f32).collect(),
            Values::F32(v) => v.clone(),
        }
    }

    /// The values of an FP32 tensor.
    fn into_f32(self) -> Vec<f32> {
        match self.values {
            Values::I64(v) => v.into_iter().map(|x| x as f32).collect(),
            Values::F32(v) => v,
        }
    }

    /// The values of an INT64 or INT32 tensor named `name`; an error names the first value that
    /// is not an integer or does not fit `datatype`.
    fn into_ints(self, name: &str, datatype: &str) -> Result<IndexVec> {
        if let Some((i, v)) = self.first_non_i64 {
            return Err(bad(match v {
                // An integer below i64::MIN (serde_json reads it as a float; it may round to
                // -2^63 exactly), or e.g. 1e19.
                NonI64::Float(x) if x.fract() == 0.0 && (x <= I64_MIN_F || x >= -I64_MIN_F) => {
                    format!("{name}: value at position {i} is {x:?}, outside {datatype}")
                }
                NonI64::Float(x) => {
                    format!("{name}: value at position {i} is {x:?}, expected an integer")
                }
                NonI64::Big(x) => {
                    format!("{name}: value at position {i} is {x}, outside {datatype}")
                }
            }));
        }
        let v = match self.values {
            Values::I64(v) => v,
            // Built in code with `from_f32`.
            Values::F32(v) => match v.first() {
                None => Vec::new(),
                Some(x) => {
                    return Err(bad(format!(
                        "{name}: value at position 0 is {x:?}, expected an integer"
                    )))
                }
            },
        };
        match datatype {
            "INT64" => Ok(IndexVec::I64(v)),
            "INT32" => v
                .iter()
                .enumerate()
                .map(|(i, &x)| {
                    i32::try_from(x).map_err(|_| {
                        bad(format!(
                            "{name}: value at position {i} is {x}, outside INT32"
                        ))
                    })
                })
                .collect::<Result<Vec<i32>>>()
                .map(IndexVec::I32),
            d => Err(bad(format!(
                "{name}: datatype {d} is not supported, use INT64 or INT32"
            ))),
        }
    }
}

impl PartialEq for TensorData {
    fn eq(&self, other: &Self) -> bool {
        self.values == other.values
    }
}

impl From<Vec<i64>> for TensorData {
    fn from(v: Vec<i64>) -> Self {
        Self::from_i64(v)
    }
}

impl From<Vec<f32>> for TensorData {
    fn from(v: Vec<f32>) -> Self {
        Self::from_f32(v)
    }
}

impl From<&IndexVec> for TensorData {
    fn from(v: &IndexVec) -> Self {
        Self::from_i64(v.to_i64())
    }
}

impl Serialize for TensorData {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match &self.values {
            Values::I64(v) => s.collect_seq(v),
            Values::F32(v) => s.collect_seq(v),
        }
    }
}

/// Collects the numbers of a (nested) JSON array into one flat vector. A value that is not a
/// number (string, bool, null, object) is remembered with its position, not an error at once,
/// so the tensor's visitor can name the tensor whatever the order of its keys.
struct Builder {
    data: TensorData,
    /// The first value that is not a number: its position and a description.
    not_a_number: Option<(usize, String)>,
}

impl Builder {
    fn new() -> Self {
        Self {
            data: TensorData::from_i64(Vec::new()),
            not_a_number: None,
        }
    }

    fn push_i64(&mut self, x: i64) {
        if self.not_a_number.is_some() {
            return;
        }
        match &mut self.data.values {
            Values::I64(v) => v.push(x),
            Values::F32(v) => v.push(x as f32),
        }
    }

    fn push_non_i64(&mut self, x: NonI64) {
        if self.not_a_number.is_some() {
            return;
        }
        let d = &mut self.data;
        if let Values::I64(v) = &mut d.values {
            d.first_non_i64 = Some((v.len(), x));
            let floats: Vec<f32> = v.iter().map(|&y| y as f32).collect();
            d.values = Values::F32(floats);
        }
        if let Values::F32(v) = &mut d.values {
            v.push(x.as_f32());
        }
    }

    fn not_a_number(&mut self, what: String) {
        if self.not_a_number.is_none() {
            self.not_a_number = Some((self.data.len(), what));
        }
    }
}

/// Deserialises one element (a number or a nested array) into the builder.
struct Element<'a>(&'a mut Builder);

impl<'de> DeserializeSeed<'de> for Element<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

fn describe_str(s: &str) -> String {
    const MAX: usize = 40;
    match s.char_indices().nth(MAX) {
        Some((end, _)) => format!("the string {:?}...", &s[..end]),
        None => format!("the string {s:?}"),
    }
}

impl<'de> Visitor<'de> for Element<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a number or an array of numbers")
    }
    fn visit_i64<E: de::Error>(self, x: i64) -> std::result::Result<(), E> {
        self.0.push_i64(x);
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, x: u64) -> std::result::Result<(), E> {
        match i64::try_from(x) {
            Ok(x) => self.0.push_i64(x),
            Err(_) => self.0.push_non_i64(NonI64::Big(x)),
        }
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, x: f64) -> std::result::Result<(), E> {
        self.0.push_non_i64(NonI64::Float(x));
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        while seq.next_element_seed(Element(&mut *self.0))?.is_some() {}
        Ok(())
    }
    fn visit_str<E: de::Error>(self, s: &str) -> std::result::Result<(), E> {
        self.0.not_a_number(describe_str(s));
        Ok(())
    }
    fn visit_bool<E: de::Error>(self, b: bool) -> std::result::Result<(), E> {
        self.0.not_a_number(b.to_string());
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> std::result::Result<(), E> {
        self.0.not_a_number("null".into());
        Ok(())
    }
    fn visit_none<E: de::Error>(self) -> std::result::Result<(), E> {
        self.visit_unit()
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        self.0.not_a_number("an object".into());
        Ok(())
    }
}

/// Deserialises a tensor's `data`: an array (possibly nested) of numbers.
struct DataSeed;

impl<'de> DeserializeSeed<'de> for DataSeed {
    type Value = Builder;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Builder, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for DataSeed {
    type Value = Builder;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of numbers")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> std::result::Result<Builder, A::Error> {
        let mut b = Builder::new();
        Element(&mut b).visit_seq(seq)?;
        Ok(b)
    }
}

impl<'de> Deserialize<'de> for TensorData {
    /// A (nested) array of numbers; any other value is an error naming its position.
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let b = DataSeed.deserialize(d)?;
        match b.not_a_number {
            Some((i, what)) => Err(de::Error::custom(format!(
                "value at position {i} is {what}, expected a number"
            ))),
            None => Ok(b.data),
        }
    }
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

fn bad(msg: String) -> RuntimeError {
    RuntimeError::Input(msg)
}

/// Reads and parses a request file of at most `max_bytes` bytes. The size is checked before
/// reading (the file's metadata) and while reading (at most `max_bytes + 1` bytes are read), so
/// an oversized body is refused without being loaded.
pub fn read_request_file(path: &Path, max_bytes: usize) -> Result<InferRequest> {
    let io = |e: std::io::Error| RuntimeError::Io {
        path: path.into(),
        reason: e.to_string(),
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let limit = max_bytes as u64;
    if len > limit {
        return Err(bad(format!(
            "request body is {len} bytes, more than the limit of {max_bytes} (--max-request-bytes)"
        )));
    }
    let mut body = Vec::with_capacity(len as usize);
    file.take(limit.saturating_add(1))
        .read_to_end(&mut body)
        .map_err(io)?;
    if body.len() as u64 > limit {
        return Err(bad(format!(
            "request body is more than the limit of {max_bytes} bytes (--max-request-bytes)"
        )));
    }
    InferRequest::from_slice(&body)
}

/// The number of elements of `shape` (input `name`): every dimension must be `>= 0` and the
/// product must not overflow.
fn element_count(name: &str, shape: &[i64]) -> Result<usize> {
    shape.iter().enumerate().try_fold(1usize, |n, (i, &d)| {
        let d = usize::try_from(d).map_err(|_| {
            bad(format!(
                "{name}: dimension {i} of shape {shape:?} is {d}, must be >= 0"
            ))
        })?;
        n.checked_mul(d).ok_or_else(|| {
            bad(format!(
                "{name}: shape {shape:?} has too many elements (the product of its dimensions overflows)"
            ))
        })
    })
}

/// Checks that a one-dimensional input's shape `[n]` holds its values, with `n <= max`.
fn check_1d(t: &InferTensor, what: &str, max: usize, limit: &str) -> Result<()> {
    let n = element_count(&t.name, &t.shape)?;
    if t.shape.len() != 1 {
        return Err(bad(format!(
            "{}: shape {:?} must be one-dimensional [{what}]",
            t.name, t.shape
        )));
    }
    if n > max {
        return Err(bad(format!(
            "{}: shape {:?} has {n} values, more than the limit of {max} ({limit})",
            t.name, t.shape
        )));
    }
    if n != t.data.len() {
        return Err(bad(format!(
            "{}: shape {:?} does not match its {} values",
            t.name,
            t.shape,
            t.data.len()
        )));
    }
    Ok(())
}

/// Moves the values out of input `name` (present: checked before); returns them and its datatype.
fn take_data(inputs: &mut [InferTensor], name: &str) -> (TensorData, String) {
    let t = inputs
        .iter_mut()
        .find(|t| t.name == name)
        .expect("checked inputs are present");
    let data = std::mem::replace(&mut t.data, TensorData::from_i64(Vec::new()));
    (data, t.datatype.clone())
}

impl InferRequest {
    /// Parses a request body.
    pub fn from_json(text: &str) -> Result<Self> {
        Self::from_slice(text.as_bytes())
    }

    /// Parses a request body given as bytes (e.g. an HTTP body); the caller bounds its size.
    pub fn from_slice(body: &[u8]) -> Result<Self> {
        serde_json::from_slice(body).map_err(|e| {
            bad(format!(
                "request body is not a valid KServe v2 request: {e}"
            ))
        })
    }

    /// Converts to a batch and validates it against the spec (shapes, dtypes, offsets, index
    /// ranges, finite dense values). Copies the values; [`InferRequest::into_batch`] moves them.
    pub fn to_batch(&self, spec: &ModelSpec) -> Result<Batch> {
        self.clone().into_batch(spec)
    }

    /// [`InferRequest::to_batch`] without copying the values.
    pub fn into_batch(mut self, spec: &ModelSpec) -> Result<Batch> {
        let size = self.check(spec)?;
        let dense = take_data(&mut self.inputs, "dense").0.into_f32();
        let mut sparse = Vec::with_capacity(spec.features.len());
        for f in &spec.features {
            let (indices, datatype) = take_data(&mut self.inputs, &f.name);
            let indices = indices.into_ints(&f.name, &datatype)?;
            let offsets_name = format!("{}_offsets", f.name);
            let offsets = take_data(&mut self.inputs, &offsets_name)
                .0
                .into_ints(&offsets_name, &datatype)?;
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

    /// Checks the inputs' names, datatypes and shapes (everything but the values); returns `B`.
    fn check(&self, spec: &ModelSpec) -> Result<usize> {
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
        let count = element_count("dense", &d.shape)?;
        if d.shape.len() != 2 || d.shape[1] != spec.dense as i64 {
            return Err(bad(format!(
                "dense: shape {:?} must be [B, {}]",
                d.shape, spec.dense
            )));
        }
        let size = d.shape[0] as usize;
        if size == 0 {
            return Err(bad(format!(
                "dense: shape {:?} has batch size B = 0, must be > 0",
                d.shape
            )));
        }
        if size > MAX_BATCH {
            return Err(bad(format!(
                "dense: shape {:?} has batch size B = {size}, more than the limit of {MAX_BATCH} (limits::MAX_BATCH)",
                d.shape
            )));
        }
        if d.data.len() != count {
            return Err(bad(format!(
                "dense: shape {:?} needs {count} values, got {}",
                d.shape,
                d.data.len()
            )));
        }
        for f in &spec.features {
            let it = find(&f.name)?;
            let ot = find(&format!("{}_offsets", f.name))?;
            for t in [it, ot] {
                if t.datatype != "INT64" && t.datatype != "INT32" {
                    return Err(bad(format!(
                        "{}: datatype {} is not supported, use INT64 or INT32",
                        t.name, t.datatype
                    )));
                }
            }
            if it.datatype != ot.datatype {
                return Err(bad(format!(
                    "{}_offsets: datatype {} differs from {}'s {}",
                    f.name, ot.datatype, f.name, it.datatype
                )));
            }
            check_1d(it, "N", MAX_BATCH_INDICES, "limits::MAX_BATCH_INDICES")?;
            check_1d(ot, "B", MAX_BATCH, "limits::MAX_BATCH")?;
        }
        Ok(size)
    }

    /// The request body for a batch.
    pub fn from_batch(spec: &ModelSpec, batch: &Batch) -> Self {
        let ints = |name: String, v: &IndexVec| InferTensor {
            name,
            shape: vec![v.len() as i64],
            datatype: v.datatype().into(),
            data: v.into(),
        };
        let mut inputs = vec![InferTensor {
            name: "dense".into(),
            shape: vec![batch.size as i64, spec.dense as i64],
            datatype: "FP32".into(),
            data: TensorData::from_f32(batch.dense.clone()),
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
