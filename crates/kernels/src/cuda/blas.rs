//! cuBLAS and cuBLASLt handles bound to one stream, and the row-major GEMM of a linear layer,
//! with its bias and ReLU fused into the GEMM (cuBLASLt epilogues) where cuBLASLt can do it.
//!
//! # The column-major mapping
//!
//! cuBLAS and cuBLASLt are column-major. A row-major `[r, c]` matrix with leading dimension `ld`
//! is, read column-major, the `[c, r]` matrix (its transpose) with the same `ld`. A linear layer
//! computes the row-major `Y[M, N] = X[M, K] · Wᵀ + b` with `W` row-major `[N, K]` (PyTorch
//! layout, as the runtime stores it) and `b` of length `N`. Transposing both sides,
//! `Yᵀ = W · Xᵀ + b·1ᵀ`, and in column-major terms:
//!
//! * `Yᵀ` is the column-major `[N, M]` matrix stored in Y's memory with `ldc = y_ld`: C (and D).
//! * `W` is `op(A)` with `A` = the column-major `[K, N]` matrix stored in W's memory (`lda = K`)
//!   and `op = T`, giving `[N, K]`.
//! * `Xᵀ` is `op(B)` with `B` = the column-major `[K, M]` matrix stored in X's memory
//!   (`ldb = x_ld`) and `op = N`.
//!
//! So the call is `gemm(transa = T, transb = N, m = N, n = M, k = K, A = W, lda = K,
//! B = X, ldb = x_ld, C = Y, ldc = y_ld)`, with `lda >= K`, `ldb >= K` and `ldc >= N` as cuBLAS
//! requires ([`linear_gemm`] computes it; both the cuBLAS and the cuBLASLt calls use it).
//! cuBLASLt describes the stored matrices by rows, columns and `ld`: A is `[K, N]`, B is
//! `[K, M]`, C and D are `[N, M]` ([`ColMajorGemm::a_dims`] and friends).
//!
//! The epilogue `BIAS` adds a packed vector with one entry per **row** of the column-major D
//! (length `m = N`) to every column of D: row `i` of D is column `i` of the row-major Y, so
//! `b[i]` is added to output feature `i` of every sample, as the layer needs. `RELU_BIAS` then
//! applies `max(·, 0)`. A sigmoid has no cuBLASLt epilogue: such layers, and every layer when
//! libcublasLt cannot be loaded, run the plain cuBLAS GEMM and the caller's `bias_act` kernel
//! ([`Blas::linear_bias_act`] says which happened). So does a layer cuBLASLt refuses (no
//! algorithm from its heuristic for the shape and pointer alignments, or a refused call, which
//! enqueues nothing): the refusal is remembered per shape and listed by [`LtGemm::fallbacks`].
//!
//! Design note: cudarc's safe `CudaBlasLT::matmul` is not used. It fixes the f32 compute type
//! to `CUBLAS_COMPUTE_32F_FAST_TF32` (TF32 even when the backend asks for plain fp32), takes
//! typed device slices instead of the raw addresses the runtime shares between streams and CUDA
//! graphs, unwraps driver errors and rebuilds its descriptors and heuristic query at every
//! call. [`LtGemm`] uses cudarc's `cublaslt::result` layer instead, with the compute type from
//! [`GemmMath`], and caches one plan (descriptors and algorithm) per shape, epilogue and
//! pointer alignment.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, OnceLock};

use cudarc::cublas::{result, sys};
use cudarc::cublaslt::{result as lt, sys as lt_sys};
use cudarc::driver::{CudaSlice, CudaStream};

use super::{CudaError, DevPtr};
use crate::types::Activation;

/// Bytes of the explicit workspace of a [`Blas`] (shared by its cuBLAS and cuBLASLt handles) and
/// of a standalone [`LtGemm`]: NVIDIA asks for at least 32 MiB on Hopper. An explicit workspace
/// also keeps the libraries from allocating inside a CUDA-graph capture.
pub const WORKSPACE_BYTES: usize = 32 << 20;

/// Cached cuBLASLt plans per handle before the cache is cleared (a plan is a few host
/// descriptors; the runtime needs about one per distinct layer shape and batch size).
const MAX_PLANS: usize = 4096;

