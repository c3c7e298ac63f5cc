//! Dense kernels: GEMM through `matrixmultiply`, fused linear layers, concatenation and
//! element-wise activations.

use super::par::{row_tiles, Parallel};
use crate::types::{Activation, MatMut, MatRef};

/// The largest offset `(rows - 1) * rs + (cols - 1) * cs` of a non-empty strided matrix.
fn last_offset(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    (rows - 1)
        .checked_mul(rs)
        .and_then(|a| (cols - 1).checked_mul(cs).and_then(|b| a.checked_add(b)))
        .expect("gemm: matrix extent overflows usize")
}

/// A strided operand of [`gemm`]: element (i, j) is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Operand<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

/// `C = A B` where A is `m x k`, B is `k x n` and C is `m x n` with row stride `ldc` and unit
/// column stride. Only the `m x n` region of C is written; C is not read.
///
/// # Panics
///
/// Panics if an operand's slice does not hold its strided extent, or if `ldc < n` when `m > 1`.
pub(crate) fn gemm(
    m: usize,
    k: usize,
    n: usize,
    a: Operand<'_>,
    b: Operand<'_>,
    c: &mut [f32],
    ldc: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(m == 1 || ldc >= n, "gemm: ldc {ldc} is smaller than n {n}");
    assert!(
        last_offset(m, n, ldc, 1) < c.len(),
        "gemm: C slice too short"
    );
    if k > 0 {
        assert!(
            last_offset(m, k, a.rs, a.cs) < a.data.len(),
            "gemm: A slice too short"
        );
        assert!(
            last_offset(k, n, b.rs, b.cs) < b.data.len(),
            "gemm: B slice too short"
        );
    }
    let stride = |s: usize| isize::try_from(s).expect("gemm: stride overflows isize");
    // SAFETY: `matrixmultiply::sgemm` reads A at offsets `i * rsa + p * csa` (i < m, p < k) and B
    // at `p * rsb + j * csb` (p < k, j < n), and writes C at `i * rsc + j` (i < m, j < n). The
    // assertions above check that the largest such offset of each matrix is inside its slice
    // (all strides are non-negative, so every smaller offset is too, and no offset overflows),
    // with A and B not dereferenced at all when k == 0. C's elements do not alias each other
    // (unit column stride and `ldc >= n` whenever there is more than one row), and C is a unique
    // `&mut` borrow, so it aliases neither A nor B. With beta = 0, C is never read.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.data.as_ptr(),
            stride(a.rs),
            stride(a.cs),
            b.data.as_ptr(),
            stride(b.rs),
            stride(b.cs),
            0.0,
            c.as_mut_ptr(),
            stride(ldc),
            1,
        );
    }
}

/// Dot product with eight independent accumulators, so LLVM can vectorise the reduction.
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; 8];
    let (ac, ar) = (a.chunks_exact(8), a.chunks_exact(8).remainder());
    let bc = b.chunks_exact(8);
    let br = bc.remainder();
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut tail = 0.0f32;
    for (x, y) in ar.iter().zip(br) {
        tail += x * y;
    }
    let s = (acc[0] + acc[4]) + (acc[1] + acc[5]) + (acc[2] + acc[6]) + (acc[3] + acc[7]);
    s + tail
}

/// Numerically stable logistic function: `exp` is only taken of non-positive values, so it never
/// overflows, and tiny results keep their relative precision.
#[inline(always)]
fn sigmoid_scalar(x: f32) -> f32 {
    let e = (-x.abs()).exp();
    let r = 1.0 / (1.0 + e);
    if x >= 0.0 {
        r
    } else {
        e * r
    }
}

/// `act(y)` as every epilogue applies it: ReLU as `y > 0 ? y : 0` (NaN and -0 give +0).
#[inline(always)]
pub(crate) fn epilogue(y: f32, act: Activation) -> f32 {
    match act {
        Activation::None => y,
        Activation::Relu if y > 0.0 => y,
        Activation::Relu => 0.0,
        Activation::Sigmoid => sigmoid_scalar(y),
    }
}

