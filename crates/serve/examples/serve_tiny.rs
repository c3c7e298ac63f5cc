//! Serves a model spec (by default `workloads/tiny.toml`) on a free loopback port, sends itself
//! a readiness check and one KServe v2 inference request of 4 random samples over a plain TCP
//! connection, prints the scores, and stops.
//!
//! ```sh
//! cargo run -p streamrec-serve --example serve_tiny                      # tiny, then stop
//! cargo run -p streamrec-serve --example serve_tiny -- workloads/tiny.toml 30
//! ```
//!
//! A second argument keeps the server up for that many seconds more (at most 600) before it
//! stops, so that it can be tried by hand meanwhile, e.g.
//! `curl -s 127.0.0.1:PORT/v2/models/tiny` with the port it prints. It only listens on
//! 127.0.0.1.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use streamrec_graph::{ModelSpec, OpGraph, Plan};
use streamrec_runtime::gen::{random_batch, Skew};
use streamrec_runtime::request::InferRequest;
use streamrec_runtime::{CpuBackend, Engine, EngineConfig, Weights};
use streamrec_serve::{Model, ServeConfig, Server};

type Error = Box<dyn std::error::Error>;

/// One HTTP/1.1 request on a fresh connection; returns the status code and the body.
fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> Result<(u16, String), Error> {
    let mut conn = TcpStream::connect(addr)?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        conn,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply)?;
    let (head, body) = reply
        .split_once("\r\n\r\n")
        .ok_or("the reply has no complete head")?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("the reply has no status code")?;
    Ok((status, body.to_string()))
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = args.first().map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../workloads/tiny.toml")
    });
    let linger_s: u64 = match args.get(1) {
        Some(s) => s
            .parse()
            .ok()
            .filter(|&n| n <= 600)
            .ok_or("the second argument is a number of seconds, at most 600")?,
        None => 0,
    };

    let spec = ModelSpec::load(&path, Some(100_000))?;
    let graph = OpGraph::from_spec(&spec);
    let weights = Weights::for_graph(&graph)?;
    let cfg = ServeConfig {
        host: "127.0.0.1".into(),
        port: 0,
        max_batch: 64,
        ..ServeConfig::default()
    };
    let engine = Engine::new(
        CpuBackend::new(),
        Arc::new(graph.clone()),
        Plan::single(&graph),
        &weights,
        EngineConfig {
            max_batch: cfg.max_batch,
            ..EngineConfig::default()
        },
    )?;
    let name = spec.name.clone();
    let body = serde_json::to_string(&InferRequest::from_batch(
        &spec,
        &random_batch(&spec, 4, Skew::Uniform, 1),
    ))?;

    let started = Instant::now();
    let running = Server::start(
        cfg,
        Model {
            spec,
            engine: Arc::new(engine),
        },
    )?
    .spawn();
    let addr = running.addr();
    println!(
        "serving `{name}` on http://{addr} (warmed up in {:.1} ms)",
        started.elapsed().as_secs_f64() * 1e3
    );

    let (status, _) = http(addr, "GET", "/v2/health/ready", "")?;
    println!("GET /v2/health/ready -> {status}");

    let t = Instant::now();
    let (status, reply) = http(addr, "POST", &format!("/v2/models/{name}/infer"), &body)?;
    let us = t.elapsed().as_secs_f64() * 1e6;
    if status != 200 {
        return Err(format!("POST /v2/models/{name}/infer -> {status}: {reply}").into());
    }
    let json: serde_json::Value = serde_json::from_str(&reply)?;
    let scores = &json["outputs"][0]["data"];
    println!("POST /v2/models/{name}/infer (4 samples) -> {status} in {us:.0} us");
    println!("scores: {scores}");

    if linger_s > 0 {
        println!("serving for {linger_s} s more");
        std::thread::sleep(Duration::from_secs(linger_s));
    }
    running.stop()?;
    println!("stopped");
    Ok(())
}
