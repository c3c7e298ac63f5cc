//! `cargo xtask bench`: the CPU engine experiments, measured side by side in one process.

mod cpu;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use streamrec_graph::{
    assign, simulate, Algorithm, AssignConfig, CostModel, DeviceProfile, MeasuredCosts, ModelSpec,
    OpGraph, Plan, Planned, SimMode,
};
use streamrec_runtime::builder::{Built, EngineBuilder};
use streamrec_runtime::calibrate;
use streamrec_runtime::gen::{random_validated, Skew};
use streamrec_runtime::stats::LatencySummary;
use streamrec_runtime::BackendKind;
use streamrec_runtime::{measure, EngineConfig, Infer, MeasureConfig, ValidatedBatch, Weights};

use crate::bench_report::{
    engine_report, peer_report, peer_rows, print_tables, write_tables, BestRow, Tables, PEER_HEADER,
};
use crate::common::{spread, today};

struct Opts {
    quick: bool,
    out: PathBuf,
    row_cap: usize,
    /// The serving experiment; None with --no-serve.
    serving: Option<crate::serving::Opts>,
    /// `--peer onnxruntime`: ONNX Runtime checked and timed beside the engine.
    peer: bool,
    /// `--cpu-only`: only the fold and roofline tables of streamrec-26.
    cpu_only: bool,
}

fn parse(args: &[String]) -> Result<Opts> {
    let quick = args.iter().any(|a| a == "--quick");
    let mut o = Opts {
        quick,
        out: PathBuf::from("results").join(format!("{}-cpu", today())),
        row_cap: 100_000,
        serving: None,
        peer: false,
        cpu_only: false,
    };
    let mut serving =
        crate::serving::Opts::new(quick, crate::serving::default_root(), PathBuf::new());
    let mut no_serve = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => {}
            "--no-serve" => no_serve = true,
            "--cpu-only" => {
                o.cpu_only = true;
                no_serve = true;
            }
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

fn batches(spec: &ModelSpec, b: usize) -> Vec<ValidatedBatch> {
    (0..4)
        .map(|i| random_validated(spec, b, Skew::Uniform, 17 + i).unwrap())
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
    }
}

/// Runs an engine for about `budget` (at most 400 timed requests) on `input`.
fn time_engine(
    engine: &dyn Infer,
    contexts: usize,
    input: &[ValidatedBatch],
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
    input: &[ValidatedBatch],
    budget: Duration,
    rounds: usize,
    tick: impl FnMut(),
) -> Result<Vec<Timed>> {
    time_rounds(engines, input, budget, rounds, tick, |_| Ok(()))
}

