//! The CPU backend's streams, events and worker pool.
//!
//! One pool of worker threads, as many as the cores the backend is given, runs every stream. A
//! stream is an ordered queue of commands, not a thread: an idle worker takes the next command
//! of any stream that is neither running on another worker nor stopped at an event that has not
//! been reached, and large kernels split into tiles that idle workers take. The host thread
//! that synchronises a stream works alongside the pool until that stream is done.
//!
//! An event is a generation counter: a record issued on the host takes the event's next
//! generation and the stream publishes it when it reaches the record; a wait issued on the host
//! captures the latest generation issued so far and holds back only its own stream until that
//! generation is published. A failing or panicking kernel poisons the rest of the current
//! request on its stream (later launches are skipped, records still publish so no other stream
//! stalls) and the error is returned by the next [`CpuStream::synchronize`].

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Instant;

use streamrec_graph::{OpGraph, OpId};
use streamrec_kernels::cpu::Parallel;

use super::exec;
use super::memory::{BufInner, CpuWeights};
use crate::backend::{Span, SpanKind};
use crate::batch::Batch;
use crate::error::{Result, RuntimeError};

/// An event: a generation counter published by streams.
pub struct CpuEvent {
    inner: Arc<EventInner>,
}

struct EventInner {
    issued: AtomicU64,
    /// The last generation published.
    published: AtomicU64,
}

/// How long an idle worker (or a synchronising host) spins before it sleeps. Waking a sleeping
/// thread costs tens of microseconds on a virtual machine; work that arrives within this window
/// is picked up at once. A spinner yields its core between checks after the first few
/// microseconds, so it never holds off a thread with real work.
const SPIN: std::time::Duration = std::time::Duration::from_micros(50);

/// What the ops of one request read. A stream receives it once per request, so a launch moves
/// no reference counts between threads.
struct Job {
    graph: Arc<OpGraph>,
    weights: Arc<CpuWeights>,
    bufs: Arc<BufInner>,
    input: Option<Arc<Batch>>,
}

impl Job {
    fn is(
        &self,
        graph: &Arc<OpGraph>,
        weights: &Arc<CpuWeights>,
        bufs: &Arc<BufInner>,
        input: &Option<Arc<Batch>>,
    ) -> bool {
        Arc::ptr_eq(&self.graph, graph)
            && Arc::ptr_eq(&self.weights, weights)
            && Arc::ptr_eq(&self.bufs, bufs)
            && match (&self.input, input) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
    }
}

enum Cmd {
    /// The job the following launches belong to.
    Job(Arc<Job>),
    Op {
        op: OpId,
        batch: usize,
    },
    Download {
        bufs: Arc<BufInner>,
        op: OpId,
        batch: usize,
    },
    Record(Arc<EventInner>, u64),
    Wait(Arc<EventInner>, u64),
}

struct StreamShared {
    state: Mutex<StreamState>,
    /// Commands finished (mirrors `StreamState::done`), readable without the lock.
    finished: AtomicU64,
    /// Commands queued and not yet taken, readable without the lock.
    queued: AtomicUsize,
    tracing: AtomicBool,
    spans: Mutex<Vec<Span>>,
}

/// A stream's queue and progress, under one lock. The queue keeps its capacity, so a steady
/// stream of requests allocates nothing.
#[derive(Default)]
struct StreamState {
    cmds: VecDeque<Cmd>,
    /// A worker is running this stream's head command (commands of a stream run in order, one
    /// at a time).
    busy: bool,
    /// The job of the launches being taken.
    job: Option<Arc<Job>>,
    /// The host sleeps in a synchronise of this stream (so finishing must wake it).
    host_waiting: bool,
    issued: u64,
    done: u64,
    error: Option<RuntimeError>,
}

/// A stream: an ordered queue of commands that the pool's workers run.
pub struct CpuStream {
    shared: Arc<StreamShared>,
    /// The job last sent to the stream (host side).
    job: Mutex<Option<Arc<Job>>>,
    pool: Arc<Pool>,
}

impl CpuStream {
    fn push(&self, cmd: Cmd) -> Result<()> {
        let mut st = self.shared.state.lock().expect("stream state");
        st.issued += 1;
        st.cmds.push_back(cmd);
        self.shared.queued.fetch_add(1, Ordering::Release);
        drop(st);
        self.pool.notify();
        Ok(())
    }
}

