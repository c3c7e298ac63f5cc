//! Server settings: defaults that serve well, a TOML file (`--config serve.toml`) with every
//! field optional, and validation that names the field and the limit.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use streamrec_graph::limits::MAX_BATCH;
/// The default of `max_body_bytes`: the protocol's default request body limit.
pub use streamrec_protocol::limits::DEFAULT_MAX_REQUEST_BYTES;

use crate::error::ServeError;

/// Everything the server can be told.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    /// Address to bind (loopback unless told otherwise).
    pub host: String,
    /// Port (0 picks a free one).
    pub port: u16,
    /// Port of the KServe v2 gRPC endpoint (`inference.GRPCInferenceService`, Triton's 8001
    /// by convention) on the same host, sharing the queue, batcher, limits and metrics with
    /// HTTP; 0 picks a free one. Absent (the default): no gRPC endpoint.
    pub grpc_port: Option<u16>,
    /// Most samples in one engine execution (the engine's max batch).
    pub max_batch: usize,
    /// Longest wait of the oldest queued request for others to batch with, in microseconds.
    /// The default 0 never waits: a free worker takes everything queued (up to `max_batch`),
    /// so batches form from the requests that arrive while the engine is busy, and a lone
    /// request pays no delay.
    pub max_queue_delay_us: u64,
    /// With `max_queue_delay_us` 0: a request that finds nothing queued and a context free runs
    /// on the front end's thread, without the hand-offs to a batcher thread and back, while
    /// the engine's recent executions took at most this many microseconds each (a small
    /// model). 0: every request goes through the batcher threads.
    pub inline_max_us: u64,
    /// Most samples waiting in the queue; beyond it, 503 with Retry-After.
    pub queue_capacity: usize,
    /// Largest request body in bytes (413 beyond it).
    pub max_body_bytes: usize,
    /// Most infer requests queued or running at once (a request counts once its body has
    /// arrived); beyond it, 503.
    pub max_inflight: usize,
    /// Seconds a request head may take, counted from the connection's opening or from the first
    /// byte of the head on a kept-alive connection; beyond it the connection is closed.
    pub header_timeout_s: f64,
    /// Seconds a kept-alive connection may stay idle between requests before it is closed (keep
    /// it above the keep-alive timeout of a proxy in front, e.g. nginx's 60 s).
    pub keepalive_idle_s: f64,
    /// Longest gap between two parts of a request body, in seconds; also the grace before
    /// `min_body_rate` applies. Beyond either, 408 and the connection is closed.
    pub body_timeout_s: f64,
    /// Slowest average rate of a request body accepted after its first `body_timeout_s`, in
    /// bytes per second.
    pub min_body_rate: u64,
    /// Most open connections; 0 (the default): the process's open-file limit less 64, read at
    /// start. When full, the connection that has been sending its request longest (or else the
    /// one idle longest) is closed to make room; with none of those, the new one gets a 503.
    pub max_connections: usize,
    /// Bytes of request bodies held at once over all connections, charged as they arrive, with
    /// the cost of decoding them (JSON 4x its size, binary 2x); beyond it, 503 with Retry-After.
    /// A body over 1 MiB may use at most three quarters, so small requests still get in.
    /// 0 (the default): 1 GiB, or a quarter of the memory limit (cgroup, else physical) if less.
    pub max_buffered_bytes: usize,
    /// Engine execution contexts, each with its own batcher thread (and on a GPU its own
    /// streams and staging buffers, so one context's host work overlaps another's device work).
    /// 0 (the default): 2 on a GPU backend, 1 on the CPU (whose one context already runs on
    /// every core); `streamrec serve` decides before building the engine
    /// ([`ServeConfig::auto_contexts`]); a server started with 0 takes the engine's count.
    pub contexts: usize,
    /// Threads of the async front end (HTTP and gRPC; a lone fast request runs on them inline,
    /// `inline_max_us`). 0 (the default): half the processor's cores, at least 2 and at most 8
    /// ([`ServeConfig::auto_http_threads`]).
    pub http_threads: usize,
    /// Seconds that in-flight and queued requests get to finish on SIGTERM or ctrl-c.
    pub drain_timeout_s: f64,
    /// Seconds a 503 asks the client to wait (`Retry-After`).
    pub retry_after_s: u32,
    /// The model version served (KServe `versions`).
    pub version: String,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8000,
            grpc_port: None,
            max_batch: 256,
            max_queue_delay_us: 0,
            inline_max_us: 50,
            queue_capacity: 4096,
            max_body_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_inflight: 1024,
            header_timeout_s: 10.0,
            keepalive_idle_s: 75.0,
            body_timeout_s: 10.0,
            min_body_rate: 64 << 10,
            max_connections: 0,
            max_buffered_bytes: 0,
            contexts: 0,
            http_threads: 0,
            drain_timeout_s: 30.0,
            retry_after_s: 1,
            version: "1".into(),
        }
    }
}

