//! `streamrec check`: a backend's scores against the single-stream CPU engine on the same
//! random batches.

use anyhow::{Context, Result};
use clap::Args;
use streamrec_graph::Algorithm;
use streamrec_runtime::builder::EngineBuilder;
use streamrec_runtime::gen::{random_validated, Skew};
use streamrec_runtime::BackendKind;
use streamrec_runtime::Weights;

use super::{EngineArgs, IntoCli, ModelArgs, PlanOpts};

/// Arguments of `streamrec check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    plan: PlanOpts,
    #[command(flatten)]
    engine: EngineArgs,
    /// Samples per batch.
    #[arg(long, value_name = "B", default_value_t = 64)]
    batch: usize,
    /// Number of random batches compared.
    #[arg(long, default_value_t = 3)]
    batches: u64,
    /// Largest relative error allowed: |a - b| / max(|b|, 1e-3).
    #[arg(long, default_value_t = 1e-4)]
    tolerance: f64,
}

/// Runs `streamrec check`.
pub fn main(a: CheckArgs) -> Result<()> {
    super::bounded("--batch", a.batch, streamrec_graph::limits::MAX_BATCH)?;
    a.engine.check_threads()?;
    super::bounded(
        "--batches",
        usize::try_from(a.batches).unwrap_or(usize::MAX),
        1_000_000,
    )?;
    if !(a.tolerance.is_finite() && a.tolerance >= 0.0) {
        anyhow::bail!("--tolerance: must be a finite number >= 0");
    }
    let spec = a.model.load()?;
    let reference = EngineBuilder::new(&spec)
        .backend(BackendKind::Cpu)
        .plan_options(a.plan.options(Algorithm::Single)?)
        .contexts(1)
        .max_batch(a.batch);
    let weights = Weights::for_graph(reference.graph())?;
    let reference = reference.weights(&weights).build().cli()?;
    let tested = a
        .engine
        .builder(&spec)?
        .weights(&weights)
        .plan_options(a.plan.options(a.plan.algo())?)
        .contexts(1)
        .max_batch(a.batch)
        .build()
        .cli()?;
    let (mut max_abs, mut max_rel) = (0f64, 0f64);
    for i in 0..a.batches {
        let b = random_validated(&spec, a.batch, Skew::Uniform, 1000 + i)?;
        let want = reference.engine.infer(&b)?;
        let got = tested.engine.infer(&b)?;
        let (abs, rel) = score_errors(&got, &want).with_context(|| format!("batch {i}"))?;
        max_abs = max_abs.max(abs);
        max_rel = max_rel.max(rel);
    }
    println!(
        "{}: backend {} plan {} x{} graph {} vs cpu single: {} batches of {}, max abs error {:.3e}, max rel error {:.3e} (tolerance {:.0e})",
        spec.name,
        tested.engine.backend_name(),
        tested.plan.algo,
        tested.plan.num_streams(),
        a.engine.graph,
        a.batches,
        a.batch,
        max_abs,
        max_rel,
        a.tolerance
    );
    if max_rel.is_nan() || max_rel > a.tolerance {
        anyhow::bail!(
            "check failed: max relative error {max_rel:.3e} exceeds {:.0e}",
            a.tolerance
        );
    }
    Ok(())
}

/// The largest absolute and relative (`|a - b| / max(|b|, 1e-3)`) error of `got` against
/// `want`. A score that is not finite is an error, never a silent pass: `f64::max` ignores NaN,
/// and a score no kernel wrote is NaN (buffers start poisoned).
pub fn score_errors(got: &[f32], want: &[f32]) -> Result<(f64, f64)> {
    if got.len() != want.len() {
        anyhow::bail!(
            "check failed: {} scores, expected {}",
            got.len(),
            want.len()
        );
    }
    let (mut max_abs, mut max_rel) = (0f64, 0f64);
    for (s, (x, y)) in got.iter().zip(want).enumerate() {
        if !x.is_finite() || !y.is_finite() {
            anyhow::bail!("check failed: sample {s}: score {x} (reference {y}) is not finite");
        }
        let d = (f64::from(*x) - f64::from(*y)).abs();
        max_abs = max_abs.max(d);
        max_rel = max_rel.max(d / f64::from(y.abs()).max(1e-3));
    }
    Ok((max_abs, max_rel))
}

#[cfg(test)]
mod tests {
    use super::score_errors;

    #[test]
    fn a_nan_or_infinite_score_fails_the_check() {
        let want = [0.25f32, 0.5, 0.75];
        let (abs, rel) = score_errors(&[0.25, 0.5, 0.76], &want).unwrap();
        assert!((abs - 0.01).abs() < 1e-6 && (rel - 0.01 / 0.75).abs() < 1e-6);
        for bad in [f32::NAN, f32::INFINITY] {
            let e = score_errors(&[0.25, bad, 0.75], &want)
                .unwrap_err()
                .to_string();
            assert!(e.contains("sample 1") && e.contains("not finite"), "{e}");
            let e = score_errors(&want, &[0.25, 0.5, bad])
                .unwrap_err()
                .to_string();
            assert!(e.contains("sample 2"), "{e}");
        }
        assert!(score_errors(&[0.5], &want).is_err());
    }
}
