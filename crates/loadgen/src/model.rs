//! What a request must contain: the model's inputs (dense width; per sparse feature its name,
//! table rows and indices per sample).
//!
//! The server's model metadata (`GET /v2/models/{m}`) gives the names, datatypes and shapes but
//! not the number of rows of each table, so the load generator takes them from one of:
//! - the model spec (`--spec workloads/x.toml [--row-cap N]`), read and validated by
//!   [`streamrec_graph::ModelSpec`] as the server reads it (the spec crate, not the engine);
//! - the metadata itself, when an input carries `parameters: {"rows": R, "pooling": P}`;
//! - `--rows R [--pooling P]`: the same for every feature (any R up to the smallest table is
//!   valid).
//!
//! Either way the names and the dense width are checked against the metadata when there is one.

use std::path::Path;

use serde_json::Value;
use streamrec_graph::limits::{MAX_FEATURES, MAX_POOLING, MAX_ROWS, MAX_WIDTH};
use streamrec_graph::{GraphError, ModelSpec};

use crate::error::LoadError;

/// One sparse feature of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeatureInput {
    /// Input name (its offsets are `<name>_offsets`).
    pub name: String,
    /// Rows of its table: indices are drawn from `0..rows`.
    pub rows: u64,
    /// Indices per sample.
    pub pooling: u32,
}

/// The inputs of a model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelInputs {
    /// Width of the `dense` input.
    pub dense: usize,
    /// Sparse features, in input order.
    pub features: Vec<FeatureInput>,
}

impl From<&ModelSpec> for ModelInputs {
    fn from(spec: &ModelSpec) -> Self {
        ModelInputs::from_spec(spec)
    }
}

impl ModelInputs {
    /// Reads the inputs from a model spec file; `row_cap` overrides the spec's own cap (as
    /// `streamrec serve --row-cap` does). The spec is validated as the server validates it.
    pub fn from_spec_file(path: &Path, row_cap: Option<u64>) -> Result<ModelInputs, LoadError> {
        let cap = row_cap.map(|c| usize::try_from(c).unwrap_or(usize::MAX));
        let spec = ModelSpec::load(path, cap).map_err(|e| match e {
            GraphError::Io { source, .. } => LoadError::io(path, source),
            e => LoadError::format(path, e.to_string()),
        })?;
        Ok(ModelInputs::from_spec(&spec))
    }

    /// The inputs of a validated spec: its dense width, and per feature its name, (capped)
    /// rows and pooling.
    pub fn from_spec(spec: &ModelSpec) -> ModelInputs {
        ModelInputs {
            dense: spec.dense,
            features: spec
                .features
                .iter()
                .map(|f| FeatureInput {
                    name: f.name.clone(),
                    // Bounded by the spec's limits (MAX_ROWS, MAX_POOLING).
                    rows: f.rows as u64,
                    pooling: f.pooling as u32,
                })
                .collect(),
        }
    }

    /// Builds the inputs from model metadata (`GET /v2/models/{m}`): every INT64/INT32 input
    /// not ending in `_offsets` is a feature; its rows and pooling come from the input's
    /// `parameters` (`rows`, `pooling`) when present, else from `rows` and `pooling`.
    pub fn from_metadata(
        meta: &Value,
        rows: Option<u64>,
        pooling: Option<u32>,
    ) -> Result<ModelInputs, LoadError> {
        let inputs = meta["inputs"]
            .as_array()
            .ok_or_else(|| LoadError::Http("model metadata has no `inputs` list".into()))?;
        let mut dense = None;
        let mut features = Vec::new();
        for t in inputs {
            let name = t["name"]
                .as_str()
                .ok_or_else(|| LoadError::Http("model metadata: an input has no name".into()))?;
            if name == "dense" {
                let w = t["shape"]
                    .as_array()
                    .and_then(|s| s.get(1))
                    .and_then(Value::as_u64)
                    .filter(|&w| w > 0 && w <= MAX_WIDTH as u64)
                    .ok_or_else(|| {
                        LoadError::Http(format!(
                            "model metadata: `dense` has shape {} (expected [-1, W])",
                            t["shape"]
                        ))
                    })?;
                dense = Some(w as usize);
            } else if !name.ends_with("_offsets") {
                let p = &t["parameters"];
                let r = p["rows"].as_u64().or(rows).ok_or_else(|| {
                    LoadError::invalid(format!(
                        "the server does not say how many rows table `{name}` has: give --spec \
                         FILE (with --row-cap as the server has it) or --rows N"
                    ))
                })?;
                let k = p["pooling"]
                    .as_u64()
                    .map(|k| k as u32)
                    .or(pooling)
                    .unwrap_or(1);
                if r == 0 || r > MAX_ROWS as u64 || k == 0 || k as usize > MAX_POOLING {
                    return Err(LoadError::invalid(format!(
                        "{name}: rows {r} or pooling {k} out of range (rows 1..={MAX_ROWS}, pooling 1..={MAX_POOLING})"
                    )));
                }
                features.push(FeatureInput {
                    name: name.to_string(),
                    rows: r,
                    pooling: k,
                });
            }
        }
        let dense =
            dense.ok_or_else(|| LoadError::Http("model metadata has no `dense` input".into()))?;
        if features.len() > MAX_FEATURES {
            return Err(LoadError::Http(format!(
                "model metadata lists {} features, more than the limit of {MAX_FEATURES}",
                features.len()
            )));
        }
        Ok(ModelInputs { dense, features })
    }

