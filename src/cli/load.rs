//! `streamrec load`: the open-loop load generator (streamrec-loadgen) against a KServe v2
//! server, as one shard of a load split over workers; `streamrec load merge` merges the shards'
//! results exactly. The load generator speaks HTTP (`--url http://...`: KServe v2 REST, JSON or
//! Triton's binary bodies) and gRPC (`--url grpc://...`: KServe v2 `ModelInfer` with raw
//! contents over a few HTTP/2 connections; readiness and metadata over gRPC too), and can pin
//! its threads to CPUs (`--cpus`).
//!
//! Both check `--out` before any work (created, written and cleaned of a probe file; a
//! non-empty folder only with `--replace`, which removes the result files of an earlier run
//! and nothing else), print the summary before writing it, and exit 1 when requests failed
//! (beyond `--allow-failures`) or the generator saturated (the run is invalid).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use streamrec_loadgen::results::RESULT_FILES;
use streamrec_loadgen::schedule::{self, derive_seed};
use streamrec_loadgen::{
    default_connections, describe, fetch_metadata, merge_dirs, out, parse_duration, run,
    saturation_note, wait_ready_noting, BatchSizes, Bodies, BodyConfig, BodyFormat, CpuSet,
    MergeOptions, ModelInputs, Protocol, RunConfig, ScheduleConfig, ScheduleKind, Shard, Skew,
    Summary, Target,
};

/// Arguments of `streamrec load`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct LoadArgs {
    #[command(subcommand)]
    cmd: Option<LoadCmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum LoadCmd {
    /// Merge the shards of one load (checked: same load, each shard once, consistent counts;
    /// histograms added exactly, counts and rates summed) and print them; exit 1 when requests
    /// failed or a generator saturated.
    Merge(MergeArgs),
}

