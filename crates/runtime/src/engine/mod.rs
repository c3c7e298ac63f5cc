//! The engine: weights + plan + a pool of execution contexts on one backend.
//!
//! [`Infer`] is an engine on any backend, type-erased (what the server and `measure`
//! use); [`build_engine`] builds one on the backend a [`BackendKind`] picks at run time.
//!
//! A request takes a free context, stages its inputs on stream 0, forks the other streams off
//! stream 0 with an event, issues the plan's launches, records and waits in the plan's issue
//! order, copies the scores out on the output op's stream, joins every stream back into
//! stream 0 and synchronises once. With `graphs` on (and a backend that can capture), the plan is
//! captured once per batch bucket (powers of two up to the max batch; inputs are padded with
//! empty samples) and replayed per request.
//!
//! Synchronising: every other stream records a join event after its last work and stream 0
//! waits on it, so stream 0's completion implies every stream's. Where the backend reports every
//! stream's errors through any one synchronise ([`Backend::join_reports_all_errors`], CUDA), a
//! request synchronises stream 0 only; otherwise (the CPU backend, whose errors are per stream),
//! and after a request that failed before its joins were issued, every stream.
//!
//! Measurements: per request, the backend marks stream 0 before the plan's first launch (after
//! the inputs are staged) and after the join (and the score copy); the device time between the
//! marks is collected ([`Engine::take_gpu_times_us`], CUDA events; the CPU backend has none).
//! [`Engine::launches_per_request`] is the backend's count of kernel launches and library calls
//! for the last eager request (or, with graphs, in the last captured graph). With tracing on,
//! eager requests give one span per op; a graph replay gives one span for the whole replay on
//! stream 0 (`graph replay (bucket N)`): per-op spans need eager mode.

mod build;

pub use build::{build_engine, resolve, BackendKind, BackendOptions};

use std::collections::{HashMap, VecDeque};
use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use streamrec_graph::{OpGraph, Plan, Step};

use crate::backend::{Backend, Span, SpanKind};
use crate::batch::{Batch, ModelKey, ValidatedBatch};
use crate::error::{BatchError, Result, RuntimeError};
use crate::trace::{replay_name, TraceEvent, REPLAY_OP};
use crate::weights::Weights;

/// How an engine is built.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Number of execution contexts (requests that can run at once).
    pub contexts: usize,
    /// Largest batch a request may have.
    pub max_batch: usize,
    /// Capture the plan as a graph per batch bucket and replay it (backends that can capture).
    pub graphs: bool,
    /// Record spans for timelines and profiles: one per op when running eagerly, one per
    /// replay (`graph replay (bucket N)`) with `graphs` on, where ops are not timed one by one
    /// (profiles need eager mode, see [`crate::trace::require_op_spans`]).
    pub trace: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            contexts: 1,
            max_batch: 1024,
            graphs: false,
            trace: false,
        }
    }
}

struct Context<B: Backend> {
    id: usize,
    streams: Vec<B::Stream>,
    events: Vec<B::Event>,
    fork: B::Event,
    joins: Vec<B::Event>,
    bufs: B::Buffers,
    graphs: HashMap<usize, B::Graph>,
}

/// Runs a plan on a backend; `infer` may be called from many threads at once.
pub struct Engine<B: Backend> {
    /// Dropped after the contexts, under [`Backend::quiesce`] (see `Drop`).
    backend: ManuallyDrop<B>,
    graph: Arc<OpGraph>,
    /// What a batch validated for this engine's model carries (computed once, not per request).
    model: ModelKey,
    plan: Plan,
    issue: Vec<(usize, Step)>,
    out_stream: usize,
    /// Dropped after the contexts, under [`Backend::quiesce`].
    weights: ManuallyDrop<Arc<B::DeviceWeights>>,
    pool: Mutex<VecDeque<Context<B>>>,
    freed: Condvar,
    cfg: EngineConfig,
    next_request: AtomicU64,
    trace: Mutex<Vec<TraceEvent>>,
    /// Device times of the requests run since the last take, us (at most [`MAX_GPU_TIMES`]).
    gpu_times: Mutex<Vec<f64>>,
    /// Launches of the last eager request or captured graph; [`NOT_COUNTED`] before any.
    launches: AtomicU64,
}

