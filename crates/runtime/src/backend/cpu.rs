//! The CPU backend: each stream is an OS thread with a FIFO of commands; an event is a
//! generation counter with a condition variable.
//!
//! A record issued on the host takes the event's next generation; the stream thread publishes it
//! when it reaches the record. A wait issued on the host captures the latest generation issued so
//! far and blocks only its own stream's thread until that generation is published. A failing or
//! panicking kernel poisons the rest of the current request on its stream (later launches are
//! skipped, records still publish so no other stream deadlocks) and the error is returned by the
//! next [`Backend::synchronize`] of that stream.
//!
//! Memory: every op owns one `[max_batch, width]` activation buffer, allocated once per context.
//! Kernels on different streams read and write these buffers concurrently; that is sound because
//! a validated plan orders every reader after its writer (events give the happens-before edge),
//! no two ops write the same buffer, and a context runs one request at a time.

use std::cell::UnsafeCell;
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use streamrec_graph::{OpGraph, OpId, OpKind};
use streamrec_kernels::cpu::PackedLinear;

use super::{Backend, Span, SpanKind};
use crate::batch::Batch;
use crate::error::{Result, RuntimeError};
use crate::exec::{self, OpWeights};
use crate::weights::Weights;

/// The CPU backend.
#[derive(Debug)]
pub struct CpuBackend {
    epoch: Instant,
    spin: Arc<SpinPolicy>,
    intra_op_threads: usize,
}

/// Spinning before sleeping saves a wake-up but burns a core: stream threads spin only while
/// this backend's streams fit on the machine's cores, and so does the host (its spin yields).
#[derive(Debug)]
struct SpinPolicy {
    live_streams: AtomicUsize,
    cores: usize,
}

impl SpinPolicy {
    fn streams_may_spin(&self) -> bool {
        self.live_streams.load(Ordering::Relaxed) <= self.cores
    }

    fn host_may_spin(&self) -> bool {
        self.live_streams.load(Ordering::Relaxed) <= self.cores
    }
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuBackend {
    /// A CPU backend; span times count from now.
    pub fn new() -> Self {
        Self::with_intra_op_threads(1)
    }

    /// A CPU backend whose large linear layers split their output columns over `threads` OS
    /// threads (1: every kernel runs on its stream's thread alone).
    pub fn with_intra_op_threads(threads: usize) -> Self {
        Self {
            intra_op_threads: threads.max(1),
            epoch: Instant::now(),
            spin: Arc::new(SpinPolicy {
                live_streams: AtomicUsize::new(0),
                cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            }),
        }
    }
}

/// A host-visible f32 buffer shared between stream threads (see the module docs for why the
/// unsynchronised access is sound).
pub(crate) struct SharedBuf {
    data: UnsafeCell<Box<[f32]>>,
}

// SAFETY: access is ordered by the plan's stream order and events (module docs); the buffer is
// never resized after creation.
unsafe impl Sync for SharedBuf {}
// SAFETY: a boxed slice of f32 can move between threads.
unsafe impl Send for SharedBuf {}

impl SharedBuf {
    /// A buffer of `len` floats, poisoned with NaN so unwritten elements show; an allocation
    /// the machine cannot make is an error, not an abort.
    fn new(len: usize) -> Result<Self> {
        let mut v: Vec<f32> = Vec::new();
        v.try_reserve_exact(len).map_err(|e| {
            RuntimeError::Input(format!(
                "cannot allocate an activation buffer of {len} floats ({e}); use a smaller batch"
            ))
        })?;
        v.resize(len, f32::NAN);
        Ok(Self {
            data: UnsafeCell::new(v.into_boxed_slice()),
        })
    }

    /// # Safety
    /// No other thread may write this buffer while the returned slice is alive.
    pub(crate) unsafe fn get(&self) -> &[f32] {
        // SAFETY: the caller guarantees no concurrent writer.
        unsafe { &*self.data.get() }
    }

    /// # Safety
    /// No other thread may read or write this buffer while the returned slice is alive.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn get_mut(&self) -> &mut [f32] {
        // SAFETY: the caller guarantees exclusive access.
        unsafe { &mut *self.data.get() }
    }
}

/// Per-context memory of the CPU backend.
pub struct CpuBuffers {
    inner: Arc<BufInner>,
}

pub(crate) struct BufInner {
    /// One activation buffer per op (DCN layers carry their `[B, rank]` scratch after it).
    pub(crate) acts: Vec<SharedBuf>,
    scores: SharedBuf,
    input: Mutex<Option<Arc<Batch>>>,
    max_batch: usize,
}

