//! The CUDA backend: cudarc streams and events, NVRTC kernels, cuBLAS GEMMs, and CUDA-graph
//! capture per batch bucket.
//!
//! # Memory
//!
//! * Weights are uploaded once per process and device: every embedding table into one
//!   allocation, every dense weight (linear, bias, cross) into another, each tensor 256-byte
//!   aligned, plus the small metadata arrays of the table-batched ops. The uploaded tensors are
//!   shared by every backend of the process on the same device context: a later
//!   [`Backend::load_weights`] whose host tensors (the same `Arc<Tensor>` allocations, e.g. the
//!   two engines of `run --compare`) were all uploaded already reuses that device copy. Large
//!   uploads go through two pinned staging buffers of [`STAGING_BYTES`] on the allocation
//!   stream (the host fills one while the device copies the other), not from pageable memory.
//! * Each context ([`CudaBuffers`]) has one activation arena holding every op's
//!   `[max_batch, width]` output and the DCN scratch. An op whose only consumer is a
//!   concatenation writes straight into its column slice of the concatenation's output (its
//!   output is an alias with the concatenation's leading dimension), so the concatenation copies
//!   only the inputs that could not be aliased (often none). Activations start as NaN so that an
//!   element a kernel fails to write shows up in the scores.
//! * Inputs are staged into pinned host memory and copied by two asynchronous copies per request
//!   into fixed device buffers that captured graphs read: the dense rows, and one "packet" with
//!   the staged sample count, every feature's offsets and all indices (layout in
//!   `crates/kernels/kernels/embedding.cu` and [`stage_packet`]). Samples past the staged count
//!   are empty bags, so a graph captured for a bucket of `2^k` samples can run any batch up to
//!   `2^k`; dense rows past the batch are not read by any op that mixes rows (every op is
//!   row-wise) and their scores are never returned.
//! * Index capacity: the packet holds `4 x max_batch x pooling` indices per feature (summed
//!   over the features; one feature may use another's room). A batch with more indices grows
//!   the packet (a new device address): eager runs just continue, but a graph captured before
//!   the growth reads the old packet, so [`Backend::replay`] refuses it with an
//!   [`RuntimeError::StaleGraph`](crate::RuntimeError::StaleGraph) whose message starts with [`STALE_GRAPH`]; the engine must then
//!   drop its graphs for that context and capture again (or run eagerly).
//!
//! # Streams, events, graphs
//!
//! Every stream gets its own cuBLAS handle bound to it (a handle used inside a capture must be
//! bound to the capturing stream). Plan events are created without timing; the timing events
//! are the per-op span events (tracing on), one pair per graph replay (tracing on), and the pair
//! that brackets each request's plan on stream 0 ([`Backend::mark_start`], the GPU time).
//! cudarc's per-buffer event tracking is off: the engine's plan orders every reader after its
//! writer. Capture uses `CU_STREAM_CAPTURE_MODE_THREAD_LOCAL` on stream 0; the engine forks the
//! other streams off it with an event and joins them back, so they join the capture. Calls that
//! may synchronise the device (pinned host memory, cuBLAS handles, buffer growth, an engine's
//! teardown) wait until no other thread is capturing, and captures wait for them
//! (`DEVICE_GATE`): such a call on another thread invalidates a capture in progress. The graph
//! is instantiated and uploaded once in [`Backend::end_capture`] and launched per replay. Errors
//! of device work belong to the context (sticky), so synchronising stream 0 after the join
//! reports every stream's ([`Backend::join_reports_all_errors`]).
//!
//! # Span times
//!
//! `cuEventElapsedTime` gives f32 milliseconds: measured from one epoch, a span late in a long
//! run would lose its resolution (about 8 us after two minutes). Spans are therefore measured as
//! f32 intervals over short distances only and summed in f64 microseconds: each batch of spans
//! taken from a stream is measured from its first start event (the anchor), whose time is the
//! previous anchor's plus the interval between the two ([`chain_us`]).
//!
//! # Launch counts
//!
//! Each stream counts the kernel launches and cuBLAS/cuBLASLt calls issued on it
//! ([`Backend::launch_count`]), per op as `ops::calls_of` (private) says.

//! # Layout
//!
//! `device` (context, kernels, allocation helpers, error mapping), `capture` (the device gate,
//! the thread's capture, graphs and replay), `stream` (streams and events), `weights` (the weight
//! store and its staging), `arena` (where op outputs live), `packet` (input staging),
//! `buffers` (a context's memory) and `ops` (one function per op kind).

