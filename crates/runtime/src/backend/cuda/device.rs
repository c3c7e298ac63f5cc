//! The CUDA device the backend's parts share: its context, the compiled kernels, the allocation
//! stream and the configuration, with the allocation helpers and the mapping of CUDA errors to
//! [`RuntimeError`]s.

use std::sync::{Arc, Mutex, MutexGuard};

use streamrec_graph::OpGraph;
use streamrec_kernels::cuda::cudarc::driver::{
    sys, CudaContext, CudaEvent, CudaSlice, CudaStream, PinnedHostSlice,
};
use streamrec_kernels::cuda::{self as kc, CudaError, CudaKernels, DevPtr, GemmMath, IndexWidth};

use crate::error::{Result, RuntimeError};

/// Alignment of every tensor and buffer region, in f32 elements (256 bytes).
pub(super) const ALIGN: usize = 64;

/// Whether CUDA can be used here: the driver loads and reports a device, and NVRTC and cuBLAS
/// load. The error says what is missing.
pub fn cuda_available() -> std::result::Result<(), String> {
    kc::cuda_available()?;
    kc::nvrtc_available()?;
    kc::cublas_available()
}

/// Which integer type the staged indices use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum IndexChoice {
    /// 32-bit when every table has at most `i32::MAX` rows (always, in practice), else 64-bit.
    #[default]
    Auto,
    /// Always 32-bit (refused when a table is larger).
    I32,
    /// Always 64-bit.
    I64,
}

/// How the CUDA backend is set up.
#[derive(Clone, Debug)]
pub struct CudaConfig {
    /// The device ordinal.
    pub device: usize,
    /// fp32 GEMMs (default) or TF32 tensor cores.
    pub math: GemmMath,
    /// The staged index type.
    pub index: IndexChoice,
    /// Initial index capacity per feature, as a multiple of `max_batch x pooling`.
    pub index_headroom: usize,
    /// Let ops whose only consumer is a concatenation write straight into its output.
    pub alias_concat: bool,
}

impl Default for CudaConfig {
    fn default() -> Self {
        Self {
            device: 0,
            math: GemmMath::Fp32,
            index: IndexChoice::Auto,
            index_headroom: 4,
            alias_concat: true,
        }
    }
}

pub(super) fn unavailable(reason: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Unavailable {
        backend: "CUDA",
        reason: reason.to_string(),
    }
}

pub(super) fn exec_err(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Execution(format!("CUDA: {e}"))
}

pub(super) fn cuda_err(e: CudaError) -> RuntimeError {
    match e {
        CudaError::Unavailable(m) => unavailable(m),
        other => exec_err(other),
    }
}

/// How a failure to build or load the kernels is reported: a missing library or device is
/// [`RuntimeError::Unavailable`] (`CUDA backend unavailable: ...`, exit status 2 in the CLI);
/// NVRTC rejecting a source or the driver refusing a module is [`RuntimeError::Kernel`], whose
/// message carries NVRTC's log or the driver's error (exit status 1): a defect, not a machine
/// without CUDA.
pub fn kernel_error(e: CudaError) -> RuntimeError {
    match e {
        CudaError::Unavailable(m) => unavailable(m),
        other => RuntimeError::Kernel(other.to_string()),
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(super) fn align(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// Address of element `i` of an f32 allocation starting at `base`.
pub(super) fn f32_at(base: DevPtr, i: usize) -> DevPtr {
    base + (i * std::mem::size_of::<f32>()) as u64
}

pub(super) fn device_ptr<T>(s: &CudaSlice<T>, stream: &CudaStream) -> DevPtr {
    let (p, _guard) = streamrec_kernels::cuda::cudarc::driver::DevicePtr::device_ptr(s, stream);
    p
}

/// The device handles every part of the backend uses.
pub(super) struct Device {
    pub(super) ctx: Arc<CudaContext>,
    pub(super) kernels: Arc<CudaKernels>,
    /// Allocations, weight uploads and metadata copies go here (and are synchronised before
    /// any other stream uses them).
    pub(super) alloc: Arc<CudaStream>,
    pub(super) cfg: CudaConfig,
}

impl Device {
    /// Opens device `cfg.device`: checks that CUDA is usable, creates the context, loads the
    /// kernels and the allocation stream.
    pub(super) fn open(cfg: CudaConfig) -> Result<Self> {
        cuda_available().map_err(unavailable)?;
        let count = CudaContext::device_count().map_err(unavailable)?;
        if cfg.device >= count.max(0) as usize {
            return Err(unavailable(format!(
                "device {} requested but the driver reports {count}",
                cfg.device
            )));
        }
        let device = cfg.device;
        let ctx = std::panic::catch_unwind(move || CudaContext::new(device))
            .map_err(|_| unavailable("creating the context panicked (a missing driver symbol?)"))?
            .map_err(unavailable)?;
        // SAFETY: no buffer of this context object exists yet; from here on the runtime orders
        // every use of a buffer across streams itself (plan events, synchronised allocations).
        unsafe { ctx.disable_event_tracking() };
        let kernels = CudaKernels::load(&ctx).map_err(kernel_error)?;
        let alloc = ctx.new_stream().map_err(unavailable)?;
        Ok(Self {
            ctx,
            kernels,
            alloc,
            cfg,
        })
    }

    /// A timing event.
    pub(super) fn timing_event(&self) -> Result<CudaEvent> {
        self.ctx
            .new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(exec_err)
    }

    pub(super) fn index_width(&self, graph: &OpGraph) -> Result<IndexWidth> {
        let max_rows = graph
            .spec
            .features
            .iter()
            .map(|f| f.rows)
            .max()
            .unwrap_or(0);
        let fits = max_rows <= i32::MAX as usize;
        match self.cfg.index {
            IndexChoice::Auto if fits => Ok(IndexWidth::I32),
            IndexChoice::Auto | IndexChoice::I64 => Ok(IndexWidth::I64),
            IndexChoice::I32 if fits => Ok(IndexWidth::I32),
            IndexChoice::I32 => Err(RuntimeError::Config {
                option: "index width",
                reason: format!("32 bits requested but a table has {max_rows} rows"),
            }),
        }
    }

    /// A zeroed device allocation on the allocation stream.
    pub(super) fn zeros<T: kc::cudarc::driver::DeviceRepr + kc::cudarc::driver::ValidAsZeroBits>(
        &self,
        len: usize,
    ) -> Result<CudaSlice<T>> {
        self.alloc.alloc_zeros::<T>(len.max(1)).map_err(|e| {
            exec_err(format!(
                "allocating {} bytes failed: {e}",
                len * std::mem::size_of::<T>()
            ))
        })
    }

    /// A device copy of `v` (a small metadata array).
    pub(super) fn upload_meta(&self, v: &[i32]) -> Result<CudaSlice<i32>> {
        self.alloc.clone_htod(v).map_err(exec_err)
    }

    /// Pinned host memory of `len` elements (cacheable, so the host may read it back).
    pub(super) fn pinned<T: kc::cudarc::driver::DeviceRepr>(
        &self,
        len: usize,
    ) -> Result<PinnedHostSlice<T>> {
        // SAFETY: the memory is uninitialised; it is only used as f32 or i32 staging, for which
        // every bit pattern is valid, and every element is written before it is copied.
        unsafe { self.ctx.alloc_pinned_with_flags::<T>(len.max(1), 0) }.map_err(exec_err)
    }
}
