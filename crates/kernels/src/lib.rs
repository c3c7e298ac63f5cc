//! StreamRec kernels: CPU reference and fast kernels, and CUDA kernels through cudarc.
//!
//! The CPU kernels in [`cpu`] take slices and strided matrix views ([`MatRef`], [`MatMut`]),
//! with SIMD micro-kernels for the prepacked linear layers; the CUDA kernels in [`cuda`] are compiled with NVRTC and launched through cudarc
//! (loaded at run time, so the crate builds and its CPU kernels run without a GPU).
//!
//! A pooled embedding lookup (PyTorch's `EmbeddingBag`) of a 4 x 2 table, two bags:
//!
//! ```
//! use streamrec_kernels::{cpu, MatMut, Pooling};
//!
//! // Row r of the table is [r, 10 r].
//! let table = [0.0, 0.0, 1.0, 10.0, 2.0, 20.0, 3.0, 30.0];
//! let indices: [i64; 3] = [1, 3, 2];
//! let offsets: [i64; 2] = [0, 2]; // bag 0 = rows {1, 3}, bag 1 = row {2}
//! let mut out = vec![0.0f32; 2 * 2];
//! cpu::embedding_bag(
//!     &table,
//!     4,
//!     2,
//!     &indices,
//!     &offsets,
//!     Pooling::Sum,
//!     MatMut::contiguous(&mut out, 2, 2),
//! );
//! assert_eq!(out, [4.0, 40.0, 2.0, 20.0]);
//! ```

#![warn(missing_docs)]

pub mod cpu;
pub mod types;

pub use types::*;
pub mod cuda;
