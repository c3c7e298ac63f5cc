//! A self-contained HTML page of a model's plans: the op graph by stream, the simulated (and
//! measured) timelines, and every algorithm side by side.
//!
//! [`page`] plans the graph with every algorithm (as [`crate::compare::compare`] does), simulates
//! each plan in both modes and renders one HTML document with inline SVG, CSS and a little plain
//! JavaScript: no network access, no external files, so it opens from disk and can be served as
//! it is. Per algorithm the page has a section with
//!
//! - the operator graph laid out by depth (longest path from an input), left to right, each op
//!   filled with its stream's colour, data dependencies as grey arrows, the plan's cross-stream
//!   waits as red dashed arrows (from the op recorded after to the op launched after the wait)
//!   and fused embedding groups outlined; hovering an op shows its name, kind, output shape,
//!   predicted standalone cost, stream and simulated start and end (an SVG `<title>`);
//! - a Gantt chart of the simulated timeline per mode (eager, graph), one lane for the host and
//!   one per stream, with the waits as dashed lines; with a measured trace
//!   ([`MeasuredTimeline`]) its lanes follow, on the same time axis (one scale for every
//!   timeline of the page).
//!
//! A table of every algorithm (streams, waits, predicted eager and graph latency, graph-mode
//! ratio to `single`) and a selector switch between the sections without reloading; the URL hash
//! `#algo=NAME` selects one at load. Every string taken from a spec, a plan or a trace is escaped
//! ([`escape`]); the script reads nothing but the page's own attributes and the hash, which it
//! only compares with the section names.
//!
//! Stable attributes for tests and tools: a section is `<section class="algo" data-algo=NAME
//! data-streams=S data-waits=W data-ops=N>`; its graph is one `<svg class="graph">` with one
//! `data-op` per op, one `data-wait` per wait and one `data-fused` per fused group; each timeline
//! is one `<svg class="gantt" data-laneset=eager|graph|measured>` with one `<g class="lane"
//! data-lane=host|0|1|..>` per lane, a `data-op` bar per op (measured spans carry `data-span`
//! instead) and a `data-gwait` line per wait.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::Value;

use crate::compare::{compare_plans, Compared};
use crate::cost::CostModel;
use crate::error::GraphError;
use crate::ir::{OpGraph, OpId, OpKind};
use crate::plan::{Plan, Step};
use crate::sim::SimResult;

/// Stream colours (light enough for black text); streams past 12 reuse them.
const PALETTE: [&str; 12] = [
    "#8ecae6", "#ffb703", "#90be6d", "#f28482", "#b8a1e3", "#f9c74f", "#4cc9b0", "#f4a261",
    "#a3b18a", "#e5989b", "#84a59d", "#cdb4db",
];
/// Colour of an op no stream launches.
const NO_STREAM: &str = "#dddddd";

// Graph layout, in pixels.
const PAD: f64 = 16.0;
const COL_W: f64 = 165.0;
const NODE_W: f64 = 135.0;
const NODE_H: f64 = 22.0;
const ROW_H: f64 = 30.0;

// Gantt layout, in pixels.
const LABEL_W: f64 = 130.0;
const TIME_W: f64 = 1100.0;
const LANE_H: f64 = 18.0;
const LANE_GAP: f64 = 4.0;
const TITLE_H: f64 = 20.0;
const AXIS_H: f64 = 18.0;

/// Most spans of a measured request shown.
pub const MAX_MEASURED_SPANS: usize = 100_000;
/// Most lanes (distinct streams) of a measured request.
pub const MAX_MEASURED_LANES: usize = 1_024;

/// What to plan and show.
#[derive(Clone, Copy, Debug)]
pub struct Options<'a> {
    /// The batch size plans are made, costed and simulated for.
    pub batch: usize,
    /// At most this many streams per plan.
    pub max_streams: usize,
    /// Fuse the embeddings into this many groups first (used by [`page`]; `None`: as
    /// [`crate::compare::compare`], concrete algorithms unfused and `auto` deciding).
    pub fuse: Option<usize>,
    /// A measured timeline to show beside the simulated ones.
    pub measured: Option<&'a MeasuredTimeline>,
    /// The algorithm shown at load (`single`, ..., `auto`); the first when `None` or unknown.
    pub selected: Option<&'a str>,
}

