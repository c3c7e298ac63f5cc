//! Measured `auto`: the plan `run` and `serve` use when `--algo` is not given. A few candidate
//! plans (single, the simulator's pick, streamrec, critical-path and nimble on up to K streams,
//! where K is at most the cores on the CPU backend) are built and timed side by side on random
//! batches; the fastest wins when it beats `single` by more than the noise floor measured in the
//! same run (the spread of `single` timed before and after the others), else `single` does. The
//! choice is cached per machine, model, batch sizes and engine settings (in
//! `$STREAMREC_CACHE_DIR`, else `$XDG_CACHE_HOME/streamrec`, else `~/.cache/streamrec`), so later
//! runs start at once; `STREAMREC_RETUNE=1` measures again.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use streamrec_runtime::stats::median;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use streamrec_graph::{Algorithm, ModelSpec, OpGraph};
use streamrec_runtime::backend::BackendKind;
use streamrec_runtime::gen::{random_batch, Skew};
use streamrec_runtime::{measure, Batch, EngineConfig, MeasureConfig, Weights};

use super::run::{build, plan_for, Built, Target};
use super::PlanOpts;

/// Version of the cache file format, of the selection rule and of the CPU kernels whose
/// timings decided a choice (3: in-place concat, per-row prefetch, panel split for large
/// weights; 4: grouped panels and k blocks of 1024; 5: concats assembled by their producers;
/// 6: embedding projections folded into their tables), so that a choice measured on older
/// kernels is measured again.
const CACHE_VERSION: u32 = 6;
/// Timing rounds per candidate and batch size.
const ROUNDS: usize = 3;
/// Most time one round of one candidate at one batch size may take.
const ROUND_TIME: Duration = Duration::from_millis(60);

/// One plan to try.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// The algorithm (never `auto`).
    pub algo: String,
    /// Most streams.
    pub streams: usize,
    /// Table-batched embedding groups, if fused.
    pub fuse: Option<usize>,
}

impl Candidate {
    fn new(algo: Algorithm, streams: usize, fuse: Option<usize>) -> Candidate {
        let streams = if algo == Algorithm::Single {
            1
        } else {
            streams
        };
        Candidate {
            algo: algo.to_string(),
            streams,
            fuse,
        }
    }

    /// `streamrec x2`, `critical-path+fuse2 x2`, `single`.
    pub fn label(&self) -> String {
        let fuse = self.fuse.map_or(String::new(), |g| format!("+fuse{g}"));
        if self.algo == "single" {
            format!("single{fuse}")
        } else {
            format!("{}{fuse} x{}", self.algo, self.streams)
        }
    }

    /// Concrete plan options for this candidate, labelled `auto:<label>`.
    pub fn plan_opts(&self, base: &PlanOpts) -> Result<PlanOpts> {
        let algo: Algorithm = self
            .algo
            .parse()
            .with_context(|| format!("cached auto choice `{}`", self.algo))?;
        Ok(PlanOpts {
            algo: Some(algo),
            streams: self.streams,
            fuse: self.fuse,
            label: Some(format!("auto:{}", self.label())),
            ..base.clone()
        })
    }
}

/// Reads the simulator's pick, `auto:ALGO[+fuseG]`, back into an algorithm and fusion.
pub fn parse_auto_label(s: &str) -> Option<(Algorithm, Option<usize>)> {
    let rest = s.strip_prefix("auto:")?;
    let (algo, fuse) = match rest.split_once("+fuse") {
        Some((a, g)) => (a, Some(g.parse().ok()?)),
        None => (rest, None),
    };
    let algo: Algorithm = algo.parse().ok()?;
    (algo != Algorithm::Auto).then_some((algo, fuse))
}

/// What is cached: the choice and the figures it was made from.
#[derive(Debug, Serialize, Deserialize)]
struct Cached {
    version: u32,
    key: String,
    choice: Candidate,
    /// Per candidate: its label and p50 relative to single (geometric mean over batch sizes).
    ratios: Vec<(String, f64)>,
    noise_floor: f64,
}

/// The folder of cached choices, or None when no home is known.
fn cache_dir() -> Option<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("STREAMREC_CACHE_DIR")
        .or_else(|| env("XDG_CACHE_HOME").map(|p| p.join("streamrec")))
        .or_else(|| env("HOME").map(|p| p.join(".cache").join("streamrec")))
}

/// The machine as far as a plan choice cares: CPU model and core count.
fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{model}, {cores} cores")
}

