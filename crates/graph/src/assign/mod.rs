//! Stream assignment: the algorithms that map an op graph onto at most K streams.
//!
//! Every algorithm produces per-stream op lists; [`Plan::from_streams`] then adds only the event
//! records and waits that the happens-before closure does not already imply. `auto` simulates the
//! others (on the graph as it is and with the embeddings fused into a few group counts) and keeps
//! the fastest for the batch size and mode asked for.

mod auto;
mod critical_path;
pub mod nimble;
mod round_robin;
mod single;
mod streamrec;

use std::str::FromStr;

use crate::cost::CostModel;
use crate::error::GraphError;
use crate::fuse::fuse_embeddings;
use crate::ir::{OpGraph, OpId};
use crate::plan::Plan;
use crate::sim::SimMode;

/// A stream-assignment algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Everything on one stream in topological order (the baseline).
    Single,
    /// Independent feature branches dealt to streams in turn.
    RoundRobin,
    /// Topology-aware: chains kept on one stream, LPT over levels, joins on the costliest
    /// predecessor's stream.
    StreamRec,
    /// Minimum chain cover (Dilworth) merged down to K streams.
    Nimble,
    /// HEFT-style list scheduling by upward rank.
    CriticalPath,
    /// The fastest of the others in the simulator.
    Auto,
}

impl Algorithm {
    /// The five concrete algorithms.
    pub const ALL: [Algorithm; 5] = [
        Algorithm::Single,
        Algorithm::RoundRobin,
        Algorithm::StreamRec,
        Algorithm::Nimble,
        Algorithm::CriticalPath,
    ];

    /// The algorithm's name as used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Single => "single",
            Algorithm::RoundRobin => "round-robin",
            Algorithm::StreamRec => "streamrec",
            Algorithm::Nimble => "nimble",
            Algorithm::CriticalPath => "critical-path",
            Algorithm::Auto => "auto",
        }
    }
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Algorithm {
    type Err = GraphError;

    fn from_str(s: &str) -> Result<Self, GraphError> {
        Self::ALL
            .into_iter()
            .chain([Algorithm::Auto])
            .find(|a| a.as_str() == s)
            .ok_or_else(|| {
                GraphError::Invalid(format!(
                    "unknown algorithm `{s}`: expected single, round-robin, streamrec, nimble, critical-path or auto"
                ))
            })
    }
}

/// What to plan for.
#[derive(Clone, Debug)]
pub struct AssignConfig {
    /// The algorithm.
    pub algo: Algorithm,
    /// At most this many streams.
    pub max_streams: usize,
    /// The batch size costs are estimated for.
    pub batch: usize,
    /// The execution mode `auto` optimises for.
    pub mode: SimMode,
    /// `Some(G)`: fuse the embeddings into G groups first; `None`: no fusion, except that `auto`
    /// decides itself.
    pub fuse: Option<usize>,
}

/// A plan together with the graph it is for (rewritten when embeddings were fused).
#[derive(Clone, Debug)]
pub struct Planned {
    /// The graph the plan's op ids refer to.
    pub graph: OpGraph,
    /// The plan.
    pub plan: Plan,
}

/// Plans `g` as the config says.
pub fn assign(g: &OpGraph, cfg: &AssignConfig, cost: &CostModel) -> Result<Planned, GraphError> {
    if cfg.max_streams == 0 {
        return Err(GraphError::Invalid("max_streams must be >= 1".into()));
    }
    if cfg.batch == 0 {
        return Err(GraphError::Invalid("batch must be >= 1".into()));
    }
    if cfg.algo == Algorithm::Auto {
        return auto::run(g, cfg, cost);
    }
    let (graph, suffix) = match cfg.fuse {
        Some(groups) => (fuse_embeddings(g, groups)?, fuse_suffix(g, groups)),
        None => (g.clone(), String::new()),
    };
    let mut plan = plan_with(&graph, cfg.algo, cfg.max_streams, cfg.batch, cost)?;
    plan.algo.push_str(&suffix);
    Ok(Planned { graph, plan })
}

/// `+fuseG` when fusing changes the graph, else empty.
pub(crate) fn fuse_suffix(g: &OpGraph, groups: usize) -> String {
    let bags = crate::fuse::count_embedding_bags(g);
    if bags == 0 {
        String::new()
    } else {
        format!("+fuse{}", groups.min(bags))
    }
}

/// Plans `g` with one concrete algorithm (no fusion); `Auto` runs the selection on `g` as it is.
pub fn plan_with(
    g: &OpGraph,
    algo: Algorithm,
    max_streams: usize,
    batch: usize,
    cost: &CostModel,
) -> Result<Plan, GraphError> {
    let k = max_streams.max(1);
    match algo {
        Algorithm::Single => single::plan(g),
        Algorithm::RoundRobin => round_robin::plan(g, k),
        Algorithm::StreamRec => streamrec::plan(g, k, batch, cost),
        Algorithm::Nimble => nimble::plan(g, k, batch, cost),
        Algorithm::CriticalPath => critical_path::plan(g, k, batch, cost),
        Algorithm::Auto => {
            let cfg = AssignConfig {
                algo,
                max_streams: k,
                batch,
                mode: SimMode::Graph,
                fuse: None,
            };
            auto::run_on(g, &cfg, cost).map(|p| p.plan)
        }
    }
}

/// The chain decomposition: an op joins its producer's chain when it is that producer's sole
/// consumer and the producer is its sole input. Returns (chain of each op, chains in head order).
pub(crate) fn chains(g: &OpGraph) -> (Vec<usize>, Vec<Vec<OpId>>) {
    let n = g.len();
    let mut chain_of = vec![0usize; n];
    let mut out: Vec<Vec<OpId>> = Vec::new();
    let mut nsuccs = vec![0usize; n];
    for (a, _) in dedup_edges(g) {
        nsuccs[a] += 1;
    }
    for v in 0..n {
        let preds = g.preds(v);
        if preds.len() == 1 && nsuccs[preds[0]] == 1 {
            let c = chain_of[preds[0]];
            chain_of[v] = c;
            out[c].push(v);
        } else {
            chain_of[v] = out.len();
            out.push(vec![v]);
        }
    }
    (chain_of, out)
}

/// The graph's edges without duplicates.
fn dedup_edges(g: &OpGraph) -> Vec<(OpId, OpId)> {
    let mut e = g.edges();
    e.sort_unstable();
    e.dedup();
    e
}

/// Longest-processing-time-first: items (cost, payload) into `k` bins, costliest first, each to
/// the least-loaded bin (lowest index on ties). Returns the bins' payloads.
pub(crate) fn lpt<T: Copy>(mut items: Vec<(f64, T)>, k: usize) -> Vec<Vec<T>> {
    items.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut load = vec![0.0f64; k];
    let mut bins: Vec<Vec<T>> = vec![Vec::new(); k];
    for (c, t) in items {
        let s = (0..k)
            .min_by(|&a, &b| load[a].total_cmp(&load[b]))
            .expect("k >= 1");
        load[s] += c;
        bins[s].push(t);
    }
    bins
}