/// Plans `g` with every algorithm, simulates each plan in both modes and renders the page.
pub fn page(g: &OpGraph, cost: &CostModel, opts: &Options<'_>) -> Result<String, GraphError> {
    let views = compare_plans(g, opts.max_streams, opts.batch, cost, opts.fuse)?;
    Ok(render(&views, cost, opts))
}

/// Escapes text for HTML text and double- or single-quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

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

/// A wait of a plan, drawn from the op before its event's record to the op after the wait.
struct WaitLine {
    event: usize,
    from_stream: usize,
    to_stream: usize,
    from_op: Option<OpId>,
    to_op: Option<OpId>,
}

fn wait_lines(plan: &Plan) -> Vec<WaitLine> {
    let mut rec: Vec<Option<(usize, Option<OpId>)>> = vec![None; plan.num_events];
    for (s, steps) in plan.streams.iter().enumerate() {
        let mut last = None;
        for step in steps {
            match *step {
                Step::Launch(op) => last = Some(op),
                Step::Record(e) => {
                    if let Some(r) = rec.get_mut(e) {
                        *r = Some((s, last));
                    }
                }
                Step::Wait(_) => {}
            }
        }
    }
    let mut out = Vec::new();
    for (s, steps) in plan.streams.iter().enumerate() {
        for (i, step) in steps.iter().enumerate() {
            if let Step::Wait(e) = *step {
                let to_op = steps[i + 1..].iter().find_map(|x| match x {
                    Step::Launch(op) => Some(*op),
                    _ => None,
                });
                let (from_stream, from_op) = rec.get(e).copied().flatten().unwrap_or((s, None));
                out.push(WaitLine {
                    event: e,
                    from_stream,
                    to_stream: s,
                    from_op,
                    to_op,
                });
            }
        }
    }
    out
}

fn kind_name(k: &OpKind) -> &'static str {
    match k {
        OpKind::EmbeddingBag { .. } => "embedding_bag",
        OpKind::TableBatchedEmbeddingBag { .. } => "table_batched_embedding_bag",
        OpKind::Linear { .. } => "linear",
        OpKind::Concat => "concat",
        OpKind::DotInteraction => "dot_interaction",
        OpKind::DcnCross { .. } => "dcn_cross",
        OpKind::Synthetic { .. } => "synthetic",
    }
}

fn colour(stream: usize) -> &'static str {
    if stream == usize::MAX {
        NO_STREAM
    } else {
        PALETTE[stream % PALETTE.len()]
    }
}

/// At most `max` characters, with an ellipsis when cut.
fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('\u{2026}');
        t
    }
}

fn fmt_us(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.1}")
    } else {
        "deadlock".into()
    }
}

fn shape_text(shape: &[usize]) -> String {
    let parts: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

/// Positions of the ops (top-left corners) and the graph's size.
struct Layout {
    pos: Vec<(f64, f64)>,
    width: f64,
    height: f64,
}

/// Columns by depth; within a column ops sit near the mean height of their inputs, in that
/// order, without overlapping (the first column in id order).
fn layout(g: &OpGraph) -> Layout {
    let n = g.len();
    let preds: Vec<Vec<OpId>> = (0..n).map(|v| g.preds(v)).collect();
    let mut depth = vec![0usize; n];
    for v in g.topo_order() {
        depth[v] = preds[v].iter().map(|&p| depth[p] + 1).max().unwrap_or(0);
    }
    let cols = depth.iter().copied().max().map_or(0, |d| d + 1);
    let mut by_col: Vec<Vec<OpId>> = vec![Vec::new(); cols];
    for (v, &d) in depth.iter().enumerate() {
        by_col[d].push(v);
    }
    let mut y = vec![0.0f64; n];
    for ops in &by_col {
        let mut keys: Vec<(f64, OpId)> = ops
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let k = if preds[v].is_empty() {
                    i as f64 * ROW_H
                } else {
                    preds[v].iter().map(|&p| y[p]).sum::<f64>() / preds[v].len() as f64
                };
                (k, v)
            })
            .collect();
        keys.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut next = 0.0f64;
        for (k, v) in keys {
            let at = k.max(next);
            y[v] = at;
            next = at + ROW_H;
        }
    }
    // The first column once more, each op near the mean height of its consumers (a fused
    // lookup then sits beside the branches it feeds).
    if let Some(first) = by_col.first() {
        let mut keys: Vec<(f64, OpId)> = first
            .iter()
            .map(|&v| {
                let succs = g.succs(v);
                let k = if succs.is_empty() {
                    y[v]
                } else {
                    succs.iter().map(|&c| y[c]).sum::<f64>() / succs.len() as f64
                };
                (k, v)
            })
            .collect();
        keys.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut next = 0.0f64;
        for (k, v) in keys {
            let at = k.max(next);
            y[v] = at;
            next = at + ROW_H;
        }
    }
    let pos: Vec<(f64, f64)> = (0..n)
        .map(|v| (PAD + depth[v] as f64 * COL_W, PAD + y[v]))
        .collect();
    let width = PAD * 2.0 + (cols.max(1) - 1) as f64 * COL_W + NODE_W;
    let height = PAD * 2.0 + y.iter().copied().fold(0.0, f64::max) + NODE_H;
    Layout { pos, width, height }
}

