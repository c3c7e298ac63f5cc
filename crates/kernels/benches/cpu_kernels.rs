//! Criterion benchmarks of the CPU kernels at the `streamrec-26` shapes.
//!
//! Embeddings: 26 tables of 100,000 x 128 (about 1.3 GB in all), pooling 20, batch 1 and 128,
//! as 26 `embedding_bag` calls into column slices of one buffer and as one
//! `table_batched_embedding_bag` call. Linear: 3456 -> 1024 (+ bias, ReLU), one group per shape
//! class: GEMV (batch 1, in GB/s of weights), skinny GEMM (batch 16 and 64) and large GEMM
//! (batch 1024), in GFLOP/s; each compares the prepacked kernels (every ISA path the machine
//! has) with `matrixmultiply` (`cpu::linear`, which repacks the weight per call) and, with
//! `--features gemm-peer`, the `gemm` crate that candle uses (0.17: AVX2+FMA on stable Rust, its
//! AVX-512 kernels need its nightly feature; bias and ReLU in a pass after it). The machine's
//! peaks are measured in the same run (`peak`: an FMA loop and a STREAM-like 64 MB copy), and a
//! closing summary prints every kernel's median as a fraction of them.

mod common;
use common::fill;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use streamrec_kernels::cpu::{self, Isa, PackedLinear};
use streamrec_kernels::{Activation, MatMut, MatRef, Pooling, TableRef};

const TABLES: usize = 26;
const ROWS: usize = 100_000;
const DIM: usize = 128;
const POOLING: usize = 20;
const BATCHES: [usize; 2] = [1, 128];

fn embeddings(c: &mut Criterion) {
    let tables: Vec<Vec<f32>> = (0..TABLES)
        .map(|t| fill(ROWS * DIM, t as u64 + 1))
        .collect();
    let refs: Vec<TableRef<'_>> = tables
        .iter()
        .map(|data| TableRef {
            data,
            rows: ROWS,
            dim: DIM,
            mode: Pooling::Sum,
        })
        .collect();
    let mut rng = StdRng::seed_from_u64(42);

    let mut group = c.benchmark_group("embedding");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    for batch in BATCHES {
        let indices: Vec<Vec<i64>> = (0..TABLES)
            .map(|_| {
                (0..batch * POOLING)
                    .map(|_| rng.random_range(0..ROWS as i64))
                    .collect()
            })
            .collect();
        let offsets: Vec<i64> = (0..batch).map(|b| (b * POOLING) as i64).collect();
        let idx: Vec<&[i64]> = indices.iter().map(Vec::as_slice).collect();
        let offs: Vec<&[i64]> = vec![offsets.as_slice(); TABLES];
        let mut out = vec![0.0f32; batch * TABLES * DIM];
        group.throughput(Throughput::Elements((batch * TABLES * POOLING) as u64));

        group.bench_function(BenchmarkId::new("embedding_bag_x26", batch), |b| {
            b.iter(|| {
                for (t, table) in tables.iter().enumerate() {
                    let view =
                        MatMut::contiguous(&mut out, batch, TABLES * DIM).col_slice(t * DIM, DIM);
                    cpu::embedding_bag(table, ROWS, DIM, idx[t], &offsets, Pooling::Sum, view);
                }
                black_box(&out);
            })
        });
        group.bench_function(
            BenchmarkId::new("table_batched_embedding_bag", batch),
            |b| {
                b.iter(|| {
                    cpu::table_batched_embedding_bag(
                        &refs,
                        &idx,
                        &offs,
                        MatMut::contiguous(&mut out, batch, TABLES * DIM),
                    );
                    black_box(&out);
                })
            },
        );
    }
    group.finish();
}

const K: usize = 3456;
const N: usize = 1024;

/// The shape classes: (group name, batch).
const CLASSES: [(&str, usize); 4] = [
    ("gemv", 1),
    ("skinny_gemm", 16),
    ("skinny_gemm", 64),
    ("large_gemm", 1024),
];

/// The linear kernels compared in each shape class.
#[derive(Clone, Copy)]
enum Kernel {
    Packed(Isa),
    Matrixmultiply,
    #[cfg(feature = "gemm-peer")]
    GemmCrate,
}