impl<B: Backend> Drop for Engine<B> {
    fn drop(&mut self) {
        // Freeing device resources may synchronise the device: other threads' captures are held
        // off meanwhile (none runs on this thread: `infer` ends its own before returning).
        let _quiet = self.backend.quiesce();
        self.pool
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        // SAFETY: both are dropped once, here, and not used afterwards.
        unsafe {
            ManuallyDrop::drop(&mut self.weights);
            ManuallyDrop::drop(&mut self.backend);
        }
    }
}

/// Device times kept between two [`Engine::take_gpu_times_us`] calls; later ones are dropped
/// (a caller that never takes them does not grow the engine without bound).
const MAX_GPU_TIMES: usize = 1 << 20;

/// [`Engine::launches`] before anything was counted.
const NOT_COUNTED: u64 = u64::MAX;

impl<B: Backend> Engine<B> {
    /// Builds an engine: uploads the weights, creates `cfg.contexts` contexts with the plan's
    /// streams, events and buffers.
    pub fn new(
        backend: B,
        graph: Arc<OpGraph>,
        plan: Plan,
        weights: &Weights,
        cfg: EngineConfig,
    ) -> Result<Self> {
        plan.validate(&graph)?;
        if cfg.contexts == 0 {
            return Err(RuntimeError::Config {
                option: "contexts",
                reason: "must be > 0".into(),
            });
        }
        if cfg.max_batch == 0 {
            return Err(RuntimeError::Config {
                option: "max batch",
                reason: "must be > 0".into(),
            });
        }
        let dw = Arc::new(backend.load_weights(&graph, weights)?);
        let k = plan.num_streams();
        let mut pool = VecDeque::with_capacity(cfg.contexts);
        for id in 0..cfg.contexts {
            let streams = (0..k)
                .map(|_| backend.new_stream())
                .collect::<Result<Vec<_>>>()?;
            for s in &streams {
                backend.set_tracing(s, cfg.trace);
            }
            pool.push_back(Context {
                id,
                events: (0..plan.num_events())
                    .map(|_| backend.new_event())
                    .collect::<Result<_>>()?,
                fork: backend.new_event()?,
                joins: (0..k).map(|_| backend.new_event()).collect::<Result<_>>()?,
                bufs: backend.alloc_buffers(&graph, cfg.max_batch)?,
                streams,
                graphs: HashMap::new(),
            });
        }
        let out_stream = plan.stream_of()[graph.output()];
        Ok(Self {
            issue: plan.issue_order(),
            out_stream,
            model: ModelKey::of(&graph.spec),
            weights: ManuallyDrop::new(dw),
            pool: Mutex::new(pool),
            freed: Condvar::new(),
            backend: ManuallyDrop::new(backend),
            graph,
            plan,
            cfg,
            next_request: AtomicU64::new(0),
            trace: Mutex::new(Vec::new()),
            gpu_times: Mutex::new(Vec::new()),
            launches: AtomicU64::new(NOT_COUNTED),
        })
    }

    /// The graph this engine runs.
    pub fn graph(&self) -> &Arc<OpGraph> {
        &self.graph
    }

    /// The plan this engine runs.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Runs one batch and returns its scores (one per sample). The batch was validated (a
    /// [`ValidatedBatch`]); the engine checks only that it was for this model.
    pub fn infer(&self, batch: &ValidatedBatch) -> Result<Vec<f32>> {
        if !batch.is_for_key(self.model) {
            return Err(BatchError::OtherModel {
                model: self.graph.spec.name.clone(),
            }
            .into());
        }
        let batch = batch.batch();
        if batch.size > self.cfg.max_batch {
            return Err(RuntimeError::BatchTooLarge {
                batch: batch.size,
                max: self.cfg.max_batch,
            });
        }
        let mut ctx = {
            let mut pool = self.pool.lock().expect("context pool");
            loop {
                // The context freed longest ago: requests take every context in turn.
                if let Some(c) = pool.pop_front() {
                    break c;
                }
                pool = self.freed.wait(pool).expect("context pool");
            }
        };
        let request = self.next_request.fetch_add(1, Ordering::Relaxed);
        let res = self.run(&mut ctx, batch, request);
        self.pool.lock().expect("context pool").push_back(ctx);
        self.freed.notify_one();
        res
    }

