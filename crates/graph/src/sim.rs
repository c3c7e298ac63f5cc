//! A discrete-event simulator of a plan on a device profile: predicted latency per batch size.
//!
//! The model, in order of what happens:
//!
//! - **Host.** In `eager` mode one host thread walks [`Plan::issue_order`]: each launch costs
//!   `launch_us` of host time, each record and each wait `event_host_us`; a step reaches its
//!   stream when the host has issued it. In `graph` mode the host pays one `launch_us` for the whole
//!   replay, and every step is available from then on.
//! - **Fork and join.** The request's inputs are ready on stream 0. Every other stream first waits
//!   on a fork event from stream 0 (in eager mode the host pays `event_host_us` per extra stream), and
//!   stream 0 waits on a join event from every other stream at the end. A waited event lets the
//!   waiting stream go on `event_us` after it fired.
//! - **Streams.** Each stream is FIFO. An op starts at the latest of: its step reaching the stream,
//!   the end of the stream's previous op, and the events waited on before it, plus the device's
//!   dispatch gap `graph_node_us` (the per-node gap of a graph replay; eagerly launched kernels pay
//!   it too, on top of the host's launch cost). In eager mode a stream that sat idle until the host
//!   issued its work also pays `wake_us` on that arrival (a sleeping CPU pool worker; zero on a
//!   GPU); a stream held by an event wait pays only `event_us`, which already includes waking
//!   it. A record fires when
//!   everything before it on its stream has finished.
//! - **Device.** An op running alone takes its standalone time from the [`CostModel`] (never less
//!   than `min_kernel_us`) and occupies `units` of the device (see [`crate::cost`]): small kernels
//!   occupy few units. The running kernels share the device by processor sharing: while the units
//!   they ask for add up to more than the device has, each progresses at `units / demand` of its
//!   standalone speed. At most `max_concurrent_kernels` run at once; the rest wait in arrival
//!   order. So at batch 1 many small kernels overlap almost for free, while at large batch sizes
//!   kernels that each fill the device gain little from running concurrently.
//! - **End.** The latency is when the host has issued everything and the joined device work has
//!   finished, plus `sync_us` for the final host synchronise.
//!
//! Not modelled: a CPU pool's workers moving between streams, memory bandwidth
//! shared by CPU cores, caches, and the lower efficiency of random gathers (estimated at full
//! bandwidth; measured costs capture it, and a measured kernel slower than its roofline occupies
//! fewer units, see [`crate::cost`]).

use std::str::FromStr;

use crate::cost::CostModel;
use crate::error::GraphError;
use crate::ir::OpGraph;
use crate::plan::{Plan, Step};

/// How a plan is executed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SimMode {
    /// Ops launched one by one from the host.
    Eager,
    /// The whole plan replayed as one captured graph.
    Graph,
}

impl SimMode {
    /// Both modes.
    pub const ALL: [SimMode; 2] = [SimMode::Eager, SimMode::Graph];

    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            SimMode::Eager => "eager",
            SimMode::Graph => "graph",
        }
    }
}

impl std::fmt::Display for SimMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SimMode {
    type Err = GraphError;

    fn from_str(s: &str) -> Result<Self, GraphError> {
        match s {
            "eager" => Ok(SimMode::Eager),
            "graph" => Ok(SimMode::Graph),
            _ => Err(GraphError::Invalid(format!(
                "unknown mode `{s}`: expected eager or graph"
            ))),
        }
    }
}

/// What the simulator predicts.
#[derive(Clone, Debug)]
pub struct SimResult {
    /// Predicted latency from the first host call to the host resuming after the final
    /// synchronise, in microseconds.
    pub latency_us: f64,
    /// Per stream, the time its ops were running (including slow-down from sharing).
    pub per_stream_busy_us: Vec<f64>,
    /// When the host finished issuing (eager) or launching the graph.
    pub host_us: f64,
    /// Per op, when it started.
    pub op_start_us: Vec<f64>,
    /// Per op, when it ended.
    pub op_end_us: Vec<f64>,
}

struct Running {
    op: usize,
    stream: usize,
    /// Fraction of the op's standalone work still to do.
    left: f64,
    alone_us: f64,
    units: f64,
}

