//! Pooled embedding lookups on the CPU: one `embedding_bag` call per table against one
//! `table_batched_embedding_bag` call for all of them, checked equal and timed.
//!
//! ```sh
//! cargo run --release -p streamrec-kernels --example embedding_bag            # batch 1 and 128
//! cargo run --release -p streamrec-kernels --example embedding_bag -- 1,16,512 # other batches
//! ```
//!
//! The tables are 8 x 20,000 rows x 64 (about 41 MB), each bag looks up 20 rows.

use std::hint::black_box;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use streamrec_kernels::{cpu, MatMut, Pooling, TableRef};

const TABLES: usize = 8;
const ROWS: usize = 20_000;
const DIM: usize = 64;
const POOLING: usize = 20;

/// Median time of `f` over enough runs to fill about 200 ms (at least 5), in microseconds.
fn time_us(mut f: impl FnMut()) -> f64 {
    f();
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < 5 || start.elapsed() < Duration::from_millis(200) {
        let t = Instant::now();
        f();
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() {
    let batches: Vec<usize> = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "1,128".into())
        .split(',')
        .map(|b| match b.trim().parse() {
            Ok(n) if n > 0 => n,
            _ => panic!("batch sizes are positive integers separated by commas, not `{b}`"),
        })
        .collect();

    let mut rng = StdRng::seed_from_u64(42);
    let tables: Vec<Vec<f32>> = (0..TABLES)
        .map(|_| {
            (0..ROWS * DIM)
                .map(|_| rng.random_range(-1.0f32..1.0))
                .collect()
        })
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
    println!("{TABLES} tables of {ROWS} x {DIM}, pooling {POOLING}, sum; median of repeated runs");
    println!(
        "{:>6} {:>22} {:>22} {:>8}",
        "batch", "embedding_bag x8 (us)", "table-batched (us)", "ratio"
    );

    for batch in batches {
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
        let width = TABLES * DIM;

        let mut per_table = vec![0.0f32; batch * width];
        let mut batched = vec![0.0f32; batch * width];
        let mut one_by_one = || {
            for (t, table) in tables.iter().enumerate() {
                let view = MatMut::contiguous(&mut per_table, batch, width).col_slice(t * DIM, DIM);
                cpu::embedding_bag(table, ROWS, DIM, idx[t], &offsets, Pooling::Sum, view);
            }
            black_box(&per_table);
        };
        let separate_us = time_us(&mut one_by_one);
        let batched_us = time_us(|| {
            cpu::table_batched_embedding_bag(
                &refs,
                &idx,
                &offs,
                MatMut::contiguous(&mut batched, batch, width),
            );
            black_box(&batched);
        });
        // Same lookups, same summation order: the two kernels agree to the last bit.
        assert_eq!(
            per_table, batched,
            "the two kernels disagree at batch {batch}"
        );
        // And row 0 of table 0 is the sum of the rows its first bag names.
        let expect: Vec<f32> = (0..DIM)
            .map(|d| {
                idx[0][..POOLING]
                    .iter()
                    .map(|&r| tables[0][r as usize * DIM + d])
                    .sum()
            })
            .collect();
        assert_eq!(&per_table[..DIM], &expect[..]);
        println!(
            "{batch:>6} {separate_us:>22.1} {batched_us:>22.1} {:>8.2}",
            separate_us / batched_us
        );
    }
}
