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
//!   [`RuntimeError::StaleGraph`] whose message starts with [`STALE_GRAPH`]; the engine must then
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
//! ([`Backend::launch_count`]), per op as `CudaBackend::calls_of` (private) says.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{
    Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak,
};

use streamrec_graph::{Act, OpGraph, OpId, OpKind, PoolingMode, Source, TensorRef};
use streamrec_kernels::cuda::cudarc::driver::{
    sys, CudaContext, CudaEvent, CudaGraph, CudaSlice, CudaStream, PinnedHostSlice,
};
use streamrec_kernels::cuda::{
    self as kc, concat_meta, dot_meta, lanes, tbe_meta, Blas, ConcatPart, CudaError, CudaKernels,
    DevPtr, EmbeddingBagArgs, FusedEpilogue, GemmMath, IndexWidth, TbeArgs, TbeTable,
    PACKET_HEADER_WORDS,
};
use streamrec_kernels::Activation;

use super::shared::{self, OpWeights};
use super::{Backend, Span, SpanKind};
use crate::batch::{Batch, IndexVec};
use crate::error::{Result, RuntimeError};
use crate::weights::{Tensor, Weights};

/// The start of the error message of a replay refused because the inputs it was captured with
/// have been reallocated (see the module docs).
pub const STALE_GRAPH: &str = "CUDA graph is stale";

/// Alignment of every tensor and buffer region, in f32 elements (256 bytes).
const ALIGN: usize = 64;

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

fn unavailable(reason: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Unavailable(format!("CUDA backend unavailable: {reason}"))
}

fn exec_err(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Execution(format!("CUDA: {e}"))
}

fn cuda_err(e: CudaError) -> RuntimeError {
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

/// The time of an event `delta_ms` (a short f32 interval from `cuEventElapsedTime`) after an
/// anchor at `anchor_us`, in f64 microseconds (see the module docs).
pub fn chain_us(anchor_us: f64, delta_ms: f32) -> f64 {
    anchor_us + f64::from(delta_ms) * 1e3
}

/// Bytes of each of the two pinned buffers large weight uploads are staged through.
pub const STAGING_BYTES: usize = 64 << 20;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn align(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// Address of element `i` of an f32 allocation starting at `base`.
fn f32_at(base: DevPtr, i: usize) -> DevPtr {
    base + (i * std::mem::size_of::<f32>()) as u64
}

fn device_ptr<T>(s: &CudaSlice<T>, stream: &CudaStream) -> DevPtr {
    let (p, _guard) = streamrec_kernels::cuda::cudarc::driver::DevicePtr::device_ptr(s, stream);
    p
}

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

fn capturing() -> bool {
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
fn exclusive() -> Option<RwLockWriteGuard<'static, ()>> {
    if capturing() {
        return None;
    }
    Some(DEVICE_GATE.write().unwrap_or_else(PoisonError::into_inner))
}

/// The CUDA backend on one device.
pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    kernels: Arc<CudaKernels>,
    /// Allocations, weight uploads and metadata copies go here (and are synchronised before
    /// any other stream uses them).
    alloc: Arc<CudaStream>,
    /// A timing event recorded at creation: span times count from it.
    epoch: CudaEvent,
    /// The last span anchor and its time since the epoch (us); `None`: the epoch itself.
    anchor: Mutex<Option<(CudaEvent, f64)>>,
    cfg: CudaConfig,
    next_buffers: AtomicU64,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend")
            .field("device", &self.cfg.device)
            .field("arch", &self.kernels.arch())
            .field("cfg", &self.cfg)
            .finish()
    }
}

impl CudaBackend {
    /// The backend on device `device` with the default configuration, or
    /// [`RuntimeError::Unavailable`] (`"CUDA backend unavailable: <reason>"`) when there is no
    /// driver, no such device, or NVRTC or cuBLAS cannot be loaded; [`RuntimeError::Kernel`]
    /// (with NVRTC's log) when the kernels do not compile or load ([`kernel_error`]).
    pub fn new(device: usize) -> Result<Self> {
        Self::with_config(CudaConfig {
            device,
            ..CudaConfig::default()
        })
    }

