//! A `streamrec serve` server in process for the serving tests: the tiny model, a single-stream
//! CPU engine over it, test settings (a free loopback port), and the server on its own thread.

use std::path::Path;
use std::sync::Arc;

use streamrec::graph::{ModelSpec, OpGraph, Plan};
use streamrec::runtime::{CpuBackend, Engine, EngineConfig, Infer, Weights};
use streamrec::serve::{Model, Running, ServeConfig, Server};

/// workloads/tiny.toml.
pub fn tiny() -> ModelSpec {
    ModelSpec::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads/tiny.toml"),
        None,
    )
    .expect("tiny loads")
}

/// A validating single-stream CPU engine for `spec` (weights from its seed).
pub fn engine(spec: &ModelSpec, max_batch: usize, contexts: usize) -> Arc<dyn Infer> {
    let graph = OpGraph::from_spec(spec);
    let weights = Weights::for_graph(&graph).unwrap();
    Arc::new(
        Engine::new(
            CpuBackend::new(),
            Arc::new(graph.clone()),
            Plan::single(&graph),
            &weights,
            EngineConfig {
                contexts,
                max_batch,
                graphs: false,
                trace: false,
                validate: true,
            },
        )
        .unwrap(),
    )
}

/// Test settings: a free port, max batch 64, a queue of 1024 samples, a 10 s drain.
pub fn config() -> ServeConfig {
    ServeConfig {
        port: 0,
        max_batch: 64,
        queue_capacity: 1024,
        drain_timeout_s: 10.0,
        ..ServeConfig::default()
    }
}

/// The tiny model served with `cfg` on its own thread.
pub fn serve(cfg: ServeConfig, engine: Arc<dyn Infer>) -> Running {
    Server::start(
        cfg,
        Model {
            spec: tiny(),
            engine,
        },
    )
    .expect("server starts")
    .spawn()
}
