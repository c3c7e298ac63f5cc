//! Model specs: the TOML format that describes a recommendation model, and its validation.
//!
//! A spec is parsed with serde (unknown fields are errors), then checked field by field;
//! every error names the field and the reason, e.g. `sparse[3].rows: must be > 0`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::GraphError;
use crate::limits::{
    MAX_CROSS_LAYERS, MAX_DIM, MAX_FEATURES, MAX_LAYERS, MAX_POOLING, MAX_RANK, MAX_ROWS, MAX_WIDTH,
};

/// Pooling mode of an embedding bag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PoolingMode {
    /// Sum of the looked-up rows.
    #[default]
    Sum,
    /// Mean of the looked-up rows (an empty bag gives zeros).
    Mean,
}

/// One value for every feature, or one value per feature.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// The same value for every feature.
    One(i64),
    /// One value per feature, in feature order.
    Many(Vec<i64>),
}

/// The raw spec as written in TOML.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSpec {
    /// Model name (defaults to the file stem).
    pub name: Option<String>,
    /// Width of the dense input.
    pub dense: i64,
    /// Optional cap on every table's row count (shrinks large tables for small machines).
    pub row_cap: Option<i64>,
    /// Bottom MLP over the dense input.
    #[serde(default)]
    pub bottom: MlpRaw,
    /// Sparse features.
    pub sparse: SparseRaw,
    /// Interaction between the bottom output and the feature vectors.
    pub interaction: InteractionRaw,
    /// Top MLP; its last layer has width 1 and a sigmoid.
    pub top: MlpRaw,
    /// Where the weights come from.
    #[serde(default)]
    pub weights: WeightsRaw,
}

/// An MLP: output widths of its layers, in order.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlpRaw {
    /// Output width of each layer.
    #[serde(default)]
    pub layers: Vec<i64>,
}

/// Sparse features, either compact (`count = 26`, shared or per-feature values) or listed.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SparseRaw {
    /// Number of features in the compact form.
    pub count: Option<i64>,
    /// Prefix of generated feature names in the compact form (`C` gives C1, C2, ...).
    pub prefix: Option<String>,
    /// Rows per table: one number for all, or a list with one per feature.
    pub rows: Option<OneOrMany>,
    /// Embedding dimension shared by all features.
    pub dim: Option<i64>,
    /// Indices per lookup: one number for all, or one per feature (multi-hot sizes).
    pub pooling: Option<OneOrMany>,
    /// Pooling mode for all features.
    pub mode: Option<PoolingMode>,
    /// Per-feature branch layers (linear + relu), output widths.
    pub branch: Option<Vec<i64>>,
    /// The listed form: one entry per feature.
    pub features: Option<Vec<FeatureRaw>>,
}

/// One sparse feature in the listed form.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureRaw {
    /// Feature name (also the request input name).
    pub name: String,
    /// Rows of its embedding table.
    pub rows: i64,
    /// Embedding dimension.
    pub dim: i64,
    /// Indices per lookup (the multi-hot size); 1 for one-hot.
    #[serde(default = "one")]
    pub pooling: i64,
    /// Pooling mode.
    #[serde(default)]
    pub mode: PoolingMode,
    /// Branch layers (linear + relu) after the lookup, output widths.
    #[serde(default)]
    pub branch: Vec<i64>,
}

fn one() -> i64 {
    1
}

/// Interaction kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InteractionKind {
    /// DLRM pairwise dot products (strict lower triangle) concatenated with the bottom output.
    Dot,
    /// Plain concatenation of the bottom output and the feature vectors.
    Cat,
    /// DCNv2 low-rank cross layers over the concatenation.
    Dcn,
}

/// The interaction section.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InteractionRaw {
    /// `dot`, `cat` or `dcn`.
    pub kind: InteractionKind,
    /// Number of cross layers (`dcn` only).
    pub layers: Option<i64>,
    /// Low-rank size of each cross layer (`dcn` only).
    pub rank: Option<i64>,
}