/// Renders the page for already planned and simulated algorithms (what
/// [`crate::compare::compare_plans`] returns, `single` first). `opts.fuse` is not used here.
pub fn render(views: &[Compared], cost: &CostModel, opts: &Options<'_>) -> String {
    let model = views
        .first()
        .map_or("", |v| v.planned.graph.spec.name.as_str());
    let ops = views.first().map_or(0, |v| v.planned.graph.len());
    // One time scale for every timeline of the page.
    let mut max_t = opts.measured.map_or(0.0, MeasuredTimeline::duration_us);
    for v in views {
        for t in [v.eager.latency_us, v.graph.latency_us] {
            if t.is_finite() {
                max_t = max_t.max(t);
            }
        }
    }
    if !max_t.is_finite() || max_t <= 0.0 {
        max_t = 1.0;
    }
    let keys: Vec<&str> = views.iter().map(|v| v.algorithm.as_str()).collect();
    let selected = opts
        .selected
        .filter(|s| keys.contains(s))
        .or(keys.first().copied())
        .unwrap_or("");

    let mut s = String::with_capacity(256 * 1024);
    let title = format!("StreamRec plan: {model}");
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>{CSS}</style>\n</head>\n\
         <body data-ready=\"0\" data-errors=\"0\" data-default=\"{}\" data-shown=\"\">\n",
        escape(&title),
        escape(selected)
    );
    // Shared markers (not inside a hidden section, so they always render).
    s.push_str(
        "<svg class=\"defs\" width=\"0\" height=\"0\" aria-hidden=\"true\"><defs>\
         <marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"6\" \
         markerHeight=\"6\" orient=\"auto-start-reverse\"><path d=\"M0,0L10,5L0,10z\" \
         fill=\"#999\"/></marker>\
         <marker id=\"arrow-wait\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"7\" \
         markerHeight=\"7\" orient=\"auto-start-reverse\"><path d=\"M0,0L10,5L0,10z\" \
         fill=\"#d62828\"/></marker></defs></svg>\n",
    );
    let _ = writeln!(
        s,
        "<header><h1>{}</h1>\n<p class=\"sub\">{} ops, batch {}, up to {} streams, device \
         profile <code>{}</code>{}</p>",
        escape(&title),
        ops,
        opts.batch,
        opts.max_streams,
        escape(&cost.profile().name),
        opts.measured
            .map_or(String::new(), |m| format!("; {}", escape(&m.label)))
    );
    s.push_str("<label class=\"pick\">Algorithm <select id=\"algo-select\">");
    for (v, key) in views.iter().zip(&keys) {
        let _ = write!(
            s,
            "<option value=\"{}\"{}>{}</option>",
            escape(key),
            if *key == selected { " selected" } else { "" },
            escape(&v.row.algo)
        );
    }
    s.push_str("</select></label></header>\n");

    // The comparison table.
    s.push_str(
        "<table id=\"algos\"><thead><tr><th>algorithm</th><th>plan</th><th>streams</th>\
         <th>waits</th><th>eager &micro;s</th><th>graph &micro;s</th><th>graph / single</th>\
         </tr></thead><tbody>\n",
    );
    for (v, key) in views.iter().zip(&keys) {
        let r = &v.row;
        let _ = writeln!(
            s,
            "<tr data-algo=\"{}\"{}><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{:.3}</td></tr>",
            escape(key),
            if *key == selected {
                " class=\"selected\""
            } else {
                ""
            },
            escape(key),
            escape(&r.algo),
            r.streams,
            r.waits,
            fmt_us(r.predicted_us_eager),
            fmt_us(r.predicted_us_graph),
            r.ratio_to_single_graph
        );
    }
    s.push_str("</tbody></table>\n");

    for (v, key) in views.iter().zip(&keys) {
        section(&mut s, v, key, *key == selected, cost, opts, max_t);
    }
    let _ = write!(s, "<script>{SCRIPT}</script>\n</body>\n</html>\n");
    s
}

