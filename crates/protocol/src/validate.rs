//! Checking a request against a model ([`InferRequest::validate`]): input names, datatypes and
//! shapes, then the values: integers that fit their datatype, finite dense values, offsets that
//! start at 0, never decrease and stay within the indices, and indices within their tables.
//!
//! Every size is computed with checked arithmetic and bounded by [`streamrec_graph::limits`]
//! before anything is allocated. The value checks ([`check_dense_values`], [`check_feature`])
//! also serve batches built in code: they take any [`IndexSeq`].

use streamrec_graph::limits::{MAX_BATCH, MAX_BATCH_INDICES};
use streamrec_graph::ModelSpec;

use crate::error::{RequestError, Result, TensorProblem};
use crate::request::{offsets_name, InferRequest, InferTensor};
use crate::tensor::TensorData;

/// The integer type of one feature's indices and offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexType {
    /// `INT32`.
    Int32,
    /// `INT64`.
    Int64,
}

impl IndexType {
    /// The KServe datatype name.
    pub fn name(self) -> &'static str {
        match self {
            IndexType::Int32 => "INT32",
            IndexType::Int64 => "INT64",
        }
    }
}

/// One feature of a validated request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidFeature {
    /// The datatype of its indices and offsets; every value fits it.
    pub datatype: IndexType,
    /// Row indices of all bags, each within the feature's table.
    pub indices: Vec<i64>,
    /// Start of each bag in `indices`, one per sample.
    pub offsets: Vec<i64>,
}

/// The inputs of a request that passed every check of [`InferRequest::validate`].
#[derive(Clone, Debug, PartialEq)]
pub struct ValidInputs {
    /// Samples (`B`), in `1..=MAX_BATCH`.
    pub size: usize,
    /// Dense features, `[B, dense]` row-major, all finite.
    pub dense: Vec<f32>,
    /// One entry per feature, in spec order.
    pub features: Vec<ValidFeature>,
}

/// A sequence of indices or offsets, read as `i64` (slices of `i64` or `i32`; the runtime's
/// index vectors implement it too).
pub trait IndexSeq {
    /// Number of entries.
    fn len(&self) -> usize;
    /// Entry `i` widened to `i64`.
    fn at(&self, i: usize) -> i64;
    /// True when empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl IndexSeq for [i64] {
    fn len(&self) -> usize {
        <[i64]>::len(self)
    }
    fn at(&self, i: usize) -> i64 {
        self[i]
    }
}

impl IndexSeq for [i32] {
    fn len(&self) -> usize {
        <[i32]>::len(self)
    }
    fn at(&self, i: usize) -> i64 {
        i64::from(self[i])
    }
}

fn problem<T>(tensor: &str, p: TensorProblem) -> Result<T> {
    Err(RequestError::tensor(tensor, p))
}

/// Checks that every dense value is finite; the error names the first that is not.
pub fn check_dense_values(dense: &[f32]) -> Result<()> {
    match dense.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(position) => problem(
            "dense",
            TensorProblem::NotFinite {
                position,
                value: dense[position],
            },
        ),
    }
}

/// Checks one feature (`name`, a table of `rows` rows) of a batch of `size` samples: one offset
/// per sample, at most `MAX_BATCH_INDICES` indices, offsets from 0 that never decrease and stay
/// within the indices, every index in `0..rows`. The error names the input, position and value.
pub fn check_feature<I, O>(
    name: &str,
    size: usize,
    indices: &I,
    offsets: &O,
    rows: usize,
) -> Result<()>
where
    I: IndexSeq + ?Sized,
    O: IndexSeq + ?Sized,
{
    let off = || offsets_name(name);
    if offsets.len() != size {
        return problem(
            &off(),
            TensorProblem::OffsetCount {
                expected: size,
                got: offsets.len(),
            },
        );
    }
    if indices.len() > MAX_BATCH_INDICES {
        return problem(
            name,
            TensorProblem::TooManyIndices {
                count: indices.len(),
            },
        );
    }
    let n = indices.len() as i64;
    let mut previous = 0i64;
    for position in 0..size {
        let value = offsets.at(position);
        let p = if position == 0 && value != 0 {
            TensorProblem::FirstOffset { value }
        } else if value < previous {
            TensorProblem::DecreasingOffset {
                position,
                value,
                previous,
            }
        } else if value > n {
            TensorProblem::OffsetPastEnd {
                position,
                value,
                indices: n,
            }
        } else {
            previous = value;
            continue;
        };
        return problem(&off(), p);
    }
    let rows = rows as i64;
    for position in 0..indices.len() {
        let value = indices.at(position);
        if value < 0 || value >= rows {
            return problem(
                name,
                TensorProblem::IndexOutOfRange {
                    position,
                    value,
                    rows,
                },
            );
        }
    }
    Ok(())
}

