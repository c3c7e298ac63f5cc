//! A unary gRPC call over one HTTP/2 connection (the h2 crate's client), as lean as the
//! protocol allows: the request's HEADERS and its one DATA frame (END_STREAM set) go out in one write,
//! and the answer is read to its trailers. A general gRPC client (tonic's) streams its request
//! body and ends it with a separate empty frame, which on loopback costs the server an extra
//! wake-up per call; a load generator should not add that to what it measures.
//!
//! Messages are the protocol crate's (`streamrec_protocol::grpc::pb`), framed here: one
//! uncompressed message, a 5-byte prefix (flag 0, big-endian length).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;
use streamrec_protocol::grpc::pb;

/// The path of `ModelInfer` in the KServe v2 service.
pub const MODEL_INFER: &str = "/inference.GRPCInferenceService/ModelInfer";
/// The path of `ModelReady`.
pub const MODEL_READY: &str = "/inference.GRPCInferenceService/ModelReady";
/// The path of `ModelMetadata`.
pub const MODEL_METADATA: &str = "/inference.GRPCInferenceService/ModelMetadata";

/// The name of a gRPC status code (`OK`, `UNAVAILABLE`, ...), `CODE_<n>` beyond the 17 the
/// protocol defines.
pub fn code_name(code: u32) -> String {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES
        .get(code as usize)
        .map_or_else(|| format!("CODE_{code}"), |n| n.to_string())
}

/// A `grpc-message` percent-decoded (the protocol percent-encodes it); a malformed escape is
/// kept as written.
pub fn percent_decode(m: &str) -> String {
    let b = m.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).and_then(|&c| hex(c)),
            b.get(i + 2).and_then(|&c| hex(c)),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The HTTP status a gRPC status code corresponds to (google.rpc.Code's table; also what
/// `streamrec serve` answers over HTTP for the failure it answers over gRPC with that code:
/// `INVALID_ARGUMENT` 400, `NOT_FOUND` 404, `UNAVAILABLE` 503, overload included). Unknown codes
/// are 500.
pub fn http_status(code: u32) -> u16 {
    match code {
        0 => 200,
        1 => 499,
        3 | 9 | 11 => 400,
        4 => 504,
        5 => 404,
        6 | 10 => 409,
        7 => 403,
        8 => 429,
        12 => 501,
        14 => 503,
        16 => 401,
        _ => 500,
    }
}

/// Why a call failed: the transport, the HTTP/2 status, or the gRPC status and message.
#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    /// The connection could not be made or broke.
    #[error("gRPC transport: {0}")]
    Transport(String),
    /// An HTTP status other than 200.
    #[error("gRPC: HTTP status {0}")]
    Http(u16),
    /// A gRPC status other than OK (0), with the server's message.
    #[error("gRPC status {code}: {message}")]
    Status {
        /// The `grpc-status` code.
        code: u32,
        /// The `grpc-message`, percent-decoding left to the reader.
        message: String,
    },
    /// An answer that is not one well-formed message.
    #[error("gRPC: malformed response: {0}")]
    Malformed(String),
}

fn transport(e: impl std::fmt::Display) -> GrpcError {
    GrpcError::Transport(e.to_string())
}