/// Byte alignment the fused path requires of the bias vector (cuBLASLt's bias loads are
/// vectorised; the runtime's weights are 256-byte aligned). A less aligned bias takes the
/// unfused path.
const BIAS_ALIGN: u64 = 16;

/// Floating-point mode of the GEMMs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum GemmMath {
    /// Plain fp32 (the cuBLAS default; no tensor-core rounding): cuBLAS default math mode,
    /// cuBLASLt `CUBLAS_COMPUTE_32F`.
    #[default]
    Fp32,
    /// TF32 tensor cores (about 2-3x faster at large batch; relative error around 1e-3): cuBLAS
    /// `CUBLAS_TF32_TENSOR_OP_MATH`, cuBLASLt `CUBLAS_COMPUTE_32F_FAST_TF32`.
    Tf32,
}

/// A column-major GEMM `C[m, n] = op(A)[m, k] · op(B)[k, n]` as cuBLAS and cuBLASLt take it:
/// `transa`/`transb` say whether `op` transposes the stored matrix, `lda`/`ldb`/`ldc` are the
/// stored matrices' leading dimensions (elements between consecutive columns).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ColMajorGemm {
    /// `op(A) = Aᵀ`.
    pub transa: bool,
    /// `op(B) = Bᵀ`.
    pub transb: bool,
    /// Rows of C and of `op(A)`.
    pub m: usize,
    /// Columns of C and of `op(B)`.
    pub n: usize,
    /// Columns of `op(A)`, rows of `op(B)`.
    pub k: usize,
    /// Leading dimension of the stored A.
    pub lda: usize,
    /// Leading dimension of the stored B.
    pub ldb: usize,
    /// Leading dimension of C (and D).
    pub ldc: usize,
}

impl ColMajorGemm {
    /// Rows and columns of the stored A: `[k, m]` when `transa`, else `[m, k]`.
    pub fn a_dims(&self) -> (usize, usize) {
        if self.transa {
            (self.k, self.m)
        } else {
            (self.m, self.k)
        }
    }

    /// Rows and columns of the stored B: `[n, k]` when `transb`, else `[k, n]`.
    pub fn b_dims(&self) -> (usize, usize) {
        if self.transb {
            (self.n, self.k)
        } else {
            (self.k, self.n)
        }
    }

    /// Rows and columns of C and D: `[m, n]`.
    pub fn c_dims(&self) -> (usize, usize) {
        (self.m, self.n)
    }

    /// Length of the vector a `BIAS` epilogue reads: one entry per row of D.
    pub fn bias_len(&self) -> usize {
        self.m
    }
}

/// The column-major GEMM of the row-major linear layer `Y[rows, out] = X[rows, inp] · Wᵀ` with
/// `X` of leading dimension `x_ld`, `W` row-major `[out, inp]` (leading dimension `inp`) and `Y`
/// of leading dimension `y_ld` (module comment: A = W, B = X, C = Y). Errors when `x_ld < inp`
/// or `y_ld < out`.
pub fn linear_gemm(
    rows: usize,
    out: usize,
    inp: usize,
    x_ld: usize,
    y_ld: usize,
) -> Result<ColMajorGemm, CudaError> {
    if x_ld < inp || y_ld < out {
        return Err(CudaError::Invalid(format!(
            "gemm: x_ld {x_ld} < k {inp} or y_ld {y_ld} < n {out}"
        )));
    }
    Ok(ColMajorGemm {
        transa: true,
        transb: false,
        m: out,
        n: rows,
        k: inp,
        // cuBLAS requires ld >= max(1, stored rows), also for empty matrices.
        lda: inp.max(1),
        ldb: x_ld.max(1),
        ldc: y_ld.max(1),
    })
}

/// The cuBLASLt epilogues the fused path uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FusedEpilogue {
    /// `CUBLASLT_EPILOGUE_BIAS`: `D = A·B + bias`.
    Bias,
    /// `CUBLASLT_EPILOGUE_RELU_BIAS`: `D = max(A·B + bias, 0)`.
    ReluBias,
}

