//! Triton's model configuration and statistics extensions, which tritonclient's
//! `get_model_config` and `get_inference_statistics`, perf_analyzer and dashboards read: the
//! served model described in Triton's configuration schema, and its request counts and
//! cumulative durations in Triton's statistics shape.
//!
//! The model takes ragged inputs (per feature a flat index list and per-sample offsets), which
//! have no per-sample batch dimension, so the configuration says `max_batch_size: 0` and gives
//! every input's full shape with -1 for variable dimensions; the server's own dynamic batching
//! (up to `max_batch` samples per execution) is in `dynamic_batching` and `parameters`.

use serde_json::{json, Value};
use streamrec_graph::ModelSpec;

use crate::config::ServeConfig;
use crate::metrics::ModelStats;
use crate::protocol;

/// `GET /v2/models/{m}[/versions/{v}]/config`.
pub fn model_config(spec: &ModelSpec, cfg: &ServeConfig) -> Value {
    let meta = protocol::model_metadata(spec, &cfg.version);
    let tensor = |t: &Value| {
        json!({
            "name": t["name"],
            "data_type": format!("TYPE_{}", t["datatype"].as_str().unwrap_or("FP32")),
            "format": "FORMAT_NONE",
            "dims": t["shape"],
        })
    };
    let list = |key: &str| -> Vec<Value> {
        meta[key]
            .as_array()
            .map(|a| a.iter().map(tensor).collect())
            .unwrap_or_default()
    };
    json!({
        "name": spec.name,
        "platform": meta["platform"],
        "backend": "streamrec",
        "version_policy": {"specific": {"versions": [cfg.version]}},
        "max_batch_size": 0,
        "input": list("inputs"),
        "output": list("outputs"),
        "dynamic_batching": {
            "max_queue_delay_microseconds": cfg.max_queue_delay_us,
            "preserve_ordering": false,
            "default_queue_policy": {"max_queue_size": cfg.queue_capacity},
        },
        "instance_group": [{"name": spec.name, "kind": "KIND_MODEL", "count": cfg.contexts}],
        "parameters": {
            "max_batch_samples": {"string_value": cfg.max_batch.to_string()},
        },
    })
}

fn duration(count: u64, ns: u64) -> Value {
    json!({"count": count, "ns": ns})
}

/// One model's entry of `GET /v2/models[/{m}[/versions/{v}]]/stats`.
pub fn model_stats(name: &str, version: &str, s: &ModelStats) -> Value {
    let zero = duration(0, 0);
    json!({
        "name": name,
        "version": version,
        "last_inference": s.last_inference_ms,
        "inference_count": s.inference_count,
        "execution_count": s.execution_count,
        "inference_stats": {
            "success": duration(s.success, s.request_ns),
            "fail": duration(s.fail, 0),
            "queue": duration(s.success, s.queue_ns),
            "compute_input": duration(s.success, 0),
            "compute_infer": duration(s.success, s.compute_ns),
            "compute_output": duration(s.success, 0),
            "cache_hit": zero,
            "cache_miss": zero,
        },
        "batch_stats": s.by_batch.iter().map(|&(size, n, ns)| json!({
            "batch_size": size,
            "compute_input": duration(n, 0),
            "compute_infer": duration(n, ns),
            "compute_output": duration(n, 0),
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_follow_the_counts() {
        let s = ModelStats {
            success: 3,
            fail: 1,
            inference_count: 7,
            execution_count: 2,
            request_ns: 9000,
            queue_ns: 4000,
            compute_ns: 3000,
            last_inference_ms: 17,
            by_batch: vec![(1, 1, 1000), (6, 1, 2000)],
        };
        let v = model_stats("m", "1", &s);
        assert_eq!(
            v["inference_stats"]["success"],
            json!({"count": 3, "ns": 9000})
        );
        assert_eq!(v["inference_stats"]["fail"]["count"], 1);
        assert_eq!(v["inference_stats"]["queue"]["ns"], 4000);
        assert_eq!(v["inference_stats"]["compute_infer"]["ns"], 3000);
        assert_eq!(v["inference_count"], 7);
        assert_eq!(v["execution_count"], 2);
        assert_eq!(v["batch_stats"][1]["batch_size"], 6);
        assert_eq!(v["batch_stats"][1]["compute_infer"]["ns"], 2000);
    }
}
