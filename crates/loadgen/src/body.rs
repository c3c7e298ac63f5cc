//! Request bodies, prepared before a run so that sending costs only a reference-count bump:
//! KServe v2 JSON, or Triton's binary tensor data extension (a JSON header of
//! `Inference-Header-Content-Length` bytes, then each input's raw little-endian data in input
//! order, `parameters.binary_data_size` bytes each, and scores asked back in binary), both
//! encoded by [`streamrec_protocol`] from random data drawn here; or, for gRPC, a KServe v2
//! `ModelInferRequest` with each input's little-endian data in `raw_input_contents`, in input
//! order.
//!
//! A gRPC body is encoded without the model's name and version: a run adds them from its
//! [`Target`](crate::Target) ([`grpc_message`]), as an HTTP run puts them in the request's
//! path, so the bodies of one load can go to any model of the same inputs.
//!
//! For every distinct batch size of a schedule, `variants` bodies with different random data
//! are made; request `i` of that size uses variant `i mod variants`.

use std::collections::BTreeMap;
use std::str::FromStr;

use bytes::Bytes;
use hyper::header::HeaderValue;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use streamrec_protocol::grpc::pb;
use streamrec_protocol::{offsets_name, InferRequest, InferTensor};

use crate::error::LoadError;
use crate::model::ModelInputs;
use crate::schedule::{mix, Schedule};
use crate::skew::{IndexSampler, Skew};

/// Most body variants per batch size.
pub const MAX_VARIANTS: usize = 1024;
/// Default cap on the bytes of all prepared bodies.
pub const DEFAULT_MAX_PREPARED_BYTES: u64 = 1 << 30;

/// The wire format of request bodies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFormat {
    /// KServe v2 JSON, scores back in JSON.
    Json,
    /// Triton's binary tensor data extension, scores back in binary.
    Binary,
    /// A gRPC `ModelInferRequest` with raw contents (for a `grpc://` target; not a `--format`
    /// value: the URL's scheme chooses it).
    Grpc,
}

impl FromStr for BodyFormat {
    type Err = LoadError;
    fn from_str(s: &str) -> Result<BodyFormat, LoadError> {
        match s {
            "json" => Ok(BodyFormat::Json),
            "binary" => Ok(BodyFormat::Binary),
            _ => Err(LoadError::invalid(format!(
                "--format `{s}`: expected json or binary"
            ))),
        }
    }
}

impl BodyFormat {
    /// `json`, `binary` or `grpc`.
    pub fn name(&self) -> &'static str {
        match self {
            BodyFormat::Json => "json",
            BodyFormat::Binary => "binary",
            BodyFormat::Grpc => "grpc",
        }
    }
}

/// One prepared request body.
#[derive(Clone, Debug)]
pub struct Body {
    /// The bytes sent (gRPC: the encoded `ModelInferRequest` without the model's name and
    /// version, unframed; see [`grpc_message`]).
    pub bytes: Bytes,
    /// The value of `Inference-Header-Content-Length` (binary format only).
    pub header_len: Option<HeaderValue>,
    /// Samples in the request.
    pub batch: u32,
}

/// All bodies of a run, by batch size.
#[derive(Clone, Debug)]
pub struct Bodies {
    by_size: BTreeMap<u32, Vec<Body>>,
    /// The wire format.
    pub format: BodyFormat,
    /// How indices were drawn.
    pub skew: Skew,
}

/// What to prepare.
#[derive(Clone, Debug)]
pub struct BodyConfig {
    /// Wire format.
    pub format: BodyFormat,
    /// Index distribution.
    pub skew: Skew,
    /// Bodies per batch size.
    pub variants: usize,
    /// Seed of the random data.
    pub seed: u64,
    /// Cap on the bytes of all bodies.
    pub max_bytes: u64,
}

impl Default for BodyConfig {
    fn default() -> Self {
        BodyConfig {
            format: BodyFormat::Binary,
            skew: Skew::Uniform,
            variants: 8,
            seed: 0,
            max_bytes: DEFAULT_MAX_PREPARED_BYTES,
        }
    }
}

impl Bodies {
    /// Prepares bodies for every batch size that occurs in `schedule`.
    pub fn for_schedule(
        inputs: &ModelInputs,
        schedule: &Schedule,
        cfg: &BodyConfig,
    ) -> Result<Bodies, LoadError> {
        let mut sizes: Vec<u32> = schedule.arrivals.iter().map(|a| a.batch).collect();
        sizes.sort_unstable();
        sizes.dedup();
        Bodies::prepare(inputs, &sizes, cfg)
    }

