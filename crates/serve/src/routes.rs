//! The routes: which KServe v2 endpoint a path asks for, and the answers of the endpoints that
//! need no engine (health, metadata, configuration, statistics, metrics, the plan view).

use std::convert::Infallible;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW};
use hyper::{Method, Request, StatusCode};

use crate::conn::{Conn, Serving};
use crate::infer::{infer, Tally};
use crate::metrics::FailureReason;
use crate::protocol;
use crate::reply::{error, json, respond, unavailable, Resp};
use crate::state::State;
use crate::triton;

fn method_not_allowed(allow: &'static str) -> Resp {
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("method not allowed (use {allow})"),
    );
    r.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    r
}

/// What a path asks for.
enum Route<'a> {
    Live,
    Ready,
    ServerMeta,
    Metrics,
    Ui,
    ModelMeta(&'a str, Option<&'a str>),
    ModelReady(&'a str, Option<&'a str>),
    Infer(&'a str, Option<&'a str>),
    /// Triton's model configuration extension.
    ModelConfig(&'a str, Option<&'a str>),
    /// Triton's statistics extension: every model's, or one model's.
    Stats(Option<(&'a str, Option<&'a str>)>),
}

fn route(path: &str) -> Option<Route<'_>> {
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    Some(match parts.as_slice() {
        ["v2", "health", "live"] => Route::Live,
        ["v2", "health", "ready"] => Route::Ready,
        ["v2"] => Route::ServerMeta,
        ["metrics"] => Route::Metrics,
        ["ui"] => Route::Ui,
        ["v2", "models", "stats"] => Route::Stats(None),
        ["v2", "models", m] => Route::ModelMeta(m, None),
        ["v2", "models", m, "config"] => Route::ModelConfig(m, None),
        ["v2", "models", m, "stats"] => Route::Stats(Some((m, None))),
        ["v2", "models", m, "versions", v, "config"] => Route::ModelConfig(m, Some(v)),
        ["v2", "models", m, "versions", v, "stats"] => Route::Stats(Some((m, Some(v)))),
        ["v2", "models", m, "ready"] => Route::ModelReady(m, None),
        ["v2", "models", m, "infer"] => Route::Infer(m, None),
        ["v2", "models", m, "versions", v] => Route::ModelMeta(m, Some(v)),
        ["v2", "models", m, "versions", v, "ready"] => Route::ModelReady(m, Some(v)),
        ["v2", "models", m, "versions", v, "infer"] => Route::Infer(m, Some(v)),
        _ => return None,
    })
}

/// A 404 unless the name and version are the served model's.
fn wrong_model(state: &State, m: &str, v: Option<&str>) -> Option<Resp> {
    if m != state.spec.name {
        return Some(error(
            StatusCode::NOT_FOUND,
            &format!(
                "unknown model `{m}` (this server serves `{}`)",
                state.spec.name
            ),
        ));
    }
    if let Some(v) = v {
        if v != state.cfg.version {
            return Some(error(
                StatusCode::NOT_FOUND,
                &format!(
                    "model `{m}` has no version `{v}` (versions: {})",
                    state.cfg.version
                ),
            ));
        }
    }
    None
}

pub(crate) async fn handle(
    state: Arc<State>,
    conn: Arc<Conn>,
    req: Request<Incoming>,
) -> Result<Resp, Infallible> {
    let _serving = Serving(&conn);
    let path = req.uri().path().to_string();
    let Some(r) = route(&path) else {
        return Ok(error(
            StatusCode::NOT_FOUND,
            &format!("no such endpoint: {path}"),
        ));
    };
    let get = req.method() == Method::GET || req.method() == Method::HEAD;
    let ready_resp = |ok: bool| {
        if ok {
            json(StatusCode::OK, &serde_json::json!({"ready": true}))
        } else {
            unavailable(&state, "not ready")
        }
    };
    Ok(match r {
        Route::Infer(m, v) => {
            if req.method() != Method::POST {
                return Ok(method_not_allowed("POST"));
            }
            if let Some(resp) = wrong_model(&state, m, v) {
                state.metrics.request_failed(FailureReason::InvalidInput);
                return Ok(resp);
            }
            let mut tally = Tally(&state.metrics, true);
            let resp = infer(&state, &conn, req).await;
            tally.1 = false;
            resp
        }
        _ if !get => method_not_allowed("GET"),
        Route::Live => json(StatusCode::OK, &serde_json::json!({"live": true})),
        Route::Ready => ready_resp(state.ready()),
        Route::ServerMeta => json(StatusCode::OK, &protocol::server_metadata()),
        Route::Metrics => {
            state
                .metrics
                .set_load(state.budget.used(), state.conns.len());
            respond(
                StatusCode::OK,
                state.metrics.encode().into_bytes(),
                "text/plain; version=0.0.4; charset=utf-8",
            )
        }
        Route::Ui => match state.ui.get() {
            Some(html) => respond(
                StatusCode::OK,
                html.clone().into_bytes(),
                "text/html; charset=utf-8",
            ),
            None => error(
                StatusCode::NOT_FOUND,
                "no plan view was given to this server",
            ),
        },
        Route::ModelMeta(m, v) => wrong_model(&state, m, v).unwrap_or_else(|| {
            json(
                StatusCode::OK,
                &protocol::model_metadata(&state.spec, &state.cfg.version),
            )
        }),
        Route::ModelReady(m, v) => {
            wrong_model(&state, m, v).unwrap_or_else(|| ready_resp(state.ready()))
        }
        Route::ModelConfig(m, v) => wrong_model(&state, m, v).unwrap_or_else(|| {
            json(
                StatusCode::OK,
                &triton::model_config(&state.spec, &state.cfg),
            )
        }),
        Route::Stats(which) => which
            .and_then(|(m, v)| wrong_model(&state, m, v))
            .unwrap_or_else(|| {
                let one = triton::model_stats(
                    &state.spec.name,
                    &state.cfg.version,
                    &state.metrics.stats(),
                );
                json(StatusCode::OK, &serde_json::json!({"model_stats": [one]}))
            }),
    })
}
