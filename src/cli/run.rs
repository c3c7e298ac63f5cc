//! `streamrec run`: latency and throughput on random batches, scores for a request file,
//! side-by-side comparison with `single`, per-op profiles and timelines.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};

use anyhow::{Context, Result};
use clap::Args;
use streamrec_graph::{Algorithm, MeasuredCosts};
use streamrec_protocol::limits::DEFAULT_MAX_REQUEST_BYTES;
use streamrec_protocol::{read_request_file, response_json, InferRequest};
use streamrec_runtime::builder::{Built, EngineBuilder};
use streamrec_runtime::gen::{random_batch, random_validated, Skew};
use streamrec_runtime::stats::LatencySummary;
use streamrec_runtime::{measure, Infer, MeasureConfig, ValidatedBatch, Weights};

use super::{
    bounded, AutoArgs, EngineArgs, IntoCli, ModelArgs, PlanOpts, MAX_CONTEXTS, MAX_THREADS,
};

/// Arguments of `streamrec run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    plan: PlanOpts,
    #[command(flatten)]
    engine: EngineArgs,
    #[command(flatten)]
    auto: AutoArgs,
    /// Samples per request, or a comma-separated list (e.g. 1,16,128,1024): the engines are
    /// built once (for the largest) and each size is measured in turn, one result per size.
    #[arg(long, value_name = "B[,B...]", default_value = "128")]
    batch: String,
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

/// Parses `--batch`: one size or a comma-separated list (`1,16,128`), each in `1..=MAX_BATCH`,
/// none twice; errors name the flag.
pub fn parse_batches(text: &str) -> Result<Vec<usize>> {
    streamrec_runtime::builder::parse_batch_sizes(text).context("--batch")
}

/// Runs `streamrec run`.
pub fn main(a: RunArgs) -> Result<()> {
    let sizes = parse_batches(&a.batch)?;
    check_args(&a, &sizes)?;
    let spec = a.model.load()?;
    if a.emit_request {
        let b = random_batch(&spec, sizes[0], a.skew, a.seed);
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
                ValidatedBatch::from_request(req, &spec)
                    .with_context(|| format!("{}", p.display()))?,
                id,
            ))
        }
        None => None,
    };
    let max_batch = input
        .as_ref()
        .map_or_else(|| sizes.iter().copied().max().unwrap_or(1), |(b, _)| b.size);
    // Resolve `auto` once: every engine of this run uses the same backend; without a CUDA
    // device, fail before generating weights (gigabytes for the large specs).
    let builder = a
        .engine
        .builder(&spec)?
        .contexts(a.contexts)
        .max_batch(max_batch)
        .trace(a.trace.is_some() || a.profile.is_some())
        .resolved()
        .cli()?;
    // Without --algo: measured `auto` (for one request file: the simulator's pick, since timing
    // the candidates would cost more than the request).
    let requested = a.plan.algo.unwrap_or(Algorithm::Auto);
    let builder = builder.plan_options(a.plan.options(requested)?);
    if let Some((batch, id)) = input {
        let built = builder.build().cli()?;
        let scores = built.engine.infer(&batch)?;
        finite_scores(&scores)?;
        println!("{}", response_json(&spec.name, id.as_deref(), &scores));
        return Ok(());
    }
    // Plan before generating weights, so that a bad plan option fails fast.
    let _ = builder.plan(sizes[0]).cli()?;
    let weights = Weights::for_graph(builder.graph())?;
    let builder = builder.weights(&weights);
    let mcfg = MeasureConfig {
        warmup: a.warmup,
        iters: a.iters,
        threads: a.threads.unwrap_or(a.contexts),
        max_time: None,
        progress: None,
    };
    // `--compare`'s baseline: the options given, with the single-stream plan.
    let single = builder.clone().algo(Algorithm::Single);
    // Profiles time each op alone: they always run the single-stream plan.
    let measured = if a.profile.is_some() {
        single.clone()
    } else {
        a.auto.apply(builder, &sizes, a.csv).tuned().cli()?
    };
    let mut out = Report::new(&a, sizes.len() > 1);
    // The engines are built once and reused for every batch size whose plan is the same (the
    // plan is costed for each batch size; a different one is built, after the old is dropped).
    let mut engine: Option<Slot> = None;
    let mut base: Option<Slot> = None;
    let mut profile = match &a.profile {
        Some(p) if p.exists() => Some(MeasuredCosts::load(p)?),
        Some(_) => Some(MeasuredCosts::default()),
        None => None,
    };
    for &b in &sizes {
        let eng = Slot::ensure(&mut engine, &measured, b)?;
        if eng.fresh && !a.csv {
            let built = &eng.built;
            eprintln!(
                "{}: {} ops, backend {}, plan {} on {} stream(s) ({} waits), {} context(s), batch {}, {} iterations",
                spec.name,
                built.graph.len(),
                built.engine.backend_name(),
                built.plan.algo,
                built.plan.num_streams(),
                built.plan.num_waits(),
                a.contexts,
                a.batch,
                a.iters
            );
        }
        if a.compare {
            Slot::ensure(&mut base, &single, b)?;
        }
        let batches = (0..4)
            .map(|i| random_validated(&spec, b, a.skew, a.seed.wrapping_add(i)))
            .collect::<Result<Vec<_>, _>>()?;
        let built = &engine.as_ref().expect("built above").built;
        match &base {
            Some(base) => compare_at(&a, &mut out, b, &base.built, built, &batches, &mcfg)?,
            None => measure_at(&a, &mut out, b, built, &batches, &mcfg, profile.as_mut())?,
        }
    }
    Ok(())
}

