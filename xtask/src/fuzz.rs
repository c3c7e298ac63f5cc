//! `cargo xtask fuzz --secs N`: random and mutated infer bodies (JSON and Triton binary)
//! through the request parser, and a share of them through a live server over loopback, for a
//! bounded time; any panic, or an answer other than 200 or 4xx, is a failure.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use streamrec_graph::{Algorithm, ModelSpec};
use streamrec_runtime::builder::EngineBuilder;
use streamrec_runtime::gen::{random_batch, Skew};
use streamrec_runtime::request::InferRequest;
use streamrec_runtime::BackendKind;
use streamrec_runtime::IndexVec;
use streamrec_serve::client::Client;
use streamrec_serve::fuzz::{mutate, random_bytes};
use streamrec_serve::protocol::parse;
use streamrec_serve::{Model, ServeConfig, Server};

/// One request on a fresh connection; the status code.
fn post(addr: SocketAddr, body: &[u8], header: Option<usize>) -> Result<u16> {
    let r = Client::new(addr)
        .timeout(Duration::from_secs(10))
        .close_each()
        .post_infer("/v2/models/tiny/infer", body, header)?;
    Ok(r.status)
}

/// Runs the task.
pub fn run(args: &[String]) -> Result<()> {
    let mut secs = 30.0f64;
    let mut seed = 1u64;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--secs" => {
                secs = it
                    .next()
                    .context("--secs needs a number")?
                    .parse()
                    .context("--secs needs a number")?;
                if !(secs.is_finite() && secs > 0.0 && secs <= 86_400.0) {
                    bail!("--secs: must be in (0, 86400]");
                }
            }
            "--seed" => {
                seed = it
                    .next()
                    .context("--seed needs a number")?
                    .parse()
                    .context("--seed needs a number")?
            }
            x => bail!("fuzz: unknown option `{x}`"),
        }
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../workloads/tiny.toml");
    let spec = ModelSpec::load(&path, None)?;
    let engine = EngineBuilder::new(&spec)
        .backend(BackendKind::Cpu)
        .algo(Algorithm::Single)
        .max_batch(64)
        .build()?
        .engine;
    let server = Server::start(
        ServeConfig {
            port: 0,
            max_batch: 64,
            ..ServeConfig::default()
        },
        Model {
            spec: spec.clone(),
            engine: Arc::from(engine),
        },
    )?
    .spawn();
    let addr = server.addr();
    let mut b = random_batch(&spec, 3, Skew::Uniform, 8);
    let json_seed = serde_json::to_vec(&InferRequest::from_batch(&spec, &b))?;
    // A binary-extension seed with INT32 indices.
    for s in &mut b.sparse {
        s.indices = IndexVec::I32(s.indices.to_i64().iter().map(|&x| x as i32).collect());
        s.offsets = IndexVec::I32(s.offsets.to_i64().iter().map(|&x| x as i32).collect());
    }
    let req = InferRequest::from_batch(&spec, &b);
    let mut head = serde_json::json!({"inputs": []});
    let mut raw = Vec::new();
    for t in &req.inputs {
        let bytes: Vec<u8> = match t.datatype.as_str() {
            "FP32" => t
                .data
                .to_f32()
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
            _ => t
                .data
                .as_i64()
                .unwrap_or_default()
                .iter()
                .flat_map(|&x| (x as i32).to_le_bytes())
                .collect(),
        };
        head["inputs"]
            .as_array_mut()
            .expect("array")
            .push(serde_json::json!({
                "name": t.name, "shape": t.shape, "datatype": t.datatype,
                "parameters": {"binary_data_size": bytes.len()},
            }));
        raw.extend_from_slice(&bytes);
    }
    let mut bin_seed = serde_json::to_vec(&head)?;
    let bin_n = bin_seed.len();
    bin_seed.extend_from_slice(&raw);

    let mut rng = StdRng::seed_from_u64(seed);
    let start = Instant::now();
    let (mut n, mut accepted, mut http) = (0u64, 0u64, 0u64);
    let mut statuses = std::collections::BTreeMap::new();
    while start.elapsed().as_secs_f64() < secs {
        let (body, header) = match n % 3 {
            0 => (mutate(&mut rng, &json_seed), None),
            1 => {
                let body = mutate(&mut rng, &bin_seed);
                let h = if rng.random_bool(0.8) {
                    bin_n
                } else {
                    rng.random_range(0..body.len() + 2)
                };
                (body, Some(h))
            }
            _ => (random_bytes(&mut rng, 256), None),
        };
        if parse(&body, header, &spec).is_ok() {
            accepted += 1;
        }
        if n % 20 == 0 {
            let status = post(addr, &body, header)?;
            if !(status == 200 || (400..500).contains(&status)) {
                bail!(
                    "body {n} got status {status}: {:?}",
                    String::from_utf8_lossy(&body)
                );
            }
            *statuses.entry(status).or_insert(0u64) += 1;
            http += 1;
        }
        n += 1;
        if n % 100_000 == 0 {
            eprintln!(
                "{n} bodies in {:.0} s ({accepted} accepted)",
                start.elapsed().as_secs_f64()
            );
        }
    }
    server.stop()?;
    println!(
        "fuzz: {n} bodies through the parser ({accepted} accepted, {} refused with a message), \
         {http} through HTTP: {statuses:?}; no panic, only 200 and 4xx (seed {seed}, {secs} s)",
        n - accepted
    );
    Ok(())
}
