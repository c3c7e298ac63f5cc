//! Command-line interface: argument parsing and the `plan`, `run` and `check` subcommands.

mod check;
mod load;
mod plan;
pub mod run;
mod serve;
pub mod tune;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use streamrec_graph::{
    Algorithm, AssignConfig, CostModel, DeviceProfile, GraphError, MeasuredCosts, ModelSpec,
    OpGraph, Planned, SimMode,
};
use streamrec_runtime::backend::{BackendKind, BackendOptions};
use streamrec_runtime::{EngineConfig, RuntimeError};

/// StreamRec: multi-stream inference for deep-learning recommendation models.
#[derive(Debug, Parser)]
#[command(name = "streamrec", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Build the operator graph, assign it to streams and print the plan (or DOT, or a comparison).
    Plan(plan::PlanArgs),
    /// Run a model on random batches (latency and throughput) or on a request file (scores).
    Run(run::RunArgs),
    /// Compare a backend's scores with the single-stream CPU engine on the same random batches.
    Check(check::CheckArgs),
    /// Serve the model over HTTP (KServe v2 REST, Triton's binary extension, /metrics).
    Serve(serve::ServeArgs),
    /// Open-loop load against a KServe v2 server (constant, Poisson or trace), or `load merge`.
    Load(load::LoadArgs),
}

/// The model to load.
#[derive(Debug, Args, Clone)]
pub struct ModelArgs {
    /// Model spec (TOML), e.g. workloads/tiny.toml.
    pub spec: PathBuf,
    /// Cap every table at N rows (shrinks large tables for small machines).
    #[arg(long, value_name = "N")]
    pub row_cap: Option<usize>,
}

impl ModelArgs {
    /// Loads and validates the spec; an error names the file once (a read error already does).
    pub fn load(&self) -> Result<ModelSpec> {
        match ModelSpec::load(&self.spec, self.row_cap) {
            Ok(spec) => Ok(spec),
            Err(e @ GraphError::Io { .. }) => Err(e.into()),
            Err(e) => Err(anyhow::Error::new(e).context(self.spec.display().to_string())),
        }
    }
}

/// How the graph is mapped onto streams.
#[derive(Debug, Args, Clone)]
pub struct PlanOpts {
    /// Stream-assignment algorithm: single, round-robin, streamrec, nimble, critical-path, auto
    /// (default: auto for `run`, measured and cached per machine; single for `plan` and
    /// `check`).
    #[arg(long)]
    pub algo: Option<Algorithm>,
    /// Maximum number of streams.
    #[arg(long, value_name = "K", default_value_t = 4)]
    pub streams: usize,
    /// Fuse the embedding lookups into G table-batched groups first (auto decides when unset).
    #[arg(long, value_name = "G")]
    pub fuse: Option<usize>,
    /// Device profile for the cost model: h200, cpu, or a TOML file (default: the backend's).
    #[arg(long, value_name = "NAME|FILE")]
    pub device: Option<String>,
    /// Measured per-op times (JSON or TOML, as written by `run --profile`).
    #[arg(long, value_name = "FILE")]
    pub costs: Option<PathBuf>,
    /// The name a plan made from these options goes by (measured `auto` sets `auto:<choice>`).
    #[arg(skip)]
    pub label: Option<String>,
}

impl PlanOpts {
    /// The algorithm given, or `single`.
    pub fn algo(&self) -> Algorithm {
        self.algo.unwrap_or(Algorithm::Single)
    }

