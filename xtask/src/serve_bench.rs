//! `cargo xtask serve-bench`: what the server adds over calling the engine directly, measured
//! side by side in one run over loopback with keep-alive connections, per protocol (HTTP with a
//! JSON body, HTTP with Triton's binary extension, KServe v2 gRPC with a lean unary call and
//! with tonic's client): tiny at batch 1 and
//! streamrec-26 (row-capped) at batch 128; requests/s and p50/p99, with one client (latency)
//! and with several (throughput), in interleaved rounds with their spread. Beside them, `echo`:
//! the same bytes exchanged over a bare loopback TCP connection with a thread that does nothing
//! else, the machine's own floor for any client and server pair (on a virtual machine, waking
//! a thread on another vCPU alone can cost tens of microseconds).
//!
//! Options: `--secs S` per setting, `--rounds N`, `--clients N` (the throughput runs),
//! `--row-cap ROWS` (streamrec-26's tables), `--modes echo,json,binary,grpc,tonic` (a subset;
//! `direct` always runs), `--model tiny|streamrec-26`, `--out DIR` (serve.csv).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use streamrec_runtime::stats::median;

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use streamrec_graph::{Algorithm, ModelSpec};
use streamrec_loadgen::grpc::{frame, GrpcConn};
use streamrec_protocol::grpc::pb;
use streamrec_protocol::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use streamrec_runtime::builder::EngineBuilder;
use streamrec_runtime::gen::{random_batch, random_validated, Skew};
use streamrec_runtime::request::InferRequest;
use streamrec_runtime::BackendKind;
use streamrec_runtime::Infer;
use streamrec_runtime::ValidatedBatch;
use streamrec_serve::client::Client;
use streamrec_serve::{Model, ServeConfig, Server};

use crate::common::spread;

struct Opts {
    secs: f64,
    clients: usize,
    row_cap: usize,
    rounds: usize,
    out: Option<PathBuf>,
    /// The modes measured after `direct` (all of [`MODES`] unless `--modes` names some).
    modes: Vec<&'static str>,
    /// The models measured (`tiny` and `streamrec-26` unless `--model` names one).
    models: Vec<&'static str>,
}

const HELP: &str = "\
cargo xtask serve-bench [--secs S] [--rounds N] [--clients N] [--row-cap ROWS]
                        [--modes echo,json,binary,grpc,tonic] [--model tiny|streamrec-26] [--out DIR]

What the server adds over calling the engine directly, per protocol, over loopback with
keep-alive connections: tiny at batch 1 and streamrec-26 (ROWS rows per table, default 100000)
at batch 128, with 1 client and with N (default 8), in N interleaved rounds (default 3) of S
seconds (default 2). `echo` is a bare loopback exchange of the same bytes (the machine's floor),
`grpc` the load generator's lean unary call, `tonic` tonic's client. --out DIR writes serve.csv.
";

fn parse(args: &[String]) -> Result<Option<Opts>> {
    let mut o = Opts {
        secs: 2.0,
        clients: 8,
        row_cap: 100_000,
        rounds: 3,
        out: None,
        modes: MODES[1..].to_vec(),
        models: vec!["tiny", "streamrec-26"],
    };
    let mut it = args.iter();
    let num = |v: Option<&String>, flag: &str| -> Result<f64> {
        let x: f64 = v
            .with_context(|| format!("{flag} needs a number"))?
            .parse()
            .with_context(|| format!("{flag} needs a number"))?;
        if !(x.is_finite() && x > 0.0 && x <= 1e6) {
            bail!("{flag}: must be a number in (0, 1e6]");
        }
        Ok(x)
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--secs" => o.secs = num(it.next(), "--secs")?.min(60.0),
            "--clients" => o.clients = (num(it.next(), "--clients")? as usize).clamp(1, 256),
            "--row-cap" => o.row_cap = num(it.next(), "--row-cap")? as usize,
            "--rounds" => o.rounds = (num(it.next(), "--rounds")? as usize).clamp(1, 20),
            "--out" => o.out = Some(PathBuf::from(it.next().context("--out needs a folder")?)),
            "--modes" => {
                let list = it
                    .next()
                    .context("--modes needs a list, e.g. echo,binary,grpc")?;
                o.modes = Vec::new();
                for m in list.split(',') {
                    match MODES[1..].iter().find(|&&x| x == m) {
                        Some(&x) if !o.modes.contains(&x) => o.modes.push(x),
                        Some(_) => {}
                        None => bail!(
                            "--modes: unknown mode `{m}` (modes: {}; direct is always measured)",
                            MODES[1..].join(", ")
                        ),
                    }
                }
            }
            "--model" => {
                let m = it.next().context("--model needs tiny or streamrec-26")?;
                o.models = match m.as_str() {
                    "tiny" => vec!["tiny"],
                    "streamrec-26" => vec!["streamrec-26"],
                    _ => bail!("--model: `{m}` is not tiny or streamrec-26"),
                };
            }
            "-h" | "--help" => {
                print!("{HELP}");
                return Ok(None);
            }
            x => bail!("serve-bench: unknown option `{x}`\n\n{HELP}"),
        }
    }
    Ok(Some(o))
}

