//! The embedding-fusion rewrite: per-feature embedding bags become table-batched lookups.
//!
//! The features' `embedding_bag` ops, in feature order, are split into `G` contiguous ranges of
//! near-equal size; each range becomes one `table_batched_embedding_bag` op whose output holds the
//! range's vectors side by side. Every consumer of a fused lookup now reads its column slice of
//! the fused output, so the rest of the graph is unchanged. Each group's op takes the place of the
//! group's earliest lookup, which keeps the ops in a topological order. With `G > 1` each group is
//! an independent branch that a scheduler can put on its own stream.

use crate::error::GraphError;
use crate::ir::{Op, OpGraph, OpId, OpKind, Source, Stage, TensorRef};

/// Number of per-feature embedding bags in a graph.
pub fn count_embedding_bags(g: &OpGraph) -> usize {
    g.ops()
        .filter(|o| matches!(o.kind, OpKind::EmbeddingBag { .. }))
        .count()
}

/// Rewrites the graph with its embedding bags fused into `groups` table-batched ops (at most one
/// per bag). A graph without embedding bags is returned unchanged.
pub fn fuse_embeddings(g: &OpGraph, groups: usize) -> Result<OpGraph, GraphError> {
    if groups == 0 {
        return Err(GraphError::Invalid(
            "embedding fusion needs at least one group".into(),
        ));
    }
    let mut bags: Vec<(usize, OpId)> = g
        .ops()
        .enumerate()
        .filter_map(|(id, o)| match o.kind {
            OpKind::EmbeddingBag { feature } => Some((feature, id)),
            _ => None,
        })
        .collect();
    if bags.is_empty() {
        return Ok(g.clone());
    }
    bags.sort_unstable();
    let groups = groups.min(bags.len());
    let n = g.len();
    // Per bag op: (group, first column in the group's output).
    let mut slot: Vec<Option<(usize, usize)>> = vec![None; n];
    let mut members: Vec<Vec<usize>> = Vec::with_capacity(groups);
    let mut first: Vec<OpId> = Vec::with_capacity(groups);
    let mut width: Vec<usize> = Vec::with_capacity(groups);
    for gi in 0..groups {
        let range = &bags[gi * bags.len() / groups..(gi + 1) * bags.len() / groups];
        let mut col = 0;
        for &(_, id) in range {
            slot[id] = Some((gi, col));
            col += g.op(id).width;
        }
        members.push(range.iter().map(|&(f, _)| f).collect());
        first.push(
            range
                .iter()
                .map(|&(_, id)| id)
                .min()
                .expect("groups <= bags"),
        );
        width.push(col);
    }
    let mut new_id: Vec<OpId> = vec![usize::MAX; n];
    let mut group_id: Vec<OpId> = vec![usize::MAX; groups];
    let mut ops: Vec<Op> = Vec::with_capacity(n);
    for id in 0..n {
        if let Some((gi, _)) = slot[id] {
            if first[gi] == id {
                group_id[gi] = ops.len();
                let features = members[gi].clone();
                ops.push(Op {
                    name: if groups == 1 {
                        "emb.fused".into()
                    } else {
                        format!("emb.fused.{gi}")
                    },
                    inputs: features
                        .iter()
                        .map(|&f| TensorRef {
                            src: Source::Sparse(f),
                            col: 0,
                            width: 0,
                        })
                        .collect(),
                    width: width[gi],
                    feature: if features.len() == 1 {
                        Some(features[0])
                    } else {
                        None
                    },
                    stage: Stage::Embedding,
                    kind: OpKind::TableBatchedEmbeddingBag { features },
                });
            }
            continue;
        }
        let mut op = g.op(id).clone();
        for t in &mut op.inputs {
            if let Source::Op(p) = t.src {
                match slot[p] {
                    Some((gi, col)) => {
                        t.src = Source::Op(group_id[gi]);
                        t.col += col;
                    }
                    None => t.src = Source::Op(new_id[p]),
                }
            }
        }
        new_id[id] = ops.len();
        ops.push(op);
    }
    OpGraph::from_ops(g.spec.clone(), ops)
}