impl Kernel {
    /// The kernels worth timing at `batch`: the portable path (about 0.6 GFLOP/s without FMA
    /// vectorisation) only at the small batches where a SIMD path exists.
    fn all(batch: usize) -> Vec<Kernel> {
        let isas = Isa::supported();
        let mut v: Vec<Kernel> = isas
            .iter()
            .filter(|&&i| i != Isa::Portable || isas.len() == 1 || batch <= 16)
            .map(|&i| Kernel::Packed(i))
            .collect();
        v.push(Kernel::Matrixmultiply);
        #[cfg(feature = "gemm-peer")]
        v.push(Kernel::GemmCrate);
        v
    }

    fn name(self) -> String {
        match self {
            Kernel::Packed(isa) => format!("packed_{isa:?}").to_lowercase(),
            Kernel::Matrixmultiply => "matrixmultiply".into(),
            #[cfg(feature = "gemm-peer")]
            Kernel::GemmCrate => "gemm_crate".into(),
        }
    }
}

/// The 3456 -> 1024 layer's operands.
struct Layer {
    weight: Vec<f32>,
    bias: Vec<f32>,
    packed: PackedLinear,
    x: Vec<f32>,
    out: Vec<f32>,
}

impl Layer {
    fn new() -> Self {
        let weight = fill(N * K, 100);
        let bias = fill(N, 101);
        let packed = PackedLinear::new(&weight, N, K, Some(&bias));
        Self {
            weight,
            bias,
            packed,
            x: fill(1024 * K, 102),
            out: vec![0.0; 1024 * N],
        }
    }

    fn run(&mut self, kernel: Kernel, batch: usize) {
        let x = MatRef::contiguous(&self.x[..batch * K], batch, K);
        let out = MatMut::contiguous(&mut self.out[..batch * N], batch, N);
        match kernel {
            Kernel::Packed(isa) => {
                cpu::linear_packed_isa(isa, x, &self.packed, Activation::Relu, out, 1)
            }
            Kernel::Matrixmultiply => {
                cpu::linear(x, &self.weight, Some(&self.bias), Activation::Relu, out)
            }
            #[cfg(feature = "gemm-peer")]
            Kernel::GemmCrate => {
                let out = &mut self.out[..batch * N];
                // out = x · weightᵀ: the weight `[N, K]` read as `K x N` with column stride K.
                // SAFETY: every operand holds the elements its shape and strides address.
                unsafe {
                    gemm::gemm(
                        batch,
                        N,
                        K,
                        out.as_mut_ptr(),
                        1,
                        N as isize,
                        false,
                        self.x.as_ptr(),
                        1,
                        K as isize,
                        self.weight.as_ptr(),
                        K as isize,
                        1,
                        0.0f32,
                        1.0f32,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    )
                };
                for row in out.chunks_exact_mut(N) {
                    for (o, b) in row.iter_mut().zip(&self.bias) {
                        *o = (*o + b).max(0.0);
                    }
                }
            }
        }
        black_box(&self.out);
    }
}

fn throughput(batch: usize) -> Throughput {
    if batch == 1 {
        // A GEMV streams the weights once: report bytes per second.
        Throughput::Bytes((N * K * 4) as u64)
    } else {
        Throughput::Elements((2 * batch * K * N) as u64)
    }
}

fn linear(c: &mut Criterion) {
    let mut layer = Layer::new();
    // Every kernel computes the same layer (a mistake in a peer's strides would time garbage):
    // within 1e-5 of the outputs' scale, which other summation orders over K = 3456 stay inside.
    let batch = 64;
    layer.run(Kernel::Packed(Isa::Portable), batch);
    let want = layer.out[..batch * N].to_vec();
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1.0);
    for kernel in Kernel::all(batch) {
        layer.out.fill(f32::NAN);
        layer.run(kernel, batch);
        let err = want
            .iter()
            .zip(&layer.out)
            .map(|(a, b)| (a - b).abs() / scale)
            .fold(0.0f32, f32::max);
        assert!(
            err <= 1e-5,
            "{}: off the portable path by {err} of the outputs' scale {scale}",
            kernel.name()
        );
    }
    for (class, batch) in CLASSES {
        let mut group = c.benchmark_group(format!("linear_3456x1024_{class}"));
        group
            .sample_size(10)
            .measurement_time(Duration::from_secs(if batch > 64 { 4 } else { 2 }))
            .warm_up_time(Duration::from_millis(500));
        group.throughput(throughput(batch));
        for kernel in Kernel::all(batch) {
            group.bench_function(BenchmarkId::new(kernel.name(), batch), |b| {
                b.iter(|| layer.run(kernel, batch))
            });
        }
        group.finish();
    }
}

