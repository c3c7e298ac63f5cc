//! The timelines as SVG Gantt charts on one time axis: a plan's simulated run per mode
//! ([`gantt`]) and a measured request ([`measured_gantt`]).

use std::fmt::Write;

use super::measured::MeasuredTimeline;
use super::text::{clip, colour, escape, fmt_us};
use super::waits::WaitLine;
use crate::cost::CostModel;
use crate::ir::OpGraph;
use crate::plan::{Plan, Step};
use crate::sim::SimResult;

// Gantt layout, in pixels.
const LABEL_W: f64 = 130.0;
const TIME_W: f64 = 1100.0;
const LANE_H: f64 = 18.0;
const LANE_GAP: f64 = 4.0;
const TITLE_H: f64 = 20.0;
const AXIS_H: f64 = 18.0;

/// Tick step: 1, 2 or 5 times a power of ten, at most about 10 ticks.
fn tick_step(max_t: f64) -> f64 {
    let raw = max_t / 10.0;
    let p = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|&st| st >= raw)
        .unwrap_or(10.0 * p)
}

fn axis(s: &mut String, max_t: f64, y: f64, height: f64) {
    let step = tick_step(max_t);
    let digits = if step >= 1.0 {
        0
    } else {
        (-step.log10().floor()) as usize
    };
    let mut t = 0.0;
    let mut i = 0u32;
    while t <= max_t * 1.0001 && i <= 20 {
        let x = LABEL_W + t / max_t * TIME_W;
        let _ = write!(
            s,
            "<line class=\"tick\" x1=\"{x:.1}\" y1=\"{y:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\"/>\
             <text class=\"tl\" x=\"{x:.1}\" y=\"{:.1}\">{t:.digits$}</text>",
            y + height,
            y - 4.0
        );
        i += 1;
        t = f64::from(i) * step;
    }
}

fn xt(t: f64, max_t: f64) -> f64 {
    let t = if t.is_finite() {
        t.clamp(0.0, max_t)
    } else {
        max_t
    };
    LABEL_W + t / max_t * TIME_W
}

fn lane_y(top: f64, lane: usize) -> f64 {
    top + lane as f64 * (LANE_H + LANE_GAP)
}

fn lane_open(s: &mut String, lane: &str, label: &str, y: f64) {
    let _ = write!(
        s,
        "<g class=\"lane\" data-lane=\"{}\"><text class=\"ll\" x=\"4\" y=\"{:.1}\">{}</text>\
         <rect class=\"lbg\" x=\"{LABEL_W}\" y=\"{y:.1}\" width=\"{TIME_W}\" height=\"{LANE_H}\"/>",
        escape(lane),
        y + 13.0,
        escape(label)
    );
}

#[allow(clippy::too_many_arguments)]
fn bar(s: &mut String, attr: &str, name: &str, x1: f64, x2: f64, y: f64, fill: &str, tip: &str) {
    let w = (x2 - x1).max(1.0);
    let _ = write!(
        s,
        "<rect class=\"bar\" {attr}=\"{}\" x=\"{x1:.2}\" y=\"{y:.1}\" width=\"{w:.2}\" \
         height=\"{LANE_H}\" fill=\"{fill}\"><title>{}</title></rect>",
        escape(name),
        escape(tip)
    );
    if w >= 40.0 {
        let _ = write!(
            s,
            "<text class=\"bl\" x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            x1 + 3.0,
            y + 13.0,
            escape(&clip(name, ((w - 6.0) / 6.5) as usize))
        );
    }
}

