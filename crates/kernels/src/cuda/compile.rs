//! The embedded CUDA sources and their NVRTC compilation, cached once per process per
//! architecture.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::CudaContext;
use cudarc::nvrtc::{CompileError, CompileOptions, Ptx};

use super::CudaError;

/// One `.cu` file of the repository's `kernels/` folder and the kernels it defines.
#[derive(Clone, Copy, Debug)]
pub struct KernelSource {
    /// The file name inside `kernels/`.
    pub file: &'static str,
    /// Its text.
    pub source: &'static str,
    /// The `extern "C" __global__` functions it defines.
    pub functions: &'static [&'static str],
}

/// Every CUDA source, embedded at build time.
pub const SOURCES: &[KernelSource] = &[
    KernelSource {
        file: "embedding.cu",
        source: include_str!("../../../../kernels/embedding.cu"),
        functions: &[
            "embedding_bag_i32",
            "embedding_bag_i64",
            "tbe_i32",
            "tbe_i64",
        ],
    },
    KernelSource {
        file: "dense.cu",
        source: include_str!("../../../../kernels/dense.cu"),
        functions: &["bias_act", "concat_parts", "dcn_cross_epilogue"],
    },
    KernelSource {
        file: "interaction.cu",
        source: include_str!("../../../../kernels/interaction.cu"),
        functions: &["dot_interaction"],
    },
];

/// The NVRTC virtual architecture of a context's device, e.g. `compute_90` for an H100/H200.
pub fn device_arch(ctx: &Arc<CudaContext>) -> Result<String, CudaError> {
    let (major, minor) = ctx.compute_capability()?;
    Ok(format!("compute_{major}{minor}"))
}

/// Compiles one source to PTX for `arch` (e.g. `compute_90`). Call [`super::nvrtc_available`]
/// first: cudarc panics when libnvrtc cannot be loaded.
pub fn compile(src: &KernelSource, arch: &str) -> Result<Ptx, CudaError> {
    let opts = CompileOptions {
        options: vec![format!("--gpu-architecture={arch}")],
        name: Some(src.file.to_string()),
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(src.source, opts).map_err(|e| CudaError::Compile {
        file: src.file,
        arch: arch.to_string(),
        log: match e {
            CompileError::CompileError { log, .. } => log.to_string_lossy().into_owned(),
            other => other.to_string(),
        },
    })
}

/// Every source compiled for `arch`, in [`SOURCES`] order; compiled on the first call for an
/// architecture and cached for the rest of the process.
pub fn compile_all(arch: &str) -> Result<Arc<Vec<Ptx>>, CudaError> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<Vec<Ptx>>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    // Holding the lock while compiling makes concurrent first callers wait for one compile.
    let mut map = cache.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = map.get(arch) {
        return Ok(p.clone());
    }
    let ptx = SOURCES
        .iter()
        .map(|s| compile(s, arch))
        .collect::<Result<Vec<_>, _>>()?;
    let ptx = Arc::new(ptx);
    map.insert(arch.to_string(), ptx.clone());
    Ok(ptx)
}