fn section(
    s: &mut String,
    v: &Compared,
    key: &str,
    shown: bool,
    cost: &CostModel,
    opts: &Options<'_>,
    max_t: f64,
) {
    let g = &v.planned.graph;
    let plan = &v.planned.plan;
    let k = plan.num_streams();
    let waits = wait_lines(plan);
    let _ = writeln!(
        s,
        "<section class=\"algo\" id=\"algo-{}\" data-algo=\"{}\" data-plan=\"{}\" \
         data-streams=\"{}\" data-waits=\"{}\" data-ops=\"{}\"{}>",
        escape(key),
        escape(key),
        escape(&plan.algo),
        k,
        plan.num_waits(),
        plan.num_ops(),
        if shown { "" } else { " hidden" }
    );
    let _ = writeln!(
        s,
        "<h2>{}: {} ops on {} streams, {} events, {} waits; predicted eager {} &micro;s, graph {} \
         &micro;s ({:.3} &times; single)</h2>",
        escape(&plan.algo),
        plan.num_ops(),
        k,
        plan.num_events(),
        plan.num_waits(),
        fmt_us(v.eager.latency_us),
        fmt_us(v.graph.latency_us),
        v.row.ratio_to_single_graph
    );
    s.push_str("<div class=\"legend\">");
    for st in 0..k {
        let _ = write!(
            s,
            "<span><i style=\"background:{}\"></i>stream {st}</span>",
            colour(st)
        );
    }
    s.push_str(
        "<span><i class=\"host\"></i>host</span><span><i class=\"wait\"></i>cross-stream wait\
         </span><span><i class=\"fused\"></i>fused group</span></div>\n",
    );
    s.push_str(
        "<h3>Simulated timeline (same time axis for every chart)</h3>\n<div class=\"scroll\">",
    );
    for (mode, sim) in [("eager", &v.eager), ("graph", &v.graph)] {
        gantt(s, g, plan, sim, mode, &waits, cost, max_t);
    }
    if let Some(m) = opts.measured {
        measured_gantt(s, m, max_t);
    }
    s.push_str("</div>\n<h3>Operator graph (by depth; hover an op for details)</h3>\n");
    s.push_str("<div class=\"scroll\">");
    graph_svg(s, v, &waits, cost, opts.batch);
    s.push_str("</div>\n</section>\n");
}

