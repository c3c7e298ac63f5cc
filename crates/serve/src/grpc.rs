//! The KServe v2 gRPC front end (`inference.GRPCInferenceService`, as Triton serves it, so
//! tritonclient's gRPC clients work): health, server and model metadata, Triton's model
//! configuration and statistics, and `ModelInfer` with `raw_input_contents` (little-endian, like
//! Triton's binary tensor data extension) or typed contents, answered in
//! `raw_output_contents`. Messages may be gzip- or deflate-compressed both ways (the body limit
//! applies to the decompressed request).
//!
//! It shares everything with the HTTP front end: one state (readiness, the batcher, the
//! memory budget, the in-flight limit, the metrics). An infer request is turned into the
//! protocol crate's binary request and decoded and validated by the same code as an HTTP one,
//! so its errors (which name the tensor) are the same; they come back as `INVALID_ARGUMENT`,
//! overload and "not ready" as `UNAVAILABLE`, an unknown model or version as `NOT_FOUND`, and a
//! failed request counts under the same failure reasons.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;
use streamrec_graph::ModelSpec;
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status};

use crate::batcher::Refused;
use crate::budget::BINARY_COST;
use crate::grpc_conn::CallGuard;
use crate::infer::{InFlight, Tally};
use crate::metrics::FailureReason;
use crate::protocol;
use crate::state::State;

pub use streamrec_protocol::grpc::pb;

use pb::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};

/// The service, over the state the HTTP front end shares.
pub(crate) struct Service {
    state: Arc<State>,
}

/// The tonic service for `state`, taking messages up to the HTTP body limit.
pub(crate) fn service(state: Arc<State>) -> GrpcInferenceServiceServer<Service> {
    let max = state.cfg.max_body_bytes;
    // Compressed requests as Triton's gRPC endpoint takes them (tritonclient's
    // `compression_algorithm`), the body limit applying to the decompressed message (tonic
    // stops decompressing past it: RESOURCE_EXHAUSTED); answers compressed the same way when
    // the client accepts it.
    GrpcInferenceServiceServer::new(Service { state })
        .max_decoding_message_size(max.saturating_add(64 << 10))
        .max_encoding_message_size(usize::MAX)
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Deflate)
        .send_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Deflate)
}

impl Service {
    /// `NOT_FOUND` unless the name and version are the served model's (an empty version is any).
    fn check_model(&self, name: &str, version: &str) -> Result<(), Status> {
        let st = &self.state;
        if name != st.spec.name {
            return Err(Status::not_found(format!(
                "unknown model `{name}` (this server serves `{}`)",
                st.spec.name
            )));
        }
        if !version.is_empty() && version != st.cfg.version {
            return Err(Status::not_found(format!(
                "model `{name}` has no version `{version}` (versions: {})",
                st.cfg.version
            )));
        }
        Ok(())
    }

    fn metadata(&self) -> Value {
        protocol::model_metadata(&self.state.spec, &self.state.cfg.version)
    }
}

fn str_of(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

fn shape_of(v: &Value) -> Vec<i64> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_i64).collect())
        .unwrap_or_default()
}

fn data_type(datatype: &str) -> pb::DataType {
    match datatype {
        "FP32" => pb::DataType::TypeFp32,
        "INT64" => pb::DataType::TypeInt64,
        "INT32" => pb::DataType::TypeInt32,
        _ => pb::DataType::TypeInvalid,
    }
}

fn duration(count: u64, ns: u64) -> Option<pb::StatisticDuration> {
    Some(pb::StatisticDuration { count, ns })
}

#[tonic::async_trait]
impl GrpcInferenceService for Service {
    async fn server_live(
        &self,
        req: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        let _call = CallGuard::start(&req);
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        req: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        let _call = CallGuard::start(&req);
        Ok(Response::new(pb::ServerReadyResponse {
            ready: self.state.ready(),
        }))
    }

    async fn model_ready(
        &self,
        req: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let _call = CallGuard::start(&req);
        let r = req.into_inner();
        self.check_model(&r.name, &r.version)?;
        Ok(Response::new(pb::ModelReadyResponse {
            ready: self.state.ready(),
        }))
    }

    async fn server_metadata(
        &self,
        req: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        let _call = CallGuard::start(&req);
        let m = protocol::server_metadata();
        Ok(Response::new(pb::ServerMetadataResponse {
            name: str_of(&m["name"]),
            version: str_of(&m["version"]),
            extensions: m["extensions"]
                .as_array()
                .map(|a| a.iter().map(str_of).collect())
                .unwrap_or_default(),
        }))
    }

