//! Builds an engine the way `streamrec run` does, without the CLI: the backend `auto` finds,
//! the plan measured `auto` picks (timed at batch 1 and 16, cached in the workspace's
//! target/auto-example-cache; the library reads no environment, so the example names the
//! folder), then scores a random batch.
//!
//! ```sh
//! cargo run --release -p streamrec-runtime --example auto                 # workloads/tiny.toml
//! cargo run --release -p streamrec-runtime --example auto -- SPEC --retune
//! ```

use std::path::PathBuf;

use streamrec_graph::{Algorithm, ModelSpec};
use streamrec_runtime::builder::EngineBuilder;
use streamrec_runtime::gen::{random_validated, Skew};
use streamrec_runtime::tune::Note;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let retune = args.iter().any(|a| a == "--retune");
    let spec_path = args.iter().find(|a| !a.starts_with("--")).map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../workloads/tiny.toml"),
        PathBuf::from,
    );
    let spec = ModelSpec::load(&spec_path, None)?;
    let notes = |n: &Note<'_>| eprintln!("{n}");
    let built = EngineBuilder::new(&spec)
        .algo(Algorithm::Auto)
        .streams(4)
        .max_batch(16)
        .tune_batches(&[1, 16])
        .retune(retune)
        .cache_dir(Some(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/auto-example-cache"),
        ))
        .notes(Some(&notes))
        .build()?;
    let batch = random_validated(&spec, 16, Skew::Uniform, 1)?;
    let scores = built.engine.infer(&batch)?;
    println!(
        "{}: backend {}, plan {} on {} stream(s); scores of 16 samples: {:?}",
        spec.name,
        built.engine.backend_name(),
        built.plan.algo,
        built.plan.num_streams(),
        &scores[..4.min(scores.len())]
    );
    Ok(())
}
