//! Request bodies, prepared before a run so that sending costs only a reference-count bump:
//! KServe v2 JSON, or Triton's binary tensor data extension (a JSON header of
//! `Inference-Header-Content-Length` bytes, then each input's raw little-endian data in input
//! order, `parameters.binary_data_size` bytes each, and scores asked back in binary), both
//! encoded by [`streamrec_protocol`] from random data drawn here.
//!
//! For every distinct batch size of a schedule, `variants` bodies with different random data
//! are made; request `i` of that size uses variant `i mod variants`.

use std::collections::BTreeMap;
use std::str::FromStr;

use bytes::Bytes;
use hyper::header::HeaderValue;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
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
    /// `json` or `binary`.
    pub fn name(&self) -> &'static str {
        match self {
            BodyFormat::Json => "json",
            BodyFormat::Binary => "binary",
        }
    }
}

/// One prepared request body.
#[derive(Clone, Debug)]
pub struct Body {
    /// The bytes sent.
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
            BodyFormat::Binary => 1,
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
    }
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

    #[test]
    fn binary_body_frames() {
        let b = Bodies::prepare(&tiny(), &[2], &BodyConfig::default()).unwrap();
        let body = b.pick(2, 0).unwrap();
        let n: usize = body
            .header_len
            .as_ref()
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
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
    fn memory_is_bounded() {
        let cfg = BodyConfig {
            max_bytes: 1000,
            ..BodyConfig::default()
        };
        let e = Bodies::prepare(&tiny(), &[1024], &cfg).unwrap_err();
        assert!(e.to_string().contains("limit"), "{e}");
    }
}
