//! The CPU engine against the machine: the fold on and off on each ISA path, and the top MLP's
//! share of the FMA roofline (the peak measured in the same run), on one thread and on every
//! core.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Result;
use streamrec_graph::{OpGraph, Plan, Planned};
use streamrec_kernels::cpu::{fma_peak, Isa};
use streamrec_runtime::builder::EngineBuilder;
use streamrec_runtime::{BackendKind, Infer};

use super::{batches, engine_cfg, time_engine, time_side_by_side, verdict, Ctx, Model};
use crate::common::spread;

/// The SIMD paths of this processor (the portable one is no contender).
fn paths() -> Vec<Isa> {
    Isa::supported()
        .into_iter()
        .filter(|&i| i != Isa::Portable)
        .collect()
}

/// The thread counts compared: one, and every core.
fn thread_counts() -> Vec<usize> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores > 1 {
        vec![1, cores]
    } else {
        vec![1]
    }
}

/// `m` on the single plan, on `threads` threads, its kernels on `isa`, folding or not.
fn engine(
    m: &Model,
    isa: Isa,
    fold: bool,
    threads: usize,
    b: usize,
    trace: bool,
) -> Result<Box<dyn Infer>> {
    Ok(EngineBuilder::new(&m.spec)
        .weights(&m.weights)
        .backend(BackendKind::Cpu)
        .threads(threads)
        .cpu_isa(Some(isa))
        .cpu_fold(fold)
        .engine_config(engine_cfg(b, 1, trace))
        .load(Planned {
            graph: m.graph.clone(),
            plan: Plan::single(&m.graph),
        })?
        .engine)
}

/// Fold on and off at batch `b`, per ISA path and thread count, in interleaved rounds: fold on's
/// p50 over fold off's, against the spread of fold off's p50 over the rounds (the noise floor).
/// Writes `fold.csv`.
pub(super) fn fold_table(cx: &Ctx, m: &Model, b: usize, budget: Duration) -> Result<()> {
    cx.bar.set_message(format!("{}: fold on/off", m.spec.name));
    let input = batches(&m.spec, b);
    let mut setups = Vec::new();
    for isa in paths() {
        for threads in thread_counts() {
            for fold in [false, true] {
                setups.push((isa, threads, fold, engine(m, isa, fold, threads, b, false)?));
            }
        }
    }
    let engines: Vec<(&dyn Infer, usize)> = setups.iter().map(|s| (s.3.as_ref(), 1)).collect();
    let r = time_side_by_side(&engines, &input, budget, 5, || {})?;
    let mut csv = String::from(
        "model,batch,isa,cpu_threads,fold_off_p50_us,fold_on_p50_us,ratio_on_to_off,noise_floor,verdict\n",
    );
    for (pair, t) in setups.chunks(2).zip(r.chunks(2)) {
        let (isa, threads) = (pair[0].0, pair[0].1);
        let (off, on) = (t[0].median.p50_us, t[1].median.p50_us);
        let noise = spread(&t[0].p50s());
        // Below 1: the fold is faster; `verdict` reads speed-ups, so it gets off / on.
        let ratio = on / off;
        let v = verdict(off / on, noise);
        let _ = writeln!(
            csv,
            "{},{b},{isa},{threads},{off:.1},{on:.1},{ratio:.3},{noise:.3},{v}",
            m.spec.name
        );
        let line = format!(
            "{} batch {b}: {isa}, {threads} cpu thread(s): fold on p50 {on:.1} us, off {off:.1} us: {ratio:.2}x ({v}, noise floor {:.1}%)",
            m.spec.name,
            noise * 100.0
        );
        cx.bar.suspend(|| eprintln!("{line}"));
    }
    std::fs::write(cx.o.out.join("fold.csv"), csv)?;
    Ok(())
}

/// The ops of the top MLP (`top.*`) and their FLOPs at batch `b`.
fn top_mlp(graph: &OpGraph, b: usize) -> (Vec<String>, f64) {
    let names: Vec<String> = graph
        .ops()
        .filter(|op| op.name.starts_with("top."))
        .map(|op| op.name.clone())
        .collect();
    let flops = (0..graph.len())
        .filter(|&id| graph.op(id).name.starts_with("top."))
        .map(|id| graph.flops(id, b))
        .sum();
    (names, flops)
}

/// The top MLP's share of the FMA roofline at batch `b`, per ISA path and thread count: its
/// ops' median times from a traced run of the single plan (fold on), against the FMA peak of
/// that path on as many threads, measured just before and just after (the higher). Writes
/// `roofline.csv`.
pub(super) fn roofline_table(cx: &Ctx, m: &Model, b: usize, budget: Duration) -> Result<()> {
    cx.bar
        .set_message(format!("{}: top MLP roofline", m.spec.name));
    let input = batches(&m.spec, b);
    let (names, flops) = top_mlp(&m.graph, b);
    if names.is_empty() {
        return Ok(());
    }
    let mut csv = String::from(
        "model,batch,isa,cpu_threads,top_mlp_us,top_mlp_gflops,fma_peak_gflops,share_of_peak\n",
    );
    for isa in paths() {
        for threads in thread_counts() {
            let e = engine(m, isa, true, threads, b, true)?;
            // The peak measured before and after the engine's run, the higher kept: other
            // tenants' work lowers what the loop reaches, never raises it.
            let before = fma_peak(isa, threads, 1 << 22, 5);
            time_engine(e.as_ref(), 1, &input, budget)?;
            let mut costs = streamrec_graph::MeasuredCosts::default();
            streamrec_runtime::trace::record_op_medians(&mut costs, &e.take_trace(), b);
            let key = b.to_string();
            let us: f64 = names
                .iter()
                .filter_map(|n| costs.ops.get(n).and_then(|per| per.get(&key)))
                .sum();
            let peak = before.max(fma_peak(isa, threads, 1 << 22, 5));
            let gflops = flops / us / 1e3;
            let share = gflops / peak;
            let _ = writeln!(
                csv,
                "{},{b},{isa},{threads},{us:.1},{gflops:.1},{peak:.1},{share:.3}",
                m.spec.name
            );
            let line = format!(
                "{} batch {b}: top MLP ({} ops, {:.2} GFLOP) on {isa}, {threads} cpu thread(s): {:.1} ms, {gflops:.1} GFLOP/s = {:.0}% of the FMA peak ({peak:.1} GFLOP/s, measured around it)",
                m.spec.name,
                names.len(),
                flops / 1e9,
                us / 1e3,
                share * 100.0
            );
            cx.bar.suspend(|| eprintln!("{line}"));
        }
    }
    std::fs::write(cx.o.out.join("roofline.csv"), csv)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The roofline's FLOP count.

    use super::*;

    #[test]
    fn the_top_mlp_is_the_five_top_layers_of_streamrec_26() {
        let m = super::super::load("streamrec-26.toml", Some(1000)).unwrap();
        let (names, flops) = top_mlp(&m.graph, 1024);
        assert_eq!(names, ["top.0", "top.1", "top.2", "top.3", "top.4"]);
        // 3456-1024-1024-512-256-1: 2 FLOPs per weight per sample.
        let weights: u64 = 3456 * 1024 + 1024 * 1024 + 1024 * 512 + 512 * 256 + 256;
        let want = (2 * 1024 * weights) as f64;
        assert!(
            (flops - want).abs() <= 0.01 * want,
            "{flops} FLOPs, want about {want}"
        );
    }
}
