//! CPU kernels against plain f64 reference implementations on random inputs.
//!
//! Inputs are uniform in [-1, 1] from fixed seeds; outputs are poisoned with NaN before each run
//! so an unwritten element fails, and strided outputs are column slices of wider NaN buffers
//! whose columns outside the slice must stay NaN.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use streamrec_kernels::cpu;
use streamrec_kernels::{Activation, Index, MatMut, MatRef, Pooling, TableRef};

fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

fn uniform(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..=1.0)).collect()
}

/// A random matrix stored as columns `[c0, c0 + cols)` of a wider buffer (or contiguous when not
/// strided); the padding is random too, so reading the wrong columns changes the result.
struct Input {
    buf: Vec<f32>,
    rows: usize,
    cols: usize,
    ld: usize,
    c0: usize,
}

impl Input {
    fn new(rng: &mut StdRng, rows: usize, cols: usize, strided: bool) -> Self {
        let (c0, ld) = if strided { (3, cols + 5) } else { (0, cols) };
        let buf = uniform(rng, rows * ld);
        Self {
            buf,
            rows,
            cols,
            ld,
            c0,
        }
    }

    fn view(&self) -> MatRef<'_> {
        MatRef::new(&self.buf[self.c0..], self.rows, self.cols, self.ld)
    }

    fn at(&self, r: usize, c: usize) -> f64 {
        f64::from(self.buf[r * self.ld + self.c0 + c])
    }
}

/// An output region inside a NaN-filled buffer.
struct Output {
    buf: Vec<f32>,
    rows: usize,
    cols: usize,
    ld: usize,
    c0: usize,
}

impl Output {
    fn new(rows: usize, cols: usize, strided: bool) -> Self {
        let (c0, ld) = if strided { (2, cols + 7) } else { (0, cols) };
        Self {
            buf: vec![f32::NAN; rows * ld],
            rows,
            cols,
            ld,
            c0,
        }
    }

    fn view(&mut self) -> MatMut<'_> {
        MatMut::new(&mut self.buf[self.c0..], self.rows, self.cols, self.ld)
    }

    /// Checks the region against `want` (row-major `rows x cols`) with
    /// `|got - want| <= atol + rtol * |want|`, checks that everything outside the region is still
    /// NaN, and returns the largest absolute error.
    fn check(&self, want: &[f64], atol: f64, rtol: f64, what: &str) -> f64 {
        assert_eq!(want.len(), self.rows * self.cols);
        let mut max_err = 0.0f64;
        for (i, &x) in self.buf.iter().enumerate() {
            let (r, c) = (i / self.ld, i % self.ld);
            if c < self.c0 || c >= self.c0 + self.cols {
                assert!(
                    x.is_nan(),
                    "{what}: element ({r}, {c}) outside the output region was written"
                );
                continue;
            }
            let w = want[r * self.cols + c - self.c0];
            let err = (f64::from(x) - w).abs();
            assert!(
                err <= atol + rtol * w.abs(),
                "{what}: ({r}, {}) is {x}, want {w} (error {err}, atol {atol}, rtol {rtol})",
                c - self.c0
            );
            max_err = max_err.max(err);
        }
        max_err
    }
}

/// Random bag lengths: mostly short, with empty bags (always the first and the last when there
/// are at least three bags) and some long bags.
fn bag_lengths(rng: &mut StdRng, bags: usize) -> Vec<usize> {
    (0..bags)
        .map(|b| {
            if bags >= 3 && (b == 0 || b == bags - 1) {
                return 0;
            }
            match rng.random_range(0..10) {
                0 => 0,
                1 => rng.random_range(50..200),
                _ => rng.random_range(1..8),
            }
        })
        .collect()
}

/// Random valid indices and offsets (PyTorch `include_last_offset=False`).
fn random_bags<I: TryFrom<usize>>(rng: &mut StdRng, rows: usize, bags: usize) -> (Vec<I>, Vec<I>)
where
    I::Error: std::fmt::Debug,
{
    let mut indices = Vec::new();
    let mut offsets = Vec::new();
    for len in bag_lengths(rng, bags) {
        offsets.push(I::try_from(indices.len()).unwrap());
        for _ in 0..len {
            indices.push(I::try_from(rng.random_range(0..rows)).unwrap());
        }
    }
    (indices, offsets)
}

