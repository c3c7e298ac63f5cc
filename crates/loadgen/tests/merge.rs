//! Merging shard results is exact: the merged histogram equals the histogram of every
//! request of every shard, through files written and read back.

mod support;

use std::time::Duration;

use streamrec_loadgen::results::histogram;
use streamrec_loadgen::*;
use support::{inputs, serve, Action};

#[test]
fn merged_shards_equal_the_histogram_of_all_samples() {
    // Latencies spread over a few hundred microseconds to a few milliseconds.
    let srv = serve(|n, t| Action::Reply(200, Some(t + Duration::from_micros((n * 7919) % 3000))));
    let n = 3u32;
    let dir = std::env::temp_dir().join(format!("streamrec-loadgen-merge-{}", std::process::id()));
    let mut parts = Vec::new();
    let mut dirs = Vec::new();
    let mut all = histogram();
    let mut all_lag = histogram();
    for i in 0..n {
        let spec = LoadSpec {
            schedule: ScheduleConfig {
                kind: ScheduleKind::Poisson,
                qps: 1500.0,
                duration: Duration::from_millis(800),
                max_requests: None,
                seed: 42,
                shard: Shard::new(i, n).unwrap(),
            },
            batch: BatchSizes::Mlperf,
            max_batch: 256,
            bodies: BodyConfig::default(),
            run: RunConfig {
                records: true,
                ..RunConfig::default()
            },
        };
        let r = run_load(&Target::new(srv.url(), "m"), &inputs(), &spec).unwrap();
        assert_eq!(r.summary.requests as usize, r.records.len());
        assert_eq!(r.summary.ok, r.summary.requests, "{:?}", r.summary.errors);
        for rec in &r.records {
            all.record(((rec.latency_ns + 500) / 1000).max(1)).unwrap();
            all_lag.record((rec.lag_ns + 500) / 1000).unwrap();
        }
        let d = dir.join(format!("shard-{i}"));
        r.write(&d).unwrap();
        assert!(d.join("records.csv").is_file());
        dirs.push(d);
        parts.push(r);
    }
    let merged = merge(&parts, &MergeOptions::default()).unwrap();
    assert_eq!(merged.latency, all);
    assert_eq!(merged.lag, all_lag);
    let from_files = merge_dirs(&dirs, &MergeOptions::default()).unwrap();
    assert_eq!(from_files.latency, all);
    assert_eq!(from_files.lag, all_lag);
    assert_eq!(from_files.summary, merged.summary);
    let s = &merged.summary;
    assert_eq!(s.shards, vec!["0/3", "1/3", "2/3"]);
    assert_eq!(
        s.requests,
        parts.iter().map(|p| p.summary.requests).sum::<u64>()
    );
    assert_eq!(s.latency_us.count, s.ok);
    assert_eq!(s.latency_us.p99, all.value_at_quantile(0.99));
    assert!((s.target_qps - 1500.0).abs() < 1e-9);
    println!("{}", describe(s));

    // The same shard twice, or shards of different splits, do not merge.
    let all = MergeOptions { partial: true };
    assert!(merge(&[parts[0].clone(), parts[0].clone()], &all).is_err());
    let mut other = parts[1].clone();
    other.summary.shards = vec!["1/4".into()];
    assert!(merge(&[parts[0].clone(), other], &all).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Summaries go through JSON between shards and the merge: every rate must read back to the
/// same f64, or a merge from files differs from the merge in memory in the last bit (the value
/// below is one a shard wrote; the rest are spread over the range of rates and durations).
#[test]
fn summary_numbers_read_back_exactly() {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut values = vec![
        1_567.002_157_099_536_4,
        324_438.547_179_130_95,
        0.803_812_709,
    ];
    for _ in 0..100_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Uniform mantissa bits, exponents from 2^-10 to 2^20.
        let e = (x >> 58) as i32 % 31 - 10;
        values.push((1.0 + (x >> 12) as f64 / (1u64 << 52) as f64) * 2f64.powi(e));
    }
    for v in values {
        let text = serde_json::to_string(&v).unwrap();
        let back: f64 = serde_json::from_str(&text).unwrap();
        assert_eq!(
            back.to_bits(),
            v.to_bits(),
            "{v:e} written as {text} reads back as {back:e}"
        );
    }
}
