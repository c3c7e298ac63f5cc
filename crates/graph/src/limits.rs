//! Upper bounds on every size that comes from a spec, a request or a flag. (The default
//! request body limit is the protocol's: `streamrec_protocol::limits`.)
//!
//! Sizes are checked against these bounds (and computed with checked arithmetic) before any
//! allocation, so a typo such as `pooling = 1000000000000` is a one-line error naming the field,
//! never a capacity-overflow panic or a multi-terabyte allocation. The same numbers are listed in
//! workloads/README.md.

/// Most samples in one batch (`--batch`, a request's `B`, the server's `max_batch`).
pub const MAX_BATCH: usize = 65_536;
/// Most sparse features in a model (`sparse.count` or the length of `sparse.features`).
pub const MAX_FEATURES: usize = 1_024;
/// Most rows in one embedding table (2^40, about 10^12).
pub const MAX_ROWS: usize = 1 << 40;
/// Widest embedding dimension.
pub const MAX_DIM: usize = 8_192;
/// Most indices per lookup (the multi-hot size of a generated bag).
pub const MAX_POOLING: usize = 4_096;
/// Widest dense input, MLP layer or branch layer.
pub const MAX_WIDTH: usize = 65_536;
/// Most layers in one MLP or one feature branch.
pub const MAX_LAYERS: usize = 64;
/// Most DCN cross layers.
pub const MAX_CROSS_LAYERS: usize = 64;
/// Largest DCN low rank.
pub const MAX_RANK: usize = 65_536;
/// Most indices of one feature in one batch (a request's `[N]` or a generated batch).
pub const MAX_BATCH_INDICES: usize = 1 << 28;
