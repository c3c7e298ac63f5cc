//! What every connection's handler shares: the model, the settings, readiness, the batcher,
//! the metrics, the open connections and the memory budget.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use streamrec_graph::ModelSpec;

use crate::batcher::Batcher;
use crate::budget::Budget;
use crate::config::ServeConfig;
use crate::conn::Conns;
use crate::metrics::Metrics;

/// What every connection's handler shares.
pub(crate) struct State {
    pub(crate) spec: ModelSpec,
    pub(crate) cfg: ServeConfig,
    /// Ready to take requests: warmed up and not shutting down.
    pub(crate) accepting: AtomicBool,
    /// False after a fatal engine error.
    pub(crate) healthy: Arc<AtomicBool>,
    pub(crate) batcher: Batcher,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) inflight: AtomicUsize,
    /// The plan view served at `/ui`, when one was given.
    pub(crate) ui: std::sync::OnceLock<String>,
    /// Open connections.
    pub(crate) conns: Arc<Conns>,
    /// Request bytes held, over all connections.
    pub(crate) budget: Budget,
}

impl State {
    pub(crate) fn ready(&self) -> bool {
        self.accepting.load(Ordering::SeqCst) && self.healthy.load(Ordering::SeqCst)
    }
}
