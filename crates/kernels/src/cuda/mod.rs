//! CUDA kernels through cudarc: run-time probing, NVRTC compilation of `kernels/*.cu`, safe
//! module loading and thin launch helpers, and cuBLAS GEMMs.
//!
//! cudarc is built with `dynamic-loading`, so this module builds on machines without CUDA; at run
//! time [`cuda_available`], [`nvrtc_available`] and [`cublas_available`] say whether the
//! libraries and a device are there (cudarc panics when a library is missing, so call these
//! first). The CUDA sources are embedded with `include_str!`, compiled by NVRTC once per process
//! for the device's compute capability (a cubin for `sm_XY`, [`compile_all_cubin`], with PTX for
//! `compute_XY`, [`compile_all`], as the fallback) and loaded once per context
//! ([`CudaKernels::load`], through [`load_modules`]).
//!
//! Launch helpers take raw device addresses ([`DevPtr`]) so that buffers shared between streams,
//! contexts and captured CUDA graphs need no `&mut` borrow; each helper is an `unsafe fn` whose
//! `# Safety` section states what the caller guarantees about those addresses.

mod blas;
mod compile;
mod launch;

pub use blas::{
    cublaslt_available, linear_gemm, ptr_alignment, Blas, ColMajorGemm, FusedEpilogue, GemmMath,
    LinearEpilogue, LtGemm, WORKSPACE_BYTES,
};
pub use compile::{
    compile, compile_all, compile_all_cubin, compile_cubin, device_arch, device_sm, load_fallback,
    load_modules, KernelSource, LoadedModules, SOURCES,
};
pub use launch::{
    concat_meta, dot_meta, lanes, tbe_meta, ConcatPart, CudaKernels, EmbeddingBagArgs, IndexWidth,
    TbeArgs, TbeTable, BLOCK, PACKET_HEADER_WORDS,
};

/// The cudarc crate this module is built on, re-exported so that dependants use the same version
/// and features.
pub use cudarc;

use std::sync::OnceLock;

use cudarc::cublas::result::CublasError;
use cudarc::driver::DriverError;

/// A device address (`CUdeviceptr`).
pub type DevPtr = u64;

/// Everything that can go wrong on the CUDA path.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// No usable driver, device or library; the message says which.
    #[error("CUDA backend unavailable: {0}")]
    Unavailable(String),
    /// A driver call failed.
    #[error("CUDA driver error: {0}")]
    Driver(#[from] DriverError),
    /// NVRTC rejected a kernel source; the log names the line.
    #[error("NVRTC failed to compile kernels/{file} for {arch}: {log}")]
    Compile {
        /// The `.cu` file.
        file: &'static str,
        /// The virtual architecture, e.g. `compute_90`.
        arch: String,
        /// The compiler log.
        log: String,
    },
    /// The driver refused a compiled module (`cuModuleLoadData`), e.g. PTX newer than the
    /// driver or a cubin for another architecture.
    #[error("loading kernels/{file} ({arch}) failed: {reason}")]
    Load {
        /// The `.cu` file.
        file: &'static str,
        /// The architecture it was compiled for, e.g. `sm_90` or `compute_90`.
        arch: String,
        /// The driver's error (and, for the PTX fallback, why the cubin failed).
        reason: String,
    },
    /// A cuBLAS call failed.
    #[error("cuBLAS error: {0}")]
    Blas(#[from] CublasError),
    /// A cuBLASLt call failed.
    #[error("cuBLASLt error: {0}")]
    BlasLt(#[from] cudarc::cublaslt::result::CublasError),
    /// Launch arguments out of range (a size that does not fit the kernel's `int`, a dynamic
    /// shared-memory request above the limit).
    #[error("invalid CUDA launch: {0}")]
    Invalid(String),
}

/// Runs a probe that may panic inside cudarc (a missing library or symbol) and turns a panic
/// into an error message.
fn probe(
    what: &str,
    f: impl FnOnce() -> Result<(), String> + std::panic::UnwindSafe,
) -> Result<(), String> {
    match std::panic::catch_unwind(f) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(format!("loading {what} failed: {msg}"))
        }
    }
}

/// Whether the CUDA driver library loads, initialises and reports at least one device. The
/// answer is computed once per process.
pub fn cuda_available() -> Result<(), String> {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            probe("libcuda", || {
                // SAFETY: `is_culib_present` only tries to dlopen the candidate library names.
                if !unsafe { cudarc::driver::sys::is_culib_present() } {
                    return Err(
                        "libcuda.so could not be loaded (no NVIDIA driver on this machine)".into(),
                    );
                }
                cudarc::driver::result::init().map_err(|e| format!("cuInit failed: {e}"))?;
                let n = cudarc::driver::result::device::get_count()
                    .map_err(|e| format!("cuDeviceGetCount failed: {e}"))?;
                if n <= 0 {
                    return Err("the driver reports no CUDA device".into());
                }
                Ok(())
            })
        })
        .clone()
}

/// Whether libnvrtc loads (it is searched on the default library paths and `LD_LIBRARY_PATH`
/// under the names cudarc knows, e.g. `libnvrtc.so.13`). Needs no device.
pub fn nvrtc_available() -> Result<(), String> {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            probe("libnvrtc", || {
                // SAFETY: `is_culib_present` only tries to dlopen the candidate library names.
                if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
                    Ok(())
                } else {
                    Err("libnvrtc.so could not be loaded (no CUDA toolkit or NVRTC wheel on the library path)".into())
                }
            })
        })
        .clone()
}

/// Whether libcublas loads. Needs no device.
pub fn cublas_available() -> Result<(), String> {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            probe("libcublas", || {
                // SAFETY: `is_culib_present` only tries to dlopen the candidate library names.
                if unsafe { cudarc::cublas::sys::is_culib_present() } {
                    Ok(())
                } else {
                    Err(
                        "libcublas.so could not be loaded (no CUDA libraries on the library path)"
                            .into(),
                    )
                }
            })
        })
        .clone()
}