    /// Prepares `cfg.variants` bodies of each batch size in `sizes`.
    pub fn prepare(
        inputs: &ModelInputs,
        sizes: &[u32],
        cfg: &BodyConfig,
    ) -> Result<Bodies, LoadError> {
        if cfg.variants == 0 || cfg.variants > MAX_VARIANTS {
            return Err(LoadError::invalid(format!(
                "--variants: must be in 1..={MAX_VARIANTS}, not {}",
                cfg.variants
            )));
        }
        // Bound the memory before allocating anything (JSON takes at most ~4x the raw bytes).
        let per_byte = match cfg.format {
            BodyFormat::Binary | BodyFormat::Grpc => 1,
            BodyFormat::Json => 4,
        };
        let mut total: u64 = 0;
        for &b in sizes {
            let raw = inputs
                .raw_bytes(u64::from(b))
                .and_then(|r| r.checked_mul(per_byte))
                .and_then(|r| r.checked_mul(cfg.variants as u64))
                .unwrap_or(u64::MAX);
            total = total.saturating_add(raw);
        }
        if total > cfg.max_bytes {
            return Err(LoadError::invalid(format!(
                "the prepared bodies would take about {total} bytes, more than the limit of {} \
                 (fewer --variants, smaller batches, or the binary format)",
                cfg.max_bytes
            )));
        }
        let samplers: Vec<IndexSampler> = inputs
            .features
            .iter()
            .map(|f| IndexSampler::new(cfg.skew, f.rows))
            .collect();
        let mut by_size = BTreeMap::new();
        for &b in sizes {
            let list = (0..cfg.variants)
                .map(|v| {
                    let mut rng =
                        StdRng::seed_from_u64(mix(cfg.seed ^ mix((u64::from(b) << 20) | v as u64)));
                    make(inputs, &samplers, b, cfg.format, &mut rng)
                })
                .collect();
            by_size.insert(b, list);
        }
        Ok(Bodies {
            by_size,
            format: cfg.format,
            skew: cfg.skew,
        })
    }

    /// The body of the `i`-th request of `batch` samples.
    pub fn pick(&self, batch: u32, i: usize) -> Option<&Body> {
        let v = self.by_size.get(&batch)?;
        v.get(i % v.len())
    }

    /// The same bodies, each turned into what goes on the wire by `f` (the run's gRPC
    /// messages, made once before the start).
    pub(crate) fn map_bytes(&self, f: impl Fn(&Bytes) -> Bytes) -> Bodies {
        Bodies {
            by_size: self
                .by_size
                .iter()
                .map(|(&b, list)| {
                    let list = list
                        .iter()
                        .map(|body| Body {
                            bytes: f(&body.bytes),
                            ..body.clone()
                        })
                        .collect();
                    (b, list)
                })
                .collect(),
            format: self.format,
            skew: self.skew,
        }
    }

    /// Total bytes of all bodies.
    pub fn bytes(&self) -> u64 {
        self.by_size
            .values()
            .flatten()
            .map(|b| b.bytes.len() as u64)
            .sum()
    }
}

/// One random request: dense in [-1, 1), each feature `pooling` indices per sample.
fn make(
    inputs: &ModelInputs,
    samplers: &[IndexSampler],
    batch: u32,
    format: BodyFormat,
    rng: &mut StdRng,
) -> Body {
    let b = batch as usize;
    let dense: Vec<f32> = (0..b * inputs.dense)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    let mut tensors = Vec::with_capacity(1 + 2 * inputs.features.len());
    tensors.push(InferTensor::dense(b, inputs.dense, dense));
    for (f, s) in inputs.features.iter().zip(samplers) {
        let k = f.pooling as usize;
        let idx = (0..b * k).map(|_| s.sample(rng)).collect();
        let off = (0..b).map(|i| (i * k) as i64).collect();
        tensors.push(InferTensor::ints(&f.name, "INT64", idx));
        tensors.push(InferTensor::ints(offsets_name(&f.name), "INT64", off));
    }
    let req = InferRequest {
        id: None,
        inputs: tensors,
    };
    match format {
        BodyFormat::Json => Body {
            bytes: Bytes::from(req.to_json()),
            header_len: None,
            batch,
        },
        BodyFormat::Binary => {
            let enc = req.to_binary();
            Body {
                bytes: Bytes::from(enc.body),
                header_len: enc.header_len.map(HeaderValue::from),
                batch,
            }
        }
        BodyFormat::Grpc => Body {
            bytes: Bytes::from(prost::Message::encode_to_vec(&grpc_request(&req))),
            header_len: None,
            batch,
        },
    }
}

/// `req` as a `ModelInferRequest` without model name or version: every input's shape and
/// datatype, and its values little-endian in `raw_input_contents` (FP32 as `f32`, INT64 as
/// `i64`, INT32 as `i32`), in input order.
fn grpc_request(req: &InferRequest) -> pb::ModelInferRequest {
    let mut inputs = Vec::with_capacity(req.inputs.len());
    let mut raw = Vec::with_capacity(req.inputs.len());
    for t in &req.inputs {
        let bytes: Vec<u8> = match (t.datatype.as_str(), t.data.as_i64()) {
            ("INT64", Some(v)) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ("INT32", Some(v)) => v.iter().flat_map(|&x| (x as i32).to_le_bytes()).collect(),
            _ => t
                .data
                .to_f32()
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
        };
        inputs.push(pb::model_infer_request::InferInputTensor {
            name: t.name.clone(),
            datatype: t.datatype.clone(),
            shape: t.shape.clone(),
            ..Default::default()
        });
        raw.push(bytes);
    }
    pb::ModelInferRequest {
        id: req.id.clone().unwrap_or_default(),
        inputs,
        raw_input_contents: raw,
        ..Default::default()
    }
}