/// Weights of the CPU backend, resolved per op once.
pub struct CpuWeights {
    pub(crate) by_op: Vec<OpWeights>,
    /// Each linear layer's weight and bias, packed once into the panels the kernels stream.
    pub(crate) packed: Vec<Option<PackedLinear>>,
}

/// An event: a generation counter published by stream threads.
pub struct CpuEvent {
    inner: Arc<EventInner>,
}

struct EventInner {
    issued: AtomicU64,
    /// The last generation published, readable without the lock (for spinning waiters).
    published: AtomicU64,
    /// The last generation published, and how many threads sleep waiting for a later one.
    done: Mutex<(u64, usize)>,
    cv: Condvar,
}

/// How long an idle stream thread, or one waiting on an event, spins before it sleeps. Waking a
/// sleeping thread costs tens of microseconds on a virtual machine; work that arrives within
/// this window is picked up at once.
const SPIN: std::time::Duration = std::time::Duration::from_micros(40);

/// Spins until `ready()` holds or [`SPIN`] has passed; true when it holds. After a few
/// microseconds of busy spinning it yields the core between checks, so a spinner never holds
/// off a thread with real work when there are more threads than cores.
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
        if waited < std::time::Duration::from_micros(3) {
            for _ in 0..32 {
                std::hint::spin_loop();
            }
        } else {
            std::thread::yield_now();
        }
    }
}

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
        threads: usize,
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
    /// Commands queued and not yet taken, readable without the lock (for spinning).
    queued: AtomicU64,
    /// Commands finished (mirrors `StreamState::done`), readable without the lock.
    finished: AtomicU64,
    /// Signalled when a command is queued (the stream thread waits on it).
    work: Condvar,
    /// Signalled when every issued command has run (the host waits on it).
    cv: Condvar,
    tracing: AtomicBool,
    spans: Mutex<Vec<Span>>,
}

/// A stream's queue and progress, under one lock. The queue keeps its capacity, so a steady
/// stream of requests allocates nothing.
#[derive(Default)]
struct StreamState {
    cmds: VecDeque<Cmd>,
    closed: bool,
    /// The stream thread sleeps on `work` (so a push must wake it).
    idle: bool,
    /// The host sleeps on `cv` in a synchronise (so finishing must wake it).
    host_waiting: bool,
    issued: u64,
    done: u64,
    error: Option<String>,
}

/// A stream: one OS thread draining a FIFO of commands.
pub struct CpuStream {
    shared: Arc<StreamShared>,
    /// The job last sent to the stream thread (host side).
    job: Mutex<Option<Arc<Job>>>,
    thread: Option<JoinHandle<()>>,
    spin: Arc<SpinPolicy>,
}

impl CpuStream {
    fn push(&self, cmd: Cmd) -> Result<()> {
        let mut st = self.shared.state.lock().expect("stream state");
        if st.closed {
            return Err(RuntimeError::Execution("stream thread has stopped".into()));
        }
        st.issued += 1;
        st.cmds.push_back(cmd);
        self.shared.queued.fetch_add(1, Ordering::Release);
        // Waking costs a system call: only when the thread sleeps.
        let wake = st.idle;
        drop(st);
        if wake {
            self.shared.work.notify_one();
        }
        Ok(())
    }
}

