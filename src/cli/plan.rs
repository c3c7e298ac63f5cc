//! `streamrec plan`: the operator graph, its stream assignment, DOT output, comparisons and the
//! HTML plan and timeline view.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use streamrec_graph::html::{self, MeasuredTimeline};
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
    /// Write one self-contained HTML page to FILE: every algorithm's op graph by stream, its
    /// simulated timelines (eager and graph mode) and the comparison table, with a selector
    /// (`--algo` picks the one shown first).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["dot", "compare"])]
    html: Option<PathBuf>,
    /// With --html: a `run --trace` timeline to show beside the simulated ones (one request of
    /// median length, on the same time axis).
    #[arg(long, value_name = "FILE", requires = "html")]
    trace: Option<PathBuf>,
}

/// Largest `--trace` file `plan --html` reads.
pub const MAX_TRACE_BYTES: u64 = 256 << 20;

/// Reads a `run --trace` file (at most [`MAX_TRACE_BYTES`]) and picks its median request.
fn read_trace(p: &Path) -> Result<MeasuredTimeline> {
    let what = || format!("--trace {}", p.display());
    let f = std::fs::File::open(p).with_context(what)?;
    let mut text = String::new();
    f.take(MAX_TRACE_BYTES + 1)
        .read_to_string(&mut text)
        .with_context(what)?;
    if text.len() as u64 > MAX_TRACE_BYTES {
        anyhow::bail!(
            "--trace {}: larger than the limit of {MAX_TRACE_BYTES} bytes",
            p.display()
        );
    }
    MeasuredTimeline::from_chrome_trace(&text).with_context(what)
}

/// Runs `streamrec plan`.
pub fn main(a: PlanArgs) -> Result<()> {
    super::bounded("--batch", a.batch, streamrec_graph::limits::MAX_BATCH)?;
    super::bounded("--streams", a.plan.streams, super::MAX_STREAMS)?;
    let spec = a.model.load()?;
    let graph = OpGraph::from_spec(&spec);
    let cost = a.plan.cost_model("h200", 1)?;
    if let Some(out) = &a.html {
        if a.plan.fuse == Some(0) {
            anyhow::bail!("--fuse: must be > 0");
        }
        let measured = a.trace.as_deref().map(read_trace).transpose()?;
        let opts = html::Options {
            batch: a.batch,
            max_streams: a.plan.streams,
            fuse: a.plan.fuse,
            measured: measured.as_ref(),
            selected: Some(a.plan.algo().as_str()),
        };
        let page = html::page(&graph, &cost, &opts)?;
        std::fs::write(out, page).with_context(|| format!("--html {}", out.display()))?;
        println!(
            "wrote {}: {} ({} ops), batch {}, up to {} streams, device {}{}",
            out.display(),
            spec.name,
            graph.len(),
            a.batch,
            a.plan.streams,
            cost.profile().name,
            measured.map_or(String::new(), |m| format!(", with {}", m.label))
        );
        return Ok(());
    }
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
