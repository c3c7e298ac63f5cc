//! `cargo xtask bench`: the CPU engine experiments, measured side by side in one process.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use streamrec_graph::{
    assign, simulate, Algorithm, AssignConfig, CostModel, DeviceProfile, MeasuredCosts, ModelSpec,
    OpGraph, Plan, Planned, SimMode,
};
use streamrec_runtime::builder::{Built, EngineBuilder};
use streamrec_runtime::calibrate;
use streamrec_runtime::gen::{random_batch, Skew};
use streamrec_runtime::stats::LatencySummary;
use streamrec_runtime::BackendKind;
use streamrec_runtime::{measure, Batch, EngineConfig, Infer, MeasureConfig, Weights};

use crate::common::{spread, today};

struct Opts {
    quick: bool,
    out: PathBuf,
    row_cap: usize,
    /// The serving experiment; None with --no-serve.
    serving: Option<crate::serving::Opts>,
    /// `--peer onnxruntime`: ONNX Runtime checked and timed beside the engine.
    peer: bool,
}

fn parse(args: &[String]) -> Result<Opts> {
    let quick = args.iter().any(|a| a == "--quick");
    let mut o = Opts {
        quick,
        out: PathBuf::from("results").join(format!("{}-cpu", today())),
        row_cap: 100_000,
        serving: None,
        peer: false,
    };
    let mut serving =
        crate::serving::Opts::new(quick, crate::serving::default_root(), PathBuf::new());
    let mut no_serve = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => {}
            "--no-serve" => no_serve = true,
            "--peer" => match it.next().map(String::as_str) {
                Some("onnxruntime") => o.peer = true,
                Some(p) => bail!("--peer: unknown peer `{p}` (known: onnxruntime)"),
                None => bail!("--peer needs a peer name (onnxruntime)"),
            },
            "--out" => o.out = PathBuf::from(it.next().context("--out needs a folder")?),
            "--row-cap" => {
                o.row_cap = it
                    .next()
                    .context("--row-cap needs a number")?
                    .parse()
                    .context("--row-cap needs a number")?
            }
            x => {
                if !serving.take(x, &mut it)? {
                    bail!("bench: unknown option `{x}`\n{}", crate::serving::HELP);
                }
            }
        }
    }
    if !no_serve {
        serving.out = o.out.clone();
        o.serving = Some(serving);
    }
    Ok(o)
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

struct Model {
    spec: ModelSpec,
    graph: OpGraph,
    weights: Weights,
}

fn load(name: &str, cap: Option<usize>) -> Result<Model> {
    let p = workspace().join("workloads").join(name);
    let spec = ModelSpec::load(&p, cap).with_context(|| p.display().to_string())?;
    let graph = OpGraph::from_spec(&spec);
    let weights = Weights::for_graph(&graph)?;
    Ok(Model {
        spec,
        graph,
        weights,
    })
}

fn batches(spec: &ModelSpec, b: usize) -> Vec<Arc<Batch>> {
    (0..4)
        .map(|i| Arc::new(random_batch(spec, b, Skew::Uniform, 17 + i)))
        .collect()
}

/// An engine on the CPU backend (every core) over the model's weights.
fn cpu_engine(m: &Model, graph: &OpGraph, plan: Plan, cfg: EngineConfig) -> Result<Box<dyn Infer>> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Ok(built_on(cores, m, graph.clone(), plan, cfg)?.engine)
}

/// An engine on a CPU pool of `threads` over the model's weights, built by the runtime's
/// builder for a given plan.
fn built_on(
    threads: usize,
    m: &Model,
    graph: OpGraph,
    plan: Plan,
    cfg: EngineConfig,
) -> Result<Built> {
    Ok(EngineBuilder::new(&m.spec)
        .weights(&m.weights)
        .backend(BackendKind::Cpu)
        .threads(threads)
        .engine_config(cfg)
        .load(Planned { graph, plan })?)
}

/// `m` planned with `algo` on at most `k` streams for batch `b`, on a CPU pool of `threads`.
fn pool_engine(
    m: &Model,
    algo: Algorithm,
    k: usize,
    threads: usize,
    b: usize,
    cost: &CostModel,
) -> Result<Built> {
    let planned = plan_for(&m.graph, algo, k, b, cost)?;
    built_on(
        threads,
        m,
        planned.graph,
        planned.plan,
        engine_cfg(b, 1, false),
    )
}

fn engine_cfg(b: usize, contexts: usize, trace: bool) -> EngineConfig {
    EngineConfig {
        contexts,
        max_batch: b,
        graphs: false,
        trace,
        validate: true,
    }
}

/// Runs an engine for about `budget` (at most 400 timed requests) on `input`.
fn time_engine(
    engine: &dyn Infer,
    contexts: usize,
    input: &[Arc<Batch>],
    budget: Duration,
) -> Result<LatencySummary> {
    Ok(measure(
        engine,
        input,
        &MeasureConfig {
            warmup: contexts,
            iters: 400,
            threads: contexts,
            max_time: Some(budget),
            progress: None,
        },
    )?)
}

