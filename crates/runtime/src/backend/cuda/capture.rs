//! CUDA-graph capture: the gate between captures and calls that may synchronise the device, the
//! thread's capture in progress, and captured graphs with the buffer generations they read
//! (a replay after the input packet moved is refused as stale).

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use streamrec_kernels::cuda::cudarc::driver::{sys, CudaGraph, CudaStream};

use super::device::{exec_err, lock, Device};
use super::stream::CudaStreamHandle;
use crate::backend::SpanKind;
use crate::error::{Result, RuntimeError};

/// The start of the error message of a replay refused because the inputs it was captured with
/// have been reallocated (see the module docs).
pub const STALE_GRAPH: &str = "CUDA graph is stale";

/// A buffers' generation counter and its value when a graph was captured.
type Guard = (Arc<AtomicU64>, u64);

/// The capture this thread is issuing (captures are thread-local).
struct Capture {
    /// The generation counters of the buffers its launches used, with their values at capture
    /// time.
    guards: Vec<Guard>,
    /// Its shared hold on [`DEVICE_GATE`].
    _hold: RwLockReadGuard<'static, ()>,
}

thread_local! {
    /// The capture this thread is issuing, if any.
    static CAPTURE: RefCell<Option<Capture>> = const { RefCell::new(None) };
}

pub(super) fn capturing() -> bool {
    CAPTURE.with(|c| c.borrow().is_some())
}

/// Captures hold this shared, from `begin_capture` to `end_capture`; calls that may synchronise
/// the device (allocating or freeing pinned host memory, creating or destroying a cuBLAS handle,
/// growing or freeing buffers) hold it exclusively. A capture is thread-local, but a device-wide
/// synchronisation on another thread still invalidates it (`CUDA_ERROR_STREAM_CAPTURE_INVALIDATED`
/// when engines were built, run and dropped on several threads at once).
static DEVICE_GATE: RwLock<()> = RwLock::new(());

/// Waits until no other thread is capturing and holds captures off while the guard lives;
/// `None` on a thread that is capturing itself (waiting would never end).
pub(super) fn exclusive() -> Option<RwLockWriteGuard<'static, ()>> {
    if capturing() {
        return None;
    }
    Some(DEVICE_GATE.write().unwrap_or_else(PoisonError::into_inner))
}

/// A captured plan: the graph and the buffer generations it was captured with.
pub struct CudaGraphHandle {
    graph: Mutex<SendGraph>,
    stream: Arc<CudaStream>,
    guards: Vec<Guard>,
}

struct SendGraph(CudaGraph);

// SAFETY: a CUDA graph exec may be launched from any thread of the process; every use goes
// through the mutex in `CudaGraphHandle`, so it is never used by two threads at once.
unsafe impl Send for SendGraph {}

/// Adds the buffers' generation counter `generation` to the capture this thread is issuing, if
/// any: a replay checks that it has not moved since.
pub(super) fn note_buffers(generation: &Arc<AtomicU64>) {
    CAPTURE.with(|c| {
        if let Some(Capture { guards: list, .. }) = c.borrow_mut().as_mut() {
            if !list.iter().any(|(g, _)| Arc::ptr_eq(g, generation)) {
                list.push((Arc::clone(generation), generation.load(Ordering::Acquire)));
            }
        }
    });
}

/// Starts capturing the work issued on `stream` on this thread.
pub(super) fn begin(stream: &CudaStream) -> Result<bool> {
    if capturing() {
        return Err(exec_err("a capture is already in progress on this thread"));
    }
    let hold = DEVICE_GATE.read().unwrap_or_else(PoisonError::into_inner);
    stream
        .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .map_err(exec_err)?;
    CAPTURE.with(|c| {
        *c.borrow_mut() = Some(Capture {
            guards: Vec::new(),
            _hold: hold,
        })
    });
    Ok(true)
}

/// Ends the capture begun on `stream`; the graph is instantiated and uploaded.
pub(super) fn end(stream: &Arc<CudaStream>) -> Result<CudaGraphHandle> {
    let capture = CAPTURE.with(|c| c.borrow_mut().take());
    let ended = stream.end_capture(sys::CUgraphInstantiate_flags(0));
    // The capture is over (or failed): release the hold, so that the other threads'
    // device-wide calls go on.
    let guards = capture.map(|c| c.guards).unwrap_or_default();
    let graph = ended
        .map_err(exec_err)?
        .ok_or_else(|| exec_err("the capture recorded no work"))?;
    graph.upload().map_err(exec_err)?;
    Ok(CudaGraphHandle {
        graph: Mutex::new(SendGraph(graph)),
        stream: Arc::clone(stream),
        guards,
    })
}

/// Replays `graph` on `stream` (one span for the whole replay when tracing), or refuses a
/// stale graph with [`RuntimeError::StaleGraph`].
pub(super) fn replay(
    dev: &Device,
    stream: &CudaStreamHandle,
    graph: &CudaGraphHandle,
) -> Result<()> {
    for (g, at) in &graph.guards {
        let now = g.load(Ordering::Acquire);
        if now != *at {
            return Err(RuntimeError::StaleGraph(format!(
                "{STALE_GRAPH}: the input packet was reallocated (generation {at} -> {now}) \
                 after the capture; capture again"
            )));
        }
    }
    let g = lock(&graph.graph);
    // One span for the whole replay (the ops inside a graph are not timed one by one).
    let span = stream.span_start(dev, stream.tracing())?;
    if *graph.stream == *stream.stream {
        g.0.launch().map_err(exec_err)?;
    } else {
        // A graph launches on the stream it was captured on: order that stream after
        // `stream`'s work, launch, and order `stream` after the graph.
        let err = |e| exec_err(e);
        graph.stream.join(&stream.stream).map_err(err)?;
        g.0.launch().map_err(exec_err)?;
        stream.stream.join(&graph.stream).map_err(err)?;
    }
    stream.span_end(dev, SpanKind::Replay, span)
}
