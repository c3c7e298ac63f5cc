//! Results of a run: HdrHistograms of latency and of the generator's send lag (microseconds,
//! 3 significant digits, V2-serialised), a JSON summary and optional per-request records
//! ([`crate::merge()`] merges shards exactly).
//!
//! A result folder holds `summary.json`, `latency.hdr` (successful requests, from the intended
//! send time to the last byte of the response), `lag.hdr` (requests sent, from the intended
//! send time to the moment the generator started the request) and, when asked for,
//! `records.csv` ([`RESULT_FILES`]). Reading one checks sizes before allocating: a summary of
//! at most [`MAX_SUMMARY_BYTES`], and histograms whose header is exactly the one this crate
//! writes (bounds 1 us to 1 h, 3 digits) with a payload the file really holds.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::error::LoadError;

/// Highest value the histograms hold: one hour, in microseconds.
pub const HIST_MAX_US: u64 = 3_600_000_000;
/// Version of the summary format (2: the generator's own check, `not_sent`, `late`,
/// `saturated`, `missing_shards`; 3: `protocol` and `grpc_status`). Version 2 summaries are
/// read as HTTP runs.
pub const SUMMARY_VERSION: u32 = 3;
/// The oldest summary version read.
pub const OLDEST_SUMMARY_VERSION: u32 = 2;
/// Largest `summary.json` read.
pub const MAX_SUMMARY_BYTES: u64 = 1 << 20;
/// The files a result folder may hold, all written by [`RunResult::write`].
pub const RESULT_FILES: [&str; 4] = ["summary.json", "latency.hdr", "lag.hdr", "records.csv"];
/// Size of a V2 HdrHistogram header: cookie, payload length, normalising offset, significant
/// digits, lowest and highest trackable value, integer-to-double ratio.
const HDR_HEADER: usize = 40;
/// The cookie of an uncompressed V2 HdrHistogram.
const HDR_V2_COOKIE: u32 = 0x1c84_9313;
/// More than this fraction of the requests late (or not sent) and the run is invalid: the
/// generator, not the server, set the pace (MLPerf LoadGen marks such a run INVALID).
pub const LATE_FRACTION: f64 = 0.01;

/// True when `late` of `requests` is more than [`LATE_FRACTION`] of them: the generator fell
/// behind its schedule.
pub fn saturated(late: u64, requests: u64) -> bool {
    // late / requests > 1/100, without rounding.
    u128::from(late) * 100 > u128::from(requests)
}

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
    /// `http` (KServe v2 REST) or `grpc` (KServe v2 gRPC), from the URL's scheme.
    #[serde(default = "http")]
    pub protocol: String,
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
    /// Body format: json, binary, or grpc (raw contents in a `ModelInferRequest`).
    pub format: String,
    /// Seed.
    pub seed: u64,
    /// The shards in this result (`i/n` each); one for a single run.
    pub shards: Vec<String>,
    /// Nominal offered rate, requests per second (the sum over shards).
    pub target_qps: f64,
    /// Nominal duration, seconds (the longest shard's).
    pub duration_s: f64,
    /// Requests scheduled: `ok` + failed (`errors`) + `not_sent`.
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
    /// Responses by HTTP status; a gRPC answer counts under the HTTP status its gRPC status
    /// corresponds to ([`crate::grpc::http_status`]: OK 200, INVALID_ARGUMENT 400, NOT_FOUND
    /// 404, UNAVAILABLE 503, ...).
    pub status: BTreeMap<String, u64>,
    /// gRPC answers by gRPC status name (`OK`, `UNAVAILABLE`, ...); empty for HTTP.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub grpc_status: BTreeMap<String, u64>,
    /// Failures by kind: `timeout`, `connect`, `io`, `malformed` (a gRPC `OK` answer without
    /// one finite score per sample, or not a gRPC answer), and `status_<code>` for each non-2xx
    /// status (a gRPC status other than `OK` by its HTTP equivalent: `status_503` is
    /// `UNAVAILABLE`, the server's overload).
    pub errors: BTreeMap<String, u64>,
    /// Requests that found every connection busy and waited for one.
    pub connection_waits: u64,
    /// Most keep-alive connections per shard.
    pub connections: usize,
    /// Requests the generator never sent: it reached them only after their intended time plus
    /// the timeout, having fallen behind. Not failures of the server (not in `errors`).
    pub not_sent: u64,
    /// The send-lag bound: a request started more than this after its intended time is late,
    /// microseconds.
    pub send_lag_bound_us: u64,
    /// Requests started later than the bound, plus those not sent.
    pub late: u64,
    /// More than 1% of the requests late ([`LATE_FRACTION`]): the generator could not keep its
    /// schedule, so the run measured the generator, not the server, and is invalid.
    pub saturated: bool,
    /// Shards of the split missing from a partial merge (`i/n` each); empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_shards: Vec<String>,
}

