//! Multi-stream execution on the CPU backend: bit-identical scores for every algorithm and
//! stream count, concurrent requests over a context pool, error isolation and timelines.

use std::path::Path;
use std::sync::Arc;

use streamrec::graph::{
    assign, Algorithm, AssignConfig, CostModel, DeviceProfile, ModelSpec, OpGraph, Plan, Planned,
    SimMode,
};
use streamrec::runtime::gen::{random_validated, Skew};
use streamrec::runtime::trace::chrome_trace;
use streamrec::runtime::{CpuBackend, Engine, EngineConfig, IndexVec, ValidatedBatch, Weights};

fn load(name: &str, cap: usize) -> (ModelSpec, Arc<OpGraph>, Weights) {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("workloads")
        .join(name);
    let spec = ModelSpec::load(&p, Some(cap)).expect("workload loads");
    let graph = Arc::new(OpGraph::from_spec(&spec));
    let weights = Weights::for_graph(&graph).expect("weights");
    (spec, graph, weights)
}

/// Plans the graph with `algo` on at most `k` streams (cpu profile, eager, no fusion).
fn plan(graph: &OpGraph, algo: Algorithm, k: usize, batch: usize) -> Planned {
    let cost = CostModel::new(DeviceProfile::cpu());
    let cfg = AssignConfig {
        algo,
        max_streams: k,
        batch,
        mode: SimMode::Eager,
        fuse: None,
    };
    assign(graph, &cfg, &cost).expect("plans")
}

fn engine(graph: &Arc<OpGraph>, plan: Plan, w: &Weights, cfg: EngineConfig) -> Engine<CpuBackend> {
    Engine::new(CpuBackend::new(), Arc::clone(graph), plan, w, cfg).expect("engine builds")
}

#[test]
fn every_algorithm_and_stream_count_is_bit_identical_to_single() {
    for (name, cap, b) in [
        ("tiny.toml", 1000, 9),
        ("dlrm-kaggle.toml", 2000, 8),
        ("streamrec-26.toml", 1000, 3),
    ] {
        let (spec, graph, w) = load(name, cap);
        let cfg = EngineConfig {
            max_batch: b,
            ..EngineConfig::default()
        };
        let batch = random_validated(&spec, b, Skew::Zipf(1.05), 5).unwrap();
        let want = engine(&graph, Plan::single(&graph), &w, cfg.clone())
            .infer(&batch)
            .unwrap();
        let cost = CostModel::new(DeviceProfile::cpu());
        let mut checked = 0;
        for algo in Algorithm::ALL.into_iter().chain([Algorithm::Auto]) {
            for k in [1, 2, 3, 4, 8] {
                for fuse in [None, Some(2)] {
                    let planned = assign(
                        &graph,
                        &AssignConfig {
                            algo,
                            max_streams: k,
                            batch: b,
                            mode: SimMode::Eager,
                            fuse,
                        },
                        &cost,
                    )
                    .unwrap();
                    assert!(planned.plan.num_streams() <= k);
                    let g = Arc::new(planned.graph);
                    let e = engine(&g, planned.plan, &w, cfg.clone());
                    for _ in 0..2 {
                        let got = e.infer(&batch).unwrap();
                        assert_eq!(
                            got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                            want.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                            "{name}: {algo} on {k} streams (fuse {fuse:?}) differs from single"
                        );
                    }
                    checked += 1;
                }
            }
        }
        // Linear layers split over two threads compute every element as one thread does.
        let planned = plan(&graph, Algorithm::StreamRec, 2, b);
        let split = Engine::new(
            CpuBackend::with_threads(2),
            Arc::new(planned.graph),
            planned.plan,
            &w,
            cfg.clone(),
        )
        .unwrap();
        let got = split.infer(&batch).unwrap();
        assert_eq!(
            got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            want.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            "{name}: intra-op threads change the scores"
        );
        println!("{name}: {checked} plans (and intra-op threads) bit-identical to single");
    }
}

