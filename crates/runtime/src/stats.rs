//! Latency statistics: an HdrHistogram of request latencies and the derived percentiles.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency summary of a run.
#[derive(Clone, Debug, Serialize)]
pub struct LatencySummary {
    /// Requests measured.
    pub count: u64,
    /// Median latency, us.
    pub p50_us: f64,
    /// 90th percentile, us.
    pub p90_us: f64,
    /// 99th percentile, us.
    pub p99_us: f64,
    /// Mean, us.
    pub mean_us: f64,
    /// Samples per second over the run's wall time.
    pub samples_per_s: f64,
    /// Median device time of the plan per request (events around it), us; None where the
    /// backend does not time on the device (the CPU backend).
    pub gpu_p50_us: Option<f64>,
    /// 99th percentile of the device time, us.
    pub gpu_p99_us: Option<f64>,
}

/// Collects latencies in nanoseconds.
#[derive(Clone, Debug)]
pub struct LatencyRecorder {
    hist: Histogram<u64>,
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyRecorder {
    /// An empty recorder (1 ns to 100 s, 3 significant digits).
    pub fn new() -> Self {
        Self {
            hist: Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid bounds"),
        }
    }

    /// Records one latency.
    pub fn record(&mut self, d: std::time::Duration) {
        let ns = (d.as_nanos() as u64).clamp(1, 100_000_000_000);
        self.hist.record(ns).expect("value within bounds");
    }

    /// Merges another recorder into this one.
    pub fn merge(&mut self, other: &LatencyRecorder) {
        self.hist.add(&other.hist).expect("same bounds");
    }

    /// Percentiles, and throughput given the samples processed over `wall`.
    pub fn summary(&self, samples: u64, wall: std::time::Duration) -> LatencySummary {
        let q = |p: f64| self.hist.value_at_quantile(p) as f64 / 1e3;
        LatencySummary {
            count: self.hist.len(),
            p50_us: q(0.5),
            p90_us: q(0.9),
            p99_us: q(0.99),
            mean_us: self.hist.mean() / 1e3,
            samples_per_s: samples as f64 / wall.as_secs_f64().max(1e-12),
            gpu_p50_us: None,
            gpu_p99_us: None,
        }
    }
}

/// The `q` quantile (0..=1) of `v` by nearest rank; None when empty.
pub fn quantile(v: &[f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let i = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1;
    Some(s[i])
}

/// The median of repeated measurements (the upper one of the middle two for an even count);
/// NaN for none.
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

impl LatencySummary {
    /// Combines repeated runs of one configuration: the median of each figure over the runs
    /// (request counts add up).
    pub fn median_of(runs: &[LatencySummary]) -> LatencySummary {
        assert!(!runs.is_empty(), "median_of needs at least one run");
        let med = |f: fn(&LatencySummary) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
        LatencySummary {
            count: runs.iter().map(|s| s.count).sum(),
            p50_us: med(|s| s.p50_us),
            p90_us: med(|s| s.p90_us),
            p99_us: med(|s| s.p99_us),
            mean_us: med(|s| s.mean_us),
            samples_per_s: med(|s| s.samples_per_s),
            gpu_p50_us: median_opt(runs.iter().map(|s| s.gpu_p50_us)),
            gpu_p99_us: median_opt(runs.iter().map(|s| s.gpu_p99_us)),
        }
    }
}

/// The median of the values that are present; None when none is.
fn median_opt(v: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let x: Vec<f64> = v.flatten().collect();
    (!x.is_empty()).then(|| median(&x))
}