/// Reference pooled lookups, `[offsets.len(), dim]` row-major.
fn embedding_bag_ref<I: Index>(
    table: &[f32],
    dim: usize,
    indices: &[I],
    offsets: &[I],
    mode: Pooling,
) -> Vec<f64> {
    let mut out = vec![0.0f64; offsets.len() * dim];
    for b in 0..offsets.len() {
        let start = offsets[b].to_i64() as usize;
        let end = if b + 1 < offsets.len() {
            offsets[b + 1].to_i64() as usize
        } else {
            indices.len()
        };
        for &i in &indices[start..end] {
            let r = i.to_i64() as usize;
            for c in 0..dim {
                out[b * dim + c] += f64::from(table[r * dim + c]);
            }
        }
        if mode == Pooling::Mean && end > start {
            for c in 0..dim {
                out[b * dim + c] /= (end - start) as f64;
            }
        }
    }
    out
}

const EMB_SHAPES: [(usize, usize, usize); 6] = [
    (1, 1, 1),
    (7, 3, 1),
    (50, 16, 5),
    (1000, 128, 32),
    (13, 5, 17),
    (300, 64, 1),
];

fn embedding_bag_case<I: Index + TryFrom<usize>>(seed: u64)
where
    I::Error: std::fmt::Debug,
{
    let mut rng = rng(seed);
    // Tolerance: relative-or-absolute 1e-5 (sums of at most 200 values in [-1, 1]).
    let tol = 1e-5;
    let mut max_err = 0.0f64;
    for &(rows, dim, bags) in &EMB_SHAPES {
        for mode in [Pooling::Sum, Pooling::Mean] {
            for strided in [false, true] {
                let table = uniform(&mut rng, rows * dim);
                let (indices, offsets) = random_bags::<I>(&mut rng, rows, bags);
                let mut out = Output::new(bags, dim, strided);
                cpu::embedding_bag(&table, rows, dim, &indices, &offsets, mode, out.view());
                let want = embedding_bag_ref(&table, dim, &indices, &offsets, mode);
                let what = format!(
                    "embedding_bag rows={rows} dim={dim} B={bags} {mode:?} strided={strided}"
                );
                max_err = max_err.max(out.check(&want, tol, tol, &what));
            }
        }
    }
    println!(
        "embedding_bag<{}>: max abs error {max_err:e} (tolerance {tol:e} + {tol:e} relative)",
        std::any::type_name::<I>()
    );
}

#[test]
fn embedding_bag_i32_matches_reference() {
    embedding_bag_case::<i32>(1);
}

#[test]
fn embedding_bag_i64_matches_reference() {
    embedding_bag_case::<i64>(2);
}

#[test]
fn embedding_bag_empty_bags_give_zeros() {
    let table = [1.0f32, 2.0, 3.0, 4.0];
    let indices = [1i64, 0];
    let offsets = [0i64, 0, 2, 2];
    for mode in [Pooling::Sum, Pooling::Mean] {
        let mut out = Output::new(4, 2, true);
        cpu::embedding_bag(&table, 2, 2, &indices, &offsets, mode, out.view());
        let pooled = if mode == Pooling::Sum {
            [4.0, 6.0]
        } else {
            [2.0, 3.0]
        };
        let want = [0.0, 0.0, pooled[0], pooled[1], 0.0, 0.0, 0.0, 0.0];
        out.check(&want, 0.0, 0.0, "embedding_bag empty bags");
    }
}

#[test]
fn embedding_bag_bad_index_panics() {
    let table = vec![0.5f32; 6];
    for bad in [3i64, -1] {
        let result = std::panic::catch_unwind(|| {
            let mut out = vec![0.0f32; 2];
            cpu::embedding_bag(
                &table,
                3,
                2,
                &[0i64, bad],
                &[0i64],
                Pooling::Sum,
                MatMut::contiguous(&mut out, 1, 2),
            );
        });
        assert!(result.is_err(), "index {bad} must panic");
    }
}

