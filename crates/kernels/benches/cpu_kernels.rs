//! Criterion benchmarks of the CPU kernels at the `streamrec-26` shapes.
//!
//! Embeddings: 26 tables of 100,000 x 128 (about 1.3 GB in all), pooling 20, batch 1 and 128,
//! as 26 `embedding_bag` calls into column slices of one buffer and as one
//! `table_batched_embedding_bag` call. Linear: 3456 -> 1024 at batch 1 and 128.

mod common;
use common::fill;

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use streamrec_kernels::cpu;
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

fn linear(c: &mut Criterion) {
    let (k, n) = (3456, 1024);
    let weight = fill(n * k, 100);
    let bias = fill(n, 101);
    let mut group = c.benchmark_group("linear_3456x1024");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    for batch in BATCHES {
        let x = fill(batch * k, 102);
        let mut out = vec![0.0f32; batch * n];
        group.throughput(Throughput::Elements((2 * batch * k * n) as u64));
        group.bench_function(BenchmarkId::new("relu", batch), |b| {
            b.iter(|| {
                cpu::linear(
                    MatRef::contiguous(&x, batch, k),
                    &weight,
                    Some(&bias),
                    Activation::Relu,
                    MatMut::contiguous(&mut out, batch, n),
                );
                black_box(&out);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, embeddings, linear);
criterion_main!(benches);
