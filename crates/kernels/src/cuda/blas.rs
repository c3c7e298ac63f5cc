//! A cuBLAS handle bound to one stream, and the row-major GEMM of a linear layer.
//!
//! cuBLAS is column-major. A row-major `[r, c]` matrix with leading dimension `ld` is, read
//! column-major, the `[c, r]` matrix (its transpose) with the same `ld`. A linear layer computes
//! the row-major `Y[M, N] = X[M, K] · Wᵀ` with `W` row-major `[N, K]` (PyTorch layout).
//! Transposing both sides, `Yᵀ = W · Xᵀ`, and in column-major terms:
//!
//! * `Yᵀ` is the column-major `[N, M]` matrix stored in Y's memory with `ldc = y_ld`: C.
//! * `W` is `op(A)` with `A` = the column-major `[K, N]` matrix stored in W's memory (`lda = K`)
//!   and `op = T`, giving `[N, K]`.
//! * `Xᵀ` is `op(B)` with `B` = the column-major `[K, M]` matrix stored in X's memory
//!   (`ldb = x_ld`) and `op = N`.
//!
//! So the call is `sgemm(transa = T, transb = N, m = N, n = M, k = K, A = W, lda = K,
//! B = X, ldb = x_ld, C = Y, ldc = y_ld)`, with `lda >= K`, `ldb >= K` and `ldc >= N` as cuBLAS
//! requires.

use std::sync::Arc;

use cudarc::cublas::{result, sys};
use cudarc::driver::{CudaSlice, CudaStream};

use super::{CudaError, DevPtr};

/// Bytes of the explicit cuBLAS workspace per handle (an explicit workspace keeps cuBLAS from
/// allocating inside a CUDA-graph capture).
const WORKSPACE_BYTES: usize = 16 << 20;

/// Floating-point mode of the GEMMs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum GemmMath {
    /// Plain fp32 (the cuBLAS default; no tensor-core rounding).
    #[default]
    Fp32,
    /// TF32 tensor cores (about 2-3x faster at large batch; relative error around 1e-3).
    Tf32,
}

/// A cuBLAS handle bound to one stream, with its own workspace. Not `Sync`: a handle must not be
/// used by two threads at once (wrap it in a mutex to share it).
#[derive(Debug)]
pub struct Blas {
    handle: sys::cublasHandle_t,
    stream: Arc<CudaStream>,
    _workspace: CudaSlice<u8>,
}

// SAFETY: a cuBLAS handle may be used from any thread as long as calls on it do not overlap;
// `Blas` is not `Sync` and every call takes `&mut self`, so they cannot.
unsafe impl Send for Blas {}

impl Blas {
    /// A handle whose work goes to `stream`. Call [`super::cublas_available`] first: cudarc
    /// panics when libcublas cannot be loaded.
    pub fn new(stream: Arc<CudaStream>, math: GemmMath) -> Result<Self, CudaError> {
        stream.context().bind_to_thread()?;
        let workspace = stream.alloc_zeros::<u8>(WORKSPACE_BYTES)?;
        let handle = result::create_handle()?;
        let blas = Self {
            handle,
            stream,
            _workspace: workspace,
        };
        let mode = match math {
            GemmMath::Fp32 => sys::cublasMath_t::CUBLAS_DEFAULT_MATH,
            GemmMath::Tf32 => sys::cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH,
        };
        let (ws, _guard) = cudarc::driver::DevicePtr::device_ptr(&blas._workspace, &blas.stream);
        // SAFETY: the handle was just created and is owned by `blas`; the stream outlives the
        // handle (held in `blas`); the workspace is a live device allocation of WORKSPACE_BYTES
        // that is dropped after the handle is destroyed (field order and `Drop`). The stream is
        // set before the workspace because setting a stream resets the workspace.
        unsafe {
            result::set_stream(blas.handle, blas.stream.cu_stream() as _)?;
            sys::cublasSetWorkspace_v2(blas.handle, ws as *mut std::ffi::c_void, WORKSPACE_BYTES)
                .result()?;
            sys::cublasSetMathMode(blas.handle, mode).result()?;
        }
        drop(_guard);
        Ok(blas)
    }

    /// The stream the handle's work goes to.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Enqueues the row-major `Y[m, n] = X[m, k] · Wᵀ` with `W` row-major `[n, k]` (see the
    /// module comment for the column-major call).
    ///
    /// # Safety
    ///
    /// `x` addresses `m` rows of `k` f32 with leading dimension `x_ld >= k`; `w` addresses
    /// `n * k` f32; `y` addresses `m` writable rows of `n` f32 with leading dimension
    /// `y_ld >= n`, overlapping neither input. All stay alive until the stream has run the GEMM.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn linear(
        &mut self,
        m: usize,
        n: usize,
        k: usize,
        x: DevPtr,
        x_ld: usize,
        w: DevPtr,
        y: DevPtr,
        y_ld: usize,
    ) -> Result<(), CudaError> {
        if m == 0 || n == 0 {
            return Ok(());
        }
        if x_ld < k || y_ld < n {
            return Err(CudaError::Invalid(format!(
                "gemm: x_ld {x_ld} < k {k} or y_ld {y_ld} < n {n}"
            )));
        }
        let int = |what: &str, v: usize| {
            i32::try_from(v).map_err(|_| {
                CudaError::Invalid(format!("gemm: {what} = {v} does not fit in an int"))
            })
        };
        let (mm, nn, kk) = (int("n", n)?, int("m", m)?, int("k", k)?);
        let (lda, ldb, ldc) = (
            int("k", k.max(1))?,
            int("x_ld", x_ld.max(1))?,
            int("y_ld", y_ld)?,
        );
        let alpha = 1.0f32;
        let beta = 0.0f32;
        self.stream.context().bind_to_thread()?;
        // SAFETY: column-major C[N, M] = op(A)[N, K] · op(B)[K, M] with A = W read transposed
        // (lda = K), B = X (ldb = x_ld >= K) and C = Y (ldc = y_ld >= N); the caller guarantees
        // the extents (see # Safety); alpha and beta are host scalars read during the call.
        unsafe {
            result::sgemm(
                self.handle,
                sys::cublasOperation_t::CUBLAS_OP_T,
                sys::cublasOperation_t::CUBLAS_OP_N,
                mm,
                nn,
                kk,
                &alpha,
                w as *const f32,
                lda,
                x as *const f32,
                ldb,
                &beta,
                y as *mut f32,
                ldc,
            )?;
        }
        Ok(())
    }
}

impl Drop for Blas {
    fn drop(&mut self) {
        let handle = std::mem::replace(&mut self.handle, std::ptr::null_mut());
        if handle.is_null() {
            return;
        }
        let ctx = self.stream.context();
        ctx.record_err(ctx.bind_to_thread());
        // SAFETY: the handle was created by `Blas::new`, is owned by this value and is destroyed
        // once; a failure is ignored (there is nothing to do about it while dropping).
        let _ = unsafe { result::destroy_handle(handle) };
    }
}
