//! Random batches: dense features and indices drawn uniformly or from a Zipf law.

use std::str::FromStr;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use streamrec_graph::ModelSpec;

use crate::batch::{Batch, IndexVec, SparseInput, ValidatedBatch};
use crate::error::Result;

/// How indices are drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Skew {
    /// Every row equally likely.
    Uniform,
    /// Zipf with exponent `s` over the table's rows; hot rows are scattered over the table.
    Zipf(f64),
}

impl FromStr for Skew {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "uniform" {
            return Ok(Skew::Uniform);
        }
        let bad =
            || format!("--skew `{s}`: expected `uniform` or `zipf:S` with S > 0 (e.g. zipf:1.05)");
        let v = s.strip_prefix("zipf:").ok_or_else(bad)?;
        let e: f64 = v.parse().map_err(|_| bad())?;
        if e.is_finite() && e > 0.0 {
            Ok(Skew::Zipf(e))
        } else {
            Err(bad())
        }
    }
}

/// Makes a random batch of `size` samples: dense values uniform in [-1, 1], each feature's
/// bags holding exactly its spec'd pooling size of indices, drawn by `skew`.
pub fn random_batch(spec: &ModelSpec, size: usize, skew: Skew, seed: u64) -> Batch {
    let mut rng = StdRng::seed_from_u64(seed);
    let dense = (0..size * spec.dense)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    let sparse = spec
        .features
        .iter()
        .map(|f| {
            let n = size * f.pooling;
            let rows = f.rows as u64;
            let indices: Vec<i64> = match skew {
                Skew::Uniform => (0..n).map(|_| rng.random_range(0..rows) as i64).collect(),
                Skew::Zipf(s) => {
                    let z = Zipf::new(rows as f64, s).expect("valid zipf parameters");
                    (0..n)
                        .map(|_| {
                            let k = z.sample(&mut rng) as u64 - 1;
                            // Scatter hot ranks over the table with a multiplicative hash.
                            ((k.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11) % rows) as i64
                        })
                        .collect()
                }
            };
            let offsets = (0..size).map(|b| (b * f.pooling) as i64).collect();
            SparseInput {
                indices: IndexVec::I64(indices),
                offsets: IndexVec::I64(offsets),
            }
        })
        .collect();
    Batch {
        size,
        dense,
        sparse,
    }
}

/// [`random_batch`] validated against `spec`, ready for an engine. Fails only where the spec
/// allows no valid batch of `size` (e.g. more samples or indices than the limits).
pub fn random_validated(
    spec: &ModelSpec,
    size: usize,
    skew: Skew,
    seed: u64,
) -> Result<ValidatedBatch> {
    ValidatedBatch::new(random_batch(spec, size, skew, seed), spec)
}
