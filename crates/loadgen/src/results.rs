//! Results of a run: HdrHistograms of latency and of the generator's send lag (microseconds,
//! 3 significant digits, V2-serialised), a JSON summary, optional per-request records, and the
//! exact merge of shards.
//!
//! A result folder holds `summary.json`, `latency.hdr` (successful requests, from the intended
//! send time to the last byte of the response), `lag.hdr` (from the intended send time to the
//! moment the generator started the request) and, when asked for, `records.csv`. Merging adds
//! the histograms bucket by bucket, which is exact: the merged histogram equals the histogram
//! of all the shards' samples.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::error::LoadError;

/// Highest value the histograms hold: one hour, in microseconds.
pub const HIST_MAX_US: u64 = 3_600_000_000;
/// Version of the summary format.
pub const SUMMARY_VERSION: u32 = 1;

/// A new, empty histogram of microseconds (1 us to 1 h, 3 significant digits).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("valid histogram bounds")
}

/// Percentiles of a histogram, microseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Values recorded.
    pub count: u64,
    /// Smallest.
    pub min: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    #[serde(rename = "p99.9")]
    pub p999: u64,
    /// Largest.
    pub max: u64,
}

impl Percentiles {
    /// The percentiles of `h`.
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            min: h.min(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// The JSON summary of a run or of merged runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Format version.
    pub version: u32,
    /// Server URL.
    pub url: String,
    /// Model name.
    pub model: String,
    /// Arrival process: constant, poisson or trace.
    pub schedule: String,
    /// Batch sizes: a number, mlperf or tokens:D.
    pub batch: String,
    /// Index skew.
    pub skew: String,
    /// Body format: json or binary.
    pub format: String,
    /// Seed.
    pub seed: u64,
    /// The shards in this result (`i/n` each); one for a single run.
    pub shards: Vec<String>,
    /// Nominal offered rate, requests per second (the sum over shards).
    pub target_qps: f64,
    /// Nominal duration, seconds (the longest shard's).
    pub duration_s: f64,
    /// Requests scheduled (all were sent or counted as failed).
    pub requests: u64,
    /// Requests answered with a 2xx status.
    pub ok: u64,
    /// Samples in the successful requests.
    pub samples_ok: u64,
    /// Requests scheduled per second of the nominal duration (the sum over shards).
    pub offered_qps: f64,
    /// Successful requests per second, over the longer of the nominal duration and the time
    /// to the last response (the sum over shards).
    pub achieved_qps: f64,
    /// Successful samples per second, likewise.
    pub samples_per_s: f64,
    /// Seconds from the start to the last response (the longest shard's).
    pub elapsed_s: f64,
    /// Latency of successful requests from their intended send time, microseconds.
    pub latency_us: Percentiles,
    /// Send lag of the generator (intended time to the start of the request), microseconds.
    pub send_lag_us: Percentiles,
    /// Responses by HTTP status.
    pub status: BTreeMap<String, u64>,
    /// Failures by kind: `timeout`, `connect`, `io`, and `status_<code>` for each non-2xx
    /// status.
    pub errors: BTreeMap<String, u64>,
    /// Requests that found every connection busy and waited for one.
    pub connection_waits: u64,
    /// Most keep-alive connections per shard.
    pub connections: usize,
}

impl Summary {
    /// Failed requests (all kinds).
    pub fn failed(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// How one request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// The server answered with this status.
    Status(u16),
    /// No answer within the timeout (counted from the intended send time).
    Timeout,
    /// Could not connect.
    Connect,
    /// The connection failed while sending or receiving.
    Io,
}

impl Outcome {
    /// The error kind of a failure, None for a 2xx status.
    pub fn error_kind(&self) -> Option<String> {
        match self {
            Outcome::Status(s) if (200..300).contains(s) => None,
            Outcome::Status(s) => Some(format!("status_{s}")),
            Outcome::Timeout => Some("timeout".into()),
            Outcome::Connect => Some("connect".into()),
            Outcome::Io => Some("io".into()),
        }
    }
}

/// One request, as recorded with `RunConfig::records`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// Position in the shard's schedule.
    pub index: u32,
    /// Intended send time, nanoseconds after the start.
    pub intended_ns: u64,
    /// From the intended send time to the start of the request, nanoseconds.
    pub lag_ns: u64,
    /// From the intended send time to the end (response, error or timeout), nanoseconds.
    pub latency_ns: u64,
    /// Samples.
    pub batch: u32,
    /// How it ended.
    pub outcome: Outcome,
}

/// A run's results.
#[derive(Clone, Debug)]
pub struct RunResult {
    /// The summary.
    pub summary: Summary,
    /// Latency of successful requests, microseconds.
    pub latency: Histogram<u64>,
    /// Send lag of all requests, microseconds.
    pub lag: Histogram<u64>,
    /// Per-request records (empty unless asked for), by schedule position.
    pub records: Vec<Record>,
    /// When the run started (intended times count from it); None for results read from disk.
    pub start: Option<std::time::Instant>,
}

fn write_file(path: &Path, data: &[u8]) -> Result<(), LoadError> {
    std::fs::write(path, data).map_err(|e| LoadError::io(path, e))
}

fn serialize(h: &Histogram<u64>) -> Vec<u8> {
    let mut out = Vec::new();
    V2Serializer::new()
        .serialize(h, &mut out)
        .expect("serialising into memory");
    out
}

fn deserialize(path: &Path) -> Result<Histogram<u64>, LoadError> {
    let data = std::fs::read(path).map_err(|e| LoadError::io(path, e))?;
    let h: Histogram<u64> = Deserializer::new()
        .deserialize(&mut &data[..])
        .map_err(|e| LoadError::format(path, format!("not a V2 HdrHistogram: {e:?}")))?;
    Ok(h)
}

impl RunResult {
    /// Writes `summary.json`, `latency.hdr`, `lag.hdr` and (when there are records)
    /// `records.csv` into `dir`, creating it.
    pub fn write(&self, dir: &Path) -> Result<(), LoadError> {
        std::fs::create_dir_all(dir).map_err(|e| LoadError::io(dir, e))?;
        let mut json = serde_json::to_vec_pretty(&self.summary).expect("summary serialises");
        json.push(b'\n');
        write_file(&dir.join("summary.json"), &json)?;
        write_file(&dir.join("latency.hdr"), &serialize(&self.latency))?;
        write_file(&dir.join("lag.hdr"), &serialize(&self.lag))?;
        if !self.records.is_empty() {
            let mut csv = Vec::with_capacity(self.records.len() * 40);
            let _ = writeln!(csv, "index,intended_ns,lag_ns,latency_ns,batch,outcome");
            for r in &self.records {
                let o = match r.outcome {
                    Outcome::Status(s) => s.to_string(),
                    other => other.error_kind().unwrap_or_default(),
                };
                let _ = writeln!(
                    csv,
                    "{},{},{},{},{},{o}",
                    r.index, r.intended_ns, r.lag_ns, r.latency_ns, r.batch
                );
            }
            write_file(&dir.join("records.csv"), &csv)?;
        }
        Ok(())
    }

