//! StreamRec graph: model specs, the operator graph, cost model, stream assignment and plans.
//!
//! Nothing here knows about a backend: this crate turns a TOML model spec into an operator
//! DAG with shapes and costs, and maps that DAG onto streams.
//!
//! A spec, its graph, and the plans of two algorithms with their simulated latencies:
//!
//! ```
//! use streamrec_graph::{
//!     plan_with, simulate, Algorithm, CostModel, DeviceProfile, ModelSpec, OpGraph, SimMode,
//! };
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
//! let graph = OpGraph::from_spec(&spec);
//! let cost = CostModel::new(DeviceProfile::h200());
//! let batch = 1;
//! let mut latency = Vec::new();
//! for algo in [Algorithm::Single, Algorithm::StreamRec] {
//!     let plan = plan_with(&graph, algo, 4, batch, &cost)?;
//!     plan.validate(&graph)?;
//!     let sim = simulate(&graph, &plan, &cost, batch, SimMode::Eager);
//!     println!(
//!         "{algo}: {} ops on {} streams, {:.1} us",
//!         plan.num_ops(),
//!         plan.num_streams(),
//!         sim.latency_us
//!     );
//!     latency.push(sim.latency_us);
//! }
//! assert!(latency.iter().all(|us| us.is_finite() && *us > 0.0));
//! # Ok::<(), streamrec_graph::GraphError>(())
//! ```

#![warn(missing_docs)]

pub mod assign;
pub mod compare;
pub mod cost;
pub mod dot;
pub mod error;
pub mod fuse;
pub mod html;
pub mod ir;
pub mod limits;
pub mod plan;
pub mod profile;
pub mod sim;
pub mod spec;

pub use assign::{assign, plan_with, Algorithm, AssignConfig, Planned};
pub use compare::{compare, compare_plans, render_compare, render_plan, CompareRow, Compared};
pub use cost::{CostModel, MeasuredCosts};
pub use error::GraphError;
pub use fuse::fuse_embeddings;
pub use ir::{Act, Op, OpGraph, OpId, OpKind, Source, Stage, TensorRef, WeightSpec};
pub use plan::{EventId, Plan, Step};
pub use profile::DeviceProfile;
pub use sim::{simulate, SimMode, SimResult};
pub use spec::{Feature, Interaction, ModelSpec, PoolingMode, WeightSource};