#[test]
fn concurrent_requests_over_a_context_pool_match_sequential_results() {
    let (spec, graph, w) = load("tiny.toml", 1000);
    let planned = plan(&graph, Algorithm::StreamRec, 3, 4);
    let sizes = [1usize, 2, 3, 4];
    let inputs: Vec<ValidatedBatch> = (0..32)
        .map(|i| random_validated(&spec, sizes[i % 4], Skew::Uniform, 100 + i as u64).unwrap())
        .collect();
    let seq = engine(
        &graph,
        Plan::single(&graph),
        &w,
        EngineConfig {
            max_batch: 4,
            ..Default::default()
        },
    );
    let expected: Vec<Vec<f32>> = inputs.iter().map(|b| seq.infer(b).unwrap()).collect();
    let pool = engine(
        &Arc::new(planned.graph),
        planned.plan,
        &w,
        EngineConfig {
            contexts: 4,
            max_batch: 4,
            ..Default::default()
        },
    );
    let total = 10_000usize;
    let threads = 8usize;
    std::thread::scope(|s| {
        for t in 0..threads {
            let (pool, inputs, expected) = (&pool, &inputs, &expected);
            s.spawn(move || {
                for r in (t..total).step_by(threads) {
                    let i = (r * 7 + t) % inputs.len();
                    let got = pool.infer(&inputs[i]).unwrap();
                    assert_eq!(got, expected[i], "request {r} (input {i}) on thread {t}");
                }
            });
        }
    });
}

#[test]
fn a_kernel_panic_fails_only_its_request() {
    let (spec, graph, w) = load("tiny.toml", 1000);
    let planned = plan(&graph, Algorithm::RoundRobin, 4, 8);
    let e = engine(
        &Arc::new(planned.graph),
        planned.plan,
        &w,
        EngineConfig {
            max_batch: 8,
            ..Default::default()
        },
    );
    let good = random_validated(&spec, 8, Skew::Uniform, 1).unwrap();
    let want = e.infer(&good).unwrap();
    let mut bad = (**good.batch()).clone();
    bad.sparse[2].indices = IndexVec::I64(vec![1_000_000; bad.sparse[2].indices.len()]);
    // SAFETY: not valid, on purpose; the CPU kernels check their bounds (and panic).
    let bad = unsafe { ValidatedBatch::new_unchecked(bad, &spec) };
    let err = e.infer(&bad).unwrap_err().to_string();
    assert!(err.contains("emb.C3") && err.contains("panicked"), "{err}");
    // The engine is still healthy.
    assert_eq!(e.infer(&good).unwrap(), want);
    // Validation refuses the same batch: it never becomes a ValidatedBatch.
    let mut bad = (**good.batch()).clone();
    bad.sparse[2].indices = IndexVec::I64(vec![250; bad.sparse[2].indices.len()]);
    let err = ValidatedBatch::new(bad, &spec).unwrap_err().to_string();
    assert_eq!(
        err,
        "C3: index at position 0 is 250, out of range for a table of 250 rows"
    );
    // A batch validated for another model (smaller tables) is refused before it runs.
    let (other, _, _) = load("tiny.toml", 100);
    let elsewhere = random_validated(&other, 8, Skew::Uniform, 1).unwrap();
    let err = e.infer(&elsewhere).unwrap_err().to_string();
    assert!(err.contains("validated for another model"), "{err}");
}

#[test]
fn trace_has_one_track_per_stream_without_overlap() {
    let (spec, graph, w) = load("tiny.toml", 1000);
    let planned = plan(&graph, Algorithm::StreamRec, 4, 16);
    let streams = planned.plan.num_streams();
    assert!(streams > 1);
    let e = engine(
        &Arc::new(planned.graph),
        planned.plan,
        &w,
        EngineConfig {
            max_batch: 16,
            trace: true,
            ..Default::default()
        },
    );
    for i in 0..5 {
        e.infer(&random_validated(&spec, 16, Skew::Uniform, i).unwrap())
            .unwrap();
    }
    let events = e.take_trace();
    let text = serde_json::to_string(&chrome_trace(&events)).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let evs = doc["traceEvents"].as_array().unwrap();
    let tracks: Vec<&serde_json::Value> =
        evs.iter().filter(|e| e["name"] == "thread_name").collect();
    assert_eq!(tracks.len(), streams, "one track per stream");
    let mut per: std::collections::BTreeMap<i64, Vec<(f64, f64)>> = Default::default();
    for ev in evs.iter().filter(|e| e["ph"] == "X") {
        assert!(ev["args"]["batch"] == 16 && ev["args"]["request"].is_u64());
        let ts = ev["ts"].as_f64().unwrap();
        per.entry(ev["tid"].as_i64().unwrap())
            .or_default()
            .push((ts, ts + ev["dur"].as_f64().unwrap()));
    }
    assert_eq!(per.len(), streams);
    assert_eq!(per.values().map(Vec::len).sum::<usize>(), 5 * graph.len());
    for spans in per.values_mut() {
        spans.sort_by(|a, b| a.0.total_cmp(&b.0));
        for w in spans.windows(2) {
            assert!(w[1].0 >= w[0].1, "overlapping spans on one track: {w:?}");
        }
    }
}

