//! Choosing a backend and building an engine on it, type-erased behind [`Infer`]: the backend
//! kinds, the backend settings that are not part of the plan, and `auto`'s resolution.

use std::sync::Arc;

use streamrec_graph::{OpGraph, Plan};

use super::{Engine, EngineConfig, Infer};
use crate::backend::cpu::CpuBackend;
use crate::backend::cuda::{cuda_available, CudaBackend, CudaConfig};
use crate::error::Result;
use crate::weights::Weights;

/// Which backend to run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// CUDA when a device is present, else the CPU.
    Auto,
    /// The CPU backend.
    Cpu,
    /// The CUDA backend.
    Cuda,
}

impl std::str::FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda),
            _ => Err(format!(
                "unknown backend `{s}` (expected auto, cpu or cuda)"
            )),
        }
    }
}

/// Backend settings that are not part of the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendOptions {
    /// Let CUDA GEMMs use TF32 tensor cores.
    pub tf32: bool,
    /// CPU: the threads streams and kernels run on (the pool's workers plus the host thread
    /// that synchronises; 1: everything on the host thread).
    pub cpu_threads: usize,
    /// CPU: fold each square linear layer into the table whose pooled rows it alone reads
    /// ([`CpuBackend::with_fold`]; on by default).
    pub cpu_fold: bool,
    /// CPU: the instruction set of the linear layers' kernels ([`CpuBackend::with_isa`];
    /// `None`, the default: the fastest this processor has).
    pub cpu_isa: Option<streamrec_kernels::cpu::Isa>,
}

impl Default for BackendOptions {
    fn default() -> Self {
        Self {
            tf32: false,
            cpu_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_fold: true,
            cpu_isa: None,
        }
    }
}

/// Builds an engine on the chosen backend, type-erased.
pub fn build_engine(
    kind: BackendKind,
    graph: Arc<OpGraph>,
    plan: Plan,
    weights: &Weights,
    cfg: EngineConfig,
    opts: BackendOptions,
) -> Result<Box<dyn Infer>> {
    match resolve(kind)? {
        BackendKind::Cpu => Ok(Box::new(Engine::new(
            match opts.cpu_isa {
                Some(isa) => CpuBackend::with_threads(opts.cpu_threads).with_isa(isa)?,
                None => CpuBackend::with_threads(opts.cpu_threads),
            }
            .with_fold(opts.cpu_fold),
            graph,
            plan,
            weights,
            cfg,
        )?)),
        _ => Ok(Box::new(Engine::new(
            CudaBackend::with_config(CudaConfig {
                math: if opts.tf32 {
                    streamrec_kernels::cuda::GemmMath::Tf32
                } else {
                    streamrec_kernels::cuda::GemmMath::Fp32
                },
                ..CudaConfig::default()
            })?,
            graph,
            plan,
            weights,
            cfg,
        )?)),
    }
}

/// Resolves `auto` to the backend that will be used.
pub fn resolve(kind: BackendKind) -> Result<BackendKind> {
    match kind {
        BackendKind::Auto => Ok(if cuda_available().is_ok() {
            BackendKind::Cuda
        } else {
            BackendKind::Cpu
        }),
        k => Ok(k),
    }
}