/// Simulates a valid plan of `g` at this batch size and returns its predicted latency. A plan that
/// deadlocks (which [`Plan::validate`] rejects) gets an infinite latency.
pub fn simulate(
    g: &OpGraph,
    plan: &Plan,
    cost: &CostModel,
    batch: usize,
    mode: SimMode,
) -> SimResult {
    let p = cost.profile();
    let k = plan.streams.len();
    let n = g.len();
    let alone: Vec<f64> = (0..n)
        .map(|op| cost.op_us(g, op, batch).max(1e-6))
        .collect();
    let units: Vec<f64> = (0..n).map(|op| cost.op_units(g, op, batch)).collect();

    // When each step reaches its stream, and when each stream may start (fork).
    let mut avail: Vec<Vec<f64>> = plan.streams.iter().map(|s| vec![0.0; s.len()]).collect();
    let mut gate = vec![0.0f64; k];
    let mut host;
    match mode {
        SimMode::Eager => {
            host = 0.0;
            for gs in gate.iter_mut().skip(1) {
                host += p.event_host_us;
                *gs = host + p.event_us;
            }
            let mut idx = vec![0usize; k];
            for (s, step) in plan.issue_order() {
                host += match step {
                    Step::Launch(_) => p.launch_us,
                    Step::Record(_) | Step::Wait(_) => p.event_host_us,
                };
                if let Some(a) = avail[s].get_mut(idx[s]) {
                    *a = host;
                }
                idx[s] += 1;
            }
            // The host joins the other streams before synchronising.
            host += p.event_host_us * k.saturating_sub(1) as f64;
        }
        SimMode::Graph => {
            host = p.launch_us;
            for row in &mut avail {
                row.fill(host);
            }
            for (s, gs) in gate.iter_mut().enumerate() {
                *gs = host + if s > 0 { p.event_us } else { 0.0 };
            }
        }
    }

    let mut head = vec![0usize; k];
    let mut free_at = vec![0.0f64; k];
    let mut busy_stream = vec![false; k];
    let mut pending: Vec<Option<(usize, f64)>> = vec![None; k];
    let mut ev_time: Vec<Option<f64>> = vec![None; plan.num_events];
    let mut running: Vec<Running> = Vec::new();
    let mut queued: Vec<(usize, usize)> = Vec::new();
    let mut op_start = vec![0.0f64; n];
    let mut op_end = vec![0.0f64; n];
    let mut busy = vec![0.0f64; k];
    let mut now = 0.0f64;

    loop {
        // Resolve the stream heads that can be resolved now.
        let mut progress = true;
        while progress {
            progress = false;
            for s in 0..k {
                while !busy_stream[s] && pending[s].is_none() {
                    let Some(&step) = plan.streams[s].get(head[s]) else {
                        break;
                    };
                    let at = avail[s][head[s]];
                    match step {
                        Step::Record(e) => {
                            if let Some(t) = ev_time.get_mut(e) {
                                *t = Some(at.max(free_at[s]).max(gate[s]));
                            }
                        }
                        Step::Wait(e) => match ev_time.get(e).copied().flatten() {
                            Some(t) => gate[s] = gate[s].max(t + p.event_us).max(at),
                            None => break,
                        },
                        Step::Launch(op) => {
                            let arrive = match mode {
                                SimMode::Eager if at > free_at[s] => at + p.wake_us,
                                _ => at,
                            };
                            let start = arrive.max(gate[s]).max(free_at[s]) + p.graph_node_us;
                            pending[s] = Some((op, start.max(now)));
                        }
                    }
                    head[s] += 1;
                    progress = true;
                }
            }
        }
        // Start what is due.
        for s in 0..k {
            if let Some((op, t)) = pending[s] {
                if t <= now {
                    pending[s] = None;
                    busy_stream[s] = true;
                    queued.push((op, s));
                }
            }
        }
        while running.len() < p.max_concurrent_kernels && !queued.is_empty() {
            let (op, s) = queued.remove(0);
            op_start[op] = now;
            running.push(Running {
                op,
                stream: s,
                left: 1.0,
                alone_us: alone[op],
                units: units[op],
            });
        }
        // The next moment something happens.
        let demand: f64 = running.iter().map(|r| r.units).sum();
        let speed = if demand > p.units {
            p.units / demand
        } else {
            1.0
        };
        let next_end = running
            .iter()
            .map(|r| now + r.left * r.alone_us / speed)
            .fold(f64::INFINITY, f64::min);
        let next_start = pending
            .iter()
            .flatten()
            .map(|&(_, t)| t)
            .fold(f64::INFINITY, f64::min);
        let t = next_end.min(next_start);
        if !t.is_finite() {
            break;
        }
        let (before, dt) = (now, t - now);
        now = t;
        let mut i = 0;
        while i < running.len() {
            let r = &mut running[i];
            // The same expression as for `next_end`, so the kernel that ends now surely ends.
            let ends = before + r.left * r.alone_us / speed <= t;
            r.left -= dt * speed / r.alone_us;
            if ends || r.left * r.alone_us <= 1e-9 {
                let r = running.swap_remove(i);
                op_end[r.op] = now;
                busy[r.stream] += now - op_start[r.op];
                free_at[r.stream] = now;
                busy_stream[r.stream] = false;
            } else {
                i += 1;
            }
        }
    }

    let done =
        (0..k).all(|s| head[s] == plan.streams[s].len() && !busy_stream[s] && pending[s].is_none());
    let device_end = (0..k)
        .map(|s| free_at[s] + if s > 0 { p.event_us } else { 0.0 })
        .fold(0.0, f64::max);
    let latency_us = if done {
        device_end.max(host) + p.sync_us
    } else {
        f64::INFINITY
    };
    SimResult {
        latency_us,
        per_stream_busy_us: busy,
        host_us: host,
        op_start_us: op_start,
        op_end_us: op_end,
    }
}