/// Time per configuration (over all its rounds) at batch `b`: enough requests per round at
/// the large batches too.
fn budget_for(quick: bool, b: usize) -> Duration {
    Duration::from_millis(match (quick, b) {
        (true, _) => 150,
        (false, 0..=16) => 900,
        (false, 17..=256) => 1500,
        _ => 3000,
    })
}

/// One engine's figures: the median over the rounds, and each round's own.
struct Timed {
    median: LatencySummary,
    rounds: Vec<LatencySummary>,
}

impl Timed {
    /// The p50 of each round, in order.
    fn p50s(&self) -> Vec<f64> {
        self.rounds.iter().map(|r| r.p50_us).collect()
    }
}

/// A ratio against the baseline, read with the run's noise floor: within it, "no difference".
fn verdict(ratio: f64, noise: f64) -> &'static str {
    if (ratio - 1.0).abs() <= noise {
        "no difference"
    } else if ratio > 1.0 {
        "faster"
    } else {
        "slower"
    }
}

/// Times every engine in `rounds` interleaved rounds, so that machine noise spreads over all of
/// them alike, and keeps the median of each figure over the rounds (and every round).
fn time_side_by_side(
    engines: &[(&dyn Infer, usize)],
    input: &[Arc<Batch>],
    budget: Duration,
    rounds: usize,
    tick: impl FnMut(),
) -> Result<Vec<Timed>> {
    time_rounds(engines, input, budget, rounds, tick, |_| Ok(()))
}

/// [`time_side_by_side`], calling `between(round)` after each round (a peer's round).
fn time_rounds(
    engines: &[(&dyn Infer, usize)],
    input: &[Arc<Batch>],
    budget: Duration,
    rounds: usize,
    mut tick: impl FnMut(),
    mut between: impl FnMut(usize) -> Result<()>,
) -> Result<Vec<Timed>> {
    let mut per: Vec<Vec<LatencySummary>> = vec![Vec::new(); engines.len()];
    let n = engines.len();
    for r in 0..rounds {
        // Each round starts at a different engine, so no engine always runs first.
        for j in 0..n {
            let i = (j + r * n.div_ceil(rounds)) % n;
            let (e, contexts) = engines[i];
            per[i].push(time_engine(e, contexts, input, budget / rounds as u32)?);
            tick();
        }
        between(r)?;
    }
    Ok(per
        .into_iter()
        .map(|v| Timed {
            median: LatencySummary::median_of(&v),
            rounds: v,
        })
        .collect())
}

/// Plans `graph` with `algo` on at most `k` streams for eager execution at batch `b`.
fn plan_for(
    graph: &OpGraph,
    algo: Algorithm,
    k: usize,
    b: usize,
    cost: &CostModel,
) -> Result<streamrec_graph::Planned> {
    let cfg = AssignConfig {
        algo,
        max_streams: k,
        batch: b,
        mode: SimMode::Eager,
        fuse: None,
    };
    Ok(assign(graph, &cfg, cost)?)
}

/// The plan measured `auto` picks for `m` at batch `b` (timed now, not from a cache), replanned
/// with `cost`; and the most streams it could use.
fn measured_auto(
    m: &Model,
    b: usize,
    cost: &CostModel,
) -> Result<(usize, streamrec_graph::Planned)> {
    use streamrec_runtime::builder::{EngineBuilder, PlanOptions};
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Timed now (a cached choice is not read; the new one is cached as `run` would).
    let warn = |n: &streamrec_runtime::tune::Note<'_>| {
        if n.is_warning() {
            eprintln!("{n}");
        }
    };
    let tuned = EngineBuilder::new(&m.spec)
        .weights(&m.weights)
        .backend(BackendKind::Cpu)
        .contexts(1)
        .max_batch(b)
        .plan_options(PlanOptions {
            algo: Algorithm::Auto,
            streams: cores,
            ..PlanOptions::default()
        })
        .tune_batches(&[b])
        .retune(true)
        .cache_dir(streamrec_runtime::tune::cache_dir_in(|k| {
            std::env::var_os(k)
        }))
        .notes(Some(&warn))
        .tuned()?;
    let chosen = tuned.plan_opts().clone();
    let cfg = AssignConfig {
        algo: chosen.algo,
        max_streams: chosen.streams,
        batch: b,
        mode: SimMode::Eager,
        fuse: chosen.fuse,
    };
    let mut planned = assign(&m.graph, &cfg, cost)?;
    planned.plan.algo = chosen.label.unwrap_or_else(|| "auto".into());
    Ok((cores, planned))
}

/// Per-op medians of a single-stream run: the calibration of the `cpu` profile.
fn profile(m: &Model, input: &[Arc<Batch>], budget: Duration) -> Result<MeasuredCosts> {
    let b = input[0].size;
    let engine = cpu_engine(m, &m.graph, Plan::single(&m.graph), engine_cfg(b, 1, true))?;
    time_engine(engine.as_ref(), 1, input, budget)?;
    let events = engine.take_trace();
    let mut costs = MeasuredCosts {
        device: "cpu (measured by cargo xtask bench)".into(),
        ..Default::default()
    };
    streamrec_runtime::trace::record_op_medians(&mut costs, &events, b);
    Ok(costs)
}

