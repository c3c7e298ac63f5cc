//! A Poisson schedule at a chosen rate, split into shards, and its statistics: what
//! `streamrec load --schedule poisson` sends (no server needed).
//!
//! `cargo run -p streamrec-loadgen --example poisson -- [QPS] [SECONDS] [SHARDS]`

use std::time::Duration;

use streamrec_loadgen::results::histogram;
use streamrec_loadgen::{schedule, ScheduleConfig, ScheduleKind, Shard};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<f64> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let qps = args.first().copied().unwrap_or(1000.0);
    let secs = args.get(1).copied().unwrap_or(10.0);
    let shards = args.get(2).copied().unwrap_or(4.0) as u32;
    let mut gaps = histogram();
    let mut total = 0;
    for i in 0..shards {
        let s = schedule::build(&ScheduleConfig {
            kind: ScheduleKind::Poisson,
            qps,
            duration: Duration::from_secs_f64(secs),
            max_requests: None,
            seed: 1,
            shard: Shard::new(i, shards)?,
        })?;
        println!("shard {i}/{shards}: {} arrivals", s.arrivals.len());
        total += s.arrivals.len();
        for w in s.arrivals.windows(2) {
            gaps.record(((w[1].at_ns - w[0].at_ns) / 1000).max(1))?;
        }
    }
    let mean = gaps.mean();
    println!(
        "{total} arrivals in {secs} s: {:.1} requests/s offered (target {qps}); per-shard gaps: \
         mean {mean:.0} us, coefficient of variation {:.3}",
        total as f64 / secs,
        gaps.stdev() / mean
    );
    Ok(())
}
