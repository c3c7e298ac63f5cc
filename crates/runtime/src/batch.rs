//! Request batches: dense features plus per-feature indices and offsets, and their validation.
//!
//! A batch of `B` samples holds `dense` as `[B, dense_width]` row-major and, per sparse feature,
//! a flat index list with `B` offsets: bag `b` is `indices[offsets[b] .. offsets[b + 1]]` (the last
//! bag ends at the end of the list). [`Batch::validate`] checks everything a kernel relies on, so
//! an out-of-range index never reaches a kernel; a [`ValidatedBatch`], which only validation
//! makes, is what an engine runs, so a batch is validated once on its way to a kernel.

use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::Arc;

use streamrec_graph::limits::{MAX_BATCH, MAX_BATCH_INDICES};
use streamrec_graph::ModelSpec;
use streamrec_protocol::{check_dense_values, check_feature, InferRequest, RequestError};

use crate::error::{BatchError, Result};

/// Indices (or offsets) of one feature, in the request's integer type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IndexVec {
    /// 32-bit indices.
    I32(Vec<i32>),
    /// 64-bit indices.
    I64(Vec<i64>),
}

impl IndexVec {
    /// Number of entries.
    pub fn len(&self) -> usize {
        match self {
            IndexVec::I32(v) => v.len(),
            IndexVec::I64(v) => v.len(),
        }
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entry `i` widened to i64.
    pub fn get(&self, i: usize) -> i64 {
        match self {
            IndexVec::I32(v) => i64::from(v[i]),
            IndexVec::I64(v) => v[i],
        }
    }

    /// All entries widened to i64.
    pub fn to_i64(&self) -> Vec<i64> {
        match self {
            IndexVec::I32(v) => v.iter().map(|&x| i64::from(x)).collect(),
            IndexVec::I64(v) => v.clone(),
        }
    }

    /// The KServe datatype name.
    pub fn datatype(&self) -> &'static str {
        match self {
            IndexVec::I32(_) => "INT32",
            IndexVec::I64(_) => "INT64",
        }
    }
}

/// One sparse feature's lookups for a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SparseInput {
    /// Flat row indices of all bags.
    pub indices: IndexVec,
    /// Start of each bag in `indices` (`B` entries).
    pub offsets: IndexVec,
}

/// A batch of requests for one model.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// Number of samples.
    pub size: usize,
    /// Dense features, `[size, dense]` row-major.
    pub dense: Vec<f32>,
    /// One entry per feature, in spec order.
    pub sparse: Vec<SparseInput>,
}

impl Batch {
    /// Checks shapes, offsets and index ranges against the spec, with the protocol's checks of a
    /// request's tensors (one rule for both); the error names the input, the position and the
    /// value.
    pub fn validate(&self, spec: &ModelSpec) -> Result<()> {
        if self.size == 0 {
            return Err(BatchError::Empty.into());
        }
        if self.size > MAX_BATCH {
            return Err(BatchError::TooManySamples {
                what: "batch size",
                size: self.size,
            }
            .into());
        }
        let Some(dense_len) = self.size.checked_mul(spec.dense) else {
            return Err(BatchError::DenseOverflow {
                size: self.size,
                width: spec.dense,
            }
            .into());
        };
        if self.dense.len() != dense_len {
            return Err(BatchError::DenseCount {
                expected: dense_len,
                size: self.size,
                width: spec.dense,
                got: self.dense.len(),
            }
            .into());
        }
        check_dense_values(&self.dense)?;
        if self.sparse.len() != spec.features.len() {
            return Err(BatchError::FeatureCount {
                expected: spec.features.len(),
                got: self.sparse.len(),
            }
            .into());
        }
        for (inp, feat) in self.sparse.iter().zip(&spec.features) {
            check_feature(&feat.name, self.size, &inp.indices, &inp.offsets, feat.rows)?;
        }
        Ok(())
    }

