//! Stream assignment on the per-feature-branch model `streamrec-26`: pipelines stay on one stream,
//! few waits, and the predicted multi-stream speed-up of CUDA-graph replay on the H200.

use std::path::Path;

use streamrec_graph::{
    assign, compare, fuse_embeddings, render_compare, render_plan, simulate, Algorithm,
    AssignConfig, CompareRow, CostModel, DeviceProfile, ModelSpec, OpGraph, OpKind, SimMode,
    Source,
};

fn streamrec26() -> OpGraph {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../workloads/streamrec-26.toml");
    OpGraph::from_spec(&ModelSpec::load(&p, Some(1000)).expect("workload parses"))
}

fn cfg(algo: Algorithm, k: usize, batch: usize) -> AssignConfig {
    AssignConfig {
        algo,
        max_streams: k,
        batch,
        mode: SimMode::Graph,
        fuse: None,
    }
}

#[test]
fn streamrec_keeps_feature_pipelines_and_joins_cheaply() {
    let g = streamrec26();
    let cost = CostModel::new(DeviceProfile::h200());
    let concat = g.find("concat").unwrap();
    for k in [1, 2, 3, 8, 26, 32] {
        for batch in [1, 512, 4096] {
            let planned = assign(&g, &cfg(Algorithm::StreamRec, k, batch), &cost).unwrap();
            let plan = &planned.plan;
            plan.validate(&g).unwrap();
            assert!(plan.num_streams() <= k);
            let st = plan.stream_of();
            for f in &g.spec.features {
                let emb = g.find(&format!("emb.{}", f.name)).unwrap();
                let br = g.find(&format!("branch.{}.0", f.name)).unwrap();
                assert_eq!(st[emb], st[br], "K={k}: feature {} is split", f.name);
            }
            let mut joining: Vec<usize> = g.preds(concat).iter().map(|&p| st[p]).collect();
            joining.sort_unstable();
            joining.dedup();
            assert!(
                plan.num_waits() <= joining.len(),
                "K={k} batch={batch}: {} waits for {} joining streams\n{}",
                plan.num_waits(),
                joining.len(),
                render_plan(&g, plan)
            );
            if k >= 8 {
                assert_eq!(plan.num_streams(), k.min(27));
            }
        }
    }
}

#[test]
fn every_algorithm_by_name_plans_streamrec26() {
    let g = streamrec26();
    let cost = CostModel::new(DeviceProfile::h200());
    for name in [
        "single",
        "round-robin",
        "streamrec",
        "nimble",
        "critical-path",
        "auto",
    ] {
        let algo: Algorithm = name.parse().unwrap();
        assert_eq!(algo.to_string(), name);
        for fuse in [None, Some(1), Some(4), Some(26)] {
            let c = AssignConfig {
                fuse,
                ..cfg(algo, 8, 1)
            };
            let planned = assign(&g, &c, &cost).unwrap();
            planned.plan.validate(&planned.graph).unwrap();
            assert!(planned.plan.num_streams() <= 8);
            let text = render_plan(&planned.graph, &planned.plan);
            assert!(text.starts_with(&format!("plan {}", planned.plan.algo)));
        }
    }
    assert!("fastest".parse::<Algorithm>().is_err());
    assert_eq!(Algorithm::ALL.len(), 5);
    let bad = AssignConfig {
        max_streams: 0,
        ..cfg(Algorithm::StreamRec, 1, 1)
    };
    assert!(assign(&g, &bad, &cost).is_err());
}

#[test]
fn round_robin_deals_features_in_turn() {
    let g = streamrec26();
    let cost = CostModel::new(DeviceProfile::h200());
    let plan = assign(&g, &cfg(Algorithm::RoundRobin, 4, 1), &cost)
        .unwrap()
        .plan;
    let st = plan.stream_of();
    for (f, feat) in g.spec.features.iter().enumerate() {
        assert_eq!(st[g.find(&format!("emb.{}", feat.name)).unwrap()], f % 4);
    }
    assert_eq!(st[g.find("concat").unwrap()], 0);
}

#[test]
fn fusion_rewrites_lookups_into_column_slices() {
    let g = streamrec26();
    for groups in [1, 2, 4, 8, 26, 100] {
        let f = fuse_embeddings(&g, groups).unwrap();
        let fused: Vec<usize> = (0..f.len())
            .filter(|&i| matches!(f.op(i).kind, OpKind::TableBatchedEmbeddingBag { .. }))
            .collect();
        assert_eq!(fused.len(), groups.min(26));
        assert_eq!(f.len(), g.len() - 26 + fused.len());
        assert!(!f
            .ops()
            .any(|o| matches!(o.kind, OpKind::EmbeddingBag { .. })));
        // Contiguous ranges covering every feature once, in order.
        let mut all = Vec::new();
        for &id in &fused {
            let OpKind::TableBatchedEmbeddingBag { features } = &f.op(id).kind else {
                unreachable!()
            };
            assert_eq!(f.op(id).width, 128 * features.len());
            all.extend(features.iter().copied());
        }
        assert_eq!(all, (0..26).collect::<Vec<_>>());
        // Each branch reads its feature's slice.
        for (fi, feat) in g.spec.features.iter().enumerate() {
            let br = f.find(&format!("branch.{}.0", feat.name)).unwrap();
            let t = f.op(br).inputs[0];
            let Source::Op(src) = t.src else {
                panic!("branch reads an op")
            };
            let OpKind::TableBatchedEmbeddingBag { features } = &f.op(src).kind else {
                panic!("reads the fused op")
            };
            let pos = features.iter().position(|&x| x == fi).unwrap();
            assert_eq!((t.col, t.width), (pos * 128, 128));
        }
        // Same work, fewer ops.
        let total = |g: &OpGraph| (0..g.len()).map(|i| g.bytes(i, 64)).sum::<f64>();
        assert!((total(&f) - total(&g)).abs() < 1e-6 * total(&g));
        assert_eq!(f.weights().len(), g.weights().len());
    }
    assert!(fuse_embeddings(&g, 0).is_err());
}

