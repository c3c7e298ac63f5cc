//! The serving experiment of `cargo xtask bench` (and `cargo xtask serving` alone): the
//! single-stream baseline and the `auto` plan, each behind `streamrec serve`, driven open-loop by
//! the load generator with Poisson arrivals and with the Azure trace over a sweep of offered QPS.
//!
//! For each plan and arrival process it finds the largest offered QPS whose p99 stays under a
//! bound (a point passes when every request succeeded, the achieved rate is within 2% of the
//! offered one and p99 <= the bound; a point that fails is measured once more and counts as over
//! only if it fails again), then measures latency at a common offered load (half the
//! baseline's largest passing QPS) in interleaved rounds. The two headline ratios (latency
//! reduction at the common load, throughput gain at the bound) are read against the run's own
//! noise floor: the round-to-round spread of the baseline, and for throughput also the search's
//! resolution. Writes serving.csv, serving-latency.csv, serving.md and three SVG plots.
//!
//! The load goes over HTTP (binary bodies) or, with `--serve-protocol grpc`, over KServe v2
//! gRPC (`streamrec serve --grpc-port 0`, the generator's lean unary `ModelInfer`). On a
//! machine with at least 4 (`placement::MIN_CPUS_TO_PIN`) CPUs the servers and the generator are pinned to
//! disjoint CPU sets (the generator gets one CPU per thread, the servers the rest; or
//! `--serve-cpus`/`--load-cpus`), and the report says which CPUs each had, the servers' read
//! back from /proc; on a smaller one, or with `--no-pin`, it says they were not pinned.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use streamrec_runtime::stats::median;

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use streamrec_loadgen::results::histogram;
use streamrec_loadgen::sizes::mlperf_quantiles;
use streamrec_loadgen::{
    default_connections, run_load, wait_ready, BatchSizes, BodyConfig, BodyFormat, CpuSet,
    LoadSpec, ModelInputs, Protocol, RunConfig, RunResult, ScheduleConfig, ScheduleKind, Shard,
    Target, Trace,
};

use crate::load::Guard;
mod placement;
mod report;

pub use placement::Pin;
use placement::{allowed_cpus, placement};

/// The published figures the headline ratios sit next to.
pub const PUBLISHED_LATENCY_REDUCTION: f64 = 0.278;
/// Published throughput gain over single-stream.
pub const PUBLISHED_THROUGHPUT_GAIN: f64 = 0.52;

/// The trace replayed beside Poisson (relative to the workspace root).
const TRACE: &str = "workloads/traces/azure-llm-2023-conv.csv";

/// What to run.
#[derive(Clone, Debug)]
pub struct Opts {
    /// Short run (CI): tiny, short points, one pass, one round.
    pub quick: bool,
    /// Model spec, relative to `root` or absolute.
    pub spec: PathBuf,
    /// Row cap for the spec's tables.
    pub row_cap: Option<u64>,
    /// Samples per request: a number, or `mlperf` (the MLPerf DLRM-v2 query sizes, 1-700).
    pub batch: BatchSizes,
    /// The p99 bound, milliseconds.
    pub p99_ms: f64,
    /// Seconds of load per point.
    pub secs: f64,
    /// Search passes (the max-QPS noise floor comes from their spread).
    pub passes: usize,
    /// Rounds at the common load.
    pub rounds: usize,
    /// First offered QPS of the sweep, and the factor between steps.
    pub start_qps: f64,
    /// Factor between sweep steps.
    pub growth: f64,
    /// Bisection steps after the first failing point.
    pub refine: usize,
    /// The `streamrec` binary; None: build `target/release/streamrec`.
    pub bin: Option<PathBuf>,
    /// Extra arguments for `streamrec serve` (e.g. `--backend cuda`).
    pub server_args: Vec<String>,
    /// Workspace root (workloads/ and the trace are found from it).
    pub root: PathBuf,
    /// Output folder.
    pub out: PathBuf,
    /// Start no new point after this many seconds (what was measured is still reported).
    pub deadline_s: Option<f64>,
    /// Threads of the load generator.
    pub load_threads: usize,
    /// HTTP (binary bodies) or gRPC.
    pub protocol: Protocol,
    /// Pin nothing (`--no-pin`).
    pub no_pin: bool,
    /// The servers' CPUs (`--serve-cpus`, with `--load-cpus`).
    pub serve_cpus: Option<CpuSet>,
    /// The generator's CPUs (`--load-cpus`, with `--serve-cpus`).
    pub load_cpus: Option<CpuSet>,
}

impl Opts {
    /// Defaults for a full or a quick run.
    pub fn new(quick: bool, root: PathBuf, out: PathBuf) -> Opts {
        Opts {
            quick,
            spec: PathBuf::from(if quick {
                "workloads/tiny.toml"
            } else {
                "workloads/streamrec-26.toml"
            }),
            row_cap: if quick { None } else { Some(100_000) },
            // Ranking-sized requests (a user's candidates) for the full run; one sample for the
            // quick one.
            batch: if quick {
                BatchSizes::Fixed(1)
            } else {
                BatchSizes::Mlperf
            },
            p99_ms: 10.0,
            secs: if quick { 0.5 } else { 3.0 },
            passes: if quick { 1 } else { 2 },
            rounds: if quick { 1 } else { 3 },
            start_qps: if quick { 500.0 } else { 100.0 },
            growth: if quick { 2.0 } else { 1.5 },
            refine: if quick { 1 } else { 2 },
            bin: None,
            server_args: Vec::new(),
            root,
            out,
            deadline_s: None,
            load_threads: 1,
            protocol: Protocol::Http,
            no_pin: false,
            serve_cpus: None,
            load_cpus: None,
        }
    }

