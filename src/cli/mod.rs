//! Command-line interface: argument parsing and the `plan`, `run` and `check` subcommands.

mod check;
mod load;
mod plan;
pub mod run;
mod serve;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use streamrec_graph::{Algorithm, CostModel, GraphError, ModelSpec, OpGraph, Planned, SimMode};
use streamrec_kernels::cpu::Isa;
use streamrec_runtime::builder::{BuildError, BuildResult, EngineBuilder, NoteSink, PlanOptions};
use streamrec_runtime::tune::{cache_dir_in, Note};
use streamrec_runtime::BackendKind;
use streamrec_runtime::RuntimeError;

/// StreamRec: multi-stream inference for deep-learning recommendation models.
#[derive(Debug, Parser)]
#[command(name = "streamrec", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

impl Cli {
    /// Whether the command talks over sockets (serves or sends load): a peer that resets its
    /// connection must cost that connection an error (EPIPE), never the process a SIGPIPE.
    pub fn uses_sockets(&self) -> bool {
        matches!(self.cmd, Cmd::Serve(_) | Cmd::Load(_))
    }
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
    Load(Box<load::LoadArgs>),
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
}

impl PlanOpts {
    /// The algorithm given, or `single`.
    pub fn algo(&self) -> Algorithm {
        self.algo.unwrap_or(Algorithm::Single)
    }

    /// The library's plan options for `algo`, once `--streams` and `--fuse` are in range (the
    /// errors name the flags).
    pub fn options(&self, algo: Algorithm) -> Result<PlanOptions> {
        bounded("--streams", self.streams, MAX_STREAMS)?;
        if self.fuse == Some(0) {
            anyhow::bail!("--fuse: must be > 0");
        }
        Ok(self.unchecked(algo))
    }

    fn unchecked(&self, algo: Algorithm) -> PlanOptions {
        PlanOptions {
            algo,
            streams: self.streams,
            fuse: self.fuse,
            device: self.device.clone(),
            costs: self.costs.clone(),
            label: None,
        }
    }

    /// The cost model: the named profile (or `default_device`) plus measured times; a `cpu`
    /// profile gets `cpu_threads` cores, all of which one kernel may use.
    pub fn cost_model(&self, default_device: &str, cpu_threads: usize) -> Result<CostModel> {
        self.unchecked(self.algo())
            .cost_model(default_device, cpu_threads)
            .cli()
    }

    /// Plans the graph `g` for batch `b` in mode `m` with cost model `c`.
    pub fn assign(&self, g: &OpGraph, b: usize, m: SimMode, c: &CostModel) -> Result<Planned> {
        self.options(self.algo())?.assign(g, b, m, c).cli()
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
    /// CPU: fold each square linear layer into the table whose pooled rows it alone reads: on
    /// (the default) or off (every layer runs as written, for comparisons; within f32 rounding).
    /// Default from STREAMREC_CPU_FOLD (off, 0, false or no turn it off).
    #[arg(long, value_name = "on|off", value_parser = ["on", "off"])]
    pub cpu_fold: Option<String>,
    /// CPU: the instruction set of the linear layers' kernels, avx512, avx2 or portable
    /// (default: the fastest this processor has; for measurements). Default from
    /// STREAMREC_CPU_ISA (a value this processor cannot run is ignored there, with a warning).
    #[arg(long, value_name = "ISA")]
    pub cpu_isa: Option<String>,
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

    /// `--cpu-fold`, else STREAMREC_CPU_FOLD (read here, once: the libraries read no
    /// environment), else on.
    pub fn cpu_fold(&self) -> bool {
        match self.cpu_fold.as_deref() {
            Some(v) => v == "on",
            None => !matches!(
                std::env::var("STREAMREC_CPU_FOLD")
                    .ok()
                    .as_deref()
                    .map(str::trim),
                Some("off" | "0" | "false" | "no")
            ),
        }
    }

    /// `--cpu-isa` (an error if unknown or not on this processor), else STREAMREC_CPU_ISA (a
    /// warning and the default if it cannot be used), else the fastest path.
    pub fn cpu_isa(&self) -> Result<Option<Isa>> {
        if let Some(v) = &self.cpu_isa {
            let isa: Isa = v.parse().map_err(|e| anyhow::anyhow!("--cpu-isa: {e}"))?;
            return Ok(Some(
                isa.require()
                    .map_err(|e| anyhow::anyhow!("--cpu-isa: {e}"))?,
            ));
        }
        let Ok(v) = std::env::var("STREAMREC_CPU_ISA") else {
            return Ok(None);
        };
        match v.parse::<Isa>().and_then(Isa::require) {
            Ok(isa) => Ok(Some(isa)),
            Err(e) => {
                eprintln!("streamrec: STREAMREC_CPU_ISA ignored: {e}");
                Ok(None)
            }
        }
    }

    /// True with `--graph on`.
    pub fn graphs(&self) -> bool {
        self.graph == "on"
    }

    /// A builder for `spec` with these flags: backend, TF32, CPU threads, fold and ISA, CUDA
    /// graphs.
    pub fn builder<'a>(&self, spec: &'a ModelSpec) -> Result<EngineBuilder<'a>> {
        Ok(EngineBuilder::new(spec)
            .backend(self.backend)
            .tf32(self.tf32)
            .threads(self.cpu_threads())
            .cpu_fold(self.cpu_fold())
            .cpu_isa(self.cpu_isa()?)
            .graphs(self.graphs()))
    }
}