fn table(g: &OpGraph, k: usize, batch: usize) -> Vec<CompareRow> {
    let cost = CostModel::new(DeviceProfile::h200());
    let rows = compare(g, k, batch, &cost).unwrap();
    println!(
        "streamrec-26, h200, batch {batch}, K = {k}:\n{}",
        render_compare(&rows)
    );
    rows
}

#[test]
fn graph_mode_batch1_multi_stream_is_much_faster_on_h200() {
    let g = streamrec26();
    for k in [8, 26] {
        let rows = table(&g, k, 1);
        assert_eq!(rows.len(), 6);
        assert_eq!(rows[0].algo, "single");
        assert_eq!(rows[0].ratio_to_single_graph, 1.0);
        assert!(rows[5].algo.starts_with("auto:"));
        let best = rows[1..]
            .iter()
            .map(|r| r.predicted_us_graph)
            .fold(f64::INFINITY, f64::min);
        let speedup = rows[0].predicted_us_graph / best;
        assert!(
            speedup >= 2.5,
            "K={k}: best multi-stream plan only {speedup:.2}x faster than single"
        );
        // Without a graph, host launches hide the parallelism at batch 1 (docs/h200.md).
        let streamrec = &rows[2];
        assert!(streamrec.predicted_us_eager > 0.8 * rows[0].predicted_us_eager);
        // Auto is never worse than the best concrete algorithm in graph mode.
        assert!(rows[5].predicted_us_graph <= best + 1e-9);
    }
}

#[test]
fn batch4096_is_bandwidth_and_compute_bound() {
    let g = streamrec26();
    let profile = DeviceProfile::h200();
    let roofline: f64 = (0..g.len())
        .map(|i| {
            (g.flops(i, 4096) / profile.peak_flops).max(g.bytes(i, 4096) / profile.mem_bandwidth)
                * 1e6
        })
        .sum();
    for k in [8, 26] {
        let rows = table(&g, k, 4096);
        let small = table(&g, k, 1);
        for r in &rows {
            assert!(
                r.predicted_us_graph >= roofline,
                "{}: {} < roofline {roofline}",
                r.algo,
                r.predicted_us_graph
            );
            assert!(r.predicted_us_eager >= roofline);
        }
        let best = |rows: &[CompareRow]| {
            rows.iter()
                .map(|r| r.ratio_to_single_graph)
                .fold(f64::INFINITY, f64::min)
        };
        assert!(
            best(&rows) > best(&small) + 0.3,
            "streams help less at batch 4096"
        );
        assert!(best(&rows) <= 1.0);
    }
}

#[test]
fn compare_rows_serialise_with_the_cli_keys() {
    let g = streamrec26();
    let cost = CostModel::new(DeviceProfile::cpu());
    let rows = compare(&g, 2, 1, &cost).unwrap();
    let v = serde_json::to_value(&rows).unwrap();
    let obj = v[0].as_object().unwrap();
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "algo",
            "predicted_us_eager",
            "predicted_us_graph",
            "ratio_to_single_graph",
            "streams",
            "waits"
        ]
    );
    assert_eq!(v.as_array().unwrap().len(), 6);
}

#[test]
fn cpu_profile_two_streams_gain_at_most_two_cores() {
    let g = streamrec26();
    let cost = CostModel::new(DeviceProfile::cpu());
    for batch in [1, 64, 1024] {
        let single = assign(&g, &cfg(Algorithm::Single, 1, batch), &cost).unwrap();
        let two = assign(&g, &cfg(Algorithm::StreamRec, 2, batch), &cost).unwrap();
        let t1 = simulate(&single.graph, &single.plan, &cost, batch, SimMode::Eager).latency_us;
        let t2 = simulate(&two.graph, &two.plan, &cost, batch, SimMode::Eager).latency_us;
        assert!(
            t2 >= t1 / 2.0 && t2 <= t1 * 1.1,
            "batch {batch}: {t1} vs {t2}"
        );
        let eight = assign(&g, &cfg(Algorithm::StreamRec, 8, batch), &cost).unwrap();
        let t8 = simulate(&eight.graph, &eight.plan, &cost, batch, SimMode::Eager).latency_us;
        assert!(t8 >= t1 / 2.0, "two cores: at most 2x, got {t1} vs {t8}");
    }
}