/// A prepared HTTP body: JSON, or Triton's binary extension with its header length.
struct Body {
    bytes: Vec<u8>,
    header_len: Option<String>,
}

/// One keep-alive connection posting one prepared body.
struct Caller {
    client: Client,
    path: String,
    body: Arc<Body>,
}

impl Caller {
    fn new(addr: SocketAddr, path: &str, body: Arc<Body>) -> Self {
        Self {
            client: Client::new(addr),
            path: path.to_string(),
            body,
        }
    }

    fn call(&mut self) -> Result<()> {
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(n) = &self.body.header_len {
            headers = vec![
                ("Content-Type", "application/octet-stream"),
                ("Inference-Header-Content-Length", n.as_str()),
            ];
        }
        let r = self
            .client
            .request("POST", &self.path, &headers, &self.body.bytes)?;
        if r.status != 200 {
            bail!(
                "server answered {}: {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            );
        }
        Ok(())
    }
}

/// One HTTP/2 connection calling `ModelInfer` with one prepared request (raw input contents),
/// through the load generator's unary call (the request in one write).
struct GrpcCaller {
    rt: tokio::runtime::Runtime,
    conn: GrpcConn,
    framed: bytes::Bytes,
}

impl GrpcCaller {
    fn new(addr: SocketAddr, req: &pb::ModelInferRequest) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let conn = rt.block_on(GrpcConn::connect(addr))?;
        Ok(Self {
            rt,
            conn,
            framed: frame(req),
        })
    }

    fn call(&mut self) -> Result<()> {
        let r = self
            .rt
            .block_on(self.conn.model_infer(self.framed.clone()))?;
        if r.raw_output_contents.is_empty() && r.outputs.is_empty() {
            bail!("gRPC ModelInfer answered no output");
        }
        Ok(())
    }
}

/// The same with tonic's client, as a tonic user would call (it ends each request with a
/// separate empty frame).
struct TonicCaller {
    rt: tokio::runtime::Runtime,
    client: GrpcInferenceServiceClient<tonic::transport::Channel>,
    req: pb::ModelInferRequest,
}

impl TonicCaller {
    fn new(addr: SocketAddr, req: pb::ModelInferRequest) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let channel = rt.block_on(
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
                .tcp_nodelay(true)
                .connect(),
        )?;
        Ok(Self {
            rt,
            client: GrpcInferenceServiceClient::new(channel),
            req,
        })
    }

    fn call(&mut self) -> Result<()> {
        let r = self
            .rt
            .block_on(self.client.model_infer(self.req.clone()))
            .map_err(|s| anyhow::anyhow!("gRPC ModelInfer: {s}"))?;
        if r.get_ref().raw_output_contents.is_empty() && r.get_ref().outputs.is_empty() {
            bail!("gRPC ModelInfer answered no output");
        }
        Ok(())
    }
}