#[derive(Debug, Args)]
struct MergeArgs {
    /// Result folders written by `streamrec load --out`: every shard of one load (same URL,
    /// model, schedule, rate, batch, skew, format, seed, duration and shard count), each once.
    #[arg(required = true, value_name = "DIR")]
    dirs: Vec<PathBuf>,
    /// Merge even when shards of the split are missing (the summary lists them).
    #[arg(long)]
    partial: bool,
    /// Also write the merged summary.json, latency.hdr and lag.hdr into DIR (new or empty).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Let --out be a folder holding an earlier result: its result files are replaced (a
    /// folder holding anything else is refused, and nothing is removed).
    #[arg(long, requires = "out")]
    replace: bool,
    /// Exit 0 even when up to this fraction (0 to 1) of the requests failed or were not sent.
    #[arg(long, default_value_t = 0.0, value_name = "FRACTION")]
    allow_failures: f64,
    /// Print the merged summary as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Server base URL: http://HOST:PORT (KServe v2 REST, e.g. http://127.0.0.1:8000) or
    /// grpc://HOST:PORT (KServe v2 gRPC, e.g. the port of `streamrec serve --grpc-port`; the
    /// readiness wait and the metadata use gRPC ModelReady and ModelMetadata).
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// Model name.
    #[arg(long, value_name = "NAME")]
    model: Option<String>,
    /// Model version (default: the server's).
    #[arg(long, value_name = "V")]
    model_version: Option<String>,
    /// Offered rate over all shards, requests per second.
    #[arg(long, value_name = "Q")]
    qps: Option<f64>,
    /// Length of the run: 500ms, 10s, 2m, 1h or seconds.
    #[arg(long, value_name = "D")]
    duration: Option<String>,
    /// Arrival process: constant, poisson, or trace:FILE (real arrival times rescaled to the
    /// rate, e.g. trace:workloads/traces/azure-llm-2023-conv.csv).
    #[arg(long, default_value = "poisson", value_name = "S")]
    schedule: String,
    /// Samples per request: a number, mlperf (MLPerf DLRM-v2 query sizes), trace
    /// (ContextTokens / 16 of a trace schedule) or tokens:D.
    #[arg(long, default_value = "1", value_name = "B")]
    batch: String,
    /// The server's max batch: drawn and mapped sizes are clamped to it.
    #[arg(long, default_value_t = 256, value_name = "B")]
    max_batch: u32,
    /// Index skew: uniform, zipf:S, or zipf:production (fitted to production statistics).
    #[arg(long, default_value = "uniform")]
    skew: String,
    /// This worker's shard of the load, i/n.
    #[arg(long, value_name = "I/N", conflicts_with = "shards")]
    shard: Option<String>,
    /// Shard count; the index comes from JOB_COMPLETION_INDEX (a Kubernetes Indexed Job).
    #[arg(long, value_name = "N")]
    shards: Option<u32>,
    /// Seed of the arrivals, batch sizes and request data.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Cap on the total number of requests over all shards.
    #[arg(long, value_name = "N")]
    requests: Option<u64>,
    /// Most keep-alive connections of this worker (default 64 for http://, where each
    /// carries one request at a time; 4 for grpc://: HTTP/2 connections, calls dealt to them in
    /// turn, each carrying many at once).
    #[arg(long, value_name = "N")]
    connections: Option<usize>,
    /// Connections opened before the start (default: min(8, --connections)).
    #[arg(long, value_name = "N")]
    warm_connections: Option<usize>,
    /// A request without a complete response this long after its intended time is a timeout;
    /// one the generator reaches only after that is not sent, and the run stops at --duration
    /// plus this.
    #[arg(long, default_value = "10s", value_name = "D")]
    timeout: String,
    /// Request body format of an http:// URL: binary (Triton's binary tensor extension, the
    /// default) or json. A grpc:// URL always sends raw contents in a ModelInferRequest.
    #[arg(long)]
    format: Option<String>,
    /// Model spec (TOML) for the table sizes and pooling; checked against the server's
    /// metadata.
    #[arg(long, value_name = "FILE", conflicts_with = "rows")]
    spec: Option<PathBuf>,
    /// With --spec: the --row-cap the server runs with.
    #[arg(long, value_name = "N", requires = "spec")]
    row_cap: Option<u64>,
    /// Without --spec: draw every feature's indices from 0..N (N at most the smallest table).
    #[arg(long, value_name = "N")]
    rows: Option<u64>,
    /// Without --spec: indices per sample of every feature (default 1).
    #[arg(long, value_name = "P", requires = "rows")]
    pooling: Option<u32>,
    /// Different request bodies per batch size.
    #[arg(long, default_value_t = 8, value_name = "N")]
    variants: usize,
    /// Threads of the async runtime that paces, sends and receives (1: one thread does it
    /// all, the most precise on a small machine).
    #[arg(long, default_value_t = 1, value_name = "N")]
    threads: usize,
    /// Pin the generator's threads to these CPUs, e.g. 2-7 or 0,2,4-6 (each one this process
    /// may run on); keep the server's cores out of it (e.g. `taskset -c 0-1 streamrec serve`).
    /// Default: not pinned.
    #[arg(long, value_name = "LIST")]
    cpus: Option<String>,
    /// How long to wait for the model to be ready before starting.
    #[arg(long, default_value = "60s", value_name = "D")]
    ready_timeout: String,
    /// Start at this Unix time in seconds (several workers together; at most 1 h ahead; 0:
    /// now).
    #[arg(long, value_name = "SECS")]
    start_at: Option<f64>,
    /// Also write records.csv: one line per request.
    #[arg(long)]
    records: bool,
    /// A request started more than this after its intended time is late; more than 1% late
    /// and the generator saturated: the run is invalid (exit 1).
    #[arg(long, default_value = "10ms", value_name = "D")]
    max_send_lag: String,
    /// Exit 0 even when up to this fraction (0 to 1) of the requests failed or were not sent.
    #[arg(long, default_value_t = 0.0, value_name = "FRACTION")]
    allow_failures: f64,
    /// Result folder, new or empty (`{shard}` in it becomes the shard index): summary.json,
    /// latency.hdr, lag.hdr (and records.csv). Checked before anything is sent.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Let --out be a folder holding an earlier result: its result files are replaced (a
    /// folder holding anything else is refused, and nothing is removed).
    #[arg(long)]
    replace: bool,
}

