//! The linear layer's GEMM: the row-major to column-major mapping ([`linear_gemm`]) checked on
//! the host against a literal column-major GEMM (cuBLAS/cuBLASLt semantics, bias per row of D),
//! and on a machine with a GPU the fused cuBLASLt linear (`BIAS`/`RELU_BIAS` epilogues) and the
//! unfused cuBLAS + `bias_act` fallback against a host f64 reference.
//!
//! The host checks need no CUDA library. The GPU tests pass and write
//! `<test>: skipped: <what> (<reason>)` straight to the process's stderr (past libtest's
//! capture, so plain `cargo test` shows it) when there is no device or library;
//! `STREAMREC_REQUIRE_CUDA=1` turns that into a failure (see `crates/runtime/tests/cuda.rs`).

use std::io::Write;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use streamrec_kernels::cuda::cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtr};
use streamrec_kernels::cuda::{
    self as kc, linear_gemm, ptr_alignment, Blas, ColMajorGemm, CudaKernels, DevPtr, FusedEpilogue,
    GemmMath, LinearEpilogue, LtGemm,
};
use streamrec_kernels::Activation;

/// A value no computation produces: marks elements that must stay untouched.
const SENTINEL: f32 = -777.25;

/// Whether the environment variable is set to `1`.
fn required(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == "1")
}

/// Reports a skipped GPU test on the process's stderr (past libtest's capture); panics instead
/// when `STREAMREC_REQUIRE_CUDA=1`.
fn skip(what: &str, reason: &str) {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a CUDA test");
    assert!(
        !required("STREAMREC_REQUIRE_CUDA"),
        "{test}: STREAMREC_REQUIRE_CUDA=1 but {what}: {reason}"
    );
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{test}: skipped: {what} ({reason})");
}

/// One linear layer's shape: `rows` samples, `inp` inputs, `out` outputs, and the leading
/// dimensions of X and Y.
#[derive(Clone, Copy, Debug)]
struct Shape {
    rows: usize,
    out: usize,
    inp: usize,
    x_ld: usize,
    y_ld: usize,
}

/// Non-square shapes with padded leading dimensions (so that a swapped transpose, dimension or
/// leading dimension reads the wrong elements or out of bounds), and the model's own shapes.
const SHAPES: [Shape; 6] = [
    Shape {
        rows: 3,
        out: 5,
        inp: 4,
        x_ld: 7,
        y_ld: 9,
    },
    Shape {
        rows: 1,
        out: 6,
        inp: 13,
        x_ld: 13,
        y_ld: 6,
    },
    Shape {
        rows: 7,
        out: 2,
        inp: 3,
        x_ld: 5,
        y_ld: 11,
    },
    Shape {
        rows: 4,
        out: 1,
        inp: 8,
        x_ld: 8,
        y_ld: 1,
    },
    Shape {
        rows: 5,
        out: 16,
        inp: 12,
        x_ld: 12,
        y_ld: 48,
    },
    Shape {
        rows: 2,
        out: 3,
        inp: 1,
        x_ld: 2,
        y_ld: 4,
    },
];

