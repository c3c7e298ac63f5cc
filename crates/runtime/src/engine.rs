//! The engine: weights + plan + a pool of execution contexts on one backend.
//!
//! A request takes a free context, stages its inputs on stream 0, forks the other streams off
//! stream 0 with an event, issues the plan's launches, records and waits in the plan's issue
//! order, copies the scores out on the output op's stream, joins every stream back into
//! stream 0 and synchronises once. With `graphs` on (and a backend that can capture), the plan is
//! captured once per batch bucket (powers of two up to the max batch; inputs are padded with
//! empty samples) and replayed per request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use streamrec_graph::{OpGraph, Plan, Step};

use crate::backend::{Backend, Span};
use crate::batch::{Batch, IndexVec, SparseInput};
use crate::error::{Result, RuntimeError};
use crate::trace::TraceEvent;
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
    /// Record per-op spans for timelines and profiles.
    pub trace: bool,
    /// Validate every batch against the spec before it runs (on by default; callers that
    /// validated already may turn it off).
    pub validate: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            contexts: 1,
            max_batch: 1024,
            graphs: false,
            trace: false,
            validate: true,
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
    backend: B,
    graph: Arc<OpGraph>,
    plan: Plan,
    issue: Vec<(usize, Step)>,
    out_stream: usize,
    weights: Arc<B::DeviceWeights>,
    pool: Mutex<Vec<Context<B>>>,
    freed: Condvar,
    cfg: EngineConfig,
    next_request: AtomicU64,
    trace: Mutex<Vec<TraceEvent>>,
}

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
            return Err(RuntimeError::Input("contexts must be > 0".into()));
        }
        if cfg.max_batch == 0 {
            return Err(RuntimeError::Input("max batch must be > 0".into()));
        }
        let dw = Arc::new(backend.load_weights(&graph, weights)?);
        let k = plan.num_streams();
        let mut pool = Vec::with_capacity(cfg.contexts);
        for id in 0..cfg.contexts {
            let streams = (0..k)
                .map(|_| backend.new_stream())
                .collect::<Result<Vec<_>>>()?;
            for s in &streams {
                backend.set_tracing(s, cfg.trace);
            }
            pool.push(Context {
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
            weights: dw,
            pool: Mutex::new(pool),
            freed: Condvar::new(),
            backend,
            graph,
            plan,
            cfg,
            next_request: AtomicU64::new(0),
            trace: Mutex::new(Vec::new()),
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

    /// Runs one batch and returns its scores (one per sample).
    pub fn infer(&self, batch: &Arc<Batch>) -> Result<Vec<f32>> {
        if self.cfg.validate {
            batch.validate(&self.graph.spec)?;
        }
        if batch.size > self.cfg.max_batch {
            return Err(RuntimeError::BatchTooLarge {
                batch: batch.size,
                max: self.cfg.max_batch,
            });
        }
        let mut ctx = {
            let mut pool = self.pool.lock().expect("context pool");
            loop {
                if let Some(c) = pool.pop() {
                    break c;
                }
                pool = self.freed.wait(pool).expect("context pool");
            }
        };
        let request = self.next_request.fetch_add(1, Ordering::Relaxed);
        let res = self.run(&mut ctx, batch, request);
        self.pool.lock().expect("context pool").push(ctx);
        self.freed.notify_one();
        res
    }

    fn run(&self, ctx: &mut Context<B>, batch: &Arc<Batch>, request: u64) -> Result<Vec<f32>> {
        let be = &self.backend;
        let res = if self.cfg.graphs {
            let bucket = batch.size.next_power_of_two().min(self.cfg.max_batch);
            if !ctx.graphs.contains_key(&bucket) {
                self.capture(ctx, bucket)?;
            }
            if ctx.graphs.contains_key(&bucket) {
                let padded = pad(batch, bucket);
                be.upload(&ctx.streams[0], &ctx.bufs, &padded)?;
                let replayed = be.replay(&ctx.streams[0], &ctx.graphs[&bucket]);
                if let Err(RuntimeError::StaleGraph(_)) = replayed {
                    // The upload reallocated a buffer the graph reads: capture again.
                    ctx.graphs.remove(&bucket);
                    self.capture(ctx, bucket)?;
                    be.replay(&ctx.streams[0], &ctx.graphs[&bucket])?;
                } else {
                    replayed?;
                }
                be.download(&ctx.streams[0], &ctx.bufs, self.graph.output(), bucket)?;
                self.sync_all(ctx)
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
                    op,
                    start_us,
                    end_us,
                } in be.take_spans(stream)
                {
                    tr.push(TraceEvent {
                        name: self.graph.op(op).name.clone(),
                        op,
                        context: ctx.id,
                        stream: s,
                        start_us,
                        end_us,
                        batch: batch.size,
                        request,
                    });
                }
            }
        }
        res?;
        be.scores(&ctx.bufs, batch.size)
    }

    /// Captures the plan for `bucket` samples into a graph; false when the backend cannot.
    fn capture(&self, ctx: &mut Context<B>, bucket: usize) -> Result<bool> {
        let be = &self.backend;
        if !be.begin_capture(&ctx.streams[0])? {
            return Ok(false);
        }
        let issued = self.issue_plan(ctx, bucket, false);
        let g = be.end_capture(&ctx.streams[0]);
        issued?;
        ctx.graphs.insert(bucket, g?);
        Ok(true)
    }

    fn run_eager(&self, ctx: &Context<B>, batch: &Arc<Batch>) -> Result<()> {
        self.backend.upload(&ctx.streams[0], &ctx.bufs, batch)?;
        let issued = self.issue_plan(ctx, batch.size, true);
        let sync = self.sync_all(ctx);
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
        for (i, s) in rest.iter().enumerate() {
            be.record(s, &ctx.joins[i + 1])?;
            be.wait(s0, &ctx.joins[i + 1])?;
        }
        Ok(())
    }

    fn sync_all(&self, ctx: &Context<B>) -> Result<()> {
        let mut first = Ok(());
        for s in &ctx.streams {
            let r = self.backend.synchronize(s);
            if first.is_ok() {
                first = r;
            }
        }
        first
    }

    /// Takes the spans recorded so far (with `trace` on).
    pub fn take_trace(&self) -> Vec<TraceEvent> {
        std::mem::take(&mut *self.trace.lock().expect("trace"))
    }
}

/// Pads a batch to `size` samples with empty bags and zero dense rows.
fn pad(batch: &Arc<Batch>, size: usize) -> Arc<Batch> {
    if batch.size == size {
        return Arc::clone(batch);
    }
    let extra = size - batch.size;
    let dense_w = batch.dense.len() / batch.size;
    let mut dense = batch.dense.clone();
    dense.resize(size * dense_w, 0.0);
    let sparse = batch
        .sparse
        .iter()
        .map(|s| {
            let n = s.indices.len();
            let offsets = match &s.offsets {
                IndexVec::I32(o) => {
                    let mut o = o.clone();
                    o.extend(std::iter::repeat_n(n as i32, extra));
                    IndexVec::I32(o)
                }
                IndexVec::I64(o) => {
                    let mut o = o.clone();
                    o.extend(std::iter::repeat_n(n as i64, extra));
                    IndexVec::I64(o)
                }
            };
            SparseInput {
                indices: s.indices.clone(),
                offsets,
            }
        })
        .collect();
    Arc::new(Batch {
        size,
        dense,
        sparse,
    })
}
