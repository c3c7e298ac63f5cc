//! The limits of a request: its body's size, its batch size and its indices per feature.
//!
//! The batch and index bounds are the model limits of [`streamrec_graph::limits`], re-exported
//! here; the body limit is the protocol's own.

pub use streamrec_graph::limits::{MAX_BATCH, MAX_BATCH_INDICES};

/// Largest request body by default, in bytes (the server's `max_body_bytes`, `streamrec run
/// --max-request-bytes`).
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 64 << 20;
