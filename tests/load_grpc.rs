//! The load generator over gRPC (`--url grpc://`): every request of a run against a real
//! `streamrec serve --grpc-port 0` counted exactly with its scores checked, the server's gRPC
//! statuses in the same counters as HTTP's (overload `UNAVAILABLE` as `status_503`, an unknown
//! model `NOT_FOUND` as `status_404`, a bad input `INVALID_ARGUMENT` as `status_400`), and the
//! flags that do not go with a grpc:// URL refused in one line naming the flag.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use streamrec::serve::ServeConfig;
use streamrec_loadgen::{
    run_load, BatchSizes, BodyConfig, BodyFormat, LoadSpec, ModelInputs, RunConfig, ScheduleConfig,
    ScheduleKind, Shard, Target,
};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_streamrec"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("streamrec-load-grpc-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join(name);
    let _ = std::fs::remove_dir_all(&p);
    p
}

/// `streamrec serve workloads/tiny.toml --port 0 --grpc-port 0`, killed when dropped.
struct GrpcServer {
    child: Child,
    grpc: SocketAddr,
}

impl GrpcServer {
    /// Starts it and reads its gRPC address from stderr (`grpc on ADDR`).
    fn start() -> GrpcServer {
        let mut child = bin()
            .args([
                "serve",
                "workloads/tiny.toml",
                "--port",
                "0",
                "--grpc-port",
                "0",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let grpc = common::serving::grpc_on(&mut child);
        GrpcServer { child, grpc }
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn summary(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap()
}

#[test]
fn every_grpc_request_is_counted_once_with_its_scores_checked() {
    let srv = GrpcServer::start();
    let out = scratch("exact");
    // A constant schedule of 300 req/s for 1 s: exactly 300 requests, 4 samples each; the
    // generator counts an OK answer only with 4 finite scores.
    let o = bin()
        .args(["load", "--url", &format!("grpc://{}", srv.grpc)])
        .args(["--model", "tiny", "--spec", "workloads/tiny.toml"])
        .args(["--schedule", "constant", "--qps", "300", "--duration", "1s"])
        .args([
            "--batch",
            "4",
            "--records",
            "--max-send-lag",
            "200ms",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let s = summary(&out);
    assert_eq!(s["protocol"], "grpc", "{s}");
    assert_eq!(s["format"], "grpc", "{s}");
    assert_eq!(s["connections"], 4, "{s}");
    assert_eq!(s["requests"], 300, "{s}");
    assert_eq!(s["ok"], 300, "{s}");
    assert_eq!(s["samples_ok"], 1200, "{s}");
    assert_eq!(s["status"], serde_json::json!({"200": 300}), "{s}");
    assert_eq!(s["grpc_status"], serde_json::json!({"OK": 300}), "{s}");
    assert_eq!(s["errors"], serde_json::json!({}), "{s}");
    assert_eq!(s["latency_us"]["count"], 300, "{s}");
    // One record per request, each index once, each answered OK.
    let csv = std::fs::read_to_string(out.join("records.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(rows.len(), 300);
    for (i, r) in rows.iter().enumerate() {
        let f: Vec<&str> = r.split(',').collect();
        assert_eq!(f[0], i.to_string(), "{r}");
        assert_eq!((f[4], f[5]), ("4", "OK"), "{r}");
    }
    // A bad input (indices beyond tiny's tables): INVALID_ARGUMENT, counted as HTTP's 400.
    let bad = scratch("bad-rows");
    let o = bin()
        .args(["load", "--url", &format!("grpc://{}", srv.grpc)])
        .args([
            "--model",
            "tiny",
            "--rows",
            "100000",
            "--schedule",
            "constant",
        ])
        .args([
            "--qps",
            "200",
            "--duration",
            "500ms",
            "--max-send-lag",
            "200ms",
        ])
        .arg("--out")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let s = summary(&bad);
    assert_eq!(s["requests"], 100, "{s}");
    assert_eq!(s["errors"], serde_json::json!({"status_400": 100}), "{s}");
    assert_eq!(
        s["grpc_status"],
        serde_json::json!({"INVALID_ARGUMENT": 100}),
        "{s}"
    );
    assert!(
        text(&o).contains("100 of 100 requests failed (status_400 100)"),
        "{}",
        text(&o)
    );
}

fn spec(qps: f64, ms: u64) -> LoadSpec {
    LoadSpec {
        schedule: ScheduleConfig {
            kind: ScheduleKind::Constant,
            qps,
            duration: Duration::from_millis(ms),
            max_requests: None,
            seed: 3,
            shard: Shard::ALL,
        },
        batch: BatchSizes::Fixed(1),
        max_batch: 64,
        bodies: BodyConfig {
            format: BodyFormat::Grpc,
            ..BodyConfig::default()
        },
        run: RunConfig {
            max_send_lag: Duration::from_millis(500),
            ..RunConfig::default()
        },
    }
}

/// The count under `k`, 0 when absent.
fn n(map: &std::collections::BTreeMap<String, u64>, k: &str) -> u64 {
    map.get(k).copied().unwrap_or(0)
}

#[test]
fn overload_is_the_503_counter_and_an_unknown_model_the_404() {
    // At most one request in flight, each held 20 ms by the batcher for company that never
    // comes: of 500 req/s most find the server full (UNAVAILABLE).
    let running = common::serving::serve(
        ServeConfig {
            grpc_port: Some(0),
            max_inflight: 1,
            max_queue_delay_us: 20_000,
            ..common::serving::config()
        },
        common::serving::engine(&common::serving::tiny(), 64, 1),
    );
    let url = format!("grpc://{}", running.grpc_addr().expect("a gRPC endpoint"));
    let inputs = ModelInputs::from_spec(&common::serving::tiny());
    let r = run_load(&Target::new(&url, "tiny"), &inputs, &spec(500.0, 500)).unwrap();
    let s = &r.summary;
    println!("{}", streamrec_loadgen::describe(s));
    assert_eq!(s.requests, 250);
    let rejected = n(&s.errors, "status_503");
    assert!(s.ok > 0 && rejected > 0, "{s:?}");
    assert_eq!(s.ok + rejected, s.requests, "{:?}", s.errors);
    assert_eq!(n(&s.grpc_status, "UNAVAILABLE"), rejected);
    assert_eq!(n(&s.grpc_status, "OK"), s.ok);
    assert_eq!(n(&s.status, "503"), rejected);
    // A model the server does not serve: NOT_FOUND, HTTP's 404, every one.
    let r = run_load(&Target::new(&url, "nosuch"), &inputs, &spec(200.0, 300)).unwrap();
    let s = &r.summary;
    assert_eq!(s.requests, 60);
    assert_eq!(s.ok, 0);
    assert_eq!(n(&s.errors, "status_404"), 60, "{:?}", s.errors);
    assert_eq!(n(&s.grpc_status, "NOT_FOUND"), 60, "{:?}", s.grpc_status);
    // Bodies of the HTTP formats cannot go to a grpc:// URL, nor gRPC bodies to http://.
    let mut http = spec(10.0, 100);
    http.bodies.format = BodyFormat::Binary;
    let e = run_load(&Target::new(&url, "tiny"), &inputs, &http)
        .unwrap_err()
        .to_string();
    assert!(e.contains("grpc cannot send binary bodies"), "{e}");
    let e = run_load(
        &Target::new(format!("http://{}", running.addr()), "tiny"),
        &inputs,
        &spec(10.0, 100),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("http cannot send grpc bodies"), "{e}");
}

#[test]
fn flags_that_do_not_fit_a_grpc_url_are_one_line_errors() {
    let common = [
        "load",
        "--model",
        "tiny",
        "--rows",
        "8",
        "--qps",
        "10",
        "--duration",
        "1s",
        "--ready-timeout",
        "1s",
    ];
    let cases: &[(&[&str], &str)] = &[
        (
            &["--url", "grpc://127.0.0.1:9", "--format", "json"],
            "error: --format json: applies to http:// URLs",
        ),
        (
            &["--url", "grpc://127.0.0.1"],
            "expected grpc://host:port (no port)",
        ),
        (
            &["--url", "grpc://127.0.0.1:9/prefix"],
            "a grpc:// URL has no path",
        ),
        (
            &["--url", "grpc://127.0.0.1:9", "--cpus", "0-99999"],
            "error: --cpus 0-99999: CPU 99999 is beyond the largest",
        ),
        (
            &["--url", "http://127.0.0.1:9", "--cpus", "3-1"],
            "error: --cpus 3-1: the range 3-1 runs backwards",
        ),
    ];
    for (args, want) in cases {
        let out = scratch("never");
        let o = bin()
            .args(common)
            .args(*args)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(!out.exists(), "{args:?}");
    }
}

#[test]
fn a_burst_of_calls_on_one_connection_all_get_answers() {
    // Thousands of calls in flight on one HTTP/2 connection: their answers (each a small DATA
    // frame before the trailers) pile up on the client faster than its tasks take them. h2's
    // guard against floods of small frames must not mistake that for an attack and close the
    // connection (it did with its default budget: "too_many_data_frames").
    use streamrec_loadgen::grpc::{frame, GrpcConn, GrpcError};
    use streamrec_protocol::grpc::pb;
    let spec = common::serving::tiny();
    let running = common::serving::serve(
        ServeConfig {
            grpc_port: Some(0),
            max_inflight: 8192,
            queue_capacity: 8192,
            ..common::serving::config()
        },
        common::serving::engine(&spec, 64, 1),
    );
    let addr = running.grpc_addr().expect("a gRPC endpoint");
    let batch =
        streamrec_runtime::gen::random_batch(&spec, 1, streamrec_runtime::gen::Skew::Uniform, 3);
    let req = streamrec_protocol::InferRequest::from_batch(&spec, &batch);
    let msg = pb::ModelInferRequest {
        model_name: "tiny".into(),
        inputs: req
            .inputs
            .iter()
            .map(|t| pb::model_infer_request::InferInputTensor {
                name: t.name.clone(),
                datatype: t.datatype.clone(),
                shape: t.shape.clone(),
                ..Default::default()
            })
            .collect(),
        raw_input_contents: req
            .inputs
            .iter()
            .map(|t| match t.data.as_i64() {
                Some(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                None => t
                    .data
                    .to_f32()
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect(),
            })
            .collect(),
        ..Default::default()
    };
    let framed = frame(&msg);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (ok, transport, other) = rt.block_on(async {
        let conn = GrpcConn::connect(addr).await.unwrap();
        let calls: Vec<_> = (0..3000)
            .map(|_| {
                let (mut c, f) = (conn.clone(), framed.clone());
                tokio::spawn(async move { c.model_infer(f).await })
            })
            .collect();
        let (mut ok, mut transport, mut other) = (0, Vec::new(), 0);
        for c in calls {
            match c.await.unwrap() {
                Ok(r) => {
                    assert_eq!(r.raw_output_contents[0].len(), 4);
                    ok += 1;
                }
                Err(GrpcError::Transport(e)) => transport.push(e),
                Err(_) => other += 1,
            }
        }
        (ok, transport, other)
    });
    assert!(
        transport.is_empty(),
        "{} transport errors, e.g. {:?}",
        transport.len(),
        transport.first()
    );
    assert_eq!((ok, other), (3000, 0));
}