fn graph_svg(s: &mut String, v: &Compared, waits: &[WaitLine], cost: &CostModel, batch: usize) {
    let g = &v.planned.graph;
    let stream_of = v.planned.plan.stream_of();
    let st = |op: OpId| stream_of.get(op).copied().unwrap_or(usize::MAX);
    let l = layout(g);
    let _ = writeln!(
        s,
        "<svg class=\"graph\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w:.0}\" \
         height=\"{h:.0}\" viewBox=\"0 0 {w:.0} {h:.0}\" role=\"img\" aria-label=\"operator \
         graph\">",
        w = l.width,
        h = l.height
    );
    // Fused groups, behind everything.
    for (id, op) in g.ops().enumerate() {
        if let OpKind::TableBatchedEmbeddingBag { features } = &op.kind {
            let names: Vec<&str> = features
                .iter()
                .filter_map(|&f| g.spec.features.get(f).map(|x| x.name.as_str()))
                .collect();
            let (x, y) = l.pos[id];
            let _ = writeln!(
                s,
                "<rect class=\"fused\" data-fused=\"{}\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" \
                 height=\"{:.1}\" rx=\"6\"><title>{}</title></rect>",
                escape(&op.name),
                x - 5.0,
                y - 5.0,
                NODE_W + 10.0,
                NODE_H + 10.0,
                escape(&format!(
                    "fused group {}: {} tables ({})",
                    op.name,
                    names.len(),
                    names.join(", ")
                ))
            );
        }
    }
    let mut edges = g.edges();
    edges.sort_unstable();
    edges.dedup();
    s.push_str("<g class=\"edges\">");
    for (a, b) in edges {
        let (x1, y1) = (l.pos[a].0 + NODE_W, l.pos[a].1 + NODE_H / 2.0);
        let (x2, y2) = (l.pos[b].0, l.pos[b].1 + NODE_H / 2.0);
        let mx = (x1 + x2) / 2.0;
        let _ = write!(
            s,
            "<path class=\"edge{}\" d=\"M{x1:.1},{y1:.1}C{mx:.1},{y1:.1} {mx:.1},{y2:.1} \
             {x2:.1},{y2:.1}\"/>",
            if st(a) != st(b) { " cross" } else { "" }
        );
    }
    s.push_str("</g>\n<g class=\"waits\">");
    for w in waits {
        let (x1, y1) = match w.from_op {
            Some(p) => (l.pos[p].0 + NODE_W, l.pos[p].1 + NODE_H * 0.75),
            None => (2.0, w.to_op.map_or(2.0, |c| l.pos[c].1 + NODE_H * 0.75)),
        };
        let (x2, y2) = match w.to_op {
            Some(c) => (l.pos[c].0, l.pos[c].1 + NODE_H * 0.75),
            None => (l.width - 2.0, y1),
        };
        let mx = (x1 + x2) / 2.0;
        let bend = 10.0;
        let what = format!(
            "wait on event e{}: stream {} waits for stream {}{}{}",
            w.event,
            w.to_stream,
            w.from_stream,
            w.from_op
                .map_or(String::new(), |p| format!(" (after {})", g.op(p).name)),
            w.to_op
                .map_or(String::new(), |c| format!(" before {}", g.op(c).name))
        );
        let _ = write!(
            s,
            "<path class=\"wait\" data-wait=\"e{}\" data-from-stream=\"{}\" data-to-stream=\"{}\" \
             d=\"M{x1:.1},{y1:.1}C{mx:.1},{:.1} {mx:.1},{:.1} {x2:.1},{y2:.1}\"><title>{}</title>\
             </path>",
            w.event,
            w.from_stream,
            w.to_stream,
            y1 + bend,
            y2 + bend,
            escape(&what)
        );
    }
    s.push_str("</g>\n<g class=\"ops\">\n");
    for (id, op) in g.ops().enumerate() {
        let (x, y) = l.pos[id];
        let stream = st(id);
        let stream_text = if stream == usize::MAX {
            "not launched".to_string()
        } else {
            format!("stream {stream}")
        };
        let tip = format!(
            "{}\n{} -> {} at batch {batch}\n{stream_text}\npredicted {:.2} us alone\n\
             simulated eager {:.1}..{:.1} us, graph {:.1}..{:.1} us",
            op.name,
            kind_name(&op.kind),
            shape_text(&g.out_shape(id, batch)),
            cost.op_us(g, id, batch),
            v.eager.op_start_us.get(id).copied().unwrap_or(0.0),
            v.eager.op_end_us.get(id).copied().unwrap_or(0.0),
            v.graph.op_start_us.get(id).copied().unwrap_or(0.0),
            v.graph.op_end_us.get(id).copied().unwrap_or(0.0),
        );
        let _ = writeln!(
            s,
            "<g class=\"op\" data-op=\"{}\" data-stream=\"{}\" transform=\"translate({x:.1},{y:.1})\">\
             <title>{}</title><rect width=\"{NODE_W}\" height=\"{NODE_H}\" rx=\"3\" fill=\"{}\"/>\
             <text x=\"5\" y=\"15\">{}</text><text class=\"sn\" x=\"{:.0}\" y=\"15\">{}</text></g>",
            escape(&op.name),
            if stream == usize::MAX {
                "none".to_string()
            } else {
                stream.to_string()
            },
            escape(&tip),
            colour(stream),
            escape(&clip(&op.name, 16)),
            NODE_W - 4.0,
            if stream == usize::MAX {
                "-".to_string()
            } else {
                format!("s{stream}")
            }
        );
    }
    s.push_str("</g>\n</svg>\n");
}

/// Tick step: 1, 2 or 5 times a power of ten, at most about 10 ticks.
fn tick_step(max_t: f64) -> f64 {
    let raw = max_t / 10.0;
    let p = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|&st| st >= raw)
        .unwrap_or(10.0 * p)
}