/// The weights section: a seed or a safetensors file.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightsRaw {
    /// Seed of the deterministic generator (default 0).
    pub seed: Option<u64>,
    /// A safetensors file, relative to the spec's folder.
    pub path: Option<PathBuf>,
}

/// A validated sparse feature.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Feature {
    /// Feature name.
    pub name: String,
    /// Rows of the table after `row_cap`.
    pub rows: usize,
    /// Rows as written in the spec, before `row_cap`.
    pub spec_rows: usize,
    /// Embedding dimension.
    pub dim: usize,
    /// Indices per lookup in generated batches.
    pub pooling: usize,
    /// Pooling mode.
    pub mode: PoolingMode,
    /// Branch layer widths.
    pub branch: Vec<usize>,
}

impl Feature {
    /// Width of this feature's vector after its branch.
    pub fn out_width(&self) -> usize {
        self.branch.last().copied().unwrap_or(self.dim)
    }
}

/// A validated interaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Interaction {
    /// DLRM dot interaction.
    Dot,
    /// Concatenation.
    Cat,
    /// DCNv2 cross layers.
    Dcn {
        /// Number of layers.
        layers: usize,
        /// Low-rank size.
        rank: usize,
    },
}

/// Where weights come from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum WeightSource {
    /// Generated deterministically from this seed.
    Seed(u64),
    /// Loaded from a safetensors file.
    File(PathBuf),
}

/// A validated model spec.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelSpec {
    /// Model name.
    pub name: String,
    /// Dense input width.
    pub dense: usize,
    /// The row cap applied, if any.
    pub row_cap: Option<usize>,
    /// Bottom MLP widths.
    pub bottom: Vec<usize>,
    /// Sparse features.
    pub features: Vec<Feature>,
    /// Interaction.
    pub interaction: Interaction,
    /// Top MLP widths (last is 1).
    pub top: Vec<usize>,
    /// Weight source.
    pub weights: WeightSource,
}

fn err(field: impl Into<String>, reason: impl Into<String>) -> GraphError {
    GraphError::Spec {
        field: field.into(),
        reason: reason.into(),
    }
}

fn positive(field: &str, v: i64) -> Result<usize, GraphError> {
    if v <= 0 {
        Err(err(field, "must be > 0"))
    } else {
        usize::try_from(v).map_err(|_| err(field, "is too large"))
    }
}

/// A positive value no larger than `max` (the limits in [`crate::limits`]).
fn bounded(field: &str, v: i64, max: usize) -> Result<usize, GraphError> {
    let v = positive(field, v)?;
    if v > max {
        Err(err(field, format!("is {v}, more than the limit of {max}")))
    } else {
        Ok(v)
    }
}

fn widths(field: &str, v: &[i64]) -> Result<Vec<usize>, GraphError> {
    if v.len() > MAX_LAYERS {
        return Err(err(
            field,
            format!(
                "has {} layers, more than the limit of {MAX_LAYERS}",
                v.len()
            ),
        ));
    }
    v.iter()
        .enumerate()
        .map(|(i, &w)| bounded(&format!("{field}[{i}]"), w, MAX_WIDTH))
        .collect()
}

fn per_feature(field: &str, v: &OneOrMany, count: usize) -> Result<Vec<i64>, GraphError> {
    match v {
        OneOrMany::One(x) => Ok(vec![*x; count]),
        OneOrMany::Many(xs) if xs.len() == count => Ok(xs.clone()),
        OneOrMany::Many(xs) => Err(err(
            field,
            format!("has {} entries but sparse.count is {count}", xs.len()),
        )),
    }
}