    /// The backend with a configuration.
    pub fn with_config(cfg: CudaConfig) -> Result<Self> {
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
        let epoch = ctx
            .new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(unavailable)?;
        epoch.record(&alloc).map_err(unavailable)?;
        alloc.synchronize().map_err(unavailable)?;
        Ok(Self {
            ctx,
            kernels,
            alloc,
            epoch,
            anchor: Mutex::new(None),
            cfg,
            next_buffers: AtomicU64::new(0),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &CudaConfig {
        &self.cfg
    }

    /// The device's name and the NVRTC architecture the kernels were compiled for: `sm_XY`
    /// (cubin) or `compute_XY` (PTX, after a fallback; [`kc::load_fallback`] says why).
    pub fn describe(&self) -> String {
        let name = self.ctx.name().unwrap_or_else(|_| "unknown device".into());
        format!("{name} ({})", self.kernels.arch())
    }

    /// A timing event.
    fn timing_event(&self) -> Result<CudaEvent> {
        self.ctx
            .new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(exec_err)
    }

    fn index_width(&self, graph: &OpGraph) -> Result<IndexWidth> {
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
            IndexChoice::I32 => Err(RuntimeError::Input(format!(
                "32-bit indices requested but a table has {max_rows} rows"
            ))),
        }
    }

    /// A zeroed device allocation on the allocation stream.
    fn zeros<T: kc::cudarc::driver::DeviceRepr + kc::cudarc::driver::ValidAsZeroBits>(
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
    fn upload_meta(&self, v: &[i32]) -> Result<CudaSlice<i32>> {
        self.alloc.clone_htod(v).map_err(exec_err)
    }

    /// Pinned host memory of `len` elements (cacheable, so the host may read it back).
    fn pinned<T: kc::cudarc::driver::DeviceRepr>(&self, len: usize) -> Result<PinnedHostSlice<T>> {
        // SAFETY: the memory is uninitialised; it is only used as f32 or i32 staging, for which
        // every bit pattern is valid, and every element is written before it is copied.
        unsafe { self.ctx.alloc_pinned_with_flags::<T>(len.max(1), 0) }.map_err(exec_err)
    }

    /// The input-packet capacity in 32-bit words for `indices` indices.
    fn packet_words(slots: usize, max_batch: usize, indices: usize, index: IndexWidth) -> usize {
        let head = PACKET_HEADER_WORDS + (max_batch + 1) * slots;
        head + 2 + indices * index.bytes() / 4
    }

    fn alloc_input(&self, words: usize, dense_len: usize) -> Result<InputStage> {
        Ok(InputStage {
            packet: self.zeros::<i32>(words)?,
            host: self.pinned::<i32>(words)?,
            dense: self.zeros::<f32>(dense_len)?,
            dense_host: self.pinned::<f32>(dense_len)?,
            capacity: words,
            done: self.ctx.new_event(None).map_err(exec_err)?,
        })
    }
}

impl CudaBackend {
    /// A device copy of every tensor of `tables` and `dense`: a store of this process on the
    /// same device context that holds them all already (the same host `Arc<Tensor>`s), or a new
    /// upload, remembered for later backends. The cache lock is held during an upload, so a
    /// second engine built at the same time waits and then reuses the first one's copy.
    fn weight_store(
        &self,
        tables: &[&Arc<Tensor>],
        dense: &[&Arc<Tensor>],
    ) -> Result<Arc<WeightStore>> {
        let key = self.ctx.cu_ctx() as usize;
        let mut stores = lock(&STORES);
        stores.retain(|w| w.strong_count() > 0);
        let hit = stores.iter().filter_map(Weak::upgrade).find(|st| {
            st.cu_ctx == key && tables.iter().chain(dense).all(|t| st.find(t).is_some())
        });
        if let Some(st) = hit {
            st.reused.store(true, Ordering::Relaxed);
            return Ok(st);
        }
        let st = Arc::new(self.upload_store(key, tables, dense)?);
        stores.push(Arc::downgrade(&st));
        Ok(st)
    }

    /// Uploads the tensors: two zeroed allocations (the gaps between 256-byte aligned tensors
    /// stay zero), filled through pinned staging when the weights are large (direct copies from
    /// pageable memory below [`STAGING_BYTES`] in all), synchronised before returning.
    fn upload_store(
        &self,
        cu_ctx: usize,
        tables: &[&Arc<Tensor>],
        dense: &[&Arc<Tensor>],
    ) -> Result<WeightStore> {
        let len = |list: &[&Arc<Tensor>]| list.iter().map(|t| align(t.data.len())).sum::<usize>();
        let (t_len, d_len) = (len(tables), len(dense));
        let bytes = (t_len + d_len) * std::mem::size_of::<f32>();
        let mut t_dev = self.zeros::<f32>(t_len)?;
        let mut d_dev = self.zeros::<f32>(d_len)?;
        let mut staging = if bytes >= STAGING_BYTES {
            Some(Staging::new(self, &self.alloc)?)
        } else {
            None
        };
        let mut at = HashMap::new();
        for (list, dev) in [(tables, &mut t_dev), (dense, &mut d_dev)] {
            let base = device_ptr(dev, &self.alloc);
            let mut o = 0;
            for t in list {
                let n = t.data.len();
                match staging.as_mut() {
                    Some(st) => st.put(&t.data, f32_at(base, o))?,
                    None => self
                        .alloc
                        .memcpy_htod(&t.data[..], &mut dev.slice_mut(o..o + n))
                        .map_err(exec_err)?,
                }
                at.insert(
                    Arc::as_ptr(t) as usize,
                    (Arc::downgrade(t), f32_at(base, o)),
                );
                o += align(n);
            }
        }
        if let Some(st) = staging {
            st.finish()?;
        }
        self.alloc.synchronize().map_err(exec_err)?;
        Ok(WeightStore {
            cu_ctx,
            _tables: t_dev,
            _dense: d_dev,
            at,
            bytes,
            reused: AtomicBool::new(false),
        })
    }
}

impl CudaBackend {
    /// Kernel launches and cuBLAS/cuBLASLt calls that [`Backend::launch`] issues for op `id`
    /// (what [`Backend::launch_count`] counts). Kept in step with the branches of `launch`:
    /// a lookup is one kernel; a linear layer is one cuBLASLt call with the bias and ReLU in
    /// its epilogue, or (a sigmoid, or no cuBLASLt on the stream's handle) a cuBLAS GEMM plus
    /// the `bias_act` kernel; a concatenation copies only when some input was not aliased into
    /// it; a DCN layer is two GEMMs and its epilogue kernel.
    fn calls_of(
        &self,
        stream: &CudaStreamHandle,
        graph: &OpGraph,
        id: OpId,
        w: OpW,
        bufs: &CudaBuffers,
        batch: usize,
    ) -> u64 {
        if batch == 0 {
            return 0;
        }
        match (&graph.op(id).kind, w) {
            (OpKind::EmbeddingBag { .. }, OpW::Table { dim, .. }) => u64::from(dim > 0),
            (OpKind::TableBatchedEmbeddingBag { .. }, OpW::Tbe { tables, .. }) => {
                u64::from(tables > 0)
            }
            (OpKind::Linear { .. }, OpW::Linear { act, .. }) => {
                let unfused = FusedEpilogue::for_activation(act).is_none()
                    || lock(&stream.blas).fused_epilogues().is_err();
                1 + u64::from(unfused)
            }
            (OpKind::Concat, _) => u64::from(bufs.concat[id].is_some()),
            (OpKind::DotInteraction, _) => 1,
            (OpKind::DcnCross { .. }, OpW::Cross { .. }) => 3,
            _ => 0,
        }
    }
}

/// A stream with its cuBLAS handle, span log, request marks and launch count.
pub struct CudaStreamHandle {
    stream: Arc<CudaStream>,
    blas: Mutex<Blas>,
    tracing: AtomicBool,
    spans: Mutex<Vec<(SpanKind, CudaEvent, CudaEvent)>>,
    marks: Mutex<Marks>,
    /// Kernel launches and cuBLAS/cuBLASLt calls issued on this stream.
    launches: AtomicU64,
}

/// The timing events around a request's plan ([`Backend::mark_start`], [`Backend::mark_end`]).
struct Marks {
    start: CudaEvent,
    end: CudaEvent,
    /// `start` was recorded for the current request.
    started: bool,
    /// `end` was recorded after `start`.
    ended: bool,
}

impl CudaStreamHandle {
    /// The cudarc stream.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
}

/// An event (no timing).
pub struct CudaEventHandle {
    event: CudaEvent,
}

/// One op's weights on the device.
#[derive(Clone, Copy, Debug)]
enum OpW {
    None,
    Table {
        table: DevPtr,
        dim: usize,
        vec: bool,
        mean: bool,
    },
    Tbe {
        meta: DevPtr,
        tables: usize,
        max_lanes: usize,
    },
    Linear {
        weight: DevPtr,
        bias: DevPtr,
        act: Activation,
    },
    Cross {
        v: DevPtr,
        u: DevPtr,
        bias: DevPtr,
    },
}

/// The weights on the device, shared by every context.
pub struct CudaWeights {
    store: Arc<WeightStore>,
    _meta: Vec<CudaSlice<i32>>,
    ops: Vec<OpW>,
}

impl CudaWeights {
    /// Bytes of weight tensors on the device (shared with other backends of the process that
    /// use the same host tensors, see the module docs).
    pub fn bytes(&self) -> usize {
        self.store.bytes
    }

    /// Whether these weights reuse tensors another backend of the process had uploaded.
    pub fn shared(&self) -> bool {
        Arc::strong_count(&self.store) > 1 || self.store.reused.load(Ordering::Relaxed)
    }
}

/// Uploaded weight tensors: the tables' allocation and the dense weights' allocation, and each
/// host tensor's device address, shared by every backend of the process on one device context.
struct WeightStore {
    /// The `CUcontext` the allocations live in.
    cu_ctx: usize,
    _tables: CudaSlice<f32>,
    _dense: CudaSlice<f32>,
    /// Device address of each uploaded host tensor by the address of its `Arc` allocation. The
    /// `Weak` keeps that allocation from being freed and reused by another tensor while the
    /// store lives, so an equal address is the same tensor.
    at: HashMap<usize, (Weak<Tensor>, DevPtr)>,
    bytes: usize,
    /// Some backend found this store in the cache.
    reused: AtomicBool,
}

impl WeightStore {
    /// The device address of host tensor `t`, if this store holds it.
    fn find(&self, t: &Arc<Tensor>) -> Option<DevPtr> {
        self.at
            .get(&(Arc::as_ptr(t) as usize))
            .filter(|(w, _)| std::ptr::eq(w.as_ptr(), Arc::as_ptr(t)))
            .map(|&(_, p)| p)
    }
}

/// The process's uploaded weight stores (see [`CudaBackend::load_weights`]).
static STORES: Mutex<Vec<Weak<WeightStore>>> = Mutex::new(Vec::new());

/// Copies host data to device addresses through two pinned staging buffers on one stream: the
/// host fills one buffer (on several threads for large pieces) while the device copies the
/// other out; many small pieces share a buffer.
struct Staging<'a> {
    stream: &'a CudaStream,
    /// The buffers, each with an event recorded after the copies out of it.
    bufs: Vec<(PinnedHostSlice<f32>, CudaEvent)>,
    /// The buffer being filled and how many elements it holds.
    cur: usize,
    fill: usize,
    /// Copies pending from the current buffer: (destination, first element, length).
    pieces: Vec<(DevPtr, usize, usize)>,
}

impl<'a> Staging<'a> {
    fn new(be: &CudaBackend, stream: &'a CudaStream) -> Result<Self> {
        let len = STAGING_BYTES / std::mem::size_of::<f32>();
        let mut bufs = Vec::with_capacity(2);
        for _ in 0..2 {
            // SAFETY: uninitialised pinned memory, write-combined (the host only writes it);
            // every element is written before a copy reads it.
            let host = unsafe { be.ctx.alloc_pinned::<f32>(len) }.map_err(exec_err)?;
            bufs.push((host, be.ctx.new_event(None).map_err(exec_err)?));
        }
        Ok(Self {
            stream,
            bufs,
            cur: 0,
            fill: 0,
            pieces: Vec::new(),
        })
    }

    /// Queues the copy of `src` to the device address `dst`.
    fn put(&mut self, mut src: &[f32], mut dst: DevPtr) -> Result<()> {
        while !src.is_empty() {
            let room = self.bufs[self.cur].0.len() - self.fill;
            if room == 0 {
                self.flush()?;
                continue;
            }
            let n = room.min(src.len());
            let host = self.bufs[self.cur].0.as_mut_slice().map_err(exec_err)?;
            copy_parallel(&mut host[self.fill..self.fill + n], &src[..n]);
            self.pieces.push((dst, self.fill, n));
            self.fill += n;
            src = &src[n..];
            dst = f32_at(dst, n);
        }
        Ok(())
    }

    /// Issues the current buffer's copies and switches to the other buffer once the device has
    /// copied out of it.
    fn flush(&mut self) -> Result<()> {
        if self.pieces.is_empty() {
            return Ok(());
        }
        let (buf, done) = &self.bufs[self.cur];
        let host = buf.as_slice().map_err(exec_err)?;
        self.stream.context().bind_to_thread().map_err(exec_err)?;
        for (dst, start, len) in self.pieces.drain(..) {
            // SAFETY: `dst` is `len` floats inside a live device allocation (a tensor's place in
            // the store); the source is pinned memory that is not written again before `done`
            // (recorded after these copies) has completed.
            unsafe {
                kc::cudarc::driver::result::memcpy_htod_async(
                    dst,
                    &host[start..start + len],
                    self.stream.cu_stream(),
                )
            }
            .map_err(exec_err)?;
        }
        done.record(self.stream).map_err(exec_err)?;
        self.cur = (self.cur + 1) % self.bufs.len();
        self.fill = 0;
        self.bufs[self.cur].1.synchronize().map_err(exec_err)
    }

    /// Issues the last copies and waits for all of them (the staging buffers are freed after).
    fn finish(mut self) -> Result<()> {
        self.flush()?;
        self.stream.synchronize().map_err(exec_err)
    }
}

impl Drop for Staging<'_> {
    fn drop(&mut self) {
        // No copy may still read the pinned buffers when they are freed (an upload that failed
        // half-way returns early); after `finish` this returns at once.
        let _ = self.stream.synchronize();
    }
}

/// `dst.copy_from_slice(src)`, split over up to 8 threads for large slices (one thread copies
/// pageable memory at a fraction of what the copy engines take).
fn copy_parallel(dst: &mut [f32], src: &[f32]) {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    if dst.len() < (1 << 20) || threads < 2 {
        dst.copy_from_slice(src);
        return;
    }
    let per = dst.len().div_ceil(threads);
    std::thread::scope(|sc| {
        for (d, x) in dst.chunks_mut(per).zip(src.chunks(per)) {
            sc.spawn(move || d.copy_from_slice(x));
        }
    });
}

/// Where an op's output lives: first element and leading dimension (in floats).
#[derive(Clone, Copy, Debug)]
struct Loc {
    ptr: DevPtr,
    ld: usize,
    /// Offset in the arena (f32 elements) when the op owns its buffer.
    arena: Option<usize>,
}

/// Input staging of one context (guarded by a mutex; its device addresses are mirrored in
/// atomics for the launches).
struct InputStage {
    packet: CudaSlice<i32>,
    host: PinnedHostSlice<i32>,
    dense: CudaSlice<f32>,
    dense_host: PinnedHostSlice<f32>,
    /// Packet capacity in 32-bit words.
    capacity: usize,
    /// Recorded after the copies out of the pinned staging; waited on before rewriting it.
    done: CudaEvent,
}

struct ScoreStage {
    host: PinnedHostSlice<f32>,
    done: CudaEvent,
}

/// One execution context's device memory.
pub struct CudaBuffers {
    max_batch: usize,
    slots: usize,
    dense_width: usize,
    rows: Vec<usize>,
    index: IndexWidth,
    arena: CudaSlice<f32>,
    loc: Vec<Loc>,
    scratch: Vec<DevPtr>,
    concat: Vec<Option<(DevPtr, usize, usize)>>,
    dot: Vec<Option<DevPtr>>,
    _meta: Vec<CudaSlice<i32>>,
    dense_ptr: DevPtr,
    packet_ptr: AtomicU64,
    /// Bumped whenever the packet moves; graphs remember the value they were captured with.
    generation: Arc<AtomicU64>,
    input: Mutex<InputStage>,
    scores: Mutex<ScoreStage>,
    id: u64,
}

impl CudaBuffers {
    /// How many times the input packet has been reallocated (graphs captured before the last
    /// reallocation are stale).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The current input-packet capacity in 32-bit words.
    pub fn packet_capacity_words(&self) -> usize {
        lock(&self.input).capacity
    }

