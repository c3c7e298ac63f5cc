//! Dynamic batching with admission control: requests queue (bounded in samples), worker threads
//! (one per engine execution context, never the async executor) concatenate them up to
//! `max_batch` samples or until the oldest has waited `max_queue_delay`, run the engine, and
//! hand each request exactly its own rows.
//!
//! Inline execution: when nothing is queued, an execution context is free, batching may not
//! wait (`max_queue_delay` 0) and the engine's recent executions took at most `inline_max`
//! each, the submitting thread runs the request itself. Two thread hand-offs (to a worker and
//! back) cost more than such a model; a request that queues behind others, or a model slower
//! than `inline_max`, goes through the workers as before.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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
    /// Longest recent engine execution for which a lone request runs on the submitting thread
    /// (see the module docs); zero: never.
    pub inline_max: Duration,
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
    /// Executions running now (workers' and inline), at most `workers`; changed under the
    /// queue's lock.
    busy: AtomicUsize,
    /// Recent execution time, nanoseconds: the mean of the last few (an exponential average),
    /// `u64::MAX` before the first.
    recent_ns: AtomicU64,
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
            busy: AtomicUsize::new(0),
            recent_ns: AtomicU64::new(u64::MAX),
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
        if q.jobs.is_empty() && s.inline_ok() {
            s.busy.fetch_add(1, Ordering::AcqRel);
            drop(q);
            let job = Job {
                batch,
                indices,
                enqueued: Instant::now(),
                reply: tx,
            };
            s.execute(vec![job]);
            return Ok(rx);
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
    /// Whether a lone request may run on the submitting thread now (the queue's lock held).
    fn inline_ok(&self) -> bool {
        self.cfg.max_queue_delay.is_zero()
            && self.busy.load(Ordering::Acquire) < self.cfg.workers.max(1)
            && self.recent_ns.load(Ordering::Relaxed) <= self.cfg.inline_max.as_nanos() as u64
    }

    /// An execution ended: a waiting worker may take what queued meanwhile.
    fn one_done(&self) {
        let q = self.queue.lock().expect("batch queue");
        self.busy.fetch_sub(1, Ordering::AcqRel);
        let more = !q.jobs.is_empty();
        drop(q);
        if more {
            self.more.notify_one();
        }
    }

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
        self.busy.fetch_add(1, Ordering::AcqRel);
        self.metrics.set_queue(q.jobs.len(), q.samples);
        if !q.jobs.is_empty() {
            // Another worker may start on the rest.
            self.more.notify_one();
        }
        Some(jobs)
    }

    fn work(&self) {
        while let Some(jobs) = self.next_jobs() {
            self.execute(jobs);
        }
    }

    /// Runs `jobs` as one engine execution (counted in `busy` by the caller, released here
    /// as soon as the engine returns, before the answers go out) and answers each.
    fn execute(&self, jobs: Vec<Job>) {
        {
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
            self.one_done();
            self.metrics.executed(merged.size, compute);
            let ns = compute.as_nanos().min(u128::from(u64::MAX / 2)) as u64;
            let prev = self.recent_ns.load(Ordering::Relaxed);
            let next = if prev == u64::MAX {
                ns
            } else {
                prev - prev / 8 + ns / 8
            };
            self.recent_ns.store(next, Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use super::*;
    use streamrec_graph::ModelSpec;
    use streamrec_runtime::gen::{random_validated, Skew};
    use streamrec_runtime::trace::TraceEvent;

    /// Scores every sample 0.5 and records the thread each execution ran on.
    struct Recorder(Mutex<Vec<String>>);

    impl Infer for Recorder {
        fn infer(&self, batch: &ValidatedBatch) -> streamrec_runtime::Result<Vec<f32>> {
            let me = std::thread::current();
            self.0
                .lock()
                .unwrap()
                .push(me.name().unwrap_or("?").to_string());
            Ok(vec![0.5; batch.size])
        }
        fn take_trace(&self) -> Vec<TraceEvent> {
            Vec::new()
        }
        fn backend_name(&self) -> &'static str {
            "recorder"
        }
    }

    fn threads_of(inline_max: Duration, max_queue_delay: Duration) -> Vec<String> {
        let spec = ModelSpec::parse(
            "dense = 2\n[bottom]\nlayers = [4]\n[sparse]\ncount = 1\nrows = [9]\ndim = 4\n\
             [top]\nlayers = [1]\n[interaction]\nkind = \"cat\"\n",
            "m",
            None,
        )
        .unwrap();
        let engine = Arc::new(Recorder(Mutex::new(Vec::new())));
        let b = Batcher::start(
            BatchConfig {
                max_batch: 8,
                max_queue_delay,
                queue_capacity: 64,
                workers: 1,
                inline_max,
            },
            engine.clone(),
            Arc::new(Metrics::new("m", "1")),
            Arc::new(AtomicBool::new(true)),
        );
        for i in 0..3 {
            let batch = random_validated(&spec, 1, Skew::Uniform, i).unwrap();
            let done = b.submit(batch).unwrap().blocking_recv().unwrap().unwrap();
            assert_eq!(done.scores, [0.5]);
        }
        b.close();
        let names = engine.0.lock().unwrap().clone();
        names
    }

    #[test]
    fn a_lone_request_to_a_fast_engine_runs_on_the_submitting_thread() {
        let me = std::thread::current().name().unwrap().to_string();
        // The first execution is timed on a worker; the next ones, fast, run inline.
        let got = threads_of(Duration::from_millis(10), Duration::ZERO);
        assert_eq!(got, ["batcher-0", &me, &me]);
        // Off, or batching that may wait: always a worker.
        let got = threads_of(Duration::ZERO, Duration::ZERO);
        assert_eq!(got, ["batcher-0"; 3]);
        let got = threads_of(Duration::from_millis(10), Duration::from_micros(1));
        assert_eq!(got, ["batcher-0"; 3]);
    }
}