impl Drop for CpuStream {
    fn drop(&mut self) {
        if let Ok(mut st) = self.shared.state.lock() {
            st.closed = true;
        }
        self.shared.work.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.spin.live_streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The next command, blocking while the queue is empty; `None` once the stream is closed.
fn next_cmd(shared: &StreamShared, spin: &SpinPolicy) -> Option<Cmd> {
    if shared.queued.load(Ordering::Acquire) == 0 && spin.streams_may_spin() {
        spin_until(|| shared.queued.load(Ordering::Acquire) > 0);
    }
    let mut st = shared.state.lock().expect("stream state");
    loop {
        if let Some(c) = st.cmds.pop_front() {
            shared.queued.fetch_sub(1, Ordering::AcqRel);
            return Some(c);
        }
        if st.closed {
            return None;
        }
        st.idle = true;
        st = shared.work.wait(st).expect("stream state");
        st.idle = false;
    }
}

fn stream_main(shared: Arc<StreamShared>, epoch: Instant, spin: Arc<SpinPolicy>) {
    let mut job: Option<Arc<Job>> = None;
    while let Some(cmd) = next_cmd(&shared, &spin) {
        match cmd {
            Cmd::Job(j) => job = Some(j),
            Cmd::Op { op, batch, threads } => {
                let poisoned = shared.state.lock().expect("stream state").error.is_some();
                if let (false, Some(j)) = (poisoned, &job) {
                    let Job {
                        graph,
                        weights,
                        bufs,
                        input,
                    } = &**j;
                    // Clock reads only when a timeline is being recorded.
                    let t0 = shared
                        .tracing
                        .load(Ordering::Relaxed)
                        .then(|| epoch.elapsed());
                    let res = catch_unwind(AssertUnwindSafe(|| {
                        exec::run_op(&exec::OpCall {
                            graph,
                            id: op,
                            weights: &weights.by_op[op],
                            packed: weights.packed[op].as_ref(),
                            bufs,
                            input: input.as_deref(),
                            batch,
                            threads,
                        })
                    }));
                    if let Some(t0) = t0 {
                        let t1 = epoch.elapsed();
                        shared.spans.lock().expect("spans").push(Span {
                            kind: SpanKind::Op(op),
                            start_us: t0.as_secs_f64() * 1e6,
                            end_us: t1.as_secs_f64() * 1e6,
                        });
                    }
                    let err = match res {
                        Ok(Ok(())) => None,
                        Ok(Err(e)) => Some(format!("op `{}`: {e}", graph.op(op).name)),
                        Err(p) => Some(format!(
                            "op `{}` panicked: {}",
                            graph.op(op).name,
                            panic_message(&p)
                        )),
                    };
                    if let Some(e) = err {
                        shared
                            .state
                            .lock()
                            .expect("stream state")
                            .error
                            .get_or_insert(e);
                    }
                }
            }
            Cmd::Download { bufs, op, batch } => {
                let poisoned = shared.state.lock().expect("stream state").error.is_some();
                if !poisoned {
                    // SAFETY: the op's writer ran earlier on this stream or was waited for; only
                    // this command writes the scores buffer, and the host reads it after
                    // synchronising.
                    unsafe {
                        let src = bufs.acts[op].get();
                        bufs.scores.get_mut()[..batch].copy_from_slice(&src[..batch]);
                    }
                }
            }
            Cmd::Record(ev, gen) => {
                let mut d = ev.done.lock().expect("event");
                if d.0 < gen {
                    d.0 = gen;
                    ev.published.store(gen, Ordering::Release);
                }
                if d.1 > 0 {
                    ev.cv.notify_all();
                }
            }
            Cmd::Wait(ev, gen) => {
                let spun = spin.streams_may_spin()
                    && spin_until(|| ev.published.load(Ordering::Acquire) >= gen);
                if !spun {
                    let mut d = ev.done.lock().expect("event");
                    while d.0 < gen {
                        d.1 += 1;
                        d = ev.cv.wait(d).expect("event");
                        d.1 -= 1;
                    }
                }
            }
        }
        let mut st = shared.state.lock().expect("stream state");
        st.done += 1;
        shared.finished.store(st.done, Ordering::Release);
        if st.done == st.issued && st.host_waiting {
            shared.cv.notify_all();
        }
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

impl Backend for CpuBackend {
    type Stream = CpuStream;
    type Event = CpuEvent;
    type Buffers = CpuBuffers;
    type DeviceWeights = CpuWeights;
    type Graph = ();

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn load_weights(&self, graph: &OpGraph, weights: &Weights) -> Result<CpuWeights> {
        let by_op: Vec<OpWeights> = (0..graph.len())
            .map(|id| exec::resolve_weights(graph, id, weights))
            .collect::<Result<_>>()?;
        let packed = by_op
            .iter()
            .map(|w| match w {
                OpWeights::Linear { weight, bias } => Some(PackedLinear::new(
                    &weight.data,
                    weight.shape[0],
                    weight.shape[1],
                    Some(&bias.data),
                )),
                _ => None,
            })
            .collect();
        Ok(CpuWeights { by_op, packed })
    }

    fn new_stream(&self) -> Result<CpuStream> {
        let shared = Arc::new(StreamShared {
            state: Mutex::new(StreamState::default()),
            queued: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            work: Condvar::new(),
            cv: Condvar::new(),
            tracing: AtomicBool::new(false),
            spans: Mutex::new(Vec::new()),
        });
        let s2 = Arc::clone(&shared);
        let epoch = self.epoch;
        let spin = Arc::clone(&self.spin);
        self.spin.live_streams.fetch_add(1, Ordering::Relaxed);
        let thread = std::thread::Builder::new()
            .name("streamrec-cpu-stream".into())
            .spawn(move || stream_main(s2, epoch, spin))
            .map_err(|e| RuntimeError::Execution(format!("cannot start a stream thread: {e}")))?;
        Ok(CpuStream {
            shared,
            job: Mutex::new(None),
            thread: Some(thread),
            spin: Arc::clone(&self.spin),
        })
    }

    fn new_event(&self) -> Result<CpuEvent> {
        Ok(CpuEvent {
            inner: Arc::new(EventInner {
                issued: AtomicU64::new(0),
                published: AtomicU64::new(0),
                done: Mutex::new((0, 0)),
                cv: Condvar::new(),
            }),
        })
    }

    fn alloc_buffers(&self, graph: &OpGraph, max_batch: usize) -> Result<CpuBuffers> {
        let acts = graph
            .ops()
            .map(|op| {
                let extra = match op.kind {
                    OpKind::DcnCross { rank, .. } => rank,
                    _ => 0,
                };
                let len = op
                    .width
                    .checked_add(extra)
                    .and_then(|w| w.checked_mul(max_batch))
                    .ok_or_else(|| {
                        RuntimeError::Input(format!(
                            "{}: an activation of {max_batch} x {} floats overflows",
                            op.name,
                            op.width.saturating_add(extra)
                        ))
                    })?;
                SharedBuf::new(len)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(CpuBuffers {
            inner: Arc::new(BufInner {
                acts,
                scores: SharedBuf::new(max_batch)?,
                input: Mutex::new(None),
                max_batch,
            }),
        })
    }

    fn upload(&self, _stream: &CpuStream, bufs: &CpuBuffers, batch: &Arc<Batch>) -> Result<()> {
        if batch.size > bufs.inner.max_batch {
            return Err(RuntimeError::BatchTooLarge {
                batch: batch.size,
                max: bufs.inner.max_batch,
            });
        }
        // Host memory is shared: staging is just handing the batch to the launches that follow.
        *bufs.inner.input.lock().expect("input slot") = Some(Arc::clone(batch));
        Ok(())
    }

    fn launch(
        &self,
        stream: &CpuStream,
        graph: &Arc<OpGraph>,
        op: OpId,
        weights: &Arc<CpuWeights>,
        bufs: &CpuBuffers,
        batch: usize,
    ) -> Result<()> {
        if batch > bufs.inner.max_batch {
            return Err(RuntimeError::BatchTooLarge {
                batch,
                max: bufs.inner.max_batch,
            });
        }
        let input = bufs.inner.input.lock().expect("input slot").clone();
        {
            let mut last = stream.job.lock().expect("stream job");
            if !last
                .as_ref()
                .is_some_and(|j| j.is(graph, weights, &bufs.inner, &input))
            {
                let j = Arc::new(Job {
                    graph: Arc::clone(graph),
                    weights: Arc::clone(weights),
                    bufs: Arc::clone(&bufs.inner),
                    input,
                });
                *last = Some(Arc::clone(&j));
                stream.push(Cmd::Job(j))?;
            }
        }
        stream.push(Cmd::Op {
            op,
            batch,
            threads: self.intra_op_threads,
        })
    }

    fn record(&self, stream: &CpuStream, event: &CpuEvent) -> Result<()> {
        let gen = event.inner.issued.fetch_add(1, Ordering::AcqRel) + 1;
        stream.push(Cmd::Record(Arc::clone(&event.inner), gen))
    }

    fn wait(&self, stream: &CpuStream, event: &CpuEvent) -> Result<()> {
        let gen = event.inner.issued.load(Ordering::Acquire);
        if gen == 0 {
            // Waiting on an event that was never recorded completes at once, as in CUDA.
            return Ok(());
        }
        stream.push(Cmd::Wait(Arc::clone(&event.inner), gen))
    }

    fn download(
        &self,
        stream: &CpuStream,
        bufs: &CpuBuffers,
        op: OpId,
        batch: usize,
    ) -> Result<()> {
        stream.push(Cmd::Download {
            bufs: Arc::clone(&bufs.inner),
            op,
            batch,
        })
    }

    fn synchronize(&self, stream: &CpuStream) -> Result<()> {
        let sh = &stream.shared;
        let target = sh.state.lock().expect("stream state").issued;
        if self.spin.host_may_spin() {
            spin_until(|| sh.finished.load(Ordering::Acquire) >= target);
        }
        let mut st = sh.state.lock().expect("stream state");
        while st.done < st.issued {
            st.host_waiting = true;
            st = sh.cv.wait(st).expect("stream state");
            st.host_waiting = false;
        }
        match st.error.take() {
            Some(e) => Err(RuntimeError::Execution(e)),
            None => Ok(()),
        }
    }

    fn scores(&self, bufs: &CpuBuffers, batch: usize) -> Result<Vec<f32>> {
        // SAFETY: called after synchronising every stream of the context; nothing runs on it.
        let s = unsafe { bufs.inner.scores.get() };
        Ok(s[..batch].to_vec())
    }

    fn set_tracing(&self, stream: &CpuStream, on: bool) {
        stream.shared.tracing.store(on, Ordering::Relaxed);
    }

    fn take_spans(&self, stream: &CpuStream) -> Vec<Span> {
        std::mem::take(&mut *stream.shared.spans.lock().expect("spans"))
    }
}