    fn run(&self, ctx: &mut Context<B>, batch: &Arc<Batch>, request: u64) -> Result<Vec<f32>> {
        let be = &self.backend;
        let mut replayed = None;
        let res = if self.cfg.graphs {
            let bucket = batch.size.next_power_of_two().min(self.cfg.max_batch);
            if !ctx.graphs.contains_key(&bucket) {
                self.capture(ctx, bucket)?;
            }
            if ctx.graphs.contains_key(&bucket) {
                replayed = Some(bucket);
                self.run_graph(ctx, batch, bucket)
            } else {
                self.run_eager(ctx, batch)
            }
        } else {
            self.run_eager(ctx, batch)
        };
        if self.cfg.trace {
            let mut tr = self.trace.lock().expect("trace");
            for (s, stream) in ctx.streams.iter().enumerate() {
                for Span {
                    kind,
                    start_us,
                    end_us,
                } in be.take_spans(stream)
                {
                    let (name, op, replay) = match kind {
                        SpanKind::Op(op) => (self.graph.op(op).name.clone(), op, None),
                        SpanKind::Replay => {
                            let bucket = replayed.unwrap_or(batch.size);
                            (replay_name(bucket), REPLAY_OP, Some(bucket))
                        }
                    };
                    tr.push(TraceEvent {
                        name,
                        op,
                        context: ctx.id,
                        stream: s,
                        start_us,
                        end_us,
                        batch: batch.size,
                        request,
                        replay,
                    });
                }
            }
        }
        let gpu = be.take_marked_us(&ctx.streams[0]);
        res?;
        if let Some(us) = gpu {
            let mut g = self.gpu_times.lock().expect("gpu times");
            if g.len() < MAX_GPU_TIMES {
                g.push(us);
            }
        }
        be.scores(&ctx.bufs, batch.size)
    }

    /// Launches and library calls issued so far on the context's streams, where counted.
    fn launch_count(&self, ctx: &Context<B>) -> Option<u64> {
        ctx.streams
            .iter()
            .map(|s| self.backend.launch_count(s))
            .sum()
    }

    /// Remembers the launches issued since `before` (a [`Engine::launch_count`]).
    fn count_launches(&self, ctx: &Context<B>, before: Option<u64>) {
        if let (Some(a), Some(b)) = (before, self.launch_count(ctx)) {
            self.launches.store(b.saturating_sub(a), Ordering::Relaxed);
        }
    }

    /// Captures the plan for `bucket` samples into a graph; false when the backend cannot.
    fn capture(&self, ctx: &mut Context<B>, bucket: usize) -> Result<bool> {
        let be = &self.backend;
        if !be.begin_capture(&ctx.streams[0])? {
            return Ok(false);
        }
        let before = self.launch_count(ctx);
        let issued = self.issue_plan(ctx, bucket, false);
        let g = be.end_capture(&ctx.streams[0]);
        issued?;
        ctx.graphs.insert(bucket, g?);
        self.count_launches(ctx, before);
        Ok(true)
    }

    /// Stages the padded batch, replays the bucket's graph (capturing it again when the
    /// backend refuses it as stale), copies the scores out and synchronises.
    fn run_graph(&self, ctx: &mut Context<B>, batch: &Arc<Batch>, bucket: usize) -> Result<()> {
        let be = &self.backend;
        let padded = batch.padded(bucket);
        be.upload(&ctx.streams[0], &ctx.bufs, &padded)?;
        let issued = self.replay_bucket(ctx, bucket);
        // The graph forks and joins inside; everything it ran is ordered before stream 0's end.
        let sync = self.sync(ctx, issued.is_ok());
        issued.and(sync)
    }

