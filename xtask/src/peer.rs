//! ONNX Runtime as a peer of the engine: exports a model (spec, weights, input batches) to a
//! folder, runs `tools/onnx_peer.py` on it, checks that ORT's scores equal the engine's within
//! [`TOLERANCE`] and keeps it running to time its thread settings in rounds between the engine's.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use streamrec_graph::{Algorithm, ModelSpec, OpGraph};
use streamrec_runtime::builder::EngineBuilder;
use streamrec_runtime::stats::median;
use streamrec_runtime::BackendKind;
use streamrec_runtime::{ValidatedBatch, Weights};

/// Largest absolute difference allowed between an ORT score and the engine's.
pub(crate) const TOLERANCE: f64 = 1e-5;

/// Exit status of the script when a Python package is missing.
const EXIT_MISSING: i32 = 3;
/// Exit status of the script when the workload has no ONNX form.
const EXIT_NOT_EXPRESSIBLE: i32 = 4;

/// ORT's figures for one batch size.
#[derive(Clone, Debug)]
pub(crate) struct PeerBatch {
    /// Batch size.
    pub batch: usize,
    /// The thread setting with the lowest p50 (e.g. `intra2`).
    pub best: String,
    /// Its p50, us.
    pub p50_us: f64,
    /// Every setting's p50, us, by name.
    pub settings: BTreeMap<String, f64>,
    /// The best setting's p50 in each round, in order (empty for a one-shot timing).
    pub rounds: Vec<f64>,
}

/// What the peer gave for one model.
#[derive(Clone, Debug)]
pub(crate) enum PeerOutcome {
    /// Scores matched; ORT's timings per batch size and the largest score difference.
    Timed {
        /// Per batch size, in the order given.
        batches: Vec<PeerBatch>,
        /// Largest |ORT - engine| over every checked score.
        max_abs_error: f64,
        /// The ONNX Runtime version.
        version: String,
    },
    /// No figures, and why (no Python, no onnxruntime, or a workload ORT cannot express).
    Skipped(String),
}

/// `python3` and the script, or why they cannot run.
pub(crate) fn probe() -> std::result::Result<(), String> {
    let script = script();
    if !script.is_file() {
        return Err(format!("{} is missing", script.display()));
    }
    let out = Command::new("python3")
        .args(["-c", "import numpy, onnx, onnxruntime, safetensors"])
        .output();
    match out {
        Err(e) => Err(format!("python3 cannot run ({e})")),
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            let last = err.lines().last().unwrap_or("import failed").trim();
            Err(format!(
                "python3 cannot import the ONNX packages ({last}); \
                 python3 -m pip install onnx onnxruntime numpy safetensors"
            ))
        }
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/onnx_peer.py")
}

/// The export folder: removed when dropped, unless it was asked to be kept.
struct TempDir(PathBuf, bool);

