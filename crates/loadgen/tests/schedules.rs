//! Schedules: Poisson arrivals have the right rate and exponential gaps, a rescaled trace has
//! the target mean rate and keeps its order, and shards split every schedule exactly.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use streamrec_loadgen::schedule::build;
use streamrec_loadgen::{BatchSizes, ScheduleConfig, ScheduleKind, Shard, Trace};

fn trace() -> Arc<Trace> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../workloads/traces/azure-llm-2023-conv.csv");
    Arc::new(Trace::load(&p).unwrap())
}

fn cfg(kind: ScheduleKind, qps: f64, secs: f64, seed: u64, shard: Shard) -> ScheduleConfig {
    ScheduleConfig {
        kind,
        qps,
        duration: Duration::from_secs_f64(secs),
        max_requests: None,
        seed,
        shard,
    }
}

/// Mean rate (arrivals over the time of the last) and coefficient of variation of the gaps.
fn stats(times_ns: &[u64]) -> (f64, f64) {
    let gaps: Vec<f64> = std::iter::once(times_ns[0])
        .chain(times_ns.windows(2).map(|w| w[1] - w[0]))
        .map(|g| g as f64 * 1e-9)
        .collect();
    let n = gaps.len() as f64;
    let mean = gaps.iter().sum::<f64>() / n;
    let var = gaps.iter().map(|g| (g - mean) * (g - mean)).sum::<f64>() / (n - 1.0);
    (1.0 / mean, var.sqrt() / mean)
}

#[test]
fn poisson_rate_and_gaps() {
    let q = 2000.0;
    for seed in [1, 2, 3] {
        let mut c = cfg(ScheduleKind::Poisson, q, 100.0, seed, Shard::ALL);
        c.max_requests = Some(100_000);
        let s = build(&c).unwrap();
        let t: Vec<u64> = s.arrivals.iter().map(|a| a.at_ns).collect();
        assert_eq!(t.len(), 100_000, "seed {seed}: cut short by the duration");
        let (rate, cv) = stats(&t);
        println!(
            "poisson seed {seed}: 100000 arrivals, rate {rate:.1}/s (target {q}), gap CV {cv:.4}"
        );
        assert!((rate / q - 1.0).abs() < 0.01, "seed {seed}: rate {rate}");
        assert!((cv - 1.0).abs() < 0.02, "seed {seed}: CV {cv}");
    }
    // Reproducible from the seed, different across seeds.
    let a = build(&cfg(ScheduleKind::Poisson, q, 1.0, 7, Shard::ALL)).unwrap();
    let b = build(&cfg(ScheduleKind::Poisson, q, 1.0, 7, Shard::ALL)).unwrap();
    let c = build(&cfg(ScheduleKind::Poisson, q, 1.0, 8, Shard::ALL)).unwrap();
    assert_eq!(a.arrivals, b.arrivals);
    assert_ne!(a.arrivals, c.arrivals);
}

#[test]
fn poisson_shards_superpose_to_the_total_rate() {
    // 4 shards of Poisson(Q/4) with their own seeds: each is Poisson(Q/4), the union Poisson(Q).
    let (q, n, secs) = (4000.0, 4, 25.0);
    let mut all: Vec<u64> = Vec::new();
    for i in 0..n {
        let s = build(&cfg(
            ScheduleKind::Poisson,
            q,
            secs,
            11,
            Shard::new(i, n).unwrap(),
        ))
        .unwrap();
        assert!((s.target_qps - q / f64::from(n)).abs() < 1e-9);
        let t: Vec<u64> = s.arrivals.iter().map(|a| a.at_ns).collect();
        let (rate, cv) = stats(&t);
        assert!(
            (rate / (q / f64::from(n)) - 1.0).abs() < 0.02,
            "shard {i}: rate {rate}"
        );
        assert!((cv - 1.0).abs() < 0.03, "shard {i}: CV {cv}");
        all.extend(t);
    }
    all.sort_unstable();
    assert!(all.len() > 99_000, "{}", all.len());
    let (rate, cv) = stats(&all);
    println!(
        "4 Poisson shards merged: {} arrivals, rate {rate:.1}/s (target {q}), gap CV {cv:.4}",
        all.len()
    );
    assert!((rate / q - 1.0).abs() < 0.01, "rate {rate}");
    assert!((cv - 1.0).abs() < 0.02, "CV {cv}");
}

#[test]
fn trace_rescaled_keeps_rate_and_order() {
    let tr = trace();
    assert_eq!(tr.len(), 19_366);
    println!(
        "azure conversation trace: {} rows over {:.0} s, {:.2} req/s",
        tr.len(),
        tr.span(),
        tr.mean_rate()
    );
    for q in [100.0, 1000.0, 20_000.0] {
        // One full pass of the trace at rate q lasts rows / q seconds.
        let secs = tr.len() as f64 / q;
        let s = build(&cfg(
            ScheduleKind::Trace(tr.clone()),
            q,
            secs,
            0,
            Shard::ALL,
        ))
        .unwrap();
        assert_eq!(s.arrivals.len(), tr.len());
        let rate = s.arrivals.len() as f64 / secs;
        let (mean_rate, _) = stats(&s.arrivals.iter().map(|a| a.at_ns).collect::<Vec<_>>());
        println!("trace at {q}/s: offered {rate:.2}/s, mean-gap rate {mean_rate:.2}/s");
        assert!((rate / q - 1.0).abs() < 0.01, "{q}: {rate}");
        assert!((mean_rate / q - 1.0).abs() < 0.01, "{q}: {mean_rate}");
        // Order kept: the rescaled times are an increasing affine map of the original ones,
        // row by row (the tokens column follows its row).
        let scale = (tr.len() - 1) as f64 / (q * tr.span());
        for (i, a) in s.arrivals.iter().enumerate() {
            let want = tr.times[i] * scale * 1e9;
            assert!((a.at_ns as f64 - want).abs() <= 1.0, "{q}: row {i}");
            assert_eq!(a.tokens, tr.tokens.as_ref().unwrap()[i]);
        }
        assert!(s.arrivals.windows(2).all(|w| w[0].at_ns <= w[1].at_ns));
    }
    // Past its end the trace repeats, one mean gap after the last row.
    let q = 10_000.0;
    let s = build(&cfg(
        ScheduleKind::Trace(tr.clone()),
        q,
        2.0 * tr.len() as f64 / q,
        0,
        Shard::ALL,
    ))
    .unwrap();
    assert_eq!(s.arrivals.len(), 2 * tr.len());
    let n = tr.len();
    assert_eq!(s.arrivals[n].tokens, s.arrivals[0].tokens);
    let gap = s.arrivals[n].at_ns - s.arrivals[n - 1].at_ns;
    assert!((gap as f64 - 1e9 / q).abs() < 2.0, "{gap}");
}