fn random(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Element `(r, c)` of a stored column-major `rows x cols` matrix with leading dimension `ld`,
/// refusing anything outside it.
fn at(buf: &[f32], (rows, cols): (usize, usize), ld: usize, r: usize, c: usize) -> f64 {
    assert!(ld >= rows.max(1), "ld {ld} < rows {rows}");
    assert!(
        r < rows && c < cols,
        "({r}, {c}) outside a {rows} x {cols} matrix"
    );
    f64::from(buf[r + c * ld])
}

/// `D = epilogue(op(A) · op(B) + bias)` exactly as cuBLAS/cuBLASLt define it for column-major
/// storage (C = D, beta = 0): the bias has one entry per row of D, ReLU applies after the bias.
fn host_col_major(
    g: &ColMajorGemm,
    a: &[f32],
    b: &[f32],
    d: &mut [f32],
    bias: Option<&[f32]>,
    relu: bool,
) {
    assert!(g.ldc >= g.m.max(1), "ldc {} < m {}", g.ldc, g.m);
    if let Some(bias) = bias {
        assert_eq!(bias.len(), g.bias_len());
    }
    for j in 0..g.n {
        for i in 0..g.m {
            let mut s = 0.0f64;
            for p in 0..g.k {
                let av = if g.transa {
                    at(a, g.a_dims(), g.lda, p, i)
                } else {
                    at(a, g.a_dims(), g.lda, i, p)
                };
                let bv = if g.transb {
                    at(b, g.b_dims(), g.ldb, j, p)
                } else {
                    at(b, g.b_dims(), g.ldb, p, j)
                };
                s += av * bv;
            }
            if let Some(bias) = bias {
                s += f64::from(bias[i]);
            }
            if relu {
                s = s.max(0.0);
            }
            let (rows, cols) = g.c_dims();
            assert!(i < rows && j < cols);
            d[i + j * g.ldc] = s as f32;
        }
    }
}

/// The row-major layer `Y[r, c] = act(sum_p X[r, p] W[c, p] + b[c])` in f64.
fn reference(s: Shape, x: &[f32], w: &[f32], b: &[f32], act: Activation) -> Vec<f64> {
    let mut y = vec![0.0f64; s.rows * s.out];
    for r in 0..s.rows {
        for c in 0..s.out {
            let mut v = f64::from(b[c]);
            for p in 0..s.inp {
                v += f64::from(x[r * s.x_ld + p]) * f64::from(w[c * s.inp + p]);
            }
            y[r * s.out + c] = apply(act, v);
        }
    }
    y
}

/// The activation in f64.
fn apply(act: Activation, v: f64) -> f64 {
    match act {
        Activation::None => v,
        Activation::Relu => v.max(0.0),
        Activation::Sigmoid => 1.0 / (1.0 + (-v).exp()),
    }
}

/// `sum_p |X[r, p] W[c, p]| + |b[c]|` per output: the scale of the rounding error.
fn magnitude(s: Shape, x: &[f32], w: &[f32], b: &[f32]) -> Vec<f64> {
    let mut m = vec![0.0f64; s.rows * s.out];
    for r in 0..s.rows {
        for c in 0..s.out {
            let mut v = f64::from(b[c].abs());
            for p in 0..s.inp {
                v += f64::from((x[r * s.x_ld + p] * w[c * s.inp + p]).abs());
            }
            m[r * s.out + c] = v;
        }
    }
    m
}

#[test]
fn linear_gemm_maps_a_row_major_layer_to_the_column_major_call() {
    let mut rng = StdRng::seed_from_u64(11);
    for s in SHAPES {
        let g = linear_gemm(s.rows, s.out, s.inp, s.x_ld, s.y_ld).expect("valid shape");
        // Buffers of exactly the row-major extents, padding included: X [rows, x_ld], W
        // [out, inp], Y [rows, y_ld] (an access past them panics).
        let x = random(&mut rng, s.rows * s.x_ld);
        let w = random(&mut rng, s.out * s.inp);
        let b = random(&mut rng, s.out);
        for (act, relu) in [(Activation::None, false), (Activation::Relu, true)] {
            let mut y = vec![SENTINEL; s.rows * s.y_ld];
            host_col_major(&g, &w, &x, &mut y, Some(&b), relu);
            let want = reference(s, &x, &w, &b, act);
            for r in 0..s.rows {
                for c in 0..s.y_ld {
                    let got = y[r * s.y_ld + c];
                    if c < s.out {
                        let e = want[r * s.out + c];
                        assert!(
                            (f64::from(got) - e).abs() <= 1e-5 * (1.0 + e.abs()),
                            "{s:?} {act:?}: Y[{r}, {c}] = {got}, expected {e} (mapping {g:?})"
                        );
                    } else {
                        assert_eq!(got, SENTINEL, "{s:?}: padding Y[{r}, {c}] was written");
                    }
                }
            }
        }
    }
}

#[test]
fn linear_gemm_is_the_documented_call() {
    // transa = T, transb = N, m = out, n = rows, k = inp, lda = inp, ldb = x_ld, ldc = y_ld.
    let g = linear_gemm(3, 5, 4, 7, 9).expect("valid shape");
    let fields = (g.transa, g.transb, g.m, g.n, g.k, g.lda, g.ldb, g.ldc);
    assert_eq!(fields, (true, false, 5, 3, 4, 4, 7, 9));
    assert_eq!(
        (g.a_dims(), g.b_dims(), g.c_dims()),
        ((4, 5), (4, 3), (5, 3))
    );
    assert_eq!(g.bias_len(), 5, "one bias entry per output feature");
    // Empty matrices still get leading dimensions >= 1, as cuBLAS requires.
    let e = linear_gemm(0, 0, 0, 0, 0).expect("empty shape");
    assert_eq!((e.lda, e.ldb, e.ldc), (1, 1, 1));
}

#[test]
fn linear_gemm_refuses_short_leading_dimensions() {
    assert!(linear_gemm(2, 3, 4, 3, 3).is_err(), "x_ld < inp");
    assert!(linear_gemm(2, 3, 4, 4, 2).is_err(), "y_ld < out");
    assert!(linear_gemm(2, 3, 4, 4, 3).is_ok());
}

#[test]
fn only_bias_and_relu_have_a_fused_epilogue() {
    assert_eq!(
        FusedEpilogue::for_activation(Activation::None),
        Some(FusedEpilogue::Bias)
    );
    assert_eq!(
        FusedEpilogue::for_activation(Activation::Relu),
        Some(FusedEpilogue::ReluBias)
    );
    assert_eq!(FusedEpilogue::for_activation(Activation::Sigmoid), None);
}

#[test]
fn pointer_alignment_is_the_power_of_two_up_to_256() {
    assert_eq!(ptr_alignment(0), 256);
    assert_eq!(ptr_alignment(0x7f00_0000_0000), 256);
    assert_eq!(ptr_alignment(0x7f00_0000_0100 + 4), 4);
    assert_eq!(ptr_alignment(0x7f00_0000_0000 + 3 * 16), 16);
    assert_eq!(ptr_alignment(0x7f00_0000_0000 + 128), 128);
    assert_eq!(ptr_alignment(1), 1);
}

/// A CUDA device, its stream, or why not.
fn device() -> Option<Arc<CudaStream>> {
    if let Err(e) = kc::cuda_available() {
        skip("no CUDA device", &e);
        return None;
    }
    let ctx = CudaContext::new(0).expect("CUDA context");
    Some(ctx.new_stream().expect("CUDA stream"))
}

fn ptr(s: &CudaSlice<f32>, stream: &CudaStream) -> DevPtr {
    let (p, _guard) = s.device_ptr(stream);
    p
}

/// One layer's data on the host and the device. `y_off` floats of offset before Y's first
/// element (an unaligned output, like a column slice of a concatenation).
struct Case {
    s: Shape,
    /// The f64 reference before the activation, and the rounding scale, per output.
    pre: Vec<f64>,
    mag: Vec<f64>,
    y_off: usize,
    dx: CudaSlice<f32>,
    dw: CudaSlice<f32>,
    db: CudaSlice<f32>,
    dy: CudaSlice<f32>,
}

impl Case {
    fn new(stream: &Arc<CudaStream>, s: Shape, y_off: usize, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let x = random(&mut rng, s.rows * s.x_ld);
        let w = random(&mut rng, s.out * s.inp);
        let b = random(&mut rng, s.out);
        Self {
            dx: stream.clone_htod(&x).expect("upload x"),
            dw: stream.clone_htod(&w).expect("upload w"),
            db: stream.clone_htod(&b).expect("upload b"),
            dy: stream
                .clone_htod(&vec![SENTINEL; y_off + s.rows * s.y_ld])
                .expect("upload y"),
            pre: reference(s, &x, &w, &b, Activation::None),
            mag: magnitude(s, &x, &w, &b),
            s,
            y_off,
        }
    }

    fn reset_y(&mut self, stream: &Arc<CudaStream>) {
        let fill = vec![SENTINEL; self.y_off + self.s.rows * self.s.y_ld];
        stream.memcpy_htod(&fill, &mut self.dy).expect("reset y");
    }

    fn y_ptr(&self, stream: &CudaStream) -> DevPtr {
        ptr(&self.dy, stream) + (self.y_off * 4) as u64
    }

    /// Compares Y with the f64 reference (relative to the rounding scale `tol`) and checks that
    /// no padding element was written.
    fn check(&self, stream: &Arc<CudaStream>, act: Activation, tol: f64, what: &str) {
        stream.synchronize().expect("synchronize");
        let y = stream.clone_dtoh(&self.dy).expect("download y");
        let s = self.s;
        let mag = &self.mag;
        assert!(
            y[..self.y_off].iter().all(|&v| v == SENTINEL),
            "{what}: wrote before Y"
        );
        let mut worst = 0.0f64;
        for r in 0..s.rows {
            for c in 0..s.y_ld {
                let got = y[self.y_off + r * s.y_ld + c];
                if c >= s.out {
                    assert_eq!(got, SENTINEL, "{what}: padding Y[{r}, {c}] was written");
                    continue;
                }
                let e = apply(act, self.pre[r * s.out + c]);
                let err = (f64::from(got) - e).abs() / (mag[r * s.out + c] + 1e-30);
                assert!(
                    err <= tol,
                    "{what}: Y[{r}, {c}] = {got}, expected {e} (error {err:.2e} of the scale, tolerance {tol:.0e})"
                );
                worst = worst.max(err);
            }
        }
        let mut out = std::io::stderr().lock();
        let _ = writeln!(out, "{what}: worst error {worst:.2e} of the rounding scale");
    }
}

/// GPU shapes: the streamrec-26 layers (bottom 13 -> 512, a branch 128 -> 128 writing into
/// the 3456-wide concatenation, top 3456 -> 1024, the last 256 -> 1) at small and larger
/// batches, padded leading dimensions, and the shapes of a known fp32 bias-epilogue bug of
/// older cuBLASLt releases (bias missing from some outputs when one side of D is 1 and its
/// leading dimension is larger: github.com/dfyz/cublaslt-bias-epilogue).
const GPU_SHAPES: [Shape; 8] = [
    Shape {
        rows: 1,
        out: 128,
        inp: 128,
        x_ld: 128,
        y_ld: 3456,
    },
    Shape {
        rows: 4,
        out: 1,
        inp: 768,
        x_ld: 768,
        y_ld: 64,
    },
    Shape {
        rows: 1,
        out: 512,
        inp: 13,
        x_ld: 13,
        y_ld: 512,
    },
    Shape {
        rows: 16,
        out: 128,
        inp: 128,
        x_ld: 128,
        y_ld: 3456,
    },
    Shape {
        rows: 64,
        out: 1024,
        inp: 3456,
        x_ld: 3456,
        y_ld: 1024,
    },
    Shape {
        rows: 33,
        out: 1,
        inp: 256,
        x_ld: 256,
        y_ld: 1,
    },
    Shape {
        rows: 7,
        out: 37,
        inp: 19,
        x_ld: 23,
        y_ld: 41,
    },
    Shape {
        rows: 300,
        out: 256,
        inp: 512,
        x_ld: 520,
        y_ld: 260,
    },
];

/// Tolerance relative to `sum |x w| + |b|`: fp32 accumulation, or TF32 inputs (10-bit mantissa).
fn tolerance(math: GemmMath) -> f64 {
    match math {
        GemmMath::Fp32 => 1e-5,
        GemmMath::Tf32 => 2e-3,
    }
}

#[test]
fn fused_cublaslt_linear_matches_the_f64_reference() {
    let Some(stream) = device() else { return };
    if let Err(e) = kc::cublaslt_available() {
        skip("libcublasLt not loadable", &e);
        return;
    }
    for math in [GemmMath::Fp32, GemmMath::Tf32] {
        let mut lt = LtGemm::new(Arc::clone(&stream), math).expect("cuBLASLt handle");
        for (i, s) in GPU_SHAPES.into_iter().enumerate() {
            // Aligned output, and one 4 bytes past alignment (a concatenation's column slice).
            for y_off in [0usize, 1] {
                let mut case = Case::new(&stream, s, y_off, 100 + i as u64);
                for act in [Activation::None, Activation::Relu] {
                    case.reset_y(&stream);
                    let (x, w, b, y) = (
                        ptr(&case.dx, &stream),
                        ptr(&case.dw, &stream),
                        ptr(&case.db, &stream),
                        case.y_ptr(&stream),
                    );
                    // SAFETY: the buffers hold rows x x_ld, out x inp, out and y_off +
                    // rows x y_ld floats; Y overlaps no input; all live past the synchronize in
                    // `check`.
                    let fused =
                        unsafe { lt.linear(s.rows, s.out, s.inp, x, s.x_ld, w, b, y, s.y_ld, act) }
                            .expect("cuBLASLt linear");
                    let what = format!("{math:?} {s:?} y_off {y_off} {act:?}");
                    if !fused {
                        assert!(
                            y_off != 0,
                            "{what}: cuBLASLt refused an aligned layer: {:?}",
                            lt.fallbacks()
                        );
                        let mut out = std::io::stderr().lock();
                        let _ = writeln!(out, "{what}: cuBLASLt refused, the caller falls back");
                        continue;
                    }
                    case.check(&stream, act, tolerance(math), &what);
                }
                // No sigmoid epilogue: nothing is enqueued and Y stays untouched.
                case.reset_y(&stream);
                let (x, w, b, y) = (
                    ptr(&case.dx, &stream),
                    ptr(&case.dw, &stream),
                    ptr(&case.db, &stream),
                    case.y_ptr(&stream),
                );
                // SAFETY: as above.
                let fused = unsafe {
                    lt.linear(
                        s.rows,
                        s.out,
                        s.inp,
                        x,
                        s.x_ld,
                        w,
                        b,
                        y,
                        s.y_ld,
                        Activation::Sigmoid,
                    )
                }
                .expect("cuBLASLt linear");
                assert!(!fused, "a sigmoid has no cuBLASLt epilogue");
                stream.synchronize().expect("synchronize");
                let y = stream.clone_dtoh(&case.dy).expect("download y");
                assert!(y.iter().all(|&v| v == SENTINEL), "sigmoid: Y was written");
            }
        }
    }
}

#[test]
fn blas_linear_bias_act_fused_and_fallback_match_the_f64_reference() {
    let Some(stream) = device() else { return };
    if let Err(e) = kc::cublas_available() {
        skip("libcublas not loadable", &e);
        return;
    }
    if let Err(e) = kc::nvrtc_available() {
        skip("NVRTC not loadable (the fallback needs bias_act)", &e);
        return;
    }
    let kernels = CudaKernels::load(stream.context()).expect("kernels");
    let lt_there = kc::cublaslt_available().is_ok();
    for math in [GemmMath::Fp32, GemmMath::Tf32] {
        for fuse in [true, false] {
            let mut blas =
                Blas::with_options(Arc::clone(&stream), math, fuse).expect("cuBLAS handle");
            assert_eq!(blas.fused_epilogues().is_ok(), fuse && lt_there);
            for (i, s) in GPU_SHAPES.into_iter().enumerate() {
                let mut case = Case::new(&stream, s, 0, 200 + i as u64);
                for act in [Activation::None, Activation::Relu, Activation::Sigmoid] {
                    case.reset_y(&stream);
                    let (x, w, b, y) = (
                        ptr(&case.dx, &stream),
                        ptr(&case.dw, &stream),
                        ptr(&case.db, &stream),
                        case.y_ptr(&stream),
                    );
                    // SAFETY: as in the cuBLASLt test.
                    let done = unsafe {
                        blas.linear_bias_act(s.rows, s.out, s.inp, x, s.x_ld, w, b, y, s.y_ld, act)
                    }
                    .expect("linear");
                    let expect_fused = fuse && lt_there && act != Activation::Sigmoid;
                    assert_eq!(
                        done == LinearEpilogue::Fused,
                        expect_fused,
                        "{math:?} fuse {fuse} {s:?} {act:?}: cuBLASLt fallbacks {:?}",
                        blas.lt_fallbacks()
                    );
                    if done == LinearEpilogue::Pending {
                        // SAFETY: Y is rows x y_ld writable floats, b has out floats.
                        unsafe {
                            kernels.bias_act(&stream, y, s.y_ld, Some(b), s.rows, s.out, act)
                        }
                        .expect("bias_act");
                    }
                    let what = format!("{math:?} fuse {fuse} {s:?} {act:?} {done:?}");
                    case.check(&stream, act, tolerance(math), &what);
                }
            }
        }
    }
}
