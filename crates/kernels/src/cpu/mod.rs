//! CPU kernels: safe Rust over slices, with GEMMs through `matrixmultiply`.
//!
//! Every kernel writes the whole `rows x cols` region of its output view and nothing outside it,
//! so an output may be a column slice of a wider buffer. Shapes are checked with assertions;
//! indices are assumed to be validated by the caller, and a bad one panics (it is never read
//! out of bounds).

mod dense;
mod embedding;
mod interaction;

pub use dense::{concat, linear, linear_parallel, relu_inplace, sigmoid, sigmoid_inplace};
pub use embedding::{embedding_bag, table_batched_embedding_bag};
pub use interaction::{dcn_cross, dot_interaction};