fn field(name: &str, reason: impl Into<String>) -> ServeError {
    ServeError::Config(format!("{name}: {}", reason.into()))
}

fn count(name: &str, v: usize, max: usize) -> Result<(), ServeError> {
    if v == 0 {
        Err(field(name, "must be > 0"))
    } else if v > max {
        Err(field(name, format!("is {v}, more than the limit of {max}")))
    } else {
        Ok(())
    }
}

fn seconds(name: &str, v: f64, min: f64) -> Result<(), ServeError> {
    if v.is_finite() && (min..=3600.0).contains(&v) {
        Ok(())
    } else {
        Err(field(
            name,
            format!("must be between {min} and 3600 seconds"),
        ))
    }
}

/// Default of `max_buffered_bytes` where the machine has the memory: 1 GiB.
pub const DEFAULT_BUFFERED_BYTES: usize = 1 << 30;

/// Open files kept for the rest of the process (listener, epoll, weight files, logs) when the
/// connection limit is derived from the open-file limit.
pub const FD_RESERVE: u64 = 64;

/// The process's open-file limit (the soft `RLIMIT_NOFILE`).
pub fn open_file_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    if lim.rlim_cur == libc::RLIM_INFINITY {
        u64::MAX
    } else {
        lim.rlim_cur
    }
}

