//! The embedded CUDA sources, their NVRTC compilation (cached once per process per
//! architecture) and their loading into a context.
//!
//! Loading prefers a cubin for the device's own architecture (`sm_XY`): the driver loads machine
//! code as it is, with no JIT at start-up and no dependence on the driver's PTX version. PTX for
//! the virtual architecture (`compute_XY`), JIT-compiled by the driver, is the fallback when the
//! cubin cannot be built or loaded (e.g. an NVRTC older than the device); [`load_fallback`] says
//! why it was needed. NVRTC compile errors carry NVRTC's log ([`CudaError::Compile`]) and module
//! load errors say which file and architecture the driver refused ([`CudaError::Load`]).

use std::collections::HashMap;
use std::ffi::{c_char, CString};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{CudaContext, CudaModule};
use cudarc::nvrtc::{result as nvrtc, sys as nvrtc_sys};
use cudarc::nvrtc::{CompileError, CompileOptions, Ptx};

use super::CudaError;

/// One `.cu` file of this crate's `kernels/` folder and the kernels it defines.
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
        source: include_str!("../../kernels/embedding.cu"),
        functions: &[
            "embedding_bag_i32",
            "embedding_bag_i64",
            "tbe_i32",
            "tbe_i64",
        ],
    },
    KernelSource {
        file: "dense.cu",
        source: include_str!("../../kernels/dense.cu"),
        functions: &["bias_act", "concat_parts", "dcn_cross_epilogue"],
    },
    KernelSource {
        file: "interaction.cu",
        source: include_str!("../../kernels/interaction.cu"),
        functions: &["dot_interaction"],
    },
];

/// The NVRTC virtual architecture of a context's device, e.g. `compute_90` for an H100/H200.
pub fn device_arch(ctx: &Arc<CudaContext>) -> Result<String, CudaError> {
    let (major, minor) = ctx.compute_capability()?;
    Ok(format!("compute_{major}{minor}"))
}

/// The real architecture of a context's device, e.g. `sm_90` for an H100/H200.
pub fn device_sm(ctx: &Arc<CudaContext>) -> Result<String, CudaError> {
    let (major, minor) = ctx.compute_capability()?;
    Ok(format!("sm_{major}{minor}"))
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

/// NVRTC's log as text (it ends with a NUL).
fn log_text(raw: &[c_char]) -> String {
    let bytes: Vec<u8> = raw
        .iter()
        .map(|&c| c as u8)
        .take_while(|&b| b != 0)
        .collect();
    String::from_utf8_lossy(&bytes).trim_end().to_string()
}

/// An NVRTC program, destroyed on drop.
struct Program(nvrtc_sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: the program was created by `create_program` and is destroyed once, here; a
        // failure leaks it, which is all that can be done while dropping.
        let _ = unsafe { nvrtc::destroy_program(self.0) };
    }
}

/// Compiles one source to a cubin (an ELF image of machine code) for the real architecture
/// `sm` (e.g. `sm_90`), with the same options and program name as [`compile`]. Call
/// [`super::nvrtc_available`] first: cudarc panics when libnvrtc cannot be loaded.
pub fn compile_cubin(src: &KernelSource, sm: &str) -> Result<Vec<u8>, CudaError> {
    let fail = |log: String| CudaError::Compile {
        file: src.file,
        arch: sm.to_string(),
        log,
    };
    let text =
        CString::new(src.source).map_err(|_| fail("the source contains a NUL byte".into()))?;
    let name =
        CString::new(src.file).map_err(|_| fail("the file name contains a NUL byte".into()))?;
    // Declared after `text` and `name`, so dropped (destroyed) before them: NVRTC may refer to
    // both until the program is destroyed.
    let prog = Program(
        nvrtc::create_program(&text, Some(&name))
            .map_err(|e| fail(format!("nvrtcCreateProgram failed: {e}")))?,
    );
    let opts = [format!("--gpu-architecture={sm}")];
    // SAFETY: `prog` is a live program created above and destroyed only when `prog` drops.
    if let Err(e) = unsafe { nvrtc::compile_program(prog.0, &opts) } {
        // SAFETY: as above.
        let log = match unsafe { nvrtc::get_program_log(prog.0) } {
            Ok(raw) => log_text(&raw),
            Err(le) => format!("{e} (and the log could not be read: {le})"),
        };
        return Err(fail(log));
    }
    let mut size = 0usize;
    // SAFETY: as above; `size` is a valid out-pointer.
    unsafe { nvrtc_sys::nvrtcGetCUBINSize(prog.0, &mut size) }
        .result()
        .map_err(|e| fail(format!("nvrtcGetCUBINSize failed: {e}")))?;
    if size == 0 {
        return Err(fail(format!(
            "NVRTC produced no cubin for `{sm}` (a virtual architecture gives PTX only)"
        )));
    }
    let mut image = vec![0u8; size];
    // SAFETY: as above; `image` has the `size` bytes NVRTC reported.
    unsafe { nvrtc_sys::nvrtcGetCUBIN(prog.0, image.as_mut_ptr().cast()) }
        .result()
        .map_err(|e| fail(format!("nvrtcGetCUBIN failed: {e}")))?;
    Ok(image)
}