/// FNV-1a, 64 bits: a stable file name for a key.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Everything the choice depends on.
fn cache_key(target: &Target, spec: &ModelSpec, plan: &PlanOpts, batches: &[usize]) -> String {
    format!(
        "v{CACHE_VERSION}|streamrec {}|{}|{}|streams<={}|fuse={:?}|device={:?}|costs={:?}|cpu-threads={}|cpu-fold={}|tf32={}|graphs={}|batches={batches:?}|{spec:?}",
        env!("CARGO_PKG_VERSION"),
        machine(),
        match target.backend {
            BackendKind::Cuda => "cuda",
            _ => "cpu",
        },
        plan.streams,
        plan.fuse,
        plan.device,
        plan.costs,
        target.opts.cpu_threads,
        streamrec_runtime::backend::cpu::fold_default(),
        target.opts.tf32,
        target.cfg.graphs,
    )
}

fn read_cache(path: &Path, key: &str) -> Option<Cached> {
    let text = std::fs::read_to_string(path).ok()?;
    let c: Cached = serde_json::from_str(&text).ok()?;
    (c.version == CACHE_VERSION && c.key == key).then_some(c)
}

/// Writes atomically (a temporary file renamed), so concurrent runs never read half a file.
fn write_cache(path: &Path, c: &Cached) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, serde_json::to_vec_pretty(c).expect("serialisable"))?;
    std::fs::rename(&tmp, path)
}

/// The candidates for at most `k` streams, the simulator's pick among them; no duplicates.
fn candidates(
    target: &Target,
    graph: &OpGraph,
    plan: &PlanOpts,
    k: usize,
    batch: usize,
) -> Result<Vec<Candidate>> {
    let mut out = vec![Candidate::new(Algorithm::Single, 1, None)];
    if k < 2 {
        return Ok(out);
    }
    let capped = PlanOpts {
        streams: k,
        label: None,
        ..plan.clone()
    };
    let sim = plan_for(target, graph, &capped, Algorithm::Auto, batch)?;
    if let Some((algo, fuse)) = parse_auto_label(&sim.plan.algo) {
        out.push(Candidate::new(algo, k, fuse));
    }
    for algo in [
        Algorithm::StreamRec,
        Algorithm::CriticalPath,
        Algorithm::Nimble,
    ] {
        out.push(Candidate::new(algo, k, plan.fuse));
    }
    if k > 2 {
        out.push(Candidate::new(Algorithm::StreamRec, 2, plan.fuse));
    }
    let mut seen = Vec::new();
    out.retain(|c| {
        let new = !seen.contains(c);
        seen.push(c.clone());
        new
    });
    Ok(out)
}

/// p50 of `built` at each batch size, one round each.
fn time_round(built: &Built, inputs: &[Vec<Arc<Batch>>]) -> Result<Vec<f64>> {
    inputs
        .iter()
        .map(|input| {
            let s = measure(
                built.engine.as_ref(),
                input,
                &MeasureConfig {
                    warmup: 2,
                    iters: 200,
                    threads: 1,
                    max_time: Some(ROUND_TIME),
                    progress: None,
                },
            )?;
            Ok(s.p50_us)
        })
        .collect()
}

/// The plan options `auto` resolves to for this target, model and batch sizes (at most three
/// are timed): from the cache, or measured now and cached. Prints the choice to stderr unless
/// `quiet`.
pub fn tune(
    target: &Target,
    spec: &ModelSpec,
    graph: &OpGraph,
    plan: &PlanOpts,
    batches: &[usize],
    weights: &Weights,
    quiet: bool,
) -> Result<PlanOpts> {
    let retune = std::env::var("STREAMREC_RETUNE").is_ok_and(|v| v == "1");
    tune_with(target, spec, graph, plan, batches, weights, quiet, !retune)
}

