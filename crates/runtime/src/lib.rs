//! StreamRec runtime: backends, execution contexts and the engine that runs a plan.
//!
//! The [`Engine`] owns the weights, a plan and a pool of execution contexts (each with its own
//! streams, events and buffers) on one [`Backend`]; `infer` is safe to call from many threads.

pub mod backend;
pub mod batch;
pub mod calibrate;
pub mod engine;
pub mod error;
pub mod exec;
pub mod gen;
pub mod measure;
pub mod request;
pub mod stats;
pub mod trace;
pub mod weights;

pub use backend::cpu::CpuBackend;
pub use backend::Backend;
pub use batch::{Batch, IndexVec, SparseInput};
pub use engine::{Engine, EngineConfig};
pub use error::{Result, RuntimeError};
pub use measure::{measure, Infer, MeasureConfig};
pub use weights::{Tensor, Weights};
