//! Planning time of every algorithm on streamrec-26 and on a generated 1,000-feature model.

use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use streamrec_graph::{
    assign, Algorithm, AssignConfig, CostModel, DeviceProfile, ModelSpec, OpGraph, SimMode,
};

const WIDE: &str = r#"
name = "wide-1000"
dense = 13
[bottom]
layers = [512, 256, 128]
[sparse]
count = 1000
rows = 1000
dim = 128
pooling = 20
branch = [128]
[interaction]
kind = "cat"
[top]
layers = [1024, 1024, 512, 256, 1]
"#;

fn graphs() -> Vec<(&'static str, OpGraph)> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../workloads/streamrec-26.toml");
    let s26 = ModelSpec::load(&p, Some(1000)).expect("workload parses");
    let wide = ModelSpec::parse(WIDE, "wide-1000", None).expect("spec parses");
    vec![
        ("streamrec-26", OpGraph::from_spec(&s26)),
        ("wide-1000", OpGraph::from_spec(&wide)),
    ]
}

fn bench(c: &mut Criterion) {
    let cost = CostModel::new(DeviceProfile::h200());
    for (name, g) in graphs() {
        let mut group = c.benchmark_group(format!("plan/{name}"));
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(2));
        let runs = Algorithm::ALL
            .into_iter()
            .chain([Algorithm::Auto])
            .map(|a| (a, 8))
            .chain([(Algorithm::StreamRec, 32), (Algorithm::CriticalPath, 32)]);
        for (algo, k) in runs {
            let cfg = AssignConfig {
                algo,
                max_streams: k,
                batch: 1,
                mode: SimMode::Graph,
                fuse: None,
            };
            group.bench_with_input(
                BenchmarkId::new(algo.as_str(), format!("K{k}")),
                &cfg,
                |b, cfg| b.iter(|| assign(&g, cfg, &cost).expect("plans")),
            );
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