impl FusedEpilogue {
    /// The epilogue that adds the bias and then applies `act`, if cuBLASLt has one (`None` for
    /// the sigmoid).
    pub fn for_activation(act: Activation) -> Option<Self> {
        match act {
            Activation::None => Some(Self::Bias),
            Activation::Relu => Some(Self::ReluBias),
            Activation::Sigmoid => None,
        }
    }

    fn raw(self) -> lt_sys::cublasLtEpilogue_t {
        match self {
            Self::Bias => lt_sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS,
            Self::ReluBias => lt_sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_RELU_BIAS,
        }
    }
}

/// The largest power of two up to 256 dividing the address `p` (what cuBLASLt's
/// `MIN_ALIGNMENT_*_BYTES` preferences describe; their default assumes 256).
pub fn ptr_alignment(p: DevPtr) -> u32 {
    1u32 << p.trailing_zeros().min(8)
}

/// What [`Blas::linear_bias_act`] enqueued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "a pending epilogue must still be applied (bias_act)"]
pub enum LinearEpilogue {
    /// One cuBLASLt call computed `act(X·Wᵀ + b)`.
    Fused,
    /// One cuBLAS call computed `X·Wᵀ`; the caller must still apply the bias and activation.
    Pending,
}

/// The cuBLASLt entry points [`LtGemm`] calls (cudarc panics on a missing one at its first call,
/// so [`cublaslt_available`] looks each up first).
const LT_SYMBOLS: [&str; 12] = [
    "cublasLtCreate",
    "cublasLtDestroy",
    "cublasLtMatmul",
    "cublasLtMatmulAlgoGetHeuristic",
    "cublasLtMatmulDescCreate",
    "cublasLtMatmulDescDestroy",
    "cublasLtMatmulDescSetAttribute",
    "cublasLtMatmulPreferenceCreate",
    "cublasLtMatmulPreferenceDestroy",
    "cublasLtMatmulPreferenceSetAttribute",
    "cublasLtMatrixLayoutCreate",
    "cublasLtMatrixLayoutDestroy",
];

/// Whether libcublasLt loads and has every entry point [`LtGemm`] uses. Needs no device; the
/// answer is computed once per process.
pub fn cublaslt_available() -> Result<(), String> {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            super::probe("libcublasLt", || {
                // SAFETY: `is_culib_present` only tries to dlopen the candidate library names.
                if !unsafe { lt_sys::is_culib_present() } {
                    return Err(
                        "libcublasLt.so could not be loaded (no CUDA libraries on the library path)"
                            .into(),
                    );
                }
                // SAFETY: the library loads (checked above), so `culib` returns it; looking a
                // symbol up calls no code in it.
                let lib = unsafe { lt_sys::culib() };
                for name in LT_SYMBOLS {
                    // SAFETY: the symbol is only looked up, never called through this type.
                    if let Err(e) = unsafe { lib.get::<unsafe extern "C" fn()>(name) } {
                        return Err(format!("libcublasLt lacks {name}: {e}"));
                    }
                }
                Ok(())
            })
        })
        .clone()
}

fn lt_int(what: &str, v: usize) -> Result<u64, CudaError> {
    u64::try_from(v)
        .ok()
        .filter(|&v| v <= i32::MAX as u64)
        .ok_or_else(|| CudaError::Invalid(format!("cuBLASLt: {what} = {v} is too large")))
}

/// A cuBLASLt matmul descriptor, destroyed on drop.
struct Desc(lt_sys::cublasLtMatmulDesc_t);

impl Desc {
    fn new(math: GemmMath) -> Result<Self, CudaError> {
        let compute = match math {
            GemmMath::Fp32 => lt_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            GemmMath::Tf32 => lt_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32,
        };
        Ok(Self(lt::create_matmul_desc(
            compute,
            lt_sys::cudaDataType_t::CUDA_R_32F,
        )?))
    }

    /// Sets attribute `attr` to `*v` (whose type is the one cuBLASLt documents for `attr`).
    fn set<T: Copy>(
        &self,
        attr: lt_sys::cublasLtMatmulDescAttributes_t,
        v: &T,
    ) -> Result<(), CudaError> {
        // SAFETY: the descriptor is live (owned by self); cuBLASLt copies size_of::<T>() bytes
        // from a valid reference.
        unsafe {
            lt::set_matmul_desc_attribute(
                self.0,
                attr,
                v as *const T as *const c_void,
                std::mem::size_of::<T>(),
            )?;
        }
        Ok(())
    }
}

