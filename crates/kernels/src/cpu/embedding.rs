//! Embedding-bag kernels: pooled lookups of one table or of many tables in one call.

use super::dense::epilogue;
use super::gemm::Isa;
use std::sync::Mutex;

use super::par::{row_tiles, Parallel};
use crate::types::{Activation, Index, MatMut, Pooling, TableRef};

/// How a lookup runs and what it does to each pooled row before writing it.
#[derive(Clone, Copy, Debug)]
pub struct BagOpts<'a> {
    /// The instruction set of the pooling loop ([`Isa::Avx512`] needs `dim % 16 == 0`,
    /// [`Isa::Avx2`] `dim % 8 == 0`; other dims take the portable loop). The machine must
    /// support it.
    pub isa: Isa,
    /// Added to every pooled row (after a mean's division), one value per column: the bias of a
    /// linear layer folded into the table, applied in the lookup's final write.
    pub bias: Option<&'a [f32]>,
    /// Applied last, as [`bias_act_par`](super::bias_act_par) applies it: `v > 0 ? v : 0` for
    /// ReLU, so a fused lookup gives the bits of a lookup followed by that pass.
    pub act: Activation,
    /// How many lookups ahead rows are prefetched, one row per row added ([`PREFETCH_ROWS`]
    /// by default; 0: none). It changes the speed only, never the result.
    pub ahead: usize,
}

impl Default for BagOpts<'_> {
    /// The fastest path of this machine, no epilogue.
    fn default() -> Self {
        BagOpts::new(Isa::detect())
    }
}

impl<'a> BagOpts<'a> {
    /// Pooling on `isa`, no epilogue.
    pub fn new(isa: Isa) -> Self {
        BagOpts {
            isa,
            bias: None,
            act: Activation::None,
            ahead: PREFETCH_ROWS,
        }
    }

    /// With `act(row + bias)` applied to every pooled row.
    pub fn with_epilogue(self, bias: Option<&'a [f32]>, act: Activation) -> Self {
        BagOpts { bias, act, ..self }
    }

    /// With rows prefetched `ahead` lookups ahead.
    pub fn with_ahead(self, ahead: usize) -> Self {
        BagOpts { ahead, ..self }
    }

    /// Checks the options against a table of `dim` columns.
    fn check(&self, dim: usize) {
        assert!(
            self.isa.is_supported(),
            "embedding_bag: this machine cannot run the {} path",
            self.isa
        );
        if let Some(b) = self.bias {
            assert_eq!(b.len(), dim, "embedding_bag: one bias per column");
        }
    }
}

/// The end of bag `b`: the next offset, or `indices_len` for the last bag.
#[inline(always)]
fn bag_end<I: Index>(offsets: &[I], b: usize, indices_len: usize) -> usize {
    match offsets.get(b + 1) {
        Some(&o) => o.to_usize(),
        None => indices_len,
    }
}