#[test]
fn folded_embedding_projections_match_the_layers_they_replace() {
    // streamrec-26's branch layers (128 -> 128, one per feature) fold into their tables on the
    // CPU backend by default, each lookup applying its layer's bias and ReLU as it writes the
    // layer's output (a concat's columns); off, every layer runs as a GEMM. On every ISA path
    // of the lookups and GEMMs, with per-feature and table-batched (fused) lookups.
    use streamrec::kernels::cpu::Isa;
    let (spec, graph, w) = load("streamrec-26.toml", 1000);
    let mut differ = 0;
    for (b, isa) in [3, 64]
        .into_iter()
        .flat_map(|b| Isa::supported().into_iter().map(move |i| (b, i)))
    {
        let cfg = EngineConfig {
            max_batch: b,
            ..EngineConfig::default()
        };
        let batch = random_validated(&spec, b, Skew::Uniform, 11).unwrap();
        let run = |fold: bool, fuse: Option<usize>| {
            let planned = assign(
                &graph,
                &AssignConfig {
                    algo: Algorithm::StreamRec,
                    max_streams: 2,
                    batch: b,
                    mode: SimMode::Eager,
                    fuse,
                },
                &CostModel::new(DeviceProfile::cpu()),
            )
            .expect("plans");
            let backend = CpuBackend::with_threads(2)
                .with_fold(fold)
                .with_isa(isa)
                .expect("a supported path");
            Engine::new(
                backend,
                Arc::new(planned.graph),
                planned.plan,
                &w,
                cfg.clone(),
            )
            .expect("engine builds")
            .infer(&batch)
            .unwrap()
        };
        let unfolded = run(false, None);
        let folded = run(true, None);
        assert_eq!(folded.len(), b);
        // Fused lookups fold the same layers, to the same bits.
        assert_eq!(
            run(true, Some(2))
                .iter()
                .map(|x| x.to_bits())
                .collect::<Vec<_>>(),
            folded.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            "batch {b} {isa}: fused lookups"
        );
        let err = folded
            .iter()
            .zip(&unfolded)
            .map(|(a, u)| (a - u).abs())
            .fold(0.0f32, f32::max);
        // Scores are probabilities; the two summation orders differ by f32 rounding only.
        assert!(err <= 1e-6, "batch {b} {isa}: folded differs by {err}");
        differ += folded
            .iter()
            .zip(&unfolded)
            .filter(|(a, u)| a.to_bits() != u.to_bits())
            .count();
        println!("batch {b} {isa}: folded within {err:.2e} of unfolded");
    }
    // Probabilities are coarse (one ulp near 0.5 is 6e-8): some of the 67 scores still show
    // the other summation order, else the layers were not folded at all.
    assert!(
        differ > 0,
        "folding changed no score's bits, so it did not run"
    );
}

#[test]
fn every_cpu_isa_this_processor_has_gives_the_same_scores() {
    // The linear layers' kernels pinned to each instruction set (CpuBackend::with_isa, the
    // CLI's --cpu-isa): within f32 rounding of the fastest path; one it lacks is an error.
    use streamrec::kernels::cpu::Isa;
    let (spec, graph, w) = load("tiny.toml", 1000);
    let batch = random_validated(&spec, 16, Skew::Uniform, 5).unwrap();
    let plan = streamrec::graph::Plan::single(&graph);
    let run = |backend: CpuBackend| {
        Engine::new(
            backend,
            Arc::clone(&graph),
            plan.clone(),
            &w,
            EngineConfig {
                max_batch: 16,
                ..EngineConfig::default()
            },
        )
        .expect("engine builds")
        .infer(&batch)
        .unwrap()
    };
    let fastest = run(CpuBackend::with_threads(1));
    let mut ran = 0;
    for isa in Isa::ALL {
        match CpuBackend::with_threads(1).with_isa(isa) {
            Ok(b) => {
                let scores = run(b);
                let err = scores
                    .iter()
                    .zip(&fastest)
                    .map(|(a, f)| (a - f).abs())
                    .fold(0.0f32, f32::max);
                assert!(err <= 1e-6, "{isa}: {err}");
                ran += 1;
            }
            Err(e) => {
                assert!(
                    !Isa::supported().contains(&isa),
                    "{isa} runs here but was refused: {e}"
                );
                println!("{isa}: not on this processor ({e})");
            }
        }
    }
    assert!(ran >= 1, "the portable path runs everywhere");
}
