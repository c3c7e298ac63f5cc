//! Loaded CUDA modules and the launch helpers of every kernel in `kernels/*.cu`.
//!
//! Grids and argument lists here mirror the kernel signatures one to one; the comments in the
//! `.cu` files describe the same layouts from the device side.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaStream, LaunchConfig, PushKernelArg,
};

use super::compile::{load_modules, SOURCES};
use super::{CudaError, DevPtr};
use crate::types::Activation;

/// Threads per block of the 1-D element-wise and embedding kernels.
pub const BLOCK: u32 = 256;

/// Threads per block of the dot interaction (one block per sample).
const DOT_BLOCK: u32 = 128;

/// The default dynamic shared-memory limit of a block, in bytes.
const MAX_SHARED: usize = 48 * 1024;

/// 32-bit words before the offsets in an input packet (word 0 holds the staged sample count).
pub const PACKET_HEADER_WORDS: usize = 4;

/// The integer type of the indices in an input packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IndexWidth {
    /// 32-bit indices (every table has at most `i32::MAX` rows).
    I32,
    /// 64-bit indices.
    I64,
}

impl IndexWidth {
    /// Bytes per index.
    pub fn bytes(self) -> usize {
        match self {
            IndexWidth::I32 => 4,
            IndexWidth::I64 => 8,
        }
    }
}

/// Threads per bag row: `dim / 4` float4 lanes when `vec`, else `dim` scalar lanes.
pub fn lanes(dim: usize, vec: bool) -> usize {
    if vec {
        dim / 4
    } else {
        dim
    }
}

/// A size as the kernels' `int`.
fn int(what: &str, v: usize) -> Result<i32, CudaError> {
    i32::try_from(v)
        .map_err(|_| CudaError::Invalid(format!("{what} = {v} does not fit in a 32-bit int")))
}

/// Blocks of [`BLOCK`] threads covering `threads` threads.
fn blocks(threads: usize) -> Result<u32, CudaError> {
    let b = threads.div_ceil(BLOCK as usize);
    u32::try_from(b)
        .ok()
        .filter(|&b| b <= i32::MAX as u32)
        .ok_or_else(|| CudaError::Invalid(format!("{threads} threads need too many blocks")))
}

/// The two 32-bit words (low first) of a device address, as stored in kernel metadata arrays.
fn ptr_words(p: DevPtr) -> [i32; 2] {
    [(p & 0xffff_ffff) as u32 as i32, (p >> 32) as u32 as i32]
}

/// One embedding-bag launch ([`CudaKernels::embedding_bag`]).
#[derive(Clone, Copy, Debug)]
pub struct EmbeddingBagArgs {
    /// The table, `[rows, dim]` row-major f32; 16-byte aligned when `vec`.
    pub table: DevPtr,
    /// Embedding dimension.
    pub dim: usize,
    /// float4 loads: requires `dim % 4 == 0` and a 16-byte-aligned table.
    pub vec: bool,
    /// The input packet (see `kernels/embedding.cu`).
    pub packet: DevPtr,
    /// Sparse features (offset slots) per sample in the packet.
    pub slots: usize,
    /// This feature's slot.
    pub slot: usize,
    /// Samples to compute (rows of `out` written); samples past the staged count give zeros.
    pub batch: usize,
    /// Mean pooling instead of sum.
    pub mean: bool,
    /// The output's first element (row 0, first column of the slice).
    pub out: DevPtr,
    /// The output's leading dimension in floats.
    pub out_ld: usize,
    /// The packet's index type.
    pub index: IndexWidth,
}

/// One table of a table-batched launch.
#[derive(Clone, Copy, Debug)]
pub struct TbeTable {
    /// The table, `[rows, dim]` row-major f32; 16-byte aligned when `vec`.
    pub table: DevPtr,
    /// Embedding dimension.
    pub dim: usize,
    /// First output column of this table's bags.
    pub out_col: usize,
    /// The feature's slot in the input packet.
    pub slot: usize,
    /// Mean pooling instead of sum.
    pub mean: bool,
    /// float4 loads: requires `dim % 4 == 0` and a 16-byte-aligned table.
    pub vec: bool,
}