/// The framed gRPC message of a gRPC body for `model` (and `version`): the 5-byte prefix, the
/// encoded name and version, then the body. Protocol buffers merge concatenated encodings, so
/// this is the `ModelInferRequest` of the body with its name and version set.
pub fn grpc_message(model: &str, version: Option<&str>, body: &[u8]) -> Bytes {
    let head = pb::ModelInferRequest {
        model_name: model.to_string(),
        model_version: version.unwrap_or_default().to_string(),
        ..Default::default()
    };
    let len = prost::Message::encoded_len(&head) + body.len();
    let mut b = bytes::BytesMut::with_capacity(5 + len);
    b.extend_from_slice(&[0]);
    b.extend_from_slice(&(len as u32).to_be_bytes());
    prost::Message::encode(&head, &mut b).expect("the buffer has the message's length");
    b.extend_from_slice(body);
    b.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::FeatureInput;

    fn tiny() -> ModelInputs {
        ModelInputs {
            dense: 3,
            features: vec![
                FeatureInput {
                    name: "C1".into(),
                    rows: 10,
                    pooling: 2,
                },
                FeatureInput {
                    name: "C2".into(),
                    rows: 5,
                    pooling: 1,
                },
            ],
        }
    }

    #[test]
    fn json_body_is_kserve_v2() {
        let cfg = BodyConfig {
            format: BodyFormat::Json,
            ..BodyConfig::default()
        };
        let b = Bodies::prepare(&tiny(), &[4], &cfg).unwrap();
        let body = b.pick(4, 3).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body.bytes).unwrap();
        let inputs = v["inputs"].as_array().unwrap();
        assert_eq!(inputs.len(), 5);
        assert_eq!(inputs[0]["shape"], serde_json::json!([4, 3]));
        assert_eq!(inputs[1]["shape"], serde_json::json!([8]));
        assert_eq!(inputs[2]["data"], serde_json::json!([0, 2, 4, 6]));
        assert!(inputs[3]["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| (0..5).contains(&x.as_i64().unwrap())));
    }

    /// The JSON header's length of a binary body.
    fn head_len(body: &Body) -> usize {
        let h = body.header_len.as_ref().unwrap();
        h.to_str().unwrap().parse().unwrap()
    }

    #[test]
    fn binary_body_frames() {
        let b = Bodies::prepare(&tiny(), &[2], &BodyConfig::default()).unwrap();
        let body = b.pick(2, 0).unwrap();
        let n = head_len(body);
        let head: serde_json::Value = serde_json::from_slice(&body.bytes[..n]).unwrap();
        let sizes: u64 = head["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["parameters"]["binary_data_size"].as_u64().unwrap())
            .sum();
        assert_eq!(sizes as usize, body.bytes.len() - n);
        assert_eq!(tiny().raw_bytes(2).unwrap(), (body.bytes.len() - n) as u64);
    }

    #[test]
    fn grpc_body_is_a_model_infer_request_with_raw_contents() {
        let cfg = BodyConfig {
            format: BodyFormat::Grpc,
            ..BodyConfig::default()
        };
        let b = Bodies::prepare(&tiny(), &[2], &cfg).unwrap();
        let body = b.pick(2, 1).unwrap();
        let framed = grpc_message("tiny", Some("3"), &body.bytes);
        assert_eq!(framed[0], 0);
        let len = u32::from_be_bytes([framed[1], framed[2], framed[3], framed[4]]) as usize;
        assert_eq!(len, framed.len() - 5);
        let req: pb::ModelInferRequest = prost::Message::decode(&framed[5..]).unwrap();
        assert_eq!(
            (req.model_name.as_str(), req.model_version.as_str()),
            ("tiny", "3")
        );
        let names: Vec<&str> = req.inputs.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["dense", "C1", "C1_offsets", "C2", "C2_offsets"]);
        assert_eq!(req.inputs[0].shape, [2, 3]);
        assert_eq!(req.inputs[1].shape, [4]);
        assert_eq!(req.raw_input_contents.len(), 5);
        assert_eq!(req.raw_input_contents[0].len(), 2 * 3 * 4);
        let le = |b: &[u8]| -> Vec<i64> {
            b.chunks(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect()
        };
        assert_eq!(le(&req.raw_input_contents[2]), [0, 2]);
        assert!(le(&req.raw_input_contents[3])
            .iter()
            .all(|x| (0..5).contains(x)));
        // The same tensors as the binary body of the same seed, byte for byte.
        let bin = Bodies::prepare(&tiny(), &[2], &BodyConfig::default()).unwrap();
        let bin = bin.pick(2, 1).unwrap();
        let n = head_len(bin);
        assert_eq!(req.raw_input_contents.concat(), &bin.bytes[n..]);
    }

    #[test]
    fn memory_is_bounded() {
        let cfg = BodyConfig {
            max_bytes: 1000,
            ..BodyConfig::default()
        };
        let e = Bodies::prepare(&tiny(), &[1024], &cfg).unwrap_err();
        assert!(e.to_string().contains("limit"), "{e}");
    }
}