mod arena;
mod buffers;
mod capture;
mod device;
mod ops;
mod packet;
mod stream;
mod weights;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use streamrec_graph::{OpGraph, OpId};
#[cfg(doc)]
use streamrec_kernels::cuda as kc;
use streamrec_kernels::cuda::cudarc::driver::{sys, CudaEvent};

pub use arena::ArenaLayout;
pub use buffers::CudaBuffers;
pub use capture::{CudaGraphHandle, STALE_GRAPH};
pub use device::{cuda_available, kernel_error, CudaConfig, IndexChoice};
pub use packet::stage_packet;
pub use stream::{CudaEventHandle, CudaStreamHandle};
pub use weights::{CudaWeights, STAGING_BYTES};

use capture::{capturing, exclusive};
use device::{exec_err, lock, unavailable, Device};

use super::{Backend, Span};
use crate::batch::Batch;
use crate::error::Result;
use crate::weights::Weights;

/// The time of an event `delta_ms` (a short f32 interval from `cuEventElapsedTime`) after an
/// anchor at `anchor_us`, in f64 microseconds (see the module docs).
pub fn chain_us(anchor_us: f64, delta_ms: f32) -> f64 {
    anchor_us + f64::from(delta_ms) * 1e3
}

/// The CUDA backend on one device.
pub struct CudaBackend {
    dev: Device,
    /// A timing event recorded at creation: span times count from it.
    epoch: CudaEvent,
    /// The last span anchor and its time since the epoch (us); `None`: the epoch itself.
    anchor: Mutex<Option<(CudaEvent, f64)>>,
    next_buffers: AtomicU64,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend")
            .field("device", &self.dev.cfg.device)
            .field("arch", &self.dev.kernels.arch())
            .field("cfg", &self.dev.cfg)
            .finish()
    }
}

impl CudaBackend {
    /// The backend on device `device` with the default configuration, or
    /// [`RuntimeError::Unavailable`](crate::RuntimeError::Unavailable)
    /// (`"CUDA backend unavailable: <reason>"`) when there is no driver, no such device, or
    /// NVRTC or cuBLAS cannot be loaded; [`RuntimeError::Kernel`](crate::RuntimeError::Kernel)
    /// (with NVRTC's log) when the kernels do not compile or load ([`kernel_error`]).
    pub fn new(device: usize) -> Result<Self> {
        Self::with_config(CudaConfig {
            device,
            ..CudaConfig::default()
        })
    }

