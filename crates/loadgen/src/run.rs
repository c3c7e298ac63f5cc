//! The open-loop sender: each request leaves at its intended time whether or not earlier ones
//! have returned, over a pool of keep-alive HTTP/1.1 connections (tokio + hyper's client
//! connections), or for a `grpc://` target as a unary `ModelInfer` call over a few HTTP/2
//! connections ([`crate::grpc`]; calls are dealt to them in turn, each carrying many at once),
//! and its latency runs from the intended time, so a slow server cannot hide its queueing (no
//! coordinated omission).
//!
//! A pacer task waits for each intended time on a timerfd (microsecond precision on the
//! runtime's own event loop; tokio's timers tick in milliseconds) and starts the request, on
//! one thread by default (`threads = 1`: pacing, sending and receiving on the calling thread,
//! so no thread has to wake another); the request takes an idle connection, or opens one while
//! fewer than `connections` are open, or waits for one (still timed from its intended time).
//!
//! Every request ends in exactly one outcome: a status (2xx is success, every other status is
//! counted by code), a timeout (counted from the intended time), a connection failure or an I/O
//! error, or "not sent"; nothing is dropped. A gRPC call ends in a gRPC status, counted under
//! the HTTP status it corresponds to ([`crate::grpc::http_status`]: `UNAVAILABLE`, the server's
//! overload, is `status_503` as over HTTP) and by name in [`Summary::grpc_status`]; an `OK`
//! answer must hold one finite score per sample, else it is `malformed`.
//!
//! With [`RunConfig::cpus`] every thread of the run is pinned to those CPUs: the calling thread
//! while the run lasts (it gets its own mask back after), and the runtime's threads, started
//! by it once pinned, inherit its mask.
//!
//! The send lag (intended time to the start of the request on the runtime) measures the
//! generator itself. A request started more than [`RunConfig::max_send_lag`] late is late; a
//! request the pacer reaches only after its intended time plus the timeout is not sent at all
//! (it could only have timed out: the generator stops sending what it cannot send in time, so
//! a run ends within its duration plus the timeout). More than 1% late
//! ([`crate::results::LATE_FRACTION`]) and the summary says the generator saturated: the run is
//! invalid, as MLPerf LoadGen marks one whose generator fell behind.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use indicatif::ProgressBar;
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore};

use crate::body::{grpc_message, Bodies, Body, BodyFormat};
use crate::cpus::CpuSet;
use crate::error::LoadError;
use crate::grpc::{GrpcConn, GrpcError};
use crate::results::{
    histogram, saturated, Outcome, Percentiles, Record, RunResult, Summary, SUMMARY_VERSION,
};
use crate::schedule::Schedule;

/// Triton's binary tensor data extension: the length of the JSON header.
const HEADER_LENGTH: HeaderName = HeaderName::from_static("inference-header-content-length");

/// Most keep-alive connections per run.
pub const MAX_CONNECTIONS: usize = 4096;
/// Longest request timeout.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// Most runtime threads.
pub const MAX_THREADS: usize = 64;
/// Farthest in the future a synchronised start may be.
pub const MAX_START_DELAY: Duration = Duration::from_secs(3600);
/// The default send-lag bound (`--max-send-lag`).
pub const DEFAULT_MAX_SEND_LAG: Duration = Duration::from_millis(10);

/// The protocol of a run, chosen by the target URL's scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// `http://`: KServe v2 REST (JSON or Triton's binary extension), HTTP/1.1.
    Http,
    /// `grpc://`: KServe v2 gRPC (`inference.GRPCInferenceService/ModelInfer`), HTTP/2.
    Grpc,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Http => "http",
            Protocol::Grpc => "grpc",
        })
    }
}

/// The default number of connections (`--connections`) for each protocol: HTTP/1.1 carries
/// one request at a time per connection, HTTP/2 many.
pub fn default_connections(p: Protocol) -> usize {
    match p {
        Protocol::Http => 64,
        Protocol::Grpc => 4,
    }
}

/// The server and model a run targets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Base URL: `http://host:port` (an optional path prefix is kept), or `grpc://host:port`
    /// for KServe v2 gRPC.
    pub url: String,
    /// Model name.
    pub model: String,
    /// Model version (None: the server's default).
    pub version: Option<String>,
}

