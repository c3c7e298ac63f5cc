//! An infer request: its body read within the timeouts and the memory budget (and decompressed,
//! [`crate::compression`]), admitted,
//! parsed, queued for the batcher, and answered (a non-finite score is a 500); counted in the
//! metrics however it ends, a request dropped with its connection as `CANCELLED`.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, CONTENT_ENCODING, CONTENT_LENGTH};
use hyper::{Request, StatusCode};

use crate::batcher::Refused;
use crate::budget::{Charge, BINARY_COST, JSON_COST};
use crate::compression::{self, Coding, DecodeError};
use crate::conn::{Conn, Phase};
use crate::metrics::{FailureReason, Metrics};
use crate::protocol::{self, HEADER_LENGTH};
use crate::reply::{error, respond, unavailable, Resp};
use crate::state::State;

/// Bodies larger than this are parsed on a blocking thread, off the async executor.
pub(crate) const INLINE_PARSE_BYTES: usize = 256 << 10;

/// How long a body may still come through hyper after its client closed its sending side.
const PEER_CLOSE_GRACE: Duration = Duration::from_millis(200);

/// Counts a request in flight while it lives.
pub(crate) struct InFlight<'a>(pub(crate) &'a State);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
        self.0.metrics.inflight_add(-1);
    }
}

/// Counts an infer request as cancelled if it is dropped before it has an answer (hyper drops
/// it when the client's connection fails).
pub(crate) struct Tally<'a>(pub(crate) &'a Metrics, pub(crate) bool);

impl Drop for Tally<'_> {
    fn drop(&mut self) {
        if self.1 {
            self.0.request_failed(FailureReason::Cancelled);
        }
    }
}

/// Asks hyper to close the connection after this answer (the rest of the body is unread).
fn closing(mut r: Resp) -> Resp {
    r.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    r
}

/// Why a body was not read whole.
enum BodyError {
    TooLarge,
    OverBudget,
    Timeout(String),
    ClosedEarly(usize),
    Read(hyper::Error),
}

