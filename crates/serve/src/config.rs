//! Server settings: defaults that serve well, a TOML file (`--config serve.toml`) with every
//! field optional, and validation that names the field and the limit.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use streamrec_graph::limits::{DEFAULT_MAX_REQUEST_BYTES, MAX_BATCH};

use crate::error::ServeError;

/// Everything the server can be told.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    /// Address to bind (loopback unless told otherwise).
    pub host: String,
    /// Port (0 picks a free one).
    pub port: u16,
    /// Most samples in one engine execution (the engine's max batch).
    pub max_batch: usize,
    /// Longest wait of the oldest queued request for others to batch with, in microseconds.
    /// The default 0 never waits: a free worker takes everything queued (up to `max_batch`),
    /// so batches form from the requests that arrive while the engine is busy, and a lone
    /// request pays no delay.
    pub max_queue_delay_us: u64,
    /// Most samples waiting in the queue; beyond it, 503 with Retry-After.
    pub queue_capacity: usize,
    /// Largest request body in bytes (413 beyond it).
    pub max_body_bytes: usize,
    /// Most infer requests handled at once (reading, queued or running); beyond it, 503.
    pub max_inflight: usize,
    /// Engine execution contexts, each with its own batcher thread.
    pub contexts: usize,
    /// Threads of the async HTTP front end.
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
            max_batch: 256,
            max_queue_delay_us: 0,
            queue_capacity: 4096,
            max_body_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_inflight: 1024,
            contexts: 1,
            http_threads: 2,
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
        count("max_body_bytes", self.max_body_bytes, 1 << 32)?;
        count("max_inflight", self.max_inflight, 1 << 20)?;
        count("contexts", self.contexts, 64)?;
        count("http_threads", self.http_threads, 1024)?;
        if !(self.drain_timeout_s.is_finite() && (0.0..=3600.0).contains(&self.drain_timeout_s)) {
            return Err(field("drain_timeout_s", "must be between 0 and 3600"));
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

    /// The drain timeout.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.drain_timeout_s)
    }
}
