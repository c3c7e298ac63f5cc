//! Closed-loop measurement of an engine: latency percentiles and throughput over a bounded
//! number of requests, from one or several client threads.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::batch::ValidatedBatch;
use crate::engine::Infer;
use crate::error::Result;
use crate::stats::{LatencyRecorder, LatencySummary};

/// How long a measurement runs.
#[derive(Clone, Debug)]
pub struct MeasureConfig {
    /// Requests issued before timing starts.
    pub warmup: usize,
    /// Timed requests (the run stops after this many).
    pub iters: usize,
    /// Client threads issuing requests concurrently.
    pub threads: usize,
    /// Stop early once this much time has passed (at least one request per thread runs).
    pub max_time: Option<Duration>,
    /// Counts finished requests (warm-up and timed) as they complete, for progress displays.
    pub progress: Option<Arc<AtomicUsize>>,
}

/// Runs `cfg.iters` requests over `batches` (cycled) and summarises their latency.
pub fn measure(
    engine: &dyn Infer,
    batches: &[ValidatedBatch],
    cfg: &MeasureConfig,
) -> Result<LatencySummary> {
    assert!(!batches.is_empty(), "measure needs at least one batch");
    let tick = || {
        if let Some(p) = &cfg.progress {
            p.fetch_add(1, Ordering::Relaxed);
        }
    };
    for i in 0..cfg.warmup {
        engine.infer(&batches[i % batches.len()])?;
        tick();
    }
    // Device times of the warm-up are not part of the measurement.
    engine.take_gpu_times_us();
    let next = AtomicUsize::new(0);
    let threads = cfg.threads.max(1);
    let start = Instant::now();
    let results: Vec<Result<(LatencyRecorder, u64)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (next, tick) = (&next, &tick);
                s.spawn(move || {
                    let mut rec = LatencyRecorder::new();
                    let mut samples = 0u64;
                    let mut mine = 0usize;
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= cfg.iters {
                            break;
                        }
                        if mine > 0 && cfg.max_time.is_some_and(|m| start.elapsed() > m) {
                            break;
                        }
                        let b = &batches[i % batches.len()];
                        let t0 = Instant::now();
                        engine.infer(b)?;
                        rec.record(t0.elapsed());
                        tick();
                        samples += b.size as u64;
                        mine += 1;
                    }
                    Ok((rec, samples))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("measurement thread"))
            .collect()
    });
    let wall = start.elapsed();
    let mut all = LatencyRecorder::new();
    let mut samples = 0;
    for r in results {
        let (rec, n) = r?;
        all.merge(&rec);
        samples += n;
    }
    let mut summary = all.summary(samples, wall);
    let gpu = engine.take_gpu_times_us();
    summary.gpu_p50_us = crate::stats::quantile(&gpu, 0.5);
    summary.gpu_p99_us = crate::stats::quantile(&gpu, 0.99);
    Ok(summary)
}
