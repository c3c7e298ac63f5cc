//! Random DAGs, random stream counts, every algorithm: plans run on the CPU backend give the
//! sequential result, finish in bounded time, and no op starts before the ops it depends on
//! (on other streams) have finished, on a worker pool of 1 to 3 threads.

use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use streamrec_graph::{
    assign, Algorithm, AssignConfig, CostModel, DeviceProfile, OpGraph, SimMode, Source,
};
use streamrec_runtime::backend::shared::synthetic_value;
use streamrec_runtime::{Batch, CpuBackend, Engine, EngineConfig, ValidatedBatch, Weights};

/// Op count, forward edges and per-op (spin ns per sample, bytes) costs.
type Dag = (usize, Vec<(usize, usize)>, Vec<(f64, f64)>);

fn dag() -> impl Strategy<Value = Dag> {
    (2usize..60).prop_flat_map(|n| {
        let edges = proptest::collection::vec((0..n, 0..n), 0..n * 2).prop_map(|v| {
            v.into_iter()
                .filter(|(a, b)| a != b)
                .map(|(a, b)| (a.min(b), a.max(b)))
                .collect::<Vec<_>>()
        });
        let costs = proptest::collection::vec((0.0f64..8000.0, 1.0f64..100.0), n);
        (Just(n), edges, costs)
    })
}

fn sequential(g: &OpGraph, dense: &[f32]) -> Vec<f32> {
    (0..dense.len())
        .map(|s| {
            let mut v = vec![0f32; g.len()];
            for id in g.topo_order() {
                let inputs = g.op(id).inputs.iter().map(|t| match t.src {
                    Source::Op(p) => v[p],
                    _ => unreachable!("synthetic ops read ops only"),
                });
                v[id] = synthetic_value(id, dense[s], inputs);
            }
            v[g.output()]
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_plans_match_the_sequential_reference(
        (n, edges, costs) in dag(),
        k in 1usize..=8,
        algo_i in 0usize..5,
        seed in 0u64..1000,
        threads in 1usize..=3,
    ) {
        let g = OpGraph::synthetic(n, &edges, &costs).unwrap();
        let algo = Algorithm::ALL[algo_i];
        let cost = CostModel::new(DeviceProfile::cpu());
        let planned = assign(&g, &AssignConfig { algo, max_streams: k, batch: 2, mode: SimMode::Eager, fuse: None }, &cost).unwrap();
        let g = Arc::new(planned.graph);
        // The pool's width: 1 runs everything on the host thread as it synchronises.
        let engine = Engine::new(
            CpuBackend::with_threads(threads),
            Arc::clone(&g),
            planned.plan.clone(),
            &Weights::default(),
            EngineConfig { max_batch: 2, trace: true, ..EngineConfig::default() },
        ).unwrap();
        let stream_of = planned.plan.stream_of();
        let start = Instant::now();
        for r in 0..3u64 {
            let dense = vec![(seed + r) as f32 * 0.25 - 3.0, 1.5 + r as f32];
            let batch = ValidatedBatch::new(Batch { size: 2, dense: dense.clone(), sparse: Vec::new() }, &g.spec).unwrap();
            let got = engine.infer(&batch).unwrap();
            prop_assert_eq!(got, sequential(&g, &dense));
        }
        prop_assert!(start.elapsed() < Duration::from_secs(20), "plan took too long (deadlock?)");
        // Every cross-stream dependency: the consumer started after the producer ended.
        let spans = engine.take_trace();
        for req in 0..3u64 {
            let mut span = vec![(0f64, 0f64); g.len()];
            for e in spans.iter().filter(|e| e.request == req) {
                span[e.op] = (e.start_us, e.end_us);
            }
            for (a, b) in g.edges() {
                if stream_of[a] != stream_of[b] {
                    prop_assert!(span[b].0 >= span[a].1,
                        "op {} on stream {} started at {} before op {} on stream {} ended at {}",
                        b, stream_of[b], span[b].0, a, stream_of[a], span[a].1);
                }
            }
        }
    }
}