/// The header of peer.csv.
const PEER_CSV_HEADER: &str = "model,batch,streamrec_best_config,streamrec_best_p50_us,streamrec_auto_p50_us,onnxruntime_best_setting,onnxruntime_p50_us,onnxruntime_settings_p50_us,streamrec_best_to_ort,streamrec_auto_to_ort,streamrec_best_to_ort_per_round,streamrec_auto_to_ort_per_round,ort_max_abs_error\n";

/// The header of the ONNX Runtime peer table.
const PEER_HEADER: &str = "model          batch  StreamRec best config     p50 us   auto p50 us  ORT setting      ORT p50 us  best/ORT  auto/ORT  best/ORT per round  auto/ORT per round  max |err|\n";

/// StreamRec's side of the peer table at one batch size.
#[derive(Clone, Debug, Default)]
struct BestRow {
    batch: usize,
    /// The fastest configuration, and its p50 (the median over the rounds).
    config: String,
    p50: f64,
    /// Measured `auto`'s p50.
    auto: Option<f64>,
    /// The p50 of each round, in order: the fastest configuration's and `auto`'s.
    best_rounds: Vec<f64>,
    auto_rounds: Vec<f64>,
}

/// `a / b` round by round, for two series timed in the same interleaved rounds (as many rounds
/// as both have): the ratio's own spread, where the two sides saw the same host in each round.
fn per_round(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x / y).collect()
}

/// `min-max` of per-round ratios, or `-` without any.
fn ratio_range(v: &[f64]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{lo:.2}-{hi:.2}x")
}

/// Adds one model's peer rows (one per batch size) to peer.csv and the table.
fn peer_rows(
    model: &str,
    best_rows: &[BestRow],
    outcome: &crate::peer::PeerOutcome,
    csv: &mut String,
    table: &mut String,
) {
    let crate::peer::PeerOutcome::Timed {
        batches,
        max_abs_error,
        version,
    } = outcome
    else {
        if let crate::peer::PeerOutcome::Skipped(why) = outcome {
            let _ = writeln!(table, "{model:<13} skipped: {why}");
        }
        return;
    };
    for row in best_rows {
        let (b, cfg, p50, auto) = (&row.batch, &row.config, &row.p50, &row.auto);
        let Some(ort) = batches.iter().find(|x| x.batch == *b) else {
            continue;
        };
        let best_per_round = per_round(&row.best_rounds, &ort.rounds);
        let auto_per_round = per_round(&row.auto_rounds, &ort.rounds);
        let joined = |v: &[f64]| {
            v.iter()
                .map(|r| format!("{r:.3}"))
                .collect::<Vec<_>>()
                .join(";")
        };
        let settings: Vec<String> = ort
            .settings
            .iter()
            .map(|(k, v)| format!("{k}={v:.1}"))
            .collect();
        let ratio = p50 / ort.p50_us;
        let auto_ratio = auto.map(|a| a / ort.p50_us);
        let opt = |v: Option<f64>, prec: usize| v.map_or(String::new(), |v| format!("{v:.prec$}"));
        let _ = writeln!(
            csv,
            "{model},{b},{cfg},{p50:.1},{},{},{:.1},{},{ratio:.3},{},{},{},{max_abs_error:.3e}",
            opt(*auto, 1),
            ort.best,
            ort.p50_us,
            settings.join(";"),
            opt(auto_ratio, 3),
            joined(&best_per_round),
            joined(&auto_per_round),
        );
        let _ = writeln!(
            table,
            "{model:<13} {b:>6}  {cfg:<22} {p50:>10.1} {:>13}  {:<14} {:>10.1} {ratio:>8.2}x {:>9} {:>19} {:>19} {max_abs_error:>10.2e}",
            opt(*auto, 1),
            ort.best,
            ort.p50_us,
            auto_ratio.map_or("-".into(), |r| format!("{r:.2}x")),
            ratio_range(&best_per_round),
            ratio_range(&auto_per_round),
        );
    }
    let _ = writeln!(
        table,
        "{model:<13} onnxruntime {version}: every score within {max_abs_error:.2e} of the engine's"
    );
}