/// The device metadata array of a table-batched launch: 8 ints per table.
pub fn tbe_meta(tables: &[TbeTable]) -> Result<Vec<i32>, CudaError> {
    let mut m = Vec::with_capacity(tables.len() * 8);
    for t in tables {
        if t.vec && !t.dim.is_multiple_of(4) {
            return Err(CudaError::Invalid(format!(
                "float4 lookups need dim % 4 == 0, got {}",
                t.dim
            )));
        }
        let [lo, hi] = ptr_words(t.table);
        m.extend_from_slice(&[
            lo,
            hi,
            int("dim", t.dim)?,
            int("out_col", t.out_col)?,
            int("slot", t.slot)?,
            i32::from(t.mean),
            i32::from(t.vec),
            0,
        ]);
    }
    Ok(m)
}

/// One table-batched launch ([`CudaKernels::tbe`]).
#[derive(Clone, Copy, Debug)]
pub struct TbeArgs {
    /// The metadata array from [`tbe_meta`], on the device.
    pub meta: DevPtr,
    /// Tables in the metadata.
    pub tables: usize,
    /// The largest [`lanes`] over the tables.
    pub max_lanes: usize,
    /// The input packet.
    pub packet: DevPtr,
    /// Offset slots per sample in the packet.
    pub slots: usize,
    /// Samples to compute.
    pub batch: usize,
    /// The output's first element.
    pub out: DevPtr,
    /// The output's leading dimension in floats.
    pub out_ld: usize,
    /// The packet's index type.
    pub index: IndexWidth,
}

/// One column slice copied by a concatenation.
#[derive(Clone, Copy, Debug)]
pub struct ConcatPart {
    /// The source slice's first element.
    pub src: DevPtr,
    /// The source's leading dimension in floats.
    pub src_ld: usize,
    /// Columns copied.
    pub width: usize,
    /// First destination column.
    pub out_col: usize,
}

/// The device metadata array of a concatenation: 8 ints per part.
pub fn concat_meta(parts: &[ConcatPart]) -> Result<Vec<i32>, CudaError> {
    let mut m = Vec::with_capacity(parts.len() * 8);
    for p in parts {
        let [lo, hi] = ptr_words(p.src);
        m.extend_from_slice(&[
            lo,
            hi,
            int("src_ld", p.src_ld)?,
            int("width", p.width)?,
            int("out_col", p.out_col)?,
            0,
            0,
            0,
        ]);
    }
    Ok(m)
}

/// The device metadata array of a dot interaction: 4 ints per input `(first element, ld)`.
pub fn dot_meta(inputs: &[(DevPtr, usize)]) -> Result<Vec<i32>, CudaError> {
    let mut m = Vec::with_capacity(inputs.len() * 4);
    for &(p, ld) in inputs {
        let [lo, hi] = ptr_words(p);
        m.extend_from_slice(&[lo, hi, int("ld", ld)?, 0]);
    }
    Ok(m)
}

/// The kernels of `kernels/*.cu`, loaded into one context.
#[derive(Debug)]
pub struct CudaKernels {
    ctx: Arc<CudaContext>,
    arch: String,
    _modules: Vec<Arc<CudaModule>>,
    embedding_bag_i32: CudaFunction,
    embedding_bag_i64: CudaFunction,
    tbe_i32: CudaFunction,
    tbe_i64: CudaFunction,
    bias_act: CudaFunction,
    concat_parts: CudaFunction,
    dcn_cross_epilogue: CudaFunction,
    dot_interaction: CudaFunction,
}

impl CudaKernels {
    /// The kernels loaded into `ctx`: compiled once per process (a cubin for the device, PTX as
    /// the fallback: [`load_modules`]) and loaded once per context (later calls for the same context return the same modules while any
    /// caller still holds them).
    pub fn load(ctx: &Arc<CudaContext>) -> Result<Arc<Self>, CudaError> {
        static LOADED: OnceLock<Mutex<HashMap<usize, Weak<CudaKernels>>>> = OnceLock::new();
        let loaded = LOADED.get_or_init(|| Mutex::new(HashMap::new()));
        let key = ctx.cu_ctx() as usize;
        let mut map = loaded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = map.get(&key).and_then(Weak::upgrade) {
            return Ok(k);
        }
        super::nvrtc_available().map_err(CudaError::Unavailable)?;
        let loaded = load_modules(ctx)?;
        let arch = loaded.arch;
        let mut modules = Vec::with_capacity(SOURCES.len());
        let mut funcs: HashMap<&'static str, CudaFunction> = HashMap::new();
        for (src, module) in SOURCES.iter().zip(loaded.modules) {
            for &name in src.functions {
                funcs.insert(name, module.load_function(name)?);
            }
            modules.push(module);
        }
        let mut take = |name: &str| {
            funcs
                .remove(name)
                .ok_or_else(|| CudaError::Invalid(format!("kernel {name} is not in any source")))
        };
        let k = Arc::new(Self {
            ctx: ctx.clone(),
            arch,
            embedding_bag_i32: take("embedding_bag_i32")?,
            embedding_bag_i64: take("embedding_bag_i64")?,
            tbe_i32: take("tbe_i32")?,
            tbe_i64: take("tbe_i64")?,
            bias_act: take("bias_act")?,
            concat_parts: take("concat_parts")?,
            dcn_cross_epilogue: take("dcn_cross_epilogue")?,
            dot_interaction: take("dot_interaction")?,
            _modules: modules,
        });
        map.retain(|_, w| w.strong_count() > 0);
        map.insert(key, Arc::downgrade(&k));
        Ok(k)
    }