fn table_batched_case<I: Index + TryFrom<usize>>(seed: u64)
where
    I::Error: std::fmt::Debug,
{
    let mut rng = rng(seed);
    // Tolerance: relative-or-absolute 1e-5, as for embedding_bag.
    let tol = 1e-5;
    let mut max_err = 0.0f64;
    let configs: [&[(usize, usize)]; 4] = [
        &[(1, 1)],
        &[(10, 4), (100, 16), (3, 1)],
        &[(500, 128); 5],
        &[(7, 3), (64, 8), (1, 5), (200, 32)],
    ];
    for (k, &shapes) in configs.iter().enumerate() {
        for bags in [1, 9, 40] {
            let strided = k % 2 == 1 || bags == 9;
            let datas: Vec<Vec<f32>> = shapes
                .iter()
                .map(|&(r, d)| uniform(&mut rng, r * d))
                .collect();
            let modes: Vec<Pooling> = (0..shapes.len())
                .map(|t| {
                    if (t + k) % 2 == 0 {
                        Pooling::Sum
                    } else {
                        Pooling::Mean
                    }
                })
                .collect();
            let tables: Vec<TableRef<'_>> = shapes
                .iter()
                .zip(&datas)
                .zip(&modes)
                .map(|((&(rows, dim), data), &mode)| TableRef {
                    data,
                    rows,
                    dim,
                    mode,
                })
                .collect();
            let bags_per_table: Vec<(Vec<I>, Vec<I>)> = shapes
                .iter()
                .map(|&(rows, _)| random_bags(&mut rng, rows, bags))
                .collect();
            let indices: Vec<&[I]> = bags_per_table.iter().map(|(i, _)| i.as_slice()).collect();
            let offsets: Vec<&[I]> = bags_per_table.iter().map(|(_, o)| o.as_slice()).collect();
            let total: usize = shapes.iter().map(|&(_, d)| d).sum();

            let mut out = Output::new(bags, total, strided);
            cpu::table_batched_embedding_bag(&tables, &indices, &offsets, out.view());

            let refs: Vec<Vec<f64>> = tables
                .iter()
                .zip(&bags_per_table)
                .map(|(t, (i, o))| embedding_bag_ref(t.data, t.dim, i, o, t.mode))
                .collect();
            let mut want = Vec::with_capacity(bags * total);
            for b in 0..bags {
                for (t, r) in tables.iter().zip(&refs) {
                    want.extend_from_slice(&r[b * t.dim..(b + 1) * t.dim]);
                }
            }
            let what = format!("table_batched config={k} B={bags} strided={strided}");
            max_err = max_err.max(out.check(&want, tol, tol, &what));

            // The batched kernel must agree exactly with one embedding_bag call per table writing
            // into the matching column slice.
            let mut per_table = vec![f32::NAN; bags * total];
            let mut c0 = 0;
            for (t, (i, o)) in tables.iter().zip(&bags_per_table) {
                let view = MatMut::contiguous(&mut per_table, bags, total).col_slice(c0, t.dim);
                cpu::embedding_bag(t.data, t.rows, t.dim, i, o, t.mode, view);
                c0 += t.dim;
            }
            let batched: Vec<f32> = out.view().as_ref().row_iter().flatten().copied().collect();
            assert_eq!(
                batched, per_table,
                "{what}: differs from per-table embedding_bag"
            );
        }
    }
    println!(
        "table_batched_embedding_bag<{}>: max abs error {max_err:e} (tolerance {tol:e} + {tol:e} relative)",
        std::any::type_name::<I>()
    );
}

#[test]
fn table_batched_embedding_bag_i32_matches_reference() {
    table_batched_case::<i32>(3);
}

#[test]
fn table_batched_embedding_bag_i64_matches_reference() {
    table_batched_case::<i64>(4);
}