fn axis(s: &mut String, max_t: f64, y: f64, height: f64) {
    let step = tick_step(max_t);
    let digits = if step >= 1.0 {
        0
    } else {
        (-step.log10().floor()) as usize
    };
    let mut t = 0.0;
    let mut i = 0u32;
    while t <= max_t * 1.0001 && i <= 20 {
        let x = LABEL_W + t / max_t * TIME_W;
        let _ = write!(
            s,
            "<line class=\"tick\" x1=\"{x:.1}\" y1=\"{y:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\"/>\
             <text class=\"tl\" x=\"{x:.1}\" y=\"{:.1}\">{t:.digits$}</text>",
            y + height,
            y - 4.0
        );
        i += 1;
        t = f64::from(i) * step;
    }
}

fn xt(t: f64, max_t: f64) -> f64 {
    let t = if t.is_finite() {
        t.clamp(0.0, max_t)
    } else {
        max_t
    };
    LABEL_W + t / max_t * TIME_W
}

fn lane_y(top: f64, lane: usize) -> f64 {
    top + lane as f64 * (LANE_H + LANE_GAP)
}

fn lane_open(s: &mut String, lane: &str, label: &str, y: f64) {
    let _ = write!(
        s,
        "<g class=\"lane\" data-lane=\"{}\"><text class=\"ll\" x=\"4\" y=\"{:.1}\">{}</text>\
         <rect class=\"lbg\" x=\"{LABEL_W}\" y=\"{y:.1}\" width=\"{TIME_W}\" height=\"{LANE_H}\"/>",
        escape(lane),
        y + 13.0,
        escape(label)
    );
}

#[allow(clippy::too_many_arguments)]
fn bar(s: &mut String, attr: &str, name: &str, x1: f64, x2: f64, y: f64, fill: &str, tip: &str) {
    let w = (x2 - x1).max(1.0);
    let _ = write!(
        s,
        "<rect class=\"bar\" {attr}=\"{}\" x=\"{x1:.2}\" y=\"{y:.1}\" width=\"{w:.2}\" \
         height=\"{LANE_H}\" fill=\"{fill}\"><title>{}</title></rect>",
        escape(name),
        escape(tip)
    );
    if w >= 40.0 {
        let _ = write!(
            s,
            "<text class=\"bl\" x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            x1 + 3.0,
            y + 13.0,
            escape(&clip(name, ((w - 6.0) / 6.5) as usize))
        );
    }
}

