//! Graphviz DOT export of an operator graph, optionally coloured by stream.

use std::fmt::Write;

use crate::ir::{OpGraph, OpKind, Source};

const PALETTE: [&str; 12] = [
    "#8dd3c7", "#ffffb3", "#bebada", "#fb8072", "#80b1d3", "#fdb462", "#b3de69", "#fccde5",
    "#d9d9d9", "#bc80bd", "#ccebc5", "#ffed6f",
];

/// Writes the graph as DOT. `stream_of[op]` colours each op by its stream when given.
pub fn to_dot(graph: &OpGraph, stream_of: Option<&[usize]>) -> String {
    let mut s = String::new();
    let name = graph.spec.name.replace('"', "'");
    let _ = writeln!(s, "digraph \"{name}\" {{");
    let _ = writeln!(s, "  rankdir=TB;\n  node [shape=box, style=filled, fontname=\"Helvetica\", fillcolor=\"#ffffff\"];");
    let _ = writeln!(
        s,
        "  dense [shape=ellipse, label=\"dense [B,{}]\"];",
        graph.spec.dense
    );
    let mut sparse_seen = vec![false; graph.spec.features.len()];
    for (id, op) in graph.ops().enumerate() {
        let kind = match &op.kind {
            OpKind::EmbeddingBag { .. } => "embedding_bag",
            OpKind::TableBatchedEmbeddingBag { .. } => "table_batched_embedding_bag",
            OpKind::Linear { .. } => "linear",
            OpKind::Concat => "concat",
            OpKind::DotInteraction => "dot_interaction",
            OpKind::DcnCross { .. } => "dcn_cross",
            OpKind::Synthetic { .. } => "synthetic",
        };
        let mut label = format!("{}\\n{} [B,{}]", op.name, kind, op.width);
        let mut fill = String::from("#ffffff");
        if let Some(map) = stream_of {
            let st = map[id];
            let _ = write!(label, "\\nstream {st}");
            fill = PALETTE[st % PALETTE.len()].to_string();
        }
        let _ = writeln!(s, "  n{id} [label=\"{label}\", fillcolor=\"{fill}\"];");
        for inp in &op.inputs {
            match inp.src {
                Source::Dense => {
                    let _ = writeln!(s, "  dense -> n{id};");
                }
                Source::Sparse(f) => {
                    if !sparse_seen[f] {
                        sparse_seen[f] = true;
                        let _ = writeln!(
                            s,
                            "  s{f} [shape=ellipse, label=\"{} indices\"];",
                            graph.spec.features[f].name
                        );
                    }
                    let _ = writeln!(s, "  s{f} -> n{id};");
                }
                Source::Op(_) => {}
            }
        }
    }
    for (a, b) in graph.edges() {
        let _ = writeln!(s, "  n{a} -> n{b};");
    }
    let _ = writeln!(s, "  n{} -> score;", graph.output());
    let _ = writeln!(s, "  score [shape=ellipse, label=\"score [B,1]\"];");
    s.push_str("}\n");
    s
}