/// Where requests go, resolved from a [`Target`].
#[derive(Clone, Debug)]
pub(crate) struct Endpoint {
    pub(crate) protocol: Protocol,
    pub(crate) authority: String,
    pub(crate) host: HeaderValue,
    pub(crate) base: String,
}

impl Target {
    /// A target for `model` at `url`.
    pub fn new(url: impl Into<String>, model: impl Into<String>) -> Target {
        Target {
            url: url.into(),
            model: model.into(),
            version: None,
        }
    }

    /// Checks the URL, model name and version.
    pub fn check(&self) -> Result<(), LoadError> {
        self.endpoint().map(|_| ())
    }

    /// The protocol the URL's scheme names (checked as [`Target::check`] does).
    pub fn protocol(&self) -> Result<Protocol, LoadError> {
        self.endpoint().map(|e| e.protocol)
    }

    pub(crate) fn endpoint(&self) -> Result<Endpoint, LoadError> {
        let bad = |why: &str| LoadError::invalid(format!("--url `{}`: {why}", self.url));
        let uri: Uri = self.url.parse().map_err(|_| bad("not a URL"))?;
        let protocol = match uri.scheme_str() {
            Some("http") => Protocol::Http,
            Some("grpc") => Protocol::Grpc,
            Some(s) => {
                return Err(bad(&format!(
                    "scheme `{s}` is not supported (use http:// or grpc://)"
                )))
            }
            None => return Err(bad("expected http://host:port or grpc://host:port")),
        };
        let a = uri.authority().ok_or_else(|| bad("no host"))?;
        let authority = match (a.port_u16(), protocol) {
            (Some(_), _) => a.as_str().to_string(),
            (None, Protocol::Http) => format!("{}:80", a.host()),
            (None, Protocol::Grpc) => return Err(bad("expected grpc://host:port (no port)")),
        };
        if protocol == Protocol::Grpc && !matches!(uri.path(), "" | "/") {
            return Err(bad("a grpc:// URL has no path (expected grpc://host:port)"));
        }
        let ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 256
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        if !ok(&self.model) {
            return Err(LoadError::invalid(format!(
                "--model `{}`: must be 1-256 ASCII letters, digits, '-', '_' or '.'",
                self.model
            )));
        }
        if let Some(v) = &self.version {
            if !ok(v) {
                return Err(LoadError::invalid(format!(
                    "--model-version `{v}`: must be 1-256 ASCII letters, digits, '-', '_' or '.'"
                )));
            }
        }
        Ok(Endpoint {
            protocol,
            host: HeaderValue::from_str(a.as_str()).map_err(|_| bad("bad host"))?,
            authority,
            base: uri.path().trim_end_matches('/').to_string(),
        })
    }

    /// The model's path, `/v2/models/{m}` or `/v2/models/{m}/versions/{v}`.
    pub(crate) fn model_path(&self, base: &str) -> String {
        match &self.version {
            Some(v) => format!("{base}/v2/models/{}/versions/{v}", self.model),
            None => format!("{base}/v2/models/{}", self.model),
        }
    }
}

/// How a run sends.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Most keep-alive connections open at once (HTTP/1.1: one request each at a time); for
    /// gRPC the HTTP/2 connections the calls are dealt to in turn, each carrying any number at
    /// once ([`default_connections`]).
    pub connections: usize,
    /// Connections opened before the start (at most `connections`).
    pub warm_connections: usize,
    /// A request that has no complete response this long after its intended time is a
    /// timeout.
    pub timeout: Duration,
    /// Threads of the async runtime that paces, sends and receives (1: the calling thread
    /// alone).
    pub threads: usize,
    /// Keep one [`Record`] per request.
    pub records: bool,
    /// A progress bar to drive (its length is set to the number of requests; cleared at the
    /// end). indicatif hides it when stderr is not a terminal.
    pub progress: Option<ProgressBar>,
    /// Start at this wall-clock time (several workers together); None: now.
    pub start_at: Option<SystemTime>,
    /// A request started more than this after its intended time is late; more than 1% late
    /// and the run is invalid (the generator saturated).
    pub max_send_lag: Duration,
    /// Pin the run's threads (the calling thread while the run lasts, and the runtime's) to
    /// these CPUs; None: leave them where the system puts them.
    pub cpus: Option<CpuSet>,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            connections: 64,
            warm_connections: 8,
            timeout: Duration::from_secs(10),
            threads: 1,
            records: false,
            progress: None,
            start_at: None,
            max_send_lag: DEFAULT_MAX_SEND_LAG,
            cpus: None,
        }
    }
}

