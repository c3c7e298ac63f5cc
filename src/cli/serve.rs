//! `streamrec serve`: the model behind the KServe v2 REST protocol (streamrec-serve), with the
//! plan `auto` picks and the backend `auto` finds, on loopback unless told otherwise.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use streamrec_graph::Algorithm;
use streamrec_runtime::engine::{resolve, BackendKind};
use streamrec_runtime::Weights;
use streamrec_serve::{Model, ServeConfig, Server};

use super::{AutoArgs, EngineArgs, IntoCli, ModelArgs, PlanOpts};

/// Arguments of `streamrec serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Server settings (TOML; every field optional): host, port, grpc_port, max_batch,
    /// max_queue_delay_us, inline_max_us, queue_capacity, max_body_bytes, max_inflight, header_timeout_s,
    /// keepalive_idle_s, body_timeout_s, min_body_rate, max_connections, max_buffered_bytes,
    /// contexts, http_threads, drain_timeout_s, retry_after_s, version (deploy/README.md). Flags
    /// below override the file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to bind (default 127.0.0.1).
    #[arg(long)]
    host: Option<String>,
    /// Port (default 8000; 0 picks a free one, printed on the first line).
    #[arg(long)]
    port: Option<u16>,
    /// Also serve KServe v2 gRPC on this port (Triton's is 8001; 0 picks a free one, printed on
    /// stderr as `grpc on ADDR`). Default: no gRPC endpoint.
    #[arg(long, value_name = "PORT")]
    grpc_port: Option<u16>,
    /// Most samples per engine execution after dynamic batching (default 256).
    #[arg(long, value_name = "B")]
    max_batch: Option<usize>,
    /// Longest wait for a batch to fill, in microseconds (default 0: run what is queued).
    #[arg(long, value_name = "US")]
    max_queue_delay_us: Option<u64>,
    /// Run a lone request on the front end's thread while the engine's recent executions took
    /// at most this many microseconds (default 50; 0: always through the batcher threads).
    #[arg(long, value_name = "US")]
    inline_max_us: Option<u64>,
    /// Execution contexts, each with a batcher thread (default: 2 on a GPU, 1 on the CPU).
    #[arg(long, value_name = "N")]
    contexts: Option<usize>,
    /// Stream-assignment algorithm (default auto: the fastest predicted plan).
    #[arg(long, default_value = "auto")]
    algo: Algorithm,
    /// Maximum number of streams (default: the cores on the CPU backend, 8 on CUDA).
    #[arg(long, value_name = "K")]
    streams: Option<usize>,
    /// Fuse the embedding lookups into G table-batched groups first (auto decides when unset).
    #[arg(long, value_name = "G")]
    fuse: Option<usize>,
    /// Device profile for the cost model: h200, cpu, or a TOML file (default: the backend's).
    #[arg(long, value_name = "NAME|FILE")]
    device: Option<String>,
    /// Measured per-op times (JSON or TOML, as written by `run --profile`).
    #[arg(long, value_name = "FILE")]
    costs: Option<PathBuf>,
    #[command(flatten)]
    engine: EngineArgs,
    #[command(flatten)]
    auto: AutoArgs,
}

