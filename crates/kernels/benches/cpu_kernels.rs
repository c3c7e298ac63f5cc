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
//!
//! The peaks, measured again at the start of the summary: per ISA path the FMA loop on one and
//! two threads; a STREAM-like copy; a pointer chase (one dependent load at a time over 256 MB:
//! the memory latency); and a gather of random 512-byte rows over the 1.3 GB of tables with
//! 0-32 rows prefetched ahead (the random-read bandwidth that rows in flight reach, on one and
//! two threads; the best is the gather peak). The summary then prints the linear layer per shape
//! class in GFLOP/s against the FMA peak of its ISA path (the large GEMM also on two threads)
//! and the 26 lookups of a request per ISA path, on one and two threads, in GB/s of rows against
//! the gather peak.

mod common;
use common::fill;

use std::hint::black_box;
use std::sync::Mutex;
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

    /// The packed kernel of `isa` on `threads` scoped threads.
    fn run_threads(&mut self, isa: Isa, batch: usize, threads: usize) {
        let x = MatRef::contiguous(&self.x[..batch * K], batch, K);
        let out = MatMut::contiguous(&mut self.out[..batch * N], batch, N);
        cpu::linear_packed_isa(isa, x, &self.packed, Activation::Relu, out, threads);
        black_box(&self.out);
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

const FMA_ITERS: usize = 1 << 20;
const COPY_BYTES: usize = 64 << 20;
/// The pointer chase visits every 64-byte line of a buffer this large (well past the L3) in a
/// random cycle.
const CHASE_BYTES: usize = 256 << 20;
/// Rows gathered per timing of the gather microbenchmark (512 MB: the L3 holds few of them).
const GATHER_ROWS: usize = 1 << 20;
/// Rows prefetched ahead in the gather microbenchmark (0: only what out-of-order execution
/// keeps in flight).
const GATHER_AHEAD: [usize; 6] = [0, 2, 4, 8, 16, 32];

/// `f(t)` on `threads` threads at once (the caller is thread 0).
fn on_threads(threads: usize, f: &(dyn Fn(usize) + Sync)) {
    std::thread::scope(|s| {
        for t in 1..threads {
            s.spawn(move || f(t));
        }
        f(0);
    });
}

/// A random cycle through the lines of `CHASE_BYTES`: element `16 * i` holds the element
/// index of the next line.
fn chase_ring(seed: u64) -> Vec<u32> {
    let lines = CHASE_BYTES / 64;
    let mut order: Vec<u32> = (0..lines as u32).collect();
    let mut rng = StdRng::seed_from_u64(seed);
    for i in (1..lines).rev() {
        order.swap(i, rng.random_range(0..=i));
    }
    let mut next = common::huge_vec::<u32>(CHASE_BYTES / 4);
    for w in 0..lines {
        next[order[w] as usize * 16] = order[(w + 1) % lines] * 16;
    }
    next
}

/// `steps` dependent loads along `ring`: each address comes from the previous load.
fn chase(ring: &[u32], steps: usize) -> u32 {
    let mut p = 0u32;
    for _ in 0..steps {
        p = ring[p as usize];
    }
    p
}

/// Random-read bandwidth: for each row of `rows` (512-byte rows of `data`), one load per 64-byte
/// line, the lines of the row `ahead` places on prefetched first; a value to keep.
fn gather(data: &[f32], rows: &[u32], ahead: usize) -> u32 {
    let mut acc = 0u32;
    for j in 0..rows.len() {
        if ahead > 0 {
            if let Some(&p) = rows.get(j + ahead) {
                prefetch_lines(&data[p as usize * DIM..][..DIM]);
            }
        }
        let row = &data[rows[j] as usize * DIM..][..DIM];
        for line in row.chunks_exact(16) {
            acc = acc.wrapping_add(line[0].to_bits());
        }
    }
    acc
}

/// Prefetches every 64-byte line of `row`.
fn prefetch_lines(row: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in row.chunks(16) {
        // SAFETY: a prefetch hint never faults.
        unsafe {
            std::arch::x86_64::_mm_prefetch(
                line.as_ptr().cast::<i8>(),
                std::arch::x86_64::_MM_HINT_T0,
            )
        };
    }
}

/// `threads` lists of random rows of the tables (26 x 100,000 x 128), one per thread.
fn random_rows(threads: usize, n: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..threads)
        .map(|_| {
            (0..n)
                .map(|_| rng.random_range(0..(TABLES * ROWS) as u32))
                .collect()
        })
        .collect()
}