impl RunConfig {
    /// Checks every bound; the error names the flag.
    pub fn check(&self) -> Result<(), LoadError> {
        if self.connections == 0 || self.connections > MAX_CONNECTIONS {
            return Err(LoadError::invalid(format!(
                "--connections: must be in 1..={MAX_CONNECTIONS}, not {}",
                self.connections
            )));
        }
        if self.timeout.is_zero() || self.timeout > MAX_TIMEOUT {
            return Err(LoadError::invalid(format!(
                "--timeout: must be in (0, {} s], not {:?}",
                MAX_TIMEOUT.as_secs(),
                self.timeout
            )));
        }
        if self.max_send_lag.is_zero() || self.max_send_lag > self.timeout {
            return Err(LoadError::invalid(format!(
                "--max-send-lag: must be in (0, --timeout {:?}], not {:?}",
                self.timeout, self.max_send_lag
            )));
        }
        if self.threads == 0 || self.threads > MAX_THREADS {
            return Err(LoadError::invalid(format!(
                "--threads: must be in 1..={MAX_THREADS}, not {}",
                self.threads
            )));
        }
        if let Some(cpus) = &self.cpus {
            let allowed = CpuSet::available()?;
            if let Some(c) = cpus.cpus().iter().find(|c| !allowed.contains(**c)) {
                return Err(LoadError::invalid(format!(
                    "--cpus {cpus}: CPU {c} is not one this process may run on (available: \
                     {allowed})"
                )));
            }
        }
        Ok(())
    }
}

type Sender = SendRequest<Full<Bytes>>;

struct Collector {
    latency: Histogram<u64>,
    lag: Histogram<u64>,
    outcomes: BTreeMap<Outcome, u64>,
    ok: u64,
    samples_ok: u64,
    /// Requests started later than the bound.
    late: u64,
    /// Requests started (their send lag recorded).
    begun: u64,
    last_done: Option<Instant>,
    records: Vec<Record>,
    /// With records kept: requests started and not finished, by index, with their send lag
    /// (nanoseconds), so that a run cut off at its hard stop still has one record per request.
    open: std::collections::HashMap<u32, u64>,
}

impl Collector {
    fn new() -> Collector {
        Collector {
            latency: histogram(),
            lag: histogram(),
            outcomes: BTreeMap::new(),
            ok: 0,
            samples_ok: 0,
            late: 0,
            begun: 0,
            last_done: None,
            records: Vec::new(),
            open: std::collections::HashMap::new(),
        }
    }
}

/// The HTTP/2 connections of a gRPC run: call `i` goes to slot `i mod n`; a slot whose
/// connection closed is connected again by the next call that finds it so.
struct GrpcPool {
    slots: Vec<Mutex<Option<GrpcConn>>>,
    next: AtomicUsize,
}

struct Shared {
    addr: std::net::SocketAddr,
    /// Some for a gRPC run.
    grpc: Option<GrpcPool>,
    host: HeaderValue,
    uri: Uri,
    content_type: HeaderValue,
    timeout: Duration,
    max_send_lag: Duration,
    not_sent: AtomicU64,
    idle: Mutex<Vec<Sender>>,
    permits: Arc<Semaphore>,
    waits: AtomicU64,
    remaining: AtomicUsize,
    done: Notify,
    keep_records: bool,
    collector: Mutex<Collector>,
}

fn to_us(d: Duration) -> u64 {
    (d.as_nanos() as u64).saturating_add(500) / 1000
}