/// How measured `auto` runs (`run` and `serve`).
#[derive(Debug, Args, Clone)]
pub struct AutoArgs {
    /// Measure `auto` again instead of using the cached choice (as does STREAMREC_RETUNE=1 in
    /// the environment). Choices are cached in $STREAMREC_CACHE_DIR, else
    /// $XDG_CACHE_HOME/streamrec, else ~/.cache/streamrec.
    #[arg(long)]
    pub retune: bool,
}

impl AutoArgs {
    /// Sets up measured `auto` on `b`: timed at `batches`, cached where the environment says,
    /// retimed with `--retune` or `STREAMREC_RETUNE=1` (read here, once), its choice printed to
    /// stderr unless `quiet` (a cache it cannot write is reported either way).
    pub fn apply<'a>(
        &self,
        b: EngineBuilder<'a>,
        batches: &[usize],
        quiet: bool,
    ) -> EngineBuilder<'a> {
        let retune = self.retune || std::env::var("STREAMREC_RETUNE").is_ok_and(|v| v == "1");
        let sink: NoteSink<'static> = if quiet { &quiet_note } else { &print_note };
        b.tune_batches(batches)
            .retune(retune)
            .cache_dir(cache_dir_in(|k| std::env::var_os(k)))
            .notes(Some(sink))
    }
}

/// Prints what measured `auto` reports.
fn print_note(n: &Note<'_>) {
    match n {
        Note::Cached { choice, path } => eprintln!(
            "auto: {} (cached choice in {}; --retune or STREAMREC_RETUNE=1 measures again)",
            choice.label(),
            path.display()
        ),
        n => eprintln!("{n}"),
    }
}

/// Prints only the warnings of measured `auto`.
fn quiet_note(n: &Note<'_>) {
    if n.is_warning() {
        eprintln!("{n}");
    }
}

/// Turns an engine-assembly error into the CLI's: the flag that asked for a CUDA-only
/// feature named first, runtime and graph errors as themselves (so that [`exit_code`] finds an
/// unavailable backend).
pub trait IntoCli<T> {
    /// The CLI's error.
    fn cli(self) -> Result<T>;
}

impl<T> IntoCli<T> for BuildResult<T> {
    fn cli(self) -> Result<T> {
        self.map_err(|e| match e {
            BuildError::Runtime(r) => r.into(),
            BuildError::Graph(g) => g.into(),
            e @ BuildError::GraphsNeedCuda => anyhow::Error::new(e).context("--graph on"),
            e @ BuildError::Tf32NeedsCuda => anyhow::Error::new(e).context("--tf32"),
            e => e.into(),
        })
    }
}

/// Most streams a plan may use (`--streams`).
pub const MAX_STREAMS: usize = streamrec_runtime::builder::MAX_STREAMS;
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
        Cmd::Load(a) => load::main(*a),
    }
}

/// The process exit status for an error: 2 when a backend is unavailable, else 1.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    if e.chain().any(|c| {
        matches!(
            c.downcast_ref::<RuntimeError>(),
            Some(RuntimeError::Unavailable { .. })
        ) || c
            .downcast_ref::<BuildError>()
            .is_some_and(BuildError::is_unavailable)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A file in this test process's own temporary folder.
    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("streamrec-cli-unit-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d.join(name)
    }

    /// Moved from tests/cli.rs: the CLI is private to the binary.
    #[test]
    fn an_error_chain_says_each_cause_once() {
        let io = || {
            anyhow::Error::new(streamrec_graph::GraphError::Io {
                path: "a.toml".into(),
                source: std::io::Error::other("boom"),
            })
        };
        // The error quotes its source: the source is not said again.
        assert_eq!(error_message(&io()), "a.toml: boom");
        // Nor is a context that the error begins with.
        assert_eq!(error_message(&io().context("a.toml")), "a.toml: boom");
        // Distinct causes are all kept, outermost first.
        assert_eq!(
            error_message(&io().context("loading b")),
            "loading b: a.toml: boom"
        );
        assert_eq!(
            error_message(&anyhow::anyhow!("inner").context("middle").context("outer")),
            "outer: middle: inner"
        );
        // Loading a spec names its file once in the chain itself, not only once printed.
        for (file, text) in [
            ("absent.toml", None),
            ("no-utf8.toml", Some(&[0xff_u8][..])),
        ] {
            let spec = tmp(file);
            if let Some(t) = text {
                std::fs::write(&spec, t).unwrap();
            }
            let args = ModelArgs {
                spec,
                row_cap: None,
            };
            let chain = format!("{:#}", args.load().unwrap_err());
            assert_eq!(chain.matches(file).count(), 1, "{chain}");
        }
    }
}
