//! Prepacked linear layers: `out = act(x · Wᵀ + bias)` with the weight packed once into column
//! panels, AVX-512 / AVX2+FMA micro-kernels chosen at run time and a portable fallback.
//!
//! # Layout
//!
//! [`PackedLinear`] stores `Wᵀ` (`k x n`) as `ceil(n / 16)` panels of 16 output columns; panel
//! `j` holds, for `p = 0..k`, the 16 weights `W[16 j .. 16 j + 16][p]` in one 64-byte aligned row
//! (missing columns of the last panel are zero). The panels are stored in groups of four
//! (`GROUP`), interleaved row by row: row `p` of a group is its four panels' rows in 256
//! consecutive bytes, so the tile of four panels that a kernel reads at each `p` is one
//! contiguous stream (a batch-1 GEMV reads the weights exactly once, front to back) and a block
//! of it spreads evenly over the cache sets, where four separate panels `k` rows apart would
//! start at the same set whenever `k` is a multiple of 64.
//!
//! # Determinism
//!
//! Every output element is computed the same way on every path (GEMV, skinny or large GEMM,
//! any tile, tail, thread split, batch position and ISA): for each block of up to 1024
//! consecutive `k` (`KB`), in order, one f32 accumulator starts at zero and takes a fused
//! multiply-add for each `p` of the block in order; the block sums are added to a running total
//! in order; then `+ bias`, then the activation. Work is split only by output rows and columns,
//! never along `k`, so the result is bit-identical however it is split, and on every ISA path.
//!
//! The input may be given as the column concatenation of several matrices
//! ([`linear_packed_cat_par`]), which spares a concat its copy. The blocks are those of the
//! whole input whatever its parts (a block runs on from one part into the next), so an input
//! given in parts gives the same bits as given whole.

use std::sync::OnceLock;

use super::par::{Parallel, ScopedThreads};
use crate::types::{Activation, MatMut, MatRef};

/// Output columns per packed panel.
pub const PANEL: usize = 16;

/// One 64-byte aligned panel row: 16 weights, or 16 bias values.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, align(64))]
struct Row16([f32; PANEL]);

/// An instruction-set path of the packed kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// AVX-512F micro-kernels (16 lanes).
    Avx512,
    /// AVX2 + FMA micro-kernels (8 lanes).
    Avx2,
    /// Portable Rust (`f32::mul_add`), for every other machine.
    Portable,
}