/// Runs `streamrec serve` until ctrl-c or SIGTERM.
pub fn main(a: ServeArgs) -> Result<()> {
    let mut cfg = match &a.config {
        Some(p) => ServeConfig::load(p)?,
        None => ServeConfig::default(),
    };
    if let Some(h) = &a.host {
        cfg.host = h.clone();
    }
    if let Some(p) = a.port {
        cfg.port = p;
    }
    if let Some(g) = a.grpc_port {
        cfg.grpc_port = Some(g);
    }
    if let Some(b) = a.max_batch {
        cfg.max_batch = b;
    }
    if let Some(d) = a.max_queue_delay_us {
        cfg.max_queue_delay_us = d;
    }
    if let Some(u) = a.inline_max_us {
        cfg.inline_max_us = u;
    }
    if let Some(c) = a.contexts {
        cfg.contexts = c;
    }
    cfg.validate()?;
    a.engine.check_threads()?;
    // Bind before loading anything: a port in use fails now, and until the model is loaded the
    // address answers "not ready" (liveness 200, everything else 503).
    let binding = Server::bind(cfg)?;
    let cfg = binding.config().clone();
    eprintln!(
        "streamrec serve: bound http://{}; loading the model (not ready until loaded); at most {} connections (open-file limit {}), {} MiB of request memory",
        binding.local_addr(),
        cfg.max_connections,
        streamrec_serve::config::open_file_limit(),
        cfg.max_buffered_bytes >> 20
    );
    let spec = a.model.load()?;
    let backend = resolve(a.engine.backend)?;
    let streams = a.streams.unwrap_or_else(|| {
        if backend == BackendKind::Cpu {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            8
        }
    });
    // 0 (the default): two contexts on a GPU (one's host work overlaps another's device work),
    // one on the CPU.
    let contexts = match cfg.contexts {
        0 => ServeConfig::auto_contexts(backend == BackendKind::Cuda),
        n => n,
    };
    let plan = PlanOpts {
        algo: Some(a.algo),
        streams,
        fuse: a.fuse,
        device: a.device.clone(),
        costs: a.costs.clone(),
    };
    let builder = a
        .engine
        .builder(&spec)?
        .backend(backend)
        .plan_options(plan.options(a.algo)?)
        .contexts(contexts)
        .max_batch(cfg.max_batch)
        // One validation per request: the server's parse makes a ValidatedBatch of every request
        // before it is queued, and the engine runs only those.
        .trace(false);
    let weights = Weights::for_graph(builder.graph())?;
    // `auto`: measured at batch 1 (a lightly loaded server) and 16 (dynamic batches under load),
    // cached per machine; the plan view below shows the algorithm it picked.
    let mut sizes = vec![1, 16.min(cfg.max_batch)];
    sizes.dedup();
    let builder = a
        .auto
        .apply(builder.weights(&weights), &sizes, false)
        .tuned()
        .cli()?;
    let built = builder
        .plan(cfg.max_batch)
        .and_then(|p| builder.load(p))
        .cli()?;
    let graph = streamrec_graph::OpGraph::clone(builder.graph());
    let plan = builder.plan_opts().clone();
    let cost = builder.cost_model().cli()?;
    drop(builder);
    drop(weights);
    let describe = format!(
        "backend {}, plan {} on {} stream(s) ({} waits), max_batch {}, max_queue_delay {} us, inline up to {} us, {} context(s)",
        built.engine.backend_name(),
        built.plan.algo,
        built.plan.num_streams(),
        built.plan.num_waits(),
        cfg.max_batch,
        cfg.max_queue_delay_us,
        cfg.inline_max_us,
        contexts
    );
    let name = spec.name.clone();
    let version = cfg.version.clone();
    let max_batch = cfg.max_batch;
    let server = binding
        .start(Model {
            spec,
            engine: Arc::from(built.engine),
        })
        .context("starting the server")?;
    // The plan view at /ui: every algorithm at the server's max batch, read-only.
    let algo_name = plan.algo.to_string();
    let view = streamrec_graph::html::page(
        &graph,
        &cost,
        &streamrec_graph::html::Options {
            batch: max_batch,
            max_streams: plan.streams,
            fuse: plan.fuse,
            measured: None,
            selected: Some(&algo_name),
        },
    )?;
    server.set_ui(view);
    let addr = server.local_addr();
    println!("listening on http://{addr}");
    if let Some(g) = server.grpc_addr() {
        eprintln!("grpc on {g}");
    }
    eprintln!("streamrec serve: model {name} version {version}, {describe}; ready");
    server.run(streamrec_serve::shutdown_signal())?;
    Ok(())
}
