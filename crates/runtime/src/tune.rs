//! Measured `auto`: the plan an engine uses when its algorithm is `auto` and batch sizes to
//! tune for are given (`EngineBuilder::tune_batches`). A few candidate plans
//! (single, the simulator's pick, streamrec, critical-path and nimble on up to K streams, where
//! K is at most the cores on the CPU backend) are built and timed side by side on random
//! batches, in rounds that time `single` first and last and every candidate in between; each
//! candidate's p50 is taken relative to the `single` timings around it in the same round, so
//! that a machine whose speed drifts (a busy host) moves both sides of each ratio. The fastest
//! (median ratio over the rounds) wins when it beats `single` by more than the noise floor
//! measured in the same run (the median change of `single` from a round's start to its end),
//! else `single` does. The choice is cached per machine, model, batch sizes and
//! engine settings in the folder the caller gives ([`cache_dir_in`] names the usual one), so
//! later runs start at once; [`TuneRequest::use_cache`] false measures again.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use streamrec_graph::{Algorithm, ModelSpec, OpGraph};

use crate::engine::BackendKind;
use crate::gen::{random_batch, Skew};
use crate::stats::median;
use crate::target::{BuildError, BuildResult, Built, PlanOptions, Target};
use crate::{measure, EngineConfig, MeasureConfig, ValidatedBatch, Weights};

/// Version of the cache file format, of the selection rule and of the CPU kernels whose
/// timings decided a choice (3: in-place concat, per-row prefetch, panel split for large
/// weights; 4: grouped panels and k blocks of 1024; 5: concats assembled by their producers;
/// 6: embedding projections folded into their tables; 7: paired rounds, [`decide`]), so that a
/// choice measured on older kernels or by an older rule is measured again.
const CACHE_VERSION: u32 = 7;
/// Timing rounds (each times every candidate once, and `single` twice). The medians over five
/// rounds ignore up to two rounds that a burst of other work on the machine spoiled.
const ROUNDS: usize = 5;
/// Most time one round of one candidate at one batch size may take.
const ROUND_TIME: Duration = Duration::from_millis(60);

/// What measured `auto` is asked to do.
pub struct TuneRequest<'a> {
    /// Where the engines run (the backend resolved: not `auto`).
    pub target: &'a Target,
    /// The model (random batches are drawn from it).
    pub spec: &'a ModelSpec,
    /// Its operator graph.
    pub graph: &'a OpGraph,
    /// The plan options `auto` starts from (streams, fusion, cost model).
    pub plan: &'a PlanOptions,
    /// The batch sizes timed (the first three).
    pub batches: &'a [usize],
    /// The weights every candidate is built with.
    pub weights: &'a Weights,
    /// Read a cached choice (a fresh choice is cached either way).
    pub use_cache: bool,
    /// The cache folder (None: nothing is cached).
    pub cache_dir: Option<&'a Path>,
    /// Where the choice and progress are reported.
    pub notes: Option<NoteSink<'a>>,
}

/// What measured `auto` reports while it decides.
#[derive(Debug)]
pub enum Note<'a> {
    /// The choice was read from the cache.
    Cached {
        /// The choice.
        choice: &'a Candidate,
        /// The cache file.
        path: &'a Path,
    },
    /// Candidates are about to be timed.
    Timing {
        /// How many.
        plans: usize,
        /// At which batch sizes.
        batches: &'a [usize],
        /// On up to this many streams.
        streams: usize,
    },
    /// The measured choice.
    Chosen {
        /// The choice.
        choice: &'a Candidate,
        /// Each candidate's label and p50 relative to `single`.
        ratios: &'a [(String, f64)],
        /// The noise floor, as a fraction.
        noise: f64,
    },
    /// The choice could not be written to the cache.
    NotCached {
        /// The cache file.
        path: &'a Path,
        /// Why.
        error: &'a std::io::Error,
    },
}

/// Receives what measured `auto` reports (its choice, that it is timing, a cache it could
/// not write).
pub type NoteSink<'a> = &'a (dyn Fn(&Note<'_>) + 'a);

impl Note<'_> {
    /// True for a problem worth reporting even to a caller that wants no progress.
    pub fn is_warning(&self) -> bool {
        matches!(self, Note::NotCached { .. })
    }
}