/// [`time_side_by_side`], calling `between(round)` after each round (a peer's round).
fn time_rounds(
    engines: &[(&dyn Infer, usize)],
    input: &[ValidatedBatch],
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
fn profile(m: &Model, input: &[ValidatedBatch], budget: Duration) -> Result<MeasuredCosts> {
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

/// What every step of `run` reads: the options, the sizes and stream counts, the calibrated cpu
/// profile, the progress bar and whether the ONNX Runtime peer runs.
struct Ctx {
    o: Opts,
    sizes: &'static [usize],
    ks: [usize; 4],
    cpu: DeviceProfile,
    bar: ProgressBar,
    peer: bool,
}

/// One planned configuration, ready to time.
struct Config {
    algo: Algorithm,
    k: usize,
    streams: usize,
    waits: usize,
    /// The simulated latency, microseconds.
    pred: f64,
    engine: Box<dyn Infer>,
}

/// Runs the experiments.
pub fn run(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    std::fs::create_dir_all(&o.out).with_context(|| o.out.display().to_string())?;
    std::fs::write(o.out.join("machine.txt"), crate::peer::machine_txt())?;
    let peer = o.peer && peer_available();
    let models = models(&o);
    let cx = calibrate_cpu(o, peer, models.len())?;
    let mut t = Tables::new();
    for (name, cap) in &models {
        model_experiments(&cx, name, *cap, &mut t)?;
    }
    cx.bar.finish_and_clear();
    if cx.o.cpu_only {
        return Ok(());
    }
    let o = &cx.o;
    write_tables(&o.out, &t)?;
    let mut report = engine_report(o.quick, &t);
    if peer {
        peer_report(&o.out, &t, &mut report)?;
    }
    if let Some(serving) = &o.serving {
        // The serving experiment: the engine behind `streamrec serve`, under open-loop load.
        let _ = write!(report, "\n{}", crate::serving::run(serving)?);
    }
    std::fs::write(o.out.join("report.md"), report)?;
    print_tables(&o.out, &t, peer);
    Ok(())
}

/// The ONNX Runtime peer: said once when it cannot run, and its column skipped.
fn peer_available() -> bool {
    match crate::peer::probe() {
        Ok(_) => true,
        Err(why) => {
            eprintln!("--peer onnxruntime: skipped: {why}");
            false
        }
    }
}

/// The models (spec file, row cap) of this run.
fn models(o: &Opts) -> Vec<(&'static str, Option<usize>)> {
    if o.cpu_only {
        vec![("streamrec-26.toml", Some(o.row_cap))]
    } else if o.quick {
        vec![("tiny.toml", None)]
    } else {
        vec![("tiny.toml", None), ("streamrec-26.toml", Some(o.row_cap))]
    }
}

/// The progress bar, then the cpu profile calibrated (written to cpu-profile.toml).
fn calibrate_cpu(o: Opts, peer: bool, models: usize) -> Result<Ctx> {
    let sizes: &'static [usize] = if o.quick {
        &[1, 16]
    } else {
        &[1, 16, 128, 1024]
    };
    let ks = [1usize, 2, 4, 8];
    let total = (models * sizes.len() * (Algorithm::ALL.len() * ks.len() + 1) * 3) as u64;
    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} {elapsed_precise} {msg}")
            .expect("valid template"),
    );
    bar.set_message("calibrating the cpu profile");
    let cpu = calibrate::cpu_profile(DeviceProfile::cpu())?;
    std::fs::write(o.out.join("cpu-profile.toml"), cpu.to_toml_string())?;
    bar.suspend(|| {
        eprintln!(
            "cpu profile calibrated: launch {:.2} us, per-op gap {:.2} us, event {:.2} us, wake {:.2} us, sync {:.2} us",
            cpu.launch_us, cpu.graph_node_us, cpu.event_us, cpu.wake_us, cpu.sync_us
        )
    });
    Ok(Ctx {
        o,
        sizes,
        ks,
        cpu,
        bar,
        peer,
    })
}

/// Every experiment on one model: the peer's export, the plan view, the engine table at each
/// batch size, the peer's rows, and the contexts and threads tables.
fn model_experiments(cx: &Ctx, name: &str, cap: Option<usize>, t: &mut Tables) -> Result<()> {
    cx.bar.set_message(format!("loading {name}"));
    let m = load(name, cap)?;
    if cx.o.cpu_only {
        return cpu_tables(cx, &m);
    }
    let mut ort = start_peer(cx, &m, t)?;
    plan_view(cx, &m, t)?;
    // Per batch size: the best engine row (config, p50) and the best `auto` row's p50.
    let mut best_rows: Vec<BestRow> = Vec::new();
    for &b in cx.sizes {
        best_rows.extend(engine_table(cx, &m, b, &mut ort, t)?);
    }
    if let Some(o) = ort.take() {
        peer_rows(
            &m.spec.name,
            &best_rows,
            &o.outcome(),
            &mut t.peer_csv,
            &mut t.peer_table,
        );
    }
    if m.spec.name == "streamrec-26" || cx.o.quick {
        let b = if cx.o.quick { 16 } else { 128 };
        if !cx.o.quick {
            cpu_tables(cx, &m)?;
        }
        let at = Fixed {
            b,
            input: batches(&m.spec, b),
            budget: Duration::from_secs(if cx.o.quick { 1 } else { 3 }),
        };
        contexts_table(cx, &m, &at)?;
        threads_table(cx, &m, &at)?;
    }
    Ok(())
}

/// The fold on and off at batch 128, and the top MLP against the FMA roofline at batch 1024, on
/// each ISA path, one thread and every core (`fold.csv`, `roofline.csv`).
fn cpu_tables(cx: &Ctx, m: &Model) -> Result<()> {
    cpu::fold_table(cx, m, 128, Duration::from_secs(6))?;
    cpu::roofline_table(cx, m, 1024, Duration::from_secs(3))
}