/// Refuses out-of-range counts and options that do not go together.
fn check_args(a: &RunArgs, sizes: &[usize]) -> Result<()> {
    bounded("--iters", a.iters, usize::MAX)?;
    bounded("--contexts", a.contexts, MAX_CONTEXTS)?;
    if let Some(t) = a.threads {
        bounded("--threads", t, MAX_THREADS)?;
    }
    a.engine.check_threads()?;
    bounded("--max-request-bytes", a.max_request_bytes, usize::MAX)?;
    if sizes.len() > 1 {
        if a.emit_request {
            anyhow::bail!("--batch: --emit-request takes one batch size, not a list");
        }
        if a.trace.is_some() {
            anyhow::bail!("--batch: --trace takes one batch size, not a list");
        }
    }
    if a.profile.is_some() && a.engine.graphs() {
        anyhow::bail!(
            "--profile: per-op times need eager execution; a CUDA graph is timed only as a whole (use --graph off)"
        );
    }
    Ok(())
}

/// `--compare` at batch `b`: `single` and the plan in alternating rounds (so both see the same
/// machine conditions), a row each, the ratio, and the timelines with `--trace`.
fn compare_at(
    a: &RunArgs,
    out: &mut Report,
    b: usize,
    base: &Built,
    built: &Built,
    batches: &[ValidatedBatch],
    mcfg: &MeasureConfig,
) -> Result<()> {
    // Alternate rounds so both see the same machine conditions.
    let rounds = 4usize;
    let per = MeasureConfig {
        iters: a.iters.div_ceil(rounds),
        ..mcfg.clone()
    };
    let (mut sb, mut sm) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        sb.push(with_progress(&per, a.csv, |cfg| {
            measure(base.engine.as_ref(), batches, cfg)
        })?);
        sm.push(with_progress(&per, a.csv, |cfg| {
            measure(built.engine.as_ref(), batches, cfg)
        })?);
    }
    let (sb, sm) = (
        LatencySummary::median_of(&sb),
        LatencySummary::median_of(&sm),
    );
    out.row(b, "single", 1, &sb, base.engine.as_ref())?;
    out.built_row(b, built, &sm)?;
    if let Some(p) = &a.trace {
        write_trace(&single_trace_path(p), &base.engine.take_trace())?;
        write_trace(p, &built.engine.take_trace())?;
    }
    if !a.csv {
        let gpu = match (sb.gpu_p50_us, sm.gpu_p50_us) {
            (Some(x), Some(y)) => format!(", gpu time p50 {:.2}x", x / y),
            _ => String::new(),
        };
        println!(
            "{}ratio single/{}: latency p50 {:.2}x, throughput {:.2}x{gpu}",
            out.prefix(b),
            built.plan.algo,
            sb.p50_us / sm.p50_us,
            sm.samples_per_s / sb.samples_per_s
        );
        out.flush()?;
    }
    Ok(())
}