impl Shared {
    fn finish(
        &self,
        i: usize,
        start: Instant,
        due: Instant,
        begun: Instant,
        batch: u32,
        o: Outcome,
    ) {
        let end = Instant::now();
        let lag = begun.saturating_duration_since(due);
        let latency = end.saturating_duration_since(due);
        {
            let mut c = self.collector.lock().expect("collector lock");
            *c.outcomes.entry(o).or_default() += 1;
            if o.error_kind().is_none() {
                c.latency.saturating_record(to_us(latency).max(1));
                c.ok += 1;
                c.samples_ok += u64::from(batch);
            }
            c.last_done = Some(c.last_done.map_or(end, |t| t.max(end)));
            if self.keep_records {
                c.open.remove(&(i as u32));
                c.records.push(Record {
                    index: i as u32,
                    intended_ns: due.saturating_duration_since(start).as_nanos() as u64,
                    lag_ns: lag.as_nanos() as u64,
                    latency_ns: latency.as_nanos() as u64,
                    batch,
                    outcome: o,
                });
            }
        }
        self.one_less();
    }

    /// Records the send lag of a request starting now (due at `due`).
    fn begin(&self, i: usize, due: Instant) -> Instant {
        let begun = Instant::now();
        let lag = begun.saturating_duration_since(due);
        let mut c = self.collector.lock().expect("collector lock");
        c.begun += 1;
        if self.keep_records {
            c.open.insert(i as u32, lag.as_nanos() as u64);
        }
        c.lag.saturating_record(to_us(lag));
        if lag > self.max_send_lag {
            c.late += 1;
        }
        begun
    }

    /// A request reached at `now` (by the pacer, or its task by the runtime), past its intended
    /// time plus the timeout: it is not sent.
    fn not_sent(&self, i: usize, start: Instant, due: Instant, now: Instant, batch: u32) {
        self.not_sent.fetch_add(1, Ordering::Relaxed);
        if self.keep_records {
            let mut c = self.collector.lock().expect("collector lock");
            c.records.push(Record {
                index: i as u32,
                intended_ns: due.saturating_duration_since(start).as_nanos() as u64,
                lag_ns: now.saturating_duration_since(due).as_nanos() as u64,
                latency_ns: 0,
                batch,
                outcome: Outcome::NotSent,
            });
        }
        self.one_less();
    }

    fn one_less(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.done.notify_one();
        }
    }
}

async fn connect(addr: std::net::SocketAddr) -> Result<Sender, Outcome> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|_| Outcome::Connect)?;
    let _ = stream.set_nodelay(true);
    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|_| Outcome::Connect)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(tx)
}

/// One `ModelInfer` call with a framed message; its gRPC status, or how it failed.
async fn grpc_exchange(sh: &Shared, pool: &GrpcPool, body: &Body) -> Outcome {
    let k = pool.next.fetch_add(1, Ordering::Relaxed) % pool.slots.len();
    let open = pool.slots[k]
        .lock()
        .expect("pool lock")
        .as_ref()
        .filter(|c| !c.is_closed())
        .cloned();
    let mut conn = match open {
        Some(c) => c,
        None => match GrpcConn::connect(sh.addr).await {
            Ok(c) => {
                *pool.slots[k].lock().expect("pool lock") = Some(c.clone());
                c
            }
            Err(_) => return Outcome::Connect,
        },
    };
    match conn.model_infer(body.bytes.clone()).await {
        Ok(resp) => {
            // One finite little-endian f32 score per sample.
            let scores = resp.raw_output_contents.first().map(Vec::as_slice);
            let good = scores.is_some_and(|s| {
                s.len() == 4 * body.batch as usize
                    && s.chunks_exact(4)
                        .all(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]).is_finite())
            });
            if good {
                Outcome::Grpc(0)
            } else {
                Outcome::Malformed
            }
        }
        Err(GrpcError::Status { code, .. }) => Outcome::Grpc(code),
        // A gRPC answer has HTTP status 200: another 2xx is not one.
        Err(GrpcError::Http(s)) if (200..300).contains(&s) => Outcome::Malformed,
        Err(GrpcError::Http(s)) => Outcome::Status(s),
        Err(GrpcError::Malformed(_)) => Outcome::Malformed,
        Err(GrpcError::Transport(_)) => Outcome::Io,
    }
}

