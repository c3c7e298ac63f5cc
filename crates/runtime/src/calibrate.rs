//! Calibration of the `cpu` device profile on this machine: the CPU backend's fixed costs
//! (launch, stream wake-up, cross-stream event, final synchronise, per-op dispatch) measured with
//! synthetic plans whose kernels spin for a known time.
//!
//! Measured per-op kernel times ([`streamrec_graph::MeasuredCosts`]) give the simulator the
//! kernels; this gives it the glue between them, so that a prediction of a multi-stream plan
//! against `single` can be checked against a measurement on the same machine.

use std::sync::Arc;
use std::time::Instant;

use streamrec_graph::{DeviceProfile, OpGraph, Plan};

use crate::backend::cpu::CpuBackend;
use crate::batch::{Batch, ValidatedBatch};
use crate::engine::{Engine, EngineConfig};
use crate::error::Result;
use crate::weights::Weights;

/// Median latency in microseconds of `reps` requests of a plan over a synthetic chain.
fn median_us(graph: &Arc<OpGraph>, plan: Plan, reps: usize) -> Result<f64> {
    let engine = Engine::new(
        CpuBackend::new(),
        Arc::clone(graph),
        plan,
        &Weights::default(),
        EngineConfig {
            max_batch: 1,
            ..EngineConfig::default()
        },
    )?;
    let batch = ValidatedBatch::new(
        Batch {
            size: 1,
            dense: vec![0.5],
            sparse: Vec::new(),
        },
        &graph.spec,
    )?;
    for _ in 0..reps / 2 {
        engine.infer(&batch)?;
    }
    let v: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            engine
                .infer(&batch)
                .map(|_| t.elapsed().as_secs_f64() * 1e6)
        })
        .collect::<Result<_>>()?;
    Ok(crate::stats::median(&v))
}

/// A chain of `n` ops spinning `spin_us` each, on one stream and alternating over two streams.
fn chain(n: usize, spin_us: f64) -> Result<(Arc<OpGraph>, Plan, Plan)> {
    let edges: Vec<(usize, usize)> = (1..n).map(|i| (i - 1, i)).collect();
    let costs = vec![(spin_us * 1000.0, 1.0); n];
    let g = Arc::new(OpGraph::synthetic(n, &edges, &costs)?);
    let one = Plan::single(&g);
    let two = Plan::from_streams(
        &g,
        "ping-pong",
        vec![
            (0..n).filter(|i| i % 2 == 0).collect(),
            (0..n).filter(|i| i % 2 == 1).collect(),
        ],
    )?;
    Ok((g, one, two))
}

/// The shape of a small recommendation model, every op spinning `spin_us`: a chain of three ops (the dense
/// MLP), `2 w` independent branch ops (the lookups), a join and a chain of three (the top MLP).
/// Planned on one stream and on two: the second stream takes `w` branches, the first does the
/// chains, the other branches and the join (three events: fork, the branches' record, join).
fn model_shape(w: usize, spin_us: f64) -> Result<(Arc<OpGraph>, Plan, Plan)> {
    let n = 3 + 2 * w + 1 + 3;
    let join = 3 + 2 * w;
    let mut edges = vec![(0, 1), (1, 2), (2, join)];
    for i in 3..join {
        edges.push((i, join));
    }
    edges.extend([(join, join + 1), (join + 1, join + 2), (join + 2, join + 3)]);
    let g = Arc::new(OpGraph::synthetic(
        n,
        &edges,
        &vec![(spin_us * 1000.0, 1.0); n],
    )?);
    let one = Plan::single(&g);
    let mut s0: Vec<usize> = (0..3).chain(3..3 + w).collect();
    s0.extend(join..n);
    let two = Plan::from_streams(&g, "model-shape", vec![s0, (3 + w..join).collect()])?;
    Ok((g, one, two))
}

/// Host time of issuing one command onto a stream (an event record), in microseconds.
fn enqueue_us() -> Result<f64> {
    use crate::backend::Backend;
    let be = CpuBackend::new();
    let stream = be.new_stream()?;
    let event = be.new_event()?;
    let n = 2000;
    let t = Instant::now();
    for _ in 0..n {
        be.record(&stream, &event)?;
    }
    let us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    be.synchronize(&stream)?;
    Ok(us)
}

/// The `cpu` profile with its fixed costs measured on this machine (`base` gives the rest).
pub fn cpu_profile(base: DeviceProfile) -> Result<DeviceProfile> {
    const SPIN: f64 = 20.0;
    let reps = 401;
    let (g1, one1, _) = chain(1, 0.0)?;
    let (g8, one8, _) = chain(8, SPIN)?;
    let (g32, one32, two32) = chain(32, SPIN)?;
    let empty = median_us(&g1, one1, reps)?;
    let l8 = median_us(&g8, one8, reps)?;
    let l32 = median_us(&g32, one32, reps)?;
    let p32 = median_us(&g32, two32, reps)?;
    let launch = enqueue_us()?;
    // A small model-shaped plan (ops of a microsecond, like a small model's) over two streams
    // saves the `W` branch ops it runs on the second stream and pays three events: what it
    // costs beyond that is three event hops as real plans see them (data moving between cores,
    // threads that may be asleep, a host competing with the streams for the cores).
    const W: usize = 2;
    const OP: f64 = 1.0;
    let (gf, fj1, fj2) = model_shape(W, OP)?;
    let f1 = median_us(&gf, fj1, reps)?;
    let f2 = median_us(&gf, fj2, reps)?;
    // A busy stream runs back-to-back ops with this gap between them.
    let per_op = ((l32 - l8) / 24.0 - SPIN).max(0.05);
    // Each hop between streams: the record, and waking the thread blocked in the wait; a
    // ping-pong chain keeps both threads busy, the fork-join shows the cold case. Take the worse.
    let chain_hop = (p32 - l32) / 31.0;
    let fork_hop = (f2 - f1 + W as f64 * (OP + per_op)) / 3.0;
    let hop = chain_hop.max(fork_hop).max(0.1);
    // One empty op: the host issues it and runs it itself in the synchronise (or a pool worker
    // wakes for it and then wakes the host); what is left is the hand-off.
    let wakes = (empty - launch - per_op).max(0.2);
    // The backend's pool has a thread per core, and one kernel's tiles may take all of them.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    Ok(DeviceProfile {
        units: cores,
        max_units_per_kernel: cores,
        name: "cpu (calibrated)".into(),
        launch_us: launch,
        graph_node_us: per_op,
        event_us: hop,
        event_host_us: launch,
        wake_us: wakes / 2.0,
        sync_us: wakes / 2.0,
        ..base
    })
}