/// The memory this process may use: its cgroup's limit (v2 `memory.max`, v1
/// `memory.limit_in_bytes`), else the machine's physical memory; `None` when neither is known.
pub fn memory_limit() -> Option<u64> {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let cgroup = read("/sys/fs/cgroup/memory.max")
        .or_else(|| read("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|&v| v < 1 << 60);
    let physical = read("/proc/meminfo").and_then(|s| {
        let line = s.lines().find(|l| l.starts_with("MemTotal:"))?.to_string();
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        kb.checked_mul(1024)
    });
    match (cgroup, physical) {
        (Some(c), Some(p)) => Some(c.min(p)),
        (c, p) => c.or(p),
    }
}

impl ServeConfig {
    /// Reads a TOML file; missing fields keep their defaults.
    pub fn load(path: &Path) -> Result<Self, ServeError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ServeError::Config(format!("{}: {e}", path.display())))?;
        let cfg: Self = toml::from_str(&text)
            .map_err(|e| ServeError::Config(format!("{}: {}", path.display(), e.message())))?;
        Ok(cfg)
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), ServeError> {
        count("max_batch", self.max_batch, MAX_BATCH)?;
        if self.grpc_port.is_some_and(|g| g != 0 && g == self.port) {
            return Err(field(
                "grpc_port",
                format!("is {}, the same as port", self.port),
            ));
        }
        count("queue_capacity", self.queue_capacity, 1 << 24)?;
        if self.queue_capacity < self.max_batch {
            return Err(field(
                "queue_capacity",
                format!(
                    "is {}, less than max_batch ({})",
                    self.queue_capacity, self.max_batch
                ),
            ));
        }
        if self.max_queue_delay_us > 10_000_000 {
            return Err(field(
                "max_queue_delay_us",
                "is more than the limit of 10000000 (10 s)",
            ));
        }
        if self.inline_max_us > 10_000 {
            return Err(field(
                "inline_max_us",
                "is more than the limit of 10000 (10 ms): longer executions would hold a front-end thread",
            ));
        }
        count("max_body_bytes", self.max_body_bytes, 1 << 32)?;
        count("max_inflight", self.max_inflight, 1 << 20)?;
        // 0: derived (contexts from the backend, threads from the machine).
        count("contexts", self.contexts.max(1), 64)?;
        count("http_threads", self.http_threads.max(1), 1024)?;
        seconds("drain_timeout_s", self.drain_timeout_s, 0.0)?;
        seconds("header_timeout_s", self.header_timeout_s, 0.1)?;
        seconds("keepalive_idle_s", self.keepalive_idle_s, 0.1)?;
        seconds("body_timeout_s", self.body_timeout_s, 0.1)?;
        count("min_body_rate", self.min_body_rate as usize, 1 << 32)?;
        if self.max_connections > 1 << 20 {
            return Err(field(
                "max_connections",
                format!(
                    "is {}, more than the limit of {}",
                    self.max_connections,
                    1 << 20
                ),
            ));
        }
        if self.max_buffered_bytes != 0 && self.max_buffered_bytes < 1 << 20 {
            return Err(field(
                "max_buffered_bytes",
                "must be 0 (derived from the machine) or at least 1048576 (1 MiB)",
            ));
        }
        if self.retry_after_s > 3600 {
            return Err(field("retry_after_s", "is more than the limit of 3600"));
        }
        if self.version.is_empty() || self.version.contains('/') {
            return Err(field("version", "must be non-empty and have no `/`"));
        }
        if self.host.is_empty() {
            return Err(field("host", "must not be empty"));
        }
        Ok(())
    }

    /// The default number of execution contexts: 2 on a GPU backend (host work of one request
    /// overlaps the device work of another), 1 on the CPU.
    pub fn auto_contexts(gpu: bool) -> usize {
        if gpu {
            2
        } else {
            1
        }
    }

    /// The default number of front-end threads: half the cores this process may use, at
    /// least 2 and at most 8.
    pub fn auto_http_threads() -> usize {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        (cores / 2).clamp(2, 8)
    }

    /// The settings as the server runs them: `max_connections`, `max_buffered_bytes` and
    /// `http_threads` derived from the machine where they are 0 (`contexts` stays 0 until the
    /// server starts with its engine), and checked against it (the open-file limit, and a
    /// body of `max_body_bytes` decoded from JSON must fit the budget's share for large bodies).
    pub fn resolved(&self) -> Result<Self, ServeError> {
        self.validate()?;
        let mut cfg = self.clone();
        if cfg.http_threads == 0 {
            cfg.http_threads = Self::auto_http_threads();
        }

        let files = open_file_limit();
        let room = files.saturating_sub(FD_RESERVE);
        if room < 16 {
            return Err(field(
                "max_connections",
                format!(
                    "the open-file limit is {files}: too low to serve (raise it with `ulimit -n`)"
                ),
            ));
        }
        if cfg.max_connections == 0 {
            cfg.max_connections = room.min(1 << 20) as usize;
        } else if cfg.max_connections as u64 > room {
            return Err(field(
                "max_connections",
                format!(
                    "is {}, more than the open-file limit {files} less {FD_RESERVE} kept for the rest of the process ({room}); lower it or raise the limit (`ulimit -n`)",
                    cfg.max_connections
                ),
            ));
        }
        if cfg.max_buffered_bytes == 0 {
            let quarter = memory_limit().map_or(u64::MAX, |m| m / 4);
            cfg.max_buffered_bytes = quarter.min(DEFAULT_BUFFERED_BYTES as u64) as usize;
        }
        let need = cfg.max_body_bytes.saturating_mul(crate::budget::JSON_COST);
        let share = crate::budget::large_share(cfg.max_buffered_bytes);
        if need > share {
            return Err(field(
                "max_buffered_bytes",
                format!(
                    "is {}: a JSON body of max_body_bytes ({}) costs {need} bytes to decode, more than the {share} bytes a large body may use (three quarters); raise max_buffered_bytes or lower max_body_bytes",
                    cfg.max_buffered_bytes, cfg.max_body_bytes
                ),
            ));
        }
        Ok(cfg)
    }

    /// The drain timeout.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.drain_timeout_s)
    }
}
