//! StreamRec serving: the HTTP front end for the engine (KServe v2 REST).
//!
//! The KServe v2 protocol that Triton and KServe speak, so existing clients (tritonclient),
//! dashboards and tools work unchanged: health, server and model metadata, readiness and
//! `POST /v2/models/{name}/infer` in JSON or with Triton's binary tensor data extension, and
//! `GET /metrics` with Triton's series names. Requests are validated with the engine's own
//! checks, queued (bounded in samples: 503 with Retry-After when full), batched dynamically
//! and run on dedicated threads, one per execution context; the async executor never runs the
//! engine. The crate knows no kernel: it takes any [`streamrec_runtime::Infer`].
//!
//! ```no_run
//! use std::sync::Arc;
//! use streamrec_graph::{ModelSpec, OpGraph, Plan};
//! use streamrec_runtime::{CpuBackend, Engine, EngineConfig, Weights};
//! use streamrec_serve::{Model, ServeConfig, Server};
//!
//! let spec = ModelSpec::load("workloads/tiny.toml".as_ref(), None).unwrap();
//! let graph = OpGraph::from_spec(&spec);
//! let weights = Weights::for_graph(&graph).unwrap();
//! let cfg = ServeConfig { port: 0, ..ServeConfig::default() };
//! let engine = Engine::new(
//!     CpuBackend::new(),
//!     Arc::new(graph.clone()),
//!     Plan::single(&graph),
//!     &weights,
//!     EngineConfig { max_batch: cfg.max_batch, ..EngineConfig::default() },
//! )
//! .unwrap();
//! let server = Server::start(cfg, Model { spec, engine: Arc::new(engine) }).unwrap();
//! println!("listening on {}", server.local_addr());
//! server.run(streamrec_serve::shutdown_signal()).unwrap();
//! ```

pub mod batcher;
pub mod config;
pub mod error;
pub mod fuzz;
pub mod metrics;
pub mod protocol;
pub mod server;

pub use config::ServeConfig;
pub use error::ServeError;
pub use server::{shutdown_signal, Model, Running, Server};