    /// The context the modules live in.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The architecture the modules were compiled for: `sm_90` (cubin) or, after a fallback,
    /// `compute_90` (PTX).
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// Enqueues a pooled lookup of one table for `a.batch` samples.
    ///
    /// # Safety
    ///
    /// `a.table` is a live device allocation of `rows * dim` f32 (16-byte aligned when `a.vec`);
    /// `a.packet` is a live input packet of this context, staged with `a.slots` slots whose
    /// offsets and indices are in range (every index of slot `a.slot` is `< rows`) and of type
    /// `a.index`; `a.out` addresses `a.batch` rows of `a.dim` writable f32 with leading dimension
    /// `a.out_ld >= a.dim`, not read by any concurrent work. All of it stays alive until the
    /// stream has run the launch.
    pub unsafe fn embedding_bag(
        &self,
        stream: &CudaStream,
        a: &EmbeddingBagArgs,
    ) -> Result<(), CudaError> {
        if a.batch == 0 || a.dim == 0 {
            return Ok(());
        }
        if a.vec && !a.dim.is_multiple_of(4) {
            return Err(CudaError::Invalid(format!(
                "float4 lookups need dim % 4 == 0, got {}",
                a.dim
            )));
        }
        let threads = a.batch * lanes(a.dim, a.vec);
        let cfg = LaunchConfig {
            grid_dim: (blocks(threads)?, 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let dim = int("dim", a.dim)?;
        let vec = i32::from(a.vec);
        let slots = int("slots", a.slots)?;
        let slot = int("slot", a.slot)?;
        let batch = int("batch", a.batch)?;
        let mean = i32::from(a.mean);
        let out_ld = int("out_ld", a.out_ld)?;
        let f = match a.index {
            IndexWidth::I32 => &self.embedding_bag_i32,
            IndexWidth::I64 => &self.embedding_bag_i64,
        };
        let mut b = stream.launch_builder(f);
        // Argument order and types of embedding_bag_{i32,i64}: (const float* table, int dim,
        // int vec, const int* packet, int slots, int slot, int batch, int mean, float* out,
        // int out_ld).
        b.arg(&a.table)
            .arg(&dim)
            .arg(&vec)
            .arg(&a.packet)
            .arg(&slots)
            .arg(&slot)
            .arg(&batch)
            .arg(&mean)
            .arg(&a.out)
            .arg(&out_ld);
        // SAFETY: the arguments match the kernel signature above (u64 for each pointer, i32 for
        // each int); the grid covers batch * lanes threads and the kernel returns for threads
        // past it; the caller guarantees the table, packet and output extents (see # Safety).
        unsafe { b.launch(cfg) }?;
        Ok(())
    }

    /// Enqueues the pooled lookups of every table of `a.meta` in one launch.
    ///
    /// # Safety
    ///
    /// `a.meta` is a live device array from [`tbe_meta`] with `a.tables` entries whose tables
    /// satisfy [`CudaKernels::embedding_bag`]'s conditions and whose largest [`lanes`] is
    /// `a.max_lanes`; `a.packet` is a live input packet with `a.slots` slots and in-range
    /// indices of type `a.index`; `a.out` addresses `a.batch` writable rows with leading
    /// dimension `a.out_ld` covering every table's `out_col + dim` columns.
    pub unsafe fn tbe(&self, stream: &CudaStream, a: &TbeArgs) -> Result<(), CudaError> {
        if a.batch == 0 || a.tables == 0 || a.max_lanes == 0 {
            return Ok(());
        }
        let tables = u32::try_from(a.tables)
            .ok()
            .filter(|&t| t <= 65_535)
            .ok_or_else(|| {
                CudaError::Invalid(format!("{} tables exceed the grid's y limit", a.tables))
            })?;
        let cfg = LaunchConfig {
            grid_dim: (blocks(a.batch * a.max_lanes)?, tables, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let slots = int("slots", a.slots)?;
        let batch = int("batch", a.batch)?;
        let out_ld = int("out_ld", a.out_ld)?;
        let f = match a.index {
            IndexWidth::I32 => &self.tbe_i32,
            IndexWidth::I64 => &self.tbe_i64,
        };
        let mut b = stream.launch_builder(f);
        // Argument order and types of tbe_{i32,i64}: (const int* meta, const int* packet,
        // int slots, int batch, float* out, int out_ld).
        b.arg(&a.meta)
            .arg(&a.packet)
            .arg(&slots)
            .arg(&batch)
            .arg(&a.out)
            .arg(&out_ld);
        // SAFETY: the arguments match the kernel signature above; blockIdx.y < tables indexes
        // the metadata; threads past a table's batch * lanes return; the caller guarantees the
        // metadata, packet and output extents (see # Safety).
        unsafe { b.launch(cfg) }?;
        Ok(())
    }

    /// Enqueues `y = act(y + bias)` over `rows x cols` (the GEMM epilogue of a linear layer).
    ///
    /// # Safety
    ///
    /// `y` addresses `rows` rows of `cols` writable f32 with leading dimension `ld >= cols`;
    /// `bias`, when given, addresses `cols` f32.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn bias_act(
        &self,
        stream: &CudaStream,
        y: DevPtr,
        ld: usize,
        bias: Option<DevPtr>,
        rows: usize,
        cols: usize,
        act: Activation,
    ) -> Result<(), CudaError> {
        if rows == 0 || cols == 0 || (bias.is_none() && act == Activation::None) {
            return Ok(());
        }
        let cfg = LaunchConfig {
            grid_dim: (blocks(rows * cols)?, 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let ld = int("ld", ld)?;
        let bias: DevPtr = bias.unwrap_or(0);
        let r = int("rows", rows)?;
        let c = int("cols", cols)?;
        let act = match act {
            Activation::None => 0i32,
            Activation::Relu => 1,
            Activation::Sigmoid => 2,
        };
        let mut b = stream.launch_builder(&self.bias_act);
        // Argument order and types of bias_act: (float* y, int ld, const float* bias, int rows,
        // int cols, int act).
        b.arg(&y).arg(&ld).arg(&bias).arg(&r).arg(&c).arg(&act);
        // SAFETY: the arguments match the kernel signature above; the grid covers rows * cols
        // threads and the kernel returns past it; a null bias is skipped by the kernel; the
        // caller guarantees the extents (see # Safety).
        unsafe { b.launch(cfg) }?;
        Ok(())
    }

    /// Enqueues the copies of `parts` column slices into `out` in one launch.
    ///
    /// # Safety
    ///
    /// `meta` is a live device array from [`concat_meta`] with `parts` entries, each source
    /// addressing `rows` rows of its `width` columns; the widest part has `max_width` columns;
    /// `out` addresses `rows` writable rows with leading dimension `out_ld` covering every
    /// part's `out_col + width` columns.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn concat(
        &self,
        stream: &CudaStream,
        meta: DevPtr,
        parts: usize,
        max_width: usize,
        out: DevPtr,
        out_ld: usize,
        rows: usize,
    ) -> Result<(), CudaError> {
        if rows == 0 || parts == 0 || max_width == 0 {
            return Ok(());
        }
        let parts = u32::try_from(parts)
            .ok()
            .filter(|&p| p <= 65_535)
            .ok_or_else(|| {
                CudaError::Invalid(format!("{parts} concat parts exceed the grid's y limit"))
            })?;
        let cfg = LaunchConfig {
            grid_dim: (blocks(rows * max_width)?, parts, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let out_ld = int("out_ld", out_ld)?;
        let r = int("rows", rows)?;
        let mut b = stream.launch_builder(&self.concat_parts);
        // Argument order and types of concat_parts: (const int* meta, float* out, int out_ld,
        // int rows).
        b.arg(&meta).arg(&out).arg(&out_ld).arg(&r);
        // SAFETY: the arguments match the kernel signature above; blockIdx.y < parts indexes the
        // metadata and threads past a part's rows * width return; the caller guarantees the
        // extents (see # Safety).
        unsafe { b.launch(cfg) }?;
        Ok(())
    }

    /// Enqueues the DCNv2 epilogue `out = x0 * (out + bias) + xl` over `rows x cols`.
    ///
    /// # Safety
    ///
    /// `out`, `x0` and `xl` address `rows` rows of `cols` f32 with their leading dimensions
    /// (each `>= cols`), `out` writable and overlapping neither input; `bias` addresses `cols`
    /// f32.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn dcn_epilogue(
        &self,
        stream: &CudaStream,
        out: DevPtr,
        out_ld: usize,
        x0: (DevPtr, usize),
        xl: (DevPtr, usize),
        bias: DevPtr,
        rows: usize,
        cols: usize,
    ) -> Result<(), CudaError> {
        if rows == 0 || cols == 0 {
            return Ok(());
        }
        let cfg = LaunchConfig {
            grid_dim: (blocks(rows * cols)?, 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let out_ld = int("out_ld", out_ld)?;
        let x0_ld = int("x0_ld", x0.1)?;
        let xl_ld = int("xl_ld", xl.1)?;
        let r = int("rows", rows)?;
        let c = int("cols", cols)?;
        let mut b = stream.launch_builder(&self.dcn_cross_epilogue);
        // Argument order and types of dcn_cross_epilogue: (float* out, int out_ld,
        // const float* x0, int x0_ld, const float* xl, int xl_ld, const float* bias, int rows,
        // int cols).
        b.arg(&out)
            .arg(&out_ld)
            .arg(&x0.0)
            .arg(&x0_ld)
            .arg(&xl.0)
            .arg(&xl_ld)
            .arg(&bias)
            .arg(&r)
            .arg(&c);
        // SAFETY: the arguments match the kernel signature above; the grid covers rows * cols
        // threads and the kernel returns past it; the caller guarantees the extents (see
        // # Safety).
        unsafe { b.launch(cfg) }?;
        Ok(())
    }

    /// Enqueues the DLRM dot interaction of `n` inputs of width `d` for `rows` samples.
    ///
    /// # Safety
    ///
    /// `meta` is a live device array from [`dot_meta`] with `n` entries, each addressing `rows`
    /// rows of `d` f32; `out` addresses `rows` writable rows of `d + n (n - 1) / 2` f32 with
    /// leading dimension `out_ld`, overlapping no input.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn dot_interaction(
        &self,
        stream: &CudaStream,
        meta: DevPtr,
        n: usize,
        d: usize,
        out: DevPtr,
        out_ld: usize,
        rows: usize,
    ) -> Result<(), CudaError> {
        if rows == 0 || n == 0 {
            return Ok(());
        }
        let shared = n * d * std::mem::size_of::<f32>();
        if shared > MAX_SHARED {
            return Err(CudaError::Invalid(format!(
                "dot interaction of {n} inputs of width {d} needs {shared} bytes of shared memory, more than {MAX_SHARED}"
            )));
        }
        let cfg = LaunchConfig {
            grid_dim: (
                u32::try_from(rows)
                    .ok()
                    .filter(|&r| r <= i32::MAX as u32)
                    .ok_or_else(|| CudaError::Invalid(format!("{rows} rows exceed the grid")))?,
                1,
                1,
            ),
            block_dim: (DOT_BLOCK, 1, 1),
            shared_mem_bytes: shared as u32,
        };
        let n = int("n", n)?;
        let d = int("d", d)?;
        let out_ld = int("out_ld", out_ld)?;
        let mut b = stream.launch_builder(&self.dot_interaction);
        // Argument order and types of dot_interaction: (const int* meta, int n, int d,
        // float* out, int out_ld).
        b.arg(&meta).arg(&n).arg(&d).arg(&out).arg(&out_ld);
        // SAFETY: the arguments match the kernel signature above; one block per row < rows;
        // the dynamic shared memory holds the n * d floats the kernel stages; the caller
        // guarantees the extents (see # Safety).
        unsafe { b.launch(cfg) }?;
        Ok(())
    }
}