fn sigmoid_f64(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

#[test]
fn linear_matches_reference() {
    let mut rng = rng(5);
    let shapes = [
        (1, 1, 1),
        (1, 17, 5),
        (3, 64, 33),
        (32, 300, 70),
        (128, 512, 64),
        (1, 3456, 16),
        (1, 0, 2),
        (4, 0, 3),
    ];
    let mut max_err = 0.0f64;
    for (s, &(m, k, n)) in shapes.iter().enumerate() {
        for act in [Activation::None, Activation::Relu, Activation::Sigmoid] {
            for with_bias in [false, true] {
                let strided = (s + usize::from(with_bias)) & 1 == 0;
                let x = Input::new(&mut rng, m, k, strided);
                let w = uniform(&mut rng, n * k);
                let bias = uniform(&mut rng, n);
                let bias_opt = with_bias.then_some(bias.as_slice());
                let mut out = Output::new(m, n, !strided);
                cpu::linear(x.view(), &w, bias_opt, act, out.view());

                let mut want = Vec::with_capacity(m * n);
                for i in 0..m {
                    for j in 0..n {
                        let mut acc: f64 =
                            (0..k).map(|p| x.at(i, p) * f64::from(w[j * k + p])).sum();
                        if with_bias {
                            acc += f64::from(bias[j]);
                        }
                        want.push(match act {
                            Activation::None => acc,
                            Activation::Relu => acc.max(0.0),
                            Activation::Sigmoid => sigmoid_f64(acc),
                        });
                    }
                }
                // Tolerance: absolute 1e-5 * sqrt(k + 1) (f32 GEMM rounding grows like sqrt(k)
                // for random signs), plus relative 1e-5.
                let atol = 1e-5 * ((k + 1) as f64).sqrt();
                let what = format!("linear m={m} k={k} n={n} {act:?} bias={with_bias}");
                max_err = max_err.max(out.check(&want, atol, 1e-5, &what));
            }
        }
    }
    println!("linear: max abs error {max_err:e} (tolerance 1e-5 * sqrt(k + 1) + 1e-5 relative)");
}

#[test]
fn concat_matches_reference() {
    let mut rng = rng(6);
    for (rows, widths) in [
        (1, vec![1]),
        (5, vec![3, 1, 4]),
        (17, vec![128, 16, 0, 7]),
        (64, vec![13; 27]),
    ] {
        for strided in [false, true] {
            let inputs: Vec<Input> = widths
                .iter()
                .enumerate()
                .map(|(i, &w)| Input::new(&mut rng, rows, w, strided ^ (i % 2 == 0)))
                .collect();
            let views: Vec<MatRef<'_>> = inputs.iter().map(Input::view).collect();
            let total = widths.iter().sum();
            let mut out = Output::new(rows, total, strided);
            cpu::concat(&views, out.view());
            let mut want = Vec::new();
            for r in 0..rows {
                for input in &inputs {
                    want.extend((0..input.cols).map(|c| input.at(r, c)));
                }
            }
            // Tolerance: exact (a copy).
            out.check(
                &want,
                0.0,
                0.0,
                &format!("concat rows={rows} widths={widths:?}"),
            );
        }
    }
    println!("concat: exact");
}

#[test]
fn dot_interaction_matches_reference() {
    let mut rng = rng(7);
    let mut max_err = 0.0f64;
    for &(bsz, n, d) in &[
        (1, 1, 1),
        (1, 2, 3),
        (4, 3, 16),
        (33, 27, 128),
        (8, 27, 16),
        (2, 5, 13),
    ] {
        for strided in [false, true] {
            // When strided, the inputs are column slices of one wide buffer, as when the
            // embeddings come out of the table-batched kernel.
            let wide = Input::new(&mut rng, bsz, n * d, strided);
            let views: Vec<MatRef<'_>> = (0..n).map(|i| wide.view().col_slice(i * d, d)).collect();
            let cols = d + n * (n - 1) / 2;
            let mut out = Output::new(bsz, cols, strided);
            cpu::dot_interaction(&views, out.view());
            let mut want = Vec::with_capacity(bsz * cols);
            for b in 0..bsz {
                want.extend((0..d).map(|c| wide.at(b, c)));
                for i in 1..n {
                    for j in 0..i {
                        want.push(
                            (0..d)
                                .map(|c| wide.at(b, i * d + c) * wide.at(b, j * d + c))
                                .sum(),
                        );
                    }
                }
            }
            // Tolerance: absolute 1e-5 * sqrt(d) plus relative 1e-5.
            let atol = 1e-5 * (d as f64).sqrt();
            max_err = max_err.max(out.check(
                &want,
                atol,
                1e-5,
                &format!("dot_interaction B={bsz} n={n} d={d}"),
            ));
        }
    }
    println!(
        "dot_interaction: max abs error {max_err:e} (tolerance 1e-5 * sqrt(d) + 1e-5 relative)"
    );
}

#[test]
fn dcn_cross_matches_reference() {
    let mut rng = rng(8);
    let mut max_err = 0.0f64;
    for &(bsz, w, rank) in &[
        (1, 1, 1),
        (1, 8, 4),
        (7, 64, 32),
        (64, 200, 16),
        (3, 33, 0),
        (16, 256, 64),
    ] {
        for strided in [false, true] {
            let x0 = Input::new(&mut rng, bsz, w, strided);
            let xl = Input::new(&mut rng, bsz, w, !strided);
            let v = uniform(&mut rng, rank * w);
            let u = uniform(&mut rng, w * rank);
            let bias = uniform(&mut rng, w);
            let mut scratch = vec![f32::NAN; bsz * rank + 3];
            let mut out = Output::new(bsz, w, strided);
            cpu::dcn_cross(
                x0.view(),
                xl.view(),
                &v,
                &u,
                &bias,
                rank,
                &mut scratch,
                out.view(),
            );
            let mut want = Vec::with_capacity(bsz * w);
            for b in 0..bsz {
                let t: Vec<f64> = (0..rank)
                    .map(|r| (0..w).map(|p| f64::from(v[r * w + p]) * xl.at(b, p)).sum())
                    .collect();
                for c in 0..w {
                    let y: f64 = (0..rank)
                        .map(|r| f64::from(u[c * rank + r]) * t[r])
                        .sum::<f64>()
                        + f64::from(bias[c]);
                    want.push(x0.at(b, c) * y + xl.at(b, c));
                }
            }
            // Tolerance: absolute 1e-5 * sqrt(w * rank + 1) (two chained GEMMs) plus relative 1e-5.
            let atol = 1e-5 * ((w * rank + 1) as f64).sqrt();
            max_err = max_err.max(out.check(
                &want,
                atol,
                1e-5,
                &format!("dcn_cross B={bsz} w={w} rank={rank}"),
            ));
        }
    }
    println!("dcn_cross: max abs error {max_err:e} (tolerance 1e-5 * sqrt(w * rank + 1) + 1e-5 relative)");
}

const EXTREMES: [f32; 12] = [
    100.0,
    -100.0,
    1e4,
    -1e4,
    88.8,
    -88.8,
    104.0,
    -104.0,
    0.0,
    f32::MAX,
    f32::MIN,
    -20.0,
];

#[test]
fn sigmoid_matches_reference() {
    let mut rng = rng(9);
    let mut max_err = 0.0f64;
    for &(rows, cols) in &[(1, 1), (1, 12), (9, 31), (128, 64)] {
        for strided in [false, true] {
            let mut x = Input::new(&mut rng, rows, cols, strided);
            // Scale to [-20, 20] and plant the extremes in the first row.
            for v in x.buf.iter_mut() {
                *v *= 20.0;
            }
            for (c, &e) in EXTREMES.iter().enumerate().take(cols) {
                x.buf[x.c0 + c] = e;
            }
            let want: Vec<f64> = (0..rows)
                .flat_map(|r| (0..cols).map(move |c| (r, c)))
                .map(|(r, c)| sigmoid_f64(x.at(r, c)))
                .collect();
            let mut out = Output::new(rows, cols, strided);
            cpu::sigmoid(x.view(), out.view());
            // Tolerance: relative 1e-6, absolute 1e-7 (a few f32 ulps; tiny outputs keep their
            // relative precision).
            max_err = max_err.max(out.check(&want, 1e-7, 1e-6, &format!("sigmoid {rows}x{cols}")));

            let mut inplace: Vec<f32> = x.view().row_iter().flatten().copied().collect();
            cpu::sigmoid_inplace(&mut inplace);
            let from_view: Vec<f32> = out.view().as_ref().row_iter().flatten().copied().collect();
            assert_eq!(inplace, from_view, "sigmoid_inplace differs from sigmoid");
        }
    }
    println!("sigmoid: max abs error {max_err:e} (tolerance 1e-7 + 1e-6 relative)");
}

#[test]
fn sigmoid_saturates_without_nan() {
    let inputs = [
        100.0f32,
        -100.0,
        1e4,
        -1e4,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MAX,
        f32::MIN,
    ];
    let want = [1.0f32, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0];
    let mut x = inputs;
    cpu::sigmoid_inplace(&mut x);
    let mut out = [f32::NAN; 8];
    cpu::sigmoid(
        MatRef::contiguous(&inputs, 2, 4),
        MatMut::contiguous(&mut out, 2, 4),
    );
    assert_eq!(x, out, "sigmoid and sigmoid_inplace differ");
    // Tolerance: absolute 1e-30 (sigmoid(-100) is about 3.7e-44, kept as an f32 subnormal).
    for ((&i, &got), &w) in inputs.iter().zip(&x).zip(&want) {
        assert!(
            got.is_finite() && (got - w).abs() <= 1e-30,
            "sigmoid({i}) = {got}, want {w}"
        );
    }
}

#[test]
fn relu_inplace_matches_reference() {
    let mut rng = rng(10);
    let x = uniform(&mut rng, 1001);
    let mut y = x.clone();
    cpu::relu_inplace(&mut y);
    for (a, b) in x.iter().zip(&y) {
        assert_eq!(*b, if *a > 0.0 { *a } else { 0.0 });
    }
    println!("relu_inplace: exact");
}

#[test]
fn linear_parallel_equals_linear_bit_for_bit() {
    let mut r = rng(77);
    for &(m, k, n, threads) in &[
        (7, 33, 65, 2),
        (64, 129, 300, 3),
        (5, 16, 3, 4),
        (2, 8, 1, 2),
    ] {
        let x = uniform(&mut r, m * k);
        let w = uniform(&mut r, n * k);
        let b = uniform(&mut r, n);
        for act in [Activation::None, Activation::Relu, Activation::Sigmoid] {
            let mut want = vec![f32::NAN; m * n];
            cpu::linear(
                MatRef::contiguous(&x, m, k),
                &w,
                Some(&b),
                act,
                MatMut::contiguous(&mut want, m, n),
            );
            // Written into a column slice of a wider, poisoned buffer.
            let ld = n + 5;
            let mut got = vec![f32::NAN; m * ld];
            let mut scratch = vec![f32::NAN; m * n];
            let out = MatMut::new(&mut got, m, ld, ld).col_slice(2, n);
            cpu::linear_parallel(
                MatRef::contiguous(&x, m, k),
                &w,
                Some(&b),
                act,
                out,
                threads,
                &mut scratch,
            );
            for i in 0..m {
                for j in 0..ld {
                    let v = got[i * ld + j];
                    if (2..2 + n).contains(&j) {
                        assert_eq!(
                            v.to_bits(),
                            want[i * n + j - 2].to_bits(),
                            "({i}, {j}) {m}x{k}x{n} on {threads}"
                        );
                    } else {
                        assert!(v.is_nan(), "column {j} outside the slice was written");
                    }
                }
            }
        }
    }
}

/// The f32 sum each pooled element must be, bit for bit: from zero, the bag's rows added in
/// order, then divided by the count for a mean (the order every path of the kernel keeps).
fn embedding_bag_f32_order(
    table: &[f32],
    dim: usize,
    indices: &[i64],
    offsets: &[i64],
    mode: Pooling,
) -> Vec<f32> {
    let mut out = vec![0.0f32; offsets.len() * dim];
    for b in 0..offsets.len() {
        let start = offsets[b] as usize;
        let end = offsets.get(b + 1).map_or(indices.len(), |&o| o as usize);
        for &i in &indices[start..end] {
            for c in 0..dim {
                out[b * dim + c] += table[i as usize * dim + c];
            }
        }
        if mode == Pooling::Mean && end > start {
            for c in 0..dim {
                out[b * dim + c] /= (end - start) as f32;
            }
        }
    }
    out
}

#[test]
fn embedding_bags_are_bit_identical_on_every_path_and_split() {
    let mut rng = rng(77);
    for &(rows, dim, bags) in &[
        (1000usize, 128usize, 64usize),
        (300, 48, 33),
        (50, 5, 80),
        (2000, 256, 17),
    ] {
        for mode in [Pooling::Sum, Pooling::Mean] {
            let table = uniform(&mut rng, rows * dim);
            let (indices, offsets) = random_bags::<i64>(&mut rng, rows, bags);
            let want = embedding_bag_f32_order(&table, dim, &indices, &offsets, mode);
            let mut seq = vec![f32::NAN; bags * dim];
            cpu::embedding_bag(
                &table,
                rows,
                dim,
                &indices,
                &offsets,
                mode,
                MatMut::contiguous(&mut seq, bags, dim),
            );
            assert!(
                seq.iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "embedding_bag rows={rows} dim={dim} {mode:?}: not the in-order f32 sum"
            );
            // Every ISA path, on one thread and split into tiles, gives the in-order bits.
            for isa in cpu::Isa::supported() {
                for threads in [1, 2, 3, 8] {
                    let mut par = vec![f32::NAN; bags * dim];
                    cpu::embedding_bag_par(
                        &table,
                        rows,
                        dim,
                        &indices,
                        &offsets,
                        mode,
                        MatMut::contiguous(&mut par, bags, dim),
                        &cpu::ScopedThreads(threads),
                        &cpu::BagOpts::new(isa),
                    );
                    assert!(
                        par.iter()
                            .zip(&seq)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "embedding_bag_par {isa} x{threads} rows={rows} dim={dim} {mode:?} differs"
                    );
                }
            }
            // Table-batched over three copies of the table, split by table.
            let refs: Vec<TableRef<'_>> = (0..3)
                .map(|_| TableRef {
                    data: &table,
                    rows,
                    dim,
                    mode,
                })
                .collect();
            let idx = vec![indices.as_slice(); 3];
            let offs = vec![offsets.as_slice(); 3];
            for isa in cpu::Isa::supported() {
                let mut tb = vec![f32::NAN; bags * dim * 3];
                cpu::table_batched_embedding_bag_par(
                    isa,
                    &refs,
                    &idx,
                    &offs,
                    MatMut::contiguous(&mut tb, bags, dim * 3),
                    &cpu::ScopedThreads(2),
                );
                for b in 0..bags {
                    for t in 0..3 {
                        let got = &tb[b * dim * 3 + t * dim..][..dim];
                        assert!(
                            got.iter()
                                .zip(&seq[b * dim..][..dim])
                                .all(|(a, w)| a.to_bits() == w.to_bits()),
                            "table_batched_embedding_bag_par {isa} table {t} bag {b} differs"
                        );
                    }
                }
            }
        }
    }
}

/// `bias_act_par` into column blocks of a wide buffer and into a buffer of its own: the
/// streaming-store path (a block of aligned rows, at least `STREAM_MIN_ROWS` of them), the plain
/// path (misaligned, few rows, or a buffer of its own) and every activation give `act(x + b)`
/// exactly as computed here, and nothing outside the block changes.
#[test]
fn bias_act_par_gives_the_same_values_on_every_path() {
    let mut r = rng(41);
    let cols = 32;
    for (rows, ld) in [(3, 48), (cpu::STREAM_MIN_ROWS, 48), (700, 48), (700, 32)] {
        let x = uniform(&mut r, rows * cols);
        let bias = uniform(&mut r, cols);
        for act in [Activation::None, Activation::Relu, Activation::Sigmoid] {
            for shift in [0, 1] {
                // A buffer whose block starts on a 64-byte boundary (shift 0) or 4 bytes past one.
                let mut buf = vec![7.5f32; rows * ld + 32];
                let start = buf.as_ptr().align_offset(64) + shift;
                let out = MatMut::new(&mut buf[start..start + rows * ld], rows, cols, ld);
                let xs = MatRef::contiguous(&x, rows, cols);
                cpu::bias_act_par(xs, &bias, act, out, &cpu::ScopedThreads(2));
                for i in 0..rows {
                    for j in 0..cols {
                        let y = x[i * cols + j] + bias[j];
                        let want = match act {
                            Activation::None => y,
                            Activation::Relu if y > 0.0 => y,
                            Activation::Relu => 0.0,
                            Activation::Sigmoid => (1.0 / (1.0 + (-f64::from(y)).exp())) as f32,
                        };
                        let got = buf[start + i * ld + j];
                        if act == Activation::Sigmoid {
                            assert!((got - want).abs() <= 1e-6, "{rows} {act:?} {shift}");
                        } else {
                            assert_eq!(got.to_bits(), want.to_bits(), "{rows} {act:?} {shift}");
                        }
                    }
                    for j in cols..ld {
                        assert_eq!(buf[start + i * ld + j], 7.5, "{rows} {act:?}: outside");
                    }
                }
            }
        }
    }
}

/// A lookup with a folded layer's epilogue (`BagOpts::with_epilogue`, on every ISA path and
/// every prefetch distance) gives the bits of the plain lookup followed by `bias_act_par`, and
/// `table_batched_embedding_bag_into` gives each table's own options' bits in its own view
/// (a column block of a wider buffer, whose other columns stay untouched).
#[test]
fn lookups_with_an_epilogue_give_the_bits_of_the_lookup_then_the_bias_pass() {
    let mut r = rng(97);
    for &(rows, dim, bags) in &[(500usize, 128usize, 40usize), (300, 48, 21), (60, 5, 30)] {
        let table = uniform(&mut r, rows * dim);
        // Bias about the size of the pooled sums, so that ReLU clips about half the outputs.
        let bias: Vec<f32> = uniform(&mut r, dim).iter().map(|b| 3.0 * b).collect();
        let (indices, offsets) = random_bags::<i64>(&mut r, rows, bags);
        for mode in [Pooling::Sum, Pooling::Mean] {
            let mut plain = vec![f32::NAN; bags * dim];
            cpu::embedding_bag(
                &table,
                rows,
                dim,
                &indices,
                &offsets,
                mode,
                MatMut::contiguous(&mut plain, bags, dim),
            );
            for act in [Activation::None, Activation::Relu, Activation::Sigmoid] {
                let mut want = vec![f32::NAN; bags * dim];
                cpu::bias_act_par(
                    MatRef::contiguous(&plain, bags, dim),
                    &bias,
                    act,
                    MatMut::contiguous(&mut want, bags, dim),
                    &cpu::Sequential,
                );
                let same = |got: &[f32]| {
                    got.iter()
                        .zip(&want)
                        .all(|(a, b)| a.to_bits() == b.to_bits())
                };
                for isa in cpu::Isa::supported() {
                    for ahead in [0, cpu::PREFETCH_ROWS, 32] {
                        let opts = cpu::BagOpts::new(isa)
                            .with_epilogue(Some(&bias), act)
                            .with_ahead(ahead);
                        let mut got = vec![f32::NAN; bags * dim];
                        cpu::embedding_bag_par(
                            &table,
                            rows,
                            dim,
                            &indices,
                            &offsets,
                            mode,
                            MatMut::contiguous(&mut got, bags, dim),
                            &cpu::ScopedThreads(2),
                            &opts,
                        );
                        assert!(same(&got), "{isa} ahead {ahead} dim {dim} {mode:?} {act:?}");
                    }
                    // Two tables: the first with the epilogue into a buffer of its own, the
                    // second plain into the first columns of a wider one.
                    let refs = [TableRef {
                        data: &table,
                        rows,
                        dim,
                        mode,
                    }; 2];
                    let ld = dim + 3;
                    let mut own = vec![f32::NAN; bags * dim];
                    let mut wide = vec![7.5f32; bags * ld];
                    let outs = vec![
                        (
                            MatMut::contiguous(&mut own, bags, dim),
                            cpu::BagOpts::new(isa).with_epilogue(Some(&bias), act),
                        ),
                        (
                            MatMut::new(&mut wide, bags, dim, ld),
                            cpu::BagOpts::new(isa),
                        ),
                    ];
                    let idx = [indices.as_slice(); 2];
                    let offs = [offsets.as_slice(); 2];
                    cpu::table_batched_embedding_bag_into(
                        &refs,
                        &idx,
                        &offs,
                        outs,
                        &cpu::ScopedThreads(2),
                    );
                    assert!(same(&own), "table-batched {isa} dim {dim} {mode:?} {act:?}");
                    for row in 0..bags {
                        let w = &wide[row * ld..][..ld];
                        assert!(
                            same_bits(&w[..dim], &plain[row * dim..][..dim])
                                && w[dim..].iter().all(|&v| v == 7.5),
                            "table-batched plain {isa} dim {dim} {mode:?} bag {row}"
                        );
                    }
                }
            }
        }
    }
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}