    async fn model_metadata(
        &self,
        req: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let _call = CallGuard::start(&req);
        let r = req.into_inner();
        self.check_model(&r.name, &r.version)?;
        let m = self.metadata();
        let tensors = |key: &str| {
            m[key]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|t| pb::model_metadata_response::TensorMetadata {
                            name: str_of(&t["name"]),
                            datatype: str_of(&t["datatype"]),
                            shape: shape_of(&t["shape"]),
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        Ok(Response::new(pb::ModelMetadataResponse {
            name: str_of(&m["name"]),
            versions: vec![self.state.cfg.version.clone()],
            platform: str_of(&m["platform"]),
            inputs: tensors("inputs"),
            outputs: tensors("outputs"),
        }))
    }

    async fn model_config(
        &self,
        req: Request<pb::ModelConfigRequest>,
    ) -> Result<Response<pb::ModelConfigResponse>, Status> {
        let _call = CallGuard::start(&req);
        let r = req.into_inner();
        self.check_model(&r.name, &r.version)?;
        let (spec, cfg) = (&self.state.spec, &self.state.cfg);
        let m = self.metadata();
        let list = |key: &str| m[key].as_array().cloned().unwrap_or_default();
        let config = pb::ModelConfig {
            name: spec.name.clone(),
            platform: str_of(&m["platform"]),
            backend: "streamrec".into(),
            // Ragged inputs have no per-sample batch dimension (see crate::triton).
            max_batch_size: 0,
            input: list("inputs")
                .iter()
                .map(|t| pb::ModelInput {
                    name: str_of(&t["name"]),
                    data_type: data_type(t["datatype"].as_str().unwrap_or_default()) as i32,
                    format: pb::model_input::Format::None as i32,
                    dims: shape_of(&t["shape"]),
                })
                .collect(),
            output: list("outputs")
                .iter()
                .map(|t| pb::ModelOutput {
                    name: str_of(&t["name"]),
                    data_type: data_type(t["datatype"].as_str().unwrap_or_default()) as i32,
                    dims: shape_of(&t["shape"]),
                })
                .collect(),
            instance_group: vec![pb::ModelInstanceGroup {
                name: spec.name.clone(),
                count: cfg.contexts.min(i32::MAX as usize) as i32,
                kind: pb::model_instance_group::Kind::Model as i32,
            }],
            dynamic_batching: Some(pb::ModelDynamicBatching {
                max_queue_delay_microseconds: cfg.max_queue_delay_us,
                preserve_ordering: false,
                default_queue_policy: Some(pb::ModelQueuePolicy {
                    max_queue_size: cfg.queue_capacity.min(u32::MAX as usize) as u32,
                }),
            }),
            parameters: HashMap::from([(
                "max_batch_samples".to_string(),
                pb::ModelParameter {
                    string_value: cfg.max_batch.to_string(),
                },
            )]),
        };
        Ok(Response::new(pb::ModelConfigResponse {
            config: Some(config),
        }))
    }

    async fn model_statistics(
        &self,
        req: Request<pb::ModelStatisticsRequest>,
    ) -> Result<Response<pb::ModelStatisticsResponse>, Status> {
        let _call = CallGuard::start(&req);
        let r = req.into_inner();
        if !r.name.is_empty() {
            self.check_model(&r.name, &r.version)?;
        }
        let s = self.state.metrics.stats();
        let stats = pb::ModelStatistics {
            name: self.state.spec.name.clone(),
            version: self.state.cfg.version.clone(),
            last_inference: s.last_inference_ms,
            inference_count: s.inference_count,
            execution_count: s.execution_count,
            inference_stats: Some(pb::InferStatistics {
                success: duration(s.success, s.request_ns),
                fail: duration(s.fail, 0),
                queue: duration(s.success, s.queue_ns),
                compute_input: duration(s.success, 0),
                compute_infer: duration(s.success, s.compute_ns),
                compute_output: duration(s.success, 0),
                cache_hit: duration(0, 0),
                cache_miss: duration(0, 0),
            }),
            batch_stats: s
                .by_batch
                .iter()
                .map(|&(size, n, ns)| pb::InferBatchStatistics {
                    batch_size: size as u64,
                    compute_input: duration(n, 0),
                    compute_infer: duration(n, ns),
                    compute_output: duration(n, 0),
                })
                .collect(),
        };
        Ok(Response::new(pb::ModelStatisticsResponse {
            model_stats: vec![stats],
        }))
    }

    async fn model_infer(
        &self,
        req: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let _call = CallGuard::start(&req);
        let state = &*self.state;
        // Counted as cancelled if tonic drops this future (the client went away).
        let mut tally = Tally(&state.metrics, true);
        let out = infer(state, req.into_inner()).await;
        tally.1 = false;
        match out {
            Ok(r) => Ok(Response::new(r)),
            Err((reason, status)) => {
                state.metrics.request_failed(reason);
                Err(status)
            }
        }
    }
}

type Failed = (FailureReason, Status);

fn invalid(msg: impl Into<String>) -> Failed {
    (FailureReason::InvalidInput, Status::invalid_argument(msg))
}

fn unavailable(msg: &str) -> Failed {
    (FailureReason::Rejected, Status::unavailable(msg))
}

async fn infer(
    state: &State,
    req: pb::ModelInferRequest,
) -> Result<pb::ModelInferResponse, Failed> {
    let arrived = Instant::now();
    if !state.ready() {
        return Err(unavailable("not ready"));
    }
    if req.model_name != state.spec.name
        || !(req.model_version.is_empty() || req.model_version == state.cfg.version)
    {
        let msg = if req.model_name != state.spec.name {
            format!(
                "unknown model `{}` (this server serves `{}`)",
                req.model_name, state.spec.name
            )
        } else {
            format!(
                "model `{}` has no version `{}` (versions: {})",
                req.model_name, req.model_version, state.cfg.version
            )
        };
        return Err((FailureReason::InvalidInput, Status::not_found(msg)));
    }
    // The request as received and its decoding, charged to the budget HTTP bodies share.
    let size = prost::Message::encoded_len(&req);
    let mut charge = state.budget.charge();
    if !charge.grow_to(size.saturating_mul(1 + BINARY_COST)) {
        return Err(unavailable(
            "overloaded: the server holds as many request bytes as its memory budget allows",
        ));
    }
    if state.inflight.fetch_add(1, Ordering::SeqCst) >= state.cfg.max_inflight {
        state.inflight.fetch_sub(1, Ordering::SeqCst);
        return Err(unavailable("overloaded: too many requests in flight"));
    }
    state.metrics.inflight_add(1);
    let _guard = InFlight(state);
    let parse = |req, spec: &ModelSpec| {
        protocol::validate(streamrec_protocol::grpc::decode_infer(req)?, spec)
    };
    let parsed = if size <= crate::infer::INLINE_PARSE_BYTES {
        parse(req, &state.spec)
    } else {
        let spec = state.spec.clone();
        tokio::task::spawn_blocking(move || parse(req, &spec))
            .await
            .map_err(|e| {
                (
                    FailureReason::Backend,
                    Status::internal(format!("request parsing failed: {e}")),
                )
            })?
    };
    let parsed = parsed.map_err(|e| invalid(e.to_string()))?;
    let samples = parsed.batch.size;
    let rx = match state.batcher.submit(parsed.batch) {
        Ok(rx) => rx,
        Err(Refused::Full) => return Err(unavailable("overloaded: the request queue is full")),
        Err(Refused::Closed) => return Err(unavailable("not ready")),
        Err(Refused::TooLarge { size, max }) => {
            return Err(invalid(format!(
                "dense: batch of {size} samples is more than max_batch ({max})"
            )))
        }
    };
    let backend = |msg: String| (FailureReason::Backend, Status::internal(msg));
    let done = match rx.await {
        Ok(Ok(d)) => d,
        Ok(Err(msg)) => return Err(backend(format!("inference failed: {msg}"))),
        Err(_) => return Err(backend("inference was dropped".into())),
    };
    if let Some(i) = done.scores.iter().position(|s| !s.is_finite()) {
        return Err(backend(format!(
            "inference failed: the score of sample {i} is {} (not a finite number)",
            done.scores[i]
        )));
    }
    let raw: Vec<u8> = done.scores.iter().flat_map(|s| s.to_le_bytes()).collect();
    state.metrics.request_ok(
        samples,
        arrived.elapsed().as_micros() as u64,
        done.queue.as_micros() as u64,
        done.compute.as_micros() as u64,
    );
    Ok(pb::ModelInferResponse {
        model_name: state.spec.name.clone(),
        model_version: state.cfg.version.clone(),
        id: parsed.id.unwrap_or_default(),
        parameters: HashMap::new(),
        outputs: vec![pb::model_infer_response::InferOutputTensor {
            name: protocol::OUTPUT.into(),
            datatype: "FP32".into(),
            shape: vec![done.scores.len() as i64, 1],
            parameters: HashMap::new(),
            contents: None,
        }],
        raw_output_contents: vec![raw],
    })
}
