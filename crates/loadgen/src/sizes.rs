//! Per-request batch sizes: fixed, drawn from the MLPerf DLRM-v2 query-size quantiles, or
//! mapped from a trace's `ContextTokens` column.
//!
//! - `B`: every request has B samples.
//! - `mlperf`: each request draws one of the 20 quantiles of the number of user-item pairs per
//!   query of MLPerf Inference DLRM-v2 (workloads/traces/mlperf-dlrm-v2-query-size-quantiles.txt:
//!   100 to 700, mean 270), each with probability 1/20, as the reference implementation's
//!   `--samples-to-aggregate-quantile-file` does; sizes above the server's max batch are clamped
//!   to it.
//! - `trace` or `tokens:D`: a trace row with `ContextTokens = T` becomes a request of
//!   `ceil(T / D)` samples, at least 1 and at most the server's max batch; `trace` is
//!   `tokens:16`, which maps the Azure conversation trace (median 1020 tokens, p90 2734, p99
//!   4142, with a cluster of 5.7% just above 4080) to a median of 64 samples, p90 171, and
//!   5.7% clamped at 256.

use std::fmt;
use std::str::FromStr;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::LoadError;
use crate::schedule::{derive_seed, Schedule};

/// Most samples in one request (the engine's limit).
pub const MAX_BATCH: u32 = 65_536;
/// The server's default `max_batch`.
pub const DEFAULT_MAX_BATCH: u32 = 256;
/// Tokens per sample of `--batch trace`.
pub const DEFAULT_TOKENS_PER_SAMPLE: u32 = 16;

/// The MLPerf DLRM-v2 query-size quantiles file (a copy of workloads/traces/'s, inside the
/// crate so that it packages; a test keeps the two equal).
pub const MLPERF_QUANTILES: &str = include_str!("../data/mlperf-dlrm-v2-query-size-quantiles.txt");

/// The MLPerf DLRM-v2 query-size quantiles (20 values).
pub fn mlperf_quantiles() -> Vec<u32> {
    MLPERF_QUANTILES
        .split(',')
        .map(|v| {
            v.trim()
                .parse()
                .expect("the shipped quantiles are integers")
        })
        .collect()
}

/// How each request's batch size is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchSizes {
    /// Every request has this many samples.
    Fixed(u32),
    /// Drawn from the MLPerf DLRM-v2 query-size quantiles.
    Mlperf,
    /// `--batch trace`: [`BatchSizes::Tokens`] with [`DEFAULT_TOKENS_PER_SAMPLE`], shown (in
    /// errors and summaries) as the user spelled it.
    Trace,
    /// `ceil(ContextTokens / per_sample)` of the trace row.
    Tokens {
        /// Tokens per sample.
        per_sample: u32,
    },
}

impl FromStr for BatchSizes {
    type Err = LoadError;
    fn from_str(s: &str) -> Result<BatchSizes, LoadError> {
        let bad = || {
            LoadError::invalid(format!(
                "--batch `{s}`: expected a number of samples (1..={MAX_BATCH}), mlperf, trace or tokens:D"
            ))
        };
        match s {
            "mlperf" => Ok(BatchSizes::Mlperf),
            "trace" => Ok(BatchSizes::Trace),
            _ => {
                if let Some(d) = s.strip_prefix("tokens:") {
                    let per_sample: u32 = d.parse().map_err(|_| bad())?;
                    if per_sample == 0 {
                        return Err(bad());
                    }
                    return Ok(BatchSizes::Tokens { per_sample });
                }
                let b: u32 = s.parse().map_err(|_| bad())?;
                if b == 0 || b > MAX_BATCH {
                    return Err(bad());
                }
                Ok(BatchSizes::Fixed(b))
            }
        }
    }
}

impl fmt::Display for BatchSizes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BatchSizes::Fixed(b) => write!(f, "{b}"),
            BatchSizes::Mlperf => write!(f, "mlperf"),
            BatchSizes::Trace => write!(f, "trace"),
            BatchSizes::Tokens { per_sample } => write!(f, "tokens:{per_sample}"),
        }
    }
}

impl BatchSizes {
    /// Tokens per sample of a size mapped from a trace's `ContextTokens`; None for fixed and
    /// drawn sizes.
    pub fn tokens_per_sample(&self) -> Option<u32> {
        match *self {
            BatchSizes::Trace => Some(DEFAULT_TOKENS_PER_SAMPLE),
            BatchSizes::Tokens { per_sample } => Some(per_sample),
            BatchSizes::Fixed(_) | BatchSizes::Mlperf => None,
        }
    }

    /// Sets every arrival's batch size; `max_batch` is the server's. A fixed size above it is
    /// an error; drawn and mapped sizes are clamped to it.
    pub fn apply(&self, schedule: &mut Schedule, max_batch: u32) -> Result<(), LoadError> {
        if max_batch == 0 || max_batch > MAX_BATCH {
            return Err(LoadError::invalid(format!(
                "--max-batch: must be in 1..={MAX_BATCH}, not {max_batch}"
            )));
        }
        match *self {
            BatchSizes::Fixed(b) => {
                if b > max_batch {
                    return Err(LoadError::invalid(format!(
                        "--batch {b} is more than the server's max batch {max_batch} (--max-batch)"
                    )));
                }
                schedule.arrivals.iter_mut().for_each(|a| a.batch = b);
            }
            BatchSizes::Mlperf => {
                let q = mlperf_quantiles();
                let mut rng =
                    StdRng::seed_from_u64(derive_seed(schedule.seed, schedule.shard.index, 1));
                for a in &mut schedule.arrivals {
                    a.batch = q[rng.random_range(0..q.len())].min(max_batch);
                }
            }
            BatchSizes::Trace | BatchSizes::Tokens { .. } => {
                let per_sample = self.tokens_per_sample().expect("a token mapping");
                if !schedule.has_tokens {
                    return Err(LoadError::invalid(format!(
                        "--batch {self}: needs a trace schedule with a ContextTokens column"
                    )));
                }
                for a in &mut schedule.arrivals {
                    a.batch = a.tokens.div_ceil(per_sample).clamp(1, max_batch);
                }
            }
        }
        schedule.batch_label = self.to_string();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        let q = mlperf_quantiles();
        assert_eq!(q.len(), 20);
        assert_eq!(q.iter().sum::<u32>(), 5400);
        assert_eq!("mlperf".parse::<BatchSizes>().unwrap(), BatchSizes::Mlperf);
        assert_eq!("16".parse::<BatchSizes>().unwrap(), BatchSizes::Fixed(16));
        let trace = "trace".parse::<BatchSizes>().unwrap();
        assert_eq!(trace.tokens_per_sample(), Some(16));
        assert_eq!(trace.to_string(), "trace");
        for bad in ["0", "65537", "tokens:0", "big", "-1"] {
            assert!(bad.parse::<BatchSizes>().is_err(), "{bad}");
        }
    }
}
