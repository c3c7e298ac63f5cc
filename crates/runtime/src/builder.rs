//! Engine assembly: from a model spec and its weights to a planned engine on a backend, with
//! named options ([`EngineBuilder`]). The builder resolves the backend (`auto`: CUDA when a
//! device is present), plans the graph with any stream-assignment algorithm, resolves `auto`
//! by measuring the candidates ([`crate::tune`], cached per machine) or by the cost model's
//! pick, and builds the engine (uploading the weights).
//!
//! ```
//! use streamrec_graph::{Algorithm, ModelSpec};
//! use streamrec_runtime::BackendKind;
//! use streamrec_runtime::builder::EngineBuilder;
//! use streamrec_runtime::gen::{random_validated, Skew};
//!
//! let spec = ModelSpec::parse(
//!     r#"
//!     dense = 4
//!     [bottom]
//!     layers = [8]
//!     [sparse]
//!     count = 2
//!     rows = [10, 20]
//!     dim = 8
//!     [interaction]
//!     kind = "dot"
//!     [top]
//!     layers = [8, 1]
//!     "#,
//!     "doc",
//!     None,
//! )?;
//! let built = EngineBuilder::new(&spec)
//!     .backend(BackendKind::Cpu)
//!     .algo(Algorithm::StreamRec)
//!     .streams(2)
//!     .threads(2)
//!     .max_batch(8)
//!     .build()?;
//! let scores = built.engine.infer(&random_validated(&spec, 8, Skew::Uniform, 1)?)?;
//! assert_eq!(scores.len(), 8);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::Arc;

use streamrec_graph::{Algorithm, CostModel, ModelSpec, OpGraph, Planned};

use crate::engine::{resolve, BackendKind, BackendOptions};
pub use crate::target::{
    default_device, BuildError, BuildResult, Built, PlanOptions, Target, MAX_STREAMS,
};
pub use crate::tune::NoteSink;
use crate::tune::{self, TuneRequest};
use crate::{EngineConfig, RuntimeError, Weights};

/// Assembles an engine for one model with named options; see the module docs.
#[derive(Clone)]
pub struct EngineBuilder<'a> {
    spec: &'a ModelSpec,
    graph: Arc<OpGraph>,
    weights: Option<&'a Weights>,
    target: Target,
    plan: PlanOptions,
    tune_batches: Vec<usize>,
    retune: bool,
    cache_dir: Option<PathBuf>,
    notes: Option<NoteSink<'a>>,
}

impl<'a> EngineBuilder<'a> {
    /// A builder for `spec`: backend `auto`, algorithm `single` on up to 4 streams, the
    /// default engine configuration and CPU pool, weights generated from the spec unless
    /// [`Self::weights`] gives them.
    pub fn new(spec: &'a ModelSpec) -> Self {
        Self {
            spec,
            graph: Arc::new(OpGraph::from_spec(spec)),
            weights: None,
            target: Target {
                backend: BackendKind::Auto,
                opts: BackendOptions::default(),
                cfg: EngineConfig::default(),
            },
            plan: PlanOptions::default(),
            tune_batches: Vec::new(),
            retune: false,
            cache_dir: None,
            notes: None,
        }
    }

    /// The weights to load (shared by every engine this builder builds).
    pub fn weights(mut self, weights: &'a Weights) -> Self {
        self.weights = Some(weights);
        self
    }

    /// The backend (`auto`: CUDA when a device is present, else the CPU).
    pub fn backend(mut self, kind: BackendKind) -> Self {
        self.target.backend = kind;
        self
    }

    /// The stream-assignment algorithm.
    pub fn algo(mut self, algo: Algorithm) -> Self {
        self.plan.algo = algo;
        self
    }

    /// Most streams.
    pub fn streams(mut self, k: usize) -> Self {
        self.plan.streams = k;
        self
    }

    /// Fuse the embeddings into `g` groups first (None: no fusion, except that `auto` decides).
    pub fn fuse(mut self, g: Option<usize>) -> Self {
        self.plan.fuse = g;
        self
    }

    /// All plan options at once (algorithm, streams, fusion, device profile, costs, label).
    pub fn plan_options(mut self, plan: PlanOptions) -> Self {
        self.plan = plan;
        self
    }

