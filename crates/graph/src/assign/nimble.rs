//! `nimble`: a minimum chain cover merged down to K streams, synchronised on the transitive
//! reduction (after Nimble, Kwon et al., NeurIPS 2020).
//!
//! By Dilworth's theorem the fewest chains covering a DAG (chains in the transitive closure, i.e.
//! sequences of ops each reachable from the one before) equals its width, the largest set of
//! mutually unreachable ops. The cover comes from a maximum matching in the bipartite graph with
//! an edge `u -> v` for every `v` reachable from `u` (Hopcroft-Karp): every matched pair links two
//! ops in one chain, so `chains = ops - matching`. Direct edges are matched first, so chains
//! follow the graph's edges where they can. With more chains than streams, chains are merged by
//! estimated cost (longest processing time first). Waits are derived from the transitive
//! reduction's edges only; they imply all others.

use std::collections::VecDeque;

use crate::cost::CostModel;
use crate::error::GraphError;
use crate::ir::{OpGraph, OpId};
use crate::plan::Plan;

/// Per op, the set of ops reachable from it (not itself), as bitsets of `n` bits.
pub fn transitive_closure(g: &OpGraph) -> Vec<Vec<u64>> {
    let n = g.len();
    let words = n.div_ceil(64);
    let mut reach = vec![vec![0u64; words]; n];
    for u in (0..n).rev() {
        let mut row = vec![0u64; words];
        for v in g.succs(u) {
            row[v / 64] |= 1 << (v % 64);
            for (w, r) in row.iter_mut().zip(&reach[v]) {
                *w |= r;
            }
        }
        reach[u] = row;
    }
    reach
}

fn has(row: &[u64], v: usize) -> bool {
    row[v / 64] >> (v % 64) & 1 == 1
}

/// Per op, its predecessors in the transitive reduction (edges not implied by a longer path).
pub fn transitive_reduction(g: &OpGraph) -> Vec<Vec<OpId>> {
    let reach = transitive_closure(g);
    let n = g.len();
    let mut preds = vec![Vec::new(); n];
    for u in 0..n {
        let succs = g.succs(u);
        for &v in &succs {
            if !succs.iter().any(|&w| w != v && has(&reach[w], v)) {
                preds[v].push(u);
            }
        }
    }
    preds
}

/// A minimum chain cover of the graph's ops: its length is the graph's width. Each chain is in
/// ascending op order and every op reaches the next.
pub fn min_chain_cover(g: &OpGraph) -> Vec<Vec<OpId>> {
    let n = g.len();
    let reach = transitive_closure(g);
    // Adjacency: direct successors first, then the rest of the closure.
    let adj: Vec<Vec<usize>> = (0..n)
        .map(|u| {
            let direct = g.succs(u);
            let mut out = direct.clone();
            for (wi, &word) in reach[u].iter().enumerate() {
                let mut w = word;
                while w != 0 {
                    let v = wi * 64 + w.trailing_zeros() as usize;
                    w &= w - 1;
                    if !direct.contains(&v) {
                        out.push(v);
                    }
                }
            }
            out
        })
        .collect();
    let mate_l = hopcroft_karp(n, &adj);
    let mut has_pred = vec![false; n];
    for &m in mate_l.iter().flatten() {
        has_pred[m] = true;
    }
    let mut chains = Vec::new();
    for head in (0..n).filter(|&v| !has_pred[v]) {
        let mut c = vec![head];
        let mut v = head;
        while let Some(next) = mate_l[v] {
            c.push(next);
            v = next;
        }
        chains.push(c);
    }
    chains
}

/// Maximum bipartite matching, left `u` to right `v` along `adj[u]`; returns each left's mate.
fn hopcroft_karp(n: usize, adj: &[Vec<usize>]) -> Vec<Option<usize>> {
    const NONE: usize = usize::MAX;
    let mut mate_l = vec![NONE; n];
    let mut mate_r = vec![NONE; n];
    // Greedy start, along direct edges first (they come first in `adj`).
    for u in 0..n {
        if let Some(&v) = adj[u].iter().find(|&&v| mate_r[v] == NONE) {
            mate_l[u] = v;
            mate_r[v] = u;
        }
    }
    let mut dist = vec![0usize; n];
    loop {
        // Breadth-first layers from the free left vertices.
        let mut queue = VecDeque::new();
        for u in 0..n {
            if mate_l[u] == NONE {
                dist[u] = 0;
                queue.push_back(u);
            } else {
                dist[u] = usize::MAX;
            }
        }
        let mut found = false;
        while let Some(u) = queue.pop_front() {
            for &v in &adj[u] {
                let w = mate_r[v];
                if w == NONE {
                    found = true;
                } else if dist[w] == usize::MAX {
                    dist[w] = dist[u] + 1;
                    queue.push_back(w);
                }
            }
        }
        if !found {
            break;
        }
        // Depth-first augmentation along the layers (iterative, with per-vertex cursors).
        let mut cursor = vec![0usize; n];
        for root in 0..n {
            if mate_l[root] != NONE {
                continue;
            }
            let mut stack = vec![root];
            while let Some(&u) = stack.last() {
                if cursor[u] == adj[u].len() {
                    dist[u] = usize::MAX;
                    stack.pop();
                    continue;
                }
                let v = adj[u][cursor[u]];
                cursor[u] += 1;
                let w = mate_r[v];
                if w == NONE {
                    // Augment along the stack: each left vertex takes the right vertex its
                    // cursor last tried.
                    for &x in stack.iter().rev() {
                        let y = adj[x][cursor[x] - 1];
                        mate_l[x] = y;
                        mate_r[y] = x;
                    }
                    break;
                } else if dist[w] == dist[u] + 1 {
                    stack.push(w);
                }
            }
        }
    }
    mate_l
        .into_iter()
        .map(|m| (m != NONE).then_some(m))
        .collect()
}

/// The nimble plan over at most `k` streams, with costs at this batch size.
pub(crate) fn plan(
    g: &OpGraph,
    k: usize,
    batch: usize,
    cost: &CostModel,
) -> Result<Plan, GraphError> {
    let chains = min_chain_cover(g);
    let items: Vec<(f64, usize)> = chains
        .iter()
        .enumerate()
        .map(|(i, c)| (c.iter().map(|&v| cost.stream_us(g, v, batch)).sum(), i))
        .collect();
    let bins = super::lpt(items, k);
    let lists: Vec<Vec<OpId>> = bins
        .into_iter()
        .map(|b| {
            let mut ops: Vec<OpId> = b.iter().flat_map(|&i| chains[i].iter().copied()).collect();
            ops.sort_unstable();
            ops
        })
        .collect();
    Plan::from_streams_with(g, "nimble", lists, &transitive_reduction(g))
}