fn peak(c: &mut Criterion) {
    let mut group = c.benchmark_group("peak");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(300));
    for isa in Isa::supported() {
        group.throughput(Throughput::Elements(
            cpu::fma_loop(isa, 1).0 as u64 * FMA_ITERS as u64,
        ));
        group.bench_function(BenchmarkId::new("fma_loop", isa), |b| {
            b.iter(|| black_box(cpu::fma_loop(isa, FMA_ITERS)))
        });
    }
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
    let ring = chase_ring(9);
    group.throughput(Throughput::Elements(1 << 16));
    group.bench_function("pointer_chase_256MB", |b| {
        b.iter(|| black_box(chase(&ring, 1 << 16)))
    });
    drop(ring);
    let data = fill(TABLES * ROWS * DIM, 8);
    let rows = random_rows(1, GATHER_ROWS, 10);
    group.throughput(Throughput::Bytes((GATHER_ROWS * DIM * 4) as u64));
    for ahead in GATHER_AHEAD {
        group.bench_function(BenchmarkId::new("gather_512B_rows_ahead", ahead), |b| {
            b.iter(|| black_box(gather(&data, &rows[0], ahead)))
        });
    }
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
    median(&mut t)
}

/// The machine's peaks, measured in this run.
struct Peaks {
    /// Per ISA path: FMA GFLOP/s on one and on two threads.
    fma: Vec<(Isa, [f64; 2])>,
    /// STREAM-like copy on one core, GB/s.
    copy: f64,
    /// Nanoseconds per dependent load over `CHASE_BYTES`.
    chase_ns: f64,
    /// Per rows ahead: gather GB/s on one and on two threads.
    gather: Vec<(usize, [f64; 2])>,
}

impl Peaks {
    fn measure(data: &[f32]) -> Peaks {
        let fma = Isa::supported()
            .into_iter()
            .map(|isa| {
                let per = |threads| cpu::fma_peak(isa, threads, 16 * FMA_ITERS, 7);
                (isa, [per(1), per(2)])
            })
            .collect();
        let src = fill(COPY_BYTES / 4, 7);
        let mut dst = vec![0.0f32; COPY_BYTES / 4];
        let copy = 2.0 * COPY_BYTES as f64
            / median_secs(7, || {
                dst.copy_from_slice(&src);
                black_box(&dst);
            })
            / 1e9;
        let ring = chase_ring(9);
        let steps = 1 << 20;
        let chase_ns = median_secs(5, || {
            black_box(chase(&ring, steps));
        }) / steps as f64
            * 1e9;
        let lists = random_rows(2, GATHER_ROWS, 10);
        let gather = GATHER_AHEAD
            .iter()
            .map(|&ahead| {
                let per = |threads: usize| {
                    (threads * GATHER_ROWS * DIM * 4) as f64
                        / median_secs(7, || {
                            on_threads(threads, &|t| {
                                black_box(gather(data, &lists[t], ahead));
                            })
                        })
                        / 1e9
                };
                (ahead, [per(1), per(2)])
            })
            .collect();
        Peaks {
            fma,
            copy,
            chase_ns,
            gather,
        }
    }

    /// FMA GFLOP/s of `isa` on `threads` (1 or 2) threads.
    fn fma(&self, isa: Isa, threads: usize) -> f64 {
        self.fma
            .iter()
            .find(|(i, _)| *i == isa)
            .map_or(f64::NAN, |(_, p)| p[threads - 1])
    }