/// The ONNX Runtime peer: exported and checked once, then timed in rounds interleaved with the
/// engine's, so both see the same machine conditions. None when it does not run.
fn start_peer(cx: &Ctx, m: &Model, t: &mut Tables) -> Result<Option<crate::peer::OrtServer>> {
    if !cx.peer {
        return Ok(None);
    }
    cx.bar
        .set_message(format!("{}: onnxruntime peer (export, check)", m.spec.name));
    let input: Vec<ValidatedBatch> = cx.sizes.iter().flat_map(|&b| batches(&m.spec, b)).collect();
    match crate::peer::OrtServer::start(&m.graph, &m.weights, &input, None)? {
        Ok(s) => Ok(Some(s)),
        Err(why) => {
            cx.bar
                .suspend(|| eprintln!("{}: onnxruntime peer skipped: {why}", m.spec.name));
            peer_rows(
                &m.spec.name,
                &[],
                &crate::peer::PeerOutcome::Skipped(why),
                &mut t.peer_csv,
                &mut t.peer_table,
            );
            Ok(None)
        }
    }
}

/// The plan view of this workload (every algorithm at batch 128, K = 4, the calibrated cpu
/// profile), linked from report.md.
fn plan_view(cx: &Ctx, m: &Model, t: &mut Tables) -> Result<()> {
    let page = streamrec_graph::html::page(
        &m.graph,
        &CostModel::new(cx.cpu.clone()),
        &streamrec_graph::html::Options {
            batch: 128,
            max_streams: 4,
            fuse: None,
            measured: None,
            selected: Some("streamrec"),
        },
    )?;
    let page_name = format!("plan-{}.html", m.spec.name);
    std::fs::write(cx.o.out.join(&page_name), page)?;
    t.pages.push((m.spec.name.clone(), page_name));
    Ok(())
}

/// One model at one batch size: every configuration planned and timed side by side, its rows
/// in engine.csv and prediction.csv; the best row for the peer table.
fn engine_table(
    cx: &Ctx,
    m: &Model,
    b: usize,
    ort: &mut Option<crate::peer::OrtServer>,
    t: &mut Tables,
) -> Result<Option<BestRow>> {
    let input = batches(&m.spec, b);
    let budget = budget_for(cx.o.quick, b);
    cx.bar
        .set_message(format!("{} batch {b}: calibrating", m.spec.name));
    let costs = profile(m, &input, budget)?;
    let cost = CostModel::new(cx.cpu.clone()).with_measured(costs);
    let configs = plan_configs(cx, m, b, &cost, t)?;
    cx.bar.set_message(format!(
        "{} batch {b}: timing {} plans",
        m.spec.name,
        configs.len()
    ));
    let engines: Vec<(&dyn Infer, usize)> =
        configs.iter().map(|c| (c.engine.as_ref(), 1)).collect();
    let rounds = 3;
    let per_round_ms = (budget / rounds as u32).as_millis() as u64;
    let results = time_rounds(
        &engines,
        &input,
        budget,
        rounds,
        || cx.bar.inc(1),
        |_| match ort.as_mut() {
            Some(o) => o.round(b, per_round_ms.max(1)),
            None => Ok(()),
        },
    )?;
    let (base, noise) = noise_floor(&m.spec.name, b, &configs, &results, t);
    let rows = Rows {
        model: &m.spec.name,
        b,
        base: &base,
        noise,
        single_pred: configs[0].pred,
    };
    for (c, timed) in configs.iter().zip(&results) {
        rows.engine_row(c, &timed.median, t);
    }
    Ok(best_row(b, &configs, &results))
}