impl Drop for CpuStream {
    fn drop(&mut self) {
        let mut list = self.pool.streams.write().expect("stream list");
        let kept: Vec<Arc<StreamShared>> = list
            .iter()
            .filter(|s| !Arc::ptr_eq(s, &self.shared))
            .cloned()
            .collect();
        *list = Arc::new(kept);
    }
}

/// The shared state of the worker pool.
#[derive(Debug)]
pub(super) struct Pool {
    /// Every live stream (copied on change, so a scan takes no lock for long).
    streams: RwLock<Arc<Vec<Arc<StreamShared>>>>,
    /// Tile jobs posted by running kernels, for idle threads to help with.
    tiles: Mutex<Vec<Arc<TileJob>>>,
    /// How many tile jobs are posted (read without the lock).
    tiles_posted: AtomicUsize,
    /// Bumped whenever work may have appeared (a push, a publish, a tile job).
    epoch: AtomicU64,
    /// Threads asleep on `cv`.
    sleepers: AtomicUsize,
    sleep: Mutex<()>,
    cv: Condvar,
    shutdown: AtomicBool,
    /// Threads that run work: the workers that started and one synchronising host.
    width: AtomicUsize,
    /// Where the next scan of the streams starts (fairness between streams).
    next_stream: AtomicUsize,
    epoch_start: Instant,
}

impl std::fmt::Debug for StreamShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamShared")
    }
}

impl std::fmt::Debug for TileJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TileJob")
    }
}

/// One kernel's tiles: `n` calls of `task`, taken by index.
struct TileJob {
    /// The kernel's task; valid while `done < n` (the poster waits for that before returning).
    task: *const (dyn Fn(usize) + Sync),
    n: usize,
    next: AtomicUsize,
    done: AtomicUsize,
    panicked: AtomicBool,
}

// SAFETY: `task` points to a `Sync` closure that outlives every call made through it (the
// poster returns only when all `n` calls have finished).
unsafe impl Send for TileJob {}
// SAFETY: as above.
unsafe impl Sync for TileJob {}

impl TileJob {
    /// Runs tiles of this job until none is left; true if it ran any.
    fn help(&self) -> bool {
        let mut ran = false;
        loop {
            let i = self.next.fetch_add(1, Ordering::AcqRel);
            if i >= self.n {
                return ran;
            }
            ran = true;
            // SAFETY: `i < n`, so the poster is still waiting for this call (see `task`).
            let task = unsafe { &*self.task };
            if catch_unwind(AssertUnwindSafe(|| task(i))).is_err() {
                self.panicked.store(true, Ordering::Release);
            }
            self.done.fetch_add(1, Ordering::AcqRel);
        }
    }
}

impl Pool {
    /// Work may have appeared: wakes a sleeping thread.
    fn notify(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = self.sleep.lock().expect("pool sleep");
            self.cv.notify_all();
        }
    }

    fn wake_all(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        let _g = self.sleep.lock().expect("pool sleep");
        self.cv.notify_all();
    }

    /// Sleeps until `notify` unless work appeared since `seen` (or `ready` holds).
    fn sleep_unless(&self, seen: u64, ready: &dyn Fn() -> bool) {
        let g = self.sleep.lock().expect("pool sleep");
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        if self.epoch.load(Ordering::SeqCst) == seen
            && !ready()
            && !self.shutdown.load(Ordering::SeqCst)
        {
            let _g = self.cv.wait(g).expect("pool sleep");
        }
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
    }

    /// Helps with a posted tile job; true if it ran a tile.
    fn help_tiles(&self) -> bool {
        if self.tiles_posted.load(Ordering::Acquire) == 0 {
            return false;
        }
        let job = self.tiles.lock().expect("tile jobs").first().cloned();
        job.is_some_and(|j| j.help())
    }

    /// Runs one runnable command of some stream (and the ones after it on the same stream
    /// while they stay runnable); true if it ran any.
    fn run_streams(&self) -> bool {
        let list = Arc::clone(&self.streams.read().expect("stream list"));
        let n = list.len();
        if n == 0 {
            return false;
        }
        let first = self.next_stream.fetch_add(1, Ordering::Relaxed);
        for j in 0..n {
            let s = &list[(first + j) % n];
            if s.queued.load(Ordering::Acquire) == 0 {
                continue;
            }
            if run_stream(self, s) {
                return true;
            }
        }
        false
    }

    /// One step of a thread that works for the pool: tiles first (a kernel is waiting on
    /// them), then stream commands. True if it did anything.
    fn step(&self) -> bool {
        self.help_tiles() || self.run_streams()
    }

    /// Works for the pool until `stop()` holds: steps while there is work, spins briefly when
    /// there is none, and then calls `sleep(seen)` with the epoch it last saw (which sleeps
    /// unless work appeared since, or returns at once when it finds `stop` holding).
    fn work_until(&self, stop: &dyn Fn() -> bool, mut sleep: impl FnMut(u64)) {
        while !stop() {
            let seen = self.epoch.load(Ordering::SeqCst);
            if self.step() {
                continue;
            }
            if spin_until(|| stop() || self.epoch.load(Ordering::SeqCst) != seen) {
                continue;
            }
            sleep(seen);
        }
    }
}

