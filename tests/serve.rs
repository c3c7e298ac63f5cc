//! The serving shim over loopback: every KServe v2 endpoint, JSON and binary infer against the
//! engine called directly, every bad-input case as a 400 (or 404/405/413) with a JSON error
//! naming the problem, dynamic batching that returns each request exactly its rows, admission
//! control (503 with Retry-After), metrics, draining on shutdown, a fatal engine error, and a
//! fuzz pass over random and mutated bodies.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
mod common;

use common::serving::{config, engine, serve, tiny};
use serde_json::{json, Value};
use streamrec::graph::ModelSpec;
use streamrec::runtime::gen::{random_batch, Skew};
use streamrec::runtime::request::InferRequest;
use streamrec::runtime::trace::TraceEvent;
use streamrec::runtime::{Batch, IndexVec, Infer, RuntimeError, ValidatedBatch};
use streamrec::serve::client::Client;
use streamrec::serve::fuzz;
use streamrec::serve::protocol::parse;
use streamrec::serve::{Model, ServeConfig, Server};

struct Reply {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error field: {}", String::from_utf8_lossy(&self.body)))
            .to_string()
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`).
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Reply {
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = Client::new(addr)
        .close_each()
        .request(method, path, &headers, body)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    Reply {
        status: r.status,
        headers: r.headers.into_iter().collect(),
        body: r.body,
    }
}

fn get(addr: SocketAddr, path: &str) -> Reply {
    http(addr, "GET", path, &[], b"")
}

fn post(addr: SocketAddr, path: &str, body: &[u8]) -> Reply {
    http(addr, "POST", path, &[], body)
}

const INFER: &str = "/v2/models/tiny/infer";

fn request_json(spec: &ModelSpec, b: &Batch) -> Value {
    serde_json::to_value(InferRequest::from_batch(spec, b)).unwrap()
}

fn scores_of(reply: &Reply) -> Vec<f32> {
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let v = reply.json();
    assert_eq!(v["outputs"][0]["name"], "score");
    v["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// A Triton binary-extension body: JSON header with binary_data_size, then the raw tensors.
fn binary_body(spec: &ModelSpec, b: &Batch, binary_output: bool) -> (Vec<u8>, usize) {
    let mut inputs = Vec::new();
    let mut raw = Vec::new();
    let dense: Vec<u8> = b.dense.iter().flat_map(|x| x.to_le_bytes()).collect();
    inputs.push(
        json!({"name": "dense", "datatype": "FP32", "shape": [b.size, spec.dense],
        "parameters": {"binary_data_size": dense.len()}}),
    );
    raw.extend_from_slice(&dense);
    for (f, s) in spec.features.iter().zip(&b.sparse) {
        for (name, v) in [
            (f.name.clone(), &s.indices),
            (format!("{}_offsets", f.name), &s.offsets),
        ] {
            let bytes: Vec<u8> = match v {
                IndexVec::I64(x) => x.iter().flat_map(|y| y.to_le_bytes()).collect(),
                IndexVec::I32(x) => x.iter().flat_map(|y| y.to_le_bytes()).collect(),
            };
            inputs.push(
                json!({"name": name, "datatype": v.datatype(), "shape": [v.len()],
                "parameters": {"binary_data_size": bytes.len()}}),
            );
            raw.extend_from_slice(&bytes);
        }
    }
    let mut head = json!({"inputs": inputs});
    if binary_output {
        head["outputs"] = json!([{"name": "score", "parameters": {"binary_data": true}}]);
    }
    let mut body = serde_json::to_vec(&head).unwrap();
    let n = body.len();
    body.extend_from_slice(&raw);
    (body, n)
}

#[test]
fn health_metadata_and_routes() {
    let spec = tiny();
    let srv = serve(config(), engine(&spec, 64, 1));
    let a = srv.addr();
    assert_eq!(get(a, "/v2/health/live").status, 200);
    assert_eq!(get(a, "/v2/health/ready").status, 200);
    let meta = get(a, "/v2").json();
    assert_eq!(meta["name"], "streamrec");
    assert!(meta["extensions"]
        .as_array()
        .unwrap()
        .contains(&json!("binary_tensor_data")));
    for path in ["/v2/models/tiny", "/v2/models/tiny/versions/1"] {
        let m = get(a, path);
        assert_eq!(m.status, 200, "{path}");
        let m = m.json();
        assert_eq!(m["name"], "tiny");
        assert_eq!(m["versions"], json!(["1"]));
        let inputs = m["inputs"].as_array().unwrap();
        assert_eq!(inputs.len(), 1 + 2 * spec.features.len());
        assert_eq!(
            inputs[0],
            json!({"name": "dense", "datatype": "FP32", "shape": [-1, 13]})
        );
        for f in &spec.features {
            for n in [f.name.clone(), format!("{}_offsets", f.name)] {
                let t = inputs.iter().find(|t| t["name"] == n.as_str()).unwrap();
                assert_eq!(t["shape"], json!([-1]), "{n}");
                assert_eq!(t["datatype"], "INT64", "{n}");
            }
        }
        assert_eq!(
            m["outputs"],
            json!([{"name": "score", "datatype": "FP32", "shape": [-1, 1]}])
        );
    }
    assert_eq!(get(a, "/v2/models/tiny/ready").status, 200);
    assert_eq!(get(a, "/v2/models/tiny/versions/1/ready").status, 200);
    let r = get(a, "/v2/models/other");
    assert_eq!(r.status, 404);
    assert!(r.error().contains("unknown model `other`"), "{}", r.error());
    let r = get(a, "/v2/models/tiny/versions/2");
    assert_eq!(r.status, 404);
    assert!(r.error().contains("no version `2`"), "{}", r.error());
    assert_eq!(post(a, "/v2/models/other/infer", b"{}").status, 404);
    assert_eq!(
        post(a, "/v2/models/tiny/versions/9/infer", b"{}").status,
        404
    );
    assert_eq!(get(a, "/v2/nothing").status, 404);
    let r = get(a, INFER);
    assert_eq!(r.status, 405);
    assert_eq!(r.headers["allow"], "POST");
    let r = post(a, "/v2/health/live", b"");
    assert_eq!(r.status, 405);
    assert_eq!(r.headers["allow"], "GET");
    srv.stop().unwrap();
}

#[test]
fn json_and_binary_infer_match_the_engine() {
    let spec = tiny();
    let eng = engine(&spec, 64, 1);
    let srv = serve(config(), Arc::clone(&eng));
    let a = srv.addr();
    for (size, seed) in [(1usize, 1u64), (7, 2), (64, 3)] {
        let b = random_batch(&spec, size, Skew::Zipf(1.1), seed);
        let want = eng
            .infer(&ValidatedBatch::new(b.clone(), &spec).unwrap())
            .unwrap();
        let mut req = request_json(&spec, &b);
        req["id"] = json!("req-7");
        let r = post(a, INFER, &serde_json::to_vec(&req).unwrap());
        assert_eq!(r.json()["id"], "req-7");
        assert_eq!(r.json()["outputs"][0]["shape"], json!([size, 1]));
        assert_eq!(scores_of(&r), want, "JSON, batch {size}");
        // The same via the versioned route.
        let r = post(
            a,
            "/v2/models/tiny/versions/1/infer",
            &serde_json::to_vec(&req).unwrap(),
        );
        assert_eq!(scores_of(&r), want);
        // Binary in, JSON out.
        let (body, n) = binary_body(&spec, &b, false);
        let r = http(
            a,
            "POST",
            INFER,
            &[("Inference-Header-Content-Length", n.to_string())],
            &body,
        );
        assert_eq!(scores_of(&r), want, "binary in, batch {size}");
        // Binary in, binary out.
        let (body, n) = binary_body(&spec, &b, true);
        let r = http(
            a,
            "POST",
            INFER,
            &[("Inference-Header-Content-Length", n.to_string())],
            &body,
        );
        assert_eq!(r.status, 200);
        let hl: usize = r.headers["inference-header-content-length"]
            .parse()
            .unwrap();
        let head: Value = serde_json::from_slice(&r.body[..hl]).unwrap();
        assert_eq!(
            head["outputs"][0]["parameters"]["binary_data_size"],
            json!(size * 4)
        );
        let got: Vec<f32> = r.body[hl..]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(got, want, "binary out, batch {size}");
    }
    // INT32 indices, and binary_data_output as a request parameter.
    let mut b = random_batch(&spec, 5, Skew::Uniform, 9);
    for s in &mut b.sparse {
        s.indices = IndexVec::I32(s.indices.to_i64().iter().map(|&x| x as i32).collect());
        s.offsets = IndexVec::I32(s.offsets.to_i64().iter().map(|&x| x as i32).collect());
    }
    let want = eng
        .infer(&ValidatedBatch::new(b.clone(), &spec).unwrap())
        .unwrap();
    assert_eq!(
        scores_of(&post(
            a,
            INFER,
            &serde_json::to_vec(&request_json(&spec, &b)).unwrap()
        )),
        want
    );
    let (body, n) = binary_body(&spec, &b, false);
    let mut head: Value = serde_json::from_slice(&body[..n]).unwrap();
    head["parameters"] = json!({"binary_data_output": true});
    let mut body2 = serde_json::to_vec(&head).unwrap();
    let n2 = body2.len();
    body2.extend_from_slice(&body[n..]);
    let r = http(
        a,
        "POST",
        INFER,
        &[("Inference-Header-Content-Length", n2.to_string())],
        &body2,
    );
    assert_eq!(r.status, 200);
    let hl: usize = r.headers["inference-header-content-length"]
        .parse()
        .unwrap();
    assert_eq!(r.body.len() - hl, 20);
    srv.stop().unwrap();
}

/// A valid request for 3 samples, as JSON to break.
fn valid(spec: &ModelSpec) -> Value {
    request_json(spec, &random_batch(spec, 3, Skew::Uniform, 4))
}

fn input<'a>(req: &'a mut Value, name: &str) -> &'a mut Value {
    req["inputs"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|t| t["name"] == name)
        .unwrap()
}

#[test]
fn every_bad_request_is_a_400_naming_the_problem() {
    let spec = tiny();
    let srv = serve(
        ServeConfig {
            max_body_bytes: 1 << 20,
            ..config()
        },
        engine(&spec, 64, 1),
    );
    let a = srv.addr();
    type Break = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Break, &str)> = vec![
        (
            "unknown input",
            Box::new(|r| {
                r["inputs"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"name": "C9", "shape": [1], "datatype": "INT64", "data": [0]}))
            }),
            "input `C9` is not an input of model `tiny`",
        ),
        (
            "missing input",
            Box::new(|r| {
                r["inputs"]
                    .as_array_mut()
                    .unwrap()
                    .retain(|t| t["name"] != "C2")
            }),
            "input `C2` is missing",
        ),
        (
            "duplicate input",
            Box::new(|r| {
                let t = input(r, "C1").clone();
                r["inputs"].as_array_mut().unwrap().push(t)
            }),
            "input `C1` appears more than once",
        ),
        (
            "wrong datatype",
            Box::new(|r| input(r, "dense")["datatype"] = json!("INT64")),
            "dense: datatype INT64",
        ),
        (
            "wrong shape",
            Box::new(|r| input(r, "dense")["shape"] = json!([3, 12])),
            "dense: shape [3, 12]",
        ),
        (
            "index out of range",
            Box::new(|r| input(r, "C3")["data"][2] = json!(250)),
            "C3: index at position 2 is 250, out of range for a table of 250 rows",
        ),
        (
            "negative index",
            Box::new(|r| input(r, "C2")["data"][0] = json!(-1)),
            "C2: index at position 0 is -1",
        ),
        (
            "offsets not monotone",
            Box::new(|r| input(r, "C3_offsets")["data"] = json!([0, 6, 3])),
            "C3_offsets: position 2 is 3, less than the previous offset 6",
        ),
        (
            "offsets past the end",
            Box::new(|r| input(r, "C1_offsets")["data"] = json!([0, 1, 9])),
            "C1_offsets: position 2 is 9, beyond the 3 indices",
        ),
        (
            "offsets not from 0",
            Box::new(|r| input(r, "C1_offsets")["data"] = json!([1, 1, 2])),
            "C1_offsets: position 0 is 1, must be 0",
        ),
        (
            "non-finite dense",
            Box::new(|r| input(r, "dense")["data"][4] = json!(1e39)),
            "dense: value at position 4 is inf, must be finite",
        ),
        (
            "non-integer index",
            Box::new(|r| input(r, "C1")["data"][1] = json!(1.5)),
            "C1: value at position 1 is 1.5, expected an integer",
        ),
        (
            "string value",
            Box::new(|r| input(r, "C1")["data"][1] = json!("x")),
            "expected a number",
        ),
        (
            "no data",
            Box::new(|r| {
                input(r, "C4").as_object_mut().unwrap().remove("data");
            }),
            "C4: no data",
        ),
        (
            "unknown output",
            Box::new(|r| r["outputs"] = json!([{"name": "prob"}])),
            "output `prob` is not an output of model `tiny`",
        ),
        (
            "overflowing shape",
            Box::new(|r| input(r, "dense")["shape"] = json!([1418980313362273202i64, 13])),
            "dense: shape [1418980313362273202, 13] has too many elements",
        ),
        (
            "empty batch",
            Box::new(|r| {
                input(r, "dense")["shape"] = json!([0, 13]);
                input(r, "dense")["data"] = json!([])
            }),
            "dense",
        ),
    ];
    for (what, f, expected) in cases {
        let mut r = valid(&spec);
        f(&mut r);
        let reply = post(a, INFER, &serde_json::to_vec(&r).unwrap());
        assert_eq!(
            reply.status,
            400,
            "{what}: {}",
            String::from_utf8_lossy(&reply.body)
        );
        assert_eq!(reply.headers["content-type"], "application/json", "{what}");
        let e = reply.error();
        assert!(
            e.contains(expected),
            "{what}: expected `{expected}` in `{e}`"
        );
    }
    // Malformed JSON and framing.
    let r = post(a, INFER, b"{\"inputs\": [");
    assert_eq!(r.status, 400);
    assert!(
        r.error().contains("not a valid KServe v2 request"),
        "{}",
        r.error()
    );
    let b = random_batch(&spec, 2, Skew::Uniform, 5);
    let (body, n) = binary_body(&spec, &b, false);
    type Headers<'a> = Vec<(&'a str, String)>;
    let framing: Vec<(Headers, Vec<u8>, &str)> = vec![
        (
            vec![(
                "Inference-Header-Content-Length",
                (body.len() + 1).to_string(),
            )],
            body.clone(),
            "but the body has only",
        ),
        (
            vec![("Inference-Header-Content-Length", "abc".into())],
            body.clone(),
            "must be a non-negative integer",
        ),
        (
            vec![("Inference-Header-Content-Length", n.to_string())],
            body[..body.len() - 3].to_vec(),
            "runs past the end of the binary data",
        ),
        (
            vec![("Inference-Header-Content-Length", n.to_string())],
            [&body[..], &[0u8; 8][..]].concat(),
            "8 bytes of binary data follow",
        ),
    ];
    for (h, body, expected) in framing {
        let r = http(a, "POST", INFER, &h, &body);
        assert_eq!(r.status, 400);
        assert!(
            r.error().contains(expected),
            "expected `{expected}` in `{}`",
            r.error()
        );
    }
    // A binary size that is not a whole number of elements.
    let mut head: Value = serde_json::from_slice(&body[..n]).unwrap();
    input(&mut head, "dense")["parameters"]["binary_data_size"] = json!(2 * 13 * 4 - 2);
    input(&mut head, "C1")["parameters"]["binary_data_size"] = json!(2 * 8 + 2);
    let mut body2 = serde_json::to_vec(&head).unwrap();
    let n2 = body2.len();
    body2.extend_from_slice(&body[n..]);
    let r = http(
        a,
        "POST",
        INFER,
        &[("Inference-Header-Content-Length", n2.to_string())],
        &body2,
    );
    assert_eq!(r.status, 400);
    assert!(
        r.error()
            .contains("dense: binary_data_size 102 is not a multiple of the 4-byte FP32 element"),
        "{}",
        r.error()
    );
    // Too large: by Content-Length, and a batch over max_batch.
    // (Only the head is sent: the server answers from Content-Length without reading a byte.)
    let r = http(
        a,
        "POST",
        INFER,
        &[("Content-Length", ((1 << 20) + 1).to_string())],
        b"",
    );
    assert_eq!(r.status, 413);
    assert!(
        r.error().contains("more than the limit of 1048576 bytes"),
        "{}",
        r.error()
    );
    let big = request_json(&spec, &random_batch(&spec, 65, Skew::Uniform, 6));
    let r = post(a, INFER, &serde_json::to_vec(&big).unwrap());
    assert_eq!(r.status, 400);
    assert!(
        r.error()
            .contains("batch of 65 samples is more than max_batch (64)"),
        "{}",
        r.error()
    );
    // Every failure was counted, by reason.
    let m = String::from_utf8(get(a, "/metrics").body).unwrap();
    assert!(
        m.contains(
            "nv_inference_request_failure{model=\"tiny\",version=\"1\",reason=\"INVALID_INPUT\"}"
        ),
        "{m}"
    );
    srv.stop().unwrap();
}

#[test]
fn concurrent_requests_are_batched_and_each_gets_its_own_rows() {
    let spec = tiny();
    let eng = engine(&spec, 64, 2);
    let srv = serve(
        ServeConfig {
            max_queue_delay_us: 5_000,
            contexts: 2,
            ..config()
        },
        Arc::clone(&eng),
    );
    let a = srv.addr();
    let sizes = [1usize, 3, 8, 2, 16, 5, 1, 7, 4, 9, 2, 6];
    let batches: Vec<Batch> = sizes
        .iter()
        .enumerate()
        .map(|(i, &s)| random_batch(&spec, s, Skew::Uniform, 100 + i as u64))
        .collect();
    let want: Vec<Vec<f32>> = batches
        .iter()
        .map(|b| {
            eng.infer(&ValidatedBatch::new(b.clone(), &spec).unwrap())
                .unwrap()
        })
        .collect();
    for round in 0..3 {
        let got: Vec<Vec<f32>> = std::thread::scope(|s| {
            let hs: Vec<_> = batches
                .iter()
                .map(|b| {
                    let body = serde_json::to_vec(&request_json(&spec, b)).unwrap();
                    s.spawn(move || scores_of(&post(a, INFER, &body)))
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g, w, "round {round}, request {i} ({} samples)", sizes[i]);
        }
    }
    let m = String::from_utf8(get(a, "/metrics").body).unwrap();
    let value = |name: &str| -> f64 {
        m.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {m}"))
    };
    let requests = value("nv_inference_request_success{");
    let execs = value("nv_inference_exec_count{");
    assert_eq!(requests, 36.0);
    assert_eq!(
        value("nv_inference_count{"),
        3.0 * sizes.iter().sum::<usize>() as f64
    );
    assert!(
        execs < requests,
        "dynamic batching ran {execs} executions for {requests} requests"
    );
    assert!(
        m.contains("# TYPE nv_inference_request_success counter"),
        "{m}"
    );
    for series in [
        "nv_inference_request_duration_us{",
        "nv_inference_queue_duration_us{",
        "nv_inference_compute_infer_duration_us{",
        "streamrec_request_latency_seconds_bucket",
        "streamrec_batch_size_bucket",
        "streamrec_queue_samples",
        "streamrec_inflight_requests",
    ] {
        assert!(m.contains(series), "{series} missing from {m}");
    }
    srv.stop().unwrap();
}

/// An engine that takes `delay` per execution and counts them, over a real engine.
struct Slow {
    inner: Arc<dyn Infer>,
    delay: Duration,
    runs: AtomicUsize,
    fail: bool,
}

impl Infer for Slow {
    fn infer(&self, batch: &ValidatedBatch) -> streamrec::runtime::Result<Vec<f32>> {
        let n = self.runs.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(self.delay);
        if self.fail && n >= 2 {
            return Err(RuntimeError::Execution("device lost".into()));
        }
        self.inner.infer(batch)
    }
    fn take_trace(&self) -> Vec<TraceEvent> {
        Vec::new()
    }
    fn backend_name(&self) -> &'static str {
        "slow"
    }
}

fn slow(spec: &ModelSpec, delay_ms: u64, fail: bool) -> Arc<Slow> {
    Arc::new(Slow {
        inner: engine(spec, 64, 1),
        delay: Duration::from_millis(delay_ms),
        runs: AtomicUsize::new(0),
        fail,
    })
}

#[test]
fn a_full_queue_is_a_503_with_retry_after() {
    let spec = tiny();
    let srv = serve(
        ServeConfig {
            max_batch: 4,
            queue_capacity: 8,
            max_queue_delay_us: 0,
            ..config()
        },
        slow(&spec, 40, false),
    );
    let a = srv.addr();
    let body = serde_json::to_vec(&request_json(
        &spec,
        &random_batch(&spec, 4, Skew::Uniform, 1),
    ))
    .unwrap();
    let statuses: Vec<(u16, Option<String>)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..12)
            .map(|_| {
                let body = &body;
                s.spawn(move || {
                    let r = post(a, INFER, body);
                    (r.status, r.headers.get("retry-after").cloned())
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok = statuses.iter().filter(|s| s.0 == 200).count();
    let refused: Vec<_> = statuses.iter().filter(|s| s.0 == 503).collect();
    assert_eq!(ok + refused.len(), 12, "only 200 and 503: {statuses:?}");
    assert!(ok >= 2 && !refused.is_empty(), "{statuses:?}");
    assert!(
        refused.iter().all(|s| s.1.as_deref() == Some("1")),
        "{statuses:?}"
    );
    let m = String::from_utf8(get(a, "/metrics").body).unwrap();
    assert!(m.contains("reason=\"REJECTED\"} "), "{m}");
    srv.stop().unwrap();
}

#[test]
fn shutdown_drains_in_flight_requests_then_refuses_connections() {
    let spec = tiny();
    let srv = serve(config(), slow(&spec, 300, false));
    let a = srv.addr();
    let body = serde_json::to_vec(&valid(&spec)).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let client = std::thread::spawn(move || {
        let t = Instant::now();
        let _ = tx.send(());
        let r = post(a, INFER, &body);
        (r.status, t.elapsed())
    });
    rx.recv().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    srv.stop().unwrap();
    let (status, took) = client.join().unwrap();
    assert_eq!(status, 200, "the request in flight finished");
    assert!(
        took >= Duration::from_millis(250),
        "it really was in flight ({took:?})"
    );
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(
        TcpStream::connect(a).is_err(),
        "new connections are refused"
    );
}

#[test]
fn a_fatal_engine_error_turns_readiness_false() {
    let spec = tiny();
    let srv = serve(config(), slow(&spec, 1, true));
    let a = srv.addr();
    let body = serde_json::to_vec(&valid(&spec)).unwrap();
    // The warm-up used two executions; the next one fails.
    let r = post(a, INFER, &body);
    assert_eq!(r.status, 500, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.error().contains("device lost"), "{}", r.error());
    assert_eq!(get(a, "/v2/health/ready").status, 503);
    assert_eq!(get(a, "/v2/models/tiny/ready").status, 503);
    assert_eq!(get(a, "/v2/health/live").status, 200);
    let r = post(a, INFER, &body);
    assert_eq!(r.status, 503);
    assert!(r.headers.contains_key("retry-after"));
    srv.stop().unwrap();
}

/// POSTs on a keep-alive connection (opened again after an error or `Connection: close`);
/// the status, or None when the connection failed.
fn post_keep_alive(client: &mut Client, body: &[u8], header: Option<usize>) -> Option<u16> {
    client
        .post_infer(INFER, body, header)
        .ok()
        .map(|r| r.status)
}

/// 100,000 random and mutated bodies (JSON and binary), each through the parser and through
/// the HTTP layer of a live server: no panic, the parser answers Ok or a message, the server
/// only 200 or 4xx, and it stays ready.
#[test]
fn fuzzed_bodies_never_panic_the_parser_or_the_server() {
    let spec = tiny();
    let json_seed = serde_json::to_vec(&valid(&spec)).unwrap();
    let b = random_batch(&spec, 3, Skew::Uniform, 8);
    let (bin_seed, bin_n) = binary_body(&spec, &b, true);
    let srv = serve(config(), engine(&spec, 64, 1));
    let a = srv.addr();
    let threads = 4u64;
    let per = 25_000u32;
    let counts: Vec<(u32, u32, u32)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let (spec, json_seed, bin_seed) = (&spec, &json_seed, &bin_seed);
                s.spawn(move || {
                    let mut rng = StdRng::seed_from_u64(0x5eed + t);
                    let (mut ok, mut bad, mut served) = (0, 0, 0);
                    let mut client = Client::new(a);
                    for n in 0..per {
                        let (body, header) = match n % 3 {
                            0 => (fuzz::mutate(&mut rng, json_seed), None),
                            1 => {
                                let body = fuzz::mutate(&mut rng, bin_seed);
                                let h = if rng.random_bool(0.8) {
                                    bin_n
                                } else {
                                    rng.random_range(0..body.len() + 2)
                                };
                                (body, Some(h))
                            }
                            _ => (fuzz::random_bytes(&mut rng, 64), None),
                        };
                        match parse(&body, header, spec) {
                            Ok(_) => ok += 1,
                            Err(e) => {
                                assert!(!e.to_string().is_empty());
                                bad += 1;
                            }
                        }
                        // A connection error is retried once on a new connection.
                        let status = post_keep_alive(&mut client, &body, header)
                            .or_else(|| post_keep_alive(&mut client, &body, header))
                            .unwrap_or_else(|| panic!("no answer to body {n} of thread {t}"));
                        assert!(
                            status == 200 || (400..500).contains(&status),
                            "status {status} for {:?}",
                            String::from_utf8_lossy(&body)
                        );
                        served += 1;
                    }
                    (ok, bad, served)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok: u32 = counts.iter().map(|c| c.0).sum();
    let bad: u32 = counts.iter().map(|c| c.1).sum();
    let served: u32 = counts.iter().map(|c| c.2).sum();
    assert_eq!(ok + bad, 100_000);
    assert_eq!(served, 100_000);
    assert_eq!(get(a, "/v2/health/ready").status, 200);
    println!("fuzz: {ok} accepted, {bad} refused by the parser; {served} through HTTP");
    srv.stop().unwrap();
}

#[test]
fn the_plan_view_is_served_read_only_at_ui() {
    let spec = tiny();
    let plain = serve(config(), engine(&spec, 64, 1));
    assert_eq!(get(plain.addr(), "/ui").status, 404);
    plain.stop().unwrap();
    let server = Server::start(
        config(),
        Model {
            spec: tiny(),
            engine: engine(&spec, 64, 1),
        },
    )
    .unwrap();
    server.set_ui("<!doctype html><title>plan</title>".into());
    let srv = server.spawn();
    let r = get(srv.addr(), "/ui");
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(r.body, b"<!doctype html><title>plan</title>");
    let r = post(srv.addr(), "/ui", b"<script>");
    assert_eq!(r.status, 405);
    srv.stop().unwrap();
}
