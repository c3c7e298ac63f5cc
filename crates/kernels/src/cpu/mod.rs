//! CPU kernels: safe Rust over slices, with prepacked linear layers on AVX-512 / AVX2+FMA
//! micro-kernels chosen at run time ([`PackedLinear`], [`linear_packed`]) and the other GEMMs
//! through `matrixmultiply`.
//!
//! Every kernel writes the whole `rows x cols` region of its output view and nothing outside it,
//! so an output may be a column slice of a wider buffer. Shapes are checked with assertions;
//! indices are assumed to be validated by the caller, and a bad one panics (it is never read
//! out of bounds).

mod dense;
mod embedding;
mod gemm;
mod interaction;
mod par;
mod peak;

pub use dense::{
    bias_act_par, concat, linear, linear_parallel, relu_inplace, sigmoid, sigmoid_inplace,
    STREAM_MIN_ROWS,
};
pub use embedding::{
    embedding_bag, embedding_bag_opts, embedding_bag_par, table_batched_embedding_bag,
    table_batched_embedding_bag_into, table_batched_embedding_bag_isa,
    table_batched_embedding_bag_par, BagOpts, PREFETCH_ROWS,
};
pub use gemm::{
    linear_packed, linear_packed_cat_par, linear_packed_isa, linear_packed_par,
    linear_packed_parallel, Isa, IsaError, PackedLinear, PANEL,
};
pub use interaction::{dcn_cross, dot_interaction};
pub use par::{Parallel, ScopedThreads, Sequential};
pub use peak::{fma_loop, fma_peak};
