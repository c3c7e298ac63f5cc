//! The machine's FMA peak per ISA path, measured: loops of independent FMAs that keep both FMA
//! pipes busy (the roofline the GEMM kernels are read against by the kernels bench and
//! `cargo xtask bench`).

use std::hint::black_box;
use std::time::Instant;

use super::gemm::Isa;

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

/// As [`fma_loop_avx512`] with 8 lanes (12 accumulators: AVX2 has 16 registers, and 2 ports x
/// 4-5 cycles of latency need at most 10 in flight).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn fma_loop_avx2(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_set1_ps(0.0); 12];
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

/// Runs the FMA loop of `isa` for `iters` iterations: the FLOPs it did and a value to keep.
///
/// # Panics
///
/// Panics if the machine cannot run `isa`.
pub fn fma_loop(isa: Isa, iters: usize) -> (f64, f32) {
    assert!(
        isa.is_supported(),
        "fma_loop: this machine cannot run {isa}"
    );
    #[cfg(target_arch = "x86_64")]
    match isa {
        // SAFETY: `Isa::supported` lists only paths whose instructions the machine has.
        Isa::Avx512 => {
            return ((iters * 16 * 16 * 2) as f64, unsafe {
                fma_loop_avx512(iters)
            })
        }
        Isa::Avx2 => return ((iters * 12 * 8 * 2) as f64, unsafe { fma_loop_avx2(iters) }),
        Isa::Portable => {}
    }
    let mut acc = [0.0f32; 16];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = v.mul_add(0.999_999, 1e-7);
        }
    }
    ((iters * 16 * 2) as f64, acc.iter().sum())
}

/// The FMA peak of `isa` on `threads` threads at once, in GFLOP/s: the median of `rounds`
/// timings of `iters` iterations per thread.
///
/// # Panics
///
/// Panics if the machine cannot run `isa`.
pub fn fma_peak(isa: Isa, threads: usize, iters: usize, rounds: usize) -> f64 {
    let threads = threads.max(1);
    let flops = fma_loop(isa, iters).0 * threads as f64;
    let mut t: Vec<f64> = (0..rounds.max(1))
        .map(|_| {
            let t0 = Instant::now();
            std::thread::scope(|s| {
                for _ in 1..threads {
                    s.spawn(|| black_box(fma_loop(isa, iters)));
                }
                black_box(fma_loop(isa, iters));
            });
            t0.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    flops / t[t.len() / 2] / 1e9
}

#[cfg(test)]
mod tests {
    //! The loops count what they do.

    use super::*;

    #[test]
    fn every_path_counts_two_flops_per_fma_lane_and_measures_a_positive_peak() {
        for isa in Isa::supported() {
            let (flops, v) = fma_loop(isa, 10);
            let lanes = match isa {
                Isa::Avx512 => 16 * 16,
                Isa::Avx2 => 12 * 8,
                Isa::Portable => 16,
            };
            assert_eq!(flops, (10 * lanes * 2) as f64, "{isa}");
            assert!(v.is_finite() && v > 0.0, "{isa}: {v}");
            assert!(fma_peak(isa, 2, 1000, 3) > 0.0, "{isa}");
        }
    }
}