impl Isa {
    /// The fastest path this machine supports, detected once per process.
    ///
    /// `STREAMREC_CPU_ISA=avx512|avx2|portable` picks a slower supported path instead (for
    /// measurements); an unsupported or unknown value is ignored.
    pub fn detect() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            let wanted = std::env::var("STREAMREC_CPU_ISA")
                .ok()
                .and_then(|v| match v.trim() {
                    "avx512" => Some(Isa::Avx512),
                    "avx2" => Some(Isa::Avx2),
                    "portable" => Some(Isa::Portable),
                    _ => None,
                });
            match wanted {
                Some(isa) if isa.is_supported() => isa,
                _ => Isa::supported()[0],
            }
        })
    }

    /// Whether this machine can run the path.
    pub fn is_supported(self) -> bool {
        match self {
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            Isa::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            Isa::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            Isa::Portable => true,
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// Every path this machine supports, fastest first.
    pub fn supported() -> Vec<Isa> {
        [Isa::Avx512, Isa::Avx2, Isa::Portable]
            .into_iter()
            .filter(|i| i.is_supported())
            .collect()
    }
}

/// A linear layer's weight (and bias) packed once into the panel layout the kernels stream.
#[derive(Clone, Debug)]
pub struct PackedLinear {
    k: usize,
    n: usize,
    /// `panels() * k` rows: panel `j`, reduction index `p` is row `j * k + p`.
    panels: Box<[Row16]>,
    /// The bias, zero-padded to `panels() * 16` (zeros without a bias).
    bias: Box<[Row16]>,
}

impl PackedLinear {
    /// Packs `weight` (`[n, k]` row-major, the PyTorch `nn.Linear` layout) and `bias` (`n`
    /// elements, or none).
    ///
    /// # Panics
    ///
    /// Panics if `weight.len() != n * k` or the bias length is not `n`.
    pub fn new(weight: &[f32], n: usize, k: usize, bias: Option<&[f32]>) -> Self {
        assert_eq!(
            Some(weight.len()),
            n.checked_mul(k),
            "PackedLinear: weight must be [out_features, in_features]"
        );
        if let Some(b) = bias {
            assert_eq!(
                b.len(),
                n,
                "PackedLinear: bias must have out_features elements"
            );
        }
        let np = n.div_ceil(PANEL);
        let mut panels = vec![Row16::default(); np.div_ceil(GROUP) * GROUP * k].into_boxed_slice();
        for j in 0..np {
            let at = panel_at(k, j) / PANEL;
            for c in 0..PANEL.min(n - j * PANEL) {
                let w_row = &weight[(j * PANEL + c) * k..][..k];
                for (p, &w) in w_row.iter().enumerate() {
                    panels[at + p * GROUP].0[c] = w;
                }
            }
        }
        let mut padded = vec![Row16::default(); np].into_boxed_slice();
        if let Some(b) = bias {
            for (i, &v) in b.iter().enumerate() {
                padded[i / PANEL].0[i % PANEL] = v;
            }
        }
        Self {
            k,
            n,
            panels,
            bias: padded,
        }
    }

    /// `in_features` (the reduction length `k`).
    pub fn in_features(&self) -> usize {
        self.k
    }

    /// `out_features` (`n`).
    pub fn out_features(&self) -> usize {
        self.n
    }

    /// The number of 16-column panels.
    pub fn panels(&self) -> usize {
        self.n.div_ceil(PANEL)
    }

    /// Bytes of packed weights a call streams.
    pub fn weight_bytes(&self) -> usize {
        self.panels.len() * std::mem::size_of::<Row16>()
    }
}

/// Panels per group: a group's panels are interleaved row by row, so one `k` row of a group is
/// `GROUP` consecutive 64-byte lines (`ROW` floats). Four is the AVX-512 tile's width (measured
/// against eight, which the tile read half of at a time: slower at every batch).
const GROUP: usize = 4;
/// Floats between consecutive rows of a panel.
const ROW: usize = GROUP * PANEL;

/// Where panel `j`'s first row starts (floats) in the packed weights of a `k`-row layer.
#[inline(always)]
fn panel_at(k: usize, j: usize) -> usize {
    ((j / GROUP) * k * GROUP + j % GROUP) * PANEL
}

/// `out = act(x · Wᵀ + bias)` with prepacked weights, on this machine's fastest path
/// ([`Isa::detect`]).
///
/// # Panics
///
/// Panics if `x.cols != w.in_features()`, `out.cols != w.out_features()` or
/// `out.rows != x.rows`.
pub fn linear_packed(x: MatRef<'_>, w: &PackedLinear, act: Activation, out: MatMut<'_>) {
    linear_packed_parallel(x, w, act, out, 1);
}

/// The path a call of `rows` rows takes on this machine: [`Isa::detect`], except that a
/// batch-1 GEMV takes the AVX2 kernel on AVX-512 machines (it streams the weights faster, measured
/// on a Xeon; every path gives the same bits). With AVX-512VL, the AVX2 kernels of one or two
/// rows use its 32 registers for tiles of two panel groups: two streams of the weights, which
/// kept the batch-1 GEMV of the grouped layout as fast as the separate panels before it.
fn isa_for(rows: usize) -> Isa {
    match Isa::detect() {
        Isa::Avx512 if rows == 1 && Isa::Avx2.is_supported() => Isa::Avx2,
        isa => isa,
    }
}

/// [`linear_packed`] split over `threads` OS threads by output panels (each thread computes
/// whole 16-column panels, the batch-1 GEMV included). Bit-identical to [`linear_packed`] for
/// any thread count.
///
/// # Panics
///
/// Panics under the conditions of [`linear_packed`].
pub fn linear_packed_parallel(
    x: MatRef<'_>,
    w: &PackedLinear,
    act: Activation,
    out: MatMut<'_>,
    threads: usize,
) {
    linear_packed_isa(isa_for(x.rows), x, w, act, out, threads);
}

/// [`linear_packed`] with its output panels split into tiles that `par` runs (an engine's
/// worker pool: idle workers take tiles). Bit-identical to [`linear_packed`] for any runner.
///
/// # Panics
///
/// Panics under the conditions of [`linear_packed`].
pub fn linear_packed_par(
    x: MatRef<'_>,
    w: &PackedLinear,
    act: Activation,
    out: MatMut<'_>,
    par: &dyn Parallel,
) {
    linear_packed_on(isa_for(x.rows), &[x], w, act, out, par);
}

/// [`linear_packed_par`] on the column concatenation of `xs` (every part with the batch's
/// rows, their widths adding up to `in_features`), read in place: no concatenated copy is made.
/// Bit-identical to [`linear_packed_par`] on the concatenated input.
///
/// # Panics
///
/// Panics if `xs` is empty, the parts' rows differ from `out.rows`, their widths do not add up
/// to `w.in_features()`, or `out.cols != w.out_features()`.
pub fn linear_packed_cat_par(
    xs: &[MatRef<'_>],
    w: &PackedLinear,
    act: Activation,
    out: MatMut<'_>,
    par: &dyn Parallel,
) {
    assert!(!xs.is_empty(), "linear_packed: no input");
    linear_packed_on(isa_for(xs[0].rows), xs, w, act, out, par);
}

/// [`linear_packed_parallel`] on an explicit ISA path (for tests and benchmarks).
///
/// # Panics
///
/// Panics under the conditions of [`linear_packed`], or if the machine does not support `isa`.
pub fn linear_packed_isa(
    isa: Isa,
    x: MatRef<'_>,
    w: &PackedLinear,
    act: Activation,
    out: MatMut<'_>,
    threads: usize,
) {
    linear_packed_on(isa, &[x], w, act, out, &ScopedThreads(threads));
}

/// Tiles per thread of the runner: more than one, so that a worker that arrives late (or is
/// busy elsewhere) leaves its share to the others.
const TILES_PER_THREAD: usize = 2;

fn linear_packed_on(
    isa: Isa,
    xs: &[MatRef<'_>],
    w: &PackedLinear,
    act: Activation,
    out: MatMut<'_>,
    par: &dyn Parallel,
) {
    assert!(
        isa.is_supported(),
        "linear_packed: {isa:?} is not supported here"
    );
    let (m, n) = (out.rows, w.n);
    let cols = xs.iter().try_fold(0usize, |acc, x| acc.checked_add(x.cols));
    assert_eq!(
        cols,
        Some(w.k),
        "linear_packed: x cols must equal in_features"
    );
    assert!(
        xs.iter().all(|x| x.rows == m),
        "linear_packed: out rows must equal x rows"
    );
    assert_eq!(
        out.cols, n,
        "linear_packed: out cols must equal out_features"
    );
    if m == 0 || n == 0 {
        return;
    }
    let blocks = Blocks::new(xs, w.k);
    let job = Job {
        isa,
        m,
        k: w.k,
        n,
        blocks: &blocks,
        row0: 0,
        b: w.panels.as_ptr().cast(),
        bias: w.bias.as_ptr().cast(),
        relu: act == Activation::Relu,
        c: SendPtr(out.data.as_mut_ptr()),
        ldc: out.ld,
    };
    let np = w.panels();
    let width = par.width();
    // A large batch splits by rows: every tile keeps whole-width register tiles and its rows
    // of `x` in cache, and reads the weights from the cache the other tiles share (measured
    // faster than a panel split at batch 1024 on streamrec-26). A small batch, bound by
    // streaming the weights, splits by panels, so the weights are streamed once in all; so does
    // a mid-sized batch against weights too large to share from cache (streamrec-26 at batch
    // 128 on 2 threads: the 14 MB `top.0` 4.89 -> 4.35 ms, the 4 MB `top.1` 1.47 -> 1.40 ms,
    // while the smaller layers stay faster split by rows).
    let by_rows =
        m >= ROW_SPLIT_MIN && (m >= ROW_SPLIT_ALWAYS || w.weight_bytes() < PANEL_SPLIT_MIN_BYTES);
    if width > 1 && by_rows {
        let tiles = (width * TILES_PER_THREAD).min(m / 8);
        let job = &job;
        par.for_each(tiles, &|t| {
            let (r0, r1) = (m * t / tiles, m * (t + 1) / tiles);
            let rows = Job {
                m: r1 - r0,
                row0: r0,
                // SAFETY: `r0 < m`, inside `out` (checked above).
                c: SendPtr(unsafe { job.c.0.add(r0 * job.ldc) }),
                ..*job
            };
            // SAFETY: the views were checked above (see `run_panel_tiles`); each tile reads and
            // writes only its own rows, the ranges are disjoint, and `for_each` returns only
            // when every tile is done.
            unsafe { rows.run(0, np) };
        });
    } else {
        let tiles = if width <= 1 {
            1
        } else {
            (width * TILES_PER_THREAD).min(np)
        };
        run_panel_tiles(&job, np, tiles, par);
    }
    if act == Activation::Sigmoid {
        let mut out = out;
        for row in out.row_iter_mut() {
            super::dense::sigmoid_inplace(row);
        }
    }
}

/// Batches of at least this many rows split by rows ...
const ROW_SPLIT_MIN: usize = 64;
/// ... unless the weights take at least this many bytes and the batch is under
/// `ROW_SPLIT_ALWAYS` rows.
const PANEL_SPLIT_MIN_BYTES: usize = 4 << 20;
const ROW_SPLIT_ALWAYS: usize = 256;

/// Runs `job` over `np` panels in `tiles` contiguous, balanced panel ranges.
fn run_panel_tiles(job: &Job, np: usize, tiles: usize, par: &dyn Parallel) {
    let range = |t: usize| (np * t / tiles, np * (t + 1) / tiles);
    if tiles == 1 {
        // SAFETY: `linear_packed_on` checked the views: `x` holds `m` rows of `k` at stride
        // `lda`, `out` holds `m` rows of `n` at stride `ldc` and is borrowed mutably for the
        // call, and the panels and bias hold `np` panels of `k` rows and `np` rows.
        unsafe { job.run(0, np) };
    } else {
        par.for_each(tiles, &|t| {
            let (p0, p1) = range(t);
            // SAFETY: as above; each tile writes only the output columns of its own panels,
            // the ranges are disjoint, and `for_each` returns only when every tile is done.
            unsafe { job.run(p0, p1) };
        });
    }
}

/// A raw output pointer handed to the threads of one call (they write disjoint columns).
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);

// SAFETY: the pointer is only dereferenced inside `Job::run`, whose callers give each thread a
// disjoint set of output columns of a buffer that outlives the scoped threads.
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}

/// One call's operands as raw pointers.
#[derive(Clone, Copy)]
struct Job {
    isa: Isa,
    /// Rows of this job (from row `row0` of the input).
    m: usize,
    k: usize,
    n: usize,
    /// The input's `k` blocks.
    blocks: *const Blocks,
    /// The job's first row in the input (a row tile of a split call).
    row0: usize,
    b: *const f32,
    bias: *const f32,
    relu: bool,
    c: SendPtr,
    ldc: usize,
}

// SAFETY: the input pointers are only read, and they point into borrows that outlive the call.
unsafe impl Sync for Job {}

impl Job {
    /// Computes the output columns of panels `[p0, p1)`.
    ///
    /// # Safety
    ///
    /// The operands must be as `linear_packed_isa` checked them (the blocks alive for the
    /// call), the ISA supported, and no other thread may touch the output columns of these
    /// panels.
    unsafe fn run(&self, p0: usize, p1: usize) {
        if p0 >= p1 {
            return;
        }
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the caller checked that the machine supports AVX-512F.
            Isa::Avx512 => unsafe { x86::run_avx512(self, p0, p1) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the caller checked that the machine supports AVX2 and FMA.
            Isa::Avx2 if self.m <= 2 && std::arch::is_x86_feature_detected!("avx512vl") => unsafe {
                x86::run_avx2_wide(self, p0, p1)
            },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the caller checked that the machine supports AVX2 and FMA.
            Isa::Avx2 => unsafe { x86::run_avx2(self, p0, p1) },
            // SAFETY: the caller's contract.
            _ => unsafe { driver::<Portable>(self, p0, p1) },
        }
    }
}

/// The vector operations a micro-kernel needs.
trait Simd {
    /// One vector of `W` lanes.
    type V: Copy;
    /// Lanes per vector.
    const W: usize;
    /// Rows of the GEMM tile, and vectors per tile row (a multiple of `PANEL / W`).
    const MR: usize;
    const NV: usize;
    /// Vectors per tile row of the one- and two-row tiles (more accumulators hide the FMA
    /// latency when the tile has few rows).
    const NV1: usize;
    const NV2: usize;

    unsafe fn zero() -> Self::V;
    unsafe fn splat(p: *const f32) -> Self::V;
    unsafe fn load(p: *const f32) -> Self::V;
    unsafe fn store(p: *mut f32, v: Self::V);
    /// `a * b + c`, rounded once.
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    /// `x > 0 ? x : 0` (NaN and -0 give +0).
    unsafe fn relu(a: Self::V) -> Self::V;
    /// A hint to fetch the cache line at `p` (any address: it is never dereferenced).
    unsafe fn prefetch(p: *const f32);
    /// A hint to fetch the cache line at `p` for writing (any address).
    unsafe fn prefetch_w(p: *const f32);

    /// [`tile_dispatch`] compiled for this ISA as a function of its own: the micro-kernel's
    /// registers are then allocated for it alone, not for the loop nest around it.
    ///
    /// # Safety
    ///
    /// As [`tile_dispatch`].
    unsafe fn tile(t: &Tile, rows: usize, nv: usize, c: *mut f32, ldc: usize, cols: usize);
}

/// How far ahead of the panel row in use the kernels prefetch (floats: 16 rows of a panel).
const PREFETCH: usize = 16 * ROW;

/// The reduction runs in blocks of this many `k`: each block sums into a fresh accumulator that
/// is then added to the running total (kept in the output between blocks). That is the fixed
/// summation order of every element. A block of a panel group (256 KiB) stays in L2 while every
/// row tile of the row block uses it, and each block is one more pass over the output: on
/// streamrec-26 (2 threads) 1024 measured faster than 128 to 512 (`top.0` at batch 1024 34.4
/// -> 31.6 ms against 128; the whole input in one block, 4096, was slower again, 39 ms).
const KB: usize = 1024;
/// Rows of the batch per block of a large GEMM (their `KB` columns of `x` stay in L2).
const MC: usize = 128;
/// A job whose block of weights (all its panels, one `k` block) takes at most this many bytes
/// runs row tile by row tile across every panel, rather than panel group by group: the block
/// stays in L2 either way, and each tile's rows of `x` are then read from L1 once and its
/// output rows written whole (measured on streamrec-26's 26 branch layers at batch 1024 on one
/// thread, writing into the 3456-column concat buffer: 11.2-11.7 -> 10.0 ms with the output
/// prefetch of [`kernel`]; into their own buffers 9.6 -> 9.4 ms).
const ROWS_FIRST_MAX_BYTES: usize = 256 << 10;

/// The blocked loop nest over output panels `[p0, p1)`.
///
/// # Safety
///
/// As [`Job::run`], and `S` must be supported by the machine.
#[inline(always)]
unsafe fn driver<S: Simd>(job: &Job, p0: usize, p1: usize) {
    let m = job.m;
    let vpp = PANEL / S::W;
    // Tile width in vectors: wider for one- and two-row calls.
    let nv = match m {
        1 => S::NV1,
        2 => S::NV2,
        _ => S::NV,
    };
    let mr = if m <= 2 { m } else { S::MR };
    let group = nv / vpp;
    // SAFETY: the caller's contract: the blocks outlive the job.
    let blocks = unsafe { &*job.blocks };
    if m <= mr {
        // One row block (GEMV and the smallest batches): nothing reuses a panel, so each panel
        // group is streamed front to back.
        let mut jp = p0;
        while jp < p1 {
            let np = group.min(p1 - jp);
            for blk in blocks.iter() {
                tile_at::<S>(job, 0, m, jp, np, &blk);
            }
            jp += np;
        }
        return;
    }
    // Small weights: each row tile across every panel (`ROWS_FIRST_MAX_BYTES`).
    let rows_first = (p1 - p0) * PANEL * KB.min(job.k) * 4 <= ROWS_FIRST_MAX_BYTES;
    // The panel groups of the job (first panel, panels) and the row tiles of a row block of
    // `mc` rows (first row, rows).
    let groups = || {
        (p0..p1)
            .step_by(group)
            .map(move |jp| (jp, group.min(p1 - jp)))
    };
    let tiles = |mc: usize| (0..mc).step_by(mr).map(move |ir| (ir, mr.min(mc - ir)));
    let mut ic = 0;
    while ic < m {
        let mc = MC.min(m - ic);
        for blk in blocks.iter() {
            if rows_first {
                for (ir, rows) in tiles(mc) {
                    for (jp, np) in groups() {
                        tile_at::<S>(job, ic + ir, rows, jp, np, &blk);
                    }
                }
            } else {
                for (jp, np) in groups() {
                    for (ir, rows) in tiles(mc) {
                        tile_at::<S>(job, ic + ir, rows, jp, np, &blk);
                    }
                }
            }
        }
        ic += mc;
    }
}

/// A piece of a `k` block inside one part of the input: `kc` columns from `a` (at the input's
/// first row), rows `lda` apart.
#[derive(Clone, Copy)]
struct Seg {
    a: *const f32,
    lda: usize,
    kc: usize,
}

/// One `k` block of a job: columns `[k0, k0 + kc)` of the input, as its pieces in the parts.
#[derive(Clone, Copy)]
struct Block<'s> {
    k0: usize,
    kc: usize,
    segs: &'s [Seg],
}