/// Runs `streamrec load` or `streamrec load merge`.
pub fn main(a: LoadArgs) -> Result<()> {
    match a.cmd {
        Some(LoadCmd::Merge(m)) => merge(m),
        None => load(a.run),
    }
}

fn need<T>(v: Option<T>, flag: &str) -> Result<T> {
    v.with_context(|| format!("streamrec load: {flag} is required"))
}

fn load(mut a: RunArgs) -> Result<()> {
    let url = need(a.url.take(), "--url")?;
    let model = need(a.model.take(), "--model")?;
    let qps = need(a.qps, "--qps")?;
    let duration = parse_duration("--duration", &need(a.duration.take(), "--duration")?)?;
    let out = need(a.out.take(), "--out")?;
    let timeout = parse_duration("--timeout", &a.timeout)?;
    let ready_timeout = parse_duration("--ready-timeout", &a.ready_timeout)?;
    let max_send_lag = parse_duration("--max-send-lag", &a.max_send_lag)?;
    check_fraction(a.allow_failures)?;
    let shard = match (&a.shard, a.shards) {
        (Some(s), _) => s.parse::<Shard>()?,
        (None, Some(n)) => {
            Shard::from_job_index(std::env::var("JOB_COMPLETION_INDEX").ok().as_deref(), n)?
        }
        (None, None) => Shard::ALL,
    };
    let out = PathBuf::from(
        out.to_string_lossy()
            .replace("{shard}", &shard.index.to_string()),
    );
    let start_at = match a.start_at {
        None => None,
        Some(0.0) => None,
        Some(t) if t.is_finite() && t > 0.0 && t < 1e11 => {
            Some(UNIX_EPOCH + Duration::from_secs_f64(t))
        }
        Some(t) => bail!("--start-at: {t} is not a Unix time in seconds"),
    };
    let kind = ScheduleKind::parse(&a.schedule)?;
    let batch: BatchSizes = a.batch.parse()?;
    let skew: Skew = a.skew.parse()?;
    let target = Target {
        url,
        model,
        version: a.model_version.take(),
    };
    let protocol = target.protocol()?;
    let format = match (protocol, &a.format) {
        (Protocol::Http, Some(f)) => f.parse()?,
        (Protocol::Http, None) => BodyFormat::Binary,
        (Protocol::Grpc, None) => BodyFormat::Grpc,
        (Protocol::Grpc, Some(f)) => bail!(
            "--format {f}: applies to http:// URLs; a grpc:// URL sends raw tensor contents in \
             a ModelInferRequest"
        ),
    };
    let connections = a
        .connections
        .unwrap_or_else(|| default_connections(protocol));
    let cpus = a
        .cpus
        .as_deref()
        .map(|c| CpuSet::parse("--cpus", c))
        .transpose()?;
    let progress = std::io::stderr().is_terminal().then(|| {
        ProgressBar::new(0).with_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} requests {elapsed_precise} {msg}")
                .expect("valid template"),
        )
    });
    let run_cfg = RunConfig {
        connections,
        warm_connections: a.warm_connections.unwrap_or(8).min(connections),
        timeout,
        threads: a.threads,
        records: a.records,
        progress,
        start_at,
        max_send_lag,
        cpus,
    };
    // Every flag is checked before the server is asked anything.
    target.check()?;
    run_cfg.check()?;
    let mut sched = schedule::build(&ScheduleConfig {
        kind,
        qps,
        duration,
        max_requests: a.requests,
        seed: a.seed,
        shard,
    })?;
    batch.apply(&mut sched, a.max_batch)?;
    // The folder is checked (and made) before the server is asked anything; if nothing ends
    // up in a folder made here, it goes again.
    let created = out::prepare(&out, "--out", a.replace, &owned())?;
    let r = send(
        &a,
        &target,
        &sched,
        (skew, format),
        &run_cfg,
        ready_timeout,
        &out,
    );
    if r.is_err() && created {
        let _ = std::fs::remove_dir(&out);
    }
    r
}