impl ModelSpec {
    /// Reads and validates a spec file; `row_cap` overrides the file's own cap. The model name
    /// (the `name` field, else the file stem) must pass [`check_model_name`].
    pub fn load(path: &Path, row_cap: Option<usize>) -> Result<Self, GraphError> {
        let text = std::fs::read_to_string(path).map_err(|e| GraphError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        let raw: RawSpec = toml::from_str(&text).map_err(|e| GraphError::Toml(toml_message(&e)))?;
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        if let Some(reason) = model_name_problem(raw.name.as_deref().unwrap_or(&stem)) {
            return Err(err(
                "name",
                match &raw.name {
                    Some(name) => format!("{name:?} {reason}"),
                    None => format!(
                        "the file name gives the model name {stem:?}, which {reason}; \
                         set name = {:?} in the spec",
                        suggest_model_name(&stem)
                    ),
                },
            ));
        }
        let mut spec = Self::from_raw(raw, &stem, row_cap)?;
        if let WeightSource::File(p) = &mut spec.weights {
            if p.is_relative() {
                if let Some(dir) = path.parent() {
                    *p = dir.join(&*p);
                }
            }
        }
        Ok(spec)
    }

    /// Parses and validates spec text; `default_name` is used when the spec has no name. The
    /// name's charset is checked by [`ModelSpec::load`] (and [`check_model_name`]), not here.
    pub fn parse(
        text: &str,
        default_name: &str,
        row_cap: Option<usize>,
    ) -> Result<Self, GraphError> {
        let raw: RawSpec = toml::from_str(text).map_err(|e| GraphError::Toml(toml_message(&e)))?;
        Self::from_raw(raw, default_name, row_cap)
    }

    /// Validates a raw spec.
    pub fn from_raw(
        raw: RawSpec,
        default_name: &str,
        row_cap: Option<usize>,
    ) -> Result<Self, GraphError> {
        let name = raw.name.clone().unwrap_or_else(|| default_name.to_string());
        if name.is_empty() {
            return Err(err("name", "must not be empty"));
        }
        let dense = bounded("dense", raw.dense, MAX_WIDTH)?;
        let file_cap = raw.row_cap.map(|c| positive("row_cap", c)).transpose()?;
        if row_cap == Some(0) {
            return Err(err("--row-cap", "must be > 0"));
        }
        let row_cap = row_cap.or(file_cap);
        let bottom = widths("bottom.layers", &raw.bottom.layers)?;
        let top = widths("top.layers", &raw.top.layers)?;
        if top.is_empty() {
            return Err(err("top.layers", "must have at least one layer"));
        }
        if *top.last().expect("non-empty") != 1 {
            return Err(err(
                format!("top.layers[{}]", top.len() - 1),
                "the last layer must have width 1 (the score)",
            ));
        }
        let features = Self::features(&raw.sparse, row_cap)?;
        let interaction = match raw.interaction.kind {
            InteractionKind::Dot | InteractionKind::Cat => {
                if raw.interaction.layers.is_some() {
                    return Err(err("interaction.layers", "only used with kind = \"dcn\""));
                }
                if raw.interaction.rank.is_some() {
                    return Err(err("interaction.rank", "only used with kind = \"dcn\""));
                }
                if raw.interaction.kind == InteractionKind::Dot {
                    Interaction::Dot
                } else {
                    Interaction::Cat
                }
            }
            InteractionKind::Dcn => Interaction::Dcn {
                layers: bounded(
                    "interaction.layers",
                    raw.interaction.layers.ok_or_else(|| {
                        err("interaction.layers", "is required for kind = \"dcn\"")
                    })?,
                    MAX_CROSS_LAYERS,
                )?,
                rank: bounded(
                    "interaction.rank",
                    raw.interaction
                        .rank
                        .ok_or_else(|| err("interaction.rank", "is required for kind = \"dcn\""))?,
                    MAX_RANK,
                )?,
            },
        };
        let bottom_out = bottom.last().copied().unwrap_or(dense);
        if interaction == Interaction::Dot {
            for (i, f) in features.iter().enumerate() {
                if f.out_width() != bottom_out {
                    return Err(err(
                        format!("sparse[{i}].dim"),
                        format!(
                            "dot interaction needs every feature vector ({}) as wide as the bottom output ({bottom_out})",
                            f.out_width()
                        ),
                    ));
                }
            }
        }
        let weights = match (raw.weights.seed, raw.weights.path) {
            (Some(_), Some(_)) => return Err(err("weights", "give either seed or path, not both")),
            (_, Some(p)) => WeightSource::File(p),
            (s, None) => WeightSource::Seed(s.unwrap_or(0)),
        };
        Ok(Self {
            name,
            dense,
            row_cap,
            bottom,
            features,
            interaction,
            top,
            weights,
        })
    }

    fn features(s: &SparseRaw, row_cap: Option<usize>) -> Result<Vec<Feature>, GraphError> {
        let cap = |rows: usize| row_cap.map_or(rows, |c| rows.min(c));
        let out: Vec<Feature> = match (&s.features, s.count) {
            (Some(_), Some(_)) => {
                return Err(err(
                    "sparse",
                    "give either count (compact form) or features, not both",
                ))
            }
            (None, None) => return Err(err("sparse", "needs count (compact form) or features")),
            (Some(list), None) => {
                if list.len() > MAX_FEATURES {
                    return Err(err(
                        "sparse.features",
                        format!(
                            "has {} features, more than the limit of {MAX_FEATURES}",
                            list.len()
                        ),
                    ));
                }
                for (field, set) in [
                    ("prefix", s.prefix.is_some()),
                    ("rows", s.rows.is_some()),
                    ("dim", s.dim.is_some()),
                    ("pooling", s.pooling.is_some()),
                    ("mode", s.mode.is_some()),
                    ("branch", s.branch.is_some()),
                ] {
                    if set {
                        return Err(err(
                            format!("sparse.{field}"),
                            "only used with the compact form (sparse.count); set it per feature",
                        ));
                    }
                }
                list.iter()
                    .enumerate()
                    .map(|(i, f)| {
                        let rows = bounded(&format!("sparse[{i}].rows"), f.rows, MAX_ROWS)?;
                        Ok(Feature {
                            name: f.name.clone(),
                            rows: cap(rows),
                            spec_rows: rows,
                            dim: bounded(&format!("sparse[{i}].dim"), f.dim, MAX_DIM)?,
                            pooling: bounded(
                                &format!("sparse[{i}].pooling"),
                                f.pooling,
                                MAX_POOLING,
                            )?,
                            mode: f.mode,
                            branch: widths(&format!("sparse[{i}].branch"), &f.branch)?,
                        })
                    })
                    .collect::<Result<_, GraphError>>()?
            }
            (None, Some(count)) => {
                let count = bounded("sparse.count", count, MAX_FEATURES)?;
                let rows = per_feature(
                    "sparse.rows",
                    s.rows
                        .as_ref()
                        .ok_or_else(|| err("sparse.rows", "is required"))?,
                    count,
                )?;
                let pooling = per_feature(
                    "sparse.pooling",
                    s.pooling.as_ref().unwrap_or(&OneOrMany::One(1)),
                    count,
                )?;
                let dim = bounded(
                    "sparse.dim",
                    s.dim.ok_or_else(|| err("sparse.dim", "is required"))?,
                    MAX_DIM,
                )?;
                let branch = widths("sparse.branch", s.branch.as_deref().unwrap_or(&[]))?;
                let prefix = s.prefix.clone().unwrap_or_else(|| "C".into());
                (0..count)
                    .map(|i| {
                        let r = bounded(&format!("sparse[{i}].rows"), rows[i], MAX_ROWS)?;
                        Ok(Feature {
                            name: format!("{prefix}{}", i + 1),
                            rows: cap(r),
                            spec_rows: r,
                            dim,
                            pooling: bounded(
                                &format!("sparse[{i}].pooling"),
                                pooling[i],
                                MAX_POOLING,
                            )?,
                            mode: s.mode.unwrap_or_default(),
                            branch: branch.clone(),
                        })
                    })
                    .collect::<Result<_, GraphError>>()?
            }
        };
        for (i, f) in out.iter().enumerate() {
            if f.name.is_empty()
                || !f
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(err(
                    format!("sparse[{i}].name"),
                    "must be non-empty ASCII letters, digits, '_' or '-'",
                ));
            }
            if f.name == "dense" || f.name.ends_with("_offsets") {
                return Err(err(
                    format!("sparse[{i}].name"),
                    "`dense` and names ending in `_offsets` are reserved for request inputs",
                ));
            }
            if let Some(j) = out[..i].iter().position(|g| g.name == f.name) {
                return Err(err(
                    format!("sparse[{i}].name"),
                    format!("`{}` is already the name of sparse[{j}]", f.name),
                ));
            }
        }
        Ok(out)
    }