impl TempDir {
    fn new(tag: &str) -> Result<Self> {
        let tag: String = tag
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let p =
            std::env::temp_dir().join(format!("streamrec-onnx-peer-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).with_context(|| p.display().to_string())?;
        Ok(Self(p, false))
    }

    /// `dir`, created if missing and kept afterwards.
    fn keep(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
        Ok(Self(dir.to_path_buf(), true))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.1 {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn write_raw(path: &Path, bytes: Vec<u8>) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| path.display().to_string())
}

/// Writes `model.json` (the spec), `weights.safetensors` and `batches.json` with the raw inputs
/// into `dir`, in the layout `tools/onnx_peer.py` reads.
pub(crate) fn export(
    spec: &ModelSpec,
    weights: &Weights,
    batches: &[ValidatedBatch],
    dir: &Path,
) -> Result<()> {
    std::fs::write(dir.join("model.json"), serde_json::to_string_pretty(spec)?)?;
    weights.save(&dir.join("weights.safetensors"))?;
    let mut list = Vec::new();
    for (i, b) in batches.iter().enumerate() {
        if b.sparse.len() != spec.features.len() {
            bail!(
                "batch {i}: {} sparse inputs for {} features",
                b.sparse.len(),
                spec.features.len()
            );
        }
        let dense = format!("b{i}-dense.f32");
        write_raw(
            &dir.join(&dense),
            b.dense.iter().flat_map(|v| v.to_le_bytes()).collect(),
        )?;
        let mut feats = serde_json::Map::new();
        for (j, (f, s)) in spec.features.iter().zip(&b.sparse).enumerate() {
            let (idx, off) = (
                format!("b{i}-f{j}-indices.i64"),
                format!("b{i}-f{j}-offsets.i64"),
            );
            let le = |v: Vec<i64>| v.into_iter().flat_map(|x| x.to_le_bytes()).collect();
            write_raw(&dir.join(&idx), le(s.indices.to_i64()))?;
            write_raw(&dir.join(&off), le(s.offsets.to_i64()))?;
            feats.insert(
                f.name.clone(),
                serde_json::json!({"indices": idx, "offsets": off}),
            );
        }
        list.push(serde_json::json!({"size": b.size, "dense": dense, "features": feats}));
    }
    std::fs::write(dir.join("batches.json"), serde_json::to_string(&list)?)?;
    Ok(())
}

/// Runs the script; `Ok(Err(reason))` when it says a package is missing or the workload has
/// no ONNX form, an error for any other failure.
fn run_script(args: &[&str]) -> Result<std::result::Result<String, String>> {
    let o = Command::new("python3")
        .arg(script())
        .args(args)
        .output()
        .context("running python3 tools/onnx_peer.py")?;
    let stderr = String::from_utf8_lossy(&o.stderr).trim().to_string();
    match o.status.code() {
        Some(0) => Ok(Ok(String::from_utf8_lossy(&o.stdout).into_owned())),
        Some(EXIT_MISSING) | Some(EXIT_NOT_EXPRESSIBLE) => Ok(Err(stderr)),
        _ => bail!(
            "tools/onnx_peer.py {} failed ({}):\n{stderr}",
            args.join(" "),
            o.status
        ),
    }
}

/// The engine's scores (single-stream plan, CPU backend) for every batch.
fn engine_scores(
    graph: &OpGraph,
    weights: &Weights,
    batches: &[ValidatedBatch],
) -> Result<Vec<Vec<f32>>> {
    let max_batch = batches.iter().map(|b| b.size).max().unwrap_or(1);
    let engine = EngineBuilder::new(&graph.spec)
        .weights(weights)
        .backend(BackendKind::Cpu)
        .algo(Algorithm::Single)
        .max_batch(max_batch)
        .build()?
        .engine;
    batches.iter().map(|b| Ok(engine.infer(b)?)).collect()
}

/// The largest |ORT - engine| over all scores; an error when any exceeds [`TOLERANCE`] or the
/// counts differ (the message names the batch and the sample).
pub(crate) fn compare(name: &str, ort: &[Vec<f64>], engine: &[Vec<f32>]) -> Result<f64> {
    if ort.len() != engine.len() {
        bail!(
            "{name}: ORT scored {} batches, the engine {}",
            ort.len(),
            engine.len()
        );
    }
    let mut max = 0f64;
    for (bi, (o, e)) in ort.iter().zip(engine).enumerate() {
        if o.len() != e.len() {
            bail!(
                "{name}: batch {bi}: ORT gave {} scores, the engine {}",
                o.len(),
                e.len()
            );
        }
        for (s, (&o, &e)) in o.iter().zip(e).enumerate() {
            let err = (o - f64::from(e)).abs();
            let err = if err.is_nan() { f64::INFINITY } else { err };
            if err > TOLERANCE {
                bail!(
                    "{name}: batch {bi} sample {s}: ONNX Runtime scores {o} but the engine {e} \
                     (error {err:.3e} > {TOLERANCE:e}): the export or the engine is wrong"
                );
            }
            max = max.max(err);
        }
    }
    Ok(max)
}

/// Reads `{"scores": [[...], ...]}` written by the script's `check` mode.
fn read_scores(path: &Path) -> Result<Vec<Vec<f64>>> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let v: Value = serde_json::from_str(&text).with_context(|| path.display().to_string())?;
    let bad = || anyhow::anyhow!("{}: no `scores` list of lists of numbers", path.display());
    v.get("scores")
        .and_then(Value::as_array)
        .ok_or_else(bad)?
        .iter()
        .map(|b| {
            b.as_array()
                .ok_or_else(bad)?
                .iter()
                .map(|x| x.as_f64().ok_or_else(bad))
                .collect()
        })
        .collect()
}

/// ORT's thread settings timed beside the engine (`tools/onnx_peer.py` SETTINGS).
pub(crate) const SETTINGS: [&str; 3] = ["intra1", "intra2", "intra1-inter2"];

/// ONNX Runtime kept running (`tools/onnx_peer.py serve`) with the model exported and its scores
/// checked, timed on request, so that its rounds interleave with the engine's in one run.
pub(crate) struct OrtServer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// The ONNX Runtime version.
    pub version: String,
    /// Largest |ORT - engine| over every checked score.
    pub max_abs_error: f64,
    /// Per batch size and setting, the p50 of each round so far.
    pub rounds: BTreeMap<usize, BTreeMap<String, Vec<f64>>>,
    _dir: TempDir,
}

impl OrtServer {
    /// Exports the model with `batches`, checks ORT's scores against the engine's (an error
    /// when they differ by more than [`TOLERANCE`]) and starts the timing process; `Ok(Err)`
    /// with the reason when ORT cannot run here or cannot express the model.
    pub(crate) fn start(
        graph: &OpGraph,
        weights: &Weights,
        batches: &[ValidatedBatch],
        keep: Option<&Path>,
    ) -> Result<std::result::Result<Self, String>> {
        if let Err(why) = probe() {
            return Ok(Err(why));
        }
        let spec = &graph.spec;
        let dir = match keep {
            Some(d) => TempDir::keep(d)?,
            None => TempDir::new(&spec.name)?,
        };
        export(spec, weights, batches, &dir.0)?;
        let d = dir.0.to_string_lossy().into_owned();
        let scores_path = dir.0.join("ort-scores.json");
        let out = scores_path.to_string_lossy().into_owned();
        if let Err(why) = run_script(&["check", &d, "--out", &out])? {
            return Ok(Err(why));
        }
        let ort = read_scores(&scores_path)?;
        let engine = engine_scores(graph, weights, batches)?;
        let max_abs_error = compare(&spec.name, &ort, &engine)?;
        let mut child = Command::new("python3")
            .arg(script())
            .args(["serve", &d])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting python3 tools/onnx_peer.py serve")?;
        let stdin = child.stdin.take().context("onnx_peer serve: no stdin")?;
        let mut stdout = BufReader::new(child.stdout.take().context("onnx_peer serve: no stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let v: Value = serde_json::from_str(line.trim())
            .with_context(|| format!("onnx_peer serve: bad greeting {line:?}"))?;
        let version = v
            .get("onnxruntime")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string();
        Ok(Ok(Self {
            child,
            stdin,
            stdout,
            version,
            max_abs_error,
            rounds: BTreeMap::new(),
            _dir: dir,
        }))
    }

    /// One round of every setting at batch `size`, about `budget_ms` each; the p50s are kept.
    pub(crate) fn round(&mut self, size: usize, budget_ms: u64) -> Result<()> {
        for setting in SETTINGS {
            writeln!(self.stdin, "time {size} {setting} {budget_ms}")?;
            self.stdin.flush()?;
            let mut line = String::new();
            if self.stdout.read_line(&mut line)? == 0 {
                bail!("onnx_peer serve stopped");
            }
            let v: Value = serde_json::from_str(line.trim())
                .with_context(|| format!("onnx_peer serve: bad reply {line:?}"))?;
            if let Some(e) = v.get("error").and_then(Value::as_str) {
                bail!("onnx_peer serve: {e}");
            }
            let p50 = v
                .get("p50_us")
                .and_then(Value::as_f64)
                .context("onnx_peer serve: no p50_us")?;
            self.rounds
                .entry(size)
                .or_default()
                .entry(setting.to_string())
                .or_default()
                .push(p50);
        }
        Ok(())
    }

    /// The figures so far, in the form of the one-shot timing: per batch size, the median p50
    /// of each setting over its rounds and the best setting.
    pub(crate) fn outcome(&self) -> PeerOutcome {
        let batches = self
            .rounds
            .iter()
            .map(|(&batch, per)| {
                let settings: BTreeMap<String, f64> =
                    per.iter().map(|(k, v)| (k.clone(), median(v))).collect();
                let (best, p50_us) = settings
                    .iter()
                    .min_by(|a, b| a.1.total_cmp(b.1))
                    .map(|(k, v)| (k.clone(), *v))
                    .unwrap_or_default();
                PeerBatch {
                    batch,
                    rounds: per.get(&best).cloned().unwrap_or_default(),
                    best,
                    p50_us,
                    settings,
                }
            })
            .collect();
        PeerOutcome::Timed {
            batches,
            max_abs_error: self.max_abs_error,
            version: self.version.clone(),
        }
    }
}

impl Drop for OrtServer {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.stdin.flush();
        let _ = self.child.wait();
    }
}

/// `lscpu`'s model name and flags (and the core count), for `machine.txt`.
pub(crate) fn machine_txt() -> String {
    let lscpu = Command::new("lscpu")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let field = |key: &str| {
        lscpu
            .lines()
            .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| "unknown (lscpu gave nothing)".into())
    };
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "model name: {}\ncpus available: {cores}\nflags: {}\n",
        field("Model name:"),
        field("Flags:")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_accepts_close_and_refuses_far_or_nan() {
        let e = vec![vec![0.25f32, 0.75]];
        assert!(compare("m", &[vec![0.25 + 5e-6, 0.75]], &e).unwrap() > 4e-6);
        let far = compare("m", &[vec![0.25, 0.7]], &e)
            .unwrap_err()
            .to_string();
        assert!(far.contains("batch 0 sample 1"), "{far}");
        assert!(compare("m", &[vec![f64::NAN, 0.75]], &e).is_err());
        assert!(compare("m", &[vec![0.25]], &e).is_err());
    }
}