/// Plans every algorithm at every K, then measured `auto`, each as an engine to time.
fn plan_configs(
    cx: &Ctx,
    m: &Model,
    b: usize,
    cost: &CostModel,
    t: &mut Tables,
) -> Result<Vec<Config>> {
    let config = |algo: Algorithm, k: usize, planned: Planned| -> Result<Config> {
        let pred = simulate(&planned.graph, &planned.plan, cost, b, SimMode::Eager).latency_us;
        let (streams, waits) = (planned.plan.num_streams(), planned.plan.num_waits());
        let engine = cpu_engine(m, &planned.graph, planned.plan, engine_cfg(b, 1, false))?;
        Ok(Config {
            algo,
            k,
            streams,
            waits,
            pred,
            engine,
        })
    };
    let mut configs = Vec::new();
    for &k in &cx.ks {
        for algo in Algorithm::ALL {
            configs.push(config(algo, k, plan_for(&m.graph, algo, k, b, cost)?)?);
        }
    }
    // Measured `auto`, the default of `run` and `serve`, chosen afresh at this batch size as
    // `run` would (candidates on up to the machine's cores, the fastest kept only beyond
    // single's noise floor).
    cx.bar
        .set_message(format!("{} batch {b}: measured auto", m.spec.name));
    let (auto_k, planned) = measured_auto(m, b, cost)?;
    let line = format!(
        "{} batch {b}: measured auto picked {} ({} stream(s), {} waits)",
        m.spec.name,
        planned.plan.algo,
        planned.plan.num_streams(),
        planned.plan.num_waits()
    );
    cx.bar.suspend(|| eprintln!("{line}"));
    t.auto_lines.push(line);
    configs.push(config(Algorithm::Auto, auto_k, planned)?);
    Ok(configs)
}

/// The baseline and the noise floor (added to noise.txt). The baseline: `single` is planned
/// once per K (the same plan each time); the median of those runs is steadier than any one of
/// them. The noise floor: the spread of p50 over every round of the identical `single` plans
/// (one per K); a ratio closer to 1 than this is no difference.
fn noise_floor(
    model: &str,
    b: usize,
    configs: &[Config],
    results: &[Timed],
    t: &mut Tables,
) -> (LatencySummary, f64) {
    let singles: Vec<&Timed> = configs
        .iter()
        .zip(results)
        .filter(|(c, _)| c.algo == Algorithm::Single)
        .map(|(_, t)| t)
        .collect();
    let base =
        LatencySummary::median_of(&singles.iter().map(|t| t.median.clone()).collect::<Vec<_>>());
    let single_p50s: Vec<f64> = singles.iter().flat_map(|t| t.p50s()).collect();
    let noise = spread(&single_p50s);
    let _ = writeln!(
        t.noise_table,
        "{:<13} {b:>5}: {} runs of the same single plan, p50 {:.1}..{:.1} us, noise floor {:.1}%",
        model,
        single_p50s.len(),
        single_p50s.iter().copied().fold(f64::INFINITY, f64::min),
        single_p50s.iter().copied().fold(0.0, f64::max),
        noise * 100.0
    );
    (base, noise)
}

/// The fastest configuration at this batch size, with the fastest `auto` beside it.
fn best_row(b: usize, configs: &[Config], results: &[Timed]) -> Option<BestRow> {
    let mut best: Option<BestRow> = None;
    let mut auto: Option<(f64, Vec<f64>)> = None;
    for (c, t) in configs.iter().zip(results) {
        let p50 = t.median.p50_us;
        if best.as_ref().is_none_or(|b| p50 < b.p50) {
            best = Some(BestRow {
                batch: b,
                config: format!("{} x{}", c.algo, c.k),
                p50,
                best_rounds: t.p50s(),
                ..BestRow::default()
            });
        }
        if c.algo == Algorithm::Auto && auto.as_ref().is_none_or(|a| p50 < a.0) {
            auto = Some((p50, t.p50s()));
        }
    }
    let mut row = best?;
    if let Some((p50, rounds)) = auto {
        row.auto = Some(p50);
        row.auto_rounds = rounds;
    }
    Some(row)
}

/// What every row of one model's engine table at one batch size is read against.
struct Rows<'a> {
    model: &'a str,
    b: usize,
    base: &'a LatencySummary,
    noise: f64,
    /// `single`'s simulated latency.
    single_pred: f64,
}

