//! StreamRec kernels: CPU reference and fast kernels, and CUDA kernels through cudarc.

pub mod cpu;
pub mod types;

pub use types::*;
pub mod cuda;
