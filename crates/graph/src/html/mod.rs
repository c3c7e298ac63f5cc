//! A self-contained HTML page of a model's plans: the op graph by stream, the simulated (and
//! measured) timelines, and every algorithm side by side.
//!
//! [`page`] plans the graph with every algorithm (as [`crate::compare::compare`] does), simulates
//! each plan in both modes and renders one HTML document with inline SVG, CSS and a little plain
//! JavaScript: no network access, no external files, so it opens from disk and can be served as
//! it is. Per algorithm the page has a section with
//!
//! - the operator graph laid out by depth (longest path from an input), left to right, each op
//!   filled with its stream's colour, data dependencies as grey arrows, the plan's cross-stream
//!   waits as red dashed arrows (from the op recorded after to the op launched after the wait)
//!   and fused embedding groups outlined; hovering an op shows its name, kind, output shape,
//!   predicted standalone cost, stream and simulated start and end (an SVG `<title>`);
//! - a Gantt chart of the simulated timeline per mode (eager, graph), one lane for the host and
//!   one per stream, with the waits as dashed lines; with a measured trace
//!   ([`MeasuredTimeline`]) its lanes follow, on the same time axis (one scale for every
//!   timeline of the page).
//!
//! A table of every algorithm (streams, waits, predicted eager and graph latency, graph-mode
//! ratio to `single`) and a selector switch between the sections without reloading; the URL hash
//! `#algo=NAME` selects one at load. Every string taken from a spec, a plan or a trace is escaped
//! ([`escape`]); the script reads nothing but the page's own attributes and the hash, which it
//! only compares with the section names.
//!
//! Stable attributes for tests and tools: a section is `<section class="algo" data-algo=NAME
//! data-streams=S data-waits=W data-ops=N>`; its graph is one `<svg class="graph">` with one
//! `data-op` per op, one `data-wait` per wait and one `data-fused` per fused group; each timeline
//! is one `<svg class="gantt" data-laneset=eager|graph|measured>` with one `<g class="lane"
//! data-lane=host|0|1|..>` per lane, a `data-op` bar per op (measured spans carry `data-span`
//! instead) and a `data-gwait` line per wait.
//!
//! The parts: `measured` reads a trace, `waits` lists a plan's waits, `graph` and `gantt` draw
//! the SVG, `text` escapes and formats, `assets` holds the CSS and the script; this module
//! assembles the page.

mod assets;
mod gantt;
mod graph;
mod measured;
mod text;
mod waits;

use std::fmt::Write;

pub use measured::{MeasuredSpan, MeasuredTimeline, MAX_MEASURED_LANES, MAX_MEASURED_SPANS};
pub use text::escape;

use assets::{CSS, SCRIPT};
use gantt::{gantt, measured_gantt};
use graph::graph_svg;
use text::{colour, fmt_us};
use waits::wait_lines;

use crate::compare::{compare_plans, Compared};
use crate::cost::CostModel;
use crate::error::GraphError;
use crate::ir::OpGraph;

/// What to plan and show.
#[derive(Clone, Copy, Debug)]
pub struct Options<'a> {
    /// The batch size plans are made, costed and simulated for.
    pub batch: usize,
    /// At most this many streams per plan.
    pub max_streams: usize,
    /// Fuse the embeddings into this many groups first (used by [`page`]; `None`: as
    /// [`crate::compare::compare`], concrete algorithms unfused and `auto` deciding).
    pub fuse: Option<usize>,
    /// A measured timeline to show beside the simulated ones.
    pub measured: Option<&'a MeasuredTimeline>,
    /// The algorithm shown at load (`single`, ..., `auto`); the first when `None` or unknown.
    pub selected: Option<&'a str>,
}

/// Plans `g` with every algorithm, simulates each plan in both modes and renders the page.
pub fn page(g: &OpGraph, cost: &CostModel, opts: &Options<'_>) -> Result<String, GraphError> {
    let views = compare_plans(g, opts.max_streams, opts.batch, cost, opts.fuse)?;
    Ok(render(&views, cost, opts))
}

