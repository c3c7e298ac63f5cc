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
use crate::batch::Batch;
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
    let batch = Arc::new(Batch {
        size: 1,
        dense: vec![0.5],
        sparse: Vec::new(),
    });
    for _ in 0..5 {
        engine.infer(&batch)?;
    }
    let mut v: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            engine
                .infer(&batch)
                .map(|_| t.elapsed().as_secs_f64() * 1e6)
        })
        .collect::<Result<_>>()?;
    v.sort_by(f64::total_cmp);
    Ok(v[v.len() / 2])
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

/// The `cpu` profile with its fixed costs measured on this machine (`base` gives the rest).
pub fn cpu_profile(base: DeviceProfile) -> Result<DeviceProfile> {
    const SPIN: f64 = 20.0;
    let reps = 41;
    let (g8, one8, _) = chain(8, SPIN)?;
    let (g32, one32, two32) = chain(32, SPIN)?;
    let (g0, zero, _) = chain(8, 0.0)?;
    let l8 = median_us(&g8, one8, reps)?;
    let l32 = median_us(&g32, one32, reps)?;
    let p32 = median_us(&g32, two32, reps)?;
    let l0 = median_us(&g0, zero, reps)?;
    // A busy stream runs back-to-back ops with this gap between them.
    let per_op = ((l32 - l8) / 24.0 - SPIN).max(0.05);
    // What a request costs beyond its ops: host launch of the first op, waking the stream
    // thread, and the final synchronise.
    let fixed = (l8 - 8.0 * (SPIN + per_op)).max(0.5);
    // Each hop between streams: the record, the wait and the wake-up of the waiting thread.
    let hop = ((p32 - l32) / 31.0).max(0.1);
    // With nothing to run, the host's enqueue cost per launch shows.
    let launch = ((l0 - fixed) / 8.0).clamp(0.1, 5.0);
    let wake = (hop / 2.0).min(fixed / 2.0);
    Ok(DeviceProfile {
        name: "cpu (calibrated)".into(),
        launch_us: launch,
        graph_node_us: per_op,
        event_us: hop - wake,
        wake_us: wake,
        sync_us: (fixed - launch - wake).max(0.1),
        ..base
    })
}