/// [`tune`], reading a cached choice only when `use_cache` (a fresh choice is still cached).
#[allow(clippy::too_many_arguments)]
pub fn tune_with(
    target: &Target,
    spec: &ModelSpec,
    graph: &OpGraph,
    plan: &PlanOpts,
    batches: &[usize],
    weights: &Weights,
    quiet: bool,
    use_cache: bool,
) -> Result<PlanOpts> {
    let batches: Vec<usize> = batches.iter().copied().take(3).collect();
    let key = cache_key(target, spec, plan, &batches);
    let path = cache_dir().map(|d| d.join(format!("auto-{:016x}.json", fnv1a(&key))));
    if let (Some(p), true) = (&path, use_cache) {
        if let Some(c) = read_cache(p, &key) {
            if !quiet {
                eprintln!(
                    "auto: {} (cached choice in {}; STREAMREC_RETUNE=1 measures again)",
                    c.choice.label(),
                    p.display()
                );
            }
            return c.choice.plan_opts(plan);
        }
    }
    // On the CPU a stream is a thread: more streams than cores only take turns.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let k = match target.backend {
        BackendKind::Cuda => plan.streams,
        _ => plan.streams.min(cores),
    }
    .max(1);
    let cands = candidates(target, graph, plan, k, batches[0])?;
    let max_batch = batches.iter().copied().max().unwrap_or(1);
    let tune_target = Target {
        backend: target.backend,
        opts: target.opts,
        cfg: EngineConfig {
            contexts: 1,
            max_batch,
            graphs: target.cfg.graphs,
            trace: false,
            validate: true,
        },
    };
    let inputs: Vec<Vec<Arc<Batch>>> = batches
        .iter()
        .map(|&b| {
            (0..2)
                .map(|i| Arc::new(random_batch(spec, b, Skew::Uniform, 7 + i)))
                .collect()
        })
        .collect();
    let (choice, ratios, noise) = if cands.len() == 1 {
        (cands[0].clone(), vec![(cands[0].label(), 1.0)], 0.0)
    } else {
        if !quiet {
            eprintln!(
                "auto: timing {} plans at batch {batches:?} on up to {k} stream(s) (cached for the next run) ...",
                cands.len()
            );
        }
        let single = build(
            &tune_target,
            graph,
            &cands[0].plan_opts(plan)?,
            Algorithm::Single,
            max_batch,
            weights,
        )?;
        // single before and after the others: its spread is the noise floor.
        let mut single_rounds: Vec<Vec<f64>> = vec![Vec::new(); batches.len()];
        for _ in 0..ROUNDS {
            for (i, t) in time_round(&single, &inputs)?.into_iter().enumerate() {
                single_rounds[i].push(t);
            }
        }
        let mut cand_p50: Vec<Vec<f64>> = Vec::new();
        for c in &cands[1..] {
            let opts = c.plan_opts(plan)?;
            let algo = opts.algo();
            let built = build(&tune_target, graph, &opts, algo, max_batch, weights)?;
            let mut rounds: Vec<Vec<f64>> = vec![Vec::new(); batches.len()];
            for _ in 0..ROUNDS {
                for (i, t) in time_round(&built, &inputs)?.into_iter().enumerate() {
                    rounds[i].push(t);
                }
            }
            cand_p50.push(rounds.iter().map(|r| median(r)).collect());
        }
        for _ in 0..ROUNDS {
            for (i, t) in time_round(&single, &inputs)?.into_iter().enumerate() {
                single_rounds[i].push(t);
            }
        }
        let noise = single_rounds
            .iter()
            .map(|r| {
                let max = r.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let min = r.iter().copied().fold(f64::INFINITY, f64::min);
                (max - min) / median(r)
            })
            .fold(0.0, f64::max);
        let base: Vec<f64> = single_rounds.iter().map(|r| median(r)).collect();
        // p50 relative to single, geometric mean over the batch sizes (< 1: faster).
        let rel = |p: &[f64]| -> f64 {
            let logs: f64 = p.iter().zip(&base).map(|(x, b)| (x / b).ln()).sum();
            (logs / p.len() as f64).exp()
        };
        let mut ratios = vec![(cands[0].label(), 1.0)];
        let mut best = (0usize, 1.0f64);
        for (i, p) in cand_p50.iter().enumerate() {
            let r = rel(p);
            ratios.push((cands[i + 1].label(), r));
            if r < best.1 {
                best = (i + 1, r);
            }
        }
        // Only a win larger than the noise floor replaces the baseline.
        let pick = if best.1 < 1.0 - noise { best.0 } else { 0 };
        (cands[pick].clone(), ratios, noise)
    };
    if !quiet {
        let table: Vec<String> = ratios.iter().map(|(l, r)| format!("{l} {r:.2}x")).collect();
        eprintln!(
            "auto: {} (p50 relative to single: {}; noise floor {:.1}%)",
            choice.label(),
            table.join(", "),
            noise * 100.0
        );
    }
    if let Some(p) = &path {
        let c = Cached {
            version: CACHE_VERSION,
            key,
            choice: choice.clone(),
            ratios,
            noise_floor: noise,
        };
        if let Err(e) = write_cache(p, &c) {
            eprintln!("auto: could not cache the choice in {}: {e}", p.display());
        }
    }
    choice.plan_opts(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_labels_read_back() {
        assert_eq!(
            parse_auto_label("auto:critical-path+fuse2"),
            Some((Algorithm::CriticalPath, Some(2)))
        );
        assert_eq!(
            parse_auto_label("auto:streamrec"),
            Some((Algorithm::StreamRec, None))
        );
        assert_eq!(parse_auto_label("streamrec"), None);
        assert_eq!(parse_auto_label("auto:auto"), None);
        assert_eq!(parse_auto_label("auto:nimble+fusex"), None);
    }

    #[test]
    fn candidate_labels() {
        assert_eq!(Candidate::new(Algorithm::Single, 4, None).label(), "single");
        assert_eq!(
            Candidate::new(Algorithm::CriticalPath, 2, Some(2)).label(),
            "critical-path+fuse2 x2"
        );
    }

    #[test]
    fn fnv_is_stable() {
        // Cache file names must not change between builds.
        assert_eq!(fnv1a(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a("a"), 0xaf63_dc4c_8601_ec8c);
    }
}