    /// The best gather GB/s on `threads` (1 or 2) threads.
    fn gather(&self, threads: usize) -> f64 {
        self.gather
            .iter()
            .map(|(_, g)| g[threads - 1])
            .fold(0.0, f64::max)
    }

    fn print(&self) {
        println!("\nmachine: {}", common::processor());
        println!("peaks measured in this run (median of 5-7 timings):");
        for (isa, p) in &self.fma {
            println!(
                "  FMA loop {:<9} {:>7.1} GFLOP/s on 1 thread, {:>7.1} on 2 ({:.2}x)",
                isa.name(),
                p[0],
                p[1],
                p[1] / p[0]
            );
        }
        println!("  copy 64 MB         {:>7.1} GB/s on 1 thread", self.copy);
        println!(
            "  pointer chase      {:>7.1} ns per dependent load over {} MB (one line in flight: {:.2} GB/s)",
            self.chase_ns,
            CHASE_BYTES >> 20,
            64.0 / self.chase_ns
        );
        for (ahead, g) in &self.gather {
            println!(
                "  gather 512 B rows  {:>7.1} GB/s on 1 thread, {:>7.1} on 2, {ahead:>2} rows prefetched ahead (~{:.0} lines in flight on 1)",
                g[0],
                g[1],
                g[0] * self.chase_ns / 64.0
            );
        }
        println!(
            "  gather peak        {:>7.1} GB/s on 1 thread, {:>7.1} on 2 (the best above)",
            self.gather(1),
            self.gather(2)
        );
    }
}

/// Prints each kernel's median against the peaks, measured interleaved in this run.
fn summary(_c: &mut Criterion) {
    let data = fill(TABLES * ROWS * DIM, 8);
    let peaks = Peaks::measure(&data);
    peaks.print();
    let mut layer = Layer::new();
    println!("\nclass          batch thr  kernel            median us   GFLOP/s  %FMA(isa,thr)   GB/s(W)");
    for (class, batch) in CLASSES {
        let rounds = if batch > 64 { 5 } else { 21 };
        for kernel in Kernel::all(batch) {
            let s = median_secs(rounds, || layer.run(kernel, batch));
            let gflops = 2.0 * (batch * K * N) as f64 / s / 1e9;
            let gbs = (K * N * 4) as f64 / s / 1e9;
            let isa = match kernel {
                Kernel::Packed(isa) => isa,
                _ => Isa::detect(),
            };
            println!(
                "{class:<14} {batch:>5} {:>3}  {:<16} {:>10.1} {gflops:>9.1} {:>13.0}% {gbs:>9.1}",
                1,
                kernel.name(),
                s * 1e6,
                100.0 * gflops / peaks.fma(isa, 1),
            );
        }
    }
    // The large GEMM on two threads, against the two-thread FMA peak of its path.
    let batch = 1024;
    for isa in Isa::supported().into_iter().filter(|&i| i != Isa::Portable) {
        let s = median_secs(5, || layer.run_threads(isa, batch, 2));
        let gflops = 2.0 * (batch * K * N) as f64 / s / 1e9;
        println!(
            "{:<14} {batch:>5} {:>3}  {:<16} {:>10.1} {gflops:>9.1} {:>13.0}%",
            "large_gemm",
            2,
            Kernel::Packed(isa).name(),
            s * 1e6,
            100.0 * gflops / peaks.fma(isa, 2),
        );
    }
    drop(layer);
    lookup_summary(&data, &peaks);
}

/// Rows prefetched ahead that the lookup summary compares with the default.
const LOOKUP_AHEAD: [usize; 3] = [4, 8, 32];