/// Sends one request and reads the whole response; returns its status.
async fn exchange(sh: &Shared, body: &Body) -> Outcome {
    if let Some(pool) = &sh.grpc {
        return grpc_exchange(sh, pool, body).await;
    }
    let permit = match sh.permits.clone().try_acquire_owned() {
        Ok(p) => p,
        Err(_) => {
            sh.waits.fetch_add(1, Ordering::Relaxed);
            match sh.permits.clone().acquire_owned().await {
                Ok(p) => p,
                Err(_) => return Outcome::Io,
            }
        }
    };
    let mut tx = loop {
        let idle = sh.idle.lock().expect("pool lock").pop();
        match idle {
            // A connection the server closed while idle fails `ready`: drop it, take another.
            Some(mut tx) => {
                if tx.ready().await.is_ok() {
                    break tx;
                }
            }
            None => match connect(sh.addr).await {
                Ok(tx) => break tx,
                Err(o) => return o,
            },
        }
    };
    let mut req = Request::new(Full::new(body.bytes.clone()));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = sh.uri.clone();
    let h = req.headers_mut();
    h.insert(HOST, sh.host.clone());
    h.insert(CONTENT_TYPE, sh.content_type.clone());
    if let Some(n) = &body.header_len {
        h.insert(HEADER_LENGTH, n.clone());
    }
    let resp = match tx.send_request(req).await {
        Ok(r) => r,
        Err(_) => return Outcome::Io,
    };
    let status = resp.status().as_u16();
    if resp.into_body().collect().await.is_err() {
        return Outcome::Io;
    }
    if !tx.is_closed() {
        sh.idle.lock().expect("pool lock").push(tx);
    }
    drop(permit);
    Outcome::Status(status)
}

async fn request(sh: Arc<Shared>, i: usize, start: Instant, due: Instant, body: Body) {
    let now = Instant::now();
    if now >= due + sh.timeout {
        // The runtime reached this task too late to send it.
        sh.not_sent(i, start, due, now, body.batch);
        return;
    }
    let begun = sh.begin(i, due);
    let deadline = tokio::time::Instant::from_std(due + sh.timeout);
    let o = tokio::time::timeout_at(deadline, exchange(&sh, &body))
        .await
        .unwrap_or(Outcome::Timeout);
    sh.finish(i, start, due, begun, body.batch, o);
}

/// Starts every request at its intended time.
async fn pace(
    sh: Arc<Shared>,
    arrivals: Arc<[crate::schedule::Arrival]>,
    bodies: Arc<Bodies>,
    start: Instant,
    progress: Option<ProgressBar>,
) -> Result<(), LoadError> {
    let timer = crate::timer::Timer::new()
        .map_err(|e| LoadError::Http(format!("creating a timer: {e}")))?;
    let mut next_tick = Instant::now();
    let mut behind = 0u32;
    for (i, a) in arrivals.iter().enumerate() {
        let due = start + Duration::from_nanos(a.at_ns);
        if timer
            .sleep_until(due)
            .await
            .map_err(|e| LoadError::Http(format!("waiting on the timer: {e}")))?
        {
            behind = 0;
        } else {
            // Already due: go on, but let the runtime run the requests now and then.
            behind += 1;
            if behind.is_multiple_of(32) {
                tokio::task::yield_now().await;
            }
        }
        // Past its intended time plus the timeout it could only time out: not sent, so that a
        // generator that fell behind stops at the end of the run instead of sending late.
        let now = Instant::now();
        if now >= due + sh.timeout {
            sh.not_sent(i, start, due, now, a.batch);
            continue;
        }
        let body = bodies
            .pick(a.batch, i)
            .expect("checked before the run")
            .clone();
        tokio::spawn(request(sh.clone(), i, start, due, body));
        if let Some(pb) = &progress {
            if i.is_multiple_of(64) && Instant::now() >= next_tick {
                pb.set_position(i as u64);
                next_tick = Instant::now() + Duration::from_millis(100);
            }
        }
    }
    Ok(())
}

fn runtime(threads: usize) -> Result<tokio::runtime::Runtime, LoadError> {
    let mut b = if threads == 1 {
        // One thread does everything: pacing, sending and receiving.
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads).thread_name("loadgen");
        b
    };
    b.enable_all()
        .build()
        .map_err(|e| LoadError::Http(format!("starting the async runtime: {e}")))
}

pub(crate) async fn resolve(authority: &str) -> Result<std::net::SocketAddr, LoadError> {
    tokio::net::lookup_host(authority)
        .await
        .map_err(|e| LoadError::Http(format!("cannot resolve `{authority}`: {e}")))?
        .next()
        .ok_or_else(|| LoadError::Http(format!("`{authority}` resolves to no address")))
}