    /// A unique id of these buffers within their backend.
    pub fn id(&self) -> u64 {
        self.id
    }

    fn input_loc(&self, graph: &OpGraph, t: &TensorRef) -> Result<(DevPtr, usize)> {
        match t.src {
            Source::Op(p) => {
                let l = self.loc[p];
                Ok((f32_at(l.ptr, t.col), l.ld))
            }
            Source::Dense => Ok((f32_at(self.dense_ptr, t.col), graph.spec.dense)),
            Source::Sparse(f) => Err(exec_err(format!(
                "sparse feature {f} cannot be read as a matrix"
            ))),
        }
    }
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

/// Where every op's output lives in a context's activation arena, in f32 elements.
///
/// Ops are placed consumers first, so that an op whose only consumer is a concatenation (and
/// which feeds it once, whole) can be placed inside the concatenation's output: its region is
/// the concatenation's offset plus its first column, with the concatenation's leading
/// dimension. Every other op owns a `[max_batch, width]` region (256-byte aligned); each DCN
/// layer also owns a `[max_batch, rank]` scratch region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArenaLayout {
    /// Per op: the offset of its output's first element and its leading dimension.
    pub out: Vec<(usize, usize)>,
    /// Per op: the concatenation it writes into and its first column there, when aliased.
    pub alias: Vec<Option<(OpId, usize)>>,
    /// Per op: the offset of its scratch region (DCN layers).
    pub scratch: Vec<Option<usize>>,
    /// Arena length in f32 elements.
    pub len: usize,
}

impl ArenaLayout {
    /// The layout of `graph`'s outputs for up to `max_batch` samples; `alias_concat` turns the
    /// in-place concatenation on.
    pub fn new(graph: &OpGraph, max_batch: usize, alias_concat: bool) -> Self {
        let n = graph.len();
        let mut own: Vec<Option<usize>> = vec![None; n];
        let mut alias: Vec<Option<(OpId, usize)>> = vec![None; n];
        let mut len = 0usize;
        for id in (0..n).rev() {
            let op = graph.op(id);
            if alias_concat {
                if let Some(slot) = shared::concat_slot(graph, id) {
                    alias[id] = Some(slot);
                    continue;
                }
            }
            own[id] = Some(len);
            len += align(max_batch * op.width);
        }
        let mut scratch: Vec<Option<usize>> = vec![None; n];
        for (id, op) in graph.ops().enumerate() {
            if let OpKind::DcnCross { rank, .. } = op.kind {
                scratch[id] = Some(len);
                len += align(max_batch * rank);
            }
        }
        // Consumers first, so an alias finds its concatenation's place already set.
        let mut out = vec![(0usize, 0usize); n];
        for id in (0..n).rev() {
            out[id] = match (own[id], alias[id]) {
                (Some(o), _) => (o, graph.op(id).width),
                (None, Some((c, col))) => (out[c].0 + col, out[c].1),
                (None, None) => unreachable!("every op is placed or aliased"),
            };
        }
        Self {
            out,
            alias,
            scratch,
            len,
        }
    }
}

/// Lays out the input packet of `batch` (see `crates/kernels/kernels/embedding.cu`) into `out`
/// and returns the number of 32-bit words used: word 0 = the sample count `n`, offsets
/// sample-major from word [`PACKET_HEADER_WORDS`] (`(n + 1) x slots` of them, each an element
/// position in the packet viewed as an array of the index type), then the indices of all
/// features packed from an 8-byte boundary. Checks every offset and index on the way (`rows[f]`
/// per feature), so no kernel ever reads out of bounds. Returns `Ok(None)` when `out` is too
/// short.
pub fn stage_packet(
    batch: &Batch,
    rows: &[usize],
    index: IndexWidth,
    out: &mut [i32],
) -> Result<Option<usize>> {
    let n = batch.size;
    let slots = batch.sparse.len();
    if slots != rows.len() {
        return Err(RuntimeError::Input(format!(
            "expected {} sparse features, got {slots}",
            rows.len()
        )));
    }
    let head = PACKET_HEADER_WORDS + (n + 1) * slots;
    let idx_start = head.div_ceil(2) * 2;
    let per = index.bytes() / 4;
    let total: usize = batch.sparse.iter().map(|s| s.indices.len()).sum();
    let words = idx_start + total * per;
    if words > i32::MAX as usize {
        return Err(RuntimeError::Input(format!(
            "the batch has {total} indices, more than one packet can address"
        )));
    }
    if words > out.len() {
        return Ok(None);
    }
    // Element position of the first index, in units of the index type.
    let base = idx_start / per;
    out[0] = n as i32;
    out[1..PACKET_HEADER_WORDS].fill(0);
    // Offsets, written in packet order (sample-major).
    let mut starts = Vec::with_capacity(slots);
    let mut acc = 0usize;
    for (f, s) in batch.sparse.iter().enumerate() {
        if s.offsets.len() != n {
            return Err(RuntimeError::Input(format!(
                "feature {f}: expected {n} offsets, got {}",
                s.offsets.len()
            )));
        }
        starts.push(base + acc);
        acc += s.indices.len();
    }
    let offs = &mut out[PACKET_HEADER_WORDS..head];
    let mut prev = vec![0i64; slots];
    for b in 0..=n {
        for (f, s) in batch.sparse.iter().enumerate() {
            let len = s.indices.len() as i64;
            let o = if b < n { s.offsets.get(b) } else { len };
            if (b == 0 && o != 0) || o < prev[f] || o > len {
                return Err(RuntimeError::Input(format!(
                    "feature {f}: offset {o} at position {b} is not in order within 0..={len}"
                )));
            }
            prev[f] = o;
            offs[b * slots + f] = (starts[f] + o as usize) as i32;
        }
    }
    out[head..idx_start].fill(0);
    // Indices, feature by feature into disjoint parts of the packet (in parallel for large
    // batches), converted and range-checked in one pass.
    let mut rest = &mut out[idx_start..words];
    let mut jobs = Vec::with_capacity(slots);
    for (f, s) in batch.sparse.iter().enumerate() {
        let (dst, r) = std::mem::take(&mut rest).split_at_mut(s.indices.len() * per);
        rest = r;
        jobs.push((f, &s.indices, dst));
    }
    let run = |(f, idx, dst): (usize, &IndexVec, &mut [i32])| {
        if stage_indices(idx, rows[f] as u64, index, dst) {
            Ok(())
        } else {
            let bad = (0..idx.len())
                .map(|i| idx.get(i))
                .find(|&v| v < 0 || v >= rows[f] as i64)
                .unwrap_or(-1);
            Err(RuntimeError::Input(format!(
                "feature {f}: index {bad} out of range for a table of {} rows",
                rows[f]
            )))
        }
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(slots);
    if total < PARALLEL_STAGING || threads < 2 {
        jobs.into_iter().try_for_each(run)?;
    } else {
        let mut groups: Vec<Vec<_>> = (0..threads).map(|_| Vec::new()).collect();
        for (i, j) in jobs.into_iter().enumerate() {
            groups[i % threads].push(j);
        }
        std::thread::scope(|sc| {
            let handles: Vec<_> = groups
                .into_iter()
                .map(|g| sc.spawn(move || g.into_iter().try_for_each(run)))
                .collect();
            handles.into_iter().try_for_each(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(exec_err("index staging thread panicked")))
            })
        })?;
    }
    Ok(Some(words))
}

