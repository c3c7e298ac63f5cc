//! A unary gRPC call over one HTTP/2 connection (hyper's client), as lean as the protocol
//! allows: the request's HEADERS and its one DATA frame (END_STREAM set) go out in one write,
//! and the answer is read to its trailers. A general gRPC client (tonic's) streams its request
//! body and ends it with a separate empty frame, which on loopback costs the server an extra
//! wake-up per call; a load generator should not add that to what it measures.
//!
//! Messages are the protocol crate's (`streamrec_protocol::grpc::pb`), framed here: one
//! uncompressed message, a 5-byte prefix (flag 0, big-endian length).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use streamrec_protocol::grpc::pb;

/// The path of `ModelInfer` in the KServe v2 service.
pub const MODEL_INFER: &str = "/inference.GRPCInferenceService/ModelInfer";

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

/// One HTTP/2 connection sending unary calls (cheap to clone; clones share the connection).
#[derive(Clone)]
pub struct GrpcConn {
    send: SendRequest<Full<Bytes>>,
    authority: String,
}

impl GrpcConn {
    /// Connects to `addr` (TCP_NODELAY; the connection's task runs on the current runtime).
    pub async fn connect(addr: std::net::SocketAddr) -> Result<Self, GrpcError> {
        let t = |e: &dyn std::fmt::Display| GrpcError::Transport(e.to_string());
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| t(&e))?;
        stream.set_nodelay(true).map_err(|e| t(&e))?;
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .map_err(|e| t(&e))?;
        tokio::spawn(conn);
        Ok(GrpcConn {
            send,
            authority: addr.to_string(),
        })
    }

    /// Calls `path` with an already framed message ([`frame`]) and gives the response message's
    /// bytes (unframed).
    pub async fn unary(&mut self, path: &str, framed: Bytes) -> Result<Bytes, GrpcError> {
        let req = hyper::Request::post(format!("http://{}{path}", self.authority))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(framed))
            .map_err(|e| GrpcError::Transport(e.to_string()))?;
        self.send
            .ready()
            .await
            .map_err(|e| GrpcError::Transport(e.to_string()))?;
        let resp = self
            .send
            .send_request(req)
            .await
            .map_err(|e| GrpcError::Transport(e.to_string()))?;
        if resp.status() != hyper::StatusCode::OK {
            return Err(GrpcError::Http(resp.status().as_u16()));
        }
        // A status can come in the headers alone (a trailers-only answer) or in the trailers.
        let head_status = status_of(resp.headers());
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| GrpcError::Transport(e.to_string()))?;
        let status = body.trailers().and_then(status_of).or(head_status);
        match status {
            Some((0, _)) => {}
            Some((code, message)) => return Err(GrpcError::Status { code, message }),
            None => return Err(GrpcError::Malformed("no grpc-status".into())),
        }
        unframe(body.to_bytes())
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

fn status_of(h: &hyper::HeaderMap) -> Option<(u32, String)> {
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
}
