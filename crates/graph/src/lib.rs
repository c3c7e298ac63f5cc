//! StreamRec graph: model specs, the operator graph, cost model, stream assignment and plans.
//!
//! Nothing here knows about a backend: this crate turns a TOML model spec into an operator
//! DAG with shapes and costs, and maps that DAG onto streams.

pub mod assign;
pub mod compare;
pub mod cost;
pub mod dot;
pub mod error;
pub mod fuse;
pub mod ir;
pub mod limits;
pub mod plan;
pub mod profile;
pub mod sim;
pub mod spec;

pub use assign::{assign, plan_with, Algorithm, AssignConfig, Planned};
pub use compare::{compare, render_compare, render_plan, CompareRow};
pub use cost::{CostModel, MeasuredCosts};
pub use error::GraphError;
pub use fuse::fuse_embeddings;
pub use ir::{Act, Op, OpGraph, OpId, OpKind, Source, Stage, TensorRef, WeightSpec};
pub use plan::{EventId, Plan, Step};
pub use profile::DeviceProfile;
pub use sim::{simulate, SimMode, SimResult};
pub use spec::{Feature, Interaction, ModelSpec, PoolingMode, WeightSource};