/// A per-process cache of compiled images per architecture.
type Cache<T> = OnceLock<Mutex<HashMap<String, Arc<Vec<T>>>>>;

/// Every source compiled by `f` for `arch`, in [`SOURCES`] order, from `cache` when it was
/// compiled before. Holding the lock while compiling makes concurrent first callers wait for
/// one compile.
fn cached<T>(
    cache: &'static Cache<T>,
    arch: &str,
    f: impl Fn(&KernelSource, &str) -> Result<T, CudaError>,
) -> Result<Arc<Vec<T>>, CudaError> {
    let cache = cache.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = cache.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = map.get(arch) {
        return Ok(p.clone());
    }
    let all = SOURCES
        .iter()
        .map(|s| f(s, arch))
        .collect::<Result<Vec<_>, _>>()?;
    let all = Arc::new(all);
    map.insert(arch.to_string(), all.clone());
    Ok(all)
}

/// Every source compiled to PTX for `arch`, in [`SOURCES`] order; compiled on the first call for
/// an architecture and cached for the rest of the process.
pub fn compile_all(arch: &str) -> Result<Arc<Vec<Ptx>>, CudaError> {
    static CACHE: Cache<Ptx> = OnceLock::new();
    cached(&CACHE, arch, compile)
}

/// Every source compiled to a cubin for the real architecture `sm`, in [`SOURCES`] order;
/// compiled on the first call for an architecture and cached for the rest of the process.
pub fn compile_all_cubin(sm: &str) -> Result<Arc<Vec<Vec<u8>>>, CudaError> {
    static CACHE: Cache<Vec<u8>> = OnceLock::new();
    cached(&CACHE, sm, compile_cubin)
}

/// Every source loaded into a context, and what it was loaded as.
pub struct LoadedModules {
    /// `sm_XY` when the cubins loaded, `compute_XY` when the PTX fallback did.
    pub arch: String,
    /// One module per source, in [`SOURCES`] order.
    pub modules: Vec<Arc<CudaModule>>,
}

/// Why the last load in this process fell back from the cubin to PTX, if one did.
static FALLBACK: Mutex<Option<String>> = Mutex::new(None);

/// Why the most recent [`load_modules`] of this process loaded PTX instead of the device's
/// cubin (the cubin's compile or load error); `None` when it loaded the cubin.
pub fn load_fallback() -> Option<String> {
    FALLBACK.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Loads one image per source into `ctx`.
fn load_each(
    ctx: &Arc<CudaContext>,
    arch: &str,
    images: impl Iterator<Item = Ptx>,
) -> Result<Vec<Arc<CudaModule>>, CudaError> {
    SOURCES
        .iter()
        .zip(images)
        .map(|(src, image)| {
            ctx.load_module(image).map_err(|e| CudaError::Load {
                file: src.file,
                arch: arch.to_string(),
                reason: e.to_string(),
            })
        })
        .collect()
}

/// Loads every source into `ctx`: the cubins for the device's own `sm_XY`
/// ([`compile_all_cubin`]) or, when they cannot be built or loaded, the PTX for `compute_XY`
/// ([`compile_all`]), JIT-compiled by the driver. Both compiles are cached per process. Fails
/// only when the PTX fallback fails too: with its NVRTC log ([`CudaError::Compile`]) or the
/// driver's refusal ([`CudaError::Load`], which also names the cubin's failure). Call
/// [`super::nvrtc_available`] first.
pub fn load_modules(ctx: &Arc<CudaContext>) -> Result<LoadedModules, CudaError> {
    let sm = device_sm(ctx)?;
    let cubin = compile_all_cubin(&sm)
        .and_then(|images| load_each(ctx, &sm, images.iter().map(|i| Ptx::from_binary(i.clone()))));
    let why = match cubin {
        Ok(modules) => {
            *FALLBACK.lock().unwrap_or_else(|p| p.into_inner()) = None;
            return Ok(LoadedModules { arch: sm, modules });
        }
        Err(e) => e.to_string(),
    };
    let arch = device_arch(ctx)?;
    let modules = compile_all(&arch)
        .and_then(|ptx| load_each(ctx, &arch, ptx.iter().cloned()))
        .map_err(|e| match e {
            CudaError::Load { file, arch, reason } => CudaError::Load {
                file,
                arch,
                reason: format!("{reason} (tried after the {sm} cubin failed: {why})"),
            },
            other => other,
        })?;
    *FALLBACK.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
    Ok(LoadedModules { arch, modules })
}
