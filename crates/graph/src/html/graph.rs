//! The operator graph of a plan as SVG: ops laid out by depth ([`layout`]) and filled with
//! their stream's colour, the data edges, the plan's waits and the fused embedding groups.

use std::fmt::Write;

use super::text::{clip, colour, escape, kind_name, shape_text};
use super::waits::WaitLine;
use crate::compare::Compared;
use crate::cost::CostModel;
use crate::ir::{OpGraph, OpId, OpKind};

// Graph layout, in pixels.
const PAD: f64 = 16.0;
const COL_W: f64 = 165.0;
const NODE_W: f64 = 135.0;
const NODE_H: f64 = 22.0;
const ROW_H: f64 = 30.0;

/// Positions of the ops (top-left corners) and the graph's size.
struct Layout {
    pos: Vec<(f64, f64)>,
    width: f64,
    height: f64,
}

/// Places the ops of one column in the order of their wanted heights (`keys`: height, op; ties
/// by id), each at its wanted height or just below the op before it.
fn stack(mut keys: Vec<(f64, OpId)>, y: &mut [f64]) {
    keys.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut next = 0.0f64;
    for (k, v) in keys {
        let at = k.max(next);
        y[v] = at;
        next = at + ROW_H;
    }
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
        let keys: Vec<(f64, OpId)> = ops
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
        stack(keys, &mut y);
    }
    // The first column once more, each op near the mean height of its consumers (a fused
    // lookup then sits beside the branches it feeds).
    if let Some(first) = by_col.first() {
        let keys: Vec<(f64, OpId)> = first
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
        stack(keys, &mut y);
    }
    let pos: Vec<(f64, f64)> = (0..n)
        .map(|v| (PAD + depth[v] as f64 * COL_W, PAD + y[v]))
        .collect();
    let width = PAD * 2.0 + (cols.max(1) - 1) as f64 * COL_W + NODE_W;
    let height = PAD * 2.0 + y.iter().copied().fold(0.0, f64::max) + NODE_H;
    Layout { pos, width, height }
}

/// The operator graph of one algorithm's plan as one `<svg class="graph">`.
pub(super) fn graph_svg(
    s: &mut String,
    v: &Compared,
    waits: &[WaitLine],
    cost: &CostModel,
    batch: usize,
) {
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
