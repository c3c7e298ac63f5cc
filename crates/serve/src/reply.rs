//! Responses with a whole body: JSON, `{"error": ...}` bodies, and 503s with Retry-After.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Response, StatusCode};

use crate::protocol;
use crate::state::State;

/// A response with its whole body.
pub(crate) type Resp = Response<Full<Bytes>>;

pub(crate) fn respond(status: StatusCode, body: Vec<u8>, content_type: &'static str) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

pub(crate) fn json(status: StatusCode, v: &serde_json::Value) -> Resp {
    respond(
        status,
        serde_json::to_vec(v).expect("JSON serialises"),
        "application/json",
    )
}

pub(crate) fn error(status: StatusCode, msg: &str) -> Resp {
    respond(status, protocol::error_body(msg), "application/json")
}

pub(crate) fn unavailable(state: &State, msg: &str) -> Resp {
    let mut r = error(StatusCode::SERVICE_UNAVAILABLE, msg);
    r.headers_mut().insert(
        RETRY_AFTER,
        HeaderValue::from(state.cfg.retry_after_s.max(1)),
    );
    r
}
