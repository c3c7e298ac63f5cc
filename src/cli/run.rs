//! `streamrec run`: latency and throughput on random batches, scores for a request file,
//! side-by-side comparison with `single`, per-op profiles and timelines.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};

use anyhow::{Context, Result};
use clap::Args;
use streamrec_graph::limits::{DEFAULT_MAX_REQUEST_BYTES, MAX_BATCH};
use streamrec_graph::{Algorithm, MeasuredCosts, OpGraph, Plan, SimMode};
use streamrec_runtime::backend::{build_engine, resolve, BackendKind, BackendOptions};
use streamrec_runtime::gen::{random_batch, Skew};
use streamrec_runtime::request::{read_request_file, response_json, InferRequest};
use streamrec_runtime::stats::LatencySummary;
use streamrec_runtime::{measure, Batch, EngineConfig, Infer, MeasureConfig, Weights};

use super::{bounded, EngineArgs, ModelArgs, PlanOpts, MAX_CONTEXTS, MAX_THREADS};

/// Arguments of `streamrec run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    plan: PlanOpts,
    #[command(flatten)]
    engine: EngineArgs,
    /// Samples per request.
    #[arg(long, value_name = "B", default_value_t = 128)]
    batch: usize,
    /// Timed requests.
    #[arg(long, value_name = "K", default_value_t = 100)]
    iters: usize,
    /// Untimed requests first.
    #[arg(long, value_name = "W", default_value_t = 5)]
    warmup: usize,
    /// Execution contexts (requests that run at once).
    #[arg(long, value_name = "N", default_value_t = 1)]
    contexts: usize,
    /// Client threads issuing requests (default: one per context).
    #[arg(long, value_name = "T")]
    threads: Option<usize>,
    /// Index distribution of random batches: uniform or zipf:S.
    #[arg(long, default_value = "uniform")]
    skew: Skew,
    /// Seed of the random batches.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Read one KServe v2 request body from this file and print the scores as JSON.
    #[arg(long, value_name = "FILE", conflicts_with_all = [
        "emit_request", "compare", "profile", "trace", "csv", "batch", "iters", "warmup",
        "contexts", "threads", "skew", "seed",
    ])]
    input: Option<PathBuf>,
    /// Largest request file accepted by --input, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_REQUEST_BYTES)]
    max_request_bytes: usize,
    /// Write a random request body (KServe v2 JSON) for --batch samples to stdout and exit.
    #[arg(long, conflicts_with_all = [
        "compare", "profile", "trace", "csv", "iters", "warmup", "contexts", "threads",
    ])]
    emit_request: bool,
    /// Also run `single` in the same process and print the ratio (with --trace: one timeline
    /// file per engine).
    #[arg(long, conflicts_with = "profile")]
    compare: bool,
    /// Measure each op's time (median per batch size) and write it for the cost model (JSON or
    /// TOML by extension; an existing file gains this batch size).
    #[arg(long, value_name = "FILE")]
    profile: Option<PathBuf>,
    /// Write a Chrome trace-event timeline of the timed requests (every context; with
    /// --compare, FILE for the plan and FILE with `-single` before the extension for the
    /// baseline).
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// Print the result as one CSV row (with a header) instead of text.
    #[arg(long)]
    csv: bool,
}

/// A planned, loaded engine with what the report needs.
pub struct Built {
    /// The engine.
    pub engine: Box<dyn Infer>,
    /// The plan it runs.
    pub plan: Plan,
    /// The graph it runs.
    pub graph: Arc<OpGraph>,
}

/// Where and how an engine runs.
pub struct Target {
    /// The backend.
    pub backend: BackendKind,
    /// TF32 GEMMs, intra-op threads.
    pub opts: BackendOptions,
    /// Contexts, max batch, graphs, tracing.
    pub cfg: EngineConfig,
}

/// Builds an engine for `algo` with the shared weights.
pub fn build(
    target: &Target,
    graph: &OpGraph,
    plan_opts: &PlanOpts,
    algo: Algorithm,
    batch: usize,
    weights: &Weights,
) -> Result<Built> {
    let cfg = target.cfg.clone();
    let backend_opts = target.opts;
    let resolved = resolve(target.backend)?;
    if resolved == BackendKind::Cpu {
        if cfg.graphs {
            anyhow::bail!(
                "--graph on: CUDA graphs need the CUDA backend (this run uses the CPU backend)"
            );
        }
        if backend_opts.tf32 {
            anyhow::bail!("--tf32: TF32 needs the CUDA backend (this run uses the CPU backend)");
        }
    }
    let default_device = if resolved == BackendKind::Cuda {
        "h200"
    } else {
        "cpu"
    };
    let cost = plan_opts.cost_model(default_device, backend_opts.intra_op_threads)?;
    let mode = if cfg.graphs {
        SimMode::Graph
    } else {
        SimMode::Eager
    };
    let mut opts = plan_opts.clone();
    opts.algo = algo;
    let planned = opts.assign(graph, batch, mode, &cost)?;
    let graph = Arc::new(planned.graph);
    let engine = build_engine(
        resolved,
        Arc::clone(&graph),
        planned.plan.clone(),
        weights,
        cfg,
        backend_opts,
    )?;
    Ok(Built {
        engine,
        plan: planned.plan,
        graph,
    })
}