/// One HTTP/2 connection sending unary calls (cheap to clone; clones share the connection).
#[derive(Clone)]
pub struct GrpcConn {
    send: h2::client::SendRequest<Bytes>,
    authority: String,
    /// Set when the connection's task ends (the connection closed or failed).
    closed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl GrpcConn {
    /// Connects to `addr` (TCP_NODELAY; the connection's task runs on the current runtime).
    pub async fn connect(addr: std::net::SocketAddr) -> Result<Self, GrpcError> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(transport)?;
        stream.set_nodelay(true).map_err(transport)?;
        // Windows large enough for ranking-sized requests in one round trip, and h2's guard
        // against floods of small DATA frames sized for thousands of answers in flight (each
        // answer's message is a small frame before its trailers; the default budget, about a
        // hundred unread ones, closed the connection under load).
        let (send, conn) = h2::client::Builder::new()
            .initial_window_size(4 << 20)
            .initial_connection_window_size(64 << 20)
            .data_frame_budget(256 << 20)
            .handshake(stream)
            .await
            .map_err(transport)?;
        let closed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = std::sync::Arc::clone(&closed);
        tokio::spawn(async move {
            let _ = conn.await;
            done.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        Ok(GrpcConn {
            send,
            authority: addr.to_string(),
            closed,
        })
    }

    /// Whether the connection has closed (a new one is needed).
    pub fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Calls `path` with `req` (framed here) and decodes the answer.
    pub async fn call<Resp: Message + Default>(
        &mut self,
        path: &str,
        req: &impl Message,
    ) -> Result<Resp, GrpcError> {
        let bytes = self.unary(path, frame(req)).await?;
        Resp::decode(bytes).map_err(|e| GrpcError::Malformed(e.to_string()))
    }

    /// Calls `path` with an already framed message ([`frame`]) and gives the response message's
    /// bytes (unframed). The HEADERS and the DATA frame are queued together, before the
    /// connection writes, so they leave in one write.
    pub async fn unary(&mut self, path: &str, framed: Bytes) -> Result<Bytes, GrpcError> {
        let req = http::Request::post(format!("http://{}{path}", self.authority))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .map_err(transport)?;
        let mut send = self.send.clone().ready().await.map_err(transport)?;
        let (resp, mut stream) = send.send_request(req, false).map_err(transport)?;
        stream.reserve_capacity(framed.len());
        stream.send_data(framed, true).map_err(transport)?;
        let resp = resp.await.map_err(transport)?;
        if resp.status() != http::StatusCode::OK {
            return Err(GrpcError::Http(resp.status().as_u16()));
        }
        // A status can come in the headers alone (a trailers-only answer) or in the trailers.
        let head_status = status_of(resp.headers());
        let mut body = resp.into_body();
        let mut data = BytesMut::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(transport)?;
            let _ = body.flow_control().release_capacity(chunk.len());
            data.extend_from_slice(&chunk);
        }
        let trailers = body.trailers().await.map_err(transport)?;
        match trailers.as_ref().and_then(status_of).or(head_status) {
            Some((0, _)) => {}
            Some((code, message)) => return Err(GrpcError::Status { code, message }),
            None => return Err(GrpcError::Malformed("no grpc-status".into())),
        }
        unframe(data.freeze())
    }

    /// `ModelInfer` with a framed request: the response, decoded.
    pub async fn model_infer(
        &mut self,
        framed: Bytes,
    ) -> Result<pb::ModelInferResponse, GrpcError> {
        let bytes = self.unary(MODEL_INFER, framed).await?;
        pb::ModelInferResponse::decode(bytes).map_err(|e| GrpcError::Malformed(e.to_string()))
    }
}

fn status_of(h: &http::HeaderMap) -> Option<(u32, String)> {
    let code = h.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    let message = h
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .unwrap_or_default()
        .to_string();
    Some((code, message))
}

/// `msg` as one uncompressed gRPC message: flag 0, its length (big-endian u32), its bytes.
pub fn frame(msg: &impl Message) -> Bytes {
    let len = msg.encoded_len();
    let mut b = BytesMut::with_capacity(5 + len);
    b.put_u8(0);
    b.put_u32(len as u32);
    msg.encode(&mut b)
        .expect("the buffer has the message's length");
    b.freeze()
}

/// The one message of a response body.
fn unframe(mut b: Bytes) -> Result<Bytes, GrpcError> {
    if b.len() < 5 {
        return Err(GrpcError::Malformed(format!(
            "{} bytes, less than a message prefix",
            b.len()
        )));
    }
    let compressed = b.get_u8();
    let len = b.get_u32() as usize;
    if compressed != 0 {
        return Err(GrpcError::Malformed("a compressed message".into()));
    }
    if len != b.len() {
        return Err(GrpcError::Malformed(format!(
            "a message of {len} bytes in a body of {}",
            b.len()
        )));
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_framed_and_unframed() {
        let msg = pb::ModelInferRequest {
            model_name: "tiny".into(),
            ..Default::default()
        };
        let f = frame(&msg);
        assert_eq!(f[0], 0);
        assert_eq!(
            u32::from_be_bytes([f[1], f[2], f[3], f[4]]) as usize,
            f.len() - 5
        );
        let back = pb::ModelInferRequest::decode(unframe(f).unwrap()).unwrap();
        assert_eq!(back, msg);
        let e = unframe(Bytes::from_static(&[0, 0, 0, 0, 9, 1])).unwrap_err();
        assert!(
            e.to_string()
                .contains("a message of 9 bytes in a body of 1"),
            "{e}"
        );
        let e = unframe(Bytes::from_static(&[0, 0])).unwrap_err();
        assert!(e.to_string().contains("less than a message prefix"), "{e}");
    }

    #[test]
    fn statuses_have_names_and_http_equivalents() {
        assert_eq!(
            percent_decode("unknown%20model%20%60x%60 100%"),
            "unknown model `x` 100%"
        );
        assert_eq!(code_name(14), "UNAVAILABLE");
        assert_eq!(code_name(99), "CODE_99");
        for (code, http) in [
            (0, 200),
            (3, 400),
            (5, 404),
            (14, 503),
            (13, 500),
            (42, 500),
        ] {
            assert_eq!(http_status(code), http, "{}", code_name(code));
        }
    }
}
