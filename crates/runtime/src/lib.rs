//! StreamRec runtime: backends, execution contexts and the engine that runs a plan.
//!
//! The [`Engine`] owns the weights, a plan and a pool of execution contexts (each with its own
//! streams, events and buffers) on one [`Backend`]; `infer` is safe to call from many threads.
//!
//! On the CPU backend one pool of worker threads runs every stream (a stream is a queue of
//! commands, not a thread). An engine there scoring a batch of 8 random samples, with a
//! single-stream plan and with a two-stream `streamrec` plan, which give the same scores:
//!
//! ```
//! use std::sync::Arc;
//! use streamrec_graph::{plan_with, Algorithm, CostModel, DeviceProfile, ModelSpec, OpGraph};
//! use streamrec_runtime::gen::{random_validated, Skew};
//! use streamrec_runtime::{CpuBackend, Engine, EngineConfig, Weights};
//!
//! let spec = ModelSpec::parse(
//!     r#"
//!     dense = 13
//!     [bottom]
//!     layers = [32, 16]
//!     [sparse]
//!     count = 4
//!     rows = [100, 37, 250, 8]
//!     dim = 16
//!     pooling = [1, 2, 3, 1]
//!     [interaction]
//!     kind = "dot"
//!     [top]
//!     layers = [32, 16, 1]
//!     "#,
//!     "doc",
//!     None,
//! )?;
//! let graph = Arc::new(OpGraph::from_spec(&spec));
//! let weights = Weights::generate(&graph, 7)?;
//! let batch = random_validated(&spec, 8, Skew::Uniform, 1)?;
//!
//! let cost = CostModel::new(DeviceProfile::cpu());
//! let mut scores = Vec::new();
//! for algo in [Algorithm::Single, Algorithm::StreamRec] {
//!     let plan = plan_with(&graph, algo, 2, batch.size, &cost)?;
//!     let engine = Engine::new(
//!         CpuBackend::new(),
//!         graph.clone(),
//!         plan,
//!         &weights,
//!         EngineConfig::default(),
//!     )?;
//!     scores.push(engine.infer(&batch)?);
//! }
//! assert_eq!(scores[0].len(), 8);
//! assert!(scores[0].iter().all(|p| (0.0..=1.0).contains(p)));
//! for (a, b) in scores[0].iter().zip(&scores[1]) {
//!     assert!((a - b).abs() < 1e-5);
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

pub mod backend;
pub mod batch;
pub mod builder;
pub mod calibrate;
pub mod engine;
pub mod error;
pub mod gen;
pub mod measure;
pub mod request;
pub mod stats;
pub mod target;
pub mod trace;
pub mod tune;
pub mod weights;

pub use backend::cpu::CpuBackend;
pub use backend::Backend;
pub use batch::{Batch, IndexVec, ModelKey, SparseInput, ValidatedBatch};
pub use engine::{build_engine, BackendKind, BackendOptions, Engine, EngineConfig, Infer};
pub use error::{Result, RuntimeError};
pub use measure::{measure, MeasureConfig};
pub use weights::{Tensor, Weights};