/// The number of elements of `shape` (input `name`): every dimension must be `>= 0` and the
/// product must not overflow.
fn element_count(name: &str, shape: &[i64]) -> Result<usize> {
    shape.iter().enumerate().try_fold(1usize, |n, (dim, &d)| {
        let Ok(d) = usize::try_from(d) else {
            return problem(
                name,
                TensorProblem::NegativeDimension {
                    dim,
                    shape: shape.to_vec(),
                    value: d,
                },
            );
        };
        match n.checked_mul(d) {
            Some(n) => Ok(n),
            None => problem(
                name,
                TensorProblem::ShapeOverflow {
                    shape: shape.to_vec(),
                },
            ),
        }
    })
}

/// Checks that a one-dimensional input's shape `[n]` holds its values, with `n <= max`.
fn check_1d(t: &InferTensor, dim: &'static str, max: usize, limit: &'static str) -> Result<()> {
    let count = element_count(&t.name, &t.shape)?;
    let shape = || t.shape.clone();
    if t.shape.len() != 1 {
        return problem(
            &t.name,
            TensorProblem::NotOneDimensional {
                shape: shape(),
                dim,
            },
        );
    }
    if count > max {
        return problem(
            &t.name,
            TensorProblem::ShapeOverLimit {
                shape: shape(),
                count,
                max,
                limit,
            },
        );
    }
    if count != t.data.len() {
        return problem(
            &t.name,
            TensorProblem::ShapeMismatch {
                shape: shape(),
                values: t.data.len(),
            },
        );
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
    /// Checks the request against `spec` and moves its values out: the names, datatypes and
    /// shapes of the inputs first, then the values (integers that fit their datatype, finite
    /// dense values, offsets, index ranges). The error names the input, position and value.
    pub fn validate(mut self, spec: &ModelSpec) -> Result<ValidInputs> {
        let size = self.check(spec)?;
        let dense = take_data(&mut self.inputs, "dense").0.into_f32();
        let mut features = Vec::with_capacity(spec.features.len());
        for f in &spec.features {
            let (indices, datatype) = take_data(&mut self.inputs, &f.name);
            let indices = indices.into_ints(&f.name, &datatype)?;
            let off = offsets_name(&f.name);
            let offsets = take_data(&mut self.inputs, &off)
                .0
                .into_ints(&off, &datatype)?;
            let datatype = match datatype.as_str() {
                "INT32" => IndexType::Int32,
                _ => IndexType::Int64,
            };
            features.push(ValidFeature {
                datatype,
                indices,
                offsets,
            });
        }
        check_dense_values(&dense)?;
        for (f, v) in spec.features.iter().zip(&features) {
            check_feature(&f.name, size, &v.indices[..], &v.offsets[..], f.rows)?;
        }
        Ok(ValidInputs {
            size,
            dense,
            features,
        })
    }

    /// Checks the inputs' names, datatypes and shapes (everything but the values); returns `B`.
    fn check(&self, spec: &ModelSpec) -> Result<usize> {
        let find = |name: &str| -> Result<&InferTensor> {
            let mut it = self.inputs.iter().filter(|t| t.name == name);
            let t = it
                .next()
                .ok_or_else(|| RequestError::MissingInput(name.into()))?;
            if it.next().is_some() {
                return Err(RequestError::DuplicateInput(name.into()));
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
                return Err(RequestError::UnknownInput {
                    input: t.name.clone(),
                    model: spec.name.clone(),
                });
            }
        }
        let d = find("dense")?;
        let shape = || d.shape.clone();
        if d.datatype != "FP32" {
            return problem("dense", TensorProblem::DenseDatatype(d.datatype.clone()));
        }
        let need = element_count("dense", &d.shape)?;
        if d.shape.len() != 2 || d.shape[1] != spec.dense as i64 {
            return problem(
                "dense",
                TensorProblem::DenseShape {
                    shape: shape(),
                    width: spec.dense,
                },
            );
        }
        let size = d.shape[0] as usize;
        if size == 0 {
            return problem("dense", TensorProblem::EmptyBatch { shape: shape() });
        }
        if size > MAX_BATCH {
            return problem(
                "dense",
                TensorProblem::BatchOverLimit {
                    shape: shape(),
                    size,
                },
            );
        }
        if d.data.len() != need {
            return problem(
                "dense",
                TensorProblem::DenseCount {
                    shape: shape(),
                    need,
                    got: d.data.len(),
                },
            );
        }
        for f in &spec.features {
            let it = find(&f.name)?;
            let ot = find(&offsets_name(&f.name))?;
            for t in [it, ot] {
                if t.datatype != "INT64" && t.datatype != "INT32" {
                    return problem(&t.name, TensorProblem::IndexDatatype(t.datatype.clone()));
                }
            }
            if it.datatype != ot.datatype {
                return problem(
                    &ot.name,
                    TensorProblem::DatatypeDiffers {
                        datatype: ot.datatype.clone(),
                        feature: f.name.clone(),
                        expected: it.datatype.clone(),
                    },
                );
            }
            check_1d(it, "N", MAX_BATCH_INDICES, "limits::MAX_BATCH_INDICES")?;
            check_1d(ot, "B", MAX_BATCH, "limits::MAX_BATCH")?;
        }
        Ok(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dense 2; C1 9 rows, C2 5 rows.
    fn spec() -> ModelSpec {
        ModelSpec::parse(
            "dense = 2\n[bottom]\nlayers = [4]\n[sparse]\ncount = 2\nrows = [9, 5]\ndim = 4\n\
             [top]\nlayers = [1]\n[interaction]\nkind = \"cat\"\n",
            "small",
            None,
        )
        .unwrap()
    }

    /// Two samples: C1 bags [1, 2] and [3], C2 bags [] and [4].
    fn request(datatype: &str) -> InferRequest {
        InferRequest {
            id: None,
            inputs: vec![
                InferTensor::dense(2, 2, vec![0.5, 1.0, -1.0, 0.0]),
                InferTensor::ints("C1", datatype, vec![1, 2, 3]),
                InferTensor::ints("C1_offsets", datatype, vec![0, 2]),
                InferTensor::ints("C2", datatype, vec![4]),
                InferTensor::ints("C2_offsets", datatype, vec![0, 0]),
            ],
        }
    }

    fn with(name: &str, values: Vec<i64>) -> InferRequest {
        let mut r = request("INT64");
        let t = r.inputs.iter_mut().find(|t| t.name == name).unwrap();
        *t = InferTensor::ints(name, "INT64", values);
        r
    }

    fn refused(r: InferRequest) -> String {
        r.validate(&spec()).unwrap_err().to_string()
    }

    #[test]
    fn a_valid_request_gives_its_values() {
        let v = request("INT32").validate(&spec()).unwrap();
        assert_eq!(v.size, 2);
        assert_eq!(v.dense, vec![0.5, 1.0, -1.0, 0.0]);
        assert_eq!(v.features[0].datatype, IndexType::Int32);
        assert_eq!(v.features[1].indices, vec![4]);
        assert_eq!(v.features[1].offsets, vec![0, 0]);
    }

    #[test]
    fn names_datatypes_and_shapes_are_checked() {
        let mut r = request("INT64");
        r.inputs.pop();
        assert_eq!(refused(r), "input `C2_offsets` is missing");
        let mut r = request("INT64");
        r.inputs.push(InferTensor::ints("C3", "INT64", vec![0]));
        assert_eq!(refused(r), "input `C3` is not an input of model `small`");
        let mut r = request("INT64");
        r.inputs[4].datatype = "INT32".into();
        assert_eq!(
            refused(r),
            "C2_offsets: datatype INT32 differs from C2's INT64"
        );
        let mut r = request("INT64");
        r.inputs[0].shape = vec![2, 3];
        assert_eq!(refused(r), "dense: shape [2, 3] must be [B, 2]");
    }

    #[test]
    fn values_are_checked() {
        assert_eq!(
            refused(with("C1", vec![1, 9, 3])),
            "C1: index at position 1 is 9, out of range for a table of 9 rows"
        );
        assert_eq!(
            refused(with("C1_offsets", vec![0, 4])),
            "C1_offsets: position 1 is 4, beyond the 3 indices"
        );
        let mut r = request("INT64");
        r.inputs[0] = InferTensor::dense(2, 2, vec![0.5, f32::NAN, 0.0, 0.0]);
        assert_eq!(
            refused(r),
            "dense: value at position 1 is NaN, must be finite"
        );
        let mut r = request("INT32");
        r.inputs[1] = InferTensor::ints("C1", "INT32", vec![1, 1 << 33, 3]);
        assert_eq!(
            refused(r),
            "C1: value at position 1 is 8589934592, outside INT32"
        );
    }

    #[test]
    fn feature_checks_take_any_index_sequence() {
        let ok: &[i32] = &[0, 1];
        check_feature("C1", 2, ok, &[0i64, 1][..], 2).unwrap();
        let e = check_feature("C1", 2, ok, &[1i32, 1][..], 2).unwrap_err();
        assert_eq!(e.to_string(), "C1_offsets: position 0 is 1, must be 0");
        let e = check_feature("C1", 2, ok, &[0i32, 2, 1][..], 2).unwrap_err();
        assert_eq!(
            e.to_string(),
            "C1_offsets: expected 2 offsets (one per sample), got 3"
        );
        let e = check_feature("C1", 3, ok, &[0i32, 2, 1][..], 2).unwrap_err();
        assert_eq!(
            e.to_string(),
            "C1_offsets: position 2 is 1, less than the previous offset 2 (offsets must not decrease)"
        );
    }
}
