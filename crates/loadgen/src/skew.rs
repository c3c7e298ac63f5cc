//! Index skew: uniform rows, or a Zipf law (hot rows scattered over the table), with the
//! exponent given or fitted to production locality statistics (the fit is checked by
//! crates/loadgen/tests/zipf_fit.rs; see workloads/traces/README.md).

use std::fmt;
use std::str::FromStr;

use rand::Rng;
use rand_distr::{Distribution, Zipf};

use crate::error::LoadError;

/// The Zipf exponent fitted to the production embedding-access statistics of
/// facebookresearch/dlrm_datasets (2021 and 2022, 33 batches): `--skew zipf:production`. The
/// best single Zipf law has s = 0.95 over about 178,000 rows per table, with a mean
/// Kolmogorov-Smirnov distance of 0.116 to the measured hit-count CDFs (worst batch 0.139).
/// `cargo test -p streamrec-loadgen --test zipf_fit` recomputes it; the fit and its error are
/// in workloads/traces/README.md.
pub const PRODUCTION_ZIPF: f64 = 0.95;

/// How indices are drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Skew {
    /// Every row equally likely.
    Uniform,
    /// Zipf with this exponent over the table's rows; hot ranks are scattered over the table
    /// with a multiplicative hash (the same as `streamrec run --skew zipf:S`).
    Zipf(f64),
}

impl FromStr for Skew {
    type Err = LoadError;
    fn from_str(s: &str) -> Result<Skew, LoadError> {
        let bad = || {
            LoadError::invalid(format!(
                "--skew `{s}`: expected uniform, zipf:S with 0 < S <= 10, or zipf:production"
            ))
        };
        if s == "uniform" {
            return Ok(Skew::Uniform);
        }
        match s.strip_prefix("zipf:") {
            Some("production") => Ok(Skew::Zipf(PRODUCTION_ZIPF)),
            Some(v) => {
                let e: f64 = v.parse().map_err(|_| bad())?;
                if e.is_finite() && e > 0.0 && e <= 10.0 {
                    Ok(Skew::Zipf(e))
                } else {
                    Err(bad())
                }
            }
            None => Err(bad()),
        }
    }
}

impl fmt::Display for Skew {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skew::Uniform => write!(f, "uniform"),
            Skew::Zipf(s) => write!(f, "zipf:{s}"),
        }
    }
}

/// Draws row indices of one table.
pub struct IndexSampler {
    rows: u64,
    zipf: Option<Zipf<f64>>,
}

impl IndexSampler {
    /// A sampler over `rows` rows (at least 1).
    pub fn new(skew: Skew, rows: u64) -> IndexSampler {
        let rows = rows.max(1);
        let zipf = match skew {
            Skew::Uniform => None,
            Skew::Zipf(s) => Some(Zipf::new(rows as f64, s).expect("rows >= 1 and s > 0")),
        };
        IndexSampler { rows, zipf }
    }

    /// One index in `0..rows`.
    pub fn sample<R: Rng>(&self, rng: &mut R) -> i64 {
        match &self.zipf {
            None => rng.random_range(0..self.rows) as i64,
            Some(z) => {
                let k = (z.sample(rng) as u64).clamp(1, self.rows) - 1;
                ((k.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11) % self.rows) as i64
            }
        }
    }
}