impl Drop for Desc {
    fn drop(&mut self) {
        // SAFETY: created by `Desc::new` and destroyed once; a failure is ignored (nothing to do
        // about it while dropping).
        let _ = unsafe { lt::destroy_matmul_desc(self.0) };
    }
}

/// A cuBLASLt matrix layout (f32, column-major), destroyed on drop.
struct Layout(lt_sys::cublasLtMatrixLayout_t);

impl Layout {
    fn new((rows, cols): (usize, usize), ld: usize) -> Result<Self, CudaError> {
        Ok(Self(lt::create_matrix_layout(
            lt_sys::cudaDataType_t::CUDA_R_32F,
            lt_int("rows", rows)?,
            lt_int("cols", cols)?,
            lt_int("ld", ld)? as i64,
        )?))
    }
}

impl Drop for Layout {
    fn drop(&mut self) {
        // SAFETY: created by `Layout::new` and destroyed once.
        let _ = unsafe { lt::destroy_matrix_layout(self.0) };
    }
}

/// A cuBLASLt heuristic preference, destroyed on drop.
struct Pref(lt_sys::cublasLtMatmulPreference_t);

impl Pref {
    fn set<T: Copy>(
        &self,
        attr: lt_sys::cublasLtMatmulPreferenceAttributes_t,
        v: &T,
    ) -> Result<(), CudaError> {
        // SAFETY: the preference is live (owned by self); cuBLASLt copies size_of::<T>() bytes
        // from a valid reference.
        unsafe {
            lt::set_matmul_pref_attribute(
                self.0,
                attr,
                v as *const T as *const c_void,
                std::mem::size_of::<T>(),
            )?;
        }
        Ok(())
    }
}

impl Drop for Pref {
    fn drop(&mut self) {
        // SAFETY: created by `lt::create_matmul_pref` and destroyed once.
        let _ = unsafe { lt::destroy_matmul_pref(self.0) };
    }
}

/// What a cached plan is for: the GEMM, the epilogue and the alignments of W, X and Y.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct PlanKey {
    gemm: ColMajorGemm,
    epilogue: FusedEpilogue,
    align: [u32; 3],
}

/// A matmul descriptor (transposes, epilogue; the bias pointer is set per call), the layouts of
/// A, B and C = D, and the algorithm the heuristic chose for them.
struct Plan {
    desc: Desc,
    a: Layout,
    b: Layout,
    c: Layout,
    algo: lt_sys::cublasLtMatmulAlgo_t,
}

/// A cuBLASLt handle bound to one stream: linear layers with the bias and ReLU in the GEMM's
/// epilogue. Not `Sync`: every call takes `&mut self` (wrap it in a mutex to share it).
pub struct LtGemm {
    handle: lt_sys::cublasLtHandle_t,
    stream: Arc<CudaStream>,
    math: GemmMath,
    ws_ptr: DevPtr,
    ws_bytes: usize,
    /// Plans by key; an error where cuBLASLt could not do the layer (no algorithm, a refused
    /// descriptor or call): those calls fall back, and [`LtGemm::fallbacks`] lists them.
    plans: HashMap<PlanKey, Result<Plan, String>>,
    /// The workspace when this handle owns it; `None` when it is its [`Blas`]'s (which outlives
    /// this handle).
    _workspace: Option<CudaSlice<u8>>,
}

impl std::fmt::Debug for LtGemm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LtGemm")
            .field("math", &self.math)
            .field("workspace_bytes", &self.ws_bytes)
            .field("plans", &self.plans.len())
            .finish_non_exhaustive()
    }
}

// SAFETY: a cuBLASLt handle and its descriptors may be used from any thread as long as calls
// on them do not overlap; `LtGemm` is not `Sync` and every call takes `&mut self`.
unsafe impl Send for LtGemm {}