    /// The cost model: the named profile (or `default_device`) plus measured times; a `cpu`
    /// profile gets `cpu_threads` cores, all of which one kernel may use.
    pub fn cost_model(&self, default_device: &str, cpu_threads: usize) -> Result<CostModel> {
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

    /// Plans the graph.
    pub fn assign(
        &self,
        graph: &OpGraph,
        batch: usize,
        mode: SimMode,
        cost: &CostModel,
    ) -> Result<Planned> {
        bounded("--streams", self.streams, MAX_STREAMS)?;
        if self.fuse == Some(0) {
            anyhow::bail!("--fuse: must be > 0");
        }
        let cfg = AssignConfig {
            algo: self.algo(),
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

/// Where an engine runs.
#[derive(Debug, Args, Clone)]
pub struct EngineArgs {
    /// Backend: auto (CUDA when a device is present, else CPU), cpu or cuda.
    #[arg(long, default_value = "auto")]
    pub backend: BackendKind,
    /// Capture the plan as a CUDA graph per batch bucket: on or off (CUDA only).
    #[arg(long, default_value = "off", value_parser = ["on", "off"])]
    pub graph: String,
    /// Let CUDA GEMMs use TF32 tensor cores (faster, ~1e-3 relative error).
    #[arg(long)]
    pub tf32: bool,
    /// CPU: the threads the engine runs on (default: every core). Streams are queues over
    /// this pool and large kernels split into tiles that idle threads take (the plan's cost
    /// model then lets one kernel use N cores).
    #[arg(long, value_name = "N", alias = "intra-op-threads")]
    pub cpu_threads: Option<usize>,
}

impl EngineArgs {
    /// The CPU pool's threads: `--cpu-threads`, else every core.
    pub fn cpu_threads(&self) -> usize {
        self.cpu_threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// Refuses `--cpu-threads 0` or an absurd count.
    pub fn check_threads(&self) -> Result<()> {
        if let Some(t) = self.cpu_threads {
            bounded("--cpu-threads", t, MAX_THREADS)?;
        }
        Ok(())
    }

    /// True with `--graph on`.
    pub fn graphs(&self) -> bool {
        self.graph == "on"
    }

    /// The build target for an engine configuration.
    pub fn target(&self, cfg: EngineConfig) -> run::Target {
        run::Target {
            backend: self.backend,
            opts: BackendOptions {
                tf32: self.tf32,
                cpu_threads: self.cpu_threads(),
            },
            cfg,
        }
    }
}

/// Most streams a plan may use (`--streams`).
pub const MAX_STREAMS: usize = 256;
/// Most execution contexts (`--contexts`).
pub const MAX_CONTEXTS: usize = 64;
/// Most threads of one kind (`--threads`, `--cpu-threads`).
pub const MAX_THREADS: usize = 1024;

/// Checks that a count given on the command line is in `1..=max`; the error names the flag.
pub fn bounded(flag: &str, v: usize, max: usize) -> Result<usize> {
    if v == 0 {
        anyhow::bail!("{flag}: must be > 0");
    }
    if v > max {
        anyhow::bail!("{flag}: {v} is more than the limit of {max}");
    }
    Ok(v)
}

/// Runs a parsed command line.
pub fn dispatch(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Plan(a) => plan::main(a),
        Cmd::Run(a) => run::main(a),
        Cmd::Check(a) => check::main(a),
        Cmd::Serve(a) => serve::main(a),
        Cmd::Load(a) => load::main(a),
    }
}

/// The process exit status for an error: 2 when a backend is unavailable, else 1.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    if e.chain().any(|c| {
        matches!(
            c.downcast_ref::<RuntimeError>(),
            Some(RuntimeError::Unavailable(_))
        )
    }) {
        2
    } else {
        1
    }
}

/// The one line printed for an error: its chain of causes joined by `: `, each said once. A
/// cause whose text is already printed (or empty) is skipped: an error that quotes its source; a
/// context that the next cause begins with is replaced by it (a path given as context to an
/// error that names the path itself).
pub fn error_message(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if parts.join(": ").contains(&text) {
            continue;
        }
        if parts
            .last()
            .is_some_and(|last| text.starts_with(last.as_str()))
        {
            parts.pop();
        }
        parts.push(text);
    }
    parts.join(": ")
}

/// Shares a graph.
pub fn shared(g: OpGraph) -> Arc<OpGraph> {
    Arc::new(g)
}