    /// The most samples one request may carry (at least 256, the server's default max batch).
    pub fn max_request(&self) -> u32 {
        let largest = match &self.batch {
            BatchSizes::Fixed(n) => *n,
            _ => mlperf_quantiles().into_iter().max().unwrap_or(1),
        };
        largest.max(256)
    }

    /// The placement the options ask for; an error names the flags that do not go together.
    pub fn pin(&self) -> Result<Pin> {
        match (self.no_pin, &self.serve_cpus, &self.load_cpus) {
            (false, None, None) => Ok(Pin::Auto),
            (true, None, None) => Ok(Pin::Off),
            (true, _, _) => bail!("--no-pin does not go with --serve-cpus or --load-cpus"),
            (false, Some(server), Some(load)) => Ok(Pin::Sets {
                server: server.clone(),
                load: load.clone(),
            }),
            (false, Some(_), None) => bail!("--serve-cpus needs --load-cpus (disjoint from it)"),
            (false, None, Some(_)) => bail!("--load-cpus needs --serve-cpus (disjoint from it)"),
        }
    }

    /// Takes one serving option (and its value) if `flag` is one; false otherwise.
    pub fn take(&mut self, flag: &str, it: &mut std::slice::Iter<'_, String>) -> Result<bool> {
        let mut val = || -> Result<String> {
            it.next()
                .cloned()
                .with_context(|| format!("{flag} needs a value"))
        };
        let num = |v: String, lo: f64, hi: f64| -> Result<f64> {
            let x: f64 = v
                .parse()
                .with_context(|| format!("{flag}: `{v}` is not a number"))?;
            if !(x.is_finite() && x >= lo && x <= hi) {
                bail!("{flag}: {x} is not in [{lo}, {hi}]");
            }
            Ok(x)
        };
        match flag {
            "--p99-ms" => self.p99_ms = num(val()?, 0.01, 60_000.0)?,
            "--serve-spec" => self.spec = PathBuf::from(val()?),
            "--serve-row-cap" => self.row_cap = Some(num(val()?, 1.0, 1e12)? as u64),
            "--serve-batch" => {
                let v = val()?;
                self.batch = match v.as_str() {
                    "mlperf" => BatchSizes::Mlperf,
                    _ => BatchSizes::Fixed(num(v, 1.0, 65_536.0)? as u32),
                }
            }
            "--serve-secs" => self.secs = num(val()?, 0.1, 600.0)?,
            "--serve-passes" => self.passes = num(val()?, 1.0, 10.0)? as usize,
            "--serve-rounds" => self.rounds = num(val()?, 1.0, 20.0)? as usize,
            "--serve-start-qps" => self.start_qps = num(val()?, 1.0, 1e6)?,
            "--serve-growth" => self.growth = num(val()?, 1.05, 10.0)?,
            "--serve-bin" => self.bin = Some(PathBuf::from(val()?)),
            "--server-args" => {
                self.server_args = val()?.split_whitespace().map(String::from).collect()
            }
            "--serve-deadline-s" => self.deadline_s = Some(num(val()?, 1.0, 86_400.0)?),
            "--serve-load-threads" => self.load_threads = num(val()?, 1.0, 64.0)? as usize,
            "--serve-protocol" => {
                self.protocol = match val()?.as_str() {
                    "http" => Protocol::Http,
                    "grpc" => Protocol::Grpc,
                    v => bail!("--serve-protocol: `{v}` is not http or grpc"),
                }
            }
            "--no-pin" => self.no_pin = true,
            "--serve-cpus" => self.serve_cpus = Some(CpuSet::parse(flag, &val()?)?),
            "--load-cpus" => self.load_cpus = Some(CpuSet::parse(flag, &val()?)?),
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// Help for the serving options (shared by `bench` and `serving`).
pub const HELP: &str = "\
  serving options (also for `cargo xtask bench`):
    --p99-ms MS            p99 bound of the max-QPS search (default 10)
    --serve-spec FILE      model (default workloads/streamrec-26.toml; --quick: tiny.toml)
    --serve-row-cap N      row cap of the served model (default 100000; --quick: none)
    --serve-batch B        samples per request: a number, or mlperf (MLPerf DLRM-v2 query sizes,
                           1-700; the default; --quick: 1)
    --serve-secs S         seconds of load per point (default 3; --quick: 0.5)
    --serve-passes N       max-QPS searches per plan and schedule (default 2; --quick: 1)
    --serve-rounds N       rounds at the common load (default 3; --quick: 1)
    --serve-start-qps Q    first point of the sweep (default 100; --quick: 500)
    --serve-growth F       factor between points (default 1.5; --quick: 2)
    --serve-bin PATH       the streamrec binary (default: cargo build --release --bin streamrec)
    --server-args \"...\"    extra arguments for streamrec serve (e.g. \"--backend cuda\")
    --serve-deadline-s S   start no new point after S seconds; report what was measured
    --serve-load-threads N threads of the load generator (default 1)
    --serve-protocol P     http (binary bodies; the default) or grpc (KServe v2 gRPC ModelInfer
                           with raw contents, the servers started with --grpc-port 0)
    --serve-cpus LIST      pin the servers to these CPUs (e.g. 0-5; with --load-cpus)
    --load-cpus LIST       pin the load generator to these CPUs (e.g. 6-7; disjoint from
                           --serve-cpus). Default: with at least 4 CPUs the generator gets one per
                           thread (the highest), the servers the rest; with fewer, not pinned
    --no-pin               pin nothing
";

/// One measured point of a sweep.
#[derive(Clone, Debug)]
pub(crate) struct Point {
    /// "search" (a sweep point), "recheck" (a failing sweep point measured again) or "common"
    /// (a round at the common load).
    pub(crate) phase: &'static str,
    /// The search pass or the round, from 0.
    pub(crate) pass: usize,
    pub(crate) schedule: &'static str,
    pub(crate) plan: &'static str,
    pub(crate) qps: f64,
    pub(crate) offered: f64,
    pub(crate) achieved: f64,
    /// Samples answered per second (requests times their sizes).
    pub(crate) samples_per_s: f64,
    pub(crate) requests: u64,
    pub(crate) failed: u64,
    pub(crate) p50: u64,
    pub(crate) p90: u64,
    pub(crate) p99: u64,
    pub(crate) p999: u64,
    pub(crate) max: u64,
    pub(crate) ok: bool,
}

/// A running `streamrec serve` and what it said about its plan.
struct ServerProc {
    /// Where the load goes: its HTTP URL, or `grpc://ADDR` of its gRPC endpoint.
    url: String,
    plan_line: String,
    /// The CPUs it may run on, from /proc.
    cpus: String,
    _guard: Guard,
}

/// The calling thread pinned to a set until dropped (a child started meanwhile inherits it).
struct PinnedHere(CpuSet);

impl PinnedHere {
    fn to(cpus: &CpuSet) -> Result<PinnedHere> {
        let before = CpuSet::available()?;
        cpus.pin_current_thread()
            .with_context(|| format!("pinning to CPUs {cpus}"))?;
        Ok(PinnedHere(before))
    }
}

impl Drop for PinnedHere {
    fn drop(&mut self) {
        let _ = self.0.pin_current_thread();
    }
}

fn start_server(
    o: &Opts,
    bin: &Path,
    (algo, model): (&str, &str),
    cpus: Option<&CpuSet>,
) -> Result<ServerProc> {
    let mut cmd = Command::new(bin);
    cmd.arg("serve")
        .arg(&o.spec)
        .args(["--port", "0", "--algo", algo]);
    if o.protocol == Protocol::Grpc {
        cmd.args(["--grpc-port", "0"]);
    }
    if let Some(c) = o.row_cap {
        cmd.args(["--row-cap", &c.to_string()]);
    }
    if o.max_request() > 256 {
        // Room for the largest request (the server refuses one over its max batch).
        cmd.args(["--max-batch", &o.max_request().to_string()]);
    }
    cmd.args(&o.server_args);
    // The server inherits the CPUs of the thread that starts it (its engine sizes its pool to
    // them).
    let pinned = cpus.map(PinnedHere::to).transpose()?;
    let mut child = cmd
        .current_dir(&o.root)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {} serve", bin.display()))?;
    drop(pinned);
    let allowed = allowed_cpus(child.id()).unwrap_or_else(|| "unknown".into());
    let stdout = child.stdout.take().context("server stdout")?;
    let stderr = child.stderr.take().context("server stderr")?;
    let guard = Guard(child);
    // The server's log: kept for its plan line; the last lines are shown if it fails.
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    {
        let log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
                log.lock().expect("log lock").push(line);
            }
        });
    }
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let Some(url) = line.trim().strip_prefix("listening on ").map(String::from) else {
        std::thread::sleep(Duration::from_millis(200));
        let log = log.lock().expect("log lock").join("\n");
        bail!("streamrec serve --algo {algo} did not start:\n{log}");
    };
    wait_ready(&Target::new(url.clone(), model), Duration::from_secs(300))?;
    let find = |pat: &str| {
        log.lock()
            .expect("log lock")
            .iter()
            .rev()
            .find(|l| l.contains(pat))
            .cloned()
    };
    let plan_line = find("; ready").unwrap_or_default();
    let url = match o.protocol {
        Protocol::Http => url,
        Protocol::Grpc => {
            // `grpc on ADDR`, printed on stderr once the gRPC endpoint is bound.
            let mut line = None;
            for _ in 0..100 {
                line = find("grpc on ");
                if line.is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let line = line.with_context(|| {
                format!("streamrec serve --algo {algo} printed no `grpc on ADDR` line")
            })?;
            let addr = line.trim().trim_start_matches("grpc on ").to_string();
            let target = Target::new(format!("grpc://{addr}"), model);
            wait_ready(&target, Duration::from_secs(30))?;
            target.url
        }
    };
    Ok(ServerProc {
        url,
        plan_line,
        cpus: allowed,
        _guard: guard,
    })
}

/// The `streamrec` binary to serve with: the given one, or a release build.
fn binary(o: &Opts) -> Result<PathBuf> {
    if let Some(b) = &o.bin {
        if !b.is_file() {
            bail!("--serve-bin {}: no such file", b.display());
        }
        return Ok(b.clone());
    }
    crate::common::build_release_cli(&o.root)
}

struct Ctx<'a> {
    o: &'a Opts,
    /// The generator's CPUs (None: not pinned).
    load_cpus: Option<CpuSet>,
    inputs: ModelInputs,
    model: String,
    started: Instant,
    bar: ProgressBar,
    points: Vec<Point>,
}