/// Indices at which [`stage_packet`] splits the index copy over threads.
const PARALLEL_STAGING: usize = 1 << 19;

/// Writes `idx` into `dst` as `index` words and returns whether every index is in
/// `0..rows` (one branch-free pass).
fn stage_indices(idx: &IndexVec, rows: u64, index: IndexWidth, dst: &mut [i32]) -> bool {
    let mut ok = true;
    match (idx, index) {
        (IndexVec::I32(v), IndexWidth::I32) => {
            for (d, &x) in dst.iter_mut().zip(v) {
                ok &= (i64::from(x) as u64) < rows;
                *d = x;
            }
        }
        (IndexVec::I64(v), IndexWidth::I32) => {
            for (d, &x) in dst.iter_mut().zip(v) {
                ok &= (x as u64) < rows;
                *d = x as i32;
            }
        }
        (IndexVec::I32(v), IndexWidth::I64) => {
            for (d, &x) in dst.chunks_exact_mut(2).zip(v) {
                ok &= (i64::from(x) as u64) < rows;
                d[0] = x;
                d[1] = if x < 0 { -1 } else { 0 };
            }
        }
        (IndexVec::I64(v), IndexWidth::I64) => {
            for (d, &x) in dst.chunks_exact_mut(2).zip(v) {
                ok &= (x as u64) < rows;
                d[0] = x as u64 as u32 as i32;
                d[1] = ((x as u64) >> 32) as u32 as i32;
            }
        }
    }
    ok
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
        let by_op = (0..graph.len())
            .map(|id| shared::resolve_weights(graph, id, weights))
            .collect::<Result<Vec<_>>>()?;
        // Every distinct tensor once: tables in one allocation, the rest in another.
        let mut seen: HashSet<usize> = HashSet::new();
        let mut tables: Vec<&Arc<Tensor>> = Vec::new();
        let mut dense: Vec<&Arc<Tensor>> = Vec::new();
        for w in &by_op {
            let (list, ts): (&mut Vec<&Arc<Tensor>>, Vec<&Arc<Tensor>>) = match w {
                OpWeights::Tables(ts) => (&mut tables, ts.iter().collect()),
                OpWeights::Linear { weight, bias } => (&mut dense, vec![weight, bias]),
                OpWeights::Cross { v, u, bias } => (&mut dense, vec![v, u, bias]),
                OpWeights::None => continue,
            };
            for t in ts {
                if seen.insert(Arc::as_ptr(t) as usize) {
                    list.push(t);
                }
            }
        }
        let store = self.weight_store(&tables, &dense)?;
        // `weight_store` returns a store holding every tensor of both lists.
        let tptr = |t: &Arc<Tensor>| store.find(t).expect("the store holds every tensor");
        let dptr = tptr;
        let mean = |f: usize| graph.spec.features[f].mode == PoolingMode::Mean;
        let mut metas = Vec::new();
        let mut ops = Vec::with_capacity(graph.len());
        for (id, w) in by_op.iter().enumerate() {
            let op = graph.op(id);
            let ow = match (&op.kind, w) {
                (OpKind::EmbeddingBag { feature }, OpWeights::Tables(ts)) => {
                    let dim = graph.spec.features[*feature].dim;
                    let table = tptr(&ts[0]);
                    OpW::Table {
                        table,
                        dim,
                        vec: dim.is_multiple_of(4) && table % 16 == 0,
                        mean: mean(*feature),
                    }
                }
                (OpKind::TableBatchedEmbeddingBag { features }, OpWeights::Tables(ts)) => {
                    let mut col = 0;
                    let mut list = Vec::with_capacity(features.len());
                    for (&f, t) in features.iter().zip(ts) {
                        let dim = graph.spec.features[f].dim;
                        let table = tptr(t);
                        list.push(TbeTable {
                            table,
                            dim,
                            out_col: col,
                            slot: f,
                            mean: mean(f),
                            vec: dim.is_multiple_of(4) && table % 16 == 0,
                        });
                        col += dim;
                    }
                    if col != op.width {
                        return Err(exec_err(format!(
                            "op `{}`: table dims sum to {col}, output width is {}",
                            op.name, op.width
                        )));
                    }
                    let max_lanes = list.iter().map(|t| lanes(t.dim, t.vec)).max().unwrap_or(0);
                    let meta = self.upload_meta(&tbe_meta(&list).map_err(cuda_err)?)?;
                    let p = device_ptr(&meta, &self.alloc);
                    metas.push(meta);
                    OpW::Tbe {
                        meta: p,
                        tables: list.len(),
                        max_lanes,
                    }
                }
                (OpKind::Linear { act, .. }, OpWeights::Linear { weight, bias }) => OpW::Linear {
                    weight: dptr(weight),
                    bias: dptr(bias),
                    act: match act {
                        Act::None => Activation::None,
                        Act::Relu => Activation::Relu,
                        Act::Sigmoid => Activation::Sigmoid,
                    },
                },
                (OpKind::DcnCross { .. }, OpWeights::Cross { v, u, bias }) => OpW::Cross {
                    v: dptr(v),
                    u: dptr(u),
                    bias: dptr(bias),
                },
                _ => OpW::None,
            };
            ops.push(ow);
        }
        self.alloc.synchronize().map_err(exec_err)?;
        Ok(CudaWeights {
            store,
            _meta: metas,
            ops,
        })
    }

    fn new_stream(&self) -> Result<CudaStreamHandle> {
        let _gate = exclusive();
        let stream = self.ctx.new_stream().map_err(exec_err)?;
        let blas = Blas::new(Arc::clone(&stream), self.cfg.math).map_err(cuda_err)?;
        // The handle's workspace was allocated on its own stream; finish that before any use.
        stream.synchronize().map_err(exec_err)?;
        let marks = Marks {
            start: self.timing_event()?,
            end: self.timing_event()?,
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

    fn new_event(&self) -> Result<CudaEventHandle> {
        Ok(CudaEventHandle {
            event: self.ctx.new_event(None).map_err(exec_err)?,
        })
    }

    fn alloc_buffers(&self, graph: &OpGraph, max_batch: usize) -> Result<CudaBuffers> {
        let _gate = exclusive();
        if max_batch == 0 {
            return Err(RuntimeError::Input("max batch must be > 0".into()));
        }
        let n = graph.len();
        let spec = &graph.spec;
        let index = self.index_width(graph)?;
        let lay = ArenaLayout::new(graph, max_batch, self.cfg.alias_concat);
        let alias = &lay.alias;
        // The arena starts as NaN so that an element no kernel wrote poisons the scores.
        let arena = {
            let nan = vec![f32::NAN; lay.len.max(1)];
            self.alloc.clone_htod(&nan).map_err(exec_err)?
        };
        let base = device_ptr(&arena, &self.alloc);
        let loc: Vec<Loc> = (0..n)
            .map(|id| {
                let (o, ld) = lay.out[id];
                Loc {
                    ptr: f32_at(base, o),
                    ld,
                    arena: alias[id].is_none().then_some(o),
                }
            })
            .collect();
        let scratch = lay
            .scratch
            .iter()
            .map(|o| o.map_or(0, |o| f32_at(base, o)))
            .collect();

        // Input staging.
        let slots = spec.features.len();
        let indices: usize = spec
            .features
            .iter()
            .map(|f| max_batch * f.pooling.max(1) * self.cfg.index_headroom.max(1))
            .sum();
        let words = Self::packet_words(slots, max_batch, indices, index);
        let input = self.alloc_input(words, max_batch * spec.dense)?;
        let dense_ptr = device_ptr(&input.dense, &self.alloc);
        let packet_ptr = device_ptr(&input.packet, &self.alloc);
        let scores = ScoreStage {
            host: self.pinned::<f32>(max_batch)?,
            done: self.ctx.new_event(None).map_err(exec_err)?,
        };

        // Metadata of concatenations (non-aliased parts) and dot interactions.
        let view = |t: &TensorRef| -> Result<(DevPtr, usize)> {
            match t.src {
                Source::Op(p) => Ok((f32_at(loc[p].ptr, t.col), loc[p].ld)),
                Source::Dense => Ok((f32_at(dense_ptr, t.col), spec.dense)),
                Source::Sparse(f) => Err(exec_err(format!(
                    "sparse feature {f} cannot be read as a matrix"
                ))),
            }
        };
        let mut metas = Vec::new();
        let mut concat = vec![None; n];
        let mut dot = vec![None; n];
        for (id, op) in graph.ops().enumerate() {
            match op.kind {
                OpKind::Concat => {
                    let mut parts = Vec::new();
                    let mut col = 0;
                    for t in &op.inputs {
                        let aliased = matches!(t.src, Source::Op(p) if alias[p].is_some_and(|(c, _)| c == id));
                        if !aliased {
                            let (src, src_ld) = view(t)?;
                            parts.push(ConcatPart {
                                src,
                                src_ld,
                                width: t.width,
                                out_col: col,
                            });
                        }
                        col += t.width;
                    }
                    if col != op.width {
                        return Err(exec_err(format!(
                            "op `{}`: inputs are {col} wide, output {}",
                            op.name, op.width
                        )));
                    }
                    if !parts.is_empty() {
                        let max_w = parts.iter().map(|p| p.width).max().unwrap_or(0);
                        let m = self.upload_meta(&concat_meta(&parts).map_err(cuda_err)?)?;
                        concat[id] = Some((device_ptr(&m, &self.alloc), parts.len(), max_w));
                        metas.push(m);
                    }
                }
                OpKind::DotInteraction => {
                    let d = op.inputs.first().map_or(0, |t| t.width);
                    let k = op.inputs.len();
                    if k == 0
                        || op.inputs.iter().any(|t| t.width != d)
                        || op.width != d + k * (k - 1) / 2
                    {
                        return Err(exec_err(format!(
                            "op `{}`: dot interaction shapes disagree",
                            op.name
                        )));
                    }
                    let ins = op.inputs.iter().map(view).collect::<Result<Vec<_>>>()?;
                    let m = self.upload_meta(&dot_meta(&ins).map_err(cuda_err)?)?;
                    dot[id] = Some(device_ptr(&m, &self.alloc));
                    metas.push(m);
                }
                _ => {}
            }
        }
        self.alloc.synchronize().map_err(exec_err)?;
        Ok(CudaBuffers {
            max_batch,
            slots,
            dense_width: spec.dense,
            rows: spec.features.iter().map(|f| f.rows).collect(),
            index,
            arena,
            loc,
            scratch,
            concat,
            dot,
            _meta: metas,
            dense_ptr,
            packet_ptr: AtomicU64::new(packet_ptr),
            generation: Arc::new(AtomicU64::new(0)),
            input: Mutex::new(input),
            scores: Mutex::new(scores),
            id: self.next_buffers.fetch_add(1, Ordering::Relaxed),
        })
    }

    fn upload(
        &self,
        stream: &CudaStreamHandle,
        bufs: &CudaBuffers,
        batch: &Arc<Batch>,
    ) -> Result<()> {
        let n = batch.size;
        if n > bufs.max_batch {
            return Err(RuntimeError::BatchTooLarge {
                batch: n,
                max: bufs.max_batch,
            });
        }
        if batch.dense.len() != n * bufs.dense_width {
            return Err(RuntimeError::Input(format!(
                "dense: expected {} values, got {}",
                n * bufs.dense_width,
                batch.dense.len()
            )));
        }
        let mut st = lock(&bufs.input);
        // The previous request's copies out of the staging must be done before rewriting it.
        st.done.synchronize().map_err(exec_err)?;
        let words = {
            let host = st.host.as_mut_slice().map_err(exec_err)?;
            stage_packet(batch, &bufs.rows, bufs.index, host)?
        };
        let words = match words {
            Some(w) => w,
            None => {
                // Grow the packet (and its staging) to what this batch needs, at least doubling.
                let total: usize = batch.sparse.iter().map(|s| s.indices.len()).sum();
                let need = Self::packet_words(bufs.slots, bufs.max_batch, total, bufs.index);
                let cap = need.max(st.capacity * 2);
                let _gate = exclusive();
                st.packet = self.zeros::<i32>(cap)?;
                st.host = self.pinned::<i32>(cap)?;
                st.capacity = cap;
                self.alloc.synchronize().map_err(exec_err)?;
                bufs.packet_ptr
                    .store(device_ptr(&st.packet, &self.alloc), Ordering::Release);
                bufs.generation.fetch_add(1, Ordering::AcqRel);
                let host = st.host.as_mut_slice().map_err(exec_err)?;
                stage_packet(batch, &bufs.rows, bufs.index, host)?
                    .ok_or_else(|| exec_err("the grown input packet is still too small"))?
            }
        };
        let dl = batch.dense.len();
        let st = &mut *st;
        st.dense_host.as_mut_slice().map_err(exec_err)?[..dl].copy_from_slice(&batch.dense);
        let s = &stream.stream;
        if dl > 0 {
            let src = &st.dense_host.as_slice().map_err(exec_err)?[..dl];
            s.memcpy_htod(src, &mut st.dense.slice_mut(..dl))
                .map_err(exec_err)?;
        }
        let src = &st.host.as_slice().map_err(exec_err)?[..words];
        s.memcpy_htod(src, &mut st.packet.slice_mut(..words))
            .map_err(exec_err)?;
        st.done.record(s).map_err(exec_err)?;
        Ok(())
    }

    fn launch(
        &self,
        stream: &CudaStreamHandle,
        graph: &Arc<OpGraph>,
        op_id: OpId,
        weights: &Arc<CudaWeights>,
        bufs: &CudaBuffers,
        batch: usize,
    ) -> Result<()> {
        if batch > bufs.max_batch {
            return Err(RuntimeError::BatchTooLarge {
                batch,
                max: bufs.max_batch,
            });
        }
        let capture = capturing();
        if capture {
            // Remember which buffers (and which packet) this graph reads.
            CAPTURE.with(|c| {
                if let Some(Capture { guards: list, .. }) = c.borrow_mut().as_mut() {
                    if !list.iter().any(|(g, _)| Arc::ptr_eq(g, &bufs.generation)) {
                        list.push((Arc::clone(&bufs.generation), bufs.generation()));
                    }
                }
            });
        }
        let trace = !capture && stream.tracing.load(Ordering::Relaxed);
        let s = &stream.stream;
        let start = if trace {
            let e = self.timing_event()?;
            e.record(s).map_err(exec_err)?;
            Some(e)
        } else {
            None
        };
        if op_id >= graph.len() || op_id >= weights.ops.len() || op_id >= bufs.loc.len() {
            return Err(exec_err(format!(
                "op {op_id} is not in the graph the weights and buffers were made for"
            )));
        }
        let op = graph.op(op_id);
        let out = bufs.loc[op_id];
        let k = &self.kernels;
        let packet = bufs.packet_ptr.load(Ordering::Acquire);
        match (&op.kind, weights.ops[op_id]) {
            (
                OpKind::EmbeddingBag { feature },
                OpW::Table {
                    table,
                    dim,
                    vec,
                    mean,
                },
            ) => {
                let a = EmbeddingBagArgs {
                    table,
                    dim,
                    vec,
                    packet,
                    slots: bufs.slots,
                    slot: *feature,
                    batch,
                    mean,
                    out: out.ptr,
                    out_ld: out.ld,
                    index: bufs.index,
                };
                // SAFETY: the table is a live `[rows, dim]` region of the weights (16-byte
                // aligned when `vec`); the packet is either zeroed (no sample staged yet: every
                // bag is empty) or was staged by `upload` with `slots` slots and range-checked
                // indices of type `bufs.index`; `out` is this op's `[max_batch, dim]` output (or
                // its slice of a concatenation) and `batch <= max_batch`.
                unsafe { k.embedding_bag(s, &a) }.map_err(cuda_err)?;
            }
            (
                OpKind::TableBatchedEmbeddingBag { .. },
                OpW::Tbe {
                    meta,
                    tables,
                    max_lanes,
                },
            ) => {
                let a = TbeArgs {
                    meta,
                    tables,
                    max_lanes,
                    packet,
                    slots: bufs.slots,
                    batch,
                    out: out.ptr,
                    out_ld: out.ld,
                    index: bufs.index,
                };
                // SAFETY: the metadata lists live tables of the weights with their dims and
                // output columns summing to this op's width; packet and output as above.
                unsafe { k.tbe(s, &a) }.map_err(cuda_err)?;
            }
            (OpKind::Linear { .. }, OpW::Linear { weight, bias, act }) => {
                let t = &op.inputs[0];
                let (x, x_ld) = bufs.input_loc(graph, t)?;
                let mut blas = lock(&stream.blas);
                // SAFETY: x is `batch` rows of `t.width` floats with leading dimension x_ld (a
                // producer's output or the dense input), the weight is `[op.width, t.width]`,
                // the bias has op.width floats, and out is this op's output with leading
                // dimension out.ld >= op.width; the output region is distinct from the inputs'.
                // One cuBLASLt call with the bias and ReLU in its epilogue where it can, else
                // the plain GEMM and the bias_act kernel below.
                let done = unsafe {
                    blas.linear_bias_act(
                        batch, op.width, t.width, x, x_ld, weight, bias, out.ptr, out.ld, act,
                    )
                }
                .map_err(cuda_err)?;
                drop(blas);
                if done == kc::LinearEpilogue::Pending {
                    // SAFETY: out as above, bias has op.width floats.
                    unsafe { k.bias_act(s, out.ptr, out.ld, Some(bias), batch, op.width, act) }
                        .map_err(cuda_err)?;
                    // The count below says one call for a layer that could fuse; this one
                    // could not (no cuBLASLt plan for the shape, a misaligned bias, ...).
                    if FusedEpilogue::for_activation(act).is_some()
                        && lock(&stream.blas).fused_epilogues().is_ok()
                    {
                        stream.launches.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            (OpKind::Concat, _) => {
                if let Some((meta, parts, max_w)) = bufs.concat[op_id] {
                    // SAFETY: the metadata lists the non-aliased inputs (live producer outputs
                    // or the dense input, `batch` rows each) and their columns inside this op's
                    // output, which is `[max_batch, op.width]`.
                    unsafe { k.concat(s, meta, parts, max_w, out.ptr, out.ld, batch) }
                        .map_err(cuda_err)?;
                }
            }
            (OpKind::DotInteraction, _) => {
                let meta = bufs.dot[op_id]
                    .ok_or_else(|| exec_err(format!("op `{}` has no metadata", op.name)))?;
                let d = op.inputs[0].width;
                // SAFETY: the metadata lists the inputs' live `batch`-row slices of width d;
                // out is this op's `[max_batch, d + n (n - 1) / 2]` output (checked when the
                // buffers were allocated), distinct from every input.
                unsafe { k.dot_interaction(s, meta, op.inputs.len(), d, out.ptr, out.ld, batch) }
                    .map_err(cuda_err)?;
            }
            (OpKind::DcnCross { rank, .. }, OpW::Cross { v, u, bias }) => {
                let w = op.width;
                let x0 = bufs.input_loc(graph, &op.inputs[0])?;
                let xl = bufs.input_loc(graph, &op.inputs[1])?;
                let t = bufs.scratch[op_id];
                let mut blas = lock(&stream.blas);
                // SAFETY: T[batch, rank] = xl · Vᵀ with xl `batch` rows of w floats (ld xl.1),
                // V `[rank, w]`, T this op's `[max_batch, rank]` scratch (ld rank); then
                // out[batch, w] = T · Uᵀ with U `[w, rank]` into this op's output (ld out.ld);
                // scratch, inputs and output are distinct regions.
                unsafe {
                    blas.linear(batch, *rank, w, xl.0, xl.1, v, t, *rank)
                        .and_then(|_| blas.linear(batch, w, *rank, t, *rank, u, out.ptr, out.ld))
                }
                .map_err(cuda_err)?;
                drop(blas);
                // SAFETY: out, x0 and xl are `batch` rows of w floats with their leading
                // dimensions; bias has w floats; out overlaps neither input.
                unsafe { k.dcn_epilogue(s, out.ptr, out.ld, x0, xl, bias, batch, w) }
                    .map_err(cuda_err)?;
            }
            (OpKind::Synthetic { .. }, _) => {
                return Err(exec_err(format!(
                    "op `{}` is synthetic and has no CUDA kernel",
                    op.name
                )))
            }
            _ => {
                return Err(exec_err(format!(
                    "op `{}` has weights of the wrong kind",
                    op.name
                )))
            }
        }
        let calls = self.calls_of(stream, graph, op_id, weights.ops[op_id], bufs, batch);
        stream.launches.fetch_add(calls, Ordering::Relaxed);
        if let Some(start) = start {
            let end = self.timing_event()?;
            end.record(s).map_err(exec_err)?;
            lock(&stream.spans).push((SpanKind::Op(op_id), start, end));
        }
        Ok(())
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
        if batch > bufs.max_batch {
            return Err(RuntimeError::BatchTooLarge {
                batch,
                max: bufs.max_batch,
            });
        }
        let l = bufs.loc[op];
        let o = match l.arena {
            Some(o) if l.ld == 1 => o,
            _ => {
                return Err(exec_err(format!(
                    "op {op} is not a contiguous [batch, 1] output and cannot be downloaded"
                )))
            }
        };
        // scores() reads the staging under the same lock, after waiting for `done`.
        let mut sc = lock(&bufs.scores);
        let sc = &mut *sc;
        let dst = &mut sc.host.as_mut_slice().map_err(exec_err)?[..batch];
        let s = &stream.stream;
        s.memcpy_dtoh(&bufs.arena.slice(o..o + batch), dst)
            .map_err(exec_err)?;
        sc.done.record(s).map_err(exec_err)
    }

    fn synchronize(&self, stream: &CudaStreamHandle) -> Result<()> {
        stream.stream.synchronize().map_err(exec_err)?;
        self.ctx.check_err().map_err(exec_err)
    }

    fn scores(&self, bufs: &CudaBuffers, batch: usize) -> Result<Vec<f32>> {
        if batch > bufs.max_batch {
            return Err(RuntimeError::BatchTooLarge {
                batch,
                max: bufs.max_batch,
            });
        }
        let sc = lock(&bufs.scores);
        sc.done.synchronize().map_err(exec_err)?;
        Ok(sc.host.as_slice().map_err(exec_err)?[..batch].to_vec())
    }

    fn set_tracing(&self, stream: &CudaStreamHandle, on: bool) {
        stream.tracing.store(on, Ordering::Relaxed);
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
        if capturing() {
            return Err(exec_err("a capture is already in progress on this thread"));
        }
        let hold = DEVICE_GATE.read().unwrap_or_else(PoisonError::into_inner);
        stream
            .stream
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

    fn end_capture(&self, stream: &CudaStreamHandle) -> Result<CudaGraphHandle> {
        let capture = CAPTURE.with(|c| c.borrow_mut().take());
        let ended = stream.stream.end_capture(sys::CUgraphInstantiate_flags(0));
        // The capture is over (or failed): release the hold, so that the other threads'
        // device-wide calls go on.
        let guards = capture.map(|c| c.guards).unwrap_or_default();
        let graph = ended
            .map_err(exec_err)?
            .ok_or_else(|| exec_err("the capture recorded no work"))?;
        graph.upload().map_err(exec_err)?;
        Ok(CudaGraphHandle {
            graph: Mutex::new(SendGraph(graph)),
            stream: Arc::clone(&stream.stream),
            guards,
        })
    }

    fn replay(&self, stream: &CudaStreamHandle, graph: &CudaGraphHandle) -> Result<()> {
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
        let span = if stream.tracing.load(Ordering::Relaxed) {
            let e = self.timing_event()?;
            e.record(&stream.stream).map_err(exec_err)?;
            Some(e)
        } else {
            None
        };
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
        if let Some(start) = span {
            let end = self.timing_event()?;
            end.record(&stream.stream).map_err(exec_err)?;
            lock(&stream.spans).push((SpanKind::Replay, start, end));
        }
        Ok(())
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
        let mut m = lock(&stream.marks);
        m.started = false;
        m.ended = false;
        m.start.record(&stream.stream).map_err(exec_err)?;
        m.started = true;
        Ok(())
    }

    fn mark_end(&self, stream: &CudaStreamHandle) -> Result<()> {
        if capturing() {
            return Ok(());
        }
        let mut m = lock(&stream.marks);
        if m.started {
            m.end.record(&stream.stream).map_err(exec_err)?;
            m.ended = true;
        }
        Ok(())
    }

    fn take_marked_us(&self, stream: &CudaStreamHandle) -> Option<f64> {
        let mut m = lock(&stream.marks);
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

    fn launch_count(&self, stream: &CudaStreamHandle) -> Option<u64> {
        Some(stream.launches.load(Ordering::Relaxed))
    }
}