    /// Reads a result folder written by [`RunResult::write`] (without its records).
    pub fn read(dir: &Path) -> Result<RunResult, LoadError> {
        let p = dir.join("summary.json");
        let text = std::fs::read(&p).map_err(|e| LoadError::io(&p, e))?;
        let summary: Summary =
            serde_json::from_slice(&text).map_err(|e| LoadError::format(&p, e.to_string()))?;
        if summary.version != SUMMARY_VERSION {
            return Err(LoadError::format(
                &p,
                format!(
                    "summary version {} is not {SUMMARY_VERSION}",
                    summary.version
                ),
            ));
        }
        Ok(RunResult {
            summary,
            latency: deserialize(&dir.join("latency.hdr"))?,
            lag: deserialize(&dir.join("lag.hdr"))?,
            records: Vec::new(),
            start: None,
        })
    }
}

/// Merges shard results: histograms added exactly, counts and rates summed, durations the
/// longest. Every part must come from the same split (`i/n` with one `n`) and no shard may
/// appear twice; missing shards are allowed (the merged `shards` lists those present).
pub fn merge(parts: &[RunResult]) -> Result<RunResult, LoadError> {
    let first = parts
        .first()
        .ok_or_else(|| LoadError::invalid("merge: nothing to merge"))?;
    let mut latency = histogram();
    let mut lag = histogram();
    let mut s = first.summary.clone();
    s.shards.clear();
    s.status.clear();
    s.errors.clear();
    for f in [
        &mut s.target_qps,
        &mut s.duration_s,
        &mut s.offered_qps,
        &mut s.achieved_qps,
        &mut s.samples_per_s,
        &mut s.elapsed_s,
    ] {
        *f = 0.0;
    }
    (s.requests, s.ok, s.samples_ok, s.connection_waits) = (0, 0, 0, 0);
    let count_of = |sh: &str| sh.split_once('/').map(|(_, n)| n.to_string());
    let n = first
        .summary
        .shards
        .first()
        .map(String::as_str)
        .and_then(count_of);
    for p in parts {
        let q = &p.summary;
        for sh in &q.shards {
            if count_of(sh) != n {
                return Err(LoadError::invalid(format!(
                    "merge: shard {sh} is not of the same split as {}",
                    first.summary.shards.join(",")
                )));
            }
            if s.shards.contains(sh) {
                return Err(LoadError::invalid(format!(
                    "merge: shard {sh} appears twice"
                )));
            }
            s.shards.push(sh.clone());
        }
        latency
            .add(&p.latency)
            .map_err(|e| LoadError::invalid(format!("merge: latency histogram: {e:?}")))?;
        lag.add(&p.lag)
            .map_err(|e| LoadError::invalid(format!("merge: lag histogram: {e:?}")))?;
        s.target_qps += q.target_qps;
        s.offered_qps += q.offered_qps;
        s.achieved_qps += q.achieved_qps;
        s.samples_per_s += q.samples_per_s;
        s.duration_s = s.duration_s.max(q.duration_s);
        s.elapsed_s = s.elapsed_s.max(q.elapsed_s);
        s.requests += q.requests;
        s.ok += q.ok;
        s.samples_ok += q.samples_ok;
        s.connection_waits += q.connection_waits;
        for (k, v) in &q.status {
            *s.status.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &q.errors {
            *s.errors.entry(k.clone()).or_default() += v;
        }
    }
    s.shards.sort_by_key(|x| {
        x.split_once('/')
            .and_then(|(i, _)| i.parse::<u64>().ok())
            .unwrap_or(u64::MAX)
    });
    s.latency_us = Percentiles::of(&latency);
    s.send_lag_us = Percentiles::of(&lag);
    Ok(RunResult {
        summary: s,
        latency,
        lag,
        records: Vec::new(),
        start: None,
    })
}

/// Reads and merges result folders.
pub fn merge_dirs(dirs: &[PathBuf]) -> Result<RunResult, LoadError> {
    let parts = dirs
        .iter()
        .map(|d| RunResult::read(d))
        .collect::<Result<Vec<_>, _>>()?;
    merge(&parts)
}

/// A few lines for a terminal.
pub fn describe(s: &Summary) -> String {
    let l = &s.latency_us;
    let errors = if s.errors.is_empty() {
        "none".to_string()
    } else {
        s.errors
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "{} shard(s) {}: {} schedule, batch {}, {} requests in {:.2} s\n\
         offered {:.1} req/s (target {:.1}), achieved {:.1} req/s ({:.1} samples/s), ok {}, failed {} ({errors})\n\
         latency us: p50 {} p90 {} p99 {} p99.9 {} max {} (mean {:.0})\n\
         send lag us: p50 {} p99 {} max {}; waits for a connection: {}",
        s.shards.len(),
        s.shards.join(","),
        s.schedule,
        s.batch,
        s.requests,
        s.elapsed_s,
        s.offered_qps,
        s.target_qps,
        s.achieved_qps,
        s.samples_per_s,
        s.ok,
        s.failed(),
        l.p50,
        l.p90,
        l.p99,
        l.p999,
        l.max,
        l.mean,
        s.send_lag_us.p50,
        s.send_lag_us.p99,
        s.send_lag_us.max,
        s.connection_waits
    )
}