/// Pools the rows of `table` named by `bag` into `out` (length `dim`), then applies `o`'s
/// epilogue.
///
/// Every element is summed the same way on every path: from zero, adding the bag's rows in
/// order (then divided by the count for a mean, then the bias added and the activation
/// applied), so the vector paths give the scalar path's bits. `table` holds at least
/// `rows * dim` elements (checked by the callers).
///
/// While row `j` of the bag is added, the row `ahead[j]` (a lookup further on) is prefetched,
/// so that a steady number of rows is on its way from memory.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn pool_bag<I: Index>(
    o: &BagOpts<'_>,
    table: &[f32],
    rows: usize,
    dim: usize,
    bag: &[I],
    ahead: &[I],
    mode: Pooling,
    out: &mut [f32],
) {
    for &i in bag {
        let r = i.to_usize();
        assert!(
            r < rows,
            "embedding index {} out of range for {rows} rows",
            i.to_i64()
        );
    }
    let mean = (mode == Pooling::Mean && !bag.is_empty()).then_some(bag.len() as f32);
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY (both): the path's instructions are present (`BagOpts::check`); every index was
        // checked to be `< rows` above and `rows * dim <= table.len()`; `out.len() == dim` and
        // the bias, if any, has `dim` values (`BagOpts::check`).
        if o.isa == Isa::Avx512 && dim.is_multiple_of(16) {
            unsafe { pool_bag_avx512(table, rows, dim, bag, ahead, mean, o.bias, o.act, out) };
            return finish_sigmoid(o.act, out);
        }
        if o.isa == Isa::Avx2 && dim.is_multiple_of(8) {
            unsafe { pool_bag_avx2(table, rows, dim, bag, ahead, mean, o.bias, o.act, out) };
            return finish_sigmoid(o.act, out);
        }
    }
    out.fill(0.0);
    for (j, &i) in bag.iter().enumerate() {
        if let Some(&p) = ahead.get(j) {
            prefetch_row(table, rows, dim, p);
        }
        let r = i.to_usize();
        // `r < rows` and `rows * dim <= table.len()` make this slice in range without overflow.
        let src = &table[r * dim..r * dim + dim];
        for (o, &s) in out.iter_mut().zip(src) {
            *o += s;
        }
    }
    if let Some(n) = mean {
        for v in out.iter_mut() {
            *v /= n;
        }
    }
    if let Some(b) = o.bias {
        out.iter_mut().zip(b).for_each(|(v, &b)| *v += b);
    }
    if o.act != Activation::None {
        out.iter_mut().for_each(|v| *v = epilogue(*v, o.act));
    }
}

/// The vector paths add the bias and apply ReLU in registers; a sigmoid is applied after them.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn finish_sigmoid(act: Activation, out: &mut [f32]) {
    if act == Activation::Sigmoid {
        out.iter_mut().for_each(|v| *v = epilogue(*v, act));
    }
}

/// A vector path of [`pool_bag`]: up to eight accumulators of `$lanes` columns at a time, the
/// mean's division, the bias and ReLU (`MAXPS(v, 0)` returns its second operand for NaN and two
/// zeros, as `v > 0 ? v : 0`) applied before the one store of each vector.
macro_rules! pool_bag_simd {
    ($name:ident, $feature:literal, $lanes:literal, $zero:ident, $set1:ident, $load:ident,
     $store:ident, $add:ident, $div:ident, $max:ident) => {
        /// A vector path of [`pool_bag`] (see `pool_bag_simd!`).
        ///
        /// # Safety
        ///
        /// The target feature must be present, `dim` a multiple of the lanes, every index of
        /// `bag` `< rows` with `rows * dim <= table.len()`, `out.len() == dim` and `bias`, if
        /// any, `dim` long (indices of `ahead` may be anything).
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $feature)]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $name<I: Index>(
            table: &[f32],
            rows: usize,
            dim: usize,
            bag: &[I],
            ahead: &[I],
            mean: Option<f32>,
            bias: Option<&[f32]>,
            act: Activation,
            out: &mut [f32],
        ) {
            use std::arch::x86_64::*;
            let base = table.as_ptr();
            let relu = act == Activation::Relu;
            let mut c0 = 0;
            while c0 < dim {
                let nv = ((dim - c0) / $lanes).min(8);
                let mut acc = [$zero(); 8];
                for (j, &i) in bag.iter().enumerate() {
                    if c0 == 0 {
                        if let Some(&p) = ahead.get(j) {
                            prefetch_row(table, rows, dim, p);
                        }
                    }
                    let row = base.add(i.to_usize() * dim + c0);
                    for (v, a) in acc.iter_mut().enumerate().take(nv) {
                        *a = $add(*a, $load(row.add(v * $lanes)));
                    }
                }
                for (v, a) in acc.iter().enumerate().take(nv) {
                    let c = c0 + v * $lanes;
                    let mut r = match mean {
                        Some(n) => $div(*a, $set1(n)),
                        None => *a,
                    };
                    if let Some(b) = bias {
                        r = $add(r, $load(b.as_ptr().add(c)));
                    }
                    if relu {
                        r = $max(r, $zero());
                    }
                    $store(out.as_mut_ptr().add(c), r);
                }
                c0 += nv * $lanes;
            }
        }
    };
}

