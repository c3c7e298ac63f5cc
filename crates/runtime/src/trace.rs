//! Timelines: per-op spans per stream, written as Chrome trace-event JSON (Perfetto,
//! chrome://tracing). Each execution context is a process, each stream a thread (track).
//!
//! Times are f64 microseconds since the backend's epoch from end to end (the CUDA backend
//! converts its events' f32 millisecond intervals over short distances only, see
//! `backend::cuda`). Per-op spans need eager execution: a request run as a captured CUDA graph
//! records one span for the whole replay on stream 0 (named `graph replay (bucket N)`, with
//! [`TraceEvent::replay`] set), since the ops inside a graph are not timed one by one.
//! [`record_op_medians`] ignores those; [`require_op_spans`] refuses them where per-op times
//! are needed (profiles).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::{json, Value};
use streamrec_graph::MeasuredCosts;

use crate::error::{NoSpans, Result, RuntimeError};

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
    /// `Some(bucket)` when the span times a whole CUDA-graph replay of the plan captured for
    /// `bucket` samples (then `op` is [`REPLAY_OP`]); `None` for one op.
    pub replay: Option<usize>,
}

/// The `op` of a [`TraceEvent`] that times a graph replay rather than one op.
pub const REPLAY_OP: usize = usize::MAX;

/// The name of the span of a graph replay captured for `bucket` samples.
pub fn replay_name(bucket: usize) -> String {
    format!("graph replay (bucket {bucket})")
}

/// Checks that `events` hold per-op spans: an error when a request ran as a CUDA-graph replay
/// (timed only as a whole) or nothing was recorded. Profiles (`run --profile`) need this.
pub fn require_op_spans(events: &[TraceEvent]) -> Result<()> {
    if events.iter().any(|e| e.replay.is_some()) {
        return Err(RuntimeError::NoOpSpans(NoSpans::GraphReplay));
    }
    if events.is_empty() {
        return Err(RuntimeError::NoOpSpans(NoSpans::NotRecorded));
    }
    Ok(())
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
        let (cat, args) = match e.replay {
            Some(bucket) => (
                "graph",
                json!({"bucket": bucket, "batch": e.batch, "request": e.request}),
            ),
            None => (
                "op",
                json!({"op": e.op, "batch": e.batch, "request": e.request}),
            ),
        };
        out.push(json!({
            "name": e.name, "cat": cat, "ph": "X",
            "ts": e.start_us, "dur": (e.end_us - e.start_us).max(0.0),
            "pid": e.context, "tid": e.stream, "args": args,
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
/// the cost model reads); ops without spans are left as they were, and graph-replay spans are
/// not ops (see [`require_op_spans`]).
pub fn record_op_medians(costs: &mut MeasuredCosts, events: &[TraceEvent], batch: usize) {
    let mut per_op: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for e in events.iter().filter(|e| e.replay.is_none()) {
        per_op
            .entry(&e.name)
            .or_default()
            .push(e.end_us - e.start_us);
    }
    for (op, v) in per_op {
        costs
            .ops
            .entry(op.to_string())
            .or_default()
            .insert(batch.to_string(), crate::stats::median(&v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(name: &str, start_us: f64, end_us: f64, replay: Option<usize>) -> TraceEvent {
        TraceEvent {
            name: name.into(),
            op: if replay.is_some() { REPLAY_OP } else { 3 },
            context: 0,
            stream: 0,
            start_us,
            end_us,
            batch: 8,
            request: 1,
            replay,
        }
    }

    #[test]
    fn spans_keep_sub_microsecond_times_late_in_a_run() {
        // Two minutes in, 0.25 us apart: f64 microseconds keep the difference exactly.
        let t = 120.0e6;
        let doc = chrome_trace(&[ev("a", t, t + 0.25, None)]);
        let x = doc["traceEvents"]
            .as_array()
            .expect("events")
            .iter()
            .find(|e| e["ph"] == "X")
            .expect("span")
            .clone();
        assert_eq!(x["ts"].as_f64(), Some(t));
        assert_eq!(x["dur"].as_f64(), Some(0.25));
    }

    #[test]
    fn graph_replays_are_traced_but_are_not_op_costs() {
        let events = [
            ev("mlp", 10.0, 19.0, None),
            ev(&replay_name(8), 20.0, 50.0, Some(8)),
            ev("mlp", 60.0, 61.0, None),
            ev("mlp", 70.0, 74.0, None),
        ];
        let doc = chrome_trace(&events);
        let replay = doc["traceEvents"]
            .as_array()
            .expect("events")
            .iter()
            .find(|e| e["cat"] == "graph")
            .expect("a replay span")
            .clone();
        assert_eq!(replay["name"], "graph replay (bucket 8)");
        assert_eq!(replay["args"]["bucket"], 8);
        let mut costs = MeasuredCosts::default();
        record_op_medians(&mut costs, &events, 8);
        assert_eq!(costs.ops.len(), 1, "{:?}", costs.ops);
        // The median of the op's spans (9, 1 and 4 us), not the first, last or mean.
        assert_eq!(costs.ops["mlp"]["8"], 4.0);
        let err = require_op_spans(&events).expect_err("a replay is not per-op");
        assert!(err.to_string().contains("eager"), "{err}");
        assert!(require_op_spans(&events[..1]).is_ok());
        assert!(require_op_spans(&[]).is_err());
    }
}