/// An FMA loop with 16 independent accumulators (4 cycles of latency, 2 ports, 16 lanes).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn fma_loop_avx512(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_set1_ps(0.0); 16];
    let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm512_fmadd_ps(*v, a, b);
        }
    }
    let s = acc
        .iter()
        .fold(_mm512_setzero_ps(), |s, &v| _mm512_add_ps(s, v));
    _mm512_reduce_add_ps(s)
}

/// As [`fma_loop_avx512`] with 8 lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn fma_loop_avx2(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_set1_ps(0.0); 16];
    let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm256_fmadd_ps(*v, a, b);
        }
    }
    let mut lanes = [0.0f32; 8];
    let s = acc
        .iter()
        .fold(_mm256_setzero_ps(), |s, &v| _mm256_add_ps(s, v));
    // SAFETY: `lanes` holds 8 floats.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), s) };
    lanes.iter().sum()
}

/// Runs the best FMA loop of the machine: the FLOPs it did and a value to keep.
fn fma_loop(iters: usize) -> (f64, f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if Isa::Avx512.is_supported() {
            // SAFETY: the machine has AVX-512F.
            let r = unsafe { fma_loop_avx512(iters) };
            return ((iters * 16 * 16 * 2) as f64, r);
        }
        if Isa::Avx2.is_supported() {
            // SAFETY: the machine has AVX2 and FMA.
            let r = unsafe { fma_loop_avx2(iters) };
            return ((iters * 16 * 8 * 2) as f64, r);
        }
    }
    let mut acc = [0.0f32; 16];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = v.mul_add(0.999_999, 1e-7);
        }
    }
    ((iters * 16 * 2) as f64, acc.iter().sum())
}

const FMA_ITERS: usize = 1 << 20;
const COPY_BYTES: usize = 64 << 20;

fn peak(c: &mut Criterion) {
    let mut group = c.benchmark_group("peak");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(300));
    group.throughput(Throughput::Elements(
        fma_loop(1).0 as u64 * FMA_ITERS as u64,
    ));
    group.bench_function("fma_loop", |b| b.iter(|| black_box(fma_loop(FMA_ITERS))));
    let src = fill(COPY_BYTES / 4, 7);
    let mut dst = vec![0.0f32; COPY_BYTES / 4];
    // Bytes read plus bytes written, as STREAM counts a copy.
    group.throughput(Throughput::Bytes(2 * COPY_BYTES as u64));
    group.bench_function("copy_64MB", |b| {
        b.iter(|| {
            dst.copy_from_slice(&src);
            black_box(&dst);
        })
    });
    group.finish();
}

/// The median of `rounds` timings of `f`, in seconds.
fn median_secs(rounds: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..rounds)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

/// Prints each kernel's median against the peaks, measured interleaved in this run.
fn summary(_c: &mut Criterion) {
    let mut layer = Layer::new();
    let src = fill(COPY_BYTES / 4, 7);
    let mut dst = vec![0.0f32; COPY_BYTES / 4];
    let fma = {
        let flops = fma_loop(1).0 * (16 * FMA_ITERS) as f64;
        flops
            / median_secs(7, || {
                black_box(fma_loop(16 * FMA_ITERS));
            })
            / 1e9
    };
    let copy = 2.0 * COPY_BYTES as f64
        / median_secs(7, || {
            dst.copy_from_slice(&src);
            black_box(&dst);
        })
        / 1e9;
    println!("\npeak: FMA loop {fma:.1} GFLOP/s, copy {copy:.1} GB/s (one core)");
    println!(
        "class        batch  kernel                    median us   GFLOP/s  %FMA   GB/s(W)  %copy"
    );
    for (class, batch) in CLASSES {
        let rounds = if batch > 64 { 5 } else { 21 };
        for kernel in Kernel::all(batch) {
            let s = median_secs(rounds, || layer.run(kernel, batch));
            let gflops = 2.0 * (batch * K * N) as f64 / s / 1e9;
            let gbs = (K * N * 4) as f64 / s / 1e9;
            println!(
                "{class:<12} {batch:>5}  {:<24} {:>10.1} {gflops:>9.1} {:>5.0}% {gbs:>8.1} {:>5.0}%",
                kernel.name(),
                s * 1e6,
                100.0 * gflops / fma,
                100.0 * gbs / copy
            );
        }
    }
}

criterion_group!(benches, peak, embeddings, linear, summary);
criterion_main!(benches);
