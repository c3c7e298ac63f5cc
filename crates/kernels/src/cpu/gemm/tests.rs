//! Every supported ISA path, forced explicitly, against an f64 reference on odd shapes.

use super::*;

/// xorshift values in [-1, 1).
fn fill(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn reference(
    x: &[f32],
    ldx: usize,
    w: &[f32],
    b: Option<&[f32]>,
    act: Activation,
    (m, k, n): (usize, usize, usize),
) -> Vec<(f64, f64)> {
    let mut out = vec![(0.0f64, 0.0f64); m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = b.map_or(0.0, |b| f64::from(b[j]));
            let mut mag = s.abs();
            for p in 0..k {
                let t = f64::from(x[i * ldx + p]) * f64::from(w[j * k + p]);
                s += t;
                mag += t.abs();
            }
            let v = match act {
                Activation::None => s,
                Activation::Relu => s.max(0.0),
                Activation::Sigmoid => 1.0 / (1.0 + (-s).exp()),
            };
            out[i * n + j] = (v, mag);
        }
    }
    out
}

/// Runs `isa` on `m x k x n` (x strided, out a column slice of a NaN buffer) and checks
/// every element against the reference, the untouched columns, and returns the output.
fn check(isa: Isa, (m, k, n): (usize, usize, usize), act: Activation, threads: usize) -> Vec<f32> {
    let seed = (m * 1_000_003 + k * 1009 + n) as u64;
    let ldx = k + 3;
    let x = fill(m * ldx, seed);
    let w = fill(n * k, seed + 1);
    let b = fill(n, seed + 2);
    let packed = PackedLinear::new(&w, n, k, Some(&b));
    let want = reference(&x, ldx, &w, Some(&b), act, (m, k, n));
    let ldo = n + 5;
    let mut buf = vec![f32::NAN; m * ldo];
    let out = MatMut::new(&mut buf, m, ldo, ldo).col_slice(2, n);
    linear_packed_isa(isa, MatRef::new(&x, m, k, ldx), &packed, act, out, threads);
    let mut got = Vec::with_capacity(m * n);
    for i in 0..m {
        for j in 0..ldo {
            let v = buf[i * ldo + j];
            if (2..2 + n).contains(&j) {
                let (r, mag) = want[i * n + j - 2];
                // Relative to the magnitude of the terms summed (f32 rounding of a sum
                // scales with it); a wrong panel, tail or row is off by about `mag`.
                let tol = 1e-6 * (1.0 + mag);
                assert!(
                    (f64::from(v) - r).abs() <= tol,
                    "{isa:?} {m}x{k}x{n} {act:?} t={threads}: ({i}, {}) = {v}, want {r}",
                    j - 2
                );
                got.push(v);
            } else {
                assert!(
                    v.is_nan(),
                    "{isa:?} {m}x{k}x{n}: column {j} outside was written"
                );
            }
        }
    }
    got
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn every_isa_matches_the_f64_reference_on_odd_shapes() {
    let isas = Isa::supported();
    println!("supported: {isas:?}");
    let mut shapes = vec![];
    for m in [1, 2, 3, 5, 7, 8, 9, 13, 16, 17, 33, 64, 70] {
        for &(k, n) in &[(1, 1), (7, 1), (33, 17), (300, 47), (16, 32), (0, 5)] {
            shapes.push((m, k, n));
        }
    }
    // Several k blocks, several row blocks of a large GEMM, and a multi-panel tail.
    shapes.extend([
        (1, 2100, 100),
        (2, 1520, 70),
        (130, 1100, 49),
        (70, 257, 129),
        // Row tiles run across every panel when a block's weights are small, else panel
        // group by group: both orders, over several row blocks.
        (140, 300, 200),
        (140, 300, 250),
    ]);
    for &shape in &shapes {
        for act in [Activation::None, Activation::Relu, Activation::Sigmoid] {
            let mut first: Option<Vec<u32>> = None;
            for &isa in &isas {
                for threads in [1, 2, 3] {
                    let got = bits(&check(isa, shape, act, threads));
                    // Bit-identical across ISA paths and thread counts.
                    match &first {
                        None => first = Some(got),
                        Some(f) => assert!(
                            *f == got,
                            "{isa:?} {shape:?} {act:?} t={threads} differs from the first path"
                        ),
                    }
                }
            }
        }
    }
}

#[test]
fn a_row_is_the_same_at_every_batch_size_and_position() {
    let (k, n) = (300, 45);
    let w = fill(n * k, 5);
    let b = fill(n, 6);
    let packed = PackedLinear::new(&w, n, k, Some(&b));
    let x = fill(70 * k, 7);
    for isa in Isa::supported() {
        let mut alone = vec![0.0f32; 70 * n];
        for i in 0..70 {
            let out = MatMut::contiguous(&mut alone[i * n..(i + 1) * n], 1, n);
            linear_packed_isa(
                isa,
                MatRef::contiguous(&x[i * k..(i + 1) * k], 1, k),
                &packed,
                Activation::Relu,
                out,
                1,
            );
        }
        for m in [2, 3, 9, 16, 64, 70] {
            let mut out = vec![0.0f32; m * n];
            linear_packed_isa(
                isa,
                MatRef::contiguous(&x[..m * k], m, k),
                &packed,
                Activation::Relu,
                MatMut::contiguous(&mut out, m, n),
                1,
            );
            assert_eq!(bits(&out), bits(&alone[..m * n]), "{isa:?} batch {m}");
        }
    }
}

/// `xs` given in parts of these widths (each in its own buffer, rows `width + 3` apart),
/// on every ISA and thread count: the f64 reference on the whole input, bit-identical
/// across paths, and bit-identical to the whole input given at once.
fn check_parts(m: usize, widths: &[usize], n: usize) {
    let k: usize = widths.iter().sum();
    let seed = (m * 7919 + k * 31 + n) as u64;
    let x = fill(m * k, seed);
    let w = fill(n * k, seed + 1);
    let b = fill(n, seed + 2);
    let packed = PackedLinear::new(&w, n, k, Some(&b));
    let want = reference(&x, k, &w, Some(&b), Activation::Relu, (m, k, n));
    let mut bufs = Vec::new();
    let mut c0 = 0;
    for &wd in widths {
        let ld = wd + 3;
        let mut buf = vec![f32::NAN; m * ld];
        for r in 0..m {
            buf[r * ld..r * ld + wd].copy_from_slice(&x[r * k + c0..r * k + c0 + wd]);
        }
        bufs.push((buf, wd, ld));
        c0 += wd;
    }
    let parts: Vec<MatRef<'_>> = bufs
        .iter()
        .map(|(buf, wd, ld)| MatRef::new(buf, m, *wd, *ld))
        .collect();
    let mut first: Option<Vec<u32>> = None;
    for isa in Isa::supported() {
        for threads in [1, 2, 3] {
            let mut out = vec![0.0f32; m * n];
            let par = ScopedThreads(threads);
            let o = MatMut::contiguous(&mut out, m, n);
            linear_packed_on(isa, &parts, &packed, Activation::Relu, o, &par);
            for (i, (&v, &(r, mag))) in out.iter().zip(&want).enumerate() {
                assert!(
                    (f64::from(v) - r).abs() <= 1e-6 * (1.0 + mag),
                    "{isa:?} m={m} {widths:?} t={threads}: element {i} = {v}, want {r}"
                );
            }
            let mut whole = vec![0.0f32; m * n];
            let o = MatMut::contiguous(&mut whole, m, n);
            let xm = MatRef::contiguous(&x, m, k);
            linear_packed_on(isa, &[xm], &packed, Activation::Relu, o, &par);
            assert_eq!(bits(&out), bits(&whole), "{isa:?} m={m} {widths:?}");
            match &first {
                None => first = Some(bits(&out)),
                Some(f) => assert!(*f == bits(&out), "{isa:?} m={m} {widths:?} t={threads}"),
            }
        }
    }
}

#[test]
fn an_input_in_parts_is_read_in_place() {
    for m in [1, 2, 7, 70, 130] {
        check_parts(m, &[128, 128, 44], 37);
        // Ragged and empty parts, and more than four of them.
        check_parts(m, &[5, 0, 300, 1, 77, 9], 33);
        // No columns at all: the bias through the activation.
        check_parts(m, &[0, 0], 20);
        // Blocks that run on from one part into the next, and a part over two blocks.
        check_parts(m, &[128; 9], 40);
        check_parts(m, &[700, 500, 3, 1100], 21);
    }
}

#[test]
fn large_weights_give_the_same_bits_split_by_panels_or_rows() {
    // Over 4 MiB of weights: 70 rows split by panels, 256 by rows.
    let (k, n) = (1024, 1040);
    let w = fill(n * k, 21);
    let b = fill(n, 22);
    let packed = PackedLinear::new(&w, n, k, Some(&b));
    assert!(packed.weight_bytes() >= PANEL_SPLIT_MIN_BYTES);
    let x = fill(256 * k, 23);
    for isa in Isa::supported() {
        for m in [70, 256] {
            let run = |threads| {
                let mut out = vec![0.0f32; m * n];
                let o = MatMut::contiguous(&mut out, m, n);
                let xm = MatRef::contiguous(&x[..m * k], m, k);
                linear_packed_isa(isa, xm, &packed, Activation::Relu, o, threads);
                bits(&out)
            };
            let one = run(1);
            for threads in [2, 3] {
                assert!(one == run(threads), "{isa:?} m={m} t={threads}");
            }
        }
    }
}

#[test]
fn without_bias_and_with_relu_of_negative_zero() {
    let w = [1.0f32, -1.0, 0.0, 0.0];
    let packed = PackedLinear::new(&w, 2, 2, None);
    for isa in Isa::supported() {
        let x = [f32::NAN, 0.0, 0.5, 0.5];
        let mut out = [7.0f32; 4];
        linear_packed_isa(
            isa,
            MatRef::contiguous(&x, 2, 2),
            &packed,
            Activation::Relu,
            MatMut::contiguous(&mut out, 2, 2),
            1,
        );
        // NaN and zeros give +0 through ReLU.
        assert_eq!(bits(&out), bits(&[0.0, 0.0, 0.0, 0.0]), "{isa:?}");
    }
}

#[test]
fn weights_packed_for_a_path_run_on_it_by_default() {
    let (m, k, n) = (3, 40, 21);
    let w = fill(n * k, 31);
    let x = fill(m * k, 32);
    let packed = PackedLinear::new(&w, n, k, None);
    assert_eq!(packed.isa(), Isa::detect());
    let run = |w: &PackedLinear, isa: Option<Isa>| {
        let mut out = vec![0.0f32; m * n];
        let (xm, o) = (
            MatRef::contiguous(&x, m, k),
            MatMut::contiguous(&mut out, m, n),
        );
        match isa {
            Some(isa) => linear_packed_isa(isa, xm, w, Activation::Relu, o, 1),
            None => linear_packed(xm, w, Activation::Relu, o),
        }
        bits(&out)
    };
    for isa in Isa::ALL {
        match packed.clone().with_isa(isa) {
            Ok(pinned) => {
                assert_eq!(pinned.isa(), isa);
                assert_eq!(isa_for(isa, m), isa);
                assert!(run(&pinned, None) == run(&packed, Some(isa)), "{isa}");
            }
            Err(e) => {
                assert!(!isa.is_supported());
                assert_eq!(e, IsaError::Unsupported(isa));
            }
        }
    }
    // A batch-1 GEMV on AVX-512 weights takes the AVX2 kernel where there is one.
    let gemv = if Isa::Avx2.is_supported() {
        Isa::Avx2
    } else {
        Isa::Avx512
    };
    assert_eq!(isa_for(Isa::Avx512, 1), gemv);
}
