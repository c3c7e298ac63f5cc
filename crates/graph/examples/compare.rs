//! Prints the `--compare` tables of a workload for a device profile, batch sizes and stream counts.
//!
//! Usage: `cargo run -p streamrec-graph --example compare -- [workload.toml|-] [profile] [batch,...] [K,...]`.

use std::path::PathBuf;

use streamrec_graph::{compare, render_compare, CostModel, DeviceProfile, ModelSpec, OpGraph};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let spec = args
        .first()
        .filter(|a| *a != "-")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../workloads/streamrec-26.toml")
        });
    let profile = DeviceProfile::by_name_or_path(args.get(1).map_or("h200", String::as_str))?;
    let list = |i: usize, d: &str| -> Vec<usize> {
        args.get(i)
            .map_or(d, String::as_str)
            .split(',')
            .filter_map(|x| x.parse().ok())
            .collect()
    };
    let g = OpGraph::from_spec(&ModelSpec::load(&spec, Some(1000))?);
    let cost = CostModel::new(profile.clone());
    for batch in list(2, "1,4096") {
        for k in list(3, "8,26") {
            println!(
                "{} on {}, batch {batch}, K = {k}:",
                g.spec.name, profile.name
            );
            print!("{}", render_compare(&compare(&g, k, batch, &cost)?));
            println!();
        }
    }
    Ok(())
}