/// Applies `act` to every element of `row`, after adding `bias` (same length) if given.
#[inline(always)]
fn bias_act_row(row: &mut [f32], bias: Option<&[f32]>, act: Activation) {
    match (bias, act) {
        (None, Activation::None) => {}
        (None, Activation::Relu) => relu_inplace(row),
        (None, Activation::Sigmoid) => sigmoid_inplace(row),
        (Some(b), Activation::None) => row.iter_mut().zip(b).for_each(|(o, &b)| *o += b),
        (Some(b), Activation::Relu) => row
            .iter_mut()
            .zip(b)
            .for_each(|(o, &b)| *o = (*o + b).max(0.0)),
        (Some(b), Activation::Sigmoid) => row
            .iter_mut()
            .zip(b)
            .for_each(|(o, &b)| *o = sigmoid_scalar(*o + b)),
    }
}

/// Up to this many rows, [`linear`] uses dot products instead of the GEMM.
const GEMV_MAX_ROWS: usize = 1;

/// Fully connected layer: `out = act(x · Wᵀ + bias)`.
///
/// `x` is `[B, in_features]`, `weight` is `[out_features, in_features]` row-major (the PyTorch
/// `nn.Linear` layout), `bias` has `out_features` elements and `out` is `[B, out_features]`.
///
/// # Panics
///
/// Panics if `out.rows != x.rows`, `weight.len() != out.cols * x.cols`, or the bias length is not
/// `out.cols`.
pub fn linear(
    x: MatRef<'_>,
    weight: &[f32],
    bias: Option<&[f32]>,
    act: Activation,
    mut out: MatMut<'_>,
) {
    let (m, k, n) = (x.rows, x.cols, out.cols);
    assert_eq!(out.rows, m, "linear: out rows must equal x rows");
    assert_eq!(
        weight.len(),
        n * k,
        "linear: weight must be [out_features, in_features]"
    );
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "linear: bias must have out_features elements");
    }
    if m <= GEMV_MAX_ROWS {
        // One row: a contiguous dot product per weight row streams W once, without the packing
        // copy the GEMM makes of it (about twice as fast at batch 1).
        for (xr, out_row) in x.row_iter().zip(out.row_iter_mut()) {
            if k == 0 {
                out_row.fill(0.0);
                continue;
            }
            for (o, w_row) in out_row.iter_mut().zip(weight.chunks_exact(k)) {
                *o = dot(xr, w_row);
            }
        }
    } else {
        // Wᵀ is `k x n`: element (p, j) is `weight[j * k + p]`.
        gemm(
            m,
            k,
            n,
            Operand {
                data: x.data,
                rs: x.ld,
                cs: 1,
            },
            Operand {
                data: weight,
                rs: 1,
                cs: k,
            },
            out.data,
            out.ld,
        );
    }
    if bias.is_some() || act != Activation::None {
        for row in out.row_iter_mut() {
            bias_act_row(row, bias, act);
        }
    }
}