impl LtGemm {
    /// A handle whose work goes to `stream`, with its own [`WORKSPACE_BYTES`] workspace and
    /// `math` as the compute type. Fails with [`CudaError::Unavailable`] when libcublasLt cannot
    /// be loaded ([`cublaslt_available`]).
    pub fn new(stream: Arc<CudaStream>, math: GemmMath) -> Result<Self, CudaError> {
        cublaslt_available().map_err(CudaError::Unavailable)?;
        stream.context().bind_to_thread()?;
        let ws = stream.alloc_zeros::<u8>(WORKSPACE_BYTES)?;
        let (p, guard) = cudarc::driver::DevicePtr::device_ptr(&ws, &stream);
        drop(guard);
        let handle = lt::create_handle()?;
        Ok(Self::from_parts(
            handle,
            stream,
            math,
            p,
            WORKSPACE_BYTES,
            Some(ws),
        ))
    }

    /// A handle using `ws_bytes` of workspace at `ws_ptr`, owned by the caller ([`Blas`]).
    fn with_shared_workspace(
        stream: Arc<CudaStream>,
        math: GemmMath,
        ws_ptr: DevPtr,
        ws_bytes: usize,
    ) -> Result<Self, CudaError> {
        cublaslt_available().map_err(CudaError::Unavailable)?;
        stream.context().bind_to_thread()?;
        let handle = lt::create_handle()?;
        Ok(Self::from_parts(
            handle, stream, math, ws_ptr, ws_bytes, None,
        ))
    }

    fn from_parts(
        handle: lt_sys::cublasLtHandle_t,
        stream: Arc<CudaStream>,
        math: GemmMath,
        ws_ptr: DevPtr,
        ws_bytes: usize,
        workspace: Option<CudaSlice<u8>>,
    ) -> Self {
        Self {
            handle,
            stream,
            math,
            ws_ptr,
            ws_bytes,
            plans: HashMap::new(),
            _workspace: workspace,
        }
    }