/// The calling thread pinned to a CPU set until dropped, when it gets its former mask back.
struct Pinned(CpuSet);

impl Pinned {
    fn to(cpus: &CpuSet) -> Result<Pinned, LoadError> {
        let before = CpuSet::available()?;
        cpus.pin_current_thread()
            .map_err(|e| LoadError::invalid(format!("--cpus {cpus}: pinning a thread: {e}")))?;
        Ok(Pinned(before))
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        let _ = self.0.pin_current_thread();
    }
}

/// Sends `schedule` to `target` with `bodies` and returns the results. Blocks the calling
/// thread (it paces the requests) until every request has ended.
pub fn run(
    target: &Target,
    schedule: &Schedule,
    bodies: &Bodies,
    cfg: &RunConfig,
) -> Result<RunResult, LoadError> {
    cfg.check()?;
    let ep = target.endpoint()?;
    match (ep.protocol, bodies.format) {
        (Protocol::Grpc, BodyFormat::Grpc) => {}
        (Protocol::Http, BodyFormat::Json | BodyFormat::Binary) => {}
        (p, f) => {
            return Err(LoadError::invalid(format!(
                "--url `{}`: {p} cannot send {} bodies (a grpc:// URL takes BodyFormat::Grpc, \
                 an http:// URL json or binary)",
                target.url,
                f.name()
            )))
        }
    }
    for a in &schedule.arrivals {
        if bodies.pick(a.batch, 0).is_none() {
            return Err(LoadError::invalid(format!(
                "no prepared body of batch size {}",
                a.batch
            )));
        }
    }
    if schedule.arrivals.len() > u32::MAX as usize {
        return Err(LoadError::invalid("too many requests in one schedule"));
    }
    // Pinned before the runtime starts its threads, which inherit the mask (and so do the
    // threads they start).
    let _pinned = cfg.cpus.as_ref().map(Pinned::to).transpose()?;
    let rt = runtime(cfg.threads)?;
    let addr = rt.block_on(resolve(&ep.authority))?;
    let path = format!("{}/infer", target.model_path(&ep.base));
    let n = schedule.arrivals.len();
    let grpc = (ep.protocol == Protocol::Grpc).then(|| GrpcPool {
        slots: (0..cfg.connections).map(|_| Mutex::new(None)).collect(),
        next: AtomicUsize::new(0),
    });
    let sh = Arc::new(Shared {
        addr,
        grpc,
        host: ep.host.clone(),
        uri: path
            .parse()
            .map_err(|_| LoadError::invalid(format!("bad request path `{path}`")))?,
        content_type: HeaderValue::from_static(match bodies.format {
            BodyFormat::Json => "application/json",
            BodyFormat::Binary => "application/octet-stream",
            BodyFormat::Grpc => "application/grpc",
        }),
        timeout: cfg.timeout,
        max_send_lag: cfg.max_send_lag,
        not_sent: AtomicU64::new(0),
        idle: Mutex::new(Vec::new()),
        permits: Arc::new(Semaphore::new(cfg.connections)),
        waits: AtomicU64::new(0),
        remaining: AtomicUsize::new(n),
        done: Notify::new(),
        keep_records: cfg.records,
        collector: Mutex::new(Collector::new()),
    });
    // Open the warm connections now, so the first requests do not pay for them.
    let warm = cfg.warm_connections.min(cfg.connections);
    rt.block_on(async {
        let refused = || LoadError::Http(format!("cannot connect to {} ({addr})", target.url));
        for k in 0..warm {
            match &sh.grpc {
                Some(pool) => {
                    let c = GrpcConn::connect(addr).await.map_err(|_| refused())?;
                    *pool.slots[k].lock().expect("pool lock") = Some(c);
                }
                None => {
                    let tx = connect(addr).await.map_err(|_| refused())?;
                    sh.idle.lock().expect("pool lock").push(tx);
                }
            }
        }
        Ok::<(), LoadError>(())
    })?;
    let start = match cfg.start_at {
        Some(at) => {
            let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
            if wait > MAX_START_DELAY {
                return Err(LoadError::invalid(format!(
                    "--start-at is {} s away, more than the limit of {} s",
                    wait.as_secs(),
                    MAX_START_DELAY.as_secs()
                )));
            }
            Instant::now() + wait
        }
        None => Instant::now(),
    };
    if let Some(pb) = &cfg.progress {
        pb.set_length(n as u64);
        pb.set_position(0);
    }
    // The pacer runs on the runtime: it waits for each intended time on a timerfd (precise to
    // microseconds, on the runtime's own event loop, so no other thread has to be woken) and
    // starts the request; requests already due go out back to back.
    let arrivals: Arc<[crate::schedule::Arrival]> = schedule.arrivals.clone().into();
    // A gRPC body gets the model's name and version here, as an HTTP request gets its path.
    let all_bodies = Arc::new(match ep.protocol {
        Protocol::Http => bodies.clone(),
        Protocol::Grpc => {
            bodies.map_bytes(|b| grpc_message(&target.model, target.version.as_deref(), b))
        }
    });
    let progress = cfg.progress.clone();
    // Every request's deadline is at most its intended time (before the end of the schedule)
    // plus the timeout: at this moment the run stops, whatever is left.
    let hard_stop = tokio::time::Instant::from_std(start + schedule.duration + cfg.timeout);
    let shared = sh.clone();
    rt.block_on(async move {
        let mut pacer = tokio::spawn(pace(
            shared.clone(),
            arrivals,
            all_bodies,
            start,
            progress.clone(),
        ));
        let mut paced = false;
        while !(paced && shared.remaining.load(Ordering::Acquire) == 0) {
            tokio::select! {
                r = &mut pacer, if !paced => {
                    paced = true;
                    match r {
                        Ok(r) => r?,
                        Err(e) => return Err(LoadError::Http(format!("the pacer failed: {e}"))),
                    }
                    if let Some(pb) = &progress {
                        pb.set_message("waiting for the last responses");
                    }
                }
                _ = shared.done.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    if let Some(pb) = &progress {
                        pb.set_position((n - shared.remaining.load(Ordering::Acquire)) as u64);
                    }
                }
                _ = tokio::time::sleep_until(hard_stop) => {
                    pacer.abort();
                    break;
                }
            }
        }
        Ok::<(), LoadError>(())
    })?;
    if let Some(pb) = &cfg.progress {
        pb.finish_and_clear();
    }
    // Stop every task before counting, so that none finishes in between.
    rt.shutdown_timeout(Duration::from_millis(200));
    let stuck = sh.remaining.load(Ordering::Acquire) as u64;
    let mut c = std::mem::replace(
        &mut *sh.collector.lock().expect("collector lock"),
        Collector::new(),
    );
    // Cut off at the hard stop: those started are timeouts (their deadline has passed), the
    // rest were never sent.
    let finished: u64 = c.outcomes.values().sum();
    let stuck_begun = c.begun - finished;
    if stuck_begun > 0 {
        *c.outcomes.entry(Outcome::Timeout).or_default() += stuck_begun;
    }
    let stuck_unbegun = stuck - stuck_begun;
    if sh.keep_records && stuck > 0 {
        cut_off_records(&mut c, &schedule.arrivals, start, Instant::now());
    }
    c.records.sort_unstable_by_key(|r| r.index);
    let duration = schedule.duration.as_secs_f64();
    let elapsed = c
        .last_done
        .map_or(0.0, |t| t.saturating_duration_since(start).as_secs_f64());
    let window = duration.max(elapsed);
    let mut status = BTreeMap::new();
    let mut errors = BTreeMap::new();
    let mut grpc_status = BTreeMap::new();
    for (o, k) in &c.outcomes {
        match o {
            Outcome::Status(s) => *status.entry(s.to_string()).or_default() += k,
            Outcome::Grpc(code) => {
                *status
                    .entry(crate::grpc::http_status(*code).to_string())
                    .or_default() += k;
                *grpc_status
                    .entry(crate::grpc::code_name(*code))
                    .or_default() += k;
            }
            _ => {}
        }
        if let Some(e) = o.error_kind() {
            *errors.entry(e).or_default() += k;
        }
    }
    let not_sent = sh.not_sent.load(Ordering::Relaxed) + stuck_unbegun;
    let late = c.late + not_sent;
    let summary = Summary {
        version: SUMMARY_VERSION,
        protocol: ep.protocol.to_string(),
        url: target.url.clone(),
        model: target.model.clone(),
        schedule: schedule.kind.to_string(),
        batch: schedule.batch_label.clone(),
        skew: bodies.skew.to_string(),
        format: bodies.format.name().to_string(),
        seed: schedule.seed,
        shards: vec![schedule.shard.to_string()],
        target_qps: schedule.target_qps,
        duration_s: duration,
        requests: n as u64,
        ok: c.ok,
        samples_ok: c.samples_ok,
        offered_qps: schedule.offered_qps(),
        achieved_qps: c.ok as f64 / window,
        samples_per_s: c.samples_ok as f64 / window,
        elapsed_s: elapsed,
        latency_us: Percentiles::of(&c.latency),
        send_lag_us: Percentiles::of(&c.lag),
        status,
        grpc_status,
        errors,
        connection_waits: sh.waits.load(Ordering::Relaxed),
        connections: cfg.connections,
        not_sent,
        send_lag_bound_us: to_us(cfg.max_send_lag),
        late,
        saturated: saturated(late, n as u64),
        missing_shards: Vec::new(),
    };
    Ok(RunResult {
        summary,
        latency: c.latency,
        lag: c.lag,
        records: c.records,
        start: Some(start),
        from: None,
    })
}

