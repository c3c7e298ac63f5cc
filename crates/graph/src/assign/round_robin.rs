//! `round-robin`: independent feature branches dealt to streams in turn (the naive scheme).
//!
//! A branch is the set of ops of one feature (`Op::feature`); ops of no feature (bottom MLP,
//! interaction, top MLP, fused lookups) stay on stream 0. A graph without features (synthetic)
//! deals its chains instead (see [`super::chains`]). Branches are dealt in the order of their
//! first op, starting at stream 0; every stream keeps its ops in topological order.

use std::collections::BTreeMap;

use crate::error::GraphError;
use crate::ir::OpGraph;
use crate::plan::Plan;

/// The round-robin plan over at most `k` streams.
pub(crate) fn plan(g: &OpGraph, k: usize) -> Result<Plan, GraphError> {
    let n = g.len();
    let mut stream = vec![0usize; n];
    if g.ops().any(|o| o.feature.is_some()) {
        // Feature -> its turn, in the order of the feature's first op.
        let mut turn: BTreeMap<usize, usize> = BTreeMap::new();
        for (id, op) in g.ops().enumerate() {
            if let Some(f) = op.feature {
                let next = turn.len();
                let t = *turn.entry(f).or_insert(next);
                stream[id] = t % k;
            }
        }
    } else {
        let (_, chains) = super::chains(g);
        for (i, c) in chains.iter().enumerate() {
            for &op in c {
                stream[op] = i % k;
            }
        }
    }
    let mut lists = vec![Vec::new(); k];
    for (op, &s) in stream.iter().enumerate() {
        lists[s].push(op);
    }
    Plan::from_streams(g, "round-robin", lists)
}