    /// The backend with a configuration.
    pub fn with_config(cfg: CudaConfig) -> Result<Self> {
        let dev = Device::open(cfg)?;
        let epoch = dev
            .ctx
            .new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(unavailable)?;
        epoch.record(&dev.alloc).map_err(unavailable)?;
        dev.alloc.synchronize().map_err(unavailable)?;
        Ok(Self {
            dev,
            epoch,
            anchor: Mutex::new(None),
            next_buffers: AtomicU64::new(0),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &CudaConfig {
        &self.dev.cfg
    }

    /// The device's name and the NVRTC architecture the kernels were compiled for: `sm_XY`
    /// (cubin) or `compute_XY` (PTX, after a fallback; [`kc::load_fallback`] says why).
    pub fn describe(&self) -> String {
        let name = self
            .dev
            .ctx
            .name()
            .unwrap_or_else(|_| "unknown device".into());
        format!("{name} ({})", self.dev.kernels.arch())
    }
}

impl Backend for CudaBackend {
    type Stream = CudaStreamHandle;
    type Event = CudaEventHandle;
    type Buffers = CudaBuffers;
    type DeviceWeights = CudaWeights;
    type Graph = CudaGraphHandle;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn load_weights(&self, graph: &OpGraph, weights: &Weights) -> Result<CudaWeights> {
        let _gate = exclusive();
        weights::load(&self.dev, graph, weights)
    }

    fn new_stream(&self) -> Result<CudaStreamHandle> {
        let _gate = exclusive();
        CudaStreamHandle::new(&self.dev)
    }

    fn new_event(&self) -> Result<CudaEventHandle> {
        Ok(CudaEventHandle {
            event: self.dev.ctx.new_event(None).map_err(exec_err)?,
        })
    }

    fn alloc_buffers(&self, graph: &OpGraph, max_batch: usize) -> Result<CudaBuffers> {
        CudaBuffers::alloc(&self.dev, graph, max_batch, &self.next_buffers)
    }

    fn upload(
        &self,
        stream: &CudaStreamHandle,
        bufs: &CudaBuffers,
        batch: &Arc<Batch>,
    ) -> Result<()> {
        bufs.stage(&self.dev, &stream.stream, batch)
    }

    fn launch(
        &self,
        stream: &CudaStreamHandle,
        graph: &Arc<OpGraph>,
        op: OpId,
        weights: &Arc<CudaWeights>,
        bufs: &CudaBuffers,
        batch: usize,
    ) -> Result<()> {
        ops::launch(&self.dev, stream, graph, op, weights, bufs, batch)
    }

    fn record(&self, stream: &CudaStreamHandle, event: &CudaEventHandle) -> Result<()> {
        event.event.record(&stream.stream).map_err(exec_err)
    }

    fn wait(&self, stream: &CudaStreamHandle, event: &CudaEventHandle) -> Result<()> {
        stream.stream.wait(&event.event).map_err(exec_err)
    }

    fn download(
        &self,
        stream: &CudaStreamHandle,
        bufs: &CudaBuffers,
        op: OpId,
        batch: usize,
    ) -> Result<()> {
        bufs.download(&stream.stream, op, batch)
    }

    fn synchronize(&self, stream: &CudaStreamHandle) -> Result<()> {
        stream.stream.synchronize().map_err(exec_err)?;
        self.dev.ctx.check_err().map_err(exec_err)
    }

    fn scores(&self, bufs: &CudaBuffers, batch: usize) -> Result<Vec<f32>> {
        bufs.scores(batch)
    }

    fn set_tracing(&self, stream: &CudaStreamHandle, on: bool) {
        stream.set_tracing(on);
    }

    fn take_spans(&self, stream: &CudaStreamHandle) -> Vec<Span> {
        let mut pending = std::mem::take(&mut *lock(&stream.spans));
        if pending.is_empty() {
            return Vec::new();
        }
        // The first start event is the new anchor: its time is the previous anchor's plus the
        // (short) interval between the two, and every span here is measured from it.
        let mut anchor = lock(&self.anchor);
        let (prev, prev_us) = match anchor.as_ref() {
            Some((e, us)) => (e, *us),
            None => (&self.epoch, 0.0),
        };
        let first = &pending[0].1;
        let base_us = match prev.elapsed_ms(first) {
            Ok(delta) => chain_us(prev_us, delta),
            // Measured from the epoch instead: coarser late in a run, but still a time.
            Err(_) => match self.epoch.elapsed_ms(first) {
                Ok(delta) => chain_us(0.0, delta),
                Err(_) => return Vec::new(),
            },
        };
        let mut out = Vec::with_capacity(pending.len());
        for (kind, start, end) in &pending {
            if let (Ok(a), Ok(b)) = (first.elapsed_ms(start), first.elapsed_ms(end)) {
                out.push(Span {
                    kind: *kind,
                    start_us: chain_us(base_us, a),
                    end_us: chain_us(base_us, b),
                });
            }
        }
        let (_, first, _) = pending.swap_remove(0);
        *anchor = Some((first, base_us));
        out
    }

    fn quiesce(&self) -> Option<Box<dyn std::any::Any>> {
        exclusive().map(|g| Box::new(g) as Box<dyn std::any::Any>)
    }

    fn begin_capture(&self, stream: &CudaStreamHandle) -> Result<bool> {
        capture::begin(&stream.stream)
    }

    fn end_capture(&self, stream: &CudaStreamHandle) -> Result<CudaGraphHandle> {
        capture::end(&stream.stream)
    }

    fn replay(&self, stream: &CudaStreamHandle, graph: &CudaGraphHandle) -> Result<()> {
        capture::replay(&self.dev, stream, graph)
    }

    fn join_reports_all_errors(&self) -> bool {
        // Device errors are sticky per context, and `synchronize` also checks the context's
        // recorded errors; launch errors are returned when the launch is issued.
        true
    }

    fn mark_start(&self, stream: &CudaStreamHandle) -> Result<()> {
        if capturing() {
            return Ok(());
        }
        stream.mark_start()
    }

    fn mark_end(&self, stream: &CudaStreamHandle) -> Result<()> {
        if capturing() {
            return Ok(());
        }
        stream.mark_end()
    }

    fn take_marked_us(&self, stream: &CudaStreamHandle) -> Option<f64> {
        stream.take_marked_us()
    }

    fn launch_count(&self, stream: &CudaStreamHandle) -> Option<u64> {
        Some(stream.launches.load(Ordering::Relaxed))
    }
}
