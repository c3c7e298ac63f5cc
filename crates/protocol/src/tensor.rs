//! Tensor values ([`TensorData`]): one flat vector per tensor, deserialised from (nested) JSON
//! arrays of numbers without a generic JSON tree, written back as JSON or as raw
//! little-endian bytes (Triton's binary tensor data extension), and turned into the integers
//! of an INT64 or INT32 tensor with an error naming the first value that is not one.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{RequestError, Result, TensorProblem};
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
    pub(crate) fn into_f32(self) -> Vec<f32> {
        match self.values {
            Values::I64(v) => v.into_iter().map(|x| x as f32).collect(),
            Values::F32(v) => v,
        }
    }

    /// The values of an INT64 or INT32 tensor named `name`; an error names the first value that
    /// is not an integer or does not fit `datatype`. INT32 values are checked to fit and kept
    /// as `i64`.
    pub(crate) fn into_ints(self, name: &str, datatype: &str) -> Result<Vec<i64>> {
        let problem = |p: TensorProblem| Err(RequestError::tensor(name, p));
        if let Some((position, v)) = self.first_non_i64 {
            let outside = |value: String| TensorProblem::OutsideDatatype {
                position,
                value,
                datatype: datatype.into(),
            };
            return problem(match v {
                // An integer below i64::MIN (serde_json reads it as a float; it may round to
                // -2^63 exactly), or e.g. 1e19.
                NonI64::Float(x) if x.fract() == 0.0 && (x <= I64_MIN_F || x >= -I64_MIN_F) => {
                    outside(format!("{x:?}"))
                }
                NonI64::Float(x) => TensorProblem::NotAnInteger {
                    position,
                    value: format!("{x:?}"),
                },
                NonI64::Big(x) => outside(x.to_string()),
            });
        }
        let v = match self.values {
            Values::I64(v) => v,
            // Built in code with `from_f32`.
            Values::F32(v) => match v.first() {
                None => Vec::new(),
                Some(x) => {
                    return problem(TensorProblem::NotAnInteger {
                        position: 0,
                        value: format!("{x:?}"),
                    })
                }
            },
        };
        match datatype {
            "INT64" => Ok(v),
            "INT32" => match v.iter().position(|&x| i32::try_from(x).is_err()) {
                None => Ok(v),
                Some(position) => problem(TensorProblem::OutsideDatatype {
                    position,
                    value: v[position].to_string(),
                    datatype: "INT32".into(),
                }),
            },
            d => problem(TensorProblem::IndexDatatype(d.into())),
        }
    }

    /// Appends the values as raw little-endian `datatype` elements (Triton's binary tensor
    /// data): FP32 as `f32`, INT32 as `i32`, anything else as `i64`; values of another type are
    /// converted with `as`.
    pub(crate) fn write_le(&self, datatype: &str, out: &mut Vec<u8>) {
        match (&self.values, datatype) {
            (Values::F32(v), "FP32") => out.extend(v.iter().flat_map(|x| x.to_le_bytes())),
            (Values::I64(v), "FP32") => {
                out.extend(v.iter().flat_map(|&x| (x as f32).to_le_bytes()))
            }
            (Values::I64(v), "INT32") => {
                out.extend(v.iter().flat_map(|&x| (x as i32).to_le_bytes()))
            }
            (Values::F32(v), "INT32") => {
                out.extend(v.iter().flat_map(|&x| (x as i32).to_le_bytes()))
            }
            (Values::I64(v), _) => out.extend(v.iter().flat_map(|x| x.to_le_bytes())),
            (Values::F32(v), _) => out.extend(v.iter().flat_map(|&x| (x as i64).to_le_bytes())),
        }
    }

    /// Decodes raw little-endian binary data of input `name`.
    pub(crate) fn from_le(name: &str, datatype: &str, raw: &[u8]) -> Result<TensorData> {
        let problem = |p: TensorProblem| Err(RequestError::tensor(name, p));
        let width = match datatype {
            "FP32" | "INT32" => 4,
            "INT64" => 8,
            d => return problem(TensorProblem::BinaryDatatype(d.into())),
        };
        if !raw.len().is_multiple_of(width) {
            return problem(TensorProblem::BinarySize {
                size: raw.len(),
                width,
                datatype: datatype.into(),
            });
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
pub(crate) struct Builder {
    pub(crate) data: TensorData,
    /// The first value that is not a number: its position and a description.
    pub(crate) not_a_number: Option<(usize, String)>,
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
pub(crate) struct DataSeed;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_data_alone_refuses_a_string_and_flattens_nested_arrays() {
        let err = serde_json::from_str::<TensorData>("[[1, 2], [3, \"x\"]]").unwrap_err();
        assert!(
            err.to_string()
                .contains("value at position 3 is the string \"x\", expected a number"),
            "{err}"
        );
        let d: TensorData = serde_json::from_str("[[1, 2], [3, 4]]").unwrap();
        assert_eq!(d.as_i64(), Some(&[1, 2, 3, 4][..]));
        let d: TensorData = serde_json::from_str("[1, 2.5, 3]").unwrap();
        assert_eq!((d.as_i64(), d.to_f32()), (None, vec![1.0, 2.5, 3.0]));
    }

    #[test]
    fn ints_name_the_first_value_that_does_not_fit() {
        let e = TensorData::from_i64(vec![1, 1 << 40])
            .into_ints("C1", "INT32")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "C1: value at position 1 is 1099511627776, outside INT32"
        );
        let e = TensorData::from_f32(vec![0.5])
            .into_ints("C1", "INT64")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "C1: value at position 0 is 0.5, expected an integer"
        );
        let e = TensorData::from_i64(vec![1])
            .into_ints("C1", "FP32")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "C1: datatype FP32 is not supported, use INT64 or INT32"
        );
        assert_eq!(
            TensorData::from_i64(vec![-3, 7])
                .into_ints("C1", "INT32")
                .unwrap(),
            vec![-3, 7]
        );
    }

    #[test]
    fn little_endian_data_round_trips_per_datatype() {
        for (datatype, data, width) in [
            ("FP32", TensorData::from_f32(vec![0.5, -2.25]), 4),
            ("INT32", TensorData::from_i64(vec![-1, 1 << 30]), 4),
            ("INT64", TensorData::from_i64(vec![-1, 1 << 40]), 8),
        ] {
            let mut raw = Vec::new();
            data.write_le(datatype, &mut raw);
            assert_eq!(raw.len(), 2 * width, "{datatype}");
            assert_eq!(
                TensorData::from_le("x", datatype, &raw).unwrap(),
                data,
                "{datatype}"
            );
        }
        let e = TensorData::from_le("dense", "FP32", &[0; 6]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "dense: binary_data_size 6 is not a multiple of the 4-byte FP32 element"
        );
        let e = TensorData::from_le("dense", "FP16", &[0; 4]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("dense: datatype FP16 is not supported (use FP32"),
            "{e}"
        );
    }
}
