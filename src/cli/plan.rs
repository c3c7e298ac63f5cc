//! `streamrec plan`: the operator graph, its stream assignment, DOT output and comparisons.

use anyhow::Result;
use clap::Args;
use streamrec_graph::{compare, dot, OpGraph, SimMode};

use super::{ModelArgs, PlanOpts};

/// Arguments of `streamrec plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    plan: PlanOpts,
    /// Batch size the plan is costed and simulated for.
    #[arg(long, value_name = "B", default_value_t = 128)]
    batch: usize,
    /// Simulation mode for predictions and `auto`: eager or graph.
    #[arg(long, default_value = "graph")]
    mode: SimMode,
    /// Write the graph as Graphviz DOT (ops coloured by stream) instead of the plan.
    #[arg(long, conflicts_with = "compare")]
    dot: bool,
    /// Print one row per algorithm: streams, waits, predicted latency, ratio to single.
    #[arg(long)]
    compare: bool,
    /// With --compare, print JSON instead of a table.
    #[arg(long, requires = "compare")]
    json: bool,
}

/// Runs `streamrec plan`.
pub fn main(a: PlanArgs) -> Result<()> {
    super::bounded("--batch", a.batch, streamrec_graph::limits::MAX_BATCH)?;
    super::bounded("--streams", a.plan.streams, super::MAX_STREAMS)?;
    let spec = a.model.load()?;
    let graph = OpGraph::from_spec(&spec);
    let cost = a.plan.cost_model("h200", 1)?;
    if a.compare {
        let rows = compare::compare(&graph, a.plan.streams, a.batch, &cost)?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&rows)?);
        } else {
            println!(
                "{} ({} ops), batch {}, up to {} streams, device {}",
                spec.name,
                graph.len(),
                a.batch,
                a.plan.streams,
                cost.profile().name
            );
            print!("{}", compare::render_compare(&rows));
        }
        return Ok(());
    }
    let planned = a.plan.assign(&graph, a.batch, a.mode, &cost)?;
    if a.dot {
        print!(
            "{}",
            dot::to_dot(&planned.graph, Some(&planned.plan.stream_of()))
        );
        return Ok(());
    }
    print!("{}", compare::render_plan(&planned.graph, &planned.plan));
    let sim = streamrec_graph::simulate(&planned.graph, &planned.plan, &cost, a.batch, a.mode);
    println!(
        "predicted latency at batch {} ({:?} mode, {}): {:.1} us",
        a.batch,
        a.mode,
        cost.profile().name,
        sim.latency_us
    );
    Ok(())
}
