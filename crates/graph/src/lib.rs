//! StreamRec graph: model specs, the operator graph, cost model, stream assignment and plans.
//!
//! Nothing here knows about a backend: this crate turns a TOML model spec into an operator
//! DAG with shapes and costs, and maps that DAG onto streams.

pub mod dot;
pub mod error;
pub mod ir;
pub mod spec;

pub use error::GraphError;
pub use ir::{Act, Op, OpGraph, OpId, OpKind, Source, Stage, TensorRef, WeightSpec};
pub use spec::{Feature, Interaction, ModelSpec, PoolingMode, WeightSource};
