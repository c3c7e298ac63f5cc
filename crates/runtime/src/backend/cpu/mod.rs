//! The CPU backend: one pool of worker threads, as many as the cores it is given, runs every
//! stream. A stream is an ordered queue of commands, not a thread: an idle worker takes the
//! next command of any stream that is neither running on another worker nor stopped at an
//! event that has not been reached, and large kernels split into tiles that idle workers take.
//! The host thread that synchronises a stream works alongside the pool until that stream is
//! done, so one request on an idle machine uses every core without a thread hand-off at the end.
//!
//! An event is a generation counter: a record issued on the host takes the event's next
//! generation and the stream publishes it when it reaches the record; a wait issued on the host
//! captures the latest generation issued so far and holds back only its own stream until that
//! generation is published. A failing or panicking kernel poisons the rest of the current
//! request on its stream (later launches are skipped, records still publish so no other stream
//! stalls) and the error is returned by the next [`Backend::synchronize`] of that stream.
//!
//! Its rooms: `pool` (streams, events and the worker pool), `memory` (per-context buffers
//! and the loaded weights), `exec` (one op's kernel calls) and `fold` (embedding projections
//! folded into their tables at load). What the CUDA backend shares with it (op weights, concat
//! placement) is in [`crate::backend::shared`].

mod exec;
mod fold;
mod memory;
mod pool;

use std::sync::Arc;
use std::thread::JoinHandle;

use streamrec_graph::{OpGraph, OpId};
use streamrec_kernels::cpu::{Isa, PackedLinear, Parallel};

pub use memory::{CpuBuffers, CpuWeights};
pub use pool::{CpuEvent, CpuStream};

use pool::Pool;

use super::shared::{resolve_weights, OpWeights, Placement};
use super::{Backend, Span};
use crate::batch::Batch;
use crate::error::{Result, RuntimeError};
use crate::weights::Weights;

/// The CPU backend.
#[derive(Debug)]
pub struct CpuBackend {
    pool: Arc<Pool>,
    workers: Vec<JoinHandle<()>>,
    /// Fold square linear layers into the tables they alone read ([`fold`]).
    fold: bool,
    /// The instruction set of the linear layers' and lookups' kernels (`None`: the fastest this
    /// processor has).
    isa: Option<Isa>,
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for CpuBackend {
    fn drop(&mut self) {
        self.pool.stop(std::mem::take(&mut self.workers));
    }
}

/// Whether a new CPU backend folds embedding projections into their tables: always (the
/// library reads no environment; [`CpuBackend::with_fold`] and
/// the engine's `BackendOptions::cpu_fold` turn it off).
pub fn fold_default() -> bool {
    true
}

impl CpuBackend {
    /// A CPU backend on every core of the machine; span times count from now.
    pub fn new() -> Self {
        Self::with_threads(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// A CPU backend whose streams and kernels run on `threads` threads in all: `threads - 1`
    /// pool workers plus the host thread that synchronises (1: everything runs on the host
    /// thread, when it synchronises).
    pub fn with_threads(threads: usize) -> Self {
        let (pool, workers) = Pool::start(threads);
        Self {
            pool,
            workers,
            fold: fold_default(),
            isa: None,
        }
    }

    /// Runs the linear layers' and the lookups' kernels on `isa` instead of the fastest path
    /// this processor has (for comparisons); an error when the processor cannot run it.
    pub fn with_isa(mut self, isa: Isa) -> Result<Self> {
        self.isa = Some(isa.require()?);
        Ok(self)
    }

    /// Whether engines on this backend fold a square linear layer into the table whose pooled
    /// rows it alone reads (on by default): the lookup then pools
    /// `table · Wᵀ` and the layer only adds its bias, one GEMM less per feature. Off, every layer
    /// runs as written (for comparisons); either way within f32 rounding of each other.
    pub fn with_fold(mut self, on: bool) -> Self {
        self.fold = on;
        self
    }

    /// The threads streams and kernels run on (the host thread included).
    pub fn threads(&self) -> usize {
        self.pool.threads()
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
        let mut by_op: Vec<OpWeights> = (0..graph.len())
            .map(|id| resolve_weights(graph, id, weights))
            .collect::<Result<_>>()?;
        let isa = self.isa.unwrap_or_else(Isa::detect);
        let folds = if self.fold {
            fold::plan(graph)
        } else {
            Vec::new()
        };
        fold::apply(graph, &folds, &mut by_op, self.pool.width())?;
        let mut folded = vec![false; graph.len()];
        let mut fused = vec![Vec::new(); graph.len()];
        for f in &folds {
            folded[f.linear] = true;
            fused[f.lookup].push((f.slot, f.linear));
        }
        let packed = by_op
            .iter()
            .zip(&folded)
            .map(|(w, &folded)| match w {
                OpWeights::Linear { .. } if folded => None,
                OpWeights::Linear { weight, bias } => {
                    let p = PackedLinear::new(
                        &weight.data,
                        weight.shape[0],
                        weight.shape[1],
                        Some(&bias.data),
                    );
                    Some(match self.isa {
                        Some(isa) => p.with_isa(isa),
                        None => Ok(p),
                    })
                }
                _ => None,
            })
            .map(|p| p.transpose().map_err(RuntimeError::from))
            .collect::<Result<_>>()?;
        Ok(CpuWeights {
            by_op,
            packed,
            folded,
            fused,
            isa,
            place: Placement::new(graph),
        })
    }

    fn new_stream(&self) -> Result<CpuStream> {
        Ok(self.pool.new_stream())
    }

    fn new_event(&self) -> Result<CpuEvent> {
        Ok(CpuEvent::new())
    }

    fn alloc_buffers(&self, graph: &OpGraph, max_batch: usize) -> Result<CpuBuffers> {
        CpuBuffers::alloc(graph, max_batch)
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
        stream.launch(graph, weights, &bufs.inner, input, op, batch)
    }

    fn record(&self, stream: &CpuStream, event: &CpuEvent) -> Result<()> {
        stream.record(event)
    }

    fn wait(&self, stream: &CpuStream, event: &CpuEvent) -> Result<()> {
        stream.wait(event)
    }

    fn download(
        &self,
        stream: &CpuStream,
        bufs: &CpuBuffers,
        op: OpId,
        batch: usize,
    ) -> Result<()> {
        stream.download(&bufs.inner, op, batch)
    }

    fn synchronize(&self, stream: &CpuStream) -> Result<()> {
        stream.synchronize()
    }

    fn scores(&self, bufs: &CpuBuffers, batch: usize) -> Result<Vec<f32>> {
        // SAFETY: called after synchronising every stream of the context; nothing runs on it.
        let s = unsafe { bufs.inner.scores.get() };
        Ok(s[..batch].to_vec())
    }

    fn set_tracing(&self, stream: &CpuStream, on: bool) {
        stream.set_tracing(on);
    }

    fn take_spans(&self, stream: &CpuStream) -> Vec<Span> {
        stream.take_spans()
    }
}