/// Renders the page for already planned and simulated algorithms (what
/// [`crate::compare::compare_plans`] returns, `single` first). `opts.fuse` is not used here.
pub fn render(views: &[Compared], cost: &CostModel, opts: &Options<'_>) -> String {
    let model = views
        .first()
        .map_or("", |v| v.planned.graph.spec.name.as_str());
    let ops = views.first().map_or(0, |v| v.planned.graph.len());
    // One time scale for every timeline of the page.
    let mut max_t = opts.measured.map_or(0.0, MeasuredTimeline::duration_us);
    for v in views {
        for t in [v.eager.latency_us, v.graph.latency_us] {
            if t.is_finite() {
                max_t = max_t.max(t);
            }
        }
    }
    if !max_t.is_finite() || max_t <= 0.0 {
        max_t = 1.0;
    }
    let keys: Vec<&str> = views.iter().map(|v| v.algorithm.as_str()).collect();
    let selected = opts
        .selected
        .filter(|s| keys.contains(s))
        .or(keys.first().copied())
        .unwrap_or("");

    let mut s = String::with_capacity(256 * 1024);
    let title = format!("StreamRec plan: {model}");
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>{CSS}</style>\n</head>\n\
         <body data-ready=\"0\" data-errors=\"0\" data-default=\"{}\" data-shown=\"\">\n",
        escape(&title),
        escape(selected)
    );
    // Shared markers (not inside a hidden section, so they always render).
    s.push_str(
        "<svg class=\"defs\" width=\"0\" height=\"0\" aria-hidden=\"true\"><defs>\
         <marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"6\" \
         markerHeight=\"6\" orient=\"auto-start-reverse\"><path d=\"M0,0L10,5L0,10z\" \
         fill=\"#999\"/></marker>\
         <marker id=\"arrow-wait\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"7\" \
         markerHeight=\"7\" orient=\"auto-start-reverse\"><path d=\"M0,0L10,5L0,10z\" \
         fill=\"#d62828\"/></marker></defs></svg>\n",
    );
    let _ = writeln!(
        s,
        "<header><h1>{}</h1>\n<p class=\"sub\">{} ops, batch {}, up to {} streams, device \
         profile <code>{}</code>{}</p>",
        escape(&title),
        ops,
        opts.batch,
        opts.max_streams,
        escape(&cost.profile().name),
        opts.measured
            .map_or(String::new(), |m| format!("; {}", escape(&m.label)))
    );
    s.push_str("<label class=\"pick\">Algorithm <select id=\"algo-select\">");
    for (v, key) in views.iter().zip(&keys) {
        let _ = write!(
            s,
            "<option value=\"{}\"{}>{}</option>",
            escape(key),
            if *key == selected { " selected" } else { "" },
            escape(&v.row.algo)
        );
    }
    s.push_str("</select></label></header>\n");

    // The comparison table.
    s.push_str(
        "<table id=\"algos\"><thead><tr><th>algorithm</th><th>plan</th><th>streams</th>\
         <th>waits</th><th>eager &micro;s</th><th>graph &micro;s</th><th>graph / single</th>\
         </tr></thead><tbody>\n",
    );
    for (v, key) in views.iter().zip(&keys) {
        let r = &v.row;
        let _ = writeln!(
            s,
            "<tr data-algo=\"{}\"{}><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{:.3}</td></tr>",
            escape(key),
            if *key == selected {
                " class=\"selected\""
            } else {
                ""
            },
            escape(key),
            escape(&r.algo),
            r.streams,
            r.waits,
            fmt_us(r.predicted_us_eager),
            fmt_us(r.predicted_us_graph),
            r.ratio_to_single_graph
        );
    }
    s.push_str("</tbody></table>\n");

    for (v, key) in views.iter().zip(&keys) {
        section(&mut s, v, key, *key == selected, cost, opts, max_t);
    }
    let _ = write!(s, "<script>{SCRIPT}</script>\n</body>\n</html>\n");
    s
}

/// One algorithm's section: its heading, legend, timelines and graph.
fn section(
    s: &mut String,
    v: &Compared,
    key: &str,
    shown: bool,
    cost: &CostModel,
    opts: &Options<'_>,
    max_t: f64,
) {
    let g = &v.planned.graph;
    let plan = &v.planned.plan;
    let k = plan.num_streams();
    let waits = wait_lines(plan);
    let _ = writeln!(
        s,
        "<section class=\"algo\" id=\"algo-{}\" data-algo=\"{}\" data-plan=\"{}\" \
         data-streams=\"{}\" data-waits=\"{}\" data-ops=\"{}\"{}>",
        escape(key),
        escape(key),
        escape(&plan.algo),
        k,
        plan.num_waits(),
        plan.num_ops(),
        if shown { "" } else { " hidden" }
    );
    let _ = writeln!(
        s,
        "<h2>{}: {} ops on {} streams, {} events, {} waits; predicted eager {} &micro;s, graph {} \
         &micro;s ({:.3} &times; single)</h2>",
        escape(&plan.algo),
        plan.num_ops(),
        k,
        plan.num_events(),
        plan.num_waits(),
        fmt_us(v.eager.latency_us),
        fmt_us(v.graph.latency_us),
        v.row.ratio_to_single_graph
    );
    s.push_str("<div class=\"legend\">");
    for st in 0..k {
        let _ = write!(
            s,
            "<span><i style=\"background:{}\"></i>stream {st}</span>",
            colour(st)
        );
    }
    s.push_str(
        "<span><i class=\"host\"></i>host</span><span><i class=\"wait\"></i>cross-stream wait\
         </span><span><i class=\"fused\"></i>fused group</span></div>\n",
    );
    s.push_str(
        "<h3>Simulated timeline (same time axis for every chart)</h3>\n<div class=\"scroll\">",
    );
    for (mode, sim) in [("eager", &v.eager), ("graph", &v.graph)] {
        gantt(s, g, plan, sim, mode, &waits, cost, max_t);
    }
    if let Some(m) = opts.measured {
        measured_gantt(s, m, max_t);
    }
    s.push_str("</div>\n<h3>Operator graph (by depth; hover an op for details)</h3>\n");
    s.push_str("<div class=\"scroll\">");
    graph_svg(s, v, &waits, cost, opts.batch);
    s.push_str("</div>\n</section>\n");
}