pool_bag_simd!(
    pool_bag_avx512,
    "avx512f",
    16,
    _mm512_setzero_ps,
    _mm512_set1_ps,
    _mm512_loadu_ps,
    _mm512_storeu_ps,
    _mm512_add_ps,
    _mm512_div_ps,
    _mm512_max_ps
);
pool_bag_simd!(
    pool_bag_avx2,
    "avx2,fma",
    8,
    _mm256_setzero_ps,
    _mm256_set1_ps,
    _mm256_loadu_ps,
    _mm256_storeu_ps,
    _mm256_add_ps,
    _mm256_div_ps,
    _mm256_max_ps
);

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
    out: MatMut<'_>,
) {
    embedding_bag_opts(
        table,
        rows,
        dim,
        indices,
        offsets,
        mode,
        out,
        &BagOpts::default(),
    );
}

/// [`embedding_bag`] with its options: the ISA path and an epilogue applied to each pooled row.
///
/// # Panics
///
/// As [`embedding_bag`], and if the machine cannot run `opts.isa` or the bias is not `dim` long.
#[allow(clippy::too_many_arguments)]
pub fn embedding_bag_opts<I: Index>(
    table: &[f32],
    rows: usize,
    dim: usize,
    indices: &[I],
    offsets: &[I],
    mode: Pooling,
    mut out: MatMut<'_>,
    opts: &BagOpts<'_>,
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
    opts.check(dim);
    let mut rows_out = out.row_iter_mut();
    pool_table(
        opts,
        &table[..size],
        rows,
        dim,
        indices,
        offsets,
        mode,
        |_| rows_out.next().expect("one output row per bag"),
    );
}

/// Pools every bag of one table in order into the row `row(b)` hands out for bag `b`, keeping
/// the rows of the next few lookups (across bag boundaries) on their way from memory while a
/// bag is pooled: random row gathers are bound by memory latency. The caller has checked the
/// shapes, and `table` holds exactly `rows * dim` elements.
#[allow(clippy::too_many_arguments)]
fn pool_table<'o, I: Index>(
    opts: &BagOpts<'_>,
    table: &[f32],
    rows: usize,
    dim: usize,
    indices: &[I],
    offsets: &[I],
    mode: Pooling,
    mut row: impl FnMut(usize) -> &'o mut [f32],
) {
    let n = indices.len();
    // The first rows are fetched up front; from then on each row added fetches the row
    // `opts.ahead` lookups later.
    let first = offsets.first().map_or(0, |o| o.to_usize()).min(n);
    let d = opts.ahead;
    for &i in &indices[first..(first + d).min(n)] {
        prefetch_row(table, rows, dim, i);
    }
    for b in 0..offsets.len() {
        let start = offsets[b].to_usize();
        let end = bag_end(offsets, b, n);
        let ahead = &indices[(start + d).min(n)..(end + d).min(n)];
        pool_bag(
            opts,
            table,
            rows,
            dim,
            &indices[start..end],
            ahead,
            mode,
            row(b),
        );
    }
}

/// How many lookups ahead rows are prefetched, one row per row added (measured on a 2-core Xeon
/// VM, streamrec-26 at batch 1024 over 26 tables of 100,000 x 128: 4 to 16 rows ahead were alike;
/// one row fetched per row added took the lookups from 28.9 to 24.9 ms against fetching a
/// whole bag ahead at its start, which overran the core's line fill buffers). On a 2-core Zen 5
/// EPYC VM, four runs of the kernels bench (rounds interleaved with 8 ahead, AVX-512 and AVX2
/// paths): on one thread 16 ahead took 0.86-0.97x of 8's time at batch 16 and 0.75-1.03x at
/// 1024, no difference at 128, and on two threads no difference beyond the noise floors (a fifth
/// run with 16 as the default: 8 ahead no different within its 2-81% floors); its gather
/// microbenchmark peaked at 16 ahead in four runs of five.
pub const PREFETCH_ROWS: usize = 16;