/// Reads a body of at most `max` bytes, charging the budget as bytes arrive (the declared length
/// up front), with the body timeouts: no gap longer than `body_timeout_s`, and after the first
/// `body_timeout_s` an average of at least `min_body_rate` bytes a second.
async fn read_body(
    state: &State,
    conn: &Conn,
    mut body: Incoming,
    declared: Option<u64>,
    charge: &mut Charge<'_>,
) -> Result<Bytes, BodyError> {
    let max = state.cfg.max_body_bytes;
    let declared = declared.map_or(0, |n| n as usize);
    if !charge.grow_to(declared) {
        return Err(BodyError::OverBudget);
    }
    let mut buf = BytesMut::with_capacity(declared);
    let gap = Duration::from_secs_f64(state.cfg.body_timeout_s);
    let rate = state.cfg.min_body_rate as f64;
    let start = tokio::time::Instant::now();
    let mut last = start;
    // When the client closes its side, what it sent before is still on its way through hyper
    // (the body's end included): a short grace for it, then the body is incomplete.
    let mut peer_closed: Option<tokio::time::Instant> = None;
    loop {
        let by_rate = start + gap + Duration::from_secs_f64(buf.len() as f64 / rate);
        let deadline = (last + gap).min(by_rate);
        let frame = tokio::select! {
            biased;
            f = tokio::time::timeout_at(deadline, body.frame()) => f,
            _ = conn.closed_by_peer(), if peer_closed.is_none() => {
                peer_closed = Some(tokio::time::Instant::now() + PEER_CLOSE_GRACE);
                continue;
            }
            _ = tokio::time::sleep_until(peer_closed.unwrap_or(deadline)), if peer_closed.is_some() => {
                return Err(BodyError::ClosedEarly(buf.len()));
            }
        };
        let frame = match frame {
            Err(_) => {
                let why = if deadline == last + gap {
                    format!(
                        "no part of the request body for {:.1} s ({} bytes received)",
                        gap.as_secs_f64(),
                        buf.len()
                    )
                } else {
                    format!(
                        "the request body came slower than {} bytes/s ({} bytes in {:.1} s)",
                        state.cfg.min_body_rate,
                        buf.len(),
                        start.elapsed().as_secs_f64()
                    )
                };
                return Err(BodyError::Timeout(why));
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(BodyError::Read(e)),
            Ok(Some(Ok(f))) => f,
        };
        if let Ok(data) = frame.into_data() {
            let total = buf.len() + data.len();
            if total > max {
                return Err(BodyError::TooLarge);
            }
            if !charge.grow_to(total) {
                return Err(BodyError::OverBudget);
            }
            buf.extend_from_slice(&data);
            last = tokio::time::Instant::now();
        }
    }
    Ok(buf.freeze())
}

pub(crate) async fn infer(state: &State, conn: &Conn, req: Request<Incoming>) -> Resp {
    let arrived = Instant::now();
    let fail = |reason: FailureReason, resp: Resp| {
        state.metrics.request_failed(reason);
        resp
    };
    if !state.ready() {
        return fail(FailureReason::Rejected, unavailable(state, "not ready"));
    }
    let max = state.cfg.max_body_bytes;
    let too_large = || {
        closing(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("request body is more than the limit of {max} bytes"),
        ))
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return fail(FailureReason::InvalidInput, too_large());
    }
    let header_len = match req.headers().get(HEADER_LENGTH) {
        None => None,
        Some(v) => match v.to_str().ok().and_then(|s| s.trim().parse::<usize>().ok()) {
            Some(n) => Some(n),
            None => {
                return fail(
                    FailureReason::InvalidInput,
                    closing(error(
                        StatusCode::BAD_REQUEST,
                        "Inference-Header-Content-Length must be a non-negative integer",
                    )),
                )
            }
        },
    };
    let coding = match compression::request_coding(req.headers()) {
        Ok(c) => c,
        Err(e) => {
            return fail(
                FailureReason::InvalidInput,
                closing(error(StatusCode::BAD_REQUEST, &e.to_string())),
            )
        }
    };
    let reply_coding = compression::response_coding(req.headers());
    let over_budget = || {
        closing(unavailable(
            state,
            "overloaded: the server holds as many request bytes as its memory budget allows",
        ))
    };
    let mut charge = state.budget.charge();
    let body = match read_body(state, conn, req.into_body(), declared, &mut charge).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => return fail(FailureReason::InvalidInput, too_large()),
        Err(BodyError::OverBudget) => return fail(FailureReason::Rejected, over_budget()),
        Err(BodyError::Timeout(why)) => {
            return fail(
                FailureReason::Timeout,
                closing(error(StatusCode::REQUEST_TIMEOUT, &why)),
            )
        }
        Err(BodyError::ClosedEarly(got)) => {
            return fail(
                FailureReason::InvalidInput,
                closing(error(
                    StatusCode::BAD_REQUEST,
                    &format!("the client closed the connection after {got} bytes of the body"),
                )),
            )
        }
        Err(BodyError::Read(e)) => {
            return fail(
                FailureReason::InvalidInput,
                closing(error(
                    StatusCode::BAD_REQUEST,
                    &format!("cannot read the request body: {e}"),
                )),
            )
        }
    };
    // A compressed body is charged for its decompressed bytes too, as they come out.
    let body = if coding == Coding::Identity {
        body
    } else {
        let held = body.len();
        let out = tokio::task::block_in_place(|| {
            compression::decode(coding, &body, max, |n| charge.grow_to(held + n))
        });
        match out {
            Ok(b) => Bytes::from(b),
            Err(e @ DecodeError::TooLarge(_)) => {
                return fail(
                    FailureReason::InvalidInput,
                    error(StatusCode::PAYLOAD_TOO_LARGE, &e.to_string()),
                )
            }
            Err(DecodeError::OverBudget) => return fail(FailureReason::Rejected, over_budget()),
            Err(e) => {
                return fail(
                    FailureReason::InvalidInput,
                    error(StatusCode::BAD_REQUEST, &e.to_string()),
                )
            }
        }
    };
    // Decoding costs a multiple of the body (serde's values, the batch): charged before it runs.
    let cost = if header_len.is_some() {
        BINARY_COST
    } else {
        JSON_COST
    };
    if !charge.grow_to(body.len().saturating_mul(cost)) {
        return fail(FailureReason::Rejected, over_budget());
    }
    conn.enter(Phase::Busy);
    if state.inflight.fetch_add(1, Ordering::SeqCst) >= state.cfg.max_inflight {
        state.inflight.fetch_sub(1, Ordering::SeqCst);
        return fail(
            FailureReason::Rejected,
            unavailable(state, "overloaded: too many requests in flight"),
        );
    }
    state.metrics.inflight_add(1);
    let _guard = InFlight(state);
    let parsed = if body.len() <= INLINE_PARSE_BYTES {
        protocol::parse(&body, header_len, &state.spec)
    } else {
        let spec = state.spec.clone();
        match tokio::task::spawn_blocking(move || protocol::parse(&body, header_len, &spec)).await {
            Ok(p) => p,
            Err(e) => {
                return fail(
                    FailureReason::Backend,
                    error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &format!("request parsing failed: {e}"),
                    ),
                )
            }
        }
    };
    let parsed = match parsed {
        Ok(p) => p,
        Err(e) => {
            return fail(
                FailureReason::InvalidInput,
                error(StatusCode::BAD_REQUEST, &e.to_string()),
            )
        }
    };
    let samples = parsed.batch.size;
    let rx = match state.batcher.submit(parsed.batch) {
        Ok(rx) => rx,
        Err(Refused::Full) => {
            return fail(
                FailureReason::Rejected,
                unavailable(state, "overloaded: the request queue is full"),
            )
        }
        Err(Refused::Closed) => {
            return fail(FailureReason::Rejected, unavailable(state, "not ready"))
        }
        Err(Refused::TooLarge { size, max }) => {
            return fail(
                FailureReason::InvalidInput,
                error(
                    StatusCode::BAD_REQUEST,
                    &format!("dense: batch of {size} samples is more than max_batch ({max})"),
                ),
            )
        }
    };
    let done = match rx.await {
        Ok(Ok(d)) => d,
        Ok(Err(msg)) => {
            return fail(
                FailureReason::Backend,
                error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("inference failed: {msg}"),
                ),
            )
        }
        Err(_) => {
            return fail(
                FailureReason::Backend,
                error(StatusCode::INTERNAL_SERVER_ERROR, "inference was dropped"),
            )
        }
    };
    if let Some(i) = done.scores.iter().position(|s| !s.is_finite()) {
        return fail(
            FailureReason::Backend,
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!(
                    "inference failed: the score of sample {i} is {} (not a finite number)",
                    done.scores[i]
                ),
            ),
        );
    }
    let enc = protocol::encode_response(
        &state.spec.name,
        &state.cfg.version,
        parsed.id.as_deref(),
        &done.scores,
        parsed.binary_output,
    );
    let total = arrived.elapsed();
    state.metrics.request_ok(
        samples,
        total.as_micros() as u64,
        done.queue.as_micros() as u64,
        done.compute.as_micros() as u64,
    );
    let body = compression::encode(reply_coding, enc.body);
    let mut r = match enc.header_len {
        Some(n) => {
            let mut r = respond(StatusCode::OK, body, "application/octet-stream");
            r.headers_mut().insert(HEADER_LENGTH, HeaderValue::from(n));
            r
        }
        None => respond(StatusCode::OK, body, "application/json"),
    };
    if reply_coding != Coding::Identity {
        r.headers_mut().insert(
            CONTENT_ENCODING,
            HeaderValue::from_static(reply_coding.name()),
        );
    }
    r
}
