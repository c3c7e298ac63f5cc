//! CUDA streams as the backend hands them out: each with its own cuBLAS handle, its span log
//! (tracing), the timing events around a request's plan and its count of launches; and plan
//! events (no timing).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use streamrec_kernels::cuda::cudarc::driver::{CudaEvent, CudaStream};
use streamrec_kernels::cuda::Blas;

use super::device::{cuda_err, exec_err, lock, Device};
use crate::backend::SpanKind;
use crate::error::Result;

/// A stream with its cuBLAS handle, span log, request marks and launch count.
pub struct CudaStreamHandle {
    pub(super) stream: Arc<CudaStream>,
    pub(super) blas: Mutex<Blas>,
    tracing: AtomicBool,
    pub(super) spans: Mutex<Vec<(SpanKind, CudaEvent, CudaEvent)>>,
    marks: Mutex<Marks>,
    /// Kernel launches and cuBLAS/cuBLASLt calls issued on this stream.
    pub(super) launches: AtomicU64,
}

/// The timing events around a request's plan
/// ([`Backend::mark_start`](crate::backend::Backend::mark_start),
/// [`Backend::mark_end`](crate::backend::Backend::mark_end)).
struct Marks {
    start: CudaEvent,
    end: CudaEvent,
    /// `start` was recorded for the current request.
    started: bool,
    /// `end` was recorded after `start`.
    ended: bool,
}

impl CudaStreamHandle {
    /// A new stream with its cuBLAS handle bound to it (the caller holds captures off: creating
    /// a handle may synchronise the device).
    pub(super) fn new(dev: &Device) -> Result<Self> {
        let stream = dev.ctx.new_stream().map_err(exec_err)?;
        let blas = Blas::new(Arc::clone(&stream), dev.cfg.math).map_err(cuda_err)?;
        // The handle's workspace was allocated on its own stream; finish that before any use.
        stream.synchronize().map_err(exec_err)?;
        let marks = Marks {
            start: dev.timing_event()?,
            end: dev.timing_event()?,
            started: false,
            ended: false,
        };
        Ok(CudaStreamHandle {
            stream,
            blas: Mutex::new(blas),
            tracing: AtomicBool::new(false),
            spans: Mutex::new(Vec::new()),
            marks: Mutex::new(marks),
            launches: AtomicU64::new(0),
        })
    }

    /// The cudarc stream.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Whether spans are recorded.
    pub(super) fn tracing(&self) -> bool {
        self.tracing.load(Ordering::Relaxed)
    }

    /// Turns span recording on or off.
    pub(super) fn set_tracing(&self, on: bool) {
        self.tracing.store(on, Ordering::Relaxed);
    }

    /// With `on`, records a span's start event on the stream.
    pub(super) fn span_start(&self, dev: &Device, on: bool) -> Result<Option<CudaEvent>> {
        if !on {
            return Ok(None);
        }
        let e = dev.timing_event()?;
        e.record(&self.stream).map_err(exec_err)?;
        Ok(Some(e))
    }

    /// Records the end event of a span begun by [`Self::span_start`] and logs the span.
    pub(super) fn span_end(
        &self,
        dev: &Device,
        kind: SpanKind,
        start: Option<CudaEvent>,
    ) -> Result<()> {
        if let Some(start) = start {
            let end = dev.timing_event()?;
            end.record(&self.stream).map_err(exec_err)?;
            lock(&self.spans).push((kind, start, end));
        }
        Ok(())
    }

    /// Records the start mark of a request.
    pub(super) fn mark_start(&self) -> Result<()> {
        let mut m = lock(&self.marks);
        m.started = false;
        m.ended = false;
        m.start.record(&self.stream).map_err(exec_err)?;
        m.started = true;
        Ok(())
    }

    /// Records the end mark of a request begun by [`Self::mark_start`].
    pub(super) fn mark_end(&self) -> Result<()> {
        let mut m = lock(&self.marks);
        if m.started {
            m.end.record(&self.stream).map_err(exec_err)?;
            m.ended = true;
        }
        Ok(())
    }

    /// The time between the marks (us), once, when both were recorded.
    pub(super) fn take_marked_us(&self) -> Option<f64> {
        let mut m = lock(&self.marks);
        let done = m.started && m.ended;
        m.started = false;
        m.ended = false;
        if !done {
            return None;
        }
        m.start
            .elapsed_ms(&m.end)
            .ok()
            .map(|ms| f64::from(ms) * 1e3)
    }
}

/// An event (no timing).
pub struct CudaEventHandle {
    pub(super) event: CudaEvent,
}
