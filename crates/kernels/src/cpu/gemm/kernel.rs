//! The micro-kernel: the vector operations it needs ([`Simd`]), one register tile of the
//! product over one `k` block ([`kernel`], dispatched on its shape by [`tile_dispatch`]), and
//! the portable path's operations ([`Portable`]).

use super::pack::{PANEL, ROW};

/// The vector operations a micro-kernel needs.
pub(super) trait Simd {
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

/// A piece of a `k` block inside one part of the input: `kc` columns from `a` (at the input's
/// first row), rows `lda` apart.
#[derive(Clone, Copy)]
pub(super) struct Seg {
    pub(super) a: *const f32,
    pub(super) lda: usize,
    pub(super) kc: usize,
}

/// One tile's inputs: `kc` steps of `rows` rows of `x` against `np` panels.
pub(super) struct Tile {
    /// The block's pieces of `x` (at the input's first row), in `k` order.
    pub(super) segs: *const Seg,
    pub(super) nsegs: usize,
    /// The tile's first row in the input.
    pub(super) i0: usize,
    /// The first panel at the first k of the block.
    pub(super) b: *const f32,
    /// Floats from the first panel to each panel of the tile.
    pub(super) poff: [usize; 16],
    /// The bias of the tile's first column, on the last k block.
    pub(super) bias: Option<*const f32>,
    pub(super) relu: bool,
    /// The first k block: start from zero instead of the partial sums in the output.
    pub(super) first: bool,
}

/// Runs the tile of `rows` rows and `nv` vectors, writing its first `cols` columns at `c`.
///
/// # Safety
///
/// As `driver::driver`; `1 <= rows <= S::MR` (or `<= 2` with a wider `nv`), `nv` one of `S::NV`,
/// `S::NV1`, `S::NV2` or a smaller multiple of `PANEL / S::W`.
#[inline(always)]
pub(super) unsafe fn tile_dispatch<S: Simd>(
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
pub(super) struct Portable;

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