/// The result files `--replace` may remove.
fn owned() -> Vec<PathBuf> {
    RESULT_FILES.iter().map(PathBuf::from).collect()
}

fn check_fraction(f: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&f) {
        bail!("--allow-failures: {f} is not a fraction between 0 and 1");
    }
    Ok(())
}

/// Waits for the server, prepares the bodies, runs the load and writes the results.
fn send(
    a: &RunArgs,
    target: &Target,
    sched: &schedule::Schedule,
    (skew, format): (Skew, BodyFormat),
    run_cfg: &RunConfig,
    ready_timeout: Duration,
    out: &std::path::Path,
) -> Result<()> {
    wait_ready_noting(target, ready_timeout, Duration::from_secs(5), &mut |line| {
        eprintln!("streamrec load: {line}")
    })?;
    let meta = fetch_metadata(target)?;
    let inputs = match &a.spec {
        Some(p) => {
            let m = ModelInputs::from_spec_file(p, a.row_cap)?;
            m.check_metadata(&meta)
                .with_context(|| format!("--spec {}", p.display()))?;
            m
        }
        None => ModelInputs::from_metadata(&meta, a.rows, a.pooling)?,
    };
    let bodies = Bodies::for_schedule(
        &inputs,
        sched,
        &BodyConfig {
            format,
            skew,
            variants: a.variants,
            seed: derive_seed(a.seed, sched.shard.index, 2),
            ..BodyConfig::default()
        },
    )?;
    eprintln!(
        "streamrec load: shard {}: {} at {:.1} req/s for {:.1} s: {} requests, batch {}, \
         {} skew, {} bodies of {} bytes in all, {} connection(s), {}",
        sched.shard,
        sched.kind,
        sched.target_qps,
        sched.duration.as_secs_f64(),
        sched.arrivals.len(),
        sched.batch_label,
        skew,
        format.name(),
        bodies.bytes(),
        run_cfg.connections,
        match &run_cfg.cpus {
            Some(c) => format!("pinned to CPUs {c}"),
            None => "not pinned".into(),
        }
    );
    if let Some(t) = run_cfg.start_at {
        if t < SystemTime::now() {
            eprintln!("streamrec load: --start-at is in the past: starting now");
        }
    }
    let result = run(target, sched, &bodies, run_cfg)?;
    // The summary first: if the folder fails now, the numbers are still on the screen.
    println!("{}", describe(&result.summary));
    result.write(out)?;
    println!("results: {}", out.display());
    verdict(&result.summary, a.allow_failures)
}

/// An error when the run is invalid or more requests failed than allowed.
fn verdict(s: &Summary, allow_failures: f64) -> Result<()> {
    let mut why = Vec::new();
    if let Some(note) = saturation_note(s) {
        why.push(note);
    }
    let bad = s.unsuccessful();
    if bad as f64 > allow_failures * s.requests as f64 {
        let kinds: Vec<String> = s
            .errors
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .chain((s.not_sent > 0).then(|| format!("not sent {}", s.not_sent)))
            .collect();
        why.push(format!(
            "{bad} of {} requests failed ({}), more than --allow-failures {allow_failures} allows",
            s.requests,
            kinds.join(", ")
        ));
    }
    if why.is_empty() {
        Ok(())
    } else {
        bail!("streamrec load: {}", why.join("; and "))
    }
}

fn merge(m: MergeArgs) -> Result<()> {
    check_fraction(m.allow_failures)?;
    if let Some(out) = &m.out {
        out::prepare(out, "--out", m.replace, &owned())?;
    }
    let merged = merge_dirs(&m.dirs, &MergeOptions { partial: m.partial })?;
    if m.json {
        println!("{}", serde_json::to_string_pretty(&merged.summary)?);
    } else {
        println!("{}", describe(&merged.summary));
    }
    if let Some(out) = &m.out {
        merged.write(out)?;
        if !m.json {
            println!("merged: {}", out.display());
        }
    }
    verdict(&merged.summary, m.allow_failures)
}
