//! Request batches: dense features plus per-feature indices and offsets, and their validation.
//!
//! A batch of `B` samples holds `dense` as `[B, dense_width]` row-major and, per sparse feature,
//! a flat index list with `B` offsets: bag `b` is `indices[offsets[b] .. offsets[b + 1]]` (the last
//! bag ends at the end of the list). [`Batch::validate`] checks everything a kernel relies on, so
//! an out-of-range index never reaches a kernel.

use streamrec_graph::limits::MAX_BATCH;
use streamrec_graph::ModelSpec;
use streamrec_protocol::{check_dense_values, check_feature};

use crate::error::{Result, RuntimeError};

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
        let bad = |m: String| Err(RuntimeError::Input(m));
        if self.size == 0 {
            return bad("batch size must be > 0".into());
        }
        if self.size > MAX_BATCH {
            return bad(format!(
                "batch size {} is more than the limit of {MAX_BATCH} (limits::MAX_BATCH)",
                self.size
            ));
        }
        let Some(dense_len) = self.size.checked_mul(spec.dense) else {
            return bad(format!(
                "dense: [{}, {}] has too many values (the product overflows)",
                self.size, spec.dense
            ));
        };
        if self.dense.len() != dense_len {
            return bad(format!(
                "dense: expected {dense_len} values ([{}, {}]), got {}",
                self.size,
                spec.dense,
                self.dense.len()
            ));
        }
        check_dense_values(&self.dense)?;
        if self.sparse.len() != spec.features.len() {
            return bad(format!(
                "expected {} sparse features, got {}",
                spec.features.len(),
                self.sparse.len()
            ));
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
}