    /// CPU: the threads streams and kernels run on.
    pub fn threads(mut self, n: usize) -> Self {
        self.target.opts.cpu_threads = n;
        self
    }

    /// CPU: fold each square linear layer into the table whose pooled rows it alone reads
    /// (on by default).
    pub fn cpu_fold(mut self, on: bool) -> Self {
        self.target.opts.cpu_fold = on;
        self
    }

    /// CPU: the instruction set of the linear layers' kernels (`None`, the default: the
    /// fastest this processor has; one it lacks is an error when the engine is built).
    pub fn cpu_isa(mut self, isa: Option<streamrec_kernels::cpu::Isa>) -> Self {
        self.target.opts.cpu_isa = isa;
        self
    }

    /// CUDA: let GEMMs use TF32 tensor cores.
    pub fn tf32(mut self, on: bool) -> Self {
        self.target.opts.tf32 = on;
        self
    }

    /// The whole engine configuration at once (contexts, max batch, graphs, tracing,
    /// validation).
    pub fn engine_config(mut self, cfg: EngineConfig) -> Self {
        self.target.cfg = cfg;
        self
    }

    /// Execution contexts (requests that run at once).
    pub fn contexts(mut self, n: usize) -> Self {
        self.target.cfg.contexts = n;
        self
    }

    /// Largest batch a request may have (also the batch [`Self::build`] plans for).
    pub fn max_batch(mut self, b: usize) -> Self {
        self.target.cfg.max_batch = b;
        self
    }

    /// Capture the plan as a CUDA graph per batch bucket (CUDA only).
    pub fn graphs(mut self, on: bool) -> Self {
        self.target.cfg.graphs = on;
        self
    }

    /// Record spans for timelines and profiles.
    pub fn trace(mut self, on: bool) -> Self {
        self.target.cfg.trace = on;
        self
    }

    /// The batch sizes measured `auto` times (at most three); none: `auto` is the cost
    /// model's pick, measured nothing.
    pub fn tune_batches(mut self, sizes: &[usize]) -> Self {
        self.tune_batches = sizes.to_vec();
        self
    }

    /// Measure `auto` again instead of reading a cached choice (a new choice is still cached).
    pub fn retune(mut self, on: bool) -> Self {
        self.retune = on;
        self
    }

