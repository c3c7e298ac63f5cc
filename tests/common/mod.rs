//! Test support shared by the end-to-end tests: a deterministic generator independent of the
//! crate's, unit-gain weights whose scores spread (so that a wrong kernel or export shows), and
//! the visible skip of a test whose outside tool is missing; [`serving`], a server in process.

#![allow(dead_code)]

pub mod serving;

use streamrec::graph::{OpGraph, PoolingMode};
use streamrec::runtime::{Tensor, Weights};

/// Deterministic random numbers (splitmix64), independent of the crate's generators.
pub struct Rng(pub u64);

impl Rng {
    pub fn bits(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.bits() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [-a, a).
    pub fn sym(&mut self, a: f64) -> f32 {
        ((2.0 * self.unit() - 1.0) * a) as f32
    }

    /// Uniform in 0..n.
    pub fn below(&mut self, n: usize) -> usize {
        (self.bits() % n as u64) as usize
    }
}

/// Weights for every tensor the graph needs, uniform in [-a, a] with a per-tensor `a`:
/// tables give pooled vectors of about unit variance, linear layers are He-scaled, cross
/// layers have gain ~0.7 and a bias of up to 0.6 (so `x0 * (U V x_l + bias)` is as large as
/// `x_l`).
pub fn build_weights(graph: &OpGraph, seed: u64) -> Weights {
    let spec = &graph.spec;
    let mut rng = Rng(seed);
    let mut w = Weights::default();
    for ws in graph.weights() {
        let name = ws.name.as_str();
        let fan_in = ws.shape.get(1).copied().unwrap_or(1) as f64;
        let a = if let Some(feat) = name
            .strip_prefix("emb.")
            .and_then(|n| n.strip_suffix(".weight"))
        {
            let f = &spec.features[spec.feature_index(feat).expect("table of a feature")];
            match f.mode {
                PoolingMode::Sum => (3.0 / f.pooling as f64).sqrt(),
                PoolingMode::Mean => 3f64.sqrt(),
            }
        } else if name.starts_with("cross.") {
            if name.ends_with(".v") {
                (3.0 / fan_in).sqrt()
            } else if name.ends_with(".u") {
                0.7 * (3.0 / fan_in).sqrt()
            } else {
                0.6
            }
        } else if name.ends_with(".bias") {
            0.1
        } else {
            (6.0 / fan_in).sqrt()
        };
        let len: usize = ws.shape.iter().product();
        let data = (0..len).map(|_| rng.sym(a)).collect();
        w.insert(
            ws.name.clone(),
            Tensor {
                shape: ws.shape.clone(),
                data,
            },
        );
    }
    w
}

/// Reports that the running test skips its work because `what`: `<test>: skipped: <what>` on
/// stderr (past libtest's capture, so a skip is never silent), or a failure when the variable
/// `require` is set to 1 (CI sets it where the tool is installed).
pub fn skip(require: &str, what: &str) {
    use std::io::Write as _;
    let required = std::env::var(require).is_ok_and(|v| v == "1");
    assert!(!required, "{require}=1 but {what}");
    let t = std::thread::current();
    let _ = writeln!(
        std::io::stderr().lock(),
        "{}: skipped: {what}",
        t.name().unwrap_or("test")
    );
}
