//! Embedding-bag kernels: pooled lookups of one table or of many tables in one call.

use crate::types::{Index, MatMut, Pooling, TableRef};

/// The end of bag `b`: the next offset, or `indices_len` for the last bag.
#[inline(always)]
fn bag_end<I: Index>(offsets: &[I], b: usize, indices_len: usize) -> usize {
    match offsets.get(b + 1) {
        Some(&o) => o.to_usize(),
        None => indices_len,
    }
}

/// Pools the rows of `table` named by `bag` into `out` (length `dim`).
///
/// `table` holds at least `rows * dim` elements (checked by the callers).
#[inline(always)]
fn pool_bag<I: Index>(
    table: &[f32],
    rows: usize,
    dim: usize,
    bag: &[I],
    mode: Pooling,
    out: &mut [f32],
) {
    out.fill(0.0);
    for &i in bag {
        let r = i.to_usize();
        assert!(
            r < rows,
            "embedding index {} out of range for {rows} rows",
            i.to_i64()
        );
        // `r < rows` and `rows * dim <= table.len()` make this slice in range without overflow.
        let src = &table[r * dim..r * dim + dim];
        for (o, &s) in out.iter_mut().zip(src) {
            *o += s;
        }
    }
    if mode == Pooling::Mean && !bag.is_empty() {
        let n = bag.len() as f32;
        for o in out.iter_mut() {
            *o /= n;
        }
    }
}

/// Pooled embedding lookup of one table (PyTorch `EmbeddingBag` with `include_last_offset=False`).
///
/// `table` is `[rows, dim]` row-major. Bag `b` (for `b` in `0..offsets.len()`) covers
/// `indices[offsets[b]..offsets[b + 1]]`, the last bag ending at `indices.len()`; its pooled row
/// goes to row `b` of `out`, which must be `[offsets.len(), dim]`. An empty bag gives zeros.
///
/// # Panics
///
/// Panics if the shapes disagree, if `table` is shorter than `rows * dim`, if the offsets are not
/// non-decreasing and within `indices`, or if an index is negative or `>= rows`. Callers validate
/// indices and offsets beforehand; the checks here only turn a caller bug into a panic.
pub fn embedding_bag<I: Index>(
    table: &[f32],
    rows: usize,
    dim: usize,
    indices: &[I],
    offsets: &[I],
    mode: Pooling,
    mut out: MatMut<'_>,
) {
    assert_eq!(
        out.rows,
        offsets.len(),
        "embedding_bag: out rows must equal the number of bags"
    );
    assert_eq!(out.cols, dim, "embedding_bag: out cols must equal dim");
    let size = rows
        .checked_mul(dim)
        .expect("embedding_bag: table size overflows usize");
    assert!(
        table.len() >= size,
        "embedding_bag: table has {} elements, needs {size}",
        table.len()
    );
    let table = &table[..size];
    let mut ahead = 0usize;
    for (b, out_row) in out.row_iter_mut().enumerate() {
        let start = offsets[b].to_usize();
        let end = bag_end(offsets, b, indices.len());
        // Keep the rows of the next few lookups (across bag boundaries) on their way from
        // memory while this bag is pooled: random row gathers are bound by memory latency.
        let want = (end + PREFETCH_ROWS).min(indices.len());
        while ahead < want {
            prefetch_row(table, rows, dim, indices[ahead]);
            ahead += 1;
        }
        pool_bag(table, rows, dim, &indices[start..end], mode, out_row);
    }
}

/// How many lookups ahead rows are prefetched.
const PREFETCH_ROWS: usize = 16;

/// Hints the CPU to fetch a table row into cache; out-of-range indices are ignored (the pooling
/// itself reports them).
#[inline(always)]
fn prefetch_row<I: Index>(table: &[f32], rows: usize, dim: usize, i: I) {
    let r = i.to_usize();
    if r >= rows {
        return;
    }
    let row = &table[r * dim..r * dim + dim];
    #[cfg(target_arch = "x86_64")]
    {
        // One hint per 64-byte cache line of the row.
        for line in row.chunks(16) {
            // SAFETY: prefetching is a hint that never faults; the pointer is inside `row`.
            unsafe {
                std::arch::x86_64::_mm_prefetch(
                    line.as_ptr().cast::<i8>(),
                    std::arch::x86_64::_MM_HINT_T0,
                );
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = row;
}

/// Pooled embedding lookups of all `tables` in one call.
///
/// Table `t` uses `indices[t]` and `offsets[t]` with the convention of [`embedding_bag`], and its
/// pooled rows go to columns `[d_0 + ... + d_{t-1}, + d_t)` of `out`, which must be
/// `[B, sum of dims]` where every `offsets[t]` has `B` entries.
///
/// # Panics
///
/// Panics under the same conditions as [`embedding_bag`], for any table, or if `indices` or
/// `offsets` do not have one entry per table.
pub fn table_batched_embedding_bag<I: Index>(
    tables: &[TableRef<'_>],
    indices: &[&[I]],
    offsets: &[&[I]],
    mut out: MatMut<'_>,
) {
    assert_eq!(
        indices.len(),
        tables.len(),
        "table_batched_embedding_bag: one index list per table"
    );
    assert_eq!(
        offsets.len(),
        tables.len(),
        "table_batched_embedding_bag: one offset list per table"
    );
    let mut total = 0usize;
    for (t, (table, offs)) in tables.iter().zip(offsets).enumerate() {
        assert_eq!(
            offs.len(),
            out.rows,
            "table_batched_embedding_bag: table {t} has a wrong bag count"
        );
        let size = table
            .rows
            .checked_mul(table.dim)
            .expect("table size overflows usize");
        assert!(
            table.data.len() >= size,
            "table_batched_embedding_bag: table {t} has {} elements, needs {size}",
            table.data.len()
        );
        total += table.dim;
    }
    assert_eq!(
        out.cols, total,
        "table_batched_embedding_bag: out cols must equal the sum of dims"
    );

    // Table-major order: each table's bags are pooled together, so the working set (rows and
    // page-table entries) is one table at a time.
    let mut c0 = 0;
    for ((table, idx), offs) in tables.iter().zip(indices).zip(offsets) {
        let mut seg = out.reborrow().col_slice(c0, table.dim);
        c0 += table.dim;
        for (b, out_row) in seg.row_iter_mut().enumerate() {
            let bag = &idx[offs[b].to_usize()..bag_end(offs, b, idx.len())];
            pool_bag(table.data, table.rows, table.dim, bag, table.mode, out_row);
        }
    }
}