impl<'a> Ctx<'a> {
    /// Nothing measured yet; the progress bar sized for the searches and the rounds.
    fn new(o: &'a Opts, inputs: ModelInputs, model: String, load_cpus: Option<CpuSet>) -> Self {
        // A rough count for the progress bar: about 10 sweep points per search, plus the rounds.
        let est = (o.passes * 4 * (8 + o.refine) + o.rounds * 4) as u64;
        let bar = ProgressBar::new(est).with_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} {elapsed_precise} {msg}")
                .expect("valid template"),
        );
        Ctx {
            o,
            load_cpus,
            inputs,
            model,
            started: Instant::now(),
            bar,
            points: Vec::new(),
        }
    }

    fn out_of_time(&self) -> bool {
        self.o
            .deadline_s
            .is_some_and(|d| self.started.elapsed().as_secs_f64() >= d)
    }

    fn spec(&self, kind: &ScheduleKind, qps: f64, seed: u64) -> LoadSpec {
        LoadSpec {
            schedule: ScheduleConfig {
                kind: kind.clone(),
                qps,
                duration: Duration::from_secs_f64(self.o.secs),
                max_requests: None,
                seed,
                shard: Shard::ALL,
            },
            batch: self.o.batch,
            max_batch: self.o.max_request(),
            bodies: BodyConfig {
                format: match self.o.protocol {
                    Protocol::Http => BodyFormat::Binary,
                    Protocol::Grpc => BodyFormat::Grpc,
                },
                ..BodyConfig::default()
            },
            run: RunConfig {
                // HTTP/1.1: a connection per request in flight; HTTP/2: a few carry them all.
                connections: match self.o.protocol {
                    Protocol::Http => 512,
                    Protocol::Grpc => default_connections(Protocol::Grpc),
                },
                warm_connections: 32,
                timeout: Duration::from_secs(10),
                threads: self.o.load_threads,
                cpus: self.load_cpus.clone(),
                ..RunConfig::default()
            },
        }
    }

    /// Load not measured before the searches: the start QPS on Poisson with the experiment's
    /// request sizes for half a point's time (at least 0.2 s), so what a server does on its first
    /// requests of each size (pages touched, buffers grown, connections opened; a capture on a
    /// GPU that warm-up missed) stays out of the first point. Says what it saw; fails only if
    /// the load could not run.
    fn warm_up(&mut self, plan: &str, url: &str) -> Result<()> {
        let mut spec = self.spec(&ScheduleKind::Poisson, self.o.start_qps, 0);
        spec.schedule.duration = Duration::from_secs_f64((self.o.secs / 2.0).max(0.2));
        let r = run_load(&Target::new(url, self.model.clone()), &self.inputs, &spec)?;
        let s = &r.summary;
        let line = format!(
            "  {plan:>6} warm-up (not recorded): {} requests at {:.0} req/s, p99 {} us, {} failed",
            s.requests,
            s.offered_qps,
            s.latency_us.p99,
            s.failed()
        );
        self.bar.suspend(|| eprintln!("{line}"));
        Ok(())
    }

    /// Offers `qps` to `url` for one point and records it.
    fn measure(
        &mut self,
        (phase, pass): (&'static str, usize),
        (sched, kind): (&'static str, &ScheduleKind),
        (plan, url): (&'static str, &str),
        qps: f64,
        seed: u64,
    ) -> Result<(Point, RunResult)> {
        let label = match phase {
            "common" => "round",
            "recheck" => "recheck, pass",
            _ => "pass",
        };
        self.bar.set_message(format!(
            "{plan} {sched} {label} {}: {qps:.0} req/s",
            pass + 1
        ));
        let r = run_load(
            &Target::new(url, self.model.clone()),
            &self.inputs,
            &self.spec(kind, qps, seed),
        )?;
        let s = &r.summary;
        let bound_us = (self.o.p99_ms * 1000.0) as u64;
        // A point whose generator fell behind (summary.saturated) measured nothing it offered.
        let ok = s.failed() == 0
            && !s.saturated
            && s.achieved_qps >= 0.98 * s.offered_qps
            && s.latency_us.p99 <= bound_us;
        let p = Point {
            phase,
            pass,
            schedule: sched,
            plan,
            qps,
            offered: s.offered_qps,
            achieved: s.achieved_qps,
            samples_per_s: s.samples_per_s,
            requests: s.requests,
            failed: s.failed(),
            p50: s.latency_us.p50,
            p90: s.latency_us.p90,
            p99: s.latency_us.p99,
            p999: s.latency_us.p999,
            max: s.latency_us.max,
            ok,
        };
        let line = format!(
            "  {plan:>6} {sched:>7} {label} {}: offered {:>8.1} req/s, achieved {:>8.1}, p50 {:>6} us, p99 {:>7} us, {} failed: {}",
            pass + 1,
            p.offered,
            p.achieved,
            p.p50,
            p.p99,
            p.failed,
            if ok { "within the bound" } else { "over" }
        );
        self.bar.suspend(|| eprintln!("{line}"));
        self.bar.inc(1);
        self.points.push(p.clone());
        // Let the server drain before the next point.
        std::thread::sleep(Duration::from_millis(if self.o.quick { 50 } else { 300 }));
        Ok((p, r))
    }

    /// The largest offered QPS within the bound ([`max_qps`] over this plan and schedule,
    /// measuring each point). None: not even the first point passed, or the deadline cut the
    /// search short.
    fn search(
        &mut self,
        pass: usize,
        sched: (&'static str, &ScheduleKind),
        plan: (&'static str, &str),
    ) -> Result<Option<f64>> {
        let sweep = Sweep {
            start: self.o.start_qps,
            growth: self.o.growth,
            refine: self.o.refine,
        };
        max_qps(sweep, |q, seed, recheck| {
            if self.out_of_time() {
                return Ok(Probe::OutOfTime);
            }
            let phase = if recheck { "recheck" } else { "search" };
            let seed = seed + 1000 * pass as u64;
            let ok = self.measure((phase, pass), sched, plan, q, seed)?.0.ok;
            Ok(if ok { Probe::Within } else { Probe::Over })
        })
    }
}

/// How the max-QPS search moves: its first offered QPS, the factor between sweep points and the
/// bisection steps after the sweep.
#[derive(Clone, Copy, Debug)]
struct Sweep {
    start: f64,
    growth: f64,
    refine: usize,
}

/// What one measured point of the search says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Probe {
    Within,
    Over,
    /// The deadline came first: nothing was measured.
    OutOfTime,
}

/// The largest offered QPS within the bound: a geometric sweep up to the first point over it
/// (or down from the first point, if that one is over), then `refine` bisections (geometric
/// midpoints). `probe(qps, seed, recheck)` measures one point.
///
/// A point over the bound is measured once more, with another seed (`recheck` true), and counts
/// as over only if that is over too: one p99 spike from a busy host must not end a search (a
/// GPU run's Poisson search once stopped at 420 req/s on a single spike where the same server's
/// trace search reached 13,454). A rate truly over the bound fails both times.
///
/// None: not even the lowest point passed, or the deadline cut the search short (no maximum is
/// reported from a search that never found its upper side).
fn max_qps(
    sw: Sweep,
    mut probe: impl FnMut(f64, u64, bool) -> Result<Probe>,
) -> Result<Option<f64>> {
    // Within, Over (twice), or None when out of time.
    let mut within = |q: f64, seed: u64| -> Result<Option<bool>> {
        Ok(match probe(q, seed, false)? {
            Probe::Within => Some(true),
            Probe::OutOfTime => None,
            Probe::Over => match probe(q, seed + 100_000, true)? {
                Probe::Within => Some(true),
                Probe::Over => Some(false),
                Probe::OutOfTime => None,
            },
        })
    };
    let mut q = sw.start;
    let (mut lo, mut hi): (Option<f64>, Option<f64>) = (None, None);
    for step in 0..40 {
        if !(0.5..=1e6).contains(&q) {
            break;
        }
        let Some(ok) = within(q, step)? else {
            return Ok(None);
        };
        match (ok, lo, hi) {
            // Going up until a point is over the bound.
            (true, _, None) => {
                lo = Some(q);
                q *= sw.growth;
            }
            (false, Some(_), _) => {
                hi = Some(q);
                break;
            }
            // The first point was over the bound: going down until one is within it.
            (false, None, _) => {
                hi = Some(q);
                q /= sw.growth;
            }
            (true, _, Some(_)) => {
                lo = Some(q);
                break;
            }
        }
    }
    if let (Some(mut l), Some(mut h)) = (lo, hi) {
        for step in 0..sw.refine {
            let mid = (l * h).sqrt();
            match within(mid, 500 + step as u64)? {
                Some(true) => l = mid,
                Some(false) => h = mid,
                None => return Ok(None),
            }
        }
        lo = Some(l);
    }
    Ok(lo)
}

/// A ratio read against a noise floor.
pub(crate) fn verdict(change: f64, noise: f64, up: &str, down: &str) -> String {
    if !change.is_finite() {
        "not measured".into()
    } else if change.abs() <= noise {
        "no difference".into()
    } else if change > 0.0 {
        up.into()
    } else {
        down.into()
    }
}

/// The two arrival processes, Poisson first.
pub(crate) type Schedules = [(&'static str, ScheduleKind); 2];

/// What the searches and the common-load rounds measured.
pub(crate) struct Measured {
    /// max QPS per (schedule, plan), one per pass.
    pub(crate) maxes: Vec<Vec<Vec<Option<f64>>>>,
    /// serving-latency.csv: the common-load rounds.
    pub(crate) lat_csv: String,
    /// Per schedule: the common load and each plan's rounds at it.
    pub(crate) common: Vec<(f64, [Vec<Point>; 2])>,
    /// Each plan's latency at the common load (Poisson), merged over the rounds.
    pub(crate) cdf: [Histogram<u64>; 2],
}

/// Runs the serving experiment; returns the markdown section for report.md (also written to
/// `out/serving.md`).
pub fn run(o: &Opts) -> Result<String> {
    std::fs::create_dir_all(&o.out).with_context(|| o.out.display().to_string())?;
    let spec_path = o.root.join(&o.spec);
    let inputs = ModelInputs::from_spec_file(&spec_path, o.row_cap)?;
    let model = streamrec_graph::ModelSpec::load(&spec_path, o.row_cap.map(|c| c as usize))
        .with_context(|| spec_path.display().to_string())?
        .name;
    let trace = Trace::load(&o.root.join(TRACE))?;
    let bin = binary(o)?;
    let place = placement(&o.pin()?, &CpuSet::available()?, o.load_threads)?;
    eprintln!("serving experiment: {}", place.note);
    let [single, auto] = start_servers(o, &bin, &model, place.server.as_ref())?;
    let schedules: Schedules = [
        ("poisson", ScheduleKind::Poisson),
        ("trace", ScheduleKind::Trace(Arc::new(trace))),
    ];
    let plans: [(&'static str, &str); 2] = [("single", &single.url), ("auto", &auto.url)];
    let mut cx = Ctx::new(o, inputs, model.clone(), place.load.clone());
    for (plan, url) in plans {
        cx.warm_up(plan, url)?;
    }
    let measured = measure_all(&mut cx, &schedules, plans)?;
    cx.bar.finish_and_clear();
    // Tables and files.
    std::fs::write(o.out.join("serving.csv"), report::points_csv(&cx.points))?;
    std::fs::write(o.out.join("serving-latency.csv"), &measured.lat_csv)?;
    let resolution = o.growth.powf(0.5f64.powi(o.refine as i32)) - 1.0;
    let cpus = format!(
        "CPUs: {}; /proc gives the single server CPUs {}, the auto server {}.",
        place.note, single.cpus, auto.cpus
    );
    let mut md = report::intro(o, &model, resolution, [&single.plan_line, &auto.plan_line]);
    let _ = writeln!(md, "{cpus}\n");
    let (summary_csv, headline) = report::summary(o, &schedules, &measured, resolution, &mut md);
    std::fs::write(o.out.join("serving-summary.csv"), &summary_csv)?;
    let _ = writeln!(md, "\n{headline}\n");
    report::plots(o, &model, &schedules, &cx.points, &measured, &mut md)?;
    let _ = writeln!(
        md,
        "Data: [serving.csv](serving.csv) (every point), [serving-latency.csv](serving-latency.csv) \
         (the common-load rounds), [serving-summary.csv](serving-summary.csv).\n"
    );
    if cx.out_of_time() {
        let _ = writeln!(
            md,
            "The run reached its deadline ({} s): later points were not measured.\n",
            o.deadline_s.unwrap_or_default()
        );
    }
    std::fs::write(o.out.join("serving.md"), &md)?;
    println!("\nserving experiment ({model}):");
    print!("{}", report::summary_table(&summary_csv));
    println!("{headline}");
    println!("{cpus}");
    Ok(md)
}

/// `streamrec serve --algo single` and `--algo auto`, each its own process (on `cpus` when
/// given).
fn start_servers(
    o: &Opts,
    bin: &Path,
    model: &str,
    cpus: Option<&CpuSet>,
) -> Result<[ServerProc; 2]> {
    eprintln!(
        "serving experiment: {model} (batch {} per request) over {}, p99 bound {} ms, {} s per \
         point",
        o.batch, o.protocol, o.p99_ms, o.secs
    );
    let single = start_server(o, bin, ("single", model), cpus)?;
    let auto = start_server(o, bin, ("auto", model), cpus)?;
    eprintln!("  single: {}", single.plan_line);
    eprintln!("  auto:   {}", auto.plan_line);
    eprintln!(
        "  CPUs: single server {}, auto server {}",
        single.cpus, auto.cpus
    );
    Ok([single, auto])
}

/// Per schedule, Poisson first, then the trace: the max-QPS searches, then the rounds at the
/// common load. Each has its searches and its common-load rounds before the next starts, so a
/// run cut off by its deadline has whole results for the first.
fn measure_all(
    cx: &mut Ctx,
    schedules: &Schedules,
    plans: [(&'static str, &str); 2],
) -> Result<Measured> {
    let mut m = Measured {
        maxes: vec![vec![Vec::new(); 2]; 2],
        lat_csv: String::from(
            "schedule,plan,round,offered_qps,achieved_qps,failed,p50_us,p90_us,p99_us,p999_us,max_us\n",
        ),
        common: Vec::new(),
        cdf: [histogram(), histogram()],
    };
    for (si, (sn, sk)) in schedules.iter().enumerate() {
        // max QPS per plan, one per pass; passes interleave the plans.
        for pass in 0..cx.o.passes {
            for pi in 0..2 {
                // Passes alternate which plan goes first.
                let plan = if pass % 2 == 0 { pi } else { 1 - pi };
                let max = cx.search(pass, (sn, sk), plans[plan])?;
                m.maxes[si][plan].push(max);
            }
        }
        // Latency at a common offered load: half the baseline's largest passing QPS.
        let base: Vec<f64> = m.maxes[si][0].iter().flatten().copied().collect();
        let q = if base.is_empty() {
            cx.o.start_qps / 2.0
        } else {
            median(&base) / 2.0
        };
        let got = common_rounds(cx, si, (sn, sk), plans, q, &mut m)?;
        m.common.push((q, got));
    }
    Ok(m)
}

/// The interleaved rounds at the common load `q` on one schedule: each round's row in
/// serving-latency.csv and, on Poisson, its latencies in the plan's CDF.
fn common_rounds(
    cx: &mut Ctx,
    si: usize,
    (sn, sk): (&'static str, &ScheduleKind),
    plans: [(&'static str, &str); 2],
    q: f64,
    m: &mut Measured,
) -> Result<[Vec<Point>; 2]> {
    let mut got: [Vec<Point>; 2] = [Vec::new(), Vec::new()];
    for round in 0..cx.o.rounds {
        for j in 0..2 {
            let plan = (j + round) % 2;
            if cx.out_of_time() {
                break;
            }
            let (p, r) = cx.measure(
                ("common", round),
                (sn, sk),
                plans[plan],
                q,
                9000 + round as u64,
            )?;
            let _ = writeln!(
                m.lat_csv,
                "{sn},{},{},{:.1},{:.1},{},{},{},{},{},{}",
                p.plan,
                round + 1,
                p.offered,
                p.achieved,
                p.failed,
                p.p50,
                p.p90,
                p.p99,
                p.p999,
                p.max
            );
            if si == 0 {
                m.cdf[plan].add(&r.latency).context("merging histograms")?;
            }
            got[plan].push(p);
        }
    }
    Ok(got)
}

/// The workspace root: `--root`, else the one this binary was built in when it still exists
/// (cargo xtask), else the current folder (a bundled binary on another machine).
pub fn default_root() -> PathBuf {
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    if built.join("workloads").is_dir() {
        built
    } else {
        PathBuf::from(".")
    }
}

/// `cargo xtask serving`: the serving experiment alone.
pub fn main(args: &[String]) -> Result<()> {
    let mut quick = false;
    let mut out: Option<PathBuf> = None;
    let mut root = default_root();
    // Two passes: --quick changes the defaults the other options then override.
    if args.iter().any(|a| a == "--quick") {
        quick = true;
    }
    let mut o = Opts::new(quick, root.clone(), PathBuf::new());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => {}
            "--out" => out = Some(PathBuf::from(it.next().context("--out needs a folder")?)),
            "--root" => root = PathBuf::from(it.next().context("--root needs a folder")?),
            "-h" | "--help" => {
                print!("cargo xtask serving [--quick] [--out DIR] [--root DIR]\n{HELP}");
                return Ok(());
            }
            x => {
                if !o.take(x, &mut it)? {
                    bail!("serving: unknown option `{x}`\n{HELP}");
                }
            }
        }
    }
    o.root = root;
    o.out = out.unwrap_or_else(|| {
        PathBuf::from("results").join(format!("{}-serving", crate::common::today()))
    });
    run(&o)?;
    println!(
        "wrote {}/serving.md, serving*.csv, serving-*.svg",
        o.out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plots;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options_are_bounded_and_named_in_errors() {
        let mut o = Opts::new(true, PathBuf::from("."), PathBuf::from("out"));
        for (flag, bad) in [
            ("--p99-ms", "0"),
            ("--p99-ms", "NaN"),
            ("--serve-secs", "100000"),
            ("--serve-growth", "1"),
            ("--serve-load-threads", "0"),
            ("--serve-batch", "x"),
        ] {
            let a = args(&[bad]);
            let e = o.take(flag, &mut a.iter()).unwrap_err().to_string();
            assert!(e.contains(flag), "{flag} {bad}: {e}");
        }
        let a = args(&["2.5"]);
        assert!(o.take("--p99-ms", &mut a.iter()).unwrap());
        assert_eq!(o.p99_ms, 2.5);
        let a = args(&["--backend cuda"]);
        assert!(o.take("--server-args", &mut a.iter()).unwrap());
        assert_eq!(o.server_args, ["--backend", "cuda"]);
        assert!(!o.take("--unknown", &mut args(&[]).iter()).unwrap());
        let e = o.take("--p99-ms", &mut args(&[]).iter()).unwrap_err();
        assert!(e.to_string().contains("needs a value"), "{e}");
    }

    #[test]
    fn cpu_and_protocol_options_are_checked() {
        let mut o = Opts::new(true, PathBuf::from("."), PathBuf::from("out"));
        assert_eq!(o.pin().unwrap(), Pin::Auto);
        let avail = CpuSet::available().unwrap();
        let first = avail.cpus()[0].to_string();
        assert!(o.take("--serve-cpus", &mut args(&[&first]).iter()).unwrap());
        let e = o.pin().unwrap_err().to_string();
        assert_eq!(e, "--serve-cpus needs --load-cpus (disjoint from it)");
        assert!(o.take("--load-cpus", &mut args(&[&first]).iter()).unwrap());
        assert!(matches!(o.pin().unwrap(), Pin::Sets { .. }));
        assert!(o.take("--no-pin", &mut args(&[]).iter()).unwrap());
        assert!(o
            .pin()
            .unwrap_err()
            .to_string()
            .contains("--no-pin does not go"));
        let beyond = (avail.cpus().last().unwrap() + 1).to_string();
        let e = o
            .take("--load-cpus", &mut args(&[&beyond]).iter())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("--load-cpus {beyond}: CPU {beyond} is not one")),
            "{e}"
        );
        let e = o
            .take("--serve-protocol", &mut args(&["udp"]).iter())
            .unwrap_err()
            .to_string();
        assert_eq!(e, "--serve-protocol: `udp` is not http or grpc");
        assert!(o
            .take("--serve-protocol", &mut args(&["grpc"]).iter())
            .unwrap());
        assert_eq!(o.protocol, Protocol::Grpc);
    }

    /// A server that holds the bound up to `limit` req/s, and is over it once at each rate in
    /// `spikes` (the first time that rate is measured); the probes it saw.
    fn fake(limit: f64, spikes: &[f64]) -> (Option<f64>, Vec<(f64, bool)>) {
        let mut seen: Vec<(f64, bool)> = Vec::new();
        let sweep = Sweep {
            start: 100.0,
            growth: 1.5,
            refine: 2,
        };
        let got = max_qps(sweep, |q, _seed, recheck| {
            let spike = spikes.iter().any(|s| (s - q).abs() < 1e-9)
                && !seen.iter().any(|&(p, _)| (p - q).abs() < 1e-9);
            seen.push((q, recheck));
            Ok(if q <= limit && !spike {
                Probe::Within
            } else {
                Probe::Over
            })
        })
        .unwrap();
        (got, seen)
    }

    #[test]
    fn the_max_qps_search_rechecks_a_failing_point_before_it_stops() {
        // A steady server: the sweep 100, 150, 225, 337.5, 506.25 goes over at 759.4 (checked
        // twice), then two bisections: 620.0 over (checked twice), 560.3 within.
        let (got, seen) = fake(600.0, &[]);
        let m = got.expect("a maximum");
        assert!(m > 506.0 && m <= 600.0, "max {m}");
        assert_eq!(seen.iter().filter(|p| p.1).count(), 2, "{seen:?}");
        // Only failing points are measured again, each right after its failure.
        for w in seen.windows(2) {
            if w[1].1 {
                assert_eq!(w[0].0, w[1].0);
                assert!(w[0].0 > 600.0, "{seen:?}");
            }
        }
        // One p99 spike at 225 req/s must not end the search there.
        let (spiked, seen) = fake(600.0, &[225.0]);
        assert_eq!(spiked, got, "{seen:?}");
        assert!(seen.contains(&(225.0, true)));
        // Nor a spike during the bisection.
        let mid = (506.25f64 * 759.375).sqrt();
        assert_eq!(fake(600.0, &[mid]).0, got);
        // Starting over the bound, the sweep goes down until a point holds it.
        let low = fake(40.0, &[]).0.expect("a maximum");
        assert!(low > 29.0 && low <= 40.0, "max {low}");
        // Nothing holds the bound: no maximum.
        assert_eq!(fake(0.1, &[]).0, None);
    }

    #[test]
    fn the_max_qps_search_stops_without_a_maximum_when_out_of_time() {
        let mut n = 0;
        let sweep = Sweep {
            start: 100.0,
            growth: 2.0,
            refine: 3,
        };
        let got = max_qps(sweep, |q, _, _| {
            n += 1;
            Ok(match n {
                1..=3 => Probe::Within,
                _ if q > 0.0 => Probe::OutOfTime,
                _ => unreachable!(),
            })
        })
        .unwrap();
        assert_eq!(got, None);
        assert_eq!(n, 4);
    }

    #[test]
    fn verdicts_read_the_noise_floor() {
        assert_eq!(verdict(0.05, 0.10, "up", "down"), "no difference");
        assert_eq!(verdict(-0.05, 0.10, "up", "down"), "no difference");
        assert_eq!(verdict(0.20, 0.10, "up", "down"), "up");
        assert_eq!(verdict(-0.20, 0.10, "up", "down"), "down");
        assert_eq!(verdict(f64::NAN, 0.10, "up", "down"), "not measured");
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn plots_are_svg_with_every_series() {
        let dir = std::env::temp_dir().join(format!("streamrec-plots-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pts = [
            ("single", 100.0, 300.0, 900.0),
            ("single", 200.0, 320.0, 1500.0),
            ("auto", 100.0, 250.0, 700.0),
            ("auto", 200.0, 260.0, 800.0),
        ];
        let f = dir.join("lat.svg");
        plots::latency_vs_qps(&f, "t", &pts, 10_000.0).unwrap();
        let s = std::fs::read_to_string(&f).unwrap();
        for label in [
            "<svg",
            "single p50",
            "single p99",
            "auto p50",
            "auto p99",
            "p99 bound",
        ] {
            assert!(s.contains(label), "{label} missing");
        }
        let f = dir.join("bars.svg");
        plots::throughput_bars(
            &f,
            "t",
            &[
                ("poisson".into(), 1000.0, 1500.0),
                ("trace".into(), 900.0, f64::NAN),
            ],
        )
        .unwrap();
        let s = std::fs::read_to_string(&f).unwrap();
        assert!(s.contains("1500") && s.contains("900") && s.contains("trace"));
        // Bars in each plan's colour (the missing one left out), plus one legend swatch each.
        let filled = |c: &str| s.matches(&format!("fill=\"{c}\"")).count();
        assert_eq!(filled("#4477AA"), 3, "{s}");
        assert_eq!(filled("#EE6677"), 2, "{s}");
        let mut h1 = histogram();
        let mut h2 = histogram();
        for v in 1..=100u64 {
            h1.record(v * 10).unwrap();
            h2.record(v * 7).unwrap();
        }
        let f = dir.join("cdf.svg");
        plots::latency_cdf(&f, "t", &[("single", &h1), ("auto", &h2)]).unwrap();
        let s = std::fs::read_to_string(&f).unwrap();
        assert!(s.contains("single") && s.contains("auto") && s.contains("<polyline"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
