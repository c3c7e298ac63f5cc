//! StreamRec serving: the HTTP front end for the engine (KServe v2 REST), and optionally the
//! KServe v2 gRPC one ([`grpc`]) beside it.
//!
//! The KServe v2 protocol that Triton and KServe speak, so existing clients (tritonclient),
//! dashboards and tools work unchanged: health, server and model metadata, readiness and
//! `POST /v2/models/{name}/infer` in JSON or with Triton's binary tensor data extension, and
//! `GET /metrics` with Triton's series names. Requests are validated with the engine's own
//! checks, queued (bounded in samples: 503 with Retry-After when full), batched dynamically
//! and run on dedicated threads, one per execution context; the async executor never runs the
//! engine. What clients can hold is bounded: connections ([`conn`]), time (header, body and
//! keep-alive timeouts) and request memory ([`budget`]). The crate knows no kernel: it takes
//! any [`streamrec_runtime::Infer`].
//!
//! A server for a small model on a free loopback port (`port: 0`), serving on its own thread,
//! one inference request over a plain [`std::net::TcpStream`], and a clean stop:
//!
//! ```
//! use std::io::{Read, Write};
//! use std::net::TcpStream;
//! use std::sync::Arc;
//! use streamrec_graph::{ModelSpec, OpGraph, Plan};
//! use streamrec_runtime::gen::{random_batch, Skew};
//! use streamrec_runtime::request::InferRequest;
//! use streamrec_runtime::{CpuBackend, Engine, EngineConfig, Weights};
//! use streamrec_serve::{Model, ServeConfig, Server};
//!
//! let spec = ModelSpec::parse(
//!     r#"
//!     name = "doc"
//!     dense = 13
//!     [bottom]
//!     layers = [32, 16]
//!     [sparse]
//!     count = 4
//!     rows = [100, 37, 250, 8]
//!     dim = 16
//!     pooling = [1, 2, 3, 1]
//!     [interaction]
//!     kind = "dot"
//!     [top]
//!     layers = [32, 16, 1]
//!     "#,
//!     "doc",
//!     None,
//! )?;
//! let graph = OpGraph::from_spec(&spec);
//! let weights = Weights::for_graph(&graph)?;
//! let cfg = ServeConfig { port: 0, max_batch: 16, ..ServeConfig::default() };
//! let engine = Engine::new(
//!     CpuBackend::new(),
//!     Arc::new(graph.clone()),
//!     Plan::single(&graph),
//!     &weights,
//!     EngineConfig { max_batch: cfg.max_batch, ..EngineConfig::default() },
//! )?;
//! let body = serde_json::to_string(&InferRequest::from_batch(
//!     &spec,
//!     &random_batch(&spec, 3, Skew::Uniform, 1),
//! ))?;
//! let running = Server::start(cfg, Model { spec, engine: Arc::new(engine) })?.spawn();
//!
//! let mut conn = TcpStream::connect(running.addr())?;
//! write!(
//!     conn,
//!     "POST /v2/models/doc/infer HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
//!      Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
//!     body.len()
//! )?;
//! let mut reply = String::new();
//! conn.read_to_string(&mut reply)?;
//! assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
//! let json: serde_json::Value = serde_json::from_str(reply.split("\r\n\r\n").nth(1).unwrap())?;
//! assert_eq!(json["outputs"][0]["data"].as_array().unwrap().len(), 3);
//!
//! running.stop()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

pub mod batcher;
pub mod budget;
#[cfg(feature = "testing")]
pub mod client;
pub mod compression;
pub mod config;
pub mod conn;
pub mod error;
#[cfg(feature = "testing")]
pub mod fuzz;
pub mod grpc;
pub mod grpc_conn;
mod infer;
pub mod metrics;
pub mod protocol;
mod reply;
mod routes;
pub mod server;
mod state;
pub mod triton;

pub use config::ServeConfig;
pub use error::ServeError;
pub use server::{shutdown_signal, Binding, Model, Running, Server};
