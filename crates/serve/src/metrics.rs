//! Prometheus metrics, named like Triton's (`nv_inference_*`) where Triton has one, so that
//! existing dashboards work unchanged, plus StreamRec's own histograms and gauges.
//!
//! prometheus-client writes counters as `<name>_total` (the OpenMetrics rule); Triton's series
//! have no suffix (`nv_inference_request_success{model="m",version="1"} 5`). [`TritonCounter`]
//! is declared a counter (`# TYPE nv_inference_request_success counter`) but written under its
//! own name, so the series names match Triton's exactly.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

/// A monotonic counter written without the `_total` suffix (see the module docs).
#[derive(Debug, Default)]
pub struct TritonCounter(AtomicU64);

impl TritonCounter {
    /// Adds `v`.
    pub fn inc_by(&self, v: u64) {
        self.0.fetch_add(v, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl TypedMetric for TritonCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for TritonCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&self.get())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// Labels of per-model series, as Triton's.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    /// Model name.
    pub model: String,
    /// Model version.
    pub version: String,
}

/// Labels of the failure counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// Model name.
    pub model: String,
    /// Model version.
    pub version: String,
    /// Why: `INVALID_INPUT` (400, 404, 413), `TIMEOUT` (408: the body came too slowly),
    /// `REJECTED` (503: overloaded or not ready), `BACKEND` (the engine failed or gave a
    /// non-finite score), `CANCELLED` (the client went away before its answer).
    pub reason: String,
}

/// Why a request failed, for the failure counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureReason {
    /// Malformed or invalid request (400, 404, 413).
    InvalidInput,
    /// Refused by admission control or while not ready (503).
    Rejected,
    /// The body did not arrive in time (408).
    Timeout,
    /// The engine failed, or gave a non-finite score (500).
    Backend,
    /// The client's connection failed before the answer was ready.
    Cancelled,
}

impl FailureReason {
    fn label(self) -> &'static str {
        match self {
            FailureReason::InvalidInput => "INVALID_INPUT",
            FailureReason::Rejected => "REJECTED",
            FailureReason::Timeout => "TIMEOUT",
            FailureReason::Backend => "BACKEND",
            FailureReason::Cancelled => "CANCELLED",
        }
    }
}

type Counters = Family<ModelLabels, TritonCounter>;

/// Every series the server exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    labels: ModelLabels,
    success: Counters,
    failure: Family<FailureLabels, TritonCounter>,
    count: Counters,
    exec_count: Counters,
    request_duration_us: Counters,
    queue_duration_us: Counters,
    compute_infer_duration_us: Counters,
    latency: Histogram,
    batch_size: Histogram,
    queue_samples: Gauge,
    queue_requests: Gauge,
    inflight: Gauge,
    buffered_bytes: Gauge,
    connections: Gauge,
    /// Milliseconds since the Unix epoch of the last successful request (0: none yet).
    last_inference_ms: AtomicU64,
    /// Per execution batch size: executions and their compute time in nanoseconds.
    by_batch: Mutex<BTreeMap<usize, (u64, u64)>>,
}

/// Counts and cumulative durations of one model, as Triton's statistics extension reports them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelStats {
    /// Successful requests.
    pub success: u64,
    /// Failed requests, every reason.
    pub fail: u64,
    /// Samples inferred.
    pub inference_count: u64,
    /// Engine executions.
    pub execution_count: u64,
    /// Arrival-to-response time of the successful requests, nanoseconds in all.
    pub request_ns: u64,
    /// Time the successful requests queued, nanoseconds in all.
    pub queue_ns: u64,
    /// Engine time of the successful requests, nanoseconds in all.
    pub compute_ns: u64,
    /// Milliseconds since the Unix epoch of the last successful request (0: none).
    pub last_inference_ms: u64,
    /// Per execution batch size: (batch size, executions, compute nanoseconds).
    pub by_batch: Vec<(usize, u64, u64)>,
}