#[allow(clippy::too_many_arguments)]
fn gantt(
    s: &mut String,
    g: &OpGraph,
    plan: &Plan,
    sim: &SimResult,
    mode: &str,
    waits: &[WaitLine],
    cost: &CostModel,
    max_t: f64,
) {
    let k = plan.num_streams();
    let lanes = k + 1;
    let top = TITLE_H + AXIS_H;
    let height = top + lanes as f64 * (LANE_H + LANE_GAP) + 4.0;
    let width = LABEL_W + TIME_W + 40.0;
    let sync = cost.profile().sync_us;
    let _ = write!(
        s,
        "<svg class=\"gantt\" data-laneset=\"{mode}\" data-latency=\"{}\" \
         xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" \
         viewBox=\"0 0 {width:.0} {height:.0}\"><text class=\"gt\" x=\"4\" y=\"14\">simulated, \
         {mode} mode: {} &micro;s</text>",
        fmt_us(sim.latency_us),
        fmt_us(sim.latency_us)
    );
    axis(s, max_t, top, height - top);
    // Host lane: issuing (eager) or launching the graph, then the final synchronise.
    let y = lane_y(top, 0);
    lane_open(s, "host", "host", y);
    let issue = if mode == "eager" {
        "issue ops and events"
    } else {
        "launch graph"
    };
    bar(
        s,
        "data-host",
        issue,
        xt(0.0, max_t),
        xt(sim.host_us, max_t),
        y,
        "#bbbbbb",
        &format!("host: {issue}, 0..{:.1} us", sim.host_us),
    );
    if sim.latency_us.is_finite() {
        let a = sim.latency_us - sync;
        bar(
            s,
            "data-host",
            "sync",
            xt(a, max_t),
            xt(sim.latency_us, max_t),
            y,
            "#888888",
            &format!("host: synchronise, {a:.1}..{:.1} us", sim.latency_us),
        );
    }
    s.push_str("</g>");
    for (st, steps) in plan.streams.iter().enumerate() {
        let y = lane_y(top, st + 1);
        lane_open(s, &st.to_string(), &format!("stream {st}"), y);
        for step in steps {
            if let Step::Launch(op) = *step {
                let a = sim.op_start_us.get(op).copied().unwrap_or(0.0);
                let b = sim.op_end_us.get(op).copied().unwrap_or(a);
                let name = &g.op(op).name;
                bar(
                    s,
                    "data-op",
                    name,
                    xt(a, max_t),
                    xt(b, max_t),
                    y,
                    colour(st),
                    &format!(
                        "{name} on stream {st} ({mode}): {a:.2}..{b:.2} us, {:.2} us",
                        b - a
                    ),
                );
            }
        }
        s.push_str("</g>");
    }
    for w in waits {
        let from_x = w
            .from_op
            .map_or(0.0, |p| sim.op_end_us.get(p).copied().unwrap_or(0.0));
        let to_x = w.to_op.map_or(from_x, |c| {
            sim.op_start_us.get(c).copied().unwrap_or(from_x)
        });
        let _ = write!(
            s,
            "<line class=\"gwait\" data-gwait=\"e{}\" x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" \
             y2=\"{:.1}\"><title>wait on e{}: stream {} after stream {}</title></line>",
            w.event,
            xt(from_x, max_t),
            lane_y(top, w.from_stream + 1) + LANE_H / 2.0,
            xt(to_x, max_t),
            lane_y(top, w.to_stream + 1) + LANE_H / 2.0,
            w.event,
            w.to_stream,
            w.from_stream
        );
    }
    if sim.latency_us.is_finite() {
        let x = xt(sim.latency_us, max_t);
        let _ = write!(
            s,
            "<line class=\"end\" x1=\"{x:.1}\" y1=\"{top:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\"/>",
            height - 4.0
        );
    }
    s.push_str("</svg>\n");
}

fn measured_gantt(s: &mut String, m: &MeasuredTimeline, max_t: f64) {
    let streams = m.streams();
    let top = TITLE_H + AXIS_H;
    let height = top + streams.len().max(1) as f64 * (LANE_H + LANE_GAP) + 4.0;
    let width = LABEL_W + TIME_W + 40.0;
    let _ = write!(
        s,
        "<svg class=\"gantt measured\" data-laneset=\"measured\" data-latency=\"{:.1}\" \
         xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" \
         viewBox=\"0 0 {width:.0} {height:.0}\"><text class=\"gt\" x=\"4\" y=\"14\">{}: {:.1} \
         &micro;s</text>",
        m.duration_us(),
        escape(&m.label),
        m.duration_us()
    );
    axis(s, max_t, top, height - top);
    for (lane, &st) in streams.iter().enumerate() {
        let y = lane_y(top, lane);
        lane_open(s, &st.to_string(), &format!("stream {st} (run)"), y);
        for sp in m.spans.iter().filter(|sp| sp.stream == st) {
            bar(
                s,
                "data-span",
                &sp.name,
                xt(sp.start_us, max_t),
                xt(sp.end_us, max_t),
                y,
                colour(st),
                &format!(
                    "{} on stream {st} (measured): {:.2}..{:.2} us, {:.2} us",
                    sp.name,
                    sp.start_us,
                    sp.end_us,
                    sp.end_us - sp.start_us
                ),
            );
        }
        s.push_str("</g>");
    }
    s.push_str("</svg>\n");
}