/// A job's `k` blocks: `KB` columns each but the last, over the whole input whatever its parts
/// (a 0-column input has one empty block, so the bias and activation are still written).
struct Blocks {
    /// Per block: first column, columns, and its pieces' range in `segs`.
    blocks: Vec<(usize, usize, usize, usize)>,
    segs: Vec<Seg>,
}

impl Blocks {
    /// The blocks of the column concatenation of `xs` (`k` columns in all).
    fn new(xs: &[MatRef<'_>], k: usize) -> Blocks {
        let mut out = Blocks {
            blocks: Vec::with_capacity(k.div_ceil(KB).max(1)),
            segs: Vec::new(),
        };
        let mut k0 = 0;
        loop {
            let k1 = (k0 + KB).min(k);
            let s0 = out.segs.len();
            // Each part's overlap with the block (empty parts have none).
            let mut p0 = 0;
            for x in xs {
                let (lo, hi) = (k0.max(p0), k1.min(p0 + x.cols));
                if lo < hi {
                    out.segs.push(Seg {
                        a: x.data[lo - p0..].as_ptr(),
                        lda: x.ld,
                        kc: hi - lo,
                    });
                }
                p0 += x.cols;
            }
            out.blocks.push((k0, k1 - k0, s0, out.segs.len()));
            k0 = k1;
            if k0 >= k {
                return out;
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = Block<'_>> + '_ {
        self.blocks.iter().map(|&(k0, kc, s0, s1)| Block {
            k0,
            kc,
            segs: &self.segs[s0..s1],
        })
    }
}

/// One tile of [`driver`]: `rows` rows from `i0`, panels `[jp, jp + np)`, the `k` block `blk`.
///
/// # Safety
///
/// As [`driver`], with the tile inside the batch, the caller's panel range and `k`.
#[inline(always)]
unsafe fn tile_at<S: Simd>(job: &Job, i0: usize, rows: usize, jp: usize, np: usize, blk: &Block) {
    let k = job.k;
    let (k0, kc) = (blk.k0, blk.kc);
    let last = k0 + kc == k;
    let t = Tile {
        segs: blk.segs.as_ptr(),
        nsegs: blk.segs.len(),
        i0: job.row0 + i0,
        b: job.b.add(panel_at(k, jp) + k0 * ROW),
        poff: std::array::from_fn(|i| panel_at(k, jp + i).wrapping_sub(panel_at(k, jp))),
        bias: if last {
            Some(job.bias.add(jp * PANEL))
        } else {
            None
        },
        relu: last && job.relu,
        first: k0 == 0,
    };
    let cols = (np * PANEL).min(job.n - jp * PANEL);
    let c = job.c.0.add(i0 * job.ldc + jp * PANEL);
    // SAFETY: the caller's contract; `rows`, `np` and `cols` stay inside the batch, the panel
    // range and the output width.
    unsafe { S::tile(&t, rows, np * (PANEL / S::W), c, job.ldc, cols) };
}

/// One tile's inputs: `kc` steps of `rows` rows of `x` against `np` panels.
struct Tile {
    /// The block's pieces of `x` (at the input's first row), in `k` order.
    segs: *const Seg,
    nsegs: usize,
    /// The tile's first row in the input.
    i0: usize,
    /// The first panel at the first k of the block.
    b: *const f32,
    /// Floats from the first panel to each panel of the tile.
    poff: [usize; 16],
    /// The bias of the tile's first column, on the last k block.
    bias: Option<*const f32>,
    relu: bool,
    /// The first k block: start from zero instead of the partial sums in the output.
    first: bool,
}

/// Runs the tile of `rows` rows and `nv` vectors, writing its first `cols` columns at `c`.
///
/// # Safety
///
/// As [`driver`]; `1 <= rows <= S::MR` (or `<= 2` with a wider `nv`), `nv` one of `S::NV`,
/// `S::NV1`, `S::NV2` or a smaller multiple of `PANEL / S::W`.
#[inline(always)]
unsafe fn tile_dispatch<S: Simd>(
    t: &Tile,
    rows: usize,
    nv: usize,
    c: *mut f32,
    ldc: usize,
    cols: usize,
) {
    macro_rules! go {
        ($cp:expr, $cld:expr) => {{
            let (cp, cld) = ($cp, $cld);
            if rows <= 2 {
                macro_rules! small {
                    ($nv:expr) => {
                        match rows {
                            1 => kernel::<S, 1, { $nv }>(t, cp, cld),
                            _ => kernel::<S, 2, { $nv }>(t, cp, cld),
                        }
                    };
                }
                match nv {
                    1 => small!(1),
                    2 => small!(2),
                    3 => small!(3),
                    4 => small!(4),
                    5 => small!(5),
                    6 => small!(6),
                    7 => small!(7),
                    8 => small!(8),
                    9 => small!(9),
                    10 => small!(10),
                    11 => small!(11),
                    12 => small!(12),
                    13 => small!(13),
                    14 => small!(14),
                    15 => small!(15),
                    16 => small!(16),
                    _ => unreachable!("tile of {nv} vectors"),
                }
            } else {
                macro_rules! big {
                    ($nv:expr) => {
                        match rows {
                            3 => kernel::<S, 3, { $nv }>(t, cp, cld),
                            4 => kernel::<S, 4, { $nv }>(t, cp, cld),
                            5 => kernel::<S, 5, { $nv }>(t, cp, cld),
                            6 => kernel::<S, 6, { $nv }>(t, cp, cld),
                            7 => kernel::<S, 7, { $nv }>(t, cp, cld),
                            8 => kernel::<S, 8, { $nv }>(t, cp, cld),
                            _ => unreachable!("tile of {rows} rows"),
                        }
                    };
                }
                match nv {
                    1 => big!(1),
                    2 => big!(2),
                    3 => big!(3),
                    4 => big!(4),
                    _ => unreachable!("tile of {nv} vectors"),
                }
            }
        }};
    }
    let width = nv * S::W;
    if cols == width {
        go!(c, ldc);
    } else {
        // A partial tile goes through a local buffer: the kernel always writes whole vectors.
        let mut buf = [0.0f32; 8 * 64];
        debug_assert!(rows * width <= buf.len());
        if !t.first {
            for r in 0..rows {
                std::ptr::copy_nonoverlapping(
                    c.add(r * ldc),
                    buf.as_mut_ptr().add(r * width),
                    cols,
                );
            }
        }
        go!(buf.as_mut_ptr(), width);
        for r in 0..rows {
            std::ptr::copy_nonoverlapping(buf.as_ptr().add(r * width), c.add(r * ldc), cols);
        }
    }
}

/// The micro-kernel: an `R x NV`-vector tile of accumulators, one FMA per (row, vector, k),
/// from zero; then the earlier blocks' total from the output, then the epilogue.
///
/// # Safety
///
/// `t.a` readable for `R` rows of `t.kc` at stride `t.lda`; the panels readable for `t.kc`
/// rows; `c` readable (unless `t.first`) and writable for `R` rows of `NV * S::W` at `ldc`.
#[inline(always)]
unsafe fn kernel<S: Simd, const R: usize, const NV: usize>(t: &Tile, c: *mut f32, ldc: usize) {
    let vpp = PANEL / S::W;
    let mut acc = [[S::zero(); NV]; R];
    // Offsets of each vector of a panel row from the first panel.
    let mut off = [0usize; NV];
    for (v, o) in off.iter_mut().enumerate() {
        *o = t.poff[v / vpp] + (v % vpp) * S::W;
    }
    // Fetch the tile's output rows for writing now, so that the stores at the end do not wait
    // on memory: rows far apart (a column slice of a wide buffer, or rows of 4 KiB) defeat the
    // hardware prefetchers (the branch layers above; `top.0` to `top.3` of streamrec-26 gained
    // 1-3% as well).
    for r in 0..R {
        let mut l = 0;
        while l < NV * S::W {
            S::prefetch_w(c.add(r * ldc + l));
            l += 16;
        }
    }
    let mut b = t.b;
    for si in 0..t.nsegs {
        // The panels run on across the pieces: their rows are the block's `k` in order.
        let seg = *t.segs.add(si);
        let lda = seg.lda;
        let mut a = seg.a.wrapping_add(t.i0 * lda);
        for _ in 0..seg.kc {
            // Every row tile fetches the panel rows ahead: the first of a row block streams them
            // from memory, the others from L2 (a block of a group, 256 KiB, outgrows L1);
            // measured 1.5-2.5% faster on `top.0` than the first tile alone.
            for &o in off.iter().step_by(vpp) {
                S::prefetch(b.wrapping_add(o + PREFETCH));
            }
            let mut bv = [S::zero(); NV];
            for v in 0..NV {
                bv[v] = S::load(b.add(off[v]));
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let av = S::splat(a.add(r * lda));
                for v in 0..NV {
                    row[v] = S::fma(av, bv[v], row[v]);
                }
            }
            a = a.add(1);
            b = b.add(ROW);
        }
    }
    if !t.first {
        // The running total of the earlier blocks, plus this block.
        for (r, row) in acc.iter_mut().enumerate() {
            for (v, a) in row.iter_mut().enumerate() {
                *a = S::add(S::load(c.add(r * ldc + v * S::W)), *a);
            }
        }
    }
    if let Some(bias) = t.bias {
        for row in acc.iter_mut() {
            for (v, a) in row.iter_mut().enumerate() {
                *a = S::add(*a, S::load(bias.add((v / vpp) * PANEL + (v % vpp) * S::W)));
            }
        }
    }
    if t.relu {
        for row in acc.iter_mut() {
            for a in row.iter_mut() {
                *a = S::relu(*a);
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (v, a) in row.iter().enumerate() {
            S::store(c.add(r * ldc + v * S::W), *a);
        }
    }
}

/// The portable path: four-lane arrays, `f32::mul_add` (so its results are bit-identical to
/// the FMA paths).
struct Portable;

impl Simd for Portable {
    type V = [f32; 4];
    const W: usize = 4;
    const MR: usize = 4;
    const NV: usize = 4;
    const NV1: usize = 8;
    const NV2: usize = 8;

    #[inline(always)]
    unsafe fn zero() -> Self::V {
        [0.0; 4]
    }
    #[inline(always)]
    unsafe fn splat(p: *const f32) -> Self::V {
        [*p; 4]
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self::V {
        std::ptr::read_unaligned(p.cast())
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self::V) {
        std::ptr::write_unaligned(p.cast(), v)
    }
    #[inline(always)]
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V {
        std::array::from_fn(|i| a[i].mul_add(b[i], c[i]))
    }
    #[inline(always)]
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V {
        std::array::from_fn(|i| a[i] + b[i])
    }
    #[inline(always)]
    unsafe fn relu(a: Self::V) -> Self::V {
        a.map(|x| if x > 0.0 { x } else { 0.0 })
    }
    #[inline(always)]
    unsafe fn prefetch(_p: *const f32) {}
    #[inline(always)]
    unsafe fn prefetch_w(_p: *const f32) {}
    #[inline(never)]
    unsafe fn tile(t: &Tile, rows: usize, nv: usize, c: *mut f32, ldc: usize, cols: usize) {
        // SAFETY: the caller's contract.
        unsafe { tile_dispatch::<Self>(t, rows, nv, c, ldc, cols) }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The x86-64 paths: the generic loop nest instantiated inside `#[target_feature]` entry
    //! points, so the intrinsics inline into AVX-512 or AVX2 code.

    use std::arch::x86_64::*;

    use super::{driver, tile_dispatch, Job, Simd, Tile};

    pub(super) struct Avx512;

    impl Simd for Avx512 {
        type V = __m512;
        const W: usize = 16;
        const MR: usize = 6;
        const NV: usize = 4;
        const NV1: usize = 8;
        // Batch 2 streams the weights like a GEMV: 4, 8 and 12 vectors measured alike within
        // the noise (one thread, `top.0`/`top.1`/branch/`bottom.0` shapes of streamrec-26).
        const NV2: usize = 8;

        #[inline(always)]
        unsafe fn zero() -> __m512 {
            _mm512_setzero_ps()
        }
        #[inline(always)]
        unsafe fn splat(p: *const f32) -> __m512 {
            _mm512_set1_ps(*p)
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m512 {
            _mm512_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m512) {
            _mm512_storeu_ps(p, v)
        }
        #[inline(always)]
        unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
            _mm512_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn add(a: __m512, b: __m512) -> __m512 {
            _mm512_add_ps(a, b)
        }
        #[inline(always)]
        unsafe fn relu(a: __m512) -> __m512 {
            // MAXPS returns its second operand when either is NaN or both are zero.
            _mm512_max_ps(a, _mm512_setzero_ps())
        }
        #[inline(always)]
        unsafe fn prefetch(p: *const f32) {
            _mm_prefetch::<_MM_HINT_T0>(p.cast());
        }
        #[inline(always)]
        unsafe fn prefetch_w(p: *const f32) {
            _mm_prefetch::<_MM_HINT_ET0>(p.cast());
        }
        unsafe fn tile(t: &Tile, rows: usize, nv: usize, c: *mut f32, ldc: usize, cols: usize) {
            // SAFETY: the caller's contract; Self is only used on machines with these features.
            unsafe { tile_avx512(t, rows, nv, c, ldc, cols) }
        }
    }

    /// The 256-bit operations of [`Avx2`] and [`Avx2Wide`].
    macro_rules! avx2_ops {
        () => {
            #[inline(always)]
            unsafe fn zero() -> __m256 {
                _mm256_setzero_ps()
            }
            #[inline(always)]
            unsafe fn splat(p: *const f32) -> __m256 {
                _mm256_broadcast_ss(&*p)
            }
            #[inline(always)]
            unsafe fn load(p: *const f32) -> __m256 {
                _mm256_loadu_ps(p)
            }
            #[inline(always)]
            unsafe fn store(p: *mut f32, v: __m256) {
                _mm256_storeu_ps(p, v)
            }
            #[inline(always)]
            unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
                _mm256_fmadd_ps(a, b, c)
            }
            #[inline(always)]
            unsafe fn add(a: __m256, b: __m256) -> __m256 {
                _mm256_add_ps(a, b)
            }
            #[inline(always)]
            unsafe fn relu(a: __m256) -> __m256 {
                // MAXPS returns its second operand when either is NaN or both are zero.
                _mm256_max_ps(a, _mm256_setzero_ps())
            }
            #[inline(always)]
            unsafe fn prefetch(p: *const f32) {
                _mm_prefetch::<_MM_HINT_T0>(p.cast());
            }
            #[inline(always)]
            unsafe fn prefetch_w(p: *const f32) {
                _mm_prefetch::<_MM_HINT_ET0>(p.cast());
            }
        };
    }

    pub(super) struct Avx2;

    impl Simd for Avx2 {
        type V = __m256;
        const W: usize = 8;
        const MR: usize = 6;
        const NV: usize = 2;
        const NV1: usize = 8;
        const NV2: usize = 4;

        avx2_ops!();
        unsafe fn tile(t: &Tile, rows: usize, nv: usize, c: *mut f32, ldc: usize, cols: usize) {
            // SAFETY: the caller's contract; Self is only used on machines with these features.
            unsafe { tile_avx2(t, rows, nv, c, ldc, cols) }
        }
    }

    /// # Safety
    ///
    /// As `Job::run`, on a machine with AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn run_avx512(job: &Job, p0: usize, p1: usize) {
        // SAFETY: the caller's contract.
        unsafe { driver::<Avx512>(job, p0, p1) }
    }

    /// AVX2's 256-bit operations with AVX-512VL's 32 registers: a GEMV tile of two panel
    /// groups (two streams of the weights) at AVX2's clock.
    pub(super) struct Avx2Wide;

    impl Simd for Avx2Wide {
        type V = __m256;
        const W: usize = 8;
        const MR: usize = 6;
        const NV: usize = 2;
        const NV1: usize = 16;
        const NV2: usize = 8;

        avx2_ops!();
        unsafe fn tile(t: &Tile, rows: usize, nv: usize, c: *mut f32, ldc: usize, cols: usize) {
            // SAFETY: the caller's contract; Self is only used on machines with these features.
            unsafe { tile_avx2_wide(t, rows, nv, c, ldc, cols) }
        }
    }

    /// # Safety
    ///
    /// As `Job::run`, on a machine with AVX2, FMA and AVX-512VL.
    #[target_feature(enable = "avx2,fma,avx512f,avx512vl")]
    pub(super) unsafe fn run_avx2_wide(job: &Job, p0: usize, p1: usize) {
        // SAFETY: the caller's contract.
        unsafe { driver::<Avx2Wide>(job, p0, p1) }
    }

    /// # Safety
    ///
    /// As `tile_dispatch`, on a machine with AVX2, FMA and AVX-512VL.
    #[target_feature(enable = "avx2,fma,avx512f,avx512vl")]
    #[inline(never)]
    unsafe fn tile_avx2_wide(
        t: &Tile,
        rows: usize,
        nv: usize,
        c: *mut f32,
        ldc: usize,
        cols: usize,
    ) {
        // SAFETY: the caller's contract.
        unsafe { tile_dispatch::<Avx2Wide>(t, rows, nv, c, ldc, cols) }
    }

    /// # Safety
    ///
    /// As `Job::run`, on a machine with AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn run_avx2(job: &Job, p0: usize, p1: usize) {
        // SAFETY: the caller's contract.
        unsafe { driver::<Avx2>(job, p0, p1) }
    }

    /// # Safety
    ///
    /// As `tile_dispatch`, on a machine with AVX-512F.
    #[target_feature(enable = "avx512f")]
    #[inline(never)]
    unsafe fn tile_avx512(t: &Tile, rows: usize, nv: usize, c: *mut f32, ldc: usize, cols: usize) {
        // SAFETY: the caller's contract.
        unsafe { tile_dispatch::<Avx512>(t, rows, nv, c, ldc, cols) }
    }

    /// # Safety
    ///
    /// As `tile_dispatch`, on a machine with AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    #[inline(never)]
    unsafe fn tile_avx2(t: &Tile, rows: usize, nv: usize, c: *mut f32, ldc: usize, cols: usize) {
        // SAFETY: the caller's contract.
        unsafe { tile_dispatch::<Avx2>(t, rows, nv, c, ldc, cols) }
    }
}

#[cfg(test)]
mod tests {
    //! Every supported ISA path, forced explicitly, against an f64 reference on odd shapes.

    use super::*;

    /// xorshift values in [-1, 1).
    fn fill(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    fn reference(
        x: &[f32],
        ldx: usize,
        w: &[f32],
        b: Option<&[f32]>,
        act: Activation,
        (m, k, n): (usize, usize, usize),
    ) -> Vec<(f64, f64)> {
        let mut out = vec![(0.0f64, 0.0f64); m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = b.map_or(0.0, |b| f64::from(b[j]));
                let mut mag = s.abs();
                for p in 0..k {
                    let t = f64::from(x[i * ldx + p]) * f64::from(w[j * k + p]);
                    s += t;
                    mag += t.abs();
                }
                let v = match act {
                    Activation::None => s,
                    Activation::Relu => s.max(0.0),
                    Activation::Sigmoid => 1.0 / (1.0 + (-s).exp()),
                };
                out[i * n + j] = (v, mag);
            }
        }
        out
    }

    /// Runs `isa` on `m x k x n` (x strided, out a column slice of a NaN buffer) and checks
    /// every element against the reference, the untouched columns, and returns the output.
    fn check(
        isa: Isa,
        (m, k, n): (usize, usize, usize),
        act: Activation,
        threads: usize,
    ) -> Vec<f32> {
        let seed = (m * 1_000_003 + k * 1009 + n) as u64;
        let ldx = k + 3;
        let x = fill(m * ldx, seed);
        let w = fill(n * k, seed + 1);
        let b = fill(n, seed + 2);
        let packed = PackedLinear::new(&w, n, k, Some(&b));
        let want = reference(&x, ldx, &w, Some(&b), act, (m, k, n));
        let ldo = n + 5;
        let mut buf = vec![f32::NAN; m * ldo];
        let out = MatMut::new(&mut buf, m, ldo, ldo).col_slice(2, n);
        linear_packed_isa(isa, MatRef::new(&x, m, k, ldx), &packed, act, out, threads);
        let mut got = Vec::with_capacity(m * n);
        for i in 0..m {
            for j in 0..ldo {
                let v = buf[i * ldo + j];
                if (2..2 + n).contains(&j) {
                    let (r, mag) = want[i * n + j - 2];
                    // Relative to the magnitude of the terms summed (f32 rounding of a sum
                    // scales with it); a wrong panel, tail or row is off by about `mag`.
                    let tol = 1e-6 * (1.0 + mag);
                    assert!(
                        (f64::from(v) - r).abs() <= tol,
                        "{isa:?} {m}x{k}x{n} {act:?} t={threads}: ({i}, {}) = {v}, want {r}",
                        j - 2
                    );
                    got.push(v);
                } else {
                    assert!(
                        v.is_nan(),
                        "{isa:?} {m}x{k}x{n}: column {j} outside was written"
                    );
                }
            }
        }
        got
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn every_isa_matches_the_f64_reference_on_odd_shapes() {
        let isas = Isa::supported();
        println!("supported: {isas:?}");
        let mut shapes = vec![];
        for m in [1, 2, 3, 5, 7, 8, 9, 13, 16, 17, 33, 64, 70] {
            for &(k, n) in &[(1, 1), (7, 1), (33, 17), (300, 47), (16, 32), (0, 5)] {
                shapes.push((m, k, n));
            }
        }
        // Several k blocks, several row blocks of a large GEMM, and a multi-panel tail.
        shapes.extend([
            (1, 2100, 100),
            (2, 1520, 70),
            (130, 1100, 49),
            (70, 257, 129),
            // Row tiles run across every panel when a block's weights are small, else panel
            // group by group: both orders, over several row blocks.
            (140, 300, 200),
            (140, 300, 250),
        ]);
        for &shape in &shapes {
            for act in [Activation::None, Activation::Relu, Activation::Sigmoid] {
                let mut first: Option<Vec<u32>> = None;
                for &isa in &isas {
                    for threads in [1, 2, 3] {
                        let got = bits(&check(isa, shape, act, threads));
                        // Bit-identical across ISA paths and thread counts.
                        match &first {
                            None => first = Some(got),
                            Some(f) => assert!(
                                *f == got,
                                "{isa:?} {shape:?} {act:?} t={threads} differs from the first path"
                            ),
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_row_is_the_same_at_every_batch_size_and_position() {
        let (k, n) = (300, 45);
        let w = fill(n * k, 5);
        let b = fill(n, 6);
        let packed = PackedLinear::new(&w, n, k, Some(&b));
        let x = fill(70 * k, 7);
        for isa in Isa::supported() {
            let mut alone = vec![0.0f32; 70 * n];
            for i in 0..70 {
                let out = MatMut::contiguous(&mut alone[i * n..(i + 1) * n], 1, n);
                linear_packed_isa(
                    isa,
                    MatRef::contiguous(&x[i * k..(i + 1) * k], 1, k),
                    &packed,
                    Activation::Relu,
                    out,
                    1,
                );
            }
            for m in [2, 3, 9, 16, 64, 70] {
                let mut out = vec![0.0f32; m * n];
                linear_packed_isa(
                    isa,
                    MatRef::contiguous(&x[..m * k], m, k),
                    &packed,
                    Activation::Relu,
                    MatMut::contiguous(&mut out, m, n),
                    1,
                );
                assert_eq!(bits(&out), bits(&alone[..m * n]), "{isa:?} batch {m}");
            }
        }
    }

    /// `xs` given in parts of these widths (each in its own buffer, rows `width + 3` apart),
    /// on every ISA and thread count: the f64 reference on the whole input, bit-identical
    /// across paths, and bit-identical to the whole input given at once.
    fn check_parts(m: usize, widths: &[usize], n: usize) {
        let k: usize = widths.iter().sum();
        let seed = (m * 7919 + k * 31 + n) as u64;
        let x = fill(m * k, seed);
        let w = fill(n * k, seed + 1);
        let b = fill(n, seed + 2);
        let packed = PackedLinear::new(&w, n, k, Some(&b));
        let want = reference(&x, k, &w, Some(&b), Activation::Relu, (m, k, n));
        let mut bufs = Vec::new();
        let mut c0 = 0;
        for &wd in widths {
            let ld = wd + 3;
            let mut buf = vec![f32::NAN; m * ld];
            for r in 0..m {
                buf[r * ld..r * ld + wd].copy_from_slice(&x[r * k + c0..r * k + c0 + wd]);
            }
            bufs.push((buf, wd, ld));
            c0 += wd;
        }
        let parts: Vec<MatRef<'_>> = bufs
            .iter()
            .map(|(buf, wd, ld)| MatRef::new(buf, m, *wd, *ld))
            .collect();
        let mut first: Option<Vec<u32>> = None;
        for isa in Isa::supported() {
            for threads in [1, 2, 3] {
                let mut out = vec![0.0f32; m * n];
                let par = ScopedThreads(threads);
                let o = MatMut::contiguous(&mut out, m, n);
                linear_packed_on(isa, &parts, &packed, Activation::Relu, o, &par);
                for (i, (&v, &(r, mag))) in out.iter().zip(&want).enumerate() {
                    assert!(
                        (f64::from(v) - r).abs() <= 1e-6 * (1.0 + mag),
                        "{isa:?} m={m} {widths:?} t={threads}: element {i} = {v}, want {r}"
                    );
                }
                let mut whole = vec![0.0f32; m * n];
                let o = MatMut::contiguous(&mut whole, m, n);
                let xm = MatRef::contiguous(&x, m, k);
                linear_packed_on(isa, &[xm], &packed, Activation::Relu, o, &par);
                assert_eq!(bits(&out), bits(&whole), "{isa:?} m={m} {widths:?}");
                match &first {
                    None => first = Some(bits(&out)),
                    Some(f) => assert!(*f == bits(&out), "{isa:?} m={m} {widths:?} t={threads}"),
                }
            }
        }
    }

    #[test]
    fn an_input_in_parts_is_read_in_place() {
        for m in [1, 2, 7, 70, 130] {
            check_parts(m, &[128, 128, 44], 37);
            // Ragged and empty parts, and more than four of them.
            check_parts(m, &[5, 0, 300, 1, 77, 9], 33);
            // No columns at all: the bias through the activation.
            check_parts(m, &[0, 0], 20);
            // Blocks that run on from one part into the next, and a part over two blocks.
            check_parts(m, &[128; 9], 40);
            check_parts(m, &[700, 500, 3, 1100], 21);
        }
    }

    #[test]
    fn large_weights_give_the_same_bits_split_by_panels_or_rows() {
        // Over 4 MiB of weights: 70 rows split by panels, 256 by rows.
        let (k, n) = (1024, 1040);
        let w = fill(n * k, 21);
        let b = fill(n, 22);
        let packed = PackedLinear::new(&w, n, k, Some(&b));
        assert!(packed.weight_bytes() >= PANEL_SPLIT_MIN_BYTES);
        let x = fill(256 * k, 23);
        for isa in Isa::supported() {
            for m in [70, 256] {
                let run = |threads| {
                    let mut out = vec![0.0f32; m * n];
                    let o = MatMut::contiguous(&mut out, m, n);
                    let xm = MatRef::contiguous(&x[..m * k], m, k);
                    linear_packed_isa(isa, xm, &packed, Activation::Relu, o, threads);
                    bits(&out)
                };
                let one = run(1);
                for threads in [2, 3] {
                    assert!(one == run(threads), "{isa:?} m={m} t={threads}");
                }
            }
        }
    }

    #[test]
    fn without_bias_and_with_relu_of_negative_zero() {
        let w = [1.0f32, -1.0, 0.0, 0.0];
        let packed = PackedLinear::new(&w, 2, 2, None);
        for isa in Isa::supported() {
            let x = [f32::NAN, 0.0, 0.5, 0.5];
            let mut out = [7.0f32; 4];
            linear_packed_isa(
                isa,
                MatRef::contiguous(&x, 2, 2),
                &packed,
                Activation::Relu,
                MatMut::contiguous(&mut out, 2, 2),
                1,
            );
            // NaN and zeros give +0 through ReLU.
            assert_eq!(bits(&out), bits(&[0.0, 0.0, 0.0, 0.0]), "{isa:?}");
        }
    }
}