impl Parallel for Pool {
    fn for_each(&self, n: usize, task: &(dyn Fn(usize) + Sync)) {
        if n <= 1 || self.width() <= 1 {
            return (0..n).for_each(task);
        }
        // SAFETY (of the lifetime erasure): the job is removed from the list and every call
        // has finished before this function returns, so no thread uses `task` afterwards.
        let task: *const (dyn Fn(usize) + Sync + '_) = task;
        let task: *const (dyn Fn(usize) + Sync) = unsafe { std::mem::transmute(task) };
        let job = Arc::new(TileJob {
            task,
            n,
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
        });
        self.tiles.lock().expect("tile jobs").push(Arc::clone(&job));
        self.tiles_posted.fetch_add(1, Ordering::Release);
        self.notify();
        job.help();
        {
            let mut list = self.tiles.lock().expect("tile jobs");
            list.retain(|j| !Arc::ptr_eq(j, &job));
            self.tiles_posted.fetch_sub(1, Ordering::Release);
        }
        // Tiles other threads took are short: wait for them without sleeping, yielding the
        // core now and then in case the thread running one was preempted.
        let mut spins = 0u32;
        while job.done.load(Ordering::Acquire) < n {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(256) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        if job.panicked.load(Ordering::Acquire) {
            panic!("a tile of this kernel panicked");
        }
    }

    fn width(&self) -> usize {
        self.width.load(Ordering::Relaxed)
    }
}

/// Spins (then yields) until `ready()` holds or [`SPIN`] has passed; true when it holds.
fn spin_until(ready: impl Fn() -> bool) -> bool {
    let t0 = Instant::now();
    loop {
        if ready() {
            return true;
        }
        let waited = t0.elapsed();
        if waited > SPIN {
            return false;
        }
        if waited < std::time::Duration::from_micros(5) {
            for _ in 0..32 {
                std::hint::spin_loop();
            }
        } else {
            std::thread::yield_now();
        }
    }
}

/// A pool worker: runs tiles and stream commands, spinning a little and then sleeping when
/// there are none.
fn worker_main(pool: &Pool) {
    pool.work_until(&|| pool.shutdown.load(Ordering::SeqCst), |seen| {
        pool.sleep_unless(seen, &|| false)
    });
}

/// Takes and runs the runnable commands at the head of `s`, in order; false if its head was
/// not runnable (empty, running elsewhere, or a wait on an unpublished event).
fn run_stream(pool: &Pool, s: &StreamShared) -> bool {
    let mut ran = false;
    loop {
        let (cmd, job, poisoned) = {
            let mut st = s.state.lock().expect("stream state");
            if st.busy {
                return ran;
            }
            let runnable = match st.cmds.front() {
                None => false,
                Some(Cmd::Wait(ev, gen)) => ev.published.load(Ordering::Acquire) >= *gen,
                Some(_) => true,
            };
            if !runnable {
                return ran;
            }
            let cmd = st.cmds.pop_front().expect("a queued command");
            s.queued.fetch_sub(1, Ordering::AcqRel);
            st.busy = true;
            (cmd, st.job.clone(), st.error.is_some())
        };
        let mut new_job = None;
        let mut err = None;
        let mut published = false;
        match cmd {
            Cmd::Job(j) => new_job = Some(j),
            Cmd::Op { op, batch } => {
                if let (false, Some(j)) = (poisoned, &job) {
                    err = run_op(pool, s, j, op, batch);
                }
            }
            Cmd::Download { bufs, op, batch } => {
                if !poisoned {
                    // SAFETY: the op's writer ran earlier on this stream or was waited for;
                    // only this command writes the scores buffer, and the host reads it after
                    // synchronising.
                    unsafe {
                        let src = bufs.acts[op].get();
                        bufs.scores.get_mut()[..batch].copy_from_slice(&src[..batch]);
                    }
                }
            }
            Cmd::Record(ev, gen) => {
                ev.published.fetch_max(gen, Ordering::AcqRel);
                published = true;
            }
            // Taken only once its event was published.
            Cmd::Wait(..) => {}
        }
        let wake_host = {
            let mut st = s.state.lock().expect("stream state");
            if let Some(j) = new_job {
                st.job = Some(j);
            }
            if let Some(e) = err {
                st.error.get_or_insert(e);
            }
            st.busy = false;
            st.done += 1;
            s.finished.store(st.done, Ordering::Release);
            st.done == st.issued && st.host_waiting
        };
        if wake_host {
            pool.wake_all();
        } else if published {
            // A stream held at a wait on this event may run now.
            pool.notify();
        }
        ran = true;
    }
}

/// Runs one op of a stream's job; the error if it failed or panicked.
fn run_op(pool: &Pool, s: &StreamShared, j: &Job, op: OpId, batch: usize) -> Option<RuntimeError> {
    let Job {
        graph,
        weights,
        bufs,
        input,
    } = j;
    // Clock reads only when a timeline is being recorded.
    let t0 = s
        .tracing
        .load(Ordering::Relaxed)
        .then(|| pool.epoch_start.elapsed());
    let res = catch_unwind(AssertUnwindSafe(|| {
        exec::run_op(&exec::OpCall {
            graph,
            id: op,
            weights: &weights.by_op[op],
            packed: weights.packed[op].as_ref(),
            folded: weights.folded[op],
            fused: &weights.fused[op],
            isa: weights.isa,
            by_op: &weights.by_op,
            place: &weights.place,
            bufs,
            input: input.as_deref(),
            batch,
            par: pool,
        })
    }));
    if let Some(t0) = t0 {
        let t1 = pool.epoch_start.elapsed();
        s.spans.lock().expect("spans").push(Span {
            kind: SpanKind::Op(op),
            start_us: t0.as_secs_f64() * 1e6,
            end_us: t1.as_secs_f64() * 1e6,
        });
    }
    match res {
        Ok(Ok(())) => None,
        Ok(Err(reason)) => Some(RuntimeError::Op {
            op: graph.op(op).name.clone(),
            panicked: false,
            reason,
        }),
        Err(p) => Some(RuntimeError::Op {
            op: graph.op(op).name.clone(),
            panicked: true,
            reason: panic_message(&p),
        }),
    }
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".into()
    }
}

impl Pool {
    /// A pool on `threads` threads in all: `threads - 1` workers, started now, plus the host
    /// thread that synchronises. Fewer workers if the system refuses some (the pool is as wide
    /// as what started).
    pub(super) fn start(threads: usize) -> (Arc<Pool>, Vec<JoinHandle<()>>) {
        let threads = threads.max(1);
        let pool = Arc::new(Pool {
            streams: RwLock::new(Arc::new(Vec::new())),
            tiles: Mutex::new(Vec::new()),
            tiles_posted: AtomicUsize::new(0),
            epoch: AtomicU64::new(0),
            sleepers: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            cv: Condvar::new(),
            shutdown: AtomicBool::new(false),
            width: AtomicUsize::new(threads),
            next_stream: AtomicUsize::new(0),
            epoch_start: Instant::now(),
        });
        let mut workers = Vec::with_capacity(threads - 1);
        for i in 1..threads {
            let p = Arc::clone(&pool);
            match std::thread::Builder::new()
                .name(format!("streamrec-cpu-{i}"))
                .spawn(move || worker_main(&p))
            {
                Ok(w) => workers.push(w),
                Err(e) => {
                    // Fewer threads than asked: the pool is as wide as what started.
                    eprintln!(
                        "streamrec: started {} of {} CPU threads ({e}); running on those",
                        workers.len() + 1,
                        threads
                    );
                    break;
                }
            }
        }
        pool.width.store(workers.len() + 1, Ordering::Release);
        (pool, workers)
    }

