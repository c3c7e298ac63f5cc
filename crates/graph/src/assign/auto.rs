//! `auto`: simulate the concrete algorithms and keep the fastest for this batch size and mode.
//!
//! Candidates are every concrete algorithm on the graph as given and, unless the config fixes the
//! fusion, on the graph with its embeddings fused into 1, 2, 4 and K groups (those not above the
//! number of lookups). The first candidate with the lowest predicted latency wins, so on a tie the
//! simpler plan (unfused, fewer streams in [`Algorithm::ALL`] order) is kept.

use super::{fuse_suffix, plan_with, Algorithm, AssignConfig, Planned};
use crate::cost::CostModel;
use crate::error::GraphError;
use crate::fuse::{count_embedding_bags, fuse_embeddings};
use crate::ir::OpGraph;
use crate::sim::simulate;

/// Runs the selection, fusing as the config says.
pub(crate) fn run(
    g: &OpGraph,
    cfg: &AssignConfig,
    cost: &CostModel,
) -> Result<Planned, GraphError> {
    let bags = count_embedding_bags(g);
    let mut graphs: Vec<(OpGraph, String)> = Vec::new();
    match cfg.fuse {
        Some(groups) => graphs.push((fuse_embeddings(g, groups)?, fuse_suffix(g, groups))),
        None => {
            graphs.push((g.clone(), String::new()));
            if bags >= 2 {
                let mut sizes: Vec<usize> = [1, 2, 4, cfg.max_streams]
                    .into_iter()
                    .filter(|&s| s <= bags)
                    .collect();
                sizes.sort_unstable();
                sizes.dedup();
                for groups in sizes {
                    graphs.push((fuse_embeddings(g, groups)?, fuse_suffix(g, groups)));
                }
            }
        }
    }
    let mut best: Option<(f64, Planned)> = None;
    for (graph, suffix) in graphs {
        let Some((us, mut planned)) = best_on(&graph, cfg, cost)? else {
            continue;
        };
        planned.plan.algo.push_str(&suffix);
        if best.as_ref().is_none_or(|(b, _)| us < *b) {
            best = Some((us, planned));
        }
    }
    let (_, mut planned) = best.expect("at least one candidate");
    planned.plan.algo = format!("auto:{}", planned.plan.algo);
    Ok(planned)
}

/// Runs the selection on the graph as it is.
pub(crate) fn run_on(
    g: &OpGraph,
    cfg: &AssignConfig,
    cost: &CostModel,
) -> Result<Planned, GraphError> {
    let (_, mut planned) = best_on(g, cfg, cost)?.expect("at least one algorithm");
    planned.plan.algo = format!("auto:{}", planned.plan.algo);
    Ok(planned)
}

fn best_on(
    g: &OpGraph,
    cfg: &AssignConfig,
    cost: &CostModel,
) -> Result<Option<(f64, Planned)>, GraphError> {
    let mut best: Option<(f64, crate::plan::Plan)> = None;
    for algo in Algorithm::ALL {
        let plan = plan_with(g, algo, cfg.max_streams, cfg.batch, cost)?;
        let us = simulate(g, &plan, cost, cfg.batch, cfg.mode).latency_us;
        if best.as_ref().is_none_or(|(b, _)| us < *b) {
            best = Some((us, plan));
        }
    }
    Ok(best.map(|(us, plan)| {
        (
            us,
            Planned {
                graph: g.clone(),
                plan,
            },
        )
    }))
}