    /// Concatenates batches of one model, samples in order (dynamic batching): index lists are
    /// joined and offsets shifted. A feature stays INT32 only when every part's is and the joined
    /// list fits it; otherwise it is widened to INT64. One part is returned as it is.
    pub fn concat(mut parts: Vec<Batch>) -> Batch {
        if parts.len() == 1 {
            return parts.pop().expect("one part");
        }
        let size = parts.iter().map(|b| b.size).sum();
        let mut dense = Vec::with_capacity(parts.iter().map(|b| b.dense.len()).sum());
        for b in &parts {
            dense.extend_from_slice(&b.dense);
        }
        let features = parts.first().map_or(0, |b| b.sparse.len());
        let sparse = (0..features)
            .map(|f| {
                let n: usize = parts.iter().map(|b| b.sparse[f].indices.len()).sum();
                let all32 = parts.iter().all(|b| {
                    matches!(
                        (&b.sparse[f].indices, &b.sparse[f].offsets),
                        (IndexVec::I32(_), IndexVec::I32(_))
                    )
                });
                if all32 && i32::try_from(n).is_ok() {
                    let (mut idx, mut off) = (Vec::with_capacity(n), Vec::with_capacity(size));
                    for b in &parts {
                        let base = idx.len() as i32;
                        if let (IndexVec::I32(i), IndexVec::I32(o)) =
                            (&b.sparse[f].indices, &b.sparse[f].offsets)
                        {
                            off.extend(o.iter().map(|&x| x + base));
                            idx.extend_from_slice(i);
                        }
                    }
                    return SparseInput {
                        indices: IndexVec::I32(idx),
                        offsets: IndexVec::I32(off),
                    };
                }
                let (mut idx, mut off) = (Vec::with_capacity(n), Vec::with_capacity(size));
                for b in &parts {
                    let base = idx.len() as i64;
                    let s = &b.sparse[f];
                    off.extend((0..s.offsets.len()).map(|i| s.offsets.get(i) + base));
                    match &s.indices {
                        IndexVec::I32(i) => idx.extend(i.iter().map(|&x| i64::from(x))),
                        IndexVec::I64(i) => idx.extend_from_slice(i),
                    }
                }
                SparseInput {
                    indices: IndexVec::I64(idx),
                    offsets: IndexVec::I64(off),
                }
            })
            .collect();
        Batch {
            size,
            dense,
            sparse,
        }
    }

    /// Bag `b` of feature `f` as a range into its indices.
    pub fn bag(&self, f: usize, b: usize) -> std::ops::Range<usize> {
        let s = &self.sparse[f];
        let start = s.offsets.get(b) as usize;
        let end = if b + 1 < self.size {
            s.offsets.get(b + 1) as usize
        } else {
            s.indices.len()
        };
        start..end
    }

    /// This batch grown to `size` samples (at least its own) with zero dense rows and empty
    /// bags; the indices are shared, not copied, when nothing is added.
    pub fn padded(self: &Arc<Self>, size: usize) -> Arc<Batch> {
        if size <= self.size {
            return Arc::clone(self);
        }
        let extra = size - self.size;
        let dense_w = self.dense.len() / self.size;
        let mut dense = Vec::with_capacity(size * dense_w);
        dense.extend_from_slice(&self.dense);
        dense.resize(size * dense_w, 0.0);
        let grow = |o: &IndexVec, n: usize| match o {
            IndexVec::I32(o) => IndexVec::I32(
                o.iter()
                    .copied()
                    .chain(std::iter::repeat_n(n as i32, extra))
                    .collect(),
            ),
            IndexVec::I64(o) => IndexVec::I64(
                o.iter()
                    .copied()
                    .chain(std::iter::repeat_n(n as i64, extra))
                    .collect(),
            ),
        };
        let sparse = self
            .sparse
            .iter()
            .map(|s| SparseInput {
                indices: s.indices.clone(),
                offsets: grow(&s.offsets, s.indices.len()),
            })
            .collect();
        Arc::new(Batch {
            size,
            dense,
            sparse,
        })
    }
}

/// What identifies a model to its batches: a hash of the dense width and each feature's name
/// and rows, everything validation checks a batch against. An engine computes its model's once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelKey(u64);

impl ModelKey {
    /// The key of `spec`.
    pub fn of(spec: &ModelSpec) -> ModelKey {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        spec.dense.hash(&mut h);
        for f in &spec.features {
            (&f.name, f.rows).hash(&mut h);
        }
        ModelKey(h.finish())
    }
}

fn model_key(spec: &ModelSpec) -> ModelKey {
    ModelKey::of(spec)
}

/// A [`Batch`] that passed validation against a model: only [`ValidatedBatch::new`] (which runs
/// [`Batch::validate`]), [`ValidatedBatch::from_request`] (the protocol's validation of a
/// request, the same rules) and the operations below on validated batches make one. An engine
/// runs nothing else, and checks only that the batch was validated for its model.
#[derive(Clone, Debug)]
pub struct ValidatedBatch {
    batch: Arc<Batch>,
    model: ModelKey,
}