/// `batch` as a gRPC `ModelInfer` request: every input's little-endian bytes in
/// `raw_input_contents`, in the spec's input order.
fn grpc_request(spec: &ModelSpec, batch: &ValidatedBatch) -> pb::ModelInferRequest {
    let tensor =
        |name: String, datatype: &str, shape: Vec<i64>| pb::model_infer_request::InferInputTensor {
            name,
            datatype: datatype.into(),
            shape,
            ..Default::default()
        };
    let le64 = |v: Vec<i64>| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let mut inputs = vec![tensor(
        "dense".into(),
        "FP32",
        vec![batch.size as i64, spec.dense as i64],
    )];
    let mut raw = vec![batch.dense.iter().flat_map(|x| x.to_le_bytes()).collect()];
    for (f, s) in spec.features.iter().zip(&batch.sparse) {
        inputs.push(tensor(
            f.name.clone(),
            "INT64",
            vec![s.indices.len() as i64],
        ));
        raw.push(le64(s.indices.to_i64()));
        inputs.push(tensor(
            format!("{}_offsets", f.name),
            "INT64",
            vec![batch.size as i64],
        ));
        raw.push(le64(s.offsets.to_i64()));
    }
    pb::ModelInferRequest {
        model_name: spec.name.clone(),
        inputs,
        raw_input_contents: raw,
        ..Default::default()
    }
}

/// One measurement: requests/s and latency percentiles.
#[derive(Clone, Copy)]
struct Figures {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
}

/// `clients` threads each calling `f` back to back for `secs` (at most 2 million calls).
fn closed_loop(
    clients: usize,
    secs: f64,
    make: impl Fn() -> Result<Call> + Sync,
) -> Result<Figures> {
    let done = AtomicUsize::new(0);
    let start = Instant::now();
    let limit = Duration::from_secs_f64(secs);
    let hists: Vec<Result<Histogram<u64>>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..clients)
            .map(|_| {
                let (make, done) = (&make, &done);
                s.spawn(move || -> Result<Histogram<u64>> {
                    let mut f = make()?;
                    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
                    while start.elapsed() < limit
                        && done.fetch_add(1, Ordering::Relaxed) < 2_000_000
                    {
                        let t = Instant::now();
                        f()?;
                        h.record((t.elapsed().as_nanos() as u64).max(1))?;
                    }
                    Ok(h)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    });
    let wall = start.elapsed().as_secs_f64();
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    for h in hists {
        all.add(h?)?;
    }
    Ok(Figures {
        rps: all.len() as f64 / wall,
        p50_us: all.value_at_quantile(0.5) as f64 / 1e3,
        p99_us: all.value_at_quantile(0.99) as f64 / 1e3,
    })
}

/// How the requests are made: the engine called directly; a bare TCP exchange over loopback
/// of the binary body's bytes for the scores' bytes (what the kernel's round trip between a
/// client and a server thread costs on this machine, with no server code at all); then the
/// server per protocol (`grpc` with a lean unary call, `tonic` with tonic's client).
const MODES: [&str; 6] = ["direct", "echo", "json", "binary", "grpc", "tonic"];

/// A loopback exchange server: each message is a 16-byte header (the payload's length and the
/// reply's, little-endian u64s, at most 64 MiB each) and the payload; the reply is that many
/// bytes. A thread per connection, ending with its connection.
fn echo_server() -> Result<SocketAddr> {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || -> std::io::Result<()> {
                s.set_nodelay(true)?;
                let mut buf = Vec::new();
                loop {
                    let mut head = [0u8; 16];
                    s.read_exact(&mut head)?;
                    let len = |b: &[u8]| {
                        (u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize).min(64 << 20)
                    };
                    let (payload, reply) = (len(&head[..8]), len(&head[8..]));
                    buf.resize(payload.max(reply), 0);
                    s.read_exact(&mut buf[..payload])?;
                    s.write_all(&buf[..reply])?;
                }
            });
        }
    });
    Ok(addr)
}

