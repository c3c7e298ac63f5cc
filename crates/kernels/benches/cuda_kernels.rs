//! Criterion benchmarks of the CUDA embedding kernels at the docs/h200.md shapes.
//!
//! 26 tables of 100,000 x 64 (one allocation, 666 MB), pooling 20, 32-bit indices, batch 1 and
//! 4096: 26 `embedding_bag` launches into column slices of one output on one stream, the same
//! 26 launches dealt to 4 streams forked from and joined back to the first with events, and one
//! table-batched launch. Every iteration ends with a stream synchronise, inside the timed region.
//! Without a CUDA device (or without NVRTC) the benchmarks print "skipped: no CUDA device" and
//! do nothing.

mod common;
use common::fill;

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use cudarc::driver::{CudaContext, CudaEvent, CudaSlice, CudaStream, DevicePtr};
use streamrec_kernels::cuda::{
    self as kc, cudarc, tbe_meta, CudaKernels, DevPtr, EmbeddingBagArgs, IndexWidth, TbeArgs,
    TbeTable, PACKET_HEADER_WORDS,
};

const TABLES: usize = 26;
const ROWS: usize = 100_000;
const DIM: usize = 64;
const POOLING: usize = 20;
const BATCHES: [usize; 2] = [1, 4096];
const FORK_STREAMS: usize = 4;

/// An input packet (layout in kernels/embedding.cu) with `batch` bags of `POOLING` random rows
/// per table, 32-bit indices.
fn packet(batch: usize, seed: u64) -> Vec<i32> {
    let head = PACKET_HEADER_WORDS + (batch + 1) * TABLES;
    let start = head.div_ceil(2) * 2;
    let per_table = batch * POOLING;
    let mut p = vec![0i32; start + TABLES * per_table];
    p[0] = batch as i32;
    for b in 0..=batch {
        for t in 0..TABLES {
            p[PACKET_HEADER_WORDS + b * TABLES + t] = (start + t * per_table + b * POOLING) as i32;
        }
    }
    let mut s = seed | 1;
    for v in &mut p[start..] {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        *v = (s % ROWS as u64) as i32;
    }
    p
}

fn ptr<T>(s: &CudaSlice<T>, stream: &CudaStream) -> DevPtr {
    let (p, _guard) = s.device_ptr(stream);
    p
}

struct Setup {
    kernels: Arc<CudaKernels>,
    streams: Vec<Arc<CudaStream>>,
    fork: CudaEvent,
    joins: Vec<CudaEvent>,
    tables: DevPtr,
    _tables: CudaSlice<f32>,
}

fn setup() -> Result<Setup, String> {
    kc::cuda_available()?;
    kc::nvrtc_available()?;
    let ctx = CudaContext::new(0).map_err(|e| e.to_string())?;
    // SAFETY: no buffer exists yet; the benchmark orders streams itself with events.
    unsafe { ctx.disable_event_tracking() };
    let kernels = CudaKernels::load(&ctx).map_err(|e| e.to_string())?;
    let streams = (0..FORK_STREAMS)
        .map(|_| ctx.new_stream())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let s0 = &streams[0];
    let host = fill(TABLES * ROWS * DIM, 7);
    let tables = s0.clone_htod(&host).map_err(|e| e.to_string())?;
    s0.synchronize().map_err(|e| e.to_string())?;
    let event = || ctx.new_event(None).map_err(|e| e.to_string());
    Ok(Setup {
        kernels,
        fork: event()?,
        joins: (0..FORK_STREAMS)
            .map(|_| event())
            .collect::<Result<_, _>>()?,
        tables: ptr(&tables, s0),
        _tables: tables,
        streams,
    })
}

fn embeddings(c: &mut Criterion) {
    let su = match setup() {
        Ok(s) => s,
        Err(e) => {
            println!("skipped: no CUDA device ({e})");
            return;
        }
    };
    let s0 = Arc::clone(&su.streams[0]);
    let table = |t: usize| su.tables + (t * ROWS * DIM * 4) as u64;
    let meta: Vec<TbeTable> = (0..TABLES)
        .map(|t| TbeTable {
            table: table(t),
            dim: DIM,
            out_col: t * DIM,
            slot: t,
            mean: false,
            vec: true,
        })
        .collect();
    let meta = s0
        .clone_htod(&tbe_meta(&meta).expect("metadata"))
        .expect("metadata upload");
    let meta_ptr = ptr(&meta, &s0);

    let mut group = c.benchmark_group("cuda_embedding_26x100k_d64_p20");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for batch in BATCHES {
        let pk = s0
            .clone_htod(&packet(batch, batch as u64))
            .expect("packet upload");
        let out = s0.alloc_zeros::<f32>(batch * TABLES * DIM).expect("output");
        s0.synchronize().expect("sync");
        let (pk_ptr, out_ptr) = (ptr(&pk, &s0), ptr(&out, &s0));
        let args = |t: usize| EmbeddingBagArgs {
            table: table(t),
            dim: DIM,
            vec: true,
            packet: pk_ptr,
            slots: TABLES,
            slot: t,
            batch,
            mean: false,
            out: out_ptr + (t * DIM * 4) as u64,
            out_ld: TABLES * DIM,
            index: IndexWidth::I32,
        };
        group.throughput(Throughput::Elements(batch as u64));

        group.bench_with_input(
            BenchmarkId::new("26_launches_1_stream", batch),
            &batch,
            |b, _| {
                b.iter(|| {
                    for t in 0..TABLES {
                        // SAFETY: table t is a live 100k x 64 region of the tables allocation, the
                        // packet holds `batch` in-range bags per table, and the output is
                        // `[batch, 26 x 64]` with table t at column t x 64.
                        unsafe { su.kernels.embedding_bag(&s0, &args(t)) }.expect("launch");
                    }
                    s0.synchronize().expect("sync");
                })
            },
        );

        group.bench_with_input(
            BenchmarkId::new(format!("26_launches_{FORK_STREAMS}_streams"), batch),
            &batch,
            |b, _| {
                b.iter(|| {
                    su.fork.record(&s0).expect("record");
                    for s in &su.streams[1..] {
                        s.wait(&su.fork).expect("wait");
                    }
                    for t in 0..TABLES {
                        let s = &su.streams[t % FORK_STREAMS];
                        // SAFETY: as above; each table writes its own columns.
                        unsafe { su.kernels.embedding_bag(s, &args(t)) }.expect("launch");
                    }
                    for (s, e) in su.streams.iter().zip(&su.joins).skip(1) {
                        e.record(s).expect("record");
                        s0.wait(e).expect("wait");
                    }
                    s0.synchronize().expect("sync");
                })
            },
        );

        group.bench_with_input(BenchmarkId::new("table_batched", batch), &batch, |b, _| {
            let a = TbeArgs {
                meta: meta_ptr,
                tables: TABLES,
                max_lanes: DIM / 4,
                packet: pk_ptr,
                slots: TABLES,
                batch,
                out: out_ptr,
                out_ld: TABLES * DIM,
                index: IndexWidth::I32,
            };
            b.iter(|| {
                // SAFETY: the metadata lists the 26 live tables at columns t x 64 of the
                // `[batch, 26 x 64]` output; the packet holds in-range bags for every table.
                unsafe { su.kernels.tbe(&s0, black_box(&a)) }.expect("launch");
                s0.synchronize().expect("sync");
            })
        });
    }
    group.finish();
}

criterion_group!(benches, embeddings);
criterion_main!(benches);