/// Measures the plan at batch `b`: a row, the timeline with `--trace`, per-op medians added to
/// the `--profile` file.
fn measure_at(
    a: &RunArgs,
    out: &mut Report,
    b: usize,
    built: &Built,
    batches: &[ValidatedBatch],
    mcfg: &MeasureConfig,
    profile: Option<&mut MeasuredCosts>,
) -> Result<()> {
    let s = with_progress(mcfg, a.csv, |cfg| {
        measure(built.engine.as_ref(), batches, cfg)
    })?;
    out.built_row(b, built, &s)?;
    let events = built.engine.take_trace();
    if let Some(p) = &a.trace {
        write_trace(p, &events)?;
    }
    if let (Some(p), Some(m)) = (&a.profile, profile) {
        let name = built.engine.backend_name();
        m.device = format!(
            "{name} ({} threads)",
            std::thread::available_parallelism().map_or(1, |n| n.get())
        );
        streamrec_runtime::trace::require_op_spans(&events)?;
        streamrec_runtime::trace::record_op_medians(m, &events, b);
        m.save(p)?;
        eprintln!(
            "wrote per-op medians for {} ops at batch {b} to {}",
            m.ops.len(),
            p.display()
        );
    }
    Ok(())
}

/// Refuses scores that are not numbers (as JSON, NaN and infinities would print as `null`): the
/// first one is an error naming the sample. The weights are finite (checked at load), so such a
/// score means the model overflows f32 on that sample's inputs.
pub fn finite_scores(scores: &[f32]) -> Result<()> {
    match scores.iter().position(|s| !s.is_finite()) {
        Some(i) => anyhow::bail!(
            "sample {i}: the score is {}, not a finite number (the model overflows f32 on this \
             sample's inputs)",
            scores[i]
        ),
        None => Ok(()),
    }
}

/// An engine kept across batch sizes, with the plan it was built for.
struct Slot {
    /// The plan and graph, serialised: equal keys run the same work.
    key: String,
    built: Built,
    /// Built by the last `ensure`.
    fresh: bool,
}

impl Slot {
    /// Plans for `batch` and keeps the engine in `slot` when its plan is the same, else drops
    /// it and builds one (weights uploaded once per engine).
    fn ensure<'s>(
        slot: &'s mut Option<Slot>,
        builder: &EngineBuilder<'_>,
        batch: usize,
    ) -> Result<&'s Slot> {
        let planned = builder.plan(batch).cli()?;
        let key = format!(
            "{}:{}",
            planned.graph.len(),
            serde_json::to_string(&planned.plan)?
        );
        if let Some(s) = slot.as_mut().filter(|s| s.key == key) {
            s.fresh = false;
        } else {
            if slot.is_some() {
                eprintln!(
                    "batch {batch}: the {} plan differs from the previous batch size's, building its engine",
                    planned.plan.algo
                );
            }
            // Free the old engine (device memory) before building the next.
            *slot = None;
            *slot = Some(Slot {
                key,
                built: builder.load(planned).cli()?,
                fresh: true,
            });
        }
        Ok(slot.as_ref().expect("set above"))
    }
}

