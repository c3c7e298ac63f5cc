//! Timelines: per-op spans per stream, written as Chrome trace-event JSON (Perfetto,
//! chrome://tracing). Each execution context is a process, each stream a thread (track).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::{json, Value};
use streamrec_graph::MeasuredCosts;

use crate::error::{Result, RuntimeError};

/// One op's execution, as recorded by the engine.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceEvent {
    /// Op name.
    pub name: String,
    /// Op id.
    pub op: usize,
    /// Execution context.
    pub context: usize,
    /// Stream within the context.
    pub stream: usize,
    /// Start (us since the backend's epoch).
    pub start_us: f64,
    /// End (us since the backend's epoch).
    pub end_us: f64,
    /// Batch size of the request.
    pub batch: usize,
    /// Request number.
    pub request: u64,
}

/// Builds the Chrome trace-event JSON document for these events.
pub fn chrome_trace(events: &[TraceEvent]) -> Value {
    let mut out = Vec::with_capacity(events.len() + 8);
    let tracks: BTreeSet<(usize, usize)> = events.iter().map(|e| (e.context, e.stream)).collect();
    let contexts: BTreeSet<usize> = tracks.iter().map(|t| t.0).collect();
    for c in &contexts {
        out.push(
            json!({"name": "process_name", "ph": "M", "pid": c, "tid": 0,
            "args": {"name": format!("context {c}")}}),
        );
    }
    for (c, s) in &tracks {
        out.push(json!({"name": "thread_name", "ph": "M", "pid": c, "tid": s,
            "args": {"name": format!("stream {s}")}}));
    }
    for e in events {
        out.push(json!({
            "name": e.name, "cat": "op", "ph": "X",
            "ts": e.start_us, "dur": (e.end_us - e.start_us).max(0.0),
            "pid": e.context, "tid": e.stream,
            "args": {"op": e.op, "batch": e.batch, "request": e.request},
        }));
    }
    json!({"traceEvents": out, "displayTimeUnit": "ns"})
}

/// Writes the trace to a file.
pub fn write_chrome_trace(path: &Path, events: &[TraceEvent]) -> Result<()> {
    let doc = chrome_trace(events);
    let text = serde_json::to_string(&doc).expect("trace serialises");
    std::fs::write(path, text).map_err(|e| RuntimeError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Adds each op's median span at `batch` to measured costs (the file `run --profile` writes and
/// the cost model reads); ops without spans are left as they were.
pub fn record_op_medians(costs: &mut MeasuredCosts, events: &[TraceEvent], batch: usize) {
    let mut per_op: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for e in events {
        per_op
            .entry(&e.name)
            .or_default()
            .push(e.end_us - e.start_us);
    }
    for (op, mut v) in per_op {
        v.sort_by(f64::total_cmp);
        costs
            .ops
            .entry(op.to_string())
            .or_default()
            .insert(batch.to_string(), v[v.len() / 2]);
    }
}