/// One connection to the exchange server sending `len` bytes and reading `reply` back per call.
fn echo_caller(addr: SocketAddr, len: usize, reply: usize) -> Result<Call> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let mut out = Vec::with_capacity(16 + len);
    out.extend_from_slice(&(len as u64).to_le_bytes());
    out.extend_from_slice(&(reply as u64).to_le_bytes());
    out.resize(16 + len, 7);
    let mut back = vec![0u8; reply];
    Ok(Box::new(move || {
        s.write_all(&out)?;
        s.read_exact(&mut back)?;
        Ok(())
    }))
}

/// A client's call.
type Call = Box<dyn FnMut() -> Result<()> + Send>;

/// Runs the task.
pub fn run(args: &[String]) -> Result<()> {
    let Some(o) = parse(args)? else {
        return Ok(());
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut table = String::new();
    let mut csv = String::from(
        "model,batch,mode,clients,rounds,requests_per_s,p50_us,p99_us,rps_spread,p50_spread\n",
    );
    let modes: Vec<&str> = std::iter::once("direct")
        .chain(o.modes.iter().copied())
        .collect();
    let echo = echo_server()?;
    for (file, cap, batch) in [
        ("tiny.toml", None, 1usize),
        ("streamrec-26.toml", Some(o.row_cap), 128),
    ] {
        if !o.models.iter().any(|m| file.starts_with(&format!("{m}."))) {
            continue;
        }
        let path = root.join("workloads").join(file);
        let spec = ModelSpec::load(&path, cap).with_context(|| path.display().to_string())?;
        let contexts = 2;
        let engine: Arc<dyn Infer> = Arc::from(
            EngineBuilder::new(&spec)
                .backend(BackendKind::Cpu)
                .algo(Algorithm::Single)
                .contexts(contexts)
                .max_batch(batch.max(256))
                .build()?
                .engine,
        );
        // What parsing costs: a 100-sample JSON body through the server's parser and checks.
        let hundred = serde_json::to_vec(&InferRequest::from_batch(
            &spec,
            &random_batch(&spec, 100, Skew::Uniform, 5),
        ))?;
        let mut times = Vec::with_capacity(200);
        for _ in 0..200 {
            let t = Instant::now();
            streamrec_serve::protocol::parse(&hundred, None, &spec)?;
            times.push(t.elapsed().as_secs_f64() * 1e6);
        }
        let _ = writeln!(
            table,
            "{:<13} parse + validate a 100-sample JSON body ({} bytes): median {:.1} us",
            spec.name,
            hundred.len(),
            median(&times)
        );
        let b = random_validated(&spec, batch, Skew::Uniform, 3)?;
        let request = InferRequest::from_batch(&spec, &b);
        let json = Arc::new(Body {
            bytes: serde_json::to_vec(&request)?,
            header_len: None,
        });
        let encoded = request.to_binary();
        let binary = Arc::new(Body {
            bytes: encoded.body,
            header_len: encoded.header_len.map(|n| n.to_string()),
        });
        let grpc = grpc_request(&spec, &b);
        let server = Server::start(
            ServeConfig {
                port: 0,
                grpc_port: Some(0),
                max_batch: batch.max(256),
                contexts,
                ..ServeConfig::default()
            },
            Model {
                spec: spec.clone(),
                engine: Arc::clone(&engine),
            },
        )?
        .spawn();
        let addr = server.addr();
        let grpc_addr = server
            .grpc_addr()
            .context("the gRPC endpoint did not start")?;
        let infer_path = format!("/v2/models/{}/infer", spec.name);
        eprintln!(
            "{} batch {batch}: {} rounds of {:.1} s per setting",
            spec.name, o.rounds, o.secs
        );
        for clients in [1, o.clients] {
            // Per mode, its rounds; the modes alternate within each round.
            let mut runs: Vec<Vec<Figures>> = vec![Vec::new(); modes.len()];
            for _ in 0..o.rounds {
                for (m, mode) in modes.iter().enumerate() {
                    let f = closed_loop(clients, o.secs, || -> Result<Call> {
                        Ok(match *mode {
                            "direct" => {
                                let (e, b) = (Arc::clone(&engine), b.clone());
                                Box::new(move || e.infer(&b).map(|_| ()).map_err(Into::into))
                            }
                            "echo" => echo_caller(echo, binary.bytes.len(), 4 * batch)?,
                            "grpc" => {
                                let mut c = GrpcCaller::new(grpc_addr, &grpc)?;
                                Box::new(move || c.call())
                            }
                            "tonic" => {
                                let mut c = TonicCaller::new(grpc_addr, grpc.clone())?;
                                Box::new(move || c.call())
                            }
                            _ => {
                                let body = if *mode == "json" { &json } else { &binary };
                                let mut c = Caller::new(addr, &infer_path, Arc::clone(body));
                                Box::new(move || c.call())
                            }
                        })
                    })?;
                    runs[m].push(f);
                }
            }
            let summary = |runs: &[Figures]| {
                let rps: Vec<f64> = runs.iter().map(|f| f.rps).collect();
                let p50: Vec<f64> = runs.iter().map(|f| f.p50_us).collect();
                let p99: Vec<f64> = runs.iter().map(|f| f.p99_us).collect();
                (
                    median(&rps),
                    median(&p50),
                    median(&p99),
                    spread(&rps),
                    spread(&p50),
                )
            };
            let figures: Vec<_> = runs.iter().map(|r| summary(r)).collect();
            let d = figures[0];
            for (mode, &f) in modes.iter().zip(&figures) {
                let _ = writeln!(
                    csv,
                    "{},{batch},{mode},{clients},{},{:.1},{:.1},{:.1},{:.3},{:.3}",
                    spec.name, o.rounds, f.0, f.1, f.2, f.3, f.4
                );
                let _ = writeln!(
                    table,
                    "{:<13} {batch:>5} {mode:>7} {clients:>7} {:>12.0} {:>10.1} {:>10.1}   (spread rps {:.0}%, p50 {:.0}%)",
                    spec.name,
                    f.0,
                    f.1,
                    f.2,
                    f.3 * 100.0,
                    f.4 * 100.0
                );
            }
            for (mode, s) in modes.iter().zip(&figures).skip(1) {
                if *mode == "echo" {
                    // No engine and no server: the floor a client and a server thread pay.
                    let _ = writeln!(
                        table,
                        "{:<13} {batch:>5} echo: the bare loopback exchange of these bytes takes p50 {:.1} us, with {clients} client(s)",
                        spec.name, s.1
                    );
                    continue;
                }
                let _ = writeln!(
                    table,
                    "{:<13} {batch:>5} {mode} adds p50 {:.1} us, throughput {:.2}x of direct, with {clients} client(s)",
                    spec.name,
                    s.1 - d.1,
                    s.0 / d.0
                );
            }
        }
        server.stop()?;
    }
    println!(
        "{:<13} {:>5} {:>7} {:>7} {:>12} {:>10} {:>10}",
        "model", "batch", "mode", "clients", "requests/s", "p50 us", "p99 us"
    );
    print!("{table}");
    if let Some(out) = &o.out {
        std::fs::create_dir_all(out)?;
        std::fs::write(out.join("serve.csv"), &csv)?;
        println!("wrote {}", out.join("serve.csv").display());
    }
    Ok(())
}