/// Prints the measurements: one CSV row per batch size and engine (the header once) or one text
/// line, flushed as it goes so that a run cut off keeps the rows done.
struct Report {
    csv: bool,
    list: bool,
    header: bool,
    model: String,
    contexts: usize,
    graph: String,
}

impl Report {
    fn new(a: &RunArgs, list: bool) -> Self {
        Self {
            csv: a.csv,
            list,
            header: false,
            model: a
                .model
                .spec
                .file_stem()
                .map_or_else(String::new, |s| s.to_string_lossy().into_owned()),
            contexts: a.contexts,
            graph: a.engine.graph.clone(),
        }
    }

    /// `batch  128  ` before each text line when several batch sizes are measured.
    fn prefix(&self, batch: usize) -> String {
        if self.list {
            format!("batch {batch:>5}  ")
        } else {
            String::new()
        }
    }

    fn flush(&self) -> Result<()> {
        use std::io::Write;
        std::io::stdout().flush()?;
        Ok(())
    }

    /// The row of a built engine: its plan's name and streams.
    fn built_row(&mut self, batch: usize, built: &Built, s: &LatencySummary) -> Result<()> {
        let streams = built.plan.num_streams();
        self.row(batch, &built.plan.algo, streams, s, built.engine.as_ref())
    }

    fn row(
        &mut self,
        batch: usize,
        algo: &str,
        streams: usize,
        s: &LatencySummary,
        engine: &dyn Infer,
    ) -> Result<()> {
        let launches = engine.launches_per_request();
        if self.csv {
            if !self.header {
                println!("{CSV_HEADER}");
                self.header = true;
            }
            let opt = |v: Option<f64>| v.map_or_else(String::new, |x| format!("{x:.1}"));
            println!(
                "{},{},{algo},{streams},{},{},{batch},{},{:.1},{:.1},{:.1},{:.1},{:.1},{},{},{}",
                self.model,
                engine.backend_name(),
                self.contexts,
                self.graph,
                s.count,
                s.p50_us,
                s.p90_us,
                s.p99_us,
                s.mean_us,
                s.samples_per_s,
                opt(s.gpu_p50_us),
                opt(s.gpu_p99_us),
                launches.map_or_else(String::new, |n| n.to_string()),
            );
        } else {
            let mut extra = String::new();
            if let (Some(p50), Some(p99)) = (s.gpu_p50_us, s.gpu_p99_us) {
                extra.push_str(&format!("  gpu p50 {p50:>10.1} us  p99 {p99:>10.1} us"));
            }
            if let Some(n) = launches {
                extra.push_str(&format!("  {n} launches/request"));
            }
            println!(
                "{}{algo:>13} x{streams:<2} latency p50 {:>10.1} us  p90 {:>10.1} us  p99 {:>10.1} us  throughput {:>10.1} samples/s ({:.1} req/s){extra}",
                self.prefix(batch),
                s.p50_us,
                s.p90_us,
                s.p99_us,
                s.samples_per_s,
                s.samples_per_s / batch as f64
            );
        }
        self.flush()
    }
}

/// The CSV header of `run --csv` (xtask/device/run.sh reads these columns).
pub const CSV_HEADER: &str = "model,backend,algo,streams,contexts,graph,batch,iters,p50_us,p90_us,p99_us,mean_us,samples_per_s,gpu_p50_us,gpu_p99_us,launches";

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

#[cfg(test)]
mod tests {
    use super::finite_scores;

    /// Moved from tests/cli.rs (the CLI is private to the binary): infinite scores are refused
    /// as NaN is (sigmoid never gives one, other heads might).
    #[test]
    fn infinite_scores_are_refused() {
        finite_scores(&[0.0, 0.5, 1.0]).unwrap();
        for (bad, text) in [(f32::INFINITY, "inf"), (f32::NEG_INFINITY, "-inf")] {
            let e = finite_scores(&[0.5, 0.5, bad]).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("sample 2: the score is {text}, ")),
                "{e}"
            );
        }
    }
}
