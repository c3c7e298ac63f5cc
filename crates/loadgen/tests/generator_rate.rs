//! The generator alone keeps up with 21,000 requests/s offered (Poisson) against a trivial
//! loopback server, with a send lag (intended time to the start of the request) p99 under
//! 1 ms.
//!
//! The test server shares the machine's cores with the generator, and so does anything else
//! running (on a virtual machine, the host too): after a 0.5 s warm-up run that does not count,
//! up to six runs of 1.5 s are made and the best counts (each is printed), so that a burst of
//! someone else's work does not decide the result. A run that fails the bound stays red only if
//! every run does, and a run is excused only when the host itself is seen stalling threads for a
//! millisecond or more right after it (an idle thread sleeping 200 us at a time, 0.3 s: its
//! longest oversleep) and the generator still kept pace (achieved rate, send lag p50 under
//! 0.5 ms): on a quiet host a generator that lags fails.

mod support;

use std::time::Duration;

use streamrec_loadgen::*;
use support::{inputs, serve, Action};

/// Timed runs at most; the best counts.
const RUNS: usize = 6;

#[test]
fn generator_sustains_25k_requests_per_second() {
    let srv = serve(|_, _| Action::Reply(200, None));
    let qps = 21_000.0;
    let spec = LoadSpec {
        schedule: ScheduleConfig {
            kind: ScheduleKind::Poisson,
            qps,
            duration: Duration::from_millis(1500),
            max_requests: None,
            seed: 3,
            shard: Shard::ALL,
        },
        batch: BatchSizes::Fixed(1),
        max_batch: 256,
        bodies: BodyConfig::default(),
        run: RunConfig {
            connections: 64,
            warm_connections: 64,
            ..RunConfig::default()
        },
    };
    let target = Target::new(srv.url(), "m");
    let warm_up = LoadSpec {
        schedule: ScheduleConfig {
            duration: Duration::from_millis(500),
            ..spec.schedule.clone()
        },
        ..spec.clone()
    };
    let w = run_load(&target, &inputs(), &warm_up).unwrap();
    assert_eq!(w.summary.ok, w.summary.requests, "{:?}", w.summary.errors);
    let mut best = u64::MAX;
    // Runs over the bound that no host stall excuses.
    let mut unexcused = 0;
    for attempt in 1..=RUNS {
        let r = run_load(&target, &inputs(), &spec).unwrap();
        let s = &r.summary;
        println!(
            "generator, run {attempt}: offered {:.0} req/s, achieved {:.0} req/s over {:.3} s, \
             {} requests; send lag p50 {} us p99 {} us p99.9 {} us max {} us; latency p50 {} us \
             p99 {} us; {} waited for a connection",
            s.offered_qps,
            s.achieved_qps,
            s.elapsed_s,
            s.requests,
            s.send_lag_us.p50,
            s.send_lag_us.p99,
            s.send_lag_us.p999,
            s.send_lag_us.max,
            s.latency_us.p50,
            s.latency_us.p99,
            s.connection_waits
        );
        assert_eq!(s.ok, s.requests, "{:?}", s.errors);
        assert!(s.offered_qps >= 20_000.0, "{}", s.offered_qps);
        assert!(s.achieved_qps >= 20_000.0, "{}", s.achieved_qps);
        best = best.min(s.send_lag_us.p99);
        if best < 1000 {
            break;
        }
        let stall = host_stall();
        let kept_pace = s.send_lag_us.p50 < 500;
        println!(
            "  over the bound; host right after: longest oversleep of an idle thread {} us; \
             send lag p50 {} us",
            stall.as_micros(),
            s.send_lag_us.p50
        );
        if stall < Duration::from_millis(1) || !kept_pace {
            unexcused += 1;
        }
    }
    assert!(
        best < 1000 || unexcused == 0,
        "send lag p99 {best} us in the best of the runs; {unexcused} run(s) over the bound \
         without a host stall to excuse them"
    );
    if best >= 1000 {
        println!(
            "send lag p99 above 1 ms in all {RUNS} runs, each right before a host stall: \
             the bound could not be checked on this host"
        );
    }
}

/// The longest a thread sleeping 200 us at a time overslept in 0.3 s: how long this host
/// (another tenant of a virtual machine, say) keeps a ready thread off its core.
fn host_stall() -> Duration {
    let nap = Duration::from_micros(200);
    let end = std::time::Instant::now() + Duration::from_millis(300);
    let mut worst = Duration::ZERO;
    while std::time::Instant::now() < end {
        let t = std::time::Instant::now();
        std::thread::sleep(nap);
        worst = worst.max(t.elapsed().saturating_sub(nap));
    }
    worst
}