    /// Stops the workers and waits for them.
    pub(super) fn stop(&self, workers: Vec<JoinHandle<()>>) {
        self.shutdown.store(true, Ordering::SeqCst);
        self.wake_all();
        for w in workers {
            let _ = w.join();
        }
    }

    /// The threads streams and kernels run on (the host thread included).
    pub(super) fn threads(&self) -> usize {
        self.width.load(Ordering::Acquire)
    }

    /// A new stream, run by this pool.
    pub(super) fn new_stream(self: &Arc<Self>) -> CpuStream {
        let shared = Arc::new(StreamShared {
            state: Mutex::new(StreamState::default()),
            queued: AtomicUsize::new(0),
            finished: AtomicU64::new(0),
            tracing: AtomicBool::new(false),
            spans: Mutex::new(Vec::new()),
        });
        {
            let mut list = self.streams.write().expect("stream list");
            let mut v: Vec<Arc<StreamShared>> = list.iter().cloned().collect();
            v.push(Arc::clone(&shared));
            *list = Arc::new(v);
        }
        CpuStream {
            shared,
            job: Mutex::new(None),
            pool: Arc::clone(self),
        }
    }
}

impl CpuEvent {
    /// An event never recorded.
    pub(super) fn new() -> Self {
        CpuEvent {
            inner: Arc::new(EventInner {
                issued: AtomicU64::new(0),
                published: AtomicU64::new(0),
            }),
        }
    }
}

impl CpuStream {
    /// Enqueues `op` for `batch` samples of the request staged in `bufs` (`input`), sending
    /// the stream a new job first when the graph, weights, buffers or request changed.
    pub(super) fn launch(
        &self,
        graph: &Arc<OpGraph>,
        weights: &Arc<CpuWeights>,
        bufs: &Arc<BufInner>,
        input: Option<Arc<Batch>>,
        op: OpId,
        batch: usize,
    ) -> Result<()> {
        {
            let mut last = self.job.lock().expect("stream job");
            if !last
                .as_ref()
                .is_some_and(|j| j.is(graph, weights, bufs, &input))
            {
                let j = Arc::new(Job {
                    graph: Arc::clone(graph),
                    weights: Arc::clone(weights),
                    bufs: Arc::clone(bufs),
                    input,
                });
                *last = Some(Arc::clone(&j));
                self.push(Cmd::Job(j))?;
            }
        }
        self.push(Cmd::Op { op, batch })
    }