impl Metrics {
    /// The series for one model version.
    pub fn new(model: &str, version: &str) -> Self {
        let mut registry = Registry::default();
        let success = Counters::default();
        let failure = Family::<FailureLabels, TritonCounter>::default();
        let count = Counters::default();
        let exec_count = Counters::default();
        let request_duration_us = Counters::default();
        let queue_duration_us = Counters::default();
        let compute_infer_duration_us = Counters::default();
        let latency = Histogram::new(exponential_buckets(25e-6, 2.0, 20));
        let batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 17));
        let queue_samples = Gauge::default();
        let queue_requests = Gauge::default();
        let inflight = Gauge::default();
        let buffered_bytes = Gauge::default();
        let connections = Gauge::default();
        registry.register(
            "nv_inference_request_success",
            "Number of successful inference requests, all batch sizes",
            success.clone(),
        );
        registry.register(
            "nv_inference_request_failure",
            "Number of failed inference requests, all batch sizes, by reason",
            failure.clone(),
        );
        registry.register(
            "nv_inference_count",
            "Number of inferences performed (samples; a request of batch B counts B)",
            count.clone(),
        );
        registry.register(
            "nv_inference_exec_count",
            "Number of model executions (dynamically batched executions count once)",
            exec_count.clone(),
        );
        registry.register(
            "nv_inference_request_duration_us",
            "Cumulative inference request duration in microseconds (arrival to response)",
            request_duration_us.clone(),
        );
        registry.register(
            "nv_inference_queue_duration_us",
            "Cumulative inference queuing duration in microseconds",
            queue_duration_us.clone(),
        );
        registry.register(
            "nv_inference_compute_infer_duration_us",
            "Cumulative compute inference duration in microseconds",
            compute_infer_duration_us.clone(),
        );
        registry.register(
            "streamrec_request_latency_seconds",
            "Latency of successful infer requests, arrival to response",
            latency.clone(),
        );
        registry.register(
            "streamrec_batch_size",
            "Samples per engine execution after dynamic batching",
            batch_size.clone(),
        );
        registry.register(
            "streamrec_queue_samples",
            "Samples waiting in the batching queue",
            queue_samples.clone(),
        );
        registry.register(
            "streamrec_queue_requests",
            "Requests waiting in the batching queue",
            queue_requests.clone(),
        );
        registry.register(
            "streamrec_inflight_requests",
            "Infer requests queued or running",
            inflight.clone(),
        );
        registry.register(
            "streamrec_buffered_request_bytes",
            "Bytes of request bodies held now, with their decoding cost (the memory budget's use)",
            buffered_bytes.clone(),
        );
        registry.register(
            "streamrec_open_connections",
            "Client connections open now",
            connections.clone(),
        );
        Self {
            registry,
            labels: ModelLabels {
                model: model.into(),
                version: version.into(),
            },
            success,
            failure,
            count,
            exec_count,
            request_duration_us,
            queue_duration_us,
            compute_infer_duration_us,
            latency,
            batch_size,
            queue_samples,
            queue_requests,
            inflight,
            buffered_bytes,
            connections,
            last_inference_ms: AtomicU64::new(0),
            by_batch: Mutex::new(BTreeMap::new()),
        }
    }

    /// The counts behind Triton's statistics extension (`/v2/models/{m}/stats`).
    pub fn stats(&self) -> ModelStats {
        let l = &self.labels;
        let fail = self
            .failure_counts()
            .into_iter()
            .map(|(_, n)| n)
            .sum::<u64>();
        ModelStats {
            success: self.success.get_or_create(l).get(),
            fail,
            inference_count: self.count.get_or_create(l).get(),
            execution_count: self.exec_count.get_or_create(l).get(),
            request_ns: self.request_duration_us.get_or_create(l).get() * 1000,
            queue_ns: self.queue_duration_us.get_or_create(l).get() * 1000,
            compute_ns: self.compute_infer_duration_us.get_or_create(l).get() * 1000,
            last_inference_ms: self.last_inference_ms.load(Ordering::Relaxed),
            by_batch: self
                .by_batch
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(&b, &(n, ns))| (b, n, ns))
                .collect(),
        }
    }

    /// Failed requests by reason label.
    fn failure_counts(&self) -> Vec<(&'static str, u64)> {
        [
            FailureReason::InvalidInput,
            FailureReason::Rejected,
            FailureReason::Timeout,
            FailureReason::Backend,
            FailureReason::Cancelled,
        ]
        .into_iter()
        .map(|r| {
            let labels = FailureLabels {
                model: self.labels.model.clone(),
                version: self.labels.version.clone(),
                reason: r.label().into(),
            };
            (r.label(), self.failure.get(&labels).map_or(0, |c| c.get()))
        })
        .collect()
    }

    /// The memory budget's use and the open connections, as of now.
    pub fn set_load(&self, buffered_bytes: usize, connections: usize) {
        self.buffered_bytes.set(buffered_bytes as i64);
        self.connections.set(connections as i64);
    }

    /// A successful request of `samples` samples.
    pub fn request_ok(&self, samples: usize, total_us: u64, queue_us: u64, compute_us: u64) {
        let l = &self.labels;
        self.success.get_or_create(l).inc_by(1);
        self.count.get_or_create(l).inc_by(samples as u64);
        self.request_duration_us.get_or_create(l).inc_by(total_us);
        self.queue_duration_us.get_or_create(l).inc_by(queue_us);
        self.compute_infer_duration_us
            .get_or_create(l)
            .inc_by(compute_us);
        self.latency.observe(total_us as f64 / 1e6);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.last_inference_ms.store(now, Ordering::Relaxed);
    }

    /// A failed request.
    pub fn request_failed(&self, reason: FailureReason) {
        self.failure
            .get_or_create(&FailureLabels {
                model: self.labels.model.clone(),
                version: self.labels.version.clone(),
                reason: reason.label().into(),
            })
            .inc_by(1);
    }

    /// One engine execution of `samples` samples that took `compute`.
    pub fn executed(&self, samples: usize, compute: Duration) {
        self.exec_count.get_or_create(&self.labels).inc_by(1);
        self.batch_size.observe(samples as f64);
        let mut by = self.by_batch.lock().unwrap_or_else(|p| p.into_inner());
        let e = by.entry(samples).or_default();
        e.0 += 1;
        e.1 += compute.as_nanos() as u64;
    }

    /// The queue's current depth.
    pub fn set_queue(&self, requests: usize, samples: usize) {
        self.queue_requests.set(requests as i64);
        self.queue_samples.set(samples as i64);
    }

    /// One more (or, with -1, one fewer) request in flight.
    pub fn inflight_add(&self, d: i64) {
        self.inflight.inc_by(d);
    }

    /// Successful requests so far.
    pub fn successes(&self) -> u64 {
        self.success.get_or_create(&self.labels).get()
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