#[allow(clippy::too_many_arguments)]
/// The simulated timeline of `plan` in `mode` (eager or graph): a host lane and one lane per
/// stream, with the waits.
pub(super) fn gantt(
    s: &mut String,
    g: &OpGraph,
    plan: &Plan,
    sim: &SimResult,
    mode: &str,
    waits: &[WaitLine],
    cost: &CostModel,
    max_t: f64,
) {
    let k = plan.num_streams();
    let lanes = k + 1;
    let top = TITLE_H + AXIS_H;
    let height = top + lanes as f64 * (LANE_H + LANE_GAP) + 4.0;
    let width = LABEL_W + TIME_W + 40.0;
    let sync = cost.profile().sync_us;
    let _ = write!(
        s,
        "<svg class=\"gantt\" data-laneset=\"{mode}\" data-latency=\"{}\" \
         xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" \
         viewBox=\"0 0 {width:.0} {height:.0}\"><text class=\"gt\" x=\"4\" y=\"14\">simulated, \
         {mode} mode: {} &micro;s</text>",
        fmt_us(sim.latency_us),
        fmt_us(sim.latency_us)
    );
    axis(s, max_t, top, height - top);
    // Host lane: issuing (eager) or launching the graph, then the final synchronise.
    let y = lane_y(top, 0);
    lane_open(s, "host", "host", y);
    let issue = if mode == "eager" {
        "issue ops and events"
    } else {
        "launch graph"
    };
    bar(
        s,
        "data-host",
        issue,
        xt(0.0, max_t),
        xt(sim.host_us, max_t),
        y,
        "#bbbbbb",
        &format!("host: {issue}, 0..{:.1} us", sim.host_us),
    );
    if sim.latency_us.is_finite() {
        let a = sim.latency_us - sync;
        bar(
            s,
            "data-host",
            "sync",
            xt(a, max_t),
            xt(sim.latency_us, max_t),
            y,
            "#888888",
            &format!("host: synchronise, {a:.1}..{:.1} us", sim.latency_us),
        );
    }
    s.push_str("</g>");
    for (st, steps) in plan.streams.iter().enumerate() {
        let y = lane_y(top, st + 1);
        lane_open(s, &st.to_string(), &format!("stream {st}"), y);
        for step in steps {
            if let Step::Launch(op) = *step {
                let a = sim.op_start_us.get(op).copied().unwrap_or(0.0);
                let b = sim.op_end_us.get(op).copied().unwrap_or(a);
                let name = &g.op(op).name;
                bar(
                    s,
                    "data-op",
                    name,
                    xt(a, max_t),
                    xt(b, max_t),
                    y,
                    colour(st),
                    &format!(
                        "{name} on stream {st} ({mode}): {a:.2}..{b:.2} us, {:.2} us",
                        b - a
                    ),
                );
            }
        }
        s.push_str("</g>");
    }
    for w in waits {
        let from_x = w
            .from_op
            .map_or(0.0, |p| sim.op_end_us.get(p).copied().unwrap_or(0.0));
        let to_x = w.to_op.map_or(from_x, |c| {
            sim.op_start_us.get(c).copied().unwrap_or(from_x)
        });
        let _ = write!(
            s,
            "<line class=\"gwait\" data-gwait=\"e{}\" x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" \
             y2=\"{:.1}\"><title>wait on e{}: stream {} after stream {}</title></line>",
            w.event,
            xt(from_x, max_t),
            lane_y(top, w.from_stream + 1) + LANE_H / 2.0,
            xt(to_x, max_t),
            lane_y(top, w.to_stream + 1) + LANE_H / 2.0,
            w.event,
            w.to_stream,
            w.from_stream
        );
    }
    if sim.latency_us.is_finite() {
        let x = xt(sim.latency_us, max_t);
        let _ = write!(
            s,
            "<line class=\"end\" x1=\"{x:.1}\" y1=\"{top:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\"/>",
            height - 4.0
        );
    }
    s.push_str("</svg>\n");
}

/// The measured timeline's lanes, one per stream with spans.
pub(super) fn measured_gantt(s: &mut String, m: &MeasuredTimeline, max_t: f64) {
    let streams = m.streams();
    let top = TITLE_H + AXIS_H;
    let height = top + streams.len().max(1) as f64 * (LANE_H + LANE_GAP) + 4.0;
    let width = LABEL_W + TIME_W + 40.0;
    let _ = write!(
        s,
        "<svg class=\"gantt measured\" data-laneset=\"measured\" data-latency=\"{:.1}\" \
         xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" \
         viewBox=\"0 0 {width:.0} {height:.0}\"><text class=\"gt\" x=\"4\" y=\"14\">{}: {:.1} \
         &micro;s</text>",
        m.duration_us(),
        escape(&m.label),
        m.duration_us()
    );
    axis(s, max_t, top, height - top);
    for (lane, &st) in streams.iter().enumerate() {
        let y = lane_y(top, lane);
        lane_open(s, &st.to_string(), &format!("stream {st} (run)"), y);
        for sp in m.spans.iter().filter(|sp| sp.stream == st) {
            bar(
                s,
                "data-span",
                &sp.name,
                xt(sp.start_us, max_t),
                xt(sp.end_us, max_t),
                y,
                colour(st),
                &format!(
                    "{} on stream {st} (measured): {:.2}..{:.2} us, {:.2} us",
                    sp.name,
                    sp.start_us,
                    sp.end_us,
                    sp.end_us - sp.start_us
                ),
            );
        }
        s.push_str("</g>");
    }
    s.push_str("</svg>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round() {
        for (max, step) in [
            (100.0, 10.0),
            (130.0, 20.0),
            (0.7, 0.1),
            (4.2, 0.5),
            (1.0, 0.1),
        ] {
            assert!(
                (tick_step(max) - step).abs() < 1e-9 * step,
                "{max}: {}",
                tick_step(max)
            );
        }
    }
}
