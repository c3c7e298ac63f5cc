//! The backend interface: streams, events, device buffers and op launches.
//!
//! The engine drives a backend with the same commands a CUDA runtime takes: it enqueues op
//! launches on streams in plan order, records an event on one stream and makes another stream
//! wait on it, and synchronises once at the end of a request. A wait orders the waiting stream
//! after the most recent record of the event *issued before the wait* (the CUDA semantics), so
//! the engine issues every record before the waits on it ([`streamrec_graph::Plan::issue_order`]).
//!
//! Backends own their kernels; the engine never touches memory or kernels directly.
//!
//! Each backend has its folder ([`cpu`], [`cuda`]); [`shared`] holds what both use (each op's
//! weights, where an op's output lives inside a concatenation). Picking a backend at run time
//! and building an engine on it belongs to the engine module.

pub mod cpu;
pub mod cuda;
pub mod shared;

use std::sync::Arc;

use streamrec_graph::{OpGraph, OpId};

use crate::batch::Batch;
use crate::error::Result;
use crate::weights::Weights;

/// What a [`Span`] timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    /// One op's launch (eager execution).
    Op(OpId),
    /// A whole captured graph's replay: inside a graph the ops are not timed one by one.
    Replay,
}

/// One op's execution (or one graph replay) on a stream, as recorded for timelines.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Span {
    /// What ran.
    pub kind: SpanKind,
    /// Start, in microseconds since the backend's epoch.
    pub start_us: f64,
    /// End, in microseconds since the backend's epoch.
    pub end_us: f64,
}

/// A compute device with streams and events.
pub trait Backend: Send + Sync + 'static {
    /// An ordered queue of device work.
    type Stream: Send + Sync;
    /// A marker recorded on one stream and waited on by others.
    type Event: Send + Sync;
    /// One execution context's memory: per-op activations for the max batch, input staging,
    /// score staging.
    type Buffers: Send + Sync;
    /// Weights resident on the device, shared by every context.
    type DeviceWeights: Send + Sync;
    /// A captured, replayable plan (a CUDA graph), if the backend supports capture.
    type Graph: Send + Sync;

    /// Short backend name (`cpu`, `cuda`).
    fn name(&self) -> &'static str;

    /// Uploads the weights once.
    fn load_weights(&self, graph: &OpGraph, weights: &Weights) -> Result<Self::DeviceWeights>;

    /// A new stream.
    fn new_stream(&self) -> Result<Self::Stream>;

    /// A new event.
    fn new_event(&self) -> Result<Self::Event>;

    /// Per-context buffers for every op of the graph at up to `max_batch` samples.
    fn alloc_buffers(&self, graph: &OpGraph, max_batch: usize) -> Result<Self::Buffers>;

    /// Stages a validated batch's inputs into the buffers, ordered on `stream`.
    fn upload(&self, stream: &Self::Stream, bufs: &Self::Buffers, batch: &Arc<Batch>)
        -> Result<()>;

    /// Enqueues `op` on `stream` for `batch` samples; its inputs are the outputs of earlier ops
    /// (ordered by the caller) and the staged request inputs.
    fn launch(
        &self,
        stream: &Self::Stream,
        graph: &Arc<OpGraph>,
        op: OpId,
        weights: &Arc<Self::DeviceWeights>,
        bufs: &Self::Buffers,
        batch: usize,
    ) -> Result<()>;

    /// Enqueues a record of `event` on `stream`.
    fn record(&self, stream: &Self::Stream, event: &Self::Event) -> Result<()>;

    /// Makes `stream` wait for the most recent record of `event` issued so far.
    fn wait(&self, stream: &Self::Stream, event: &Self::Event) -> Result<()>;

    /// Enqueues the copy of `op`'s `[batch, 1]` output (the scores) to the host staging area.
    fn download(
        &self,
        stream: &Self::Stream,
        bufs: &Self::Buffers,
        op: OpId,
        batch: usize,
    ) -> Result<()>;

    /// Blocks the host until everything enqueued on `stream` has run; reports the first error
    /// raised on that stream since the last synchronise.
    fn synchronize(&self, stream: &Self::Stream) -> Result<()>;

    /// The scores staged by the last [`Backend::download`], valid after synchronising.
    fn scores(&self, bufs: &Self::Buffers, batch: usize) -> Result<Vec<f32>>;

    /// Whether synchronising the stream that every other stream was joined into (by an event
    /// recorded after each one's last work) also reports the errors raised on the others. True
    /// where errors belong to the device context, not to a stream (CUDA); then the engine
    /// synchronises that one stream per request. The default (false) makes it synchronise every
    /// stream, as the CPU backend needs (its errors are per stream, taken by its synchronise).
    fn join_reports_all_errors(&self) -> bool {
        false
    }

    /// Turns timing on or off for a stream: per-op spans for eager launches, one span per
    /// graph replay ([`SpanKind::Replay`]).
    fn set_tracing(&self, _stream: &Self::Stream, _on: bool) {}

    /// Takes the spans recorded on a stream since the last call.
    fn take_spans(&self, _stream: &Self::Stream) -> Vec<Span> {
        Vec::new()
    }

    /// Marks, on `stream`, the start of a request's device work (before the plan's first
    /// launch). Backends that time on the device record an event; the default does nothing.
    fn mark_start(&self, _stream: &Self::Stream) -> Result<()> {
        Ok(())
    }

    /// Marks, on `stream`, the end of a request's device work (after the join).
    fn mark_end(&self, _stream: &Self::Stream) -> Result<()> {
        Ok(())
    }

    /// The device time between the last [`Backend::mark_start`] and [`Backend::mark_end`] on
    /// `stream`, in microseconds, once, after the stream was synchronised; `None` where the
    /// backend does not time on the device or the pair is incomplete.
    fn take_marked_us(&self, _stream: &Self::Stream) -> Option<f64> {
        None
    }

    /// Kernel launches and library calls (cuBLAS, cuBLASLt) issued on `stream` so far,
    /// captures included; `None` where the backend does not count them.
    fn launch_count(&self, _stream: &Self::Stream) -> Option<u64> {
        None
    }

    /// Holds off captures on other threads until the returned guard is dropped: the engine
    /// frees its contexts under it, because freeing some device resources (pinned host memory,
    /// library handles) synchronises the device, which breaks a capture in progress. `None`
    /// for backends without capture, and on a thread that is capturing itself.
    fn quiesce(&self) -> Option<Box<dyn std::any::Any>> {
        None
    }

    /// Starts capturing the work issued on `stream` (and streams forked from it by events).
    /// Backends without capture return `Ok(false)` and run eagerly.
    fn begin_capture(&self, _stream: &Self::Stream) -> Result<bool> {
        Ok(false)
    }

    /// Ends a capture begun on `stream` and returns the replayable graph.
    fn end_capture(&self, _stream: &Self::Stream) -> Result<Self::Graph> {
        Err(crate::error::RuntimeError::Unavailable {
            backend: self.name(),
            reason: "it cannot capture graphs".into(),
        })
    }

    /// Replays a captured graph on `stream`.
    fn replay(&self, _stream: &Self::Stream, _graph: &Self::Graph) -> Result<()> {
        Err(crate::error::RuntimeError::Unavailable {
            backend: self.name(),
            reason: "it cannot replay graphs".into(),
        })
    }
}
