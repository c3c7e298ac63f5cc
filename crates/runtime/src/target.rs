//! What engine assembly is made of, below the builder and measured `auto` alike: where an engine
//! runs ([`Target`]: backend, its options, the engine configuration), how the graph is mapped
//! onto streams ([`PlanOptions`]), a built engine ([`Built`]) and why assembly failed
//! ([`BuildError`]). [`crate::builder`] re-exports them.

use std::path::PathBuf;
use std::sync::Arc;

use streamrec_graph::{
    Algorithm, AssignConfig, CostModel, DeviceProfile, GraphError, MeasuredCosts, OpGraph, Plan,
    Planned, SimMode,
};

use crate::engine::{build_engine, resolve, BackendKind, BackendOptions};
use crate::{EngineConfig, Infer, RuntimeError, Weights};

/// Why an engine could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// CUDA graphs were asked for on the CPU backend.
    #[error("CUDA graphs need the CUDA backend (this run uses the CPU backend)")]
    GraphsNeedCuda,
    /// TF32 GEMMs were asked for on the CPU backend.
    #[error("TF32 needs the CUDA backend (this run uses the CPU backend)")]
    Tf32NeedsCuda,
    /// A count option is out of range.
    #[error("{option}: {value} is not in 1..={max}")]
    OutOfRange {
        /// The option (`streams`, `fuse`).
        option: &'static str,
        /// The value given.
        value: usize,
        /// The largest allowed.
        max: usize,
    },
    /// A cached `auto` choice names an algorithm this build does not know.
    #[error("cached auto choice `{algo}`: {source}")]
    CachedChoice {
        /// The algorithm's name in the cache.
        algo: String,
        /// Why it did not parse.
        source: GraphError,
    },
    /// The engine, the backend or measuring failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// Planning, the device profile or the measured costs failed.
    #[error(transparent)]
    Graph(#[from] GraphError),
}

impl BuildError {
    /// True when the backend cannot be used on this machine (no CUDA device).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, BuildError::Runtime(RuntimeError::Unavailable { .. }))
    }
}

/// Results of engine assembly.
pub type BuildResult<T> = std::result::Result<T, BuildError>;

/// Most streams a plan may use.
pub const MAX_STREAMS: usize = 256;

/// How the graph is mapped onto streams.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanOptions {
    /// The stream-assignment algorithm (`auto`: measured with tune batches, else the cost
    /// model's pick).
    pub algo: Algorithm,
    /// Most streams.
    pub streams: usize,
    /// Fuse the embedding lookups into G table-batched groups first (`auto` decides when None).
    pub fuse: Option<usize>,
    /// Device profile of the cost model: a name or a TOML file (None: the backend's).
    pub device: Option<String>,
    /// Measured per-op times for the cost model.
    pub costs: Option<PathBuf>,
    /// The name plans made from these options go by (measured `auto` sets `auto:<choice>`).
    pub label: Option<String>,
}

impl Default for PlanOptions {
    fn default() -> Self {
        Self {
            algo: Algorithm::Single,
            streams: 4,
            fuse: None,
            device: None,
            costs: None,
            label: None,
        }
    }
}

impl PlanOptions {
    /// The cost model: the named profile (or `default_device`) plus measured times; a `cpu`
    /// profile gets `cpu_threads` cores, all of which one kernel may use.
    pub fn cost_model(&self, default_device: &str, cpu_threads: usize) -> BuildResult<CostModel> {
        let name = self.device.as_deref().unwrap_or(default_device);
        let mut profile = DeviceProfile::by_name_or_path(name)?;
        if profile.name.starts_with("cpu") {
            // The CPU backend's pool: `cpu_threads` cores, any of which one kernel's tiles use.
            profile.units = cpu_threads.max(1) as f64;
            profile.max_units_per_kernel = profile.units;
        }
        let mut cost = CostModel::new(profile);
        if let Some(p) = &self.costs {
            cost = cost.with_measured(MeasuredCosts::load(p)?);
        }
        Ok(cost)
    }

    /// Plans the graph for `batch` in `mode`.
    pub fn assign(
        &self,
        graph: &OpGraph,
        batch: usize,
        mode: SimMode,
        cost: &CostModel,
    ) -> BuildResult<Planned> {
        if self.streams == 0 || self.streams > MAX_STREAMS {
            return Err(BuildError::OutOfRange {
                option: "streams",
                value: self.streams,
                max: MAX_STREAMS,
            });
        }
        if self.fuse == Some(0) {
            return Err(BuildError::OutOfRange {
                option: "fuse",
                value: 0,
                max: usize::MAX,
            });
        }
        let cfg = AssignConfig {
            algo: self.algo,
            max_streams: self.streams,
            batch,
            mode,
            fuse: self.fuse,
        };
        let mut planned = streamrec_graph::assign(graph, &cfg, cost)?;
        if let Some(l) = &self.label {
            planned.plan.algo = l.clone();
        }
        Ok(planned)
    }
}

/// A planned, loaded engine with what a report needs.
pub struct Built {
    /// The engine.
    pub engine: Box<dyn Infer>,
    /// The plan it runs.
    pub plan: Plan,
    /// The graph it runs (fused when the plan fuses embeddings).
    pub graph: Arc<OpGraph>,
}

/// Where and how an engine runs: the backend, its options and the engine configuration.
#[derive(Clone, Debug)]
pub struct Target {
    /// The backend.
    pub backend: BackendKind,
    /// TF32 GEMMs, CPU worker threads, CPU fold.
    pub opts: BackendOptions,
    /// Contexts, max batch, graphs, tracing, validation.
    pub cfg: EngineConfig,
}

impl Target {
    /// Plans `plan` for `batch` on this backend, refusing CUDA-only options on the CPU.
    pub fn plan(&self, graph: &OpGraph, plan: &PlanOptions, batch: usize) -> BuildResult<Planned> {
        let resolved = resolve(self.backend)?;
        if resolved == BackendKind::Cpu {
            if self.cfg.graphs {
                return Err(BuildError::GraphsNeedCuda);
            }
            if self.opts.tf32 {
                return Err(BuildError::Tf32NeedsCuda);
            }
        }
        let cost = plan.cost_model(default_device(resolved), self.opts.cpu_threads)?;
        let mode = if self.cfg.graphs {
            SimMode::Graph
        } else {
            SimMode::Eager
        };
        plan.assign(graph, batch, mode, &cost)
    }

    /// Builds the engine for a plan (uploads the weights).
    pub fn load(&self, planned: Planned, weights: &Weights) -> BuildResult<Built> {
        let graph = Arc::new(planned.graph);
        let engine = build_engine(
            resolve(self.backend)?,
            Arc::clone(&graph),
            planned.plan.clone(),
            weights,
            self.cfg.clone(),
            self.opts,
        )?;
        Ok(Built {
            engine,
            plan: planned.plan,
            graph,
        })
    }

    /// Plans and builds.
    pub fn build(
        &self,
        graph: &OpGraph,
        plan: &PlanOptions,
        batch: usize,
        weights: &Weights,
    ) -> BuildResult<Built> {
        let planned = self.plan(graph, plan, batch)?;
        self.load(planned, weights)
    }
}

/// The cost model's device profile for a resolved backend: `h200` for CUDA, else `cpu`.
pub fn default_device(backend: BackendKind) -> &'static str {
    if backend == BackendKind::Cuda {
        "h200"
    } else {
        "cpu"
    }
}
