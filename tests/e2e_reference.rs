//! End to end: the engine's scores against a straightforward f64 implementation of the model
//! written here from the spec and the weights, on tiny and on a row-capped dlrm-kaggle (and the
//! DCN and branch models).

use std::path::Path;
use std::sync::Arc;

use streamrec::graph::{Interaction, ModelSpec, OpGraph, Plan, PoolingMode};
use streamrec::runtime::gen::{random_batch, Skew};
use streamrec::runtime::{Batch, CpuBackend, Engine, EngineConfig, Weights};

fn load(name: &str, cap: usize) -> ModelSpec {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("workloads")
        .join(name);
    ModelSpec::load(&p, Some(cap)).expect("workload loads")
}

fn t<'a>(w: &'a Weights, name: &str) -> &'a [f32] {
    &w.get(name).expect("tensor present").data
}

fn linear(w: &Weights, name: &str, x: &[f64], out: usize, relu: bool) -> Vec<f64> {
    let wt = t(w, &format!("{name}.weight"));
    let b = t(w, &format!("{name}.bias"));
    let k = x.len();
    (0..out)
        .map(|o| {
            let mut acc = f64::from(b[o]);
            for i in 0..k {
                acc += f64::from(wt[o * k + i]) * x[i];
            }
            if relu {
                acc.max(0.0)
            } else {
                acc
            }
        })
        .collect()
}

/// The model for one sample, in f64.
fn reference(spec: &ModelSpec, w: &Weights, batch: &Batch, s: usize) -> f64 {
    let mut x: Vec<f64> = batch.dense[s * spec.dense..(s + 1) * spec.dense]
        .iter()
        .map(|&v| f64::from(v))
        .collect();
    for (i, &o) in spec.bottom.iter().enumerate() {
        x = linear(w, &format!("bottom.{i}"), &x, o, true);
    }
    let mut vectors = vec![x];
    for (f, feat) in spec.features.iter().enumerate() {
        let table = t(w, &format!("emb.{}.weight", feat.name));
        let bag = batch.bag(f, s);
        let mut v = vec![0f64; feat.dim];
        for i in bag.clone() {
            let row = batch.sparse[f].indices.get(i) as usize;
            for d in 0..feat.dim {
                v[d] += f64::from(table[row * feat.dim + d]);
            }
        }
        if feat.mode == PoolingMode::Mean && !bag.is_empty() {
            v.iter_mut().for_each(|x| *x /= bag.len() as f64);
        }
        for (i, &o) in feat.branch.iter().enumerate() {
            v = linear(w, &format!("branch.{}.{i}", feat.name), &v, o, true);
        }
        vectors.push(v);
    }
    let mut z: Vec<f64> = match spec.interaction {
        Interaction::Dot => {
            let mut z = vectors[0].clone();
            for i in 1..vectors.len() {
                for j in 0..i {
                    z.push(vectors[i].iter().zip(&vectors[j]).map(|(a, b)| a * b).sum());
                }
            }
            z
        }
        Interaction::Cat | Interaction::Dcn { .. } => vectors.concat(),
    };
    if let Interaction::Dcn { layers, rank } = spec.interaction {
        let x0 = z.clone();
        let width = x0.len();
        for l in 0..layers {
            let v = t(w, &format!("cross.{l}.v"));
            let u = t(w, &format!("cross.{l}.u"));
            let b = t(w, &format!("cross.{l}.bias"));
            let vx: Vec<f64> = (0..rank)
                .map(|r| (0..width).map(|c| f64::from(v[r * width + c]) * z[c]).sum())
                .collect();
            z = (0..width)
                .map(|c| {
                    let uv: f64 = (0..rank).map(|r| f64::from(u[c * rank + r]) * vx[r]).sum();
                    x0[c] * (uv + f64::from(b[c])) + z[c]
                })
                .collect();
        }
    }
    let n = spec.top.len();
    for (i, &o) in spec.top.iter().enumerate() {
        z = linear(w, &format!("top.{i}"), &z, o, i + 1 < n);
    }
    1.0 / (1.0 + (-z[0]).exp())
}

fn check(name: &str, cap: usize, batch_size: usize) {
    let spec = load(name, cap);
    let graph = Arc::new(OpGraph::from_spec(&spec));
    let weights = Weights::for_graph(&graph).expect("weights");
    let engine = Engine::new(
        CpuBackend::new(),
        Arc::clone(&graph),
        Plan::single(&graph),
        &weights,
        EngineConfig {
            max_batch: batch_size,
            ..EngineConfig::default()
        },
    )
    .expect("engine");
    let mut max_err = 0f64;
    let mut spread = (f64::MAX, f64::MIN);
    for seed in 0..2 {
        let skew = if seed == 0 {
            Skew::Uniform
        } else {
            Skew::Zipf(1.1)
        };
        let batch = Arc::new(random_batch(&spec, batch_size, skew, seed));
        let scores = engine.infer(&batch).expect("inference");
        assert_eq!(scores.len(), batch_size);
        for (s, &got) in scores.iter().enumerate() {
            let want = reference(&spec, &weights, &batch, s);
            max_err = max_err.max((f64::from(got) - want).abs());
            spread = (spread.0.min(want), spread.1.max(want));
        }
    }
    println!(
        "{name}: max abs error {max_err:.3e} over scores in [{:.4}, {:.4}]",
        spread.0, spread.1
    );
    assert!(
        max_err <= 1e-4,
        "{name}: max abs error {max_err:e} exceeds 1e-4"
    );
    // The scores must not all be the same: a model that saturates proves nothing.
    assert!(
        spread.1 - spread.0 > 1e-3,
        "{name}: scores barely vary: {spread:?}"
    );
}

#[test]
fn tiny_matches_f64_reference() {
    check("tiny.toml", 1000, 33);
}

#[test]
fn dlrm_kaggle_matches_f64_reference() {
    check("dlrm-kaggle.toml", 5000, 16);
}

#[test]
fn streamrec_26_matches_f64_reference() {
    check("streamrec-26.toml", 2000, 4);
}

#[test]
fn dlrm_mlperf_v2_matches_f64_reference() {
    check("dlrm-mlperf-v2.toml", 1000, 3);
}