    /// The folder measured `auto` caches its choices in (None: no cache; see
    /// [`tune::cache_dir_in`] for the usual place).
    pub fn cache_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.cache_dir = dir;
        self
    }

    /// Where measured `auto` reports its choice and progress (None: nowhere).
    pub fn notes(mut self, sink: Option<NoteSink<'a>>) -> Self {
        self.notes = sink;
        self
    }

    /// The model.
    pub fn spec(&self) -> &'a ModelSpec {
        self.spec
    }

    /// The model's operator graph (before any fusion a plan makes).
    pub fn graph(&self) -> &OpGraph {
        &self.graph
    }

    /// The target: backend, its options, the engine configuration.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The plan options (after [`Self::tuned`]: the choice of measured `auto`).
    pub fn plan_opts(&self) -> &PlanOptions {
        &self.plan
    }

    /// Resolves the backend once (`auto` to CUDA or CPU), so that every engine of this
    /// builder uses the same; CUDA without a usable device is [`RuntimeError::Unavailable`].
    pub fn resolved(mut self) -> BuildResult<Self> {
        self.target.backend = resolve(self.target.backend)?;
        if self.target.backend == BackendKind::Cuda {
            if let Err(reason) = crate::backend::cuda::cuda_available() {
                return Err(RuntimeError::Unavailable {
                    backend: "CUDA",
                    reason,
                }
                .into());
            }
        }
        Ok(self)
    }

    /// The cost model plans are made with on this (resolved) backend.
    pub fn cost_model(&self) -> BuildResult<CostModel> {
        let backend = resolve(self.target.backend)?;
        self.plan
            .cost_model(default_device(backend), self.target.opts.cpu_threads)
    }

    fn weights_or_generated(&self) -> BuildResult<Cow<'a, Weights>> {
        Ok(match self.weights {
            Some(w) => Cow::Borrowed(w),
            None => Cow::Owned(Weights::for_graph(&self.graph)?),
        })
    }

    /// Resolves measured `auto`: with the algorithm `auto` and tune batches, the plan options
    /// become the measured (or cached) choice; otherwise they stay as they are.
    pub fn tuned(mut self) -> BuildResult<Self> {
        if self.plan.algo != Algorithm::Auto || self.tune_batches.is_empty() {
            return Ok(self);
        }
        self = self.resolved()?;
        let weights = self.weights_or_generated()?;
        let chosen = tune::tune(&TuneRequest {
            target: &self.target,
            spec: self.spec,
            graph: &self.graph,
            plan: &self.plan,
            batches: &self.tune_batches,
            weights: &weights,
            use_cache: !self.retune,
            cache_dir: self.cache_dir.as_deref(),
            notes: self.notes,
        })?;
        drop(weights);
        self.plan = chosen;
        Ok(self)
    }

    /// Plans for `batch` with the current plan options (`auto` without tuning: the cost
    /// model's pick), refusing CUDA-only options on the CPU.
    pub fn plan(&self, batch: usize) -> BuildResult<Planned> {
        self.target.plan(&self.graph, &self.plan, batch)
    }

    /// Builds the engine for a plan made by [`Self::plan`] (or any plan of this model).
    pub fn load(&self, planned: Planned) -> BuildResult<Built> {
        let weights = self.weights_or_generated()?;
        self.target.load(planned, &weights)
    }

    /// Tunes `auto` when asked, plans for the max batch and builds the engine.
    pub fn build(self) -> BuildResult<Built> {
        let b = self.tuned()?;
        let planned = b.plan(b.target.cfg.max_batch)?;
        b.load(planned)
    }
}

/// Why a list of batch sizes did not parse ([`parse_batch_sizes`]).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BatchListError {
    /// An entry is empty (`1,,16`).
    #[error("`{0}` has an empty entry (give a size or a list such as 1,16,128)")]
    Empty(String),
    /// An entry is not a number.
    #[error("`{0}` is not a batch size (give a size or a list such as 1,16,128)")]
    NotASize(String),
    /// A size is 0.
    #[error("must be > 0")]
    Zero,
    /// A size is over [`streamrec_graph::limits::MAX_BATCH`].
    #[error("{0} is more than the limit of {max}", max = streamrec_graph::limits::MAX_BATCH)]
    TooLarge(usize),
    /// A size is listed twice.
    #[error("{0} is listed twice")]
    Twice(usize),
}

/// Parses one batch size or a comma-separated list (`1,16,128`), each in `1..=MAX_BATCH`, none
/// twice, in the order given.
pub fn parse_batch_sizes(text: &str) -> Result<Vec<usize>, BatchListError> {
    let mut out: Vec<usize> = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        if part.is_empty() {
            return Err(BatchListError::Empty(text.to_string()));
        }
        let b: usize = part
            .parse()
            .map_err(|_| BatchListError::NotASize(part.to_string()))?;
        if b == 0 {
            return Err(BatchListError::Zero);
        }
        if b > streamrec_graph::limits::MAX_BATCH {
            return Err(BatchListError::TooLarge(b));
        }
        if out.contains(&b) {
            return Err(BatchListError::Twice(b));
        }
        out.push(b);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_lists_parse_in_order_and_refuse_mistakes() {
        assert_eq!(parse_batch_sizes("1, 16,128"), Ok(vec![1, 16, 128]));
        assert_eq!(
            parse_batch_sizes("1,,2"),
            Err(BatchListError::Empty("1,,2".into()))
        );
        assert_eq!(
            parse_batch_sizes("x"),
            Err(BatchListError::NotASize("x".into()))
        );
        assert_eq!(parse_batch_sizes("0"), Err(BatchListError::Zero));
        assert_eq!(
            parse_batch_sizes("100000000"),
            Err(BatchListError::TooLarge(100_000_000))
        );
        assert_eq!(parse_batch_sizes("4,4"), Err(BatchListError::Twice(4)));
    }
}
