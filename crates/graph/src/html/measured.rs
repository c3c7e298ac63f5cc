//! A measured timeline for the page: one request's spans read from a Chrome trace written by
//! `streamrec run --trace` ([`MeasuredTimeline::from_chrome_trace`]), within the limits
//! [`MAX_MEASURED_SPANS`] and [`MAX_MEASURED_LANES`].

use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::Value;

use crate::error::GraphError;

/// Most spans of a measured request shown.
pub const MAX_MEASURED_SPANS: usize = 100_000;
/// Most lanes (distinct streams) of a measured request.
pub const MAX_MEASURED_LANES: usize = 1_024;

/// One span of a measured timeline, in microseconds from the request's first span.
#[derive(Clone, Debug, PartialEq)]
pub struct MeasuredSpan {
    /// Op (or graph-replay) name.
    pub name: String,
    /// Stream (the trace's thread id).
    pub stream: usize,
    /// Start.
    pub start_us: f64,
    /// End.
    pub end_us: f64,
}

/// A trace's (context, request).
type RequestKey = (u64, Option<u64>);
/// A trace span: name, thread (stream), start and end.
type RawSpan = (String, u64, f64, f64);

/// One request's spans from a Chrome trace written by `streamrec run --trace`.
#[derive(Clone, Debug, PartialEq)]
pub struct MeasuredTimeline {
    /// Which request of which context, e.g.
    /// `measured: context 0, request 17 (median length of 50), batch 128`.
    pub label: String,
    /// The spans, by start.
    pub spans: Vec<MeasuredSpan>,
}

impl MeasuredTimeline {
    /// Reads a Chrome trace-event document (`{"traceEvents": [...]}` or a bare array) and keeps
    /// the complete (`"ph": "X"`) spans of one request: in the lowest context (`pid`), the request
    /// (`args.request`) of median length; times are shifted so that it starts at 0.
    pub fn from_chrome_trace(text: &str) -> Result<Self, GraphError> {
        let doc: Value = serde_json::from_str(text)
            .map_err(|e| GraphError::Invalid(format!("not a Chrome trace (JSON): {e}")))?;
        let events = match &doc {
            Value::Array(a) => a,
            Value::Object(o) => {
                o.get("traceEvents")
                    .and_then(Value::as_array)
                    .ok_or_else(|| {
                        GraphError::Invalid("not a Chrome trace: no `traceEvents` array".into())
                    })?
            }
            _ => {
                return Err(GraphError::Invalid(
                    "not a Chrome trace: expected an object or an array".into(),
                ))
            }
        };
        // (pid, request) -> spans, and the batch size seen.
        let mut groups: BTreeMap<RequestKey, Vec<RawSpan>> = BTreeMap::new();
        let mut batch: BTreeMap<RequestKey, u64> = BTreeMap::new();
        for e in events {
            if e.get("ph").and_then(Value::as_str) != Some("X") {
                continue;
            }
            let (Some(ts), Some(dur)) = (
                e.get("ts").and_then(Value::as_f64),
                e.get("dur").and_then(Value::as_f64),
            ) else {
                continue;
            };
            if !ts.is_finite() || !dur.is_finite() || dur < 0.0 || !(ts + dur).is_finite() {
                continue;
            }
            let pid = e.get("pid").and_then(Value::as_u64).unwrap_or(0);
            let tid = e.get("tid").and_then(Value::as_u64).unwrap_or(0);
            let args = e.get("args");
            let request = args.and_then(|a| a.get("request")).and_then(Value::as_u64);
            if let Some(b) = args.and_then(|a| a.get("batch")).and_then(Value::as_u64) {
                batch.insert((pid, request), b);
            }
            let name = e
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string();
            groups
                .entry((pid, request))
                .or_default()
                .push((name, tid, ts, ts + dur));
        }
        let Some(&(pid, _)) = groups.keys().next() else {
            return Err(GraphError::Invalid(
                "the trace has no complete (\"ph\": \"X\") spans".into(),
            ));
        };
        let span_of = |v: &[RawSpan]| {
            let lo = v.iter().map(|s| s.2).fold(f64::INFINITY, f64::min);
            let hi = v.iter().map(|s| s.3).fold(f64::NEG_INFINITY, f64::max);
            hi - lo
        };
        let mut requests: Vec<(f64, RequestKey)> = groups
            .iter()
            .filter(|(k, _)| k.0 == pid)
            .map(|(k, v)| (span_of(v), *k))
            .collect();
        requests.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let count = requests.len();
        let key = requests[count / 2].1;
        let raw = &groups[&key];
        if raw.len() > MAX_MEASURED_SPANS {
            return Err(GraphError::Invalid(format!(
                "the trace's request has {} spans, more than the limit of {MAX_MEASURED_SPANS}",
                raw.len()
            )));
        }
        let mut tids: Vec<u64> = raw.iter().map(|s| s.1).collect();
        tids.sort_unstable();
        tids.dedup();
        if tids.len() > MAX_MEASURED_LANES {
            return Err(GraphError::Invalid(format!(
                "the trace's request runs on {} streams, more than the limit of {MAX_MEASURED_LANES}",
                tids.len()
            )));
        }
        let t0 = raw.iter().map(|s| s.2).fold(f64::INFINITY, f64::min);
        let mut spans: Vec<MeasuredSpan> = raw
            .iter()
            .map(|(name, tid, a, b)| MeasuredSpan {
                name: name.clone(),
                // The trace's thread ids are stream numbers; others are numbered in order.
                stream: if tids.last().is_some_and(|&m| m < MAX_MEASURED_LANES as u64) {
                    *tid as usize
                } else {
                    tids.binary_search(tid).unwrap_or(0)
                },
                start_us: a - t0,
                end_us: b - t0,
            })
            .collect();
        spans.sort_by(|a, b| a.start_us.total_cmp(&b.start_us));
        let mut label = format!("measured: context {pid}");
        if let Some(r) = key.1 {
            let _ = write!(label, ", request {r} (median length of {count})");
        }
        if let Some(b) = batch.get(&key) {
            let _ = write!(label, ", batch {b}");
        }
        Ok(MeasuredTimeline { label, spans })
    }

    /// The streams with spans, ascending.
    pub fn streams(&self) -> Vec<usize> {
        let mut s: Vec<usize> = self.spans.iter().map(|s| s.stream).collect();
        s.sort_unstable();
        s.dedup();
        s
    }

    /// From the first start to the last end.
    pub fn duration_us(&self) -> f64 {
        self.spans.iter().map(|s| s.end_us).fold(0.0, f64::max)
    }
}