    /// Width of the dense vector that enters the interaction (the bottom MLP's output).
    pub fn bottom_out(&self) -> usize {
        self.bottom.last().copied().unwrap_or(self.dense)
    }

    /// Width of the interaction's output (the top MLP's input).
    pub fn interaction_out(&self) -> usize {
        let cat: usize =
            self.bottom_out() + self.features.iter().map(Feature::out_width).sum::<usize>();
        match self.interaction {
            Interaction::Dot => {
                let n = self.features.len() + 1;
                self.bottom_out() + n * (n - 1) / 2
            }
            Interaction::Cat | Interaction::Dcn { .. } => cat,
        }
    }

    /// Index of the feature with this name.
    pub fn feature_index(&self, name: &str) -> Option<usize> {
        self.features.iter().position(|f| f.name == name)
    }
}

/// Longest model name, in characters.
pub const MAX_MODEL_NAME: usize = 128;

/// Checks a model name: 1 to [`MAX_MODEL_NAME`] characters from `[A-Za-z0-9_.-]`, the first a
/// letter or digit (what Triton's model repository accepts; such a name is safe in a URL path
/// and in a Prometheus label). The error names the field `name`.
pub fn check_model_name(name: &str) -> Result<(), GraphError> {
    model_name_problem(name).map_or(Ok(()), |reason| Err(err("name", reason)))
}

