//! Text and JSON output for the CLI: a plan's per-stream steps, and the comparison of algorithms.
//!
//! [`compare`] plans the graph with every algorithm (the concrete ones unfused, `auto` choosing its
//! fusion for graph mode) and predicts each plan's latency in both modes. The ratio column is the
//! plan's graph-mode latency over `single`'s, so below 1 is faster.

use std::fmt::Write;

use serde::Serialize;

use crate::assign::{assign, Algorithm, AssignConfig, Planned};
use crate::cost::CostModel;
use crate::error::GraphError;
use crate::ir::OpGraph;
use crate::plan::{Plan, Step};
use crate::sim::{simulate, SimMode, SimResult};

/// One row of `--compare`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CompareRow {
    /// The plan's algorithm (for `auto`, `auto:` and what it chose).
    pub algo: String,
    /// Streams the plan uses.
    pub streams: usize,
    /// Waits in the plan.
    pub waits: usize,
    /// Predicted latency launching op by op, in microseconds.
    pub predicted_us_eager: f64,
    /// Predicted latency replaying a captured graph, in microseconds.
    pub predicted_us_graph: f64,
    /// `predicted_us_graph` over `single`'s (below 1 is faster than `single`).
    pub ratio_to_single_graph: f64,
}

/// One row per algorithm (the five concrete ones, then `auto`) for at most `max_streams` streams
/// at this batch size.
pub fn compare(
    g: &OpGraph,
    max_streams: usize,
    batch: usize,
    cost: &CostModel,
) -> Result<Vec<CompareRow>, GraphError> {
    Ok(compare_plans(g, max_streams, batch, cost, None)?
        .into_iter()
        .map(|c| c.row)
        .collect())
}

/// One algorithm's plan, both modes' simulations of it and its row of [`compare`].
#[derive(Clone, Debug)]
pub struct Compared {
    /// The algorithm asked for.
    pub algorithm: Algorithm,
    /// Its plan and the graph the plan is for.
    pub planned: Planned,
    /// The plan simulated launching op by op.
    pub eager: SimResult,
    /// The plan simulated as a captured-graph replay.
    pub graph: SimResult,
    /// The summary row.
    pub row: CompareRow,
}

/// What [`compare`] computes, with the plans and per-op simulations kept: one entry per
/// algorithm (the five concrete ones, then `auto` choosing for graph mode). `fuse` fuses the
/// embeddings into that many groups first for every algorithm (`None`: the concrete algorithms
/// unfused and `auto` deciding, as [`compare`] does).
pub fn compare_plans(
    g: &OpGraph,
    max_streams: usize,
    batch: usize,
    cost: &CostModel,
    fuse: Option<usize>,
) -> Result<Vec<Compared>, GraphError> {
    let mut out: Vec<Compared> = Vec::new();
    for algo in Algorithm::ALL.into_iter().chain([Algorithm::Auto]) {
        let cfg = AssignConfig {
            algo,
            max_streams,
            batch,
            mode: SimMode::Graph,
            fuse,
        };
        let planned = assign(g, &cfg, cost)?;
        let eager = simulate(&planned.graph, &planned.plan, cost, batch, SimMode::Eager);
        let graph = simulate(&planned.graph, &planned.plan, cost, batch, SimMode::Graph);
        let row = CompareRow {
            algo: planned.plan.algo.clone(),
            streams: planned.plan.num_streams(),
            waits: planned.plan.num_waits(),
            predicted_us_eager: eager.latency_us,
            predicted_us_graph: graph.latency_us,
            ratio_to_single_graph: 0.0,
        };
        out.push(Compared {
            algorithm: algo,
            planned,
            eager,
            graph,
            row,
        });
    }
    let single = out[0].row.predicted_us_graph;
    for c in &mut out {
        c.row.ratio_to_single_graph = c.row.predicted_us_graph / single;
    }
    Ok(out)
}

/// The comparison as an aligned text table.
pub fn render_compare(rows: &[CompareRow]) -> String {
    let w = rows.iter().map(|r| r.algo.len()).max().unwrap_or(4).max(4);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<w$}  {:>7}  {:>5}  {:>12}  {:>12}  {:>14}",
        "algo", "streams", "waits", "eager us", "graph us", "graph / single"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{:<w$}  {:>7}  {:>5}  {:>12.1}  {:>12.1}  {:>14.3}",
            r.algo,
            r.streams,
            r.waits,
            r.predicted_us_eager,
            r.predicted_us_graph,
            r.ratio_to_single_graph
        );
    }
    s
}

/// A plan as text: a summary line, then per stream its ops with the events it records and waits on.
pub fn render_plan(g: &OpGraph, plan: &Plan) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "plan {}: {} ops on {} streams, {} events, {} waits",
        plan.algo,
        plan.num_ops(),
        plan.num_streams(),
        plan.num_events(),
        plan.num_waits()
    );
    for (i, steps) in plan.streams.iter().enumerate() {
        let items: Vec<String> = steps
            .iter()
            .map(|step| match *step {
                Step::Launch(op) => g.op(op).name.clone(),
                Step::Record(e) => format!("[record e{e}]"),
                Step::Wait(e) => format!("[wait e{e}]"),
            })
            .collect();
        let ops = steps
            .iter()
            .filter(|s| matches!(s, Step::Launch(_)))
            .count();
        let _ = writeln!(s, "stream {i} ({ops} ops): {}", items.join(" "));
    }
    s
}