/// Runs `streamrec run`.
pub fn main(a: RunArgs) -> Result<()> {
    bounded("--batch", a.batch, MAX_BATCH)?;
    bounded("--iters", a.iters, usize::MAX)?;
    bounded("--contexts", a.contexts, MAX_CONTEXTS)?;
    if let Some(t) = a.threads {
        bounded("--threads", t, MAX_THREADS)?;
    }
    bounded("--intra-op-threads", a.engine.intra_op_threads, MAX_THREADS)?;
    bounded("--max-request-bytes", a.max_request_bytes, usize::MAX)?;
    let spec = a.model.load()?;
    if a.emit_request {
        let b = random_batch(&spec, a.batch, a.skew, a.seed);
        println!(
            "{}",
            serde_json::to_string(&InferRequest::from_batch(&spec, &b))?
        );
        return Ok(());
    }
    let input = match &a.input {
        Some(p) => {
            let req = read_request_file(p, a.max_request_bytes)
                .with_context(|| format!("{}", p.display()))?;
            let id = req.id.clone();
            Some((
                req.into_batch(&spec)
                    .with_context(|| format!("{}", p.display()))?,
                id,
            ))
        }
        None => None,
    };
    let graph = OpGraph::from_spec(&spec);
    let weights = Weights::for_graph(&graph)?;
    let max_batch = input.as_ref().map_or(a.batch, |(b, _)| b.size);
    let cfg = EngineConfig {
        contexts: a.contexts,
        max_batch,
        graphs: a.engine.graphs(),
        trace: a.trace.is_some() || a.profile.is_some(),
        validate: true,
    };
    if let Some((batch, id)) = input {
        let built = build(
            &a.engine.target(cfg),
            &graph,
            &a.plan,
            a.plan.algo,
            batch.size,
            &weights,
        )?;
        let scores = built.engine.infer(&Arc::new(batch))?;
        println!("{}", response_json(&spec.name, id.as_deref(), &scores));
        return Ok(());
    }
    let batches: Vec<Arc<Batch>> = (0..4)
        .map(|i| Arc::new(random_batch(&spec, a.batch, a.skew, a.seed.wrapping_add(i))))
        .collect();
    let mcfg = MeasureConfig {
        warmup: a.warmup,
        iters: a.iters,
        threads: a.threads.unwrap_or(a.contexts),
        max_time: None,
        progress: None,
    };
    // Profiles time each op alone: they always run the single-stream plan.
    let algo = if a.profile.is_some() {
        Algorithm::Single
    } else {
        a.plan.algo
    };
    let built = build(
        &a.engine.target(cfg.clone()),
        &graph,
        &a.plan,
        algo,
        a.batch,
        &weights,
    )?;
    let name = built.engine.backend_name();
    if !a.csv {
        eprintln!(
            "{}: {} ops, backend {name}, plan {} on {} stream(s) ({} waits), {} context(s), batch {}, {} iterations",
            spec.name,
            built.graph.len(),
            built.plan.algo,
            built.plan.num_streams(),
            built.plan.num_waits(),
            a.contexts,
            a.batch,
            a.iters
        );
    }
    if a.compare {
        let base = build(
            &a.engine.target(cfg),
            &graph,
            &a.plan,
            Algorithm::Single,
            a.batch,
            &weights,
        )?;
        // Alternate rounds so both see the same machine conditions.
        let rounds = 4usize;
        let per = MeasureConfig {
            iters: a.iters.div_ceil(rounds),
            ..mcfg.clone()
        };
        let (mut sb, mut sm) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            sb.push(with_progress(&per, a.csv, |cfg| {
                measure(base.engine.as_ref(), &batches, cfg)
            })?);
            sm.push(with_progress(&per, a.csv, |cfg| {
                measure(built.engine.as_ref(), &batches, cfg)
            })?);
        }
        let (b, m) = (
            LatencySummary::median_of(&sb),
            LatencySummary::median_of(&sm),
        );
        print_summary(&a, "single", 1, &b, name);
        print_summary(&a, &built.plan.algo, built.plan.num_streams(), &m, name);
        if let Some(p) = &a.trace {
            write_trace(&single_trace_path(p), &base.engine.take_trace())?;
            write_trace(p, &built.engine.take_trace())?;
        }
        if !a.csv {
            println!(
                "ratio single/{}: latency p50 {:.2}x, throughput {:.2}x",
                built.plan.algo,
                b.p50_us / m.p50_us,
                m.samples_per_s / b.samples_per_s
            );
        }
        return Ok(());
    }
    let s = with_progress(&mcfg, a.csv, |cfg| {
        measure(built.engine.as_ref(), &batches, cfg)
    })?;
    print_summary(&a, &built.plan.algo, built.plan.num_streams(), &s, name);
    let events = built.engine.take_trace();
    if let Some(p) = &a.trace {
        write_trace(p, &events)?;
    }
    if let Some(p) = &a.profile {
        let mut m = if p.exists() {
            MeasuredCosts::load(p)?
        } else {
            MeasuredCosts::default()
        };
        m.device = format!(
            "{name} ({} threads)",
            std::thread::available_parallelism().map_or(1, |n| n.get())
        );
        streamrec_runtime::trace::record_op_medians(&mut m, &events, a.batch);
        m.save(p)?;
        eprintln!(
            "wrote per-op medians for {} ops at batch {} to {}",
            m.ops.len(),
            a.batch,
            p.display()
        );
    }
    Ok(())
}