    fn replay_bucket(&self, ctx: &mut Context<B>, bucket: usize) -> Result<()> {
        let be = &self.backend;
        be.mark_start(&ctx.streams[0])?;
        let replayed = be.replay(&ctx.streams[0], &ctx.graphs[&bucket]);
        if let Err(RuntimeError::StaleGraph(_)) = replayed {
            // The upload reallocated a buffer the graph reads: capture again.
            ctx.graphs.remove(&bucket);
            self.capture(ctx, bucket)?;
            let g = ctx.graphs.get(&bucket).ok_or_else(|| {
                RuntimeError::Execution("capturing the graph again failed".into())
            })?;
            be.replay(&ctx.streams[0], g)?;
        } else {
            replayed?;
        }
        be.download(&ctx.streams[0], &ctx.bufs, self.graph.output(), bucket)?;
        be.mark_end(&ctx.streams[0])
    }

    fn run_eager(&self, ctx: &Context<B>, batch: &Arc<Batch>) -> Result<()> {
        let be = &self.backend;
        let s0 = &ctx.streams[0];
        let before = self.launch_count(ctx);
        be.upload(s0, &ctx.bufs, batch)?;
        let issued = be
            .mark_start(s0)
            .and_then(|()| self.issue_plan(ctx, batch.size, true))
            .and_then(|()| be.mark_end(s0));
        let sync = self.sync(ctx, issued.is_ok());
        if issued.is_ok() {
            self.count_launches(ctx, before);
        }
        issued.and(sync)
    }

    /// Forks, issues every step of the plan, optionally downloads the scores, and joins back to
    /// stream 0.
    fn issue_plan(&self, ctx: &Context<B>, batch: usize, download: bool) -> Result<()> {
        let be = &self.backend;
        let (s0, rest) = ctx.streams.split_first().expect("a plan has a stream");
        if !rest.is_empty() {
            be.record(s0, &ctx.fork)?;
            for s in rest {
                be.wait(s, &ctx.fork)?;
            }
        }
        for &(s, step) in &self.issue {
            let st = &ctx.streams[s];
            match step {
                Step::Launch(op) => {
                    be.launch(st, &self.graph, op, &self.weights, &ctx.bufs, batch)?
                }
                Step::Record(e) => be.record(st, &ctx.events[e])?,
                Step::Wait(e) => be.wait(st, &ctx.events[e])?,
            }
        }
        if download {
            be.download(
                &ctx.streams[self.out_stream],
                &ctx.bufs,
                self.graph.output(),
                batch,
            )?;
        }
        // Every other stream's last work (the score copy included) is ordered before this join.
        for (i, s) in rest.iter().enumerate() {
            be.record(s, &ctx.joins[i + 1])?;
            be.wait(s0, &ctx.joins[i + 1])?;
        }
        Ok(())
    }

    /// Waits for a request's work. `joined`: every step was issued, the joins into stream 0
    /// included; then stream 0 alone suffices where the backend reports every stream's errors
    /// there. Otherwise (a request that failed half-way, or per-stream errors) every stream is
    /// synchronised, so no work of this request is left running on the context.
    fn sync(&self, ctx: &Context<B>, joined: bool) -> Result<()> {
        if joined && self.backend.join_reports_all_errors() {
            return self.backend.synchronize(&ctx.streams[0]);
        }
        let mut first = Ok(());
        for s in &ctx.streams {
            let r = self.backend.synchronize(s);
            if first.is_ok() {
                first = r;
            }
        }
        first
    }

    /// Takes the device time (us) of every request run since the last call (events around the
    /// plan on stream 0: from before its first launch to after the join), in completion order;
    /// empty on backends that do not time on the device (the CPU).
    pub fn take_gpu_times_us(&self) -> Vec<f64> {
        std::mem::take(&mut *self.gpu_times.lock().expect("gpu times"))
    }