/// Writes the records of the requests the hard stop cut off: those started (in `open`) timed
/// out at `cut`, the others were not sent. Afterwards every request has one record.
fn cut_off_records(
    c: &mut Collector,
    arrivals: &[crate::schedule::Arrival],
    start: Instant,
    cut: Instant,
) {
    let mut seen = vec![false; arrivals.len()];
    for r in &c.records {
        if let Some(s) = seen.get_mut(r.index as usize) {
            *s = true;
        }
    }
    let cut_ns = cut.saturating_duration_since(start).as_nanos() as u64;
    for (i, a) in arrivals.iter().enumerate() {
        if seen[i] {
            continue;
        }
        let late = cut_ns.saturating_sub(a.at_ns);
        let (outcome, lag_ns, latency_ns) = match c.open.remove(&(i as u32)) {
            Some(lag) => (Outcome::Timeout, lag, late),
            None => (Outcome::NotSent, late, 0),
        };
        c.records.push(Record {
            index: i as u32,
            intended_ns: a.at_ns,
            lag_ns,
            latency_ns,
            batch: a.batch,
            outcome,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let e = Target::new("http://127.0.0.1:8000/", "tiny")
            .endpoint()
            .unwrap();
        assert_eq!(e.authority, "127.0.0.1:8000");
        assert_eq!(e.base, "");
        let e = Target::new("http://svc/prefix", "tiny").endpoint().unwrap();
        assert_eq!(e.authority, "svc:80");
        assert_eq!(e.base, "/prefix");
        assert!(Target::new("https://x:1", "m").endpoint().is_err());
        assert!(Target::new("127.0.0.1:8000", "m").endpoint().is_err());
        assert!(Target::new("http://x:1", "a/b").endpoint().is_err());
        let mut t = Target::new("http://x:1", "m");
        t.version = Some("2".into());
        assert_eq!(t.model_path(""), "/v2/models/m/versions/2");
    }

    #[test]
    fn a_run_cut_off_at_its_hard_stop_keeps_one_record_per_request() {
        let mut c = Collector::new();
        let a = |at_ns| crate::schedule::Arrival {
            at_ns,
            tokens: 0,
            batch: 2,
        };
        let arrivals = [a(0), a(1_000), a(2_000)];
        let start = Instant::now();
        c.records.push(Record {
            index: 0,
            intended_ns: 0,
            lag_ns: 0,
            latency_ns: 10,
            batch: 2,
            outcome: Outcome::Status(200),
        });
        c.open.insert(1, 7);
        cut_off_records(&mut c, &arrivals, start, start + Duration::from_micros(5));
        c.records.sort_unstable_by_key(|r| r.index);
        let got: Vec<_> = c
            .records
            .iter()
            .map(|r| (r.index, r.outcome, r.lag_ns, r.latency_ns))
            .collect();
        assert_eq!(
            got,
            [
                (0, Outcome::Status(200), 0, 10),
                (1, Outcome::Timeout, 7, 4_000),
                (2, Outcome::NotSent, 3_000, 0)
            ]
        );
        assert!(c.open.is_empty());
    }
}