    /// Checks these inputs against the server's model metadata: the same dense width and the
    /// same feature names in the same order.
    pub fn check_metadata(&self, meta: &Value) -> Result<(), LoadError> {
        let theirs = ModelInputs::from_metadata(meta, Some(1), Some(1))?;
        if theirs.dense != self.dense {
            return Err(LoadError::invalid(format!(
                "the spec has {} dense inputs but the server's model has {}",
                self.dense, theirs.dense
            )));
        }
        let a: Vec<&str> = self.features.iter().map(|f| f.name.as_str()).collect();
        let b: Vec<&str> = theirs.features.iter().map(|f| f.name.as_str()).collect();
        if a != b {
            return Err(LoadError::invalid(format!(
                "the spec's features ({}) are not the server's ({})",
                a.join(","),
                b.join(",")
            )));
        }
        Ok(())
    }

    /// Bytes of the raw tensor data of one request of `batch` samples (binary format).
    pub fn raw_bytes(&self, batch: u64) -> Option<u64> {
        let mut n = batch.checked_mul(self.dense as u64)?.checked_mul(4)?;
        for f in &self.features {
            let idx = batch.checked_mul(u64::from(f.pooling))?;
            n = n.checked_add(idx.checked_add(batch)?.checked_mul(8)?)?;
        }
        Some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A complete spec around a `[sparse]` table.
    fn spec(sparse: &str, row_cap: Option<usize>) -> Result<ModelSpec, GraphError> {
        let text = format!(
            "name = \"t\"\ndense = 13\n[bottom]\nlayers = [4]\n{sparse}\n[top]\nlayers = [1]\n[interaction]\nkind = \"cat\"\n"
        );
        ModelSpec::parse(&text, "t", row_cap)
    }

    #[test]
    fn compact_and_listed_specs() {
        let s = spec(
            "[sparse]\ncount = 3\nrows = [100, 37, 250]\ndim = 4\npooling = [1, 2, 3]",
            Some(50),
        )
        .unwrap();
        let m = ModelInputs::from_spec(&s);
        assert_eq!(m.dense, 13);
        let rows: Vec<u64> = m.features.iter().map(|f| f.rows).collect();
        assert_eq!(rows, vec![50, 37, 50]);
        assert_eq!(m.features[2].name, "C3");
        assert_eq!(m.features[2].pooling, 3);
        let l = ModelInputs::from(
            &spec("[[sparse.features]]\nname = \"a\"\nrows = 9\ndim = 4", None).unwrap(),
        );
        assert_eq!(l.features[0].pooling, 1);
        assert!(spec("[sparse]\ncount=2\nrows=[1]\ndim = 4", None)
            .unwrap_err()
            .to_string()
            .contains("sparse.rows"));
    }

    #[test]
    fn a_bad_spec_file_names_the_file_and_the_field() {
        let dir = std::env::temp_dir().join(format!("loadgen-model-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("bad.toml");
        std::fs::write(&p, "dense = 0\n[bottom]\nlayers = [4]\n[sparse]\ncount = 1\nrows = 1\ndim = 4\n[top]\nlayers = [1]\n[interaction]\nkind = \"cat\"\n").unwrap();
        let e = ModelInputs::from_spec_file(&p, None)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with(&format!("{}: dense", p.display())), "{e}");
        let e = ModelInputs::from_spec_file(&dir.join("none.toml"), None).unwrap_err();
        assert!(matches!(e, LoadError::Io { .. }), "{e:?}");
        let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../workloads/tiny.toml");
        let m = ModelInputs::from_spec_file(&tiny, Some(5)).unwrap();
        assert!(m.features.iter().all(|f| f.rows <= 5));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn metadata() {
        let meta = json!({"inputs": [
            {"name": "dense", "datatype": "FP32", "shape": [-1, 13]},
            {"name": "C1", "datatype": "INT64", "shape": [-1]},
            {"name": "C1_offsets", "datatype": "INT64", "shape": [-1]},
            {"name": "C2", "datatype": "INT64", "shape": [-1], "parameters": {"rows": 7, "pooling": 2}},
            {"name": "C2_offsets", "datatype": "INT64", "shape": [-1]},
        ]});
        assert!(ModelInputs::from_metadata(&meta, None, None)
            .unwrap_err()
            .to_string()
            .contains("--rows"));
        let m = ModelInputs::from_metadata(&meta, Some(5), None).unwrap();
        assert_eq!((m.features[0].rows, m.features[1].rows), (5, 7));
        assert_eq!(m.features[1].pooling, 2);
        m.check_metadata(&meta).unwrap();
        let other = ModelInputs {
            dense: 12,
            ..m.clone()
        };
        assert!(other.check_metadata(&meta).is_err());
    }
}