/// The 26 lookups of a streamrec-26 request (pooling 20 over 100,000 x 128 rows; each table
/// its own `embedding_bag_opts` call; on two threads each pools half the tables) on each ISA path, one and two
/// threads, in GB/s of rows gathered against the gather peak; and the same lookups with other
/// prefetch distances, timed in rounds interleaved with the default (each round times the
/// default first and last; the noise floor is the median change between those two).
fn lookup_summary(data: &[f32], peaks: &Peaks) {
    let tables: Vec<&[f32]> = data.chunks_exact(ROWS * DIM).collect();
    let mut rng = StdRng::seed_from_u64(43);
    println!(
        "\nclass          batch thr  kernel            median us      GB/s  %gather peak(thr)   \
         other prefetch distances: p50 / default's (noise floor)"
    );
    for batch in [16, 128, 1024] {
        // A fresh request for every timing (the rows of one stay in the L3 otherwise).
        let sets = 8;
        let indices: Vec<Vec<Vec<i64>>> = (0..sets)
            .map(|_| {
                (0..TABLES)
                    .map(|_| {
                        (0..batch * POOLING)
                            .map(|_| rng.random_range(0..ROWS as i64))
                            .collect()
                    })
                    .collect()
            })
            .collect();
        let offsets: Vec<i64> = (0..batch).map(|b| (b * POOLING) as i64).collect();
        let mut outs = vec![vec![0.0f32; batch * DIM]; TABLES];
        let bytes = (batch * TABLES * POOLING * DIM * 4) as f64;
        let mut next = 0;
        let mut time = |isa: Isa, threads: usize, ahead: usize| {
            let idx = &indices[next % sets];
            next += 1;
            let opts = cpu::BagOpts::new(isa).with_ahead(ahead);
            let slots: Vec<_> = outs.iter_mut().map(Mutex::new).collect();
            let t0 = Instant::now();
            // Thread `k` of `threads` pools tables k, k + threads, ... (one thread start per
            // timing, not one per table).
            on_threads(threads, &|k| {
                for t in (k..TABLES).step_by(threads) {
                    let mut out = slots[t].lock().expect("table slot");
                    cpu::embedding_bag_opts(
                        tables[t],
                        ROWS,
                        DIM,
                        &idx[t],
                        &offsets,
                        Pooling::Sum,
                        MatMut::contiguous(&mut out[..], batch, DIM),
                        &opts,
                    );
                }
            });
            let s = t0.elapsed().as_secs_f64();
            black_box(&slots);
            s
        };
        for threads in [1, 2] {
            for isa in Isa::supported() {
                let rounds = if batch >= 1024 { 5 } else { 15 };
                let (mut base, mut noise) = (Vec::new(), Vec::new());
                let mut ratios = vec![Vec::new(); LOOKUP_AHEAD.len()];
                time(isa, threads, cpu::PREFETCH_ROWS);
                for _ in 0..rounds {
                    let first = time(isa, threads, cpu::PREFETCH_ROWS);
                    let others: Vec<f64> = LOOKUP_AHEAD
                        .iter()
                        .map(|&a| time(isa, threads, a))
                        .collect();
                    let last = time(isa, threads, cpu::PREFETCH_ROWS);
                    let mid = (first + last) / 2.0;
                    for (r, o) in ratios.iter_mut().zip(&others) {
                        r.push(o / mid);
                    }
                    noise.push((first - last).abs() / mid);
                    base.extend([first, last]);
                }
                let s = median(&mut base);
                let gbs = bytes / s / 1e9;
                let others: Vec<String> = LOOKUP_AHEAD
                    .iter()
                    .zip(&mut ratios)
                    .map(|(a, r)| format!("{a}: {:.2}x", median(r)))
                    .collect();
                println!(
                    "{:<14} {batch:>5} {threads:>3}  {:<16} {:>10.1} {gbs:>9.1} {:>17.0}%   \
                     ahead {}: 1.00x, {} ({:.0}%)",
                    "lookups_x26",
                    format!("pool_{}", isa.name()),
                    s * 1e6,
                    100.0 * gbs / peaks.gather(threads),
                    cpu::PREFETCH_ROWS,
                    others.join(", "),
                    100.0 * median(&mut noise),
                );
            }
        }
    }
}

/// The median of `v` (sorted in place).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

criterion_group!(benches, peak, embeddings, linear, summary);
criterion_main!(benches);