impl ValidatedBatch {
    /// Validates `batch` against `spec` ([`Batch::validate`]).
    pub fn new(batch: impl Into<Arc<Batch>>, spec: &ModelSpec) -> Result<Self> {
        let batch = batch.into();
        batch.validate(spec)?;
        Ok(ValidatedBatch {
            batch,
            model: model_key(spec),
        })
    }

    /// Validates a KServe v2 request against `spec` and moves its values into a batch: one
    /// validation, the protocol's (the rules of [`Batch::validate`]).
    pub fn from_request(
        request: InferRequest,
        spec: &ModelSpec,
    ) -> std::result::Result<Self, RequestError> {
        let inputs = request.validate(spec)?;
        Ok(ValidatedBatch {
            batch: Arc::new(Batch::from(inputs)),
            model: model_key(spec),
        })
    }

    /// Takes `batch` as valid for `spec` without checking it.
    ///
    /// # Safety
    /// The batch must pass [`Batch::validate`] for `spec`: a device kernel trusts the offsets
    /// and indices and reads memory at them (the CPU kernels' own bounds checks panic, which
    /// the engine turns into a failed request).
    pub unsafe fn new_unchecked(batch: impl Into<Arc<Batch>>, spec: &ModelSpec) -> Self {
        ValidatedBatch {
            batch: batch.into(),
            model: model_key(spec),
        }
    }

    /// The batch.
    pub fn batch(&self) -> &Arc<Batch> {
        &self.batch
    }

    /// Whether this batch was validated against `spec` (its dense width, feature names and
    /// rows).
    pub fn is_for(&self, spec: &ModelSpec) -> bool {
        self.model == model_key(spec)
    }

    /// Whether this batch was validated against the model whose key is `key`.
    pub fn is_for_key(&self, key: ModelKey) -> bool {
        self.model == key
    }

    /// Concatenates validated batches of one model ([`Batch::concat`]): the result is valid
    /// when its size and every feature's index count stay within the limits, which is checked.
    pub fn concat(parts: Vec<ValidatedBatch>) -> Result<ValidatedBatch> {
        let model = parts
            .first()
            .map(|p| p.model)
            .ok_or(BatchError::NothingToConcat)?;
        if parts.iter().any(|p| p.model != model) {
            return Err(BatchError::MixedModels.into());
        }
        let size: usize = parts.iter().map(|p| p.size).sum();
        if size > MAX_BATCH {
            return Err(BatchError::TooManySamples {
                what: "the concatenated batch's size",
                size,
            }
            .into());
        }
        let features = parts[0].sparse.len();
        for f in 0..features {
            let n: usize = parts.iter().map(|p| p.sparse[f].indices.len()).sum();
            if n > MAX_BATCH_INDICES {
                return Err(BatchError::TooManyIndices {
                    feature: f,
                    indices: n,
                }
                .into());
            }
        }
        let batches = parts
            .into_iter()
            .map(|p| Arc::try_unwrap(p.batch).unwrap_or_else(|b| (*b).clone()))
            .collect();
        Ok(ValidatedBatch {
            batch: Arc::new(Batch::concat(batches)),
            model,
        })
    }

    /// This batch padded to `size` samples ([`Batch::padded`]); at most `MAX_BATCH`.
    pub fn padded(&self, size: usize) -> Result<ValidatedBatch> {
        if size > MAX_BATCH {
            return Err(BatchError::TooManySamples {
                what: "the padded batch's size",
                size,
            }
            .into());
        }
        Ok(ValidatedBatch {
            batch: self.batch.padded(size),
            model: self.model,
        })
    }
}