    /// The stream the handle's work goes to.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Enqueues the row-major `Y[m, n] = act(X[m, k] · Wᵀ + bias)` with `W` row-major `[n, k]`
    /// and `bias` of length `n`, as one cuBLASLt call with the `BIAS` (`act` = none) or
    /// `RELU_BIAS` (`act` = ReLU) epilogue. Returns `Ok(true)` when it enqueued that call (or
    /// there was nothing to compute), `Ok(false)` when it enqueued nothing because cuBLASLt
    /// cannot do it: a sigmoid, `k == 0`, a bias not 16-byte aligned, or a cuBLASLt failure for
    /// this shape and alignment (no algorithm from the heuristic, a refused descriptor or a
    /// refused `cublasLtMatmul`; remembered per shape, see [`LtGemm::fallbacks`]); the caller
    /// then runs the unfused path. A cuBLASLt failure enqueues nothing, so falling back is safe;
    /// driver errors (binding the context) are returned.
    ///
    /// # Safety
    ///
    /// `x` addresses `m` rows of `k` f32 with leading dimension `x_ld >= k`; `w` addresses
    /// `n * k` f32; `bias` addresses `n` f32; `y` addresses `m` writable rows of `n` f32 with
    /// leading dimension `y_ld >= n`, overlapping none of the inputs. All are device addresses
    /// of this handle's context and stay alive until the stream has run the call.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn linear(
        &mut self,
        m: usize,
        n: usize,
        k: usize,
        x: DevPtr,
        x_ld: usize,
        w: DevPtr,
        bias: DevPtr,
        y: DevPtr,
        y_ld: usize,
        act: Activation,
    ) -> Result<bool, CudaError> {
        let Some(epilogue) = FusedEpilogue::for_activation(act) else {
            return Ok(false);
        };
        if m == 0 || n == 0 {
            return Ok(true);
        }
        if k == 0 || !bias.is_multiple_of(BIAS_ALIGN) {
            return Ok(false);
        }
        let gemm = linear_gemm(m, n, k, x_ld, y_ld)?;
        let key = PlanKey {
            gemm,
            epilogue,
            align: [ptr_alignment(w), ptr_alignment(x), ptr_alignment(y)],
        };
        self.stream.context().bind_to_thread()?;
        if !self.plans.contains_key(&key) {
            if self.plans.len() >= MAX_PLANS {
                self.plans.clear();
            }
            let plan = self.plan(&key, bias).map_err(|e| e.to_string());
            self.plans.insert(key, plan);
        }
        let Some(Ok(plan)) = self.plans.get(&key) else {
            return Ok(false);
        };
        // SAFETY: the caller's guarantees (see # Safety) are `enqueue`'s.
        if let Err(e) = unsafe { self.enqueue(plan, x, w, bias, y) } {
            self.plans.insert(key, Err(e.to_string()));
            return Ok(false);
        }
        Ok(true)
    }

    /// The layers cuBLASLt could not do since the plan cache was last cleared, one line each:
    /// the column-major GEMM, epilogue and alignments, and the cuBLASLt error.
    pub fn fallbacks(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .plans
            .iter()
            .filter_map(|(k, p)| p.as_ref().err().map(|e| format!("{k:?}: {e}")))
            .collect();
        v.sort();
        v
    }

    /// Sets the bias pointer of `plan` and enqueues its matmul.
    ///
    /// # Safety
    ///
    /// As [`LtGemm::linear`], for the shape `plan` was built for.
    unsafe fn enqueue(
        &self,
        plan: &Plan,
        x: DevPtr,
        w: DevPtr,
        bias: DevPtr,
        y: DevPtr,
    ) -> Result<(), CudaError> {
        plan.desc.set(
            lt_sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
            &bias,
        )?;
        let alpha = 1.0f32;
        let beta = 0.0f32;
        // SAFETY: the plan's layouts describe A = W ([k, n], lda = k), B = X ([k, m],
        // ldb = x_ld) and C = D = Y ([n, m], ldc = y_ld) exactly as `linear_gemm` maps them, and
        // its descriptor reads `n` bias floats; the caller guarantees those extents (# Safety).
        // C and D are the same matrix with the same layout, which cuBLASLt allows (beta = 0);
        // alpha and beta are host scalars read during the call; the workspace is a live
        // allocation of ws_bytes used only by work on this stream; the algorithm came from the
        // heuristic for these very descriptors.
        unsafe {
            lt::matmul(
                self.handle,
                plan.desc.0,
                &alpha as *const f32 as *const c_void,
                &beta as *const f32 as *const c_void,
                w as *const c_void,
                plan.a.0,
                x as *const c_void,
                plan.b.0,
                y as *const c_void,
                plan.c.0,
                y as *mut c_void,
                plan.c.0,
                &plan.algo,
                self.ws_ptr as *mut c_void,
                self.ws_bytes,
                self.stream.cu_stream() as lt_sys::cudaStream_t,
            )?;
        }
        Ok(())
    }

    /// Builds the descriptors of `key` and asks the heuristic for an algorithm (an error when
    /// it has none: `CUBLAS_STATUS_NOT_SUPPORTED`).
    fn plan(&self, key: &PlanKey, bias: DevPtr) -> Result<Plan, CudaError> {
        use lt_sys::cublasLtMatmulDescAttributes_t as D;
        use lt_sys::cublasLtMatmulPreferenceAttributes_t as P;
        let g = &key.gemm;
        let desc = Desc::new(self.math)?;
        // TRANSA/TRANSB are int32 cublasOperation_t: 0 = N, 1 = T.
        desc.set(D::CUBLASLT_MATMUL_DESC_TRANSA, &i32::from(g.transa))?;
        desc.set(D::CUBLASLT_MATMUL_DESC_TRANSB, &i32::from(g.transb))?;
        // EPILOGUE is a uint32 cublasLtEpilogue_t; the bias type defaults to D's (f32).
        desc.set(
            D::CUBLASLT_MATMUL_DESC_EPILOGUE,
            &(key.epilogue.raw() as u32),
        )?;
        desc.set(D::CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias)?;
        let a = Layout::new(g.a_dims(), g.lda)?;
        let b = Layout::new(g.b_dims(), g.ldb)?;
        let c = Layout::new(g.c_dims(), g.ldc)?;
        let pref = Pref(lt::create_matmul_pref()?);
        pref.set(
            P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
            &(self.ws_bytes as u64),
        )?;
        let [aw, ax, ay] = key.align;
        pref.set(P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &aw)?;
        pref.set(P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &ax)?;
        pref.set(P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &ay)?;
        pref.set(P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &ay)?;
        // SAFETY: every descriptor is live; C and D share one layout.
        let found = unsafe {
            lt::get_matmul_algo_heuristic(self.handle, desc.0, a.0, b.0, c.0, c.0, pref.0)
        }?;
        if found.workspaceSize > self.ws_bytes {
            return Err(CudaError::Invalid(format!(
                "cuBLASLt chose an algorithm needing {} bytes of workspace, more than {}",
                found.workspaceSize, self.ws_bytes
            )));
        }
        Ok(Plan {
            desc,
            a,
            b,
            c,
            algo: found.algo,
        })
    }
}