    /// Kernel launches and library calls (cuBLAS, cuBLASLt) of one request, as the backend
    /// counted them: for the last eager request, or with graphs for the last graph captured (what
    /// one replay runs). `None` before the first request or where the backend does not count
    /// (the CPU).
    pub fn launches_per_request(&self) -> Option<u64> {
        match self.launches.load(Ordering::Relaxed) {
            NOT_COUNTED => None,
            n => Some(n),
        }
    }

    /// The batch sizes to run, in this order, for every context to have everything it keeps
    /// between requests ready: [`warm_up_sizes`] of this engine's settings.
    pub fn warm_up_sizes(&self) -> Vec<usize> {
        warm_up_sizes(self.cfg.max_batch, self.cfg.graphs, self.cfg.contexts)
    }

    /// Takes the spans recorded so far (with `trace` on).
    pub fn take_trace(&self) -> Vec<TraceEvent> {
        std::mem::take(&mut *self.trace.lock().expect("trace"))
    }
}

/// The batch sizes to run, in this order, for every context to have everything it keeps between
/// requests ready (buffers, and with graphs a capture per bucket): each size repeated once per
/// context (requests take the contexts in turn, so consecutive calls run on each). Without
/// graphs: 1 and the max batch; with graphs: every bucket (powers of two below the max batch,
/// and the max batch).
pub fn warm_up_sizes(max_batch: usize, graphs: bool, contexts: usize) -> Vec<usize> {
    let max = max_batch.max(1);
    let mut sizes = vec![1];
    if graphs {
        let mut b = 2;
        while b < max {
            sizes.push(b);
            b *= 2;
        }
    }
    sizes.push(max);
    sizes.dedup();
    sizes
        .into_iter()
        .flat_map(|s| std::iter::repeat_n(s, contexts.max(1)))
        .collect()
}

/// Anything that turns a batch into scores (an [`Engine`] on any backend): the one interface
/// the server and the measurement loop use.
pub trait Infer: Send + Sync {
    /// Runs one batch.
    fn infer(&self, batch: &ValidatedBatch) -> Result<Vec<f32>>;
    /// Takes the per-op spans recorded so far (engines built with tracing on).
    fn take_trace(&self) -> Vec<crate::trace::TraceEvent>;
    /// The backend's name.
    fn backend_name(&self) -> &'static str;
    /// Takes the device times (us) of the plans run since the last call, one per request, where
    /// the backend measures them with events around the plan (CUDA); empty otherwise.
    fn take_gpu_times_us(&self) -> Vec<f64> {
        Vec::new()
    }
    /// Kernel launches and library calls (e.g. cuBLAS) one request issues, where the backend
    /// counts them; None otherwise.
    fn launches_per_request(&self) -> Option<u64> {
        None
    }
    /// The batch sizes a server runs before it says it is ready, in order (see
    /// [`Engine::warm_up_sizes`]); one batch of 1 by default.
    fn warm_up_sizes(&self) -> Vec<usize> {
        vec![1]
    }
    /// How many batches can run at once (execution contexts); 1 by default.
    fn contexts(&self) -> usize {
        1
    }
}

impl<B: Backend> Infer for Engine<B> {
    fn infer(&self, batch: &ValidatedBatch) -> Result<Vec<f32>> {
        Engine::infer(self, batch)
    }
    fn take_trace(&self) -> Vec<crate::trace::TraceEvent> {
        Engine::take_trace(self)
    }
    fn backend_name(&self) -> &'static str {
        self.backend().name()
    }
    fn take_gpu_times_us(&self) -> Vec<f64> {
        Engine::take_gpu_times_us(self)
    }
    fn launches_per_request(&self) -> Option<u64> {
        Engine::launches_per_request(self)
    }
    fn warm_up_sizes(&self) -> Vec<usize> {
        Engine::warm_up_sizes(self)
    }
    fn contexts(&self) -> usize {
        self.cfg.contexts
    }
}