impl fmt::Display for Note<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Note::Cached { choice, path } => write!(
                f,
                "auto: {} (cached choice in {})",
                choice.label(),
                path.display()
            ),
            Note::Timing {
                plans,
                batches,
                streams,
            } => write!(
                f,
                "auto: timing {plans} plans at batch {batches:?} on up to {streams} stream(s) (cached for the next run) ..."
            ),
            Note::Chosen {
                choice,
                ratios,
                noise,
            } => {
                let table: Vec<String> =
                    ratios.iter().map(|(l, r)| format!("{l} {r:.2}x")).collect();
                write!(
                    f,
                    "auto: {} (p50 relative to single: {}; noise floor {:.1}%)",
                    choice.label(),
                    table.join(", "),
                    noise * 100.0
                )
            }
            Note::NotCached { path, error } => write!(
                f,
                "auto: could not cache the choice in {}: {error}",
                path.display()
            ),
        }
    }
}

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
    pub fn plan_opts(&self, base: &PlanOptions) -> BuildResult<PlanOptions> {
        let algo: Algorithm = self
            .algo
            .parse()
            .map_err(|source| BuildError::CachedChoice {
                algo: self.algo.clone(),
                source,
            })?;
        Ok(PlanOptions {
            algo,
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

/// The usual folder of cached choices, from the environment `var` reads (the caller's, e.g.
/// `std::env::var_os`): `$STREAMREC_CACHE_DIR`, else `$XDG_CACHE_HOME/streamrec`, else
/// `~/.cache/streamrec`; None when no home is known.
pub fn cache_dir_in(var: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let env = |k: &str| var(k).filter(|v| !v.is_empty()).map(PathBuf::from);
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
fn cache_key(target: &Target, spec: &ModelSpec, plan: &PlanOptions, batches: &[usize]) -> String {
    format!(
        "v{CACHE_VERSION}|streamrec {}|{}|{}|streams<={}|fuse={:?}|device={:?}|costs={:?}|cpu-threads={}|cpu-fold={}|cpu-isa={:?}|tf32={}|graphs={}|batches={batches:?}|{spec:?}",
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
        target.opts.cpu_fold,
        target.opts.cpu_isa,
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
    plan: &PlanOptions,
    k: usize,
    batch: usize,
) -> BuildResult<Vec<Candidate>> {
    let mut out = vec![Candidate::new(Algorithm::Single, 1, None)];
    if k < 2 {
        return Ok(out);
    }
    let capped = PlanOptions {
        algo: Algorithm::Auto,
        streams: k,
        label: None,
        ..plan.clone()
    };
    let sim = target.plan(graph, &capped, batch)?;
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
fn time_round(built: &Built, inputs: &[Vec<ValidatedBatch>]) -> BuildResult<Vec<f64>> {
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

/// The plan options `auto` resolves to for the request's target, model and batch sizes (at
/// most three are timed): from the cache, or measured now and cached.
pub fn tune(req: &TuneRequest<'_>) -> BuildResult<PlanOptions> {
    let note = |n: Note<'_>| {
        if let Some(sink) = req.notes {
            sink(&n);
        }
    };
    let (target, plan) = (req.target, req.plan);
    let batches: Vec<usize> = req.batches.iter().copied().take(3).collect();
    let key = cache_key(target, req.spec, plan, &batches);
    let path = req
        .cache_dir
        .map(|d| d.join(format!("auto-{:016x}.json", fnv1a(&key))));
    if let (Some(p), true) = (&path, req.use_cache) {
        if let Some(c) = read_cache(p, &key) {
            note(Note::Cached {
                choice: &c.choice,
                path: p,
            });
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
    let cands = candidates(target, req.graph, plan, k, batches[0])?;
    let max_batch = batches.iter().copied().max().unwrap_or(1);
    let tune_target = Target {
        backend: target.backend,
        opts: target.opts,
        cfg: EngineConfig {
            contexts: 1,
            max_batch,
            graphs: target.cfg.graphs,
            trace: false,
        },
    };
    let inputs: Vec<Vec<ValidatedBatch>> = batches
        .iter()
        .map(|&b| {
            (0..2)
                .map(|i| {
                    ValidatedBatch::new(random_batch(req.spec, b, Skew::Uniform, 7 + i), req.spec)
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .collect::<Result<_, _>>()?;
    let (choice, ratios, noise) = if cands.len() == 1 {
        (cands[0].clone(), vec![(cands[0].label(), 1.0)], 0.0)
    } else {
        note(Note::Timing {
            plans: cands.len(),
            batches: &batches,
            streams: k,
        });
        let build = |opts: &PlanOptions| tune_target.build(req.graph, opts, max_batch, req.weights);
        let single = build(&cands[0].plan_opts(plan)?)?;
        let mut built = Vec::with_capacity(cands.len() - 1);
        for c in &cands[1..] {
            built.push(build(&c.plan_opts(plan)?)?);
        }
        let mut rounds = Vec::with_capacity(ROUNDS);
        for r in 0..ROUNDS {
            let first = time_round(&single, &inputs)?;
            // Each round starts at another candidate, so none always sits next to `single`.
            let mut cand = vec![Vec::new(); built.len()];
            for j in 0..built.len() {
                let c = (j + r) % built.len();
                cand[c] = time_round(&built[c], &inputs)?;
            }
            let last = time_round(&single, &inputs)?;
            rounds.push(RoundTimes {
                single: [first, last],
                cands: cand,
            });
        }
        let d = decide(&rounds);
        let ratios = cands
            .iter()
            .zip(&d.ratios)
            .map(|(c, &r)| (c.label(), r))
            .collect();
        (cands[d.pick].clone(), ratios, d.noise)
    };
    note(Note::Chosen {
        choice: &choice,
        ratios: &ratios,
        noise,
    });
    if let Some(p) = &path {
        let c = Cached {
            version: CACHE_VERSION,
            key,
            choice: choice.clone(),
            ratios,
            noise_floor: noise,
        };
        if let Err(error) = write_cache(p, &c) {
            note(Note::NotCached {
                path: p,
                error: &error,
            });
        }
    }
    choice.plan_opts(plan)
}

/// The p50s of one timing round, per batch size: `single` at the round's start and at its end,
/// and each candidate in between (`cands[c][i]`: candidate `c` at batch size `i`).
#[derive(Clone, Debug)]
struct RoundTimes {
    single: [Vec<f64>; 2],
    cands: Vec<Vec<f64>>,
}

/// What [`decide`] makes of the rounds.
#[derive(Debug, PartialEq)]
struct Decision {
    /// 0 for `single`, `c + 1` for candidate `c`.
    pick: usize,
    /// `single` (1.0) and then each candidate: the median over the rounds of its p50 over the
    /// geometric mean of the two `single` timings around it, geometric mean over batch sizes
    /// (< 1: faster).
    ratios: Vec<f64>,
    /// The noise floor: per batch size, the median over the rounds of how far `single` moved from
    /// the round's start to its end (`|ln(end / start)|`, as a fraction); the largest over batch
    /// sizes.
    noise: f64,
}

/// Picks from paired rounds: the candidate with the lowest ratio to `single` wins when that ratio
/// is below `1 - noise`, else `single` does.
fn decide(rounds: &[RoundTimes]) -> Decision {
    let n_cands = rounds.first().map_or(0, |r| r.cands.len());
    let n_batches = rounds.first().map_or(0, |r| r.single[0].len());
    let geo_mean = |v: &[f64]| -> f64 {
        if v.is_empty() {
            return 1.0;
        }
        (v.iter().map(|x| x.ln()).sum::<f64>() / v.len() as f64).exp()
    };
    let noise = (0..n_batches)
        .map(|i| {
            let drift: Vec<f64> = rounds
                .iter()
                .map(|r| (r.single[1][i] / r.single[0][i]).ln().abs())
                .collect();
            median(&drift).exp_m1()
        })
        .fold(0.0, f64::max);
    let mut ratios = vec![1.0];
    let mut pick = (0usize, 1.0f64);
    for c in 0..n_cands {
        let per_batch: Vec<f64> = (0..n_batches)
            .map(|i| {
                let r: Vec<f64> = rounds
                    .iter()
                    .map(|r| r.cands[c][i] / (r.single[0][i] * r.single[1][i]).sqrt())
                    .collect();
                median(&r)
            })
            .collect();
        let ratio = geo_mean(&per_batch);
        ratios.push(ratio);
        if ratio < pick.1 {
            pick = (c + 1, ratio);
        }
    }
    // Only a win larger than the noise floor replaces the baseline.
    let pick = if pick.1 < 1.0 - noise { pick.0 } else { 0 };
    Decision {
        pick,
        ratios,
        noise,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rounds at one batch size: `single` at each round's start and end, and the candidates.
    fn rounds(single: &[(f64, f64)], cands: &[&[f64]]) -> Vec<RoundTimes> {
        single
            .iter()
            .enumerate()
            .map(|(r, &(a, b))| RoundTimes {
                single: [vec![a], vec![b]],
                cands: cands.iter().map(|c| vec![c[r]]).collect(),
            })
            .collect()
    }

    const STEADY: [(f64, f64); 5] = [
        (100.0, 101.0),
        (101.0, 100.0),
        (100.0, 100.5),
        (99.5, 100.0),
        (100.0, 99.0),
    ];

    #[test]
    fn a_clear_win_is_picked_and_a_tie_or_a_loss_is_not() {
        let d = decide(&rounds(&STEADY, &[&[80.0, 81.0, 79.0, 80.0, 80.5]]));
        assert_eq!(d.pick, 1, "{d:?}");
        assert!((d.ratios[1] - 0.8).abs() < 0.01, "{d:?}");
        assert!(d.noise > 0.004 && d.noise < 0.011, "{d:?}");
        let tie = decide(&rounds(&STEADY, &[&[99.5, 100.5, 100.0, 99.8, 100.2]]));
        assert_eq!(tie.pick, 0, "{tie:?}");
        let loss = decide(&rounds(&STEADY, &[&[110.0, 111.0, 109.0, 110.0, 110.5]]));
        assert_eq!(loss.pick, 0, "{loss:?}");
        assert!(loss.ratios[1] > 1.08, "{loss:?}");
    }

    #[test]
    fn the_fastest_of_several_wins() {
        let d = decide(&rounds(
            &STEADY,
            &[
                &[90.0, 90.0, 91.0, 90.0, 90.0],
                &[80.0, 80.0, 81.0, 80.0, 80.0],
                &[120.0, 120.0, 120.0, 120.0, 120.0],
            ],
        ));
        assert_eq!(d.pick, 2, "{d:?}");
        assert_eq!(d.ratios.len(), 4);
    }

    #[test]
    fn a_burst_in_one_round_does_not_hide_a_win() {
        // The machine ran at half speed for part of round 2: the candidate and the closing
        // `single` were slowed. Taking the spread of all single timings as the floor (100%
        // here) would keep `single`; the paired medians see the 20% win.
        let mut single = STEADY;
        single[2] = (100.0, 200.0);
        let d = decide(&rounds(&single, &[&[80.0, 80.0, 160.0, 80.0, 80.0]]));
        assert_eq!(d.pick, 1, "{d:?}");
        assert!(d.noise < 0.011, "{d:?}");
    }

    #[test]
    fn a_win_inside_the_noise_floor_keeps_single() {
        // `single` moves by about 30% within most rounds: a 10% win is not believed.
        let single = [
            (100.0, 130.0),
            (130.0, 100.0),
            (100.0, 128.0),
            (100.0, 100.0),
            (125.0, 100.0),
        ];
        let d = decide(&rounds(&single, &[&[103.0, 103.0, 102.0, 90.0, 100.0]]));
        assert!(d.ratios[1] < 0.95, "{d:?}");
        assert!(d.noise > 0.2, "{d:?}");
        assert_eq!(d.pick, 0, "{d:?}");
    }

    #[test]
    fn a_candidate_is_compared_with_the_singles_around_it() {
        // The machine sped up steadily through each round (100 -> 80 -> 64): a candidate as fast
        // as `single`, timed in the middle, reads 1.0x, not 0.8x against the round's first
        // `single` or 1.25x against its last.
        let d = decide(&rounds(&[(100.0, 64.0); 5], &[&[80.0; 5]]));
        assert!((d.ratios[1] - 1.0).abs() < 1e-9, "{d:?}");
        assert_eq!(d.pick, 0);
    }

    #[test]
    fn batch_sizes_combine_by_geometric_mean() {
        // 0.5x at one size and 1.6x at the other: the geometric mean is 0.89x.
        let r: Vec<RoundTimes> = (0..5)
            .map(|_| RoundTimes {
                single: [vec![100.0, 10.0], vec![100.0, 10.0]],
                cands: vec![vec![50.0, 16.0]],
            })
            .collect();
        let d = decide(&r);
        assert!((d.ratios[1] - 0.8f64.sqrt()).abs() < 1e-9, "{d:?}");
        assert_eq!(d.pick, 1);
        assert_eq!(d.noise, 0.0);
    }

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