#[test]
fn trace_and_constant_shards_split_exactly() {
    let tr = trace();
    for kind in [ScheduleKind::Trace(tr.clone()), ScheduleKind::Constant] {
        let name = kind.name();
        let whole = build(&cfg(kind.clone(), 5000.0, 3.0, 0, Shard::ALL)).unwrap();
        for n in [2u32, 3, 7] {
            let mut merged = Vec::new();
            for i in 0..n {
                let s = build(&cfg(
                    kind.clone(),
                    5000.0,
                    3.0,
                    0,
                    Shard::new(i, n).unwrap(),
                ))
                .unwrap();
                // Shard i holds positions j = i mod n of the whole schedule.
                for (k, a) in s.arrivals.iter().enumerate() {
                    assert_eq!(
                        *a,
                        whole.arrivals[i as usize + k * n as usize],
                        "{name} {i}/{n}"
                    );
                }
                merged.extend(s.arrivals);
            }
            merged.sort_by_key(|a| (a.at_ns, a.tokens));
            let mut want = whole.arrivals.clone();
            want.sort_by_key(|a| (a.at_ns, a.tokens));
            assert_eq!(merged, want, "{name} over {n} shards");
        }
    }
}

#[test]
fn batch_sizes() {
    let tr = trace();
    let mut s = build(&cfg(
        ScheduleKind::Trace(tr.clone()),
        1000.0,
        19.366,
        0,
        Shard::ALL,
    ))
    .unwrap();
    BatchSizes::Tokens { per_sample: 16 }
        .apply(&mut s, 256)
        .unwrap();
    let mut b: Vec<u32> = s.arrivals.iter().map(|a| a.batch).collect();
    b.sort_unstable();
    let at = |q: f64| b[((b.len() - 1) as f64 * q) as usize];
    let clamped = b.iter().filter(|&&x| x == 256).count() as f64 / b.len() as f64;
    println!(
        "trace batch (tokens/16): p10 {} p50 {} p90 {} p99 {} max {}, {:.2}% clamped at 256",
        at(0.1),
        at(0.5),
        at(0.9),
        at(0.99),
        b[b.len() - 1],
        clamped * 100.0
    );
    assert!(b[0] >= 1 && b[b.len() - 1] <= 256);
    assert!((60..=70).contains(&at(0.5)), "{}", at(0.5));
    // The trace has a cluster of requests just above 4080 tokens (a 4K context limit).
    assert!(clamped > 0.04 && clamped < 0.07, "{clamped}");
    for (a, t) in s.arrivals.iter().zip(tr.tokens.as_ref().unwrap()) {
        assert_eq!(a.batch, t.div_ceil(16).clamp(1, 256));
    }

    let mut s = build(&cfg(ScheduleKind::Poisson, 1000.0, 20.0, 3, Shard::ALL)).unwrap();
    BatchSizes::Mlperf.apply(&mut s, 65_536).unwrap();
    let mean = s.samples() as f64 / s.arrivals.len() as f64;
    println!("mlperf sizes: mean {mean:.1} (quantile mean 270)");
    assert!((mean / 270.0 - 1.0).abs() < 0.03, "{mean}");
    assert!(s.arrivals.iter().all(|a| (100..=700).contains(&a.batch)));
    BatchSizes::Mlperf.apply(&mut s, 256).unwrap();
    assert!(s.arrivals.iter().all(|a| (100..=256).contains(&a.batch)));
    // A fixed size above the server's max batch, and token sizes without a trace, are errors.
    assert!(BatchSizes::Fixed(300).apply(&mut s, 256).is_err());
    assert!(BatchSizes::Tokens { per_sample: 16 }
        .apply(&mut s, 256)
        .is_err());
    // The error names the flag as the user gave it.
    for flag in ["trace", "tokens:16", "tokens:7"] {
        let b: BatchSizes = flag.parse().unwrap();
        let e = b.apply(&mut s, 256).unwrap_err().to_string();
        assert!(e.starts_with(&format!("--batch {flag}:")), "{flag}: {e}");
    }
}

/// The quantiles compiled into the crate are the ones shipped in workloads/traces/.
#[test]
fn the_packaged_quantiles_match_the_shipped_file() {
    let shipped = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../workloads/traces/mlperf-dlrm-v2-query-size-quantiles.txt"),
    )
    .unwrap();
    assert_eq!(shipped, streamrec_loadgen::sizes::MLPERF_QUANTILES);
}
