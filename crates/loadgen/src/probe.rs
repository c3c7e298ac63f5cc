//! Outside a run: an HTTP GET, a gRPC call, the model's metadata and the wait for readiness
//! (`/v2/health/ready` and the model's ready endpoint over HTTP, `ServerReady`/`ModelReady` over
//! gRPC), each bounded in time.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::header::{HeaderValue, HOST};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

use crate::error::LoadError;
use crate::grpc::{GrpcConn, GrpcError};
use crate::run::{resolve, Protocol, Target};

async fn get(
    addr: std::net::SocketAddr,
    host: &HeaderValue,
    path: &str,
) -> Result<(u16, Bytes), String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut tx, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = Request::new(Empty::new());
    *req.uri_mut() = path.parse().map_err(|_| format!("bad path `{path}`"))?;
    req.headers_mut().insert(HOST, host.clone());
    let resp = tx.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}

/// One GET on a fresh connection: the status and the body.
pub fn http_get(url: &str, path: &str, timeout: Duration) -> Result<(u16, Bytes), LoadError> {
    let ep = Target::new(url, "m").endpoint()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| LoadError::Http(format!("starting the async runtime: {e}")))?;
    let full = format!("{}{path}", ep.base);
    rt.block_on(async {
        let addr = resolve(&ep.authority).await?;
        tokio::time::timeout(timeout, get(addr, &ep.host, &full))
            .await
            .map_err(|_| LoadError::Http(format!("GET {url}{path}: no answer in {timeout:?}")))?
            .map_err(|e| LoadError::Http(format!("GET {url}{path}: {e}")))
    })
}

/// One gRPC call of `target`'s service on a fresh connection, answered within `timeout`.
fn grpc_call<Resp: prost::Message + Default>(
    target: &Target,
    method: &str,
    req: &impl prost::Message,
    timeout: Duration,
) -> Result<Resp, LoadError> {
    let ep = target.endpoint()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| LoadError::Http(format!("starting the async runtime: {e}")))?;
    let path = format!("/inference.GRPCInferenceService/{method}");
    let what = format!("{} {method}", target.url);
    rt.block_on(async {
        let addr = resolve(&ep.authority).await?;
        let call = async {
            let mut c = GrpcConn::connect(addr).await?;
            c.call::<Resp>(&path, req).await
        };
        tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| LoadError::Http(format!("{what}: no answer in {timeout:?}")))?
            .map_err(|e| {
                LoadError::Http(match e {
                    GrpcError::Status { code, message } => format!(
                        "{what}: gRPC status {code} {}: {}",
                        crate::grpc::code_name(code),
                        crate::grpc::percent_decode(&message)
                    ),
                    e => format!("{what}: {e}"),
                })
            })
    })
}

/// The model's metadata as the REST endpoint gives it (name, versions, platform, inputs and
/// outputs with name, datatype and shape), from gRPC `ModelMetadata`.
fn grpc_metadata(target: &Target) -> Result<Value, LoadError> {
    use streamrec_protocol::grpc::pb;
    let m: pb::ModelMetadataResponse = grpc_call(
        target,
        "ModelMetadata",
        &pb::ModelMetadataRequest {
            name: target.model.clone(),
            version: target.version.clone().unwrap_or_default(),
        },
        Duration::from_secs(10),
    )?;
    let tensors = |ts: &[pb::model_metadata_response::TensorMetadata]| -> Value {
        ts.iter()
            .map(|t| serde_json::json!({"name": t.name, "datatype": t.datatype, "shape": t.shape}))
            .collect()
    };
    Ok(serde_json::json!({
        "name": m.name,
        "versions": m.versions,
        "platform": m.platform,
        "inputs": tensors(&m.inputs),
        "outputs": tensors(&m.outputs),
    }))
}

/// The model's metadata (`GET /v2/models/{m}[/versions/{v}]`; for a `grpc://` target gRPC
/// `ModelMetadata`, in the same JSON shape).
pub fn fetch_metadata(target: &Target) -> Result<Value, LoadError> {
    if target.protocol()? == Protocol::Grpc {
        return grpc_metadata(target);
    }
    let path = target.model_path("");
    let (status, body) = http_get(&target.url, &path, Duration::from_secs(10))?;
    if status != 200 {
        return Err(LoadError::Http(format!(
            "GET {}{path}: status {status}: {}",
            target.url,
            String::from_utf8_lossy(&body[..body.len().min(200)])
        )));
    }
    serde_json::from_slice(&body)
        .map_err(|e| LoadError::Http(format!("GET {}{path}: not JSON: {e}", target.url)))
}

/// Waits until `GET /v2/models/{m}[/versions/{v}]/ready` answers 200 (for a `grpc://` target:
/// until gRPC `ModelReady` answers ready), polling every 200 ms.
pub fn wait_ready(target: &Target, limit: Duration) -> Result<(), LoadError> {
    wait_ready_noting(target, limit, Duration::MAX, &mut |_| {})
}

/// [`wait_ready`] that says what it waits for: `note` gets a line before the first poll
/// (`waiting for URL (timeout 60 s)...`) and one about every `every` while the model is not
/// ready (how long so far, and the last answer).
pub fn wait_ready_noting(
    target: &Target,
    limit: Duration,
    every: Duration,
    note: &mut dyn FnMut(String),
) -> Result<(), LoadError> {
    let grpc = target.protocol()? == Protocol::Grpc;
    let path = format!("{}/ready", target.model_path(""));
    let url = if grpc {
        format!("{} ModelReady `{}`", target.url, target.model)
    } else {
        format!("{}{path}", target.url.trim_end_matches('/'))
    };
    let answer = if grpc { "ready" } else { "200" };
    note(format!(
        "waiting for {url} to answer {answer} (timeout {})...",
        secs(limit)
    ));
    let t = Instant::now();
    let mut next_note = t.checked_add(every);
    loop {
        let last = if grpc {
            let req = streamrec_protocol::grpc::pb::ModelReadyRequest {
                name: target.model.clone(),
                version: target.version.clone().unwrap_or_default(),
            };
            let r: Result<streamrec_protocol::grpc::pb::ModelReadyResponse, _> =
                grpc_call(target, "ModelReady", &req, Duration::from_secs(2));
            match r {
                Ok(r) if r.ready => return Ok(()),
                Ok(_) => "not ready".to_string(),
                Err(e) => e.to_string(),
            }
        } else {
            match http_get(&target.url, &path, Duration::from_secs(2)) {
                Ok((200, _)) => return Ok(()),
                Ok((s, _)) => format!("status {s}"),
                Err(e) => e.to_string(),
            }
        };
        if t.elapsed() >= limit {
            return Err(LoadError::Http(format!(
                "{} model `{}` not ready after {} (last: {last})",
                target.url,
                target.model,
                secs(limit)
            )));
        }
        if next_note.is_some_and(|n| Instant::now() >= n) {
            note(format!(
                "still waiting for {url}: {:.0} s of {} (last: {last})",
                t.elapsed().as_secs_f64(),
                secs(limit)
            ));
            next_note = Instant::now().checked_add(every);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `60 s`, `0.3 s`: seconds with at most 3 decimals, trailing zeros dropped.
fn secs(d: Duration) -> String {
    let t = format!("{:.3}", d.as_secs_f64());
    format!("{} s", t.trim_end_matches('0').trim_end_matches('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_read_plainly() {
        assert_eq!(secs(Duration::from_secs(60)), "60 s");
        assert_eq!(secs(Duration::from_millis(300)), "0.3 s");
        assert_eq!(secs(Duration::from_millis(1)), "0.001 s");
    }
}