/// Runs the experiments.
pub fn run(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    std::fs::create_dir_all(&o.out).with_context(|| o.out.display().to_string())?;
    std::fs::write(o.out.join("machine.txt"), crate::peer::machine_txt())?;
    // The ONNX Runtime peer: said once when it cannot run, and its column skipped.
    let mut peer = o.peer;
    if peer {
        if let Err(why) = crate::peer::probe() {
            eprintln!("--peer onnxruntime: skipped: {why}");
            peer = false;
        }
    }
    let mut peer_csv = String::from(PEER_CSV_HEADER);
    let mut peer_table = String::new();
    let models: Vec<(&str, Option<usize>)> = if o.quick {
        vec![("tiny.toml", None)]
    } else {
        vec![("tiny.toml", None), ("streamrec-26.toml", Some(o.row_cap))]
    };
    let sizes: &[usize] = if o.quick {
        &[1, 16]
    } else {
        &[1, 16, 128, 1024]
    };
    let ks = [1usize, 2, 4, 8];
    let total = (models.len() * sizes.len() * (Algorithm::ALL.len() * ks.len() + 1) * 3) as u64;
    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} {elapsed_precise} {msg}")
            .expect("valid template"),
    );
    let mut csv = String::from("model,batch,algo,streams_max,streams,waits,p50_us,p99_us,samples_per_s,ratio_p50_to_single,ratio_throughput_to_single,noise_floor,verdict,predicted_ratio\n");
    let mut pred_csv = String::from("model,batch,algo,streams,measured_single_us,measured_us,measured_ratio,predicted_single_us,predicted_us,predicted_ratio,noise_floor,within_25pct\n");
    let mut noise_table = String::new();
    let mut table = String::new();
    bar.set_message("calibrating the cpu profile");
    let cpu = calibrate::cpu_profile(DeviceProfile::cpu())?;
    std::fs::write(o.out.join("cpu-profile.toml"), cpu.to_toml_string())?;
    bar.suspend(|| {
        eprintln!(
            "cpu profile calibrated: launch {:.2} us, per-op gap {:.2} us, event {:.2} us, wake {:.2} us, sync {:.2} us",
            cpu.launch_us, cpu.graph_node_us, cpu.event_us, cpu.wake_us, cpu.sync_us
        )
    });
    let mut pred_table = String::new();
    let mut auto_lines: Vec<String> = Vec::new();
    let mut pages: Vec<(String, String)> = Vec::new();
    for (name, cap) in &models {
        bar.set_message(format!("loading {name}"));
        let m = load(name, *cap)?;
        // The ONNX Runtime peer: exported and checked once, then timed in rounds interleaved
        // with the engine's, so both see the same machine conditions.
        let mut ort = None;
        if peer {
            bar.set_message(format!("{}: onnxruntime peer (export, check)", m.spec.name));
            let input: Vec<Arc<Batch>> = sizes.iter().flat_map(|&b| batches(&m.spec, b)).collect();
            match crate::peer::OrtServer::start(&m.graph, &m.weights, &input, None)? {
                Ok(s) => ort = Some(s),
                Err(why) => {
                    bar.suspend(|| eprintln!("{}: onnxruntime peer skipped: {why}", m.spec.name));
                    peer_rows(
                        &m.spec.name,
                        &[],
                        &crate::peer::PeerOutcome::Skipped(why),
                        &mut peer_csv,
                        &mut peer_table,
                    );
                }
            }
        }
        // Per batch size: the best engine row (config, p50) and the best `auto` row's p50.
        let mut best_rows: Vec<BestRow> = Vec::new();
        // The plan view of this workload (every algorithm at batch 128, K = 4, the calibrated
        // cpu profile), linked from report.md.
        let page = streamrec_graph::html::page(
            &m.graph,
            &CostModel::new(cpu.clone()),
            &streamrec_graph::html::Options {
                batch: 128,
                max_streams: 4,
                fuse: None,
                measured: None,
                selected: Some("streamrec"),
            },
        )?;
        let page_name = format!("plan-{}.html", m.spec.name);
        std::fs::write(o.out.join(&page_name), page)?;
        pages.push((m.spec.name.clone(), page_name));
        for &b in sizes {
            let input = batches(&m.spec, b);
            let budget = budget_for(o.quick, b);
            bar.set_message(format!("{} batch {b}: calibrating", m.spec.name));
            let costs = profile(&m, &input, budget)?;
            let cost = CostModel::new(cpu.clone()).with_measured(costs);
            // Plan every configuration, then time them all side by side.
            let mut configs = Vec::new();
            for &k in &ks {
                for algo in Algorithm::ALL {
                    let planned = plan_for(&m.graph, algo, k, b, &cost)?;
                    let pred = simulate(&planned.graph, &planned.plan, &cost, b, SimMode::Eager)
                        .latency_us;
                    let (streams, waits) = (planned.plan.num_streams(), planned.plan.num_waits());
                    let engine =
                        cpu_engine(&m, &planned.graph, planned.plan, engine_cfg(b, 1, false))?;
                    configs.push((algo, k, streams, waits, pred, engine));
                }
            }
            // Measured `auto`, the default of `run` and `serve`, chosen afresh at this batch
            // size as `run` would (candidates on up to the machine's cores, the fastest kept only
            // beyond single's noise floor).
            bar.set_message(format!("{} batch {b}: measured auto", m.spec.name));
            let (auto_k, planned) = measured_auto(&m, b, &cost)?;
            let line = format!(
                "{} batch {b}: measured auto picked {} ({} stream(s), {} waits)",
                m.spec.name,
                planned.plan.algo,
                planned.plan.num_streams(),
                planned.plan.num_waits()
            );
            bar.suspend(|| eprintln!("{line}"));
            auto_lines.push(line);
            let pred = simulate(&planned.graph, &planned.plan, &cost, b, SimMode::Eager).latency_us;
            let (streams, waits) = (planned.plan.num_streams(), planned.plan.num_waits());
            let engine = cpu_engine(&m, &planned.graph, planned.plan, engine_cfg(b, 1, false))?;
            configs.push((Algorithm::Auto, auto_k, streams, waits, pred, engine));
            bar.set_message(format!(
                "{} batch {b}: timing {} plans",
                m.spec.name,
                configs.len()
            ));
            let engines: Vec<(&dyn Infer, usize)> =
                configs.iter().map(|c| (c.5.as_ref(), 1)).collect();
            let rounds = 3;
            let per_round_ms = (budget / rounds as u32).as_millis() as u64;
            let results = time_rounds(
                &engines,
                &input,
                budget,
                rounds,
                || bar.inc(1),
                |_| match ort.as_mut() {
                    Some(o) => o.round(b, per_round_ms.max(1)),
                    None => Ok(()),
                },
            )?;
            // The baseline: `single` is planned once per K (the same plan each time); the median
            // of those runs is steadier than any one of them.
            let singles: Vec<&Timed> = configs
                .iter()
                .zip(&results)
                .filter(|(c, _)| c.0 == Algorithm::Single)
                .map(|(_, t)| t)
                .collect();
            let base = &LatencySummary::median_of(
                &singles.iter().map(|t| t.median.clone()).collect::<Vec<_>>(),
            );
            // The noise floor: the spread of p50 over every round of the identical `single`
            // plans (one per K); a ratio closer to 1 than this is no difference.
            let single_p50s: Vec<f64> = singles.iter().flat_map(|t| t.p50s()).collect();
            let noise = spread(&single_p50s);
            let _ = writeln!(
                noise_table,
                "{:<13} {b:>5}: {} runs of the same single plan, p50 {:.1}..{:.1} us, noise floor {:.1}%",
                m.spec.name,
                single_p50s.len(),
                single_p50s.iter().copied().fold(f64::INFINITY, f64::min),
                single_p50s.iter().copied().fold(0.0, f64::max),
                noise * 100.0
            );
            let single_pred = configs[0].4;
            let mut best: Option<BestRow> = None;
            let mut auto: Option<(f64, Vec<f64>)> = None;
            for ((algo, k, ..), t) in configs.iter().zip(&results) {
                let p50 = t.median.p50_us;
                if best.as_ref().is_none_or(|b| p50 < b.p50) {
                    best = Some(BestRow {
                        batch: b,
                        config: format!("{algo} x{k}"),
                        p50,
                        best_rounds: t.p50s(),
                        ..BestRow::default()
                    });
                }
                if *algo == Algorithm::Auto && auto.as_ref().is_none_or(|a| p50 < a.0) {
                    auto = Some((p50, t.p50s()));
                }
            }
            if let Some(mut row) = best {
                if let Some((p50, rounds)) = auto {
                    row.auto = Some(p50);
                    row.auto_rounds = rounds;
                }
                best_rows.push(row);
            }
            for ((algo, k, streams, waits, pred, _), t) in configs.iter().zip(&results) {
                let s = &t.median;
                let (algo, k, streams, waits, pred) = (*algo, *k, *streams, *waits, *pred);
                let algo_name = algo.to_string();
                let r_lat = base.p50_us / s.p50_us;
                let r_tput = s.samples_per_s / base.samples_per_s;
                let r_pred = single_pred / pred;
                let v = verdict(r_lat, noise);
                let _ = writeln!(
                    csv,
                    "{},{b},{algo},{k},{streams},{waits},{:.1},{:.1},{:.1},{r_lat:.3},{r_tput:.3},{noise:.3},{v},{r_pred:.3}",
                    m.spec.name, s.p50_us, s.p99_us, s.samples_per_s
                );
                let _ = writeln!(
                    table,
                    "{:<13} {b:>5} {algo_name:>13} {k:>2} {streams:>3} {waits:>5} {:>11.1} {:>11.1} {:>12.1} {r_lat:>7.2}x {v:>13} {r_pred:>7.2}x",
                    m.spec.name, s.p50_us, s.p99_us, s.samples_per_s
                );
                if k >= 2
                    && matches!(
                        algo,
                        Algorithm::StreamRec | Algorithm::Nimble | Algorithm::CriticalPath
                    )
                {
                    // A 25% check means nothing where the run's own noise is 25% or more.
                    let decidable = noise < 0.25;
                    let ok = (r_lat / r_pred - 1.0).abs() <= 0.25;
                    let _ = writeln!(
                        pred_csv,
                        "{},{b},{algo},{streams},{:.1},{:.1},{r_lat:.3},{single_pred:.1},{pred:.1},{r_pred:.3},{noise:.3},{}",
                        m.spec.name,
                        base.p50_us,
                        s.p50_us,
                        if decidable { ok.to_string() } else { "inside noise".into() }
                    );
                    let _ = writeln!(
                        pred_table,
                        "{:<13} {b:>5} {algo_name:>13} x{k} measured {r_lat:>5.2}x predicted {r_pred:>5.2}x {}",
                        m.spec.name,
                        match (decidable, ok) {
                            (false, _) => format!(
                                "undecided: the noise floor ({:.0}%) is above 25%",
                                noise * 100.0
                            ),
                            (true, true) => "within 25%".into(),
                            (true, false) => "MISSED by more than 25%".into(),
                        }
                    );
                }
            }
        }
        if let Some(o) = ort.take() {
            peer_rows(
                &m.spec.name,
                &best_rows,
                &o.outcome(),
                &mut peer_csv,
                &mut peer_table,
            );
        }
        if m.spec.name == "streamrec-26" || o.quick {
            bar.set_message(format!("{}: contexts", m.spec.name));
            let b = if o.quick { 16 } else { 128 };
            let input = batches(&m.spec, b);
            let budget = Duration::from_secs(if o.quick { 1 } else { 3 });
            let plan = Plan::single(&m.graph);
            let one = cpu_engine(&m, &m.graph, plan.clone(), engine_cfg(b, 1, false))?;
            let two = cpu_engine(&m, &m.graph, plan, engine_cfg(b, 2, false))?;
            let r = time_side_by_side(
                &[(one.as_ref(), 1), (two.as_ref(), 2)],
                &input,
                budget,
                3,
                || {},
            )?;
            let tput_spread =
                |t: &Timed| spread(&t.rounds.iter().map(|r| r.samples_per_s).collect::<Vec<_>>());
            let noise = tput_spread(&r[0]).max(tput_spread(&r[1]));
            let (one, two) = (&r[0].median, &r[1].median);
            let ratio = two.samples_per_s / one.samples_per_s;
            let text = format!(
                "model,batch,contexts,p50_us,p99_us,samples_per_s,noise_floor\n{n},{b},1,{:.1},{:.1},{:.1},{noise:.3}\n{n},{b},2,{:.1},{:.1},{:.1},{noise:.3}\n",
                one.p50_us, one.p99_us, one.samples_per_s, two.p50_us, two.p99_us, two.samples_per_s,
                n = m.spec.name
            );
            std::fs::write(o.out.join("contexts.csv"), text)?;
            bar.suspend(|| {
                eprintln!(
                    "{} batch {b}: 1 context {:.1} samples/s, 2 contexts {:.1} samples/s: {ratio:.2}x ({}, noise floor {:.1}%)",
                    m.spec.name,
                    one.samples_per_s,
                    two.samples_per_s,
                    verdict(ratio, noise),
                    noise * 100.0
                )
            });
            // Latency with one worker thread and with every core on one request (the pool runs
            // the streams and splits large kernels into tiles).
            bar.set_message(format!("{}: cpu threads", m.spec.name));
            let cost = CostModel::new(cpu.clone());
            let mut rows = String::from(
                "model,batch,algo,streams,cpu_threads,p50_us,p99_us,ratio_p50_to_single,noise_floor,verdict\n",
            );
            let mut setups = Vec::new();
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            for (algo, k, threads) in [
                (Algorithm::Single, 1, 1),
                (Algorithm::Single, 1, cores),
                (Algorithm::StreamRec, cores.max(2), 1),
                (Algorithm::StreamRec, cores.max(2), cores),
            ] {
                setups.push((
                    algo,
                    k,
                    threads,
                    pool_engine(&m, algo, k, threads, b, &cost)?.engine,
                ));
            }
            let engines: Vec<(&dyn Infer, usize)> =
                setups.iter().map(|s| (s.3.as_ref(), 1)).collect();
            let r = time_side_by_side(&engines, &input, budget, 3, || {})?;
            // The noise floor: the round-to-round spread of the baseline (single, 1 thread).
            let noise = spread(&r[0].p50s());
            let base_p50 = r[0].median.p50_us;
            for ((algo, k, threads, _), t) in setups.iter().zip(&r) {
                let s = &t.median;
                let ratio = base_p50 / s.p50_us;
                let v = verdict(ratio, noise);
                let _ = writeln!(
                    rows,
                    "{},{b},{algo},{k},{threads},{:.1},{:.1},{ratio:.3},{noise:.3},{v}",
                    m.spec.name, s.p50_us, s.p99_us
                );
                let line = format!(
                    "{} batch {b}: {algo} x{k}, {threads} cpu thread(s): p50 {:.1} us, p99 {:.1} us, {ratio:.2}x vs single ({v}, noise floor {:.1}%)",
                    m.spec.name, s.p50_us, s.p99_us, noise * 100.0
                );
                bar.suspend(|| eprintln!("{line}"));
            }
            std::fs::write(o.out.join("threads.csv"), rows)?;
        }
    }
    bar.finish_and_clear();
    std::fs::write(o.out.join("engine.csv"), &csv)?;
    std::fs::write(o.out.join("prediction.csv"), &pred_csv)?;
    std::fs::write(o.out.join("noise.txt"), &noise_table)?;
    let mut report = format!(
        "# CPU engine experiments ({})\n\nWritten by `cargo xtask bench`{}. Every ratio is against \
         `single` measured in the same run; a ratio within the noise floor (the spread of p50 over \
         the repeated, identical `single` runs) is \"no difference\".\n\n## Plan views\n\n",
        today(),
        if o.quick { " --quick" } else { "" }
    );
    for (model, page) in &pages {
        let _ = writeln!(
            report,
            "- [{model}]({page}): the operator graph by stream, simulated timelines (eager and \
             graph mode) and every algorithm side by side, at batch 128 and K = 4"
        );
    }
    let _ = write!(
        report,
        "\n## Noise floors\n\n```\n{noise_table}```\n\n## Engine (p50/p99 latency, throughput, \
         ratio to single)\n\nSee [engine.csv](engine.csv). The `auto` rows are measured `auto`, \
         the default of `run` and `serve`, chosen afresh in this run:\n\n```\n{}\n```\n\n\
         ```\n{table}```\n\n## Measured \
         vs simulated speed-up on 2, 4 and 8 streams\n\n```\n{pred_table}```\n\nAlso: \
         [contexts.csv](contexts.csv), [threads.csv](threads.csv), \
         [prediction.csv](prediction.csv), [cpu-profile.toml](cpu-profile.toml).\n",
        auto_lines.join("\n")
    );
    if peer {
        std::fs::write(o.out.join("peer.csv"), &peer_csv)?;
        let _ = write!(
            report,
            "\n## ONNX Runtime peer\n\nThe same model and weights exported to ONNX \
             (`tools/onnx_peer.py`: Gather + ReduceSum/ReduceMean, Gemm + Relu, Concat), its scores \
             checked against the engine's within {:e}, and timed with its best thread setting in \
             this run. A ratio is StreamRec's p50 over ORT's (below 1: StreamRec is faster), the median \
             of each side over its rounds; per round: the ratio within each round (ORT's timing \
             follows the engine's in every round), min-max, its spread on this host. See \
             [peer.csv](peer.csv) and [machine.txt](machine.txt).\n\n```\n{}{peer_table}```\n",
            crate::peer::TOLERANCE,
            PEER_HEADER
        );
    }
    if let Some(serving) = &o.serving {
        // The serving experiment: the engine behind `streamrec serve`, under open-loop load.
        let _ = write!(report, "\n{}", crate::serving::run(serving)?);
    }
    std::fs::write(o.out.join("report.md"), report)?;
    println!("noise floors (spread of p50 over the repeated single-stream runs):");
    print!("{noise_table}");
    println!();
    println!(
        "{:<13} {:>5} {:>13} {:>2} {:>3} {:>5} {:>11} {:>11} {:>12} {:>8} {:>13} {:>8}",
        "model",
        "batch",
        "algo",
        "K",
        "str",
        "waits",
        "p50 us",
        "p99 us",
        "samples/s",
        "vs single",
        "verdict",
        "predicted"
    );
    print!("{table}");
    println!("\nmulti-stream speed-up on 2, 4 and 8 streams, measured vs simulated (cpu profile calibrated in this run):");
    print!("{pred_table}");
    if peer {
        println!(
            "\nONNX Runtime peer (ratio: StreamRec p50 / ORT p50; below 1 StreamRec is faster):"
        );
        print!("{PEER_HEADER}{peer_table}");
    }
    println!(
        "\nwrote {}/report.md, plan-*.html, engine.csv, prediction.csv, noise.txt, contexts.csv, threads.csv, cpu-profile.toml",
        o.out.display()
    );
    Ok(())
}

