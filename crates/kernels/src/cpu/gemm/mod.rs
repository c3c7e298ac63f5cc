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
//!
//! # Modules
//!
//! `isa` names the paths ([`Isa`]) and detects the fastest; `pack` packs the weights
//! ([`PackedLinear`]); this module checks a call and splits it into tiles; `driver` runs the
//! blocked loop nest of a tile; `kernel` holds the micro-kernel and the portable path's
//! operations, `x86` the AVX-512 and AVX2 ones.

mod driver;
mod isa;
mod kernel;
mod pack;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use isa::{Isa, IsaError};
pub use pack::{PackedLinear, PANEL};

use super::par::{Parallel, ScopedThreads};
use crate::types::{Activation, MatMut, MatRef};
use driver::{Blocks, Job, SendPtr};

/// `out = act(x · Wᵀ + bias)` with prepacked weights, on the weights' path
/// ([`PackedLinear::isa`]: this machine's fastest, [`Isa::detect`], unless chosen with
/// [`PackedLinear::with_isa`]).
///
/// # Panics
///
/// Panics if `x.cols != w.in_features()`, `out.cols != w.out_features()` or
/// `out.rows != x.rows`.
pub fn linear_packed(x: MatRef<'_>, w: &PackedLinear, act: Activation, out: MatMut<'_>) {
    linear_packed_parallel(x, w, act, out, 1);
}

/// The path a call of `rows` rows takes with weights packed for `isa`: `isa`, except that a
/// batch-1 GEMV takes the AVX2 kernel on AVX-512 machines (it streams the weights faster, measured
/// on a Xeon; every path gives the same bits). With AVX-512VL, the AVX2 kernels of one or two
/// rows use its 32 registers for tiles of two panel groups: two streams of the weights, which
/// kept the batch-1 GEMV of the grouped layout as fast as the separate panels before it.
fn isa_for(isa: Isa, rows: usize) -> Isa {
    match isa {
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
    linear_packed_isa(isa_for(w.isa(), x.rows), x, w, act, out, threads);
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
    linear_packed_on(isa_for(w.isa(), x.rows), &[x], w, act, out, par);
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
    linear_packed_on(isa_for(w.isa(), xs[0].rows), xs, w, act, out, par);
}

/// [`linear_packed_parallel`] on an explicit ISA path, whatever the weights' own (for tests and
/// benchmarks).
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

/// Every entry point's body: checks the views, then splits the call into tiles by rows or by
/// panels and runs them on `par`.
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
