//! The x86-64 vector operations ([`Avx512`], [`Avx2`], [`Avx2Wide`]) and their micro-kernel
//! tiles compiled inside `#[target_feature]` functions, so the intrinsics inline into AVX-512
//! or AVX2 code (the loop nest's entry points are in `driver`).

use std::arch::x86_64::*;

use super::kernel::{tile_dispatch, Simd, Tile};

pub(super) struct Avx512;

impl Simd for Avx512 {
    type V = __m512;
    const W: usize = 16;
    const MR: usize = 6;
    const NV: usize = 4;
    const NV1: usize = 8;
    // Batch 2 streams the weights like a GEMV: 4, 8 and 12 vectors measured alike within
    // the noise (one thread, `top.0`/`top.1`/branch/`bottom.0` shapes of streamrec-26).
    const NV2: usize = 8;

    #[inline(always)]
    unsafe fn zero() -> __m512 {
        _mm512_setzero_ps()
    }
    #[inline(always)]
    unsafe fn splat(p: *const f32) -> __m512 {
        _mm512_set1_ps(*p)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m512 {
        _mm512_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m512) {
        _mm512_storeu_ps(p, v)
    }
    #[inline(always)]
    unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
        _mm512_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn add(a: __m512, b: __m512) -> __m512 {
        _mm512_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn relu(a: __m512) -> __m512 {
        // MAXPS returns its second operand when either is NaN or both are zero.
        _mm512_max_ps(a, _mm512_setzero_ps())
    }
    #[inline(always)]
    unsafe fn prefetch(p: *const f32) {
        _mm_prefetch::<_MM_HINT_T0>(p.cast());
    }
    #[inline(always)]
    unsafe fn prefetch_w(p: *const f32) {
        _mm_prefetch::<_MM_HINT_ET0>(p.cast());
    }
    unsafe fn tile(t: &Tile, rows: usize, nv: usize, c: *mut f32, ldc: usize, cols: usize) {
        // SAFETY: the caller's contract; Self is only used on machines with these features.
        unsafe { tile_avx512(t, rows, nv, c, ldc, cols) }
    }
}

/// The 256-bit operations of [`Avx2`] and [`Avx2Wide`].
macro_rules! avx2_ops {
    () => {
        #[inline(always)]
        unsafe fn zero() -> __m256 {
            _mm256_setzero_ps()
        }
        #[inline(always)]
        unsafe fn splat(p: *const f32) -> __m256 {
            _mm256_broadcast_ss(&*p)
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m256 {
            _mm256_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m256) {
            _mm256_storeu_ps(p, v)
        }
        #[inline(always)]
        unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
            _mm256_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn add(a: __m256, b: __m256) -> __m256 {
            _mm256_add_ps(a, b)
        }
        #[inline(always)]
        unsafe fn relu(a: __m256) -> __m256 {
            // MAXPS returns its second operand when either is NaN or both are zero.
            _mm256_max_ps(a, _mm256_setzero_ps())
        }
        #[inline(always)]
        unsafe fn prefetch(p: *const f32) {
            _mm_prefetch::<_MM_HINT_T0>(p.cast());
        }
        #[inline(always)]
        unsafe fn prefetch_w(p: *const f32) {
            _mm_prefetch::<_MM_HINT_ET0>(p.cast());
        }
    };
}

pub(super) struct Avx2;

impl Simd for Avx2 {
    type V = __m256;
    const W: usize = 8;
    const MR: usize = 6;
    const NV: usize = 2;
    const NV1: usize = 8;
    const NV2: usize = 4;

    avx2_ops!();
    unsafe fn tile(t: &Tile, rows: usize, nv: usize, c: *mut f32, ldc: usize, cols: usize) {
        // SAFETY: the caller's contract; Self is only used on machines with these features.
        unsafe { tile_avx2(t, rows, nv, c, ldc, cols) }
    }
}

/// AVX2's 256-bit operations with AVX-512VL's 32 registers: a GEMV tile of two panel
/// groups (two streams of the weights) at AVX2's clock.
pub(super) struct Avx2Wide;

impl Simd for Avx2Wide {
    type V = __m256;
    const W: usize = 8;
    const MR: usize = 6;
    const NV: usize = 2;
    const NV1: usize = 16;
    const NV2: usize = 8;

    avx2_ops!();
    unsafe fn tile(t: &Tile, rows: usize, nv: usize, c: *mut f32, ldc: usize, cols: usize) {
        // SAFETY: the caller's contract; Self is only used on machines with these features.
        unsafe { tile_avx2_wide(t, rows, nv, c, ldc, cols) }
    }
}

/// # Safety
///
/// As `tile_dispatch`, on a machine with AVX2, FMA and AVX-512VL.
#[target_feature(enable = "avx2,fma,avx512f,avx512vl")]
#[inline(never)]
unsafe fn tile_avx2_wide(t: &Tile, rows: usize, nv: usize, c: *mut f32, ldc: usize, cols: usize) {
    // SAFETY: the caller's contract.
    unsafe { tile_dispatch::<Avx2Wide>(t, rows, nv, c, ldc, cols) }
}

/// # Safety
///
/// As `tile_dispatch`, on a machine with AVX-512F.
#[target_feature(enable = "avx512f")]
#[inline(never)]
unsafe fn tile_avx512(t: &Tile, rows: usize, nv: usize, c: *mut f32, ldc: usize, cols: usize) {
    // SAFETY: the caller's contract.
    unsafe { tile_dispatch::<Avx512>(t, rows, nv, c, ldc, cols) }
}

/// # Safety
///
/// As `tile_dispatch`, on a machine with AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
#[inline(never)]
unsafe fn tile_avx2(t: &Tile, rows: usize, nv: usize, c: *mut f32, ldc: usize, cols: usize) {
    // SAFETY: the caller's contract.
    unsafe { tile_dispatch::<Avx2>(t, rows, nv, c, ldc, cols) }
}