/// What is wrong with a model name, if anything (see [`check_model_name`]).
fn model_name_problem(name: &str) -> Option<String> {
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Some(format!(
            "has the character {c:?}; a model name may hold only ASCII letters, digits, \
             '_', '.' and '-'"
        ));
    }
    match name.chars().next() {
        None => Some("must not be empty".into()),
        Some(c) if !c.is_ascii_alphanumeric() => Some(format!(
            "starts with {c:?}; the first character must be a letter or digit"
        )),
        // Only ASCII is left: bytes are characters.
        Some(_) if name.len() > MAX_MODEL_NAME => Some(format!(
            "is {} characters, more than the limit of {MAX_MODEL_NAME}",
            name.len()
        )),
        Some(_) => None,
    }
}

/// A valid model name close to `name`: other characters become `_`, a leading character that is
/// not a letter or digit is dropped, and the result is cut to [`MAX_MODEL_NAME`].
fn suggest_model_name(name: &str) -> String {
    let mapped: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let cut: String = mapped
        .trim_start_matches(|c: char| !c.is_ascii_alphanumeric())
        .chars()
        .take(MAX_MODEL_NAME)
        .collect();
    if cut.is_empty() {
        "model".into()
    } else {
        cut
    }
}

fn toml_message(e: &toml::de::Error) -> String {
    let msg = e.message().trim().to_string();
    match e.span() {
        Some(span) => format!("{msg} (at byte {})", span.start),
        None => msg,
    }
}

impl ModelSpec {
    /// An empty stand-in spec for synthetic graphs (no features, dense width 1).
    pub fn placeholder() -> Self {
        Self {
            name: "synthetic".into(),
            dense: 1,
            row_cap: None,
            bottom: Vec::new(),
            features: Vec::new(),
            interaction: Interaction::Cat,
            top: vec![1],
            weights: WeightSource::Seed(0),
        }
    }
}