impl Drop for LtGemm {
    fn drop(&mut self) {
        self.plans.clear();
        let handle = std::mem::replace(&mut self.handle, std::ptr::null_mut());
        if handle.is_null() {
            return;
        }
        let ctx = self.stream.context();
        ctx.record_err(ctx.bind_to_thread());
        // SAFETY: the handle was created by `LtGemm::new` or `with_shared_workspace`, is owned
        // by this value and is destroyed once; the workspace (own or the owning `Blas`'s) is
        // freed after this.
        let _ = unsafe { lt::destroy_handle(handle) };
    }
}

/// A cuBLAS handle bound to one stream, with its own workspace, and (when libcublasLt loads) a
/// cuBLASLt handle on the same stream sharing that workspace for the fused linear layers. Not
/// `Sync`: a handle must not be used by two threads at once (wrap it in a mutex to share it).
#[derive(Debug)]
pub struct Blas {
    handle: sys::cublasHandle_t,
    /// Dropped before the workspace it shares (field order).
    lt: Option<LtGemm>,
    /// Why `lt` is `None`.
    lt_off: Option<String>,
    stream: Arc<CudaStream>,
    _workspace: CudaSlice<u8>,
}

// SAFETY: a cuBLAS handle may be used from any thread as long as calls on it do not overlap;
// `Blas` is not `Sync` and every call takes `&mut self`, so they cannot.
unsafe impl Send for Blas {}

impl Blas {
    /// A handle whose work goes to `stream`, with fused epilogues when libcublasLt loads
    /// ([`Blas::with_options`] with `fuse = true`). Call [`super::cublas_available`] first:
    /// cudarc panics when libcublas cannot be loaded.
    pub fn new(stream: Arc<CudaStream>, math: GemmMath) -> Result<Self, CudaError> {
        Self::with_options(stream, math, true)
    }

    /// A handle whose work goes to `stream`; with `fuse`, also a cuBLASLt handle for
    /// [`Blas::linear_bias_act`]. A cuBLASLt that cannot be loaded or initialised leaves the
    /// fused path off ([`Blas::fused_epilogues`] says why) rather than failing.
    pub fn with_options(
        stream: Arc<CudaStream>,
        math: GemmMath,
        fuse: bool,
    ) -> Result<Self, CudaError> {
        stream.context().bind_to_thread()?;
        let workspace = stream.alloc_zeros::<u8>(WORKSPACE_BYTES)?;
        let handle = result::create_handle()?;
        let mut blas = Self {
            handle,
            lt: None,
            lt_off: None,
            stream,
            _workspace: workspace,
        };
        let mode = match math {
            GemmMath::Fp32 => sys::cublasMath_t::CUBLAS_DEFAULT_MATH,
            GemmMath::Tf32 => sys::cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH,
        };
        let (ws, guard) = cudarc::driver::DevicePtr::device_ptr(&blas._workspace, &blas.stream);
        drop(guard);
        // SAFETY: the handle was just created and is owned by `blas`; the stream outlives the
        // handle (held in `blas`); the workspace is a live device allocation of WORKSPACE_BYTES
        // that is dropped after the handle is destroyed (field order and `Drop`). The stream is
        // set before the workspace because setting a stream resets the workspace.
        unsafe {
            result::set_stream(blas.handle, blas.stream.cu_stream() as _)?;
            sys::cublasSetWorkspace_v2(blas.handle, ws as *mut c_void, WORKSPACE_BYTES).result()?;
            sys::cublasSetMathMode(blas.handle, mode).result()?;
        }
        if !fuse {
            blas.lt_off = Some("fused epilogues are turned off".into());
            return Ok(blas);
        }
        // The cuBLAS and cuBLASLt handles issue on the same stream and never at the same time
        // (`&mut self`), so they can share one workspace.
        match LtGemm::with_shared_workspace(Arc::clone(&blas.stream), math, ws, WORKSPACE_BYTES) {
            Ok(lt) => blas.lt = Some(lt),
            Err(CudaError::Driver(e)) => return Err(CudaError::Driver(e)),
            Err(e) => blas.lt_off = Some(e.to_string()),
        }
        Ok(blas)
    }

