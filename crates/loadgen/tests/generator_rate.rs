//! The open-loop sender, functionally: a Poisson schedule at a moderate rate against a trivial
//! loopback server is sent whole (every scheduled request sent once and answered, counted
//! exactly, each with a send lag recorded), and the run ends within its duration plus the
//! timeout. How fast the generator can go on a machine is a benchmark, not a test:
//! `cargo bench -p streamrec-loadgen --bench generator_rate` (crates/loadgen/benches/).

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use streamrec_loadgen::*;
use support::{inputs, serve, Action};

#[test]
fn a_poisson_schedule_is_sent_whole_and_counted_exactly() {
    let seen = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&seen);
    let srv = serve(move |_, _| {
        counter.fetch_add(1, Ordering::SeqCst);
        Action::Reply(200, None)
    });
    let schedule = ScheduleConfig {
        kind: ScheduleKind::Poisson,
        qps: 2_000.0,
        duration: Duration::from_millis(1000),
        max_requests: None,
        seed: 3,
        shard: Shard::ALL,
    };
    let planned = schedule::build(&schedule)
        .expect("the schedule builds")
        .arrivals
        .len() as u64;
    let spec = LoadSpec {
        schedule,
        batch: BatchSizes::Fixed(1),
        max_batch: 256,
        bodies: BodyConfig::default(),
        run: RunConfig {
            connections: 16,
            warm_connections: 16,
            // A busy host may delay a send; this test is about what is sent, not how soon.
            max_send_lag: Duration::from_secs(1),
            ..RunConfig::default()
        },
    };
    let t = Instant::now();
    let r = run_load(&Target::new(srv.url(), "m"), &inputs(), &spec).expect("the run runs");
    let s = &r.summary;
    println!(
        "{} requests: offered {:.0} req/s, achieved {:.0} req/s, send lag p50 {} us p99 {} us",
        s.requests, s.offered_qps, s.achieved_qps, s.send_lag_us.p50, s.send_lag_us.p99
    );
    assert!(
        planned > 1_500 && planned < 2_500,
        "{planned} requests planned"
    );
    assert_eq!(s.requests, planned, "every scheduled request is counted");
    assert_eq!(s.ok, planned, "{:?}", s.errors);
    assert_eq!(seen.load(Ordering::SeqCst), planned, "each sent once");
    assert_eq!(r.lag.len(), planned, "a send lag per request");
    assert!(!s.saturated);
    assert!(
        t.elapsed() < spec.schedule.duration + spec.run.timeout + Duration::from_secs(2),
        "ended after {:?}",
        t.elapsed()
    );
}
