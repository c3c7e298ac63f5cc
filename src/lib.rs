//! StreamRec facade: re-exports the workspace crates for embedding in other programs.
//!
//! `streamrec::graph` holds specs, operator graphs and stream assignment; `streamrec::runtime`
//! the backends and the engine; `streamrec::kernels` the kernels; `streamrec::protocol` the
//! KServe v2 wire format; `streamrec::serve` the HTTP server; `streamrec::loadgen` the load
//! generator. Engine assembly (backend choice, planning, measured `auto`) is
//! `streamrec::runtime::builder::EngineBuilder`; the command-line tool's own code is private to
//! the `streamrec` binary.

pub use streamrec_graph as graph;
pub use streamrec_kernels as kernels;
pub use streamrec_loadgen as loadgen;
pub use streamrec_protocol as protocol;
pub use streamrec_runtime as runtime;
pub use streamrec_serve as serve;