const CSS: &str = r#"
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:16px 20px;color:#222;background:#fff}
h1{font-size:20px;margin:0 0 4px}h2{font-size:15px;margin:18px 0 6px}h3{font-size:14px;margin:14px 0 4px;color:#444}
.sub{margin:0 0 8px;color:#555}.pick{font-weight:600}select{font-size:14px;margin-left:6px}
table{border-collapse:collapse;margin:10px 0}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th:nth-child(-n+2),td:nth-child(-n+2){text-align:left}thead th{background:#f2f2f2}
tbody tr{cursor:pointer}tbody tr:hover{background:#f7f7f7}tr.selected{background:#fff3c4}tr.selected:hover{background:#ffeaa0}
.legend span{display:inline-block;margin-right:12px;font-size:12px}.legend i{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:-2px;border:1px solid #888}
.legend i.host{background:#bbb}.legend i.wait{border:0;border-top:2px dashed #d62828;height:0;width:18px;vertical-align:3px}.legend i.fused{border:2px dashed #7b2cbf;background:none}
.scroll{overflow-x:auto;max-width:100%}svg{display:block;font:11px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
svg.defs{position:absolute;width:0;height:0}
.edge{fill:none;stroke:#aaa;stroke-width:1;marker-end:url(#arrow)}.edge.cross{stroke:#777}
.wait{fill:none;stroke:#d62828;stroke-width:1.6;stroke-dasharray:5 3;marker-end:url(#arrow-wait)}
.fused{fill:none;stroke:#7b2cbf;stroke-width:2;stroke-dasharray:6 3}
.op rect{stroke:#555;stroke-width:.8}.op:hover rect{stroke:#000;stroke-width:2}.op text{fill:#111}.op .sn{text-anchor:end;fill:#333}
.gantt{margin:4px 0 10px}.gt{font-weight:600;fill:#333}.ll{fill:#333}.lbg{fill:#f6f6f6}.tick{stroke:#e2e2e2}.tl{fill:#777;text-anchor:middle;font-size:10px}
.bar{stroke:#fff;stroke-width:.5}.bar:hover{stroke:#000;stroke-width:1.5}.bl{fill:#111;pointer-events:none;font-size:10px}
.gwait{stroke:#d62828;stroke-width:1.2;stroke-dasharray:4 3}.end{stroke:#000;stroke-width:1.5}
.measured .lbg{fill:#eef4fb}
"#;

const SCRIPT: &str = r#"
(function () {
  'use strict';
  var body = document.body;
  var errors = 0;
  window.addEventListener('error', function () {
    errors += 1;
    body.setAttribute('data-errors', String(errors));
  });
  var select = document.getElementById('algo-select');
  var sections = document.querySelectorAll('section.algo');
  var rows = document.querySelectorAll('#algos tbody tr');
  function show(key) {
    var found = false;
    var i;
    for (i = 0; i < sections.length; i++) {
      if (sections[i].getAttribute('data-algo') === key) { found = true; }
    }
    if (!found) { return false; }
    for (i = 0; i < sections.length; i++) {
      sections[i].hidden = sections[i].getAttribute('data-algo') !== key;
    }
    for (i = 0; i < rows.length; i++) {
      rows[i].classList.toggle('selected', rows[i].getAttribute('data-algo') === key);
    }
    select.value = key;
    body.setAttribute('data-shown', key);
    return true;
  }
  function choose(key) {
    if (key === body.getAttribute('data-shown')) { return; }
    select.value = key;
    select.dispatchEvent(new Event('change'));
  }
  select.addEventListener('change', function () {
    if (!show(select.value)) { select.value = body.getAttribute('data-shown'); return; }
    try { history.replaceState(null, '', '#algo=' + encodeURIComponent(select.value)); } catch (e) { /* file: URLs may refuse */ }
  });
  for (var r = 0; r < rows.length; r++) {
    rows[r].addEventListener('click', function (ev) { choose(ev.currentTarget.getAttribute('data-algo')); });
  }
  function fromHash() {
    var m = /(?:^#|&)algo=([^&]*)/.exec(location.hash);
    if (!m) { return; }
    var key;
    try { key = decodeURIComponent(m[1]); } catch (e) { return; }
    choose(key);
  }
  show(body.getAttribute('data-default')) || (sections.length && show(sections[0].getAttribute('data-algo')));
  fromHash();
  window.addEventListener('hashchange', fromHash);
  body.setAttribute('data-ready', '1');
})();
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_covers_markup_and_quotes() {
        assert_eq!(
            escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(clip("abcdef", 4), "abc\u{2026}");
        assert_eq!(clip("abc", 4), "abc");
    }

    #[test]
    fn ticks_are_round() {
        for (max, step) in [
            (100.0, 10.0),
            (130.0, 20.0),
            (0.7, 0.1),
            (4.2, 0.5),
            (1.0, 0.1),
        ] {
            assert!(
                (tick_step(max) - step).abs() < 1e-9 * step,
                "{max}: {}",
                tick_step(max)
            );
        }
    }
}