impl Deref for ValidatedBatch {
    type Target = Batch;
    fn deref(&self) -> &Batch {
        &self.batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(size: usize, dense: f32, idx: IndexVec, off: IndexVec) -> Batch {
        Batch {
            size,
            dense: vec![dense; size * 2],
            sparse: vec![SparseInput {
                indices: idx,
                offsets: off,
            }],
        }
    }

    #[test]
    fn concat_joins_samples_and_shifts_offsets() {
        let a = batch(
            2,
            1.0,
            IndexVec::I32(vec![5, 6, 7]),
            IndexVec::I32(vec![0, 1]),
        );
        let b = batch(1, 2.0, IndexVec::I32(vec![8, 9]), IndexVec::I32(vec![0]));
        let c = Batch::concat(vec![a.clone(), b.clone()]);
        assert_eq!(c.size, 3);
        assert_eq!(c.dense, [1.0, 1.0, 1.0, 1.0, 2.0, 2.0]);
        assert_eq!(c.sparse[0].indices, IndexVec::I32(vec![5, 6, 7, 8, 9]));
        assert_eq!(c.sparse[0].offsets, IndexVec::I32(vec![0, 1, 3]));
        assert_eq!(c.bag(0, 2), 3..5);
        // One INT64 part widens the feature.
        let d = batch(1, 3.0, IndexVec::I64(vec![4]), IndexVec::I64(vec![0]));
        let e = Batch::concat(vec![a, d, b]);
        assert_eq!(e.sparse[0].indices, IndexVec::I64(vec![5, 6, 7, 4, 8, 9]));
        assert_eq!(e.sparse[0].offsets, IndexVec::I64(vec![0, 1, 3, 4]));
        assert_eq!(e.bag(0, 3), 4..6);
    }

    /// Dense 2, one feature C1 of `rows` rows.
    fn spec(rows: usize) -> ModelSpec {
        ModelSpec::parse(
            &format!(
                "dense = 2\n[bottom]\nlayers = [4]\n[sparse]\ncount = 1\nrows = [{rows}]\n\
                 dim = 4\n[top]\nlayers = [1]\n[interaction]\nkind = \"cat\"\n"
            ),
            "small",
            None,
        )
        .unwrap()
    }

    #[test]
    fn only_validation_makes_a_validated_batch_and_it_knows_its_model() {
        let (s9, s5) = (spec(9), spec(5));
        let ok = batch(2, 1.0, IndexVec::I64(vec![8, 1]), IndexVec::I64(vec![0, 1]));
        let v = ValidatedBatch::new(ok.clone(), &s9).unwrap();
        assert!(v.is_for(&s9) && !v.is_for(&s5));
        let err = ValidatedBatch::new(ok, &s5).unwrap_err().to_string();
        assert_eq!(
            err,
            "C1: index at position 0 is 8, out of range for a table of 5 rows"
        );
        // Batches validated for different models are not concatenated.
        let w = ValidatedBatch::new(
            batch(1, 0.0, IndexVec::I64(vec![4]), IndexVec::I64(vec![0])),
            &s5,
        )
        .unwrap();
        let err = ValidatedBatch::concat(vec![v.clone(), w]).unwrap_err();
        assert!(err.to_string().contains("different models"), "{err}");
        assert!(ValidatedBatch::concat(Vec::new()).is_err());
    }

    #[test]
    fn validated_batches_concatenate_and_pad_within_the_limits() {
        let s = spec(9);
        let part = |n: usize| {
            let idx = IndexVec::I32((0..n as i32).map(|i| i % 9).collect());
            let off = IndexVec::I32((0..n as i32).collect());
            ValidatedBatch::new(batch(n, 0.5, idx, off), &s).unwrap()
        };
        let c = ValidatedBatch::concat(vec![part(3), part(2)]).unwrap();
        assert_eq!(c.size, 5);
        assert!(c.is_for(&s));
        c.validate(&s).unwrap();
        // Beyond MAX_BATCH samples together: refused, though each part is valid.
        let half = part(MAX_BATCH / 2 + 1);
        let err = ValidatedBatch::concat(vec![half.clone(), half]).unwrap_err();
        assert!(err.to_string().contains("limits::MAX_BATCH"), "{err}");
        // Padding adds empty bags and zero rows, shares nothing it changes, stays valid.
        let p = c.padded(8).unwrap();
        assert_eq!(p.size, 8);
        assert_eq!(
            p.sparse[0].offsets,
            IndexVec::I32(vec![0, 1, 2, 3, 4, 5, 5, 5])
        );
        assert_eq!(&p.dense[10..], &[0.0; 6]);
        assert_eq!(p.bag(0, 7), 5..5);
        p.validate(&s).unwrap();
        assert!(Arc::ptr_eq(c.padded(5).unwrap().batch(), c.batch()));
        assert!(c.padded(MAX_BATCH + 1).is_err());
    }
}