fn http() -> String {
    "http".into()
}

impl Summary {
    /// Failed requests (all kinds); saturates instead of wrapping (a summary read from disk
    /// is checked by [`crate::merge::check`]).
    pub fn failed(&self) -> u64 {
        self.errors.values().fold(0u64, |a, &v| a.saturating_add(v))
    }

    /// Requests that did not succeed: failed or not sent.
    pub fn unsuccessful(&self) -> u64 {
        self.failed().saturating_add(self.not_sent)
    }

    /// Whether the run is valid: the generator kept its schedule (a partial merge is valid
    /// but says which shards it lacks).
    pub fn valid(&self) -> bool {
        !self.saturated
    }
}

/// How one request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// The server answered with this HTTP status.
    Status(u16),
    /// The server answered a gRPC call with this gRPC status (0: `OK`, with a score per
    /// sample).
    Grpc(u32),
    /// A gRPC answer that is not one: no status, a malformed message, or `OK` without one
    /// finite score per sample.
    Malformed,
    /// No answer within the timeout (counted from the intended send time).
    Timeout,
    /// Could not connect.
    Connect,
    /// The connection failed while sending or receiving.
    Io,
    /// Never sent: the generator reached it after its intended time plus the timeout (counted
    /// in [`Summary::not_sent`], not in [`Summary::errors`]).
    NotSent,
}

