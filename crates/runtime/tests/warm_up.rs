//! What a server runs before it says it is ready: every context gets each size, and with graphs
//! every bucket a request can land in, so no capture happens inside a timed request.

use std::path::Path;

use streamrec_graph::ModelSpec;
use streamrec_runtime::builder::EngineBuilder;
use streamrec_runtime::engine::warm_up_sizes;
use streamrec_runtime::BackendKind;

#[test]
fn every_bucket_runs_on_every_context_with_graphs() {
    assert_eq!(
        warm_up_sizes(48, true, 2),
        vec![1, 1, 2, 2, 4, 4, 8, 8, 16, 16, 32, 32, 48, 48]
    );
    assert_eq!(warm_up_sizes(64, true, 1), vec![1, 2, 4, 8, 16, 32, 64]);
}

#[test]
fn without_graphs_one_and_the_max_batch_on_every_context() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../workloads/tiny.toml");
    let spec = ModelSpec::load(&p, None).unwrap();
    let engine = EngineBuilder::new(&spec)
        .backend(BackendKind::Cpu)
        .contexts(3)
        .max_batch(48)
        .build()
        .unwrap()
        .engine;
    assert_eq!(engine.warm_up_sizes(), vec![1, 1, 1, 48, 48, 48]);
    assert_eq!(warm_up_sizes(1, false, 1), vec![1]);
}
