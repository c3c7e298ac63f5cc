//! What a request must contain: the model's inputs (dense width; per sparse feature its name,
//! table rows and indices per sample).
//!
//! The server's model metadata (`GET /v2/models/{m}`) gives the names, datatypes and shapes but
//! not the number of rows of each table, so the load generator takes them from one of:
//! - the model spec (`--spec workloads/x.toml [--row-cap N]`), read here with a minimal parser
//!   of the fields it needs (`dense`, `row_cap`, `sparse.count|prefix|rows|pooling|features`),
//!   so the load generator does not link the engine;
//! - the metadata itself, when an input carries `parameters: {"rows": R, "pooling": P}`;
//! - `--rows R [--pooling P]`: the same for every feature (any R up to the smallest table is
//!   valid).
//!
//! Either way the names and the dense width are checked against the metadata when there is one.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::error::LoadError;

/// Widest dense input.
pub const MAX_DENSE: usize = 65_536;
/// Most sparse features.
pub const MAX_FEATURES: usize = 1_024;
/// Most rows in one table.
pub const MAX_ROWS: u64 = 1 << 40;
/// Most indices per sample of one feature.
pub const MAX_POOLING: u32 = 4_096;

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

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(i64),
    Many(Vec<i64>),
}

#[derive(Deserialize)]
struct MiniFeature {
    name: String,
    rows: i64,
    #[serde(default)]
    pooling: Option<i64>,
}

#[derive(Deserialize, Default)]
struct MiniSparse {
    count: Option<i64>,
    prefix: Option<String>,
    rows: Option<OneOrMany>,
    pooling: Option<OneOrMany>,
    features: Option<Vec<MiniFeature>>,
}

#[derive(Deserialize)]
struct MiniSpec {
    dense: i64,
    row_cap: Option<i64>,
    #[serde(default)]
    sparse: MiniSparse,
}

fn bounded(field: &str, v: i64, max: u64) -> Result<u64, String> {
    if v <= 0 {
        return Err(format!("{field}: must be > 0"));
    }
    if v as u64 > max {
        return Err(format!("{field}: {v} is more than the limit of {max}"));
    }
    Ok(v as u64)
}

fn per_feature(field: &str, v: &OneOrMany, count: usize) -> Result<Vec<i64>, String> {
    match v {
        OneOrMany::One(x) => Ok(vec![*x; count]),
        OneOrMany::Many(xs) if xs.len() == count => Ok(xs.clone()),
        OneOrMany::Many(xs) => Err(format!(
            "{field}: has {} values for {count} features",
            xs.len()
        )),
    }
}

impl ModelInputs {
    /// Reads the inputs from a model spec; `row_cap` overrides the spec's own cap (as
    /// `streamrec serve --row-cap` does).
    pub fn from_spec_file(path: &Path, row_cap: Option<u64>) -> Result<ModelInputs, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|e| LoadError::io(path, e))?;
        ModelInputs::from_spec(&text, row_cap).map_err(|m| LoadError::format(path, m))
    }

    /// Parses the fields of a model spec that a request needs; the error names the field.
    pub fn from_spec(text: &str, row_cap: Option<u64>) -> Result<ModelInputs, String> {
        let raw: MiniSpec = toml::from_str(text).map_err(|e| e.message().to_string())?;
        let dense = bounded("dense", raw.dense, MAX_DENSE as u64)? as usize;
        if row_cap == Some(0) {
            return Err("--row-cap: must be > 0".into());
        }
        let cap = match row_cap {
            Some(c) => Some(c),
            None => raw
                .row_cap
                .map(|c| bounded("row_cap", c, MAX_ROWS))
                .transpose()?,
        };
        let capped = |r: u64| cap.map_or(r, |c| r.min(c));
        let s = &raw.sparse;
        let features: Vec<FeatureInput> = match (&s.features, s.count) {
            (Some(list), None) => {
                if list.len() > MAX_FEATURES {
                    return Err(format!(
                        "sparse.features: {} features, more than the limit of {MAX_FEATURES}",
                        list.len()
                    ));
                }
                list.iter()
                    .enumerate()
                    .map(|(i, f)| {
                        Ok(FeatureInput {
                            name: f.name.clone(),
                            rows: capped(bounded(&format!("sparse[{i}].rows"), f.rows, MAX_ROWS)?),
                            pooling: bounded(
                                &format!("sparse[{i}].pooling"),
                                f.pooling.unwrap_or(1),
                                u64::from(MAX_POOLING),
                            )? as u32,
                        })
                    })
                    .collect::<Result<_, String>>()?
            }
            (None, Some(count)) => {
                let count = bounded("sparse.count", count, MAX_FEATURES as u64)? as usize;
                let rows = per_feature(
                    "sparse.rows",
                    s.rows.as_ref().ok_or("sparse.rows: is required")?,
                    count,
                )?;
                let pooling = per_feature(
                    "sparse.pooling",
                    s.pooling.as_ref().unwrap_or(&OneOrMany::One(1)),
                    count,
                )?;
                let prefix = s.prefix.clone().unwrap_or_else(|| "C".into());
                (0..count)
                    .map(|i| {
                        Ok(FeatureInput {
                            name: format!("{prefix}{}", i + 1),
                            rows: capped(bounded(&format!("sparse[{i}].rows"), rows[i], MAX_ROWS)?),
                            pooling: bounded(
                                &format!("sparse[{i}].pooling"),
                                pooling[i],
                                u64::from(MAX_POOLING),
                            )? as u32,
                        })
                    })
                    .collect::<Result<_, String>>()?
            }
            _ => return Err("sparse: needs either count or features".into()),
        };
        Ok(ModelInputs { dense, features })
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
                    .filter(|&w| w > 0 && w <= MAX_DENSE as u64)
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
                if r == 0 || r > MAX_ROWS || k == 0 || k > MAX_POOLING {
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

    #[test]
    fn compact_and_listed_specs() {
        let m = ModelInputs::from_spec(
            "name = \"t\"\ndense = 13\n[bottom]\nlayers = [4]\n[sparse]\ncount = 3\nrows = [100, 37, 250]\ndim = 4\npooling = [1, 2, 3]\n[top]\nlayers=[1]\n[interaction]\nkind=\"dot\"\n",
            Some(50),
        )
        .unwrap();
        assert_eq!(m.dense, 13);
        let rows: Vec<u64> = m.features.iter().map(|f| f.rows).collect();
        assert_eq!(rows, vec![50, 37, 50]);
        assert_eq!(m.features[2].name, "C3");
        assert_eq!(m.features[2].pooling, 3);
        let l = ModelInputs::from_spec(
            "dense = 2\n[[sparse.features]]\nname = \"a\"\nrows = 9\ndim = 4\n",
            None,
        )
        .unwrap();
        assert_eq!(l.features[0].pooling, 1);
        assert!(
            ModelInputs::from_spec("dense = 0\n[sparse]\ncount=1\nrows=1\n", None)
                .unwrap_err()
                .starts_with("dense")
        );
        assert!(
            ModelInputs::from_spec("dense = 1\n[sparse]\ncount=2\nrows=[1]\n", None)
                .unwrap_err()
                .contains("sparse.rows")
        );
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