impl Outcome {
    /// The error kind of a failure, None for a 2xx status.
    pub fn error_kind(&self) -> Option<String> {
        match self {
            Outcome::Status(s) if (200..300).contains(s) => None,
            Outcome::Status(s) => Some(format!("status_{s}")),
            Outcome::Grpc(0) => None,
            Outcome::Grpc(c) => Some(format!("status_{}", crate::grpc::http_status(*c))),
            Outcome::Malformed => Some("malformed".into()),
            Outcome::Timeout => Some("timeout".into()),
            Outcome::Connect => Some("connect".into()),
            Outcome::Io => Some("io".into()),
            Outcome::NotSent => Some("not_sent".into()),
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
    /// The folder it was read from (None for a run in memory); merge errors name it.
    pub from: Option<PathBuf>,
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

/// Reads at most `limit` bytes of `path`; a longer file is an error (checked while reading, so
/// a file that grows cannot slip past).
fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, LoadError> {
    use std::io::Read as _;
    let f = std::fs::File::open(path).map_err(|e| LoadError::io(path, e))?;
    let mut data = Vec::new();
    f.take(limit + 1)
        .read_to_end(&mut data)
        .map_err(|e| LoadError::io(path, e))?;
    if data.len() as u64 > limit {
        return Err(LoadError::format(
            path,
            format!("more than the limit of {limit} bytes"),
        ));
    }
    Ok(data)
}

/// Largest histogram file: the header and every count of [`histogram`] as a 9-byte varint.
fn max_hdr_bytes() -> u64 {
    (HDR_HEADER + 9 * histogram().distinct_values()) as u64
}

/// Reads a histogram written by [`RunResult::write`]; the header is checked against the one
/// this crate writes before anything is allocated from it.
fn deserialize(path: &Path) -> Result<Histogram<u64>, LoadError> {
    let data = read_bounded(path, max_hdr_bytes())?;
    let bad = |msg: String| LoadError::format(path, msg);
    if data.len() < HDR_HEADER {
        return Err(bad(format!(
            "{} bytes, shorter than a V2 HdrHistogram header ({HDR_HEADER} bytes)",
            data.len()
        )));
    }
    let word = |i: usize| u32::from_be_bytes(data[i..i + 4].try_into().expect("4 bytes"));
    if word(0) != HDR_V2_COOKIE {
        return Err(bad(format!(
            "not an uncompressed V2 HdrHistogram (cookie {:#010x}, expected {HDR_V2_COOKIE:#010x})",
            word(0)
        )));
    }
    let payload = word(4) as usize;
    if payload != data.len() - HDR_HEADER {
        return Err(bad(format!(
            "the header gives a payload of {payload} bytes, but the file holds {} after its \
             {HDR_HEADER}-byte header",
            data.len() - HDR_HEADER
        )));
    }
    let want = serialize(&histogram());
    if data[8..HDR_HEADER] != want[8..HDR_HEADER] {
        return Err(bad(
            "the histogram's settings (digits, bounds) are not those of streamrec load (1 us \
             to 1 h, 3 significant digits)"
                .into(),
        ));
    }
    let h: Histogram<u64> = Deserializer::new()
        .deserialize(&mut &data[..])
        .map_err(|e| bad(format!("not a V2 HdrHistogram: {e:?}")))?;
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
                    Outcome::Grpc(c) => crate::grpc::code_name(c),
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
        let text = read_bounded(&p, MAX_SUMMARY_BYTES)?;
        // The version first, so that an older summary says so rather than "missing field".
        #[derive(Deserialize)]
        struct Version {
            version: u32,
        }
        let v: Version =
            serde_json::from_slice(&text).map_err(|e| LoadError::format(&p, e.to_string()))?;
        if !(OLDEST_SUMMARY_VERSION..=SUMMARY_VERSION).contains(&v.version) {
            return Err(LoadError::format(
                &p,
                format!(
                    "summary version {} is not {OLDEST_SUMMARY_VERSION} to {SUMMARY_VERSION} \
                     (written by another version of streamrec load)",
                    v.version
                ),
            ));
        }
        let summary: Summary =
            serde_json::from_slice(&text).map_err(|e| LoadError::format(&p, e.to_string()))?;
        Ok(RunResult {
            summary,
            latency: deserialize(&dir.join("latency.hdr"))?,
            lag: deserialize(&dir.join("lag.hdr"))?,
            records: Vec::new(),
            start: None,
            from: Some(dir.to_path_buf()),
        })
    }
}

/// One line when the generator fell behind (`generator saturated: ...`), None when it kept its
/// schedule.
pub fn saturation_note(s: &Summary) -> Option<String> {
    s.saturated.then(|| {
        format!(
            "generator saturated: {} of {} requests were more than {} late ({} of them not \
             sent at all), send lag p99 {} us: the run is invalid (the generator, not the \
             server, set the pace; lower --qps, add shards or --threads)",
            s.late,
            s.requests,
            fmt_us(s.send_lag_bound_us),
            s.not_sent,
            s.send_lag_us.p99
        )
    })
}

/// One line when shards are missing from a merge (`shards 1/3 missing: ...`), None when none
/// is.
pub fn partial_note(s: &Summary) -> Option<String> {
    (!s.missing_shards.is_empty()).then(|| {
        format!(
            "shards {} missing: the totals cover shards {} only",
            s.missing_shards.join(", "),
            s.shards.join(",")
        )
    })
}

fn fmt_us(us: u64) -> String {
    if us >= 1000 && us.is_multiple_of(1000) {
        format!("{} ms", us / 1000)
    } else {
        format!("{us} us")
    }
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
    let mut text = format!(
        "{} shard(s) {}: {} schedule, batch {}, {} requests in {:.2} s\n\
         offered {:.1} req/s (target {:.1}), achieved {:.1} req/s ({:.1} samples/s), ok {}, failed {} ({errors}), not sent {}\n\
         latency us: p50 {} p90 {} p99 {} p99.9 {} max {} (mean {:.0})\n\
         send lag us: p50 {} p99 {} max {}; late (over {}): {}; waits for a connection: {}",
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
        s.not_sent,
        l.p50,
        l.p90,
        l.p99,
        l.p999,
        l.max,
        l.mean,
        s.send_lag_us.p50,
        s.send_lag_us.p99,
        s.send_lag_us.max,
        fmt_us(s.send_lag_bound_us),
        s.late,
        s.connection_waits
    );
    if let Some(note) = saturation_note(s) {
        text.push_str("\nINVALID: ");
        text.push_str(&note);
    }
    if let Some(note) = partial_note(s) {
        text.push_str("\nPARTIAL: ");
        text.push_str(&note);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_than_one_percent_late_is_saturated() {
        assert!(!saturated(1, 100));
        assert!(saturated(2, 100));
        assert!(!saturated(0, 0));
        assert!(saturated(u64::MAX, u64::MAX));
        assert!(!saturated(u64::MAX / 100, u64::MAX));
    }
}