/// Column-wise concatenation: row `r` of `out` is row `r` of every input, in order.
///
/// # Panics
///
/// Panics if an input does not have `out.rows` rows or the input widths do not sum to `out.cols`.
pub fn concat(inputs: &[MatRef<'_>], mut out: MatMut<'_>) {
    for (i, input) in inputs.iter().enumerate() {
        assert_eq!(
            input.rows, out.rows,
            "concat: input {i} has a wrong row count"
        );
    }
    let total: usize = inputs.iter().map(|m| m.cols).sum();
    assert_eq!(total, out.cols, "concat: input widths must sum to out cols");
    for (r, out_row) in out.row_iter_mut().enumerate() {
        let mut rest = out_row;
        for input in inputs {
            let (seg, tail) = rest.split_at_mut(input.cols);
            rest = tail;
            seg.copy_from_slice(input.row(r));
        }
    }
}

/// Element-wise logistic function, `out = 1 / (1 + exp(-x))`, stable for any input magnitude.
///
/// # Panics
///
/// Panics if `x` and `out` differ in shape.
pub fn sigmoid(x: MatRef<'_>, mut out: MatMut<'_>) {
    assert_eq!(
        (x.rows, x.cols),
        (out.rows, out.cols),
        "sigmoid: shapes differ"
    );
    for (src, dst) in x.row_iter().zip(out.row_iter_mut()) {
        for (o, &v) in dst.iter_mut().zip(src) {
            *o = sigmoid_scalar(v);
        }
    }
}

/// In-place element-wise logistic function, stable for any input magnitude.
pub fn sigmoid_inplace(x: &mut [f32]) {
    for v in x {
        *v = sigmoid_scalar(*v);
    }
}

/// `out = act(x + bias)`, the bias broadcast over the rows: the epilogue of a linear layer whose
/// product was computed elsewhere (the CPU backend's folded embedding projections). Rows are
/// split into tiles that `par` runs once the output is large.
///
/// A block of a wider buffer (`out.ld > out.cols`) of at least [`STREAM_MIN_ROWS`] rows is
/// written with streaming stores where its rows start on 64-byte boundaries (AVX-512, ReLU or no
/// activation): such a block of a wide activation (a concat's part) is read by the next layer
/// only once every part is written, so fetching its lines first (the cost of an ordinary store
/// that misses) would be wasted; an output of its own is read next and stays in cache. Every
/// path gives the same values: `v + b`, then ReLU as `v > 0 ? v : 0` (NaN and -0 give +0).
///
/// # Panics
///
/// Panics if `x` and `out` differ in shape or `bias` is not one value per column.
pub fn bias_act_par(
    x: MatRef<'_>,
    bias: &[f32],
    act: Activation,
    out: MatMut<'_>,
    par: &dyn Parallel,
) {
    assert_eq!(
        (x.rows, x.cols),
        (out.rows, out.cols),
        "bias_act: shapes differ"
    );
    assert_eq!(bias.len(), x.cols, "bias_act: one bias per column");
    let stream = x.rows >= STREAM_MIN_ROWS
        && out.ld > out.cols
        && act != Activation::Sigmoid
        && streaming_stores();
    let tiles = if x.rows * x.cols >= PAR_MIN_ELEMENTS {
        par.width() * 2
    } else {
        1
    };
    let tiles = row_tiles(out, tiles);
    par.for_each(tiles.len(), &|t| {
        let (r0, mut view) = tiles[t]
            .lock()
            .expect("tile slot")
            .take()
            .expect("each tile runs once");
        for (i, dst) in view.row_iter_mut().enumerate() {
            let src = x.row(r0 + i);
            #[cfg(target_arch = "x86_64")]
            if stream && dst.len().is_multiple_of(16) && dst.as_ptr().align_offset(64) == 0 {
                // SAFETY: AVX-512F is present (`streaming_stores`); `dst` starts on a 64-byte
                // boundary and holds a whole number of vectors, as many as `src` and `bias`.
                unsafe { bias_act_row_stream(src, bias, act == Activation::Relu, dst) };
                continue;
            }
            for ((o, &v), &b) in dst.iter_mut().zip(src).zip(bias) {
                *o = epilogue(v + b, act);
            }
        }
        #[cfg(target_arch = "x86_64")]
        if stream {
            // Streaming stores are weakly ordered: make them visible before the tile is
            // reported done (the other threads then read the output).
            // SAFETY: SSE is part of x86_64.
            unsafe { std::arch::x86_64::_mm_sfence() };
        }
    });
}

/// Whether this machine has the streaming-store path of [`bias_act_par`] (AVX-512F).
fn streaming_stores() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Outputs of at least this many rows are written with streaming stores ([`bias_act_par`]).
pub const STREAM_MIN_ROWS: usize = 64;
/// Outputs of at least this many elements are split over the runner's threads.
const PAR_MIN_ELEMENTS: usize = 1 << 16;

/// One row of [`bias_act_par`] with AVX-512 and streaming stores.
///
/// # Safety
///
/// AVX-512F must be present; `dst` must start on a 64-byte boundary, `dst.len()` be a multiple
/// of 16, and `src` and `bias` at least as long as `dst`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn bias_act_row_stream(src: &[f32], bias: &[f32], relu: bool, dst: &mut [f32]) {
    use std::arch::x86_64::*;
    debug_assert!(src.len() >= dst.len() && bias.len() >= dst.len());
    let zero = _mm512_setzero_ps();
    for c in (0..dst.len()).step_by(16) {
        let v = _mm512_add_ps(
            _mm512_loadu_ps(src.as_ptr().add(c)),
            _mm512_loadu_ps(bias.as_ptr().add(c)),
        );
        // `v > 0 ? v : 0`: MAXPS returns its second operand for NaN and for two zeros.
        let v = if relu { _mm512_max_ps(v, zero) } else { v };
        _mm512_stream_ps(dst.as_mut_ptr().add(c), v);
    }
}

