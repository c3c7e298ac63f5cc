//! `streamrec`: topology-aware assignment that keeps each feature's pipeline on one stream.
//!
//! 1. Chains: an op joins its producer's chain when it is the producer's sole consumer and the
//!    producer is its sole input, so a feature's lookup -> branch layers never cross streams.
//! 2. Chains are placed level by level (a chain's level is one more than its predecessors'
//!    highest), costliest first (longest processing time first): each goes to the stream where it
//!    would finish earliest, counting the stream's load so far, when its inputs are ready and one
//!    event's cost for an input on another stream; ties prefer the input's stream, then the lowest
//!    index. With every chain ready at once this is plain LPT balancing over K streams.
//! 3. A join (a chain whose head has several inputs) goes to the stream of its costliest
//!    predecessor: the one estimated to finish last, so the join never waits on its longest input.
//! 4. [`Plan::from_streams`] emits only the waits the happens-before closure does not imply.

use crate::cost::CostModel;
use crate::error::GraphError;
use crate::ir::OpGraph;
use crate::plan::Plan;

/// The streamrec plan over at most `k` streams, with costs at this batch size.
pub(crate) fn plan(
    g: &OpGraph,
    k: usize,
    batch: usize,
    cost: &CostModel,
) -> Result<Plan, GraphError> {
    let n = g.len();
    let (chain_of, chains) = super::chains(g);
    let nc = chains.len();
    let op_cost: Vec<f64> = (0..n).map(|v| cost.stream_us(g, v, batch)).collect();
    let ccost: Vec<f64> = chains
        .iter()
        .map(|c| c.iter().map(|&v| op_cost[v]).sum())
        .collect();
    let mut joins = vec![false; nc];
    let cpreds: Vec<Vec<usize>> = chains
        .iter()
        .enumerate()
        .map(|(c, ops)| {
            let preds = g.preds(ops[0]);
            joins[c] = preds.len() > 1;
            let mut v: Vec<usize> = preds.iter().map(|&p| chain_of[p]).collect();
            v.sort_unstable();
            v.dedup();
            v
        })
        .collect();
    // A predecessor chain's head comes earlier, so one pass in chain order finds the levels.
    let mut level = vec![0usize; nc];
    for c in 0..nc {
        level[c] = cpreds[c].iter().map(|&pc| level[pc] + 1).max().unwrap_or(0);
    }
    let mut order: Vec<usize> = (0..nc).collect();
    order.sort_by(|&a, &b| {
        level[a]
            .cmp(&level[b])
            .then(ccost[b].total_cmp(&ccost[a]))
            .then(a.cmp(&b))
    });
    let ev = cost.profile().event_us;
    let mut avail = vec![0.0f64; k];
    let mut finish = vec![0.0f64; nc];
    let mut stream_c = vec![0usize; nc];
    for c in order {
        let ready_on = |s: usize, stream_c: &[usize], finish: &[f64]| {
            cpreds[c]
                .iter()
                .map(|&pc| finish[pc] + if stream_c[pc] == s { 0.0 } else { ev })
                .fold(0.0, f64::max)
        };
        let s = if joins[c] {
            let costliest = cpreds[c]
                .iter()
                .copied()
                .max_by(|&a, &b| {
                    finish[a]
                        .total_cmp(&finish[b])
                        .then(ccost[a].total_cmp(&ccost[b]))
                        .then(b.cmp(&a))
                })
                .expect("a join has predecessors");
            stream_c[costliest]
        } else {
            let home = cpreds[c].first().map(|&pc| stream_c[pc]);
            let mut best = (f64::INFINITY, true, usize::MAX);
            for (s, &free) in avail.iter().enumerate() {
                let end = free.max(ready_on(s, &stream_c, &finish)) + ccost[c];
                let key = (end, home != Some(s), s);
                if key.0 < best.0 || (key.0 == best.0 && (key.1, key.2) < (best.1, best.2)) {
                    best = key;
                }
            }
            best.2
        };
        let start = avail[s].max(ready_on(s, &stream_c, &finish));
        finish[c] = start + ccost[c];
        avail[s] = finish[c];
        stream_c[c] = s;
    }
    let mut lists = vec![Vec::new(); k];
    for v in 0..n {
        lists[stream_c[chain_of[v]]].push(v);
    }
    Plan::from_streams(g, "streamrec", lists)
}
