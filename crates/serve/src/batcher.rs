//! Dynamic batching with admission control: requests queue (bounded in samples), worker threads
//! (one per engine execution context, never the async executor) concatenate them up to
//! `max_batch` samples or until the oldest has waited `max_queue_delay`, run the engine, and
//! hand each request exactly its own rows.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use streamrec_graph::limits::MAX_BATCH_INDICES;
use streamrec_runtime::{Infer, RuntimeError, ValidatedBatch};
use tokio::sync::oneshot;

use crate::metrics::Metrics;

/// How requests are batched and admitted.
#[derive(Clone, Debug)]
pub struct BatchConfig {
    /// Most samples in one engine execution.
    pub max_batch: usize,
    /// Longest time the oldest queued request waits for others to join its batch.
    pub max_queue_delay: Duration,
    /// Most samples waiting in the queue; beyond it requests are refused (503).
    pub queue_capacity: usize,
    /// Worker threads (the engine's execution contexts).
    pub workers: usize,
}

/// What a request gets back.
#[derive(Debug)]
pub struct Done {
    /// Its scores, one per sample.
    pub scores: Vec<f32>,
    /// Time in the queue.
    pub queue: Duration,
    /// Time of the engine execution it was part of.
    pub compute: Duration,
}

/// Why a request was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The queue holds `queue_capacity` samples already (503).
    Full,
    /// The server is shutting down or unhealthy (503).
    Closed,
    /// The request alone is larger than `max_batch` (400).
    TooLarge {
        /// Its samples.
        size: usize,
        /// The limit.
        max: usize,
    },
}

/// The outcome of a queued request: its scores, or the engine's error (shared by every
/// request of the failed execution).
pub type Outcome = Result<Done, Arc<RuntimeError>>;

struct Job {
    batch: ValidatedBatch,
    /// The most indices of any one feature (bounds a merged batch's index lists).
    indices: usize,
    enqueued: Instant,
    reply: oneshot::Sender<Outcome>,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    samples: usize,
    closed: bool,
}

struct Shared {
    cfg: BatchConfig,
    queue: Mutex<Queue>,
    more: Condvar,
    engine: Arc<dyn Infer>,
    metrics: Arc<Metrics>,
    healthy: Arc<AtomicBool>,
}

/// The batcher: a bounded queue and its worker threads.
pub struct Batcher {
    shared: Arc<Shared>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl Batcher {
    /// Starts `cfg.workers` threads over `engine`; a fatal engine error clears `healthy`.
    pub fn start(
        cfg: BatchConfig,
        engine: Arc<dyn Infer>,
        metrics: Arc<Metrics>,
        healthy: Arc<AtomicBool>,
    ) -> Self {
        let shared = Arc::new(Shared {
            cfg: cfg.clone(),
            queue: Mutex::new(Queue::default()),
            more: Condvar::new(),
            engine,
            metrics,
            healthy,
        });
        let workers = (0..cfg.workers.max(1))
            .map(|i| {
                let s = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("batcher-{i}"))
                    .spawn(move || s.work())
                    .expect("spawn a batcher thread")
            })
            .collect();
        Self {
            shared,
            workers: Mutex::new(workers),
        }
    }

    /// Queues a validated batch; the receiver gets its outcome.
    pub fn submit(&self, batch: ValidatedBatch) -> Result<oneshot::Receiver<Outcome>, Refused> {
        let s = &self.shared;
        if batch.size > s.cfg.max_batch {
            return Err(Refused::TooLarge {
                size: batch.size,
                max: s.cfg.max_batch,
            });
        }
        let indices = batch
            .sparse
            .iter()
            .map(|f| f.indices.len())
            .max()
            .unwrap_or(0);
        let (tx, rx) = oneshot::channel();
        let mut q = s.queue.lock().expect("batch queue");
        if q.closed {
            return Err(Refused::Closed);
        }
        if q.samples + batch.size > s.cfg.queue_capacity {
            return Err(Refused::Full);
        }
        q.samples += batch.size;
        q.jobs.push_back(Job {
            batch,
            indices,
            enqueued: Instant::now(),
            reply: tx,
        });
        s.metrics.set_queue(q.jobs.len(), q.samples);
        drop(q);
        s.more.notify_one();
        Ok(rx)
    }

    /// Stops taking requests, runs what is queued, and joins the workers.
    pub fn close(&self) {
        self.shared.queue.lock().expect("batch queue").closed = true;
        self.shared.more.notify_all();
        let workers = std::mem::take(&mut *self.workers.lock().expect("batcher workers"));
        for w in workers {
            let _ = w.join();
        }
    }

    /// Requests and samples waiting now.
    pub fn depth(&self) -> (usize, usize) {
        let q = self.shared.queue.lock().expect("batch queue");
        (q.jobs.len(), q.samples)
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.close();
    }
}

impl Shared {
    /// Takes the next batch of jobs: waits for one, then up to `max_queue_delay` past its
    /// arrival for others, until `max_batch` samples are there. None once closed and empty.
    fn next_jobs(&self) -> Option<Vec<Job>> {
        let mut q = self.queue.lock().expect("batch queue");
        loop {
            if let Some(first) = q.jobs.front() {
                let deadline = first.enqueued + self.cfg.max_queue_delay;
                let now = Instant::now();
                if q.samples >= self.cfg.max_batch || now >= deadline || q.closed {
                    break;
                }
                q = self
                    .more
                    .wait_timeout(q, deadline - now)
                    .expect("batch queue")
                    .0;
            } else if q.closed {
                return None;
            } else {
                q = self.more.wait(q).expect("batch queue");
            }
        }
        let (mut samples, mut indices, mut jobs) = (0usize, 0usize, Vec::new());
        while let Some(j) = q.jobs.front() {
            let fits = samples + j.batch.size <= self.cfg.max_batch
                && indices + j.indices <= MAX_BATCH_INDICES;
            if !jobs.is_empty() && !fits {
                break;
            }
            samples += j.batch.size;
            indices += j.indices;
            jobs.push(q.jobs.pop_front().expect("front exists"));
        }
        q.samples -= samples;
        self.metrics.set_queue(q.jobs.len(), q.samples);
        if !q.jobs.is_empty() {
            // Another worker may start on the rest.
            self.more.notify_one();
        }
        Some(jobs)
    }

    fn work(&self) {
        while let Some(jobs) = self.next_jobs() {
            let started = Instant::now();
            let mut replies = Vec::with_capacity(jobs.len());
            let mut parts = Vec::with_capacity(jobs.len());
            for j in jobs {
                replies.push((j.reply, j.batch.size, started - j.enqueued));
                parts.push(j.batch);
            }
            // The parts fit the limits together (next_jobs), so the concatenation is valid.
            let merged = ValidatedBatch::concat(parts).expect("merged batch within the limits");
            let res = self.engine.infer(&merged);
            let compute = started.elapsed();
            self.metrics.executed(merged.size, compute);
            match res {
                Ok(scores) => {
                    let mut at = 0;
                    for (reply, n, queue) in replies {
                        let _ = reply.send(Ok(Done {
                            scores: scores[at..at + n].to_vec(),
                            queue,
                            compute,
                        }));
                        at += n;
                    }
                }
                Err(e) => {
                    // Input errors were checked per request; anything else is the backend's.
                    if !e.is_input() && self.healthy.swap(false, Ordering::SeqCst) {
                        eprintln!("streamrec serve: engine failed, no longer ready: {e}");
                    }
                    let e = Arc::new(e);
                    for (reply, _, _) in replies {
                        let _ = reply.send(Err(Arc::clone(&e)));
                    }
                }
            }
        }
    }
}