/// Hints the CPU to fetch a table row into cache; out-of-range indices are ignored (the pooling
/// itself reports them). `table` holds at least `rows * dim` elements (the callers' check).
#[inline(always)]
fn prefetch_row<I: Index>(table: &[f32], rows: usize, dim: usize, i: I) {
    let r = i.to_usize();
    if r >= rows {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        // One hint per 64-byte cache line of the row, without slicing: this runs once per
        // lookup in the gather loop, where a bounds check per row measured 3% of the lookups.
        let row = table.as_ptr().wrapping_add(r * dim);
        let mut line = 0;
        while line < dim {
            // SAFETY: prefetching is a hint that never faults, and never dereferences the
            // pointer, which lies inside the row (`r < rows`, `rows * dim <= table.len()`).
            unsafe {
                std::arch::x86_64::_mm_prefetch(
                    row.wrapping_add(line).cast::<i8>(),
                    std::arch::x86_64::_MM_HINT_T0,
                );
            }
            line += 16;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (table, dim);
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
    out: MatMut<'_>,
) {
    table_batched_embedding_bag_isa(Isa::detect(), tables, indices, offsets, out);
}

/// [`table_batched_embedding_bag`] on the `isa` path.
///
/// # Panics
///
/// As [`table_batched_embedding_bag`], and if the machine cannot run `isa`.
pub fn table_batched_embedding_bag_isa<I: Index>(
    isa: Isa,
    tables: &[TableRef<'_>],
    indices: &[&[I]],
    offsets: &[&[I]],
    mut out: MatMut<'_>,
) {
    check_tables(tables, indices, offsets, &out);
    let opts = BagOpts::new(isa);
    opts.check(0);
    // Table-major order: each table's bags are pooled together, so the working set (rows and
    // page-table entries) is one table at a time.
    let mut c0 = 0;
    for ((table, idx), offs) in tables.iter().zip(indices).zip(offsets) {
        let mut seg = out.reborrow().col_slice(c0, table.dim);
        c0 += table.dim;
        let mut rows_out = seg.row_iter_mut();
        let data = &table.data[..table.rows * table.dim];
        pool_table(
            &opts,
            data,
            table.rows,
            table.dim,
            idx,
            offs,
            table.mode,
            |_| rows_out.next().expect("one output row per bag"),
        );
    }
}

/// The shape checks of a table-batched call (see [`table_batched_embedding_bag`]'s panics).
fn check_tables<I: Index>(
    tables: &[TableRef<'_>],
    indices: &[&[I]],
    offsets: &[&[I]],
    out: &MatMut<'_>,
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
}

/// Lookups below this many (indices) run on the calling thread: a tile hand-off costs more.
const PAR_MIN_LOOKUPS: usize = 256;

/// [`embedding_bag_opts`] with the bags split into row tiles that `par` runs (random row
/// gathers are bound by memory latency, which every core adds to). Bit-identical to
/// [`embedding_bag_opts`].
///
/// # Panics
///
/// Panics under the conditions of [`embedding_bag_opts`].
#[allow(clippy::too_many_arguments)]
pub fn embedding_bag_par<I: Index>(
    table: &[f32],
    rows: usize,
    dim: usize,
    indices: &[I],
    offsets: &[I],
    mode: Pooling,
    out: MatMut<'_>,
    par: &dyn Parallel,
    opts: &BagOpts<'_>,
) {
    let width = par.width();
    if width <= 1 || indices.len() < PAR_MIN_LOOKUPS || offsets.len() < 2 {
        return embedding_bag_opts(table, rows, dim, indices, offsets, mode, out, opts);
    }
    assert_eq!(
        out.rows,
        offsets.len(),
        "embedding_bag: out rows must equal the number of bags"
    );
    let tiles = row_tiles(out, width * 2);
    par.for_each(tiles.len(), &|t| {
        let (b0, view) = tiles[t]
            .lock()
            .expect("tile slot")
            .take()
            .expect("each tile runs once");
        let b1 = b0 + view.rows;
        let start = offsets[b0].to_usize();
        let end = bag_end(offsets, b1 - 1, indices.len());
        assert!(start <= end, "embedding_bag: offsets must not decrease");
        // The tile's bags as a call of their own: its offsets index the same indices, which
        // end where its last bag does.
        embedding_bag_opts(
            table,
            rows,
            dim,
            &indices[..end],
            &offsets[b0..b1],
            mode,
            view,
            opts,
        );
    });
}

/// [`table_batched_embedding_bag_isa`] with the tables spread over `par`'s workers (each
/// table's bags pooled by one task). Bit-identical to [`table_batched_embedding_bag_isa`].
///
/// # Panics
///
/// Panics under the conditions of [`table_batched_embedding_bag_isa`].
pub fn table_batched_embedding_bag_par<I: Index>(
    isa: Isa,
    tables: &[TableRef<'_>],
    indices: &[&[I]],
    offsets: &[&[I]],
    mut out: MatMut<'_>,
    par: &dyn Parallel,
) {
    let lookups: usize = indices.iter().map(|i| i.len()).sum();
    if par.width() <= 1 || tables.len() < 2 || lookups < PAR_MIN_LOOKUPS {
        return table_batched_embedding_bag_isa(isa, tables, indices, offsets, out);
    }
    check_tables(tables, indices, offsets, &out);
    let opts = BagOpts::new(isa);
    opts.check(0);
    let (rows, ld) = (out.rows, out.ld);
    let starts: Vec<usize> = tables
        .iter()
        .scan(0, |c, t| {
            let c0 = *c;
            *c += t.dim;
            Some(c0)
        })
        .collect();
    let base = OutPtr(out.reborrow().data.as_mut_ptr());
    let base = &base;
    par.for_each(tables.len(), &|t| {
        let table = &tables[t];
        let data = &table.data[..table.rows * table.dim];
        pool_table(
            &opts,
            data,
            table.rows,
            table.dim,
            indices[t],
            offsets[t],
            table.mode,
            |b| {
                assert!(b < rows, "one output row per bag");
                // SAFETY: row `b`, columns [starts[t], + dim) of `out` (checked to be `rows x
                // total` at stride `ld`): only this task writes them, no other slice of them
                // exists, and `for_each` returns only when every task is done.
                unsafe { std::slice::from_raw_parts_mut(base.0.add(b * ld + starts[t]), table.dim) }
            },
        );
    });
}

/// [`table_batched_embedding_bag_par`] with each table's pooled rows written to a view of its
/// own, with options of its own (`outs[t]`, e.g. a folded layer's bias and activation, or
/// columns of a wider buffer), the tables spread over `par`'s workers. Each table's rows are
/// the bits [`embedding_bag_opts`] gives with the same options.
///
/// # Panics
///
/// Panics if `indices`, `offsets` or `outs` do not have one entry per table, or under the
/// conditions of [`embedding_bag_opts`] for any table.
pub fn table_batched_embedding_bag_into<I: Index>(
    tables: &[TableRef<'_>],
    indices: &[&[I]],
    offsets: &[&[I]],
    outs: Vec<(MatMut<'_>, BagOpts<'_>)>,
    par: &dyn Parallel,
) {
    let n = tables.len();
    assert!(
        indices.len() == n && offsets.len() == n && outs.len() == n,
        "table_batched_embedding_bag_into: one index list, offset list and output per table"
    );
    let lookups: usize = indices.iter().map(|i| i.len()).sum();
    let par: &dyn Parallel = if lookups < PAR_MIN_LOOKUPS {
        &super::par::Sequential
    } else {
        par
    };
    let slots: Vec<_> = outs.into_iter().map(|o| Mutex::new(Some(o))).collect();
    par.for_each(n, &|t| {
        let (out, opts) = slots[t]
            .lock()
            .expect("table slot")
            .take()
            .expect("each table runs once");
        let table = &tables[t];
        embedding_bag_opts(
            table.data, table.rows, table.dim, indices[t], offsets[t], table.mode, out, &opts,
        );
    });
}

/// The output of a table-batched call, shared by its tasks (each writes its own columns).
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint elements through it, and the call outlives them.
unsafe impl Sync for OutPtr {}