    /// Enqueues a record of `event`.
    pub(super) fn record(&self, event: &CpuEvent) -> Result<()> {
        let gen = event.inner.issued.fetch_add(1, Ordering::AcqRel) + 1;
        self.push(Cmd::Record(Arc::clone(&event.inner), gen))
    }

    /// Holds this stream until the latest record of `event` issued so far was reached.
    pub(super) fn wait(&self, event: &CpuEvent) -> Result<()> {
        let gen = event.inner.issued.load(Ordering::Acquire);
        if gen == 0 {
            // Waiting on an event that was never recorded completes at once, as in CUDA.
            return Ok(());
        }
        self.push(Cmd::Wait(Arc::clone(&event.inner), gen))
    }

    /// Enqueues the copy of `op`'s first `batch` values to the scores buffer.
    pub(super) fn download(&self, bufs: &Arc<BufInner>, op: OpId, batch: usize) -> Result<()> {
        self.push(Cmd::Download {
            bufs: Arc::clone(bufs),
            op,
            batch,
        })
    }

    /// Works alongside the pool until everything enqueued so far has run; the first error of
    /// the stream since the last synchronise.
    pub(super) fn synchronize(&self) -> Result<()> {
        let sh = &self.shared;
        let target = sh.state.lock().expect("stream state").issued;
        let done = || sh.finished.load(Ordering::Acquire) >= target;
        let pool = &self.pool;
        // The host works alongside the pool until its stream is done.
        pool.work_until(&done, |seen| {
            let mut st = sh.state.lock().expect("stream state");
            if st.done >= target {
                return;
            }
            // Wake on the stream finishing, or on new work the host could help with.
            st.host_waiting = true;
            drop(st);
            pool.sleep_unless(seen, &done);
            sh.state.lock().expect("stream state").host_waiting = false;
        });
        let mut st = sh.state.lock().expect("stream state");
        match st.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Turns per-op spans on or off.
    pub(super) fn set_tracing(&self, on: bool) {
        self.shared.tracing.store(on, Ordering::Relaxed);
    }

    /// Takes the spans recorded since the last call.
    pub(super) fn take_spans(&self) -> Vec<Span> {
        std::mem::take(&mut *self.shared.spans.lock().expect("spans"))
    }
}