/// Writes a timeline; an empty one is an error rather than a silent empty file.
fn write_trace(p: &std::path::Path, events: &[streamrec_runtime::trace::TraceEvent]) -> Result<()> {
    if events.is_empty() {
        anyhow::bail!(
            "--trace {}: the engine recorded no spans, nothing to write",
            p.display()
        );
    }
    streamrec_runtime::trace::write_chrome_trace(p, events)?;
    let contexts: std::collections::BTreeSet<usize> = events.iter().map(|e| e.context).collect();
    eprintln!(
        "wrote {} spans of {} context(s) to {}",
        events.len(),
        contexts.len(),
        p.display()
    );
    Ok(())
}

/// `trace.json` -> `trace-single.json`: where --compare writes the baseline's timeline.
fn single_trace_path(p: &std::path::Path) -> PathBuf {
    let stem = p
        .file_stem()
        .map_or_else(|| "trace".into(), |s| s.to_string_lossy().into_owned());
    let name = match p.extension() {
        Some(e) => format!("{stem}-single.{}", e.to_string_lossy()),
        None => format!("{stem}-single"),
    };
    p.with_file_name(name)
}

/// Runs a measurement with a progress bar on stderr (when it is a terminal and not `--csv`).
fn with_progress<T>(
    cfg: &MeasureConfig,
    quiet: bool,
    f: impl FnOnce(&MeasureConfig) -> streamrec_runtime::Result<T>,
) -> Result<T> {
    if quiet || !std::io::stderr().is_terminal() {
        return Ok(f(cfg)?);
    }
    let done = Arc::new(AtomicUsize::new(0));
    let total = (cfg.warmup + cfg.iters) as u64;
    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} requests {elapsed_precise}")
            .expect("valid template"),
    );
    let cfg = MeasureConfig {
        progress: Some(Arc::clone(&done)),
        ..cfg.clone()
    };
    let stop = std::sync::atomic::AtomicBool::new(false);
    let out = std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                bar.set_position(done.load(Ordering::Relaxed) as u64);
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        });
        let out = f(&cfg);
        stop.store(true, Ordering::Relaxed);
        out
    });
    bar.finish_and_clear();
    Ok(out?)
}

fn print_summary(a: &RunArgs, algo: &str, streams: usize, s: &LatencySummary, backend: &str) {
    if a.csv {
        println!("model,backend,algo,streams,contexts,graph,batch,iters,p50_us,p90_us,p99_us,mean_us,samples_per_s");
        println!(
            "{},{backend},{algo},{streams},{},{},{},{},{:.1},{:.1},{:.1},{:.1},{:.1}",
            a.model
                .spec
                .file_stem()
                .map_or_else(String::new, |s| s.to_string_lossy().into_owned()),
            a.contexts,
            a.engine.graph,
            a.batch,
            s.count,
            s.p50_us,
            s.p90_us,
            s.p99_us,
            s.mean_us,
            s.samples_per_s
        );
    } else {
        println!(
            "{algo:>13} x{streams:<2} latency p50 {:>10.1} us  p90 {:>10.1} us  p99 {:>10.1} us  throughput {:>10.1} samples/s ({:.1} req/s)",
            s.p50_us,
            s.p90_us,
            s.p99_us,
            s.samples_per_s,
            s.samples_per_s / a.batch as f64
        );
    }
}
