//! A `streamrec serve` server for the tests: in process (the tiny model, a single-stream CPU
//! engine over it, test settings with a free loopback port, the server on its own thread), or
//! as a `streamrec serve` process ([`ServeProcess`]).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use streamrec::graph::{ModelSpec, OpGraph, Plan};
use streamrec::runtime::{CpuBackend, Engine, EngineConfig, Infer, Weights};
use streamrec::serve::{Model, Running, ServeConfig, Server};

/// workloads/tiny.toml.
pub fn tiny() -> ModelSpec {
    ModelSpec::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads/tiny.toml"),
        None,
    )
    .expect("tiny loads")
}

/// A validating single-stream CPU engine for `spec` (weights from its seed).
pub fn engine(spec: &ModelSpec, max_batch: usize, contexts: usize) -> Arc<dyn Infer> {
    let graph = OpGraph::from_spec(spec);
    let weights = Weights::for_graph(&graph).unwrap();
    Arc::new(
        Engine::new(
            CpuBackend::new(),
            Arc::new(graph.clone()),
            Plan::single(&graph),
            &weights,
            EngineConfig {
                contexts,
                max_batch,
                graphs: false,
                trace: false,
            },
        )
        .unwrap(),
    )
}

/// Test settings: a free port, max batch 64, a queue of 1024 samples, a 10 s drain.
pub fn config() -> ServeConfig {
    ServeConfig {
        port: 0,
        max_batch: 64,
        queue_capacity: 1024,
        drain_timeout_s: 10.0,
        ..ServeConfig::default()
    }
}

/// The tiny model served with `cfg` on its own thread.
pub fn serve(cfg: ServeConfig, engine: Arc<dyn Infer>) -> Running {
    Server::start(
        cfg,
        Model {
            spec: tiny(),
            engine,
        },
    )
    .expect("server starts")
    .spawn()
}

/// The URL a `streamrec serve` process (stdout piped) gives on its first line, `listening on
/// http://ADDR`, which it prints once ready.
pub fn listening_on(child: &mut Child) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    line.trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string()
}

/// The gRPC address a `streamrec serve --grpc-port ...` process (stderr piped) prints on stderr,
/// `grpc on ADDR`; the rest of its stderr is drained on a thread.
pub fn grpc_on(child: &mut Child) -> std::net::SocketAddr {
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let grpc = loop {
        let mut l = String::new();
        if err.read_line(&mut l).unwrap() == 0 {
            panic!("streamrec serve printed no `grpc on ADDR` line");
        }
        if let Some(a) = l.trim().strip_prefix("grpc on ") {
            break a.parse().unwrap();
        }
    };
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    grpc
}

/// `streamrec serve workloads/tiny.toml` on a free port, as a process; killed when dropped.
pub struct ServeProcess {
    /// The process.
    pub child: Child,
    /// `http://ADDR`, from its first line.
    pub url: String,
}

impl ServeProcess {
    /// Starts it and waits for its first line (`listening on http://ADDR`: ready).
    pub fn start() -> ServeProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_streamrec"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["serve", "workloads/tiny.toml", "--port", "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let url = listening_on(&mut child);
        ServeProcess { child, url }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
