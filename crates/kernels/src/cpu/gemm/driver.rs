//! The blocked loop nest of one call: a [`Job`] (the operands as raw pointers), its `k`
//! blocks over the input's parts ([`Blocks`]), and the [`driver`] that walks row blocks, panel
//! groups and `k` blocks, entered once per ISA inside `#[target_feature]` functions.

use super::isa::Isa;
use super::kernel::{Portable, Seg, Simd, Tile};
use super::pack::{panel_at, PANEL, ROW};
#[cfg(target_arch = "x86_64")]
use super::x86::{Avx2, Avx2Wide, Avx512};
use crate::types::MatRef;

/// A raw output pointer handed to the threads of one call (they write disjoint columns).
#[derive(Clone, Copy)]
pub(super) struct SendPtr(pub(super) *mut f32);

// SAFETY: the pointer is only dereferenced inside `Job::run`, whose callers give each thread a
// disjoint set of output columns of a buffer that outlives the scoped threads.
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}

/// One call's operands as raw pointers.
#[derive(Clone, Copy)]
pub(super) struct Job {
    pub(super) isa: Isa,
    /// Rows of this job (from row `row0` of the input).
    pub(super) m: usize,
    pub(super) k: usize,
    pub(super) n: usize,
    /// The input's `k` blocks.
    pub(super) blocks: *const Blocks,
    /// The job's first row in the input (a row tile of a split call).
    pub(super) row0: usize,
    pub(super) b: *const f32,
    pub(super) bias: *const f32,
    pub(super) relu: bool,
    pub(super) c: SendPtr,
    pub(super) ldc: usize,
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
    pub(super) unsafe fn run(&self, p0: usize, p1: usize) {
        if p0 >= p1 {
            return;
        }
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the caller checked that the machine supports AVX-512F.
            Isa::Avx512 => unsafe { run_avx512(self, p0, p1) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the caller checked that the machine supports AVX2 and FMA.
            Isa::Avx2 if self.m <= 2 && std::arch::is_x86_feature_detected!("avx512vl") => unsafe {
                run_avx2_wide(self, p0, p1)
            },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the caller checked that the machine supports AVX2 and FMA.
            Isa::Avx2 => unsafe { run_avx2(self, p0, p1) },
            // SAFETY: the caller's contract.
            _ => unsafe { driver::<Portable>(self, p0, p1) },
        }
    }
}

/// # Safety
///
/// As `Job::run`, on a machine with AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn run_avx512(job: &Job, p0: usize, p1: usize) {
    // SAFETY: the caller's contract.
    unsafe { driver::<Avx512>(job, p0, p1) }
}

/// # Safety
///
/// As `Job::run`, on a machine with AVX2, FMA and AVX-512VL.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,avx512f,avx512vl")]
unsafe fn run_avx2_wide(job: &Job, p0: usize, p1: usize) {
    // SAFETY: the caller's contract.
    unsafe { driver::<Avx2Wide>(job, p0, p1) }
}

/// # Safety
///
/// As `Job::run`, on a machine with AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2(job: &Job, p0: usize, p1: usize) {
    // SAFETY: the caller's contract.
    unsafe { driver::<Avx2>(job, p0, p1) }
}

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
/// prefetch of the micro-kernel); into their own buffers 9.6 -> 9.4 ms).
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

/// One `k` block of a job: columns `[k0, k0 + kc)` of the input, as its pieces in the parts.
#[derive(Clone, Copy)]
struct Block<'s> {
    k0: usize,
    kc: usize,
    segs: &'s [Seg],
}

/// A job's `k` blocks: `KB` columns each but the last, over the whole input whatever its parts
/// (a 0-column input has one empty block, so the bias and activation are still written).
pub(super) struct Blocks {
    /// Per block: first column, columns, and its pieces' range in `segs`.
    blocks: Vec<(usize, usize, usize, usize)>,
    segs: Vec<Seg>,
}

impl Blocks {
    /// The blocks of the column concatenation of `xs` (`k` columns in all).
    pub(super) fn new(xs: &[MatRef<'_>], k: usize) -> Blocks {
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