    /// The stream the handle's work goes to.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// `Ok` when [`Blas::linear_bias_act`] can fuse bias and ReLU into the GEMM (a cuBLASLt
    /// handle is there), else why not.
    pub fn fused_epilogues(&self) -> Result<(), &str> {
        match &self.lt_off {
            None => Ok(()),
            Some(why) => Err(why),
        }
    }

    /// The layers the cuBLASLt handle could not do and ran unfused ([`LtGemm::fallbacks`]);
    /// empty without a cuBLASLt handle.
    pub fn lt_fallbacks(&self) -> Vec<String> {
        self.lt.as_ref().map(LtGemm::fallbacks).unwrap_or_default()
    }

    /// Enqueues the linear layer `Y[m, n] = act(X[m, k] · Wᵀ + bias)` (`W` row-major `[n, k]`,
    /// `bias` of length `n`): one cuBLASLt call with the bias and activation in its epilogue
    /// ([`LtGemm::linear`]) when it can, and [`LinearEpilogue::Fused`]; otherwise (sigmoid, no
    /// cuBLASLt, no algorithm for the shape) the plain GEMM of [`Blas::linear`] and
    /// [`LinearEpilogue::Pending`]: the caller must then apply `y = act(y + bias)` itself.
    ///
    /// # Safety
    ///
    /// As [`LtGemm::linear`]: `x` addresses `m` rows of `k` f32 with leading dimension
    /// `x_ld >= k`; `w` addresses `n * k` f32; `bias` addresses `n` f32; `y` addresses `m`
    /// writable rows of `n` f32 with leading dimension `y_ld >= n`, overlapping none of the
    /// inputs. All stay alive until the stream has run the call.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn linear_bias_act(
        &mut self,
        m: usize,
        n: usize,
        k: usize,
        x: DevPtr,
        x_ld: usize,
        w: DevPtr,
        bias: DevPtr,
        y: DevPtr,
        y_ld: usize,
        act: Activation,
    ) -> Result<LinearEpilogue, CudaError> {
        if let Some(lt) = self.lt.as_mut() {
            // SAFETY: the caller's guarantees are LtGemm::linear's (see # Safety).
            if unsafe { lt.linear(m, n, k, x, x_ld, w, bias, y, y_ld, act) }? {
                return Ok(LinearEpilogue::Fused);
            }
        }
        // SAFETY: a subset of the caller's guarantees (the bias is not read).
        unsafe { self.linear(m, n, k, x, x_ld, w, y, y_ld) }?;
        Ok(LinearEpilogue::Pending)
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
        let g = linear_gemm(m, n, k, x_ld, y_ld)?;
        let int = |what: &str, v: usize| {
            i32::try_from(v).map_err(|_| {
                CudaError::Invalid(format!("gemm: {what} = {v} does not fit in an int"))
            })
        };
        let (mm, nn, kk) = (int("n", g.m)?, int("m", g.n)?, int("k", g.k)?);
        let (lda, ldb, ldc) = (int("k", g.lda)?, int("x_ld", g.ldb)?, int("y_ld", g.ldc)?);
        let op = |t: bool| {
            if t {
                sys::cublasOperation_t::CUBLAS_OP_T
            } else {
                sys::cublasOperation_t::CUBLAS_OP_N
            }
        };
        let alpha = 1.0f32;
        let beta = 0.0f32;
        self.stream.context().bind_to_thread()?;
        // SAFETY: column-major C[N, M] = op(A)[N, K] · op(B)[K, M] with A = W read transposed
        // (lda = K), B = X (ldb = x_ld >= K) and C = Y (ldc = y_ld >= N), as `linear_gemm` maps
        // them; the caller guarantees the extents (see # Safety); alpha and beta are host
        // scalars read during the call.
        unsafe {
            result::sgemm(
                self.handle,
                op(g.transa),
                op(g.transb),
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
