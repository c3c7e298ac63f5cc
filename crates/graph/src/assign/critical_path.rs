//! `critical-path`: HEFT-style list scheduling onto K streams by upward rank.
//!
//! An op's upward rank is its cost plus the largest (event cost + rank) of its consumers: the
//! length of the longest path from it to the end. Ready ops are taken highest rank first, and each
//! goes to the stream where it would finish earliest (the stream's last op, and its inputs, plus
//! one event's cost per input on another stream); ties go to the lowest stream index. A stream's
//! ops run in the order they were scheduled. Costs are the cost model's standalone times plus the
//! graph replay's per-node gap.

use std::collections::BinaryHeap;

use crate::cost::CostModel;
use crate::error::GraphError;
use crate::ir::OpGraph;
use crate::plan::Plan;

#[derive(PartialEq)]
struct Ready {
    rank: f64,
    op: usize,
}

impl Eq for Ready {}

impl Ord for Ready {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.rank
            .total_cmp(&other.rank)
            .then(other.op.cmp(&self.op))
    }
}

impl PartialOrd for Ready {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// The critical-path plan over at most `k` streams, with costs at this batch size.
pub(crate) fn plan(
    g: &OpGraph,
    k: usize,
    batch: usize,
    cost: &CostModel,
) -> Result<Plan, GraphError> {
    let n = g.len();
    let ev = cost.profile().event_us;
    let c: Vec<f64> = (0..n).map(|v| cost.stream_us(g, v, batch)).collect();
    let preds: Vec<Vec<usize>> = (0..n).map(|v| g.preds(v)).collect();
    let succs: Vec<Vec<usize>> = (0..n).map(|v| g.succs(v)).collect();
    let mut rank = vec![0.0f64; n];
    for v in (0..n).rev() {
        rank[v] = c[v] + succs[v].iter().map(|&s| ev + rank[s]).fold(0.0, f64::max);
    }
    let mut indeg: Vec<usize> = preds.iter().map(Vec::len).collect();
    let mut heap: BinaryHeap<Ready> = (0..n)
        .filter(|&v| indeg[v] == 0)
        .map(|v| Ready {
            rank: rank[v],
            op: v,
        })
        .collect();
    let mut avail = vec![0.0f64; k];
    let mut finish = vec![0.0f64; n];
    let mut stream = vec![0usize; n];
    let mut lists: Vec<Vec<usize>> = vec![Vec::new(); k];
    // Per stream, the latest finish among the current op's inputs on it.
    let mut local = vec![f64::NEG_INFINITY; k];
    while let Some(Ready { op: v, .. }) = heap.pop() {
        for &p in &preds[v] {
            local[stream[p]] = local[stream[p]].max(finish[p]);
        }
        // The two streams whose inputs finish last, to get "latest input elsewhere" in O(1).
        let (mut top1, mut top2) = ((f64::NEG_INFINITY, usize::MAX), f64::NEG_INFINITY);
        for &p in &preds[v] {
            let s = stream[p];
            let f = local[s];
            if s == top1.1 {
                continue;
            }
            if f > top1.0 {
                top2 = top2.max(top1.0);
                top1 = (f, s);
            } else if f > top2 {
                top2 = f;
            }
        }
        let mut best = (f64::INFINITY, 0usize);
        for s in 0..k {
            let elsewhere = if s == top1.1 { top2 } else { top1.0 };
            let ready = local[s].max(elsewhere + ev).max(0.0);
            let end = avail[s].max(ready) + c[v];
            if end < best.0 {
                best = (end, s);
            }
        }
        let (end, s) = best;
        for &p in &preds[v] {
            local[stream[p]] = f64::NEG_INFINITY;
        }
        finish[v] = end;
        avail[s] = end;
        stream[v] = s;
        lists[s].push(v);
        for &w in &succs[v] {
            indeg[w] -= 1;
            if indeg[w] == 0 {
                heap.push(Ready {
                    rank: rank[w],
                    op: w,
                });
            }
        }
    }
    Plan::from_streams(g, "critical-path", lists)
}