/// `cargo xtask peer`: the ONNX Runtime comparison alone, for one model. The engine runs its
/// candidate configurations (`single` on 1 thread and on every core's pool, StreamRec on
/// every core, measured `auto`) side by side in interleaved rounds, then ORT is checked and
/// timed on the same batches.
pub fn peer_task(args: &[String]) -> Result<()> {
    let mut model = String::from("streamrec-26.toml");
    let mut row_cap = 100_000usize;
    let mut budget_ms: Option<u64> = None;
    let mut keep: Option<PathBuf> = None;
    let mut sizes: Vec<usize> = vec![1, 16, 128, 1024];
    let mut it = args.iter();
    let num = |v: Option<&String>, what: &str| -> Result<u64> {
        v.with_context(|| format!("{what} needs a number"))?
            .parse()
            .with_context(|| format!("{what} needs a number"))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--model" => model = it.next().context("--model needs a spec file name")?.clone(),
            "--row-cap" => row_cap = num(it.next(), "--row-cap")? as usize,
            "--budget-ms" => budget_ms = Some(num(it.next(), "--budget-ms")?.max(1)),
            "--keep" => keep = Some(PathBuf::from(it.next().context("--keep needs a folder")?)),
            "--batch" => {
                sizes = streamrec_runtime::builder::parse_batch_sizes(
                    it.next().context("--batch needs sizes")?,
                )
                .context("--batch")?
            }
            x => bail!("peer: unknown option `{x}` (known: --model, --row-cap, --budget-ms, --keep, --batch)"),
        }
    }
    let m = load(&model, Some(row_cap))?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu = calibrate::cpu_profile(DeviceProfile::cpu())?;
    let input: Vec<Arc<Batch>> = sizes.iter().flat_map(|&b| batches(&m.spec, b)).collect();
    let mut ort =
        match crate::peer::OrtServer::start(&m.graph, &m.weights, &input, keep.as_deref())? {
            Ok(o) => o,
            Err(why) => bail!("peer: ONNX Runtime cannot run this model: {why}"),
        };
    let mut best_rows = Vec::new();
    for &b in &sizes {
        let input = batches(&m.spec, b);
        let budget = budget_ms.map_or_else(|| budget_for(false, b), Duration::from_millis);
        let costs = profile(&m, &input, budget)?;
        let cost = CostModel::new(cpu.clone()).with_measured(costs);
        let mut setups: Vec<(String, Box<dyn Infer>)> = Vec::new();
        for (algo, k, threads) in [
            (Algorithm::Single, 1, 1),
            (Algorithm::Single, 1, cores),
            (Algorithm::StreamRec, cores, 1),
        ] {
            let built = pool_engine(&m, algo, k, threads, b, &cost)?;
            setups.push((
                format!("{} x{k} threads{threads}", built.plan.algo),
                built.engine,
            ));
        }
        let (_, planned) = measured_auto(&m, b, &cost)?;
        let label = format!("auto ({})", planned.plan.algo);
        let auto = cpu_engine(&m, &planned.graph, planned.plan, engine_cfg(b, 1, false))?;
        setups.push((label, auto));
        let engines: Vec<(&dyn Infer, usize)> = setups.iter().map(|s| (s.1.as_ref(), 1)).collect();
        let per_round_ms = (budget / 3).as_millis().max(1) as u64;
        let r = time_rounds(
            &engines,
            &input,
            budget,
            3,
            || {},
            |_| ort.round(b, per_round_ms),
        )?;
        for ((name, _), t) in setups.iter().zip(&r) {
            eprintln!(
                "{} batch {b}: {name}: p50 {:.1} us",
                m.spec.name, t.median.p50_us
            );
        }
        // The fastest of every setup, `auto` (the last) included.
        let (bi, bt) = r
            .iter()
            .enumerate()
            .min_by(|a, b| a.1.median.p50_us.total_cmp(&b.1.median.p50_us))
            .expect("configurations");
        best_rows.push(BestRow {
            batch: b,
            config: setups[bi].0.clone(),
            p50: bt.median.p50_us,
            auto: r.last().map(|t| t.median.p50_us),
            best_rounds: bt.p50s(),
            auto_rounds: r.last().map(Timed::p50s).unwrap_or_default(),
        });
    }
    let (mut csv, mut table) = (String::new(), String::new());
    peer_rows(
        &m.spec.name,
        &best_rows,
        &ort.outcome(),
        &mut csv,
        &mut table,
    );
    print!("{PEER_HEADER}{table}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::{PeerBatch, PeerOutcome};
    use std::collections::BTreeMap;

    #[test]
    fn peer_rows_give_each_rounds_ratio_beside_the_medians() {
        let ort = PeerOutcome::Timed {
            batches: vec![PeerBatch {
                batch: 128,
                best: "intra2".into(),
                p50_us: 1000.0,
                settings: BTreeMap::from([("intra2".into(), 1000.0), ("intra1".into(), 1500.0)]),
                rounds: vec![1000.0, 800.0, 1250.0],
            }],
            max_abs_error: 3e-8,
            version: "1.0".into(),
        };
        let row = BestRow {
            batch: 128,
            config: "single x1".into(),
            p50: 650.0,
            auto: Some(700.0),
            best_rounds: vec![650.0, 560.0, 750.0],
            auto_rounds: vec![700.0, 600.0],
        };
        let (mut csv, mut table) = (String::from(PEER_CSV_HEADER), String::new());
        peer_rows("m", &[row], &ort, &mut csv, &mut table);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 2, "{csv}");
        let head: Vec<&str> = lines[0].split(',').collect();
        let cells: Vec<&str> = lines[1].split(',').collect();
        assert_eq!(head.len(), cells.len(), "{csv}");
        let cell = |name: &str| cells[head.iter().position(|h| *h == name).unwrap()];
        assert_eq!(cell("streamrec_best_to_ort"), "0.650");
        assert_eq!(cell("streamrec_auto_to_ort"), "0.700");
        // Round by round: 650/1000, 560/800, 750/1250; auto has two rounds.
        assert_eq!(cell("streamrec_best_to_ort_per_round"), "0.650;0.700;0.600");
        assert_eq!(cell("streamrec_auto_to_ort_per_round"), "0.700;0.750");
        assert!(table.contains("0.60-0.70x"), "{table}");
        assert!(table.contains("0.70-0.75x"), "{table}");
        // No rounds (a one-shot timing): a dash, not a made-up range.
        assert_eq!(ratio_range(&[]), "-");
    }
}