/// In-place element-wise `max(x, 0)`.
pub fn relu_inplace(x: &mut [f32]) {
    for v in x {
        *v = v.max(0.0);
    }
}

/// [`linear`] split over `threads` OS threads by output columns (each thread computes a block of
/// output features from its rows of `weight`), for GEMMs large enough to pay for the threads.
///
/// The first block is written straight into `out`; the others go through `scratch` (at least
/// `x.rows * (out.cols - out.cols.div_ceil(threads))` elements) and are copied into their
/// columns. With `threads <= 1` this is [`linear`]. Each output element is computed exactly as
/// [`linear`] computes it.
///
/// # Panics
///
/// Panics under the conditions of [`linear`], or if `scratch` is too small.
pub fn linear_parallel(
    x: MatRef<'_>,
    weight: &[f32],
    bias: Option<&[f32]>,
    act: Activation,
    mut out: MatMut<'_>,
    threads: usize,
    scratch: &mut [f32],
) {
    let (m, k, n) = (x.rows, x.cols, out.cols);
    let threads = threads.clamp(1, n.max(1));
    if threads == 1 {
        return linear(x, weight, bias, act, out);
    }
    assert_eq!(
        weight.len(),
        n * k,
        "linear: weight must be [out_features, in_features]"
    );
    let block = n.div_ceil(threads);
    assert!(
        scratch.len() >= m * (n - block),
        "linear_parallel: scratch has {} elements, needs {}",
        scratch.len(),
        m * (n - block)
    );
    // Column blocks after the first, each a contiguous [m, width] region of the scratch.
    let mut parts: Vec<(usize, usize, &mut [f32])> = Vec::with_capacity(threads - 1);
    let mut rest = &mut scratch[..m * (n - block)];
    let mut c = block;
    while c < n {
        let w = block.min(n - c);
        let (head, tail) = rest.split_at_mut(m * w);
        parts.push((c, w, head));
        rest = tail;
        c += w;
    }
    std::thread::scope(|s| {
        for (c0, w, buf) in parts.iter_mut() {
            let (c0, w) = (*c0, *w);
            let wt = &weight[c0 * k..(c0 + w) * k];
            let b = bias.map(|b| &b[c0..c0 + w]);
            let dst = MatMut::contiguous(&mut buf[..], m, w);
            s.spawn(move || linear(x, wt, b, act, dst));
        }
        let first = out.reborrow().col_slice(0, block);
        linear(
            x,
            &weight[..block * k],
            bias.map(|b| &b[..block]),
            act,
            first,
        );
    });
    for (c0, w, buf) in parts {
        for (r, row) in out.row_iter_mut().enumerate() {
            row[c0..c0 + w].copy_from_slice(&buf[r * w..(r + 1) * w]);
        }
    }
}