impl Rows<'_> {
    /// One configuration's row in engine.csv and the engine table, and for the multi-stream
    /// algorithms at K >= 2 its row in prediction.csv and the prediction table.
    fn engine_row(&self, c: &Config, s: &LatencySummary, t: &mut Tables) {
        let (model, b, noise) = (self.model, self.b, self.noise);
        let (algo, k, streams, waits) = (c.algo, c.k, c.streams, c.waits);
        let algo_name = algo.to_string();
        let r_lat = self.base.p50_us / s.p50_us;
        let r_tput = s.samples_per_s / self.base.samples_per_s;
        let r_pred = self.single_pred / c.pred;
        let v = verdict(r_lat, noise);
        let _ = writeln!(
            t.csv,
            "{},{b},{algo},{k},{streams},{waits},{:.1},{:.1},{:.1},{r_lat:.3},{r_tput:.3},{noise:.3},{v},{r_pred:.3}",
            model, s.p50_us, s.p99_us, s.samples_per_s
        );
        let _ = writeln!(
            t.table,
            "{:<13} {b:>5} {algo_name:>13} {k:>2} {streams:>3} {waits:>5} {:>11.1} {:>11.1} {:>12.1} {r_lat:>7.2}x {v:>13} {r_pred:>7.2}x",
            model, s.p50_us, s.p99_us, s.samples_per_s
        );
        if k >= 2
            && matches!(
                algo,
                Algorithm::StreamRec | Algorithm::Nimble | Algorithm::CriticalPath
            )
        {
            self.prediction_row(c, s, r_lat, r_pred, t);
        }
    }

    /// One row of prediction.csv and the prediction table: measured vs simulated speed-up.
    fn prediction_row(
        &self,
        c: &Config,
        s: &LatencySummary,
        r_lat: f64,
        r_pred: f64,
        t: &mut Tables,
    ) {
        let (model, b, noise) = (self.model, self.b, self.noise);
        let (algo, k, streams, pred) = (c.algo, c.k, c.streams, c.pred);
        let algo_name = algo.to_string();
        // A 25% check means nothing where the run's own noise is 25% or more.
        let decidable = noise < 0.25;
        let ok = (r_lat / r_pred - 1.0).abs() <= 0.25;
        let _ = writeln!(
            t.pred_csv,
            "{},{b},{algo},{streams},{:.1},{:.1},{r_lat:.3},{:.1},{pred:.1},{r_pred:.3},{noise:.3},{}",
            model,
            self.base.p50_us,
            s.p50_us,
            self.single_pred,
            if decidable { ok.to_string() } else { "inside noise".into() }
        );
        let _ = writeln!(
            t.pred_table,
            "{:<13} {b:>5} {algo_name:>13} x{k} measured {r_lat:>5.2}x predicted {r_pred:>5.2}x {}",
            model,
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

/// The one batch size the contexts and threads tables time at: its inputs and time budget.
struct Fixed {
    b: usize,
    input: Vec<ValidatedBatch>,
    budget: Duration,
}

/// Throughput with one execution context and with two, side by side (contexts.csv).
fn contexts_table(cx: &Ctx, m: &Model, at: &Fixed) -> Result<()> {
    let (b, input, budget) = (at.b, &at.input, at.budget);
    cx.bar.set_message(format!("{}: contexts", m.spec.name));
    let plan = Plan::single(&m.graph);
    let one = cpu_engine(m, &m.graph, plan.clone(), engine_cfg(b, 1, false))?;
    let two = cpu_engine(m, &m.graph, plan, engine_cfg(b, 2, false))?;
    let r = time_side_by_side(
        &[(one.as_ref(), 1), (two.as_ref(), 2)],
        input,
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
    std::fs::write(cx.o.out.join("contexts.csv"), text)?;
    cx.bar.suspend(|| {
        eprintln!(
            "{} batch {b}: 1 context {:.1} samples/s, 2 contexts {:.1} samples/s: {ratio:.2}x ({}, noise floor {:.1}%)",
            m.spec.name,
            one.samples_per_s,
            two.samples_per_s,
            verdict(ratio, noise),
            noise * 100.0
        )
    });
    Ok(())
}

/// Latency with one worker thread and with every core on one request (the pool runs the
/// streams and splits large kernels into tiles), side by side (threads.csv).
fn threads_table(cx: &Ctx, m: &Model, at: &Fixed) -> Result<()> {
    let (b, input, budget) = (at.b, &at.input, at.budget);
    cx.bar.set_message(format!("{}: cpu threads", m.spec.name));
    let cost = CostModel::new(cx.cpu.clone());
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
            pool_engine(m, algo, k, threads, b, &cost)?.engine,
        ));
    }
    let engines: Vec<(&dyn Infer, usize)> = setups.iter().map(|s| (s.3.as_ref(), 1)).collect();
    let r = time_side_by_side(&engines, input, budget, 3, || {})?;
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
        cx.bar.suspend(|| eprintln!("{line}"));
    }
    std::fs::write(cx.o.out.join("threads.csv"), rows)?;
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
    let input: Vec<ValidatedBatch> = sizes.iter().flat_map(|&b| batches(&m.spec, b)).collect();
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
