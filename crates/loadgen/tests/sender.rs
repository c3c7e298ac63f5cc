//! The open-loop sender against loopback test servers: a 200 ms stall shows in every request
//! whose intended time fell inside it (no coordinated omission), and every failure is counted
//! by kind.

mod support;

use std::time::{Duration, Instant};

use streamrec_loadgen::*;
use support::{inputs, serve, Action};

fn spec(kind: ScheduleKind, qps: f64, ms: u64, run: RunConfig) -> LoadSpec {
    LoadSpec {
        schedule: ScheduleConfig {
            kind,
            qps,
            duration: Duration::from_millis(ms),
            max_requests: None,
            seed: 1,
            shard: Shard::ALL,
        },
        batch: BatchSizes::Fixed(2),
        max_batch: 256,
        bodies: BodyConfig::default(),
        run,
    }
}

#[test]
fn a_stall_shows_in_every_request_sent_during_it() {
    // The server holds every request it receives in [s0, s1) until s1; the run starts about
    // 300 ms from now and the stall begins about 200 ms into it.
    let start_at = std::time::SystemTime::now() + Duration::from_millis(300);
    let s0 = Instant::now() + Duration::from_millis(500);
    let s1 = s0 + Duration::from_millis(200);
    let srv = serve(move |_, t| {
        if t >= s0 && t < s1 {
            Action::Reply(200, Some(s1))
        } else {
            Action::Reply(200, None)
        }
    });
    let run = RunConfig {
        connections: 64,
        records: true,
        start_at: Some(start_at),
        ..RunConfig::default()
    };
    let r = run_load(
        &Target::new(srv.url(), "m"),
        &inputs(),
        &spec(ScheduleKind::Constant, 1000.0, 600, run),
    )
    .unwrap();
    let start = r.start.unwrap();
    assert_eq!(r.records.len(), 600);
    assert_eq!(r.summary.ok, 600, "{:?}", r.summary.errors);
    let mut inside = 0;
    for rec in &r.records {
        let intended = start + Duration::from_nanos(rec.intended_ns);
        let done = intended + Duration::from_nanos(rec.latency_ns);
        if intended >= s0 && intended < s1 {
            inside += 1;
            // The answer cannot come before the stall ends, and the latency counts from the
            // intended time, not from when a connection was free.
            assert!(
                done >= s1,
                "request {} intended {:?} into the stall recorded only {} us",
                rec.index,
                intended - s0,
                rec.latency_ns / 1000
            );
        }
    }
    // About 200 requests fell inside the stall, more than the 64 connections: the ones that
    // waited for a connection also record the stall.
    assert!((190..=210).contains(&inside), "{inside}");
    assert!(r.summary.connection_waits > 0);
    let l = &r.summary.latency_us;
    println!(
        "stall: {inside} requests inside, latency p50 {} us p99 {} us max {} us, {} waited for a connection",
        l.p50, l.p99, l.max, r.summary.connection_waits
    );
    assert!(l.max >= 195_000 && l.max < 400_000, "{}", l.max);
}

#[test]
fn every_failure_is_counted_by_kind() {
    // Request n: n % 5 == 1 -> 503, == 2 -> connection closed, == 3 -> held past the timeout.
    let srv = serve(|n, t| match n % 5 {
        1 => Action::Reply(503, None),
        2 => Action::Close,
        3 => Action::Reply(200, Some(t + Duration::from_millis(400))),
        _ => Action::Reply(200, None),
    });
    let run = RunConfig {
        timeout: Duration::from_millis(150),
        records: true,
        ..RunConfig::default()
    };
    let r = run_load(
        &Target::new(srv.url(), "m"),
        &inputs(),
        &spec(ScheduleKind::Poisson, 400.0, 500, run),
    )
    .unwrap();
    let s = &r.summary;
    let e = |k: &str| s.errors.get(k).copied().unwrap_or(0);
    println!("{}", describe(s));
    assert_eq!(s.ok + s.failed(), s.requests, "{:?}", s.errors);
    assert_eq!(r.records.len() as u64, s.requests);
    assert!(
        e("status_503") > 0 && e("io") > 0 && e("timeout") > 0,
        "{:?}",
        s.errors
    );
    assert_eq!(s.status.get("503").copied().unwrap_or(0), e("status_503"));
    assert_eq!(s.latency_us.count, s.ok);
    // The server saw every request that reached it once: answered, closed or held.
    assert!(srv.requests.load(std::sync::atomic::Ordering::SeqCst) >= s.ok + e("status_503"));
}

#[test]
fn refused_connections_are_counted() {
    // A port nobody listens on: with no warm connections every request fails to connect.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    let run = RunConfig {
        warm_connections: 0,
        ..RunConfig::default()
    };
    let r = run_load(
        &Target::new(url.clone(), "m"),
        &inputs(),
        &spec(ScheduleKind::Constant, 200.0, 100, run),
    )
    .unwrap();
    assert_eq!(r.summary.requests, 20);
    assert_eq!(r.summary.errors.get("connect"), Some(&20));
    // With warm connections the run refuses to start, with a one-line error.
    let e = run_load(
        &Target::new(url, "m"),
        &inputs(),
        &spec(ScheduleKind::Constant, 200.0, 100, RunConfig::default()),
    )
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("cannot connect to http://127.0.0.1:"), "{e}");
    assert!(!e.contains('\n'));
}

#[test]
fn bad_settings_are_one_line_errors() {
    let t = Target::new("http://127.0.0.1:9", "m");
    let cases: Vec<(LoadSpec, &str)> = vec![
        (
            spec(ScheduleKind::Constant, 0.0, 100, RunConfig::default()),
            "--qps",
        ),
        (
            spec(ScheduleKind::Constant, 2e6, 100, RunConfig::default()),
            "--qps",
        ),
        (
            spec(
                ScheduleKind::Constant,
                10.0,
                100,
                RunConfig {
                    connections: 0,
                    ..RunConfig::default()
                },
            ),
            "--connections",
        ),
        (
            spec(
                ScheduleKind::Constant,
                10.0,
                100,
                RunConfig {
                    timeout: Duration::ZERO,
                    ..RunConfig::default()
                },
            ),
            "--timeout",
        ),
    ];
    for (s, flag) in cases {
        let e = run_load(&t, &inputs(), &s).unwrap_err().to_string();
        assert!(e.starts_with(flag), "{flag}: {e}");
        assert!(!e.contains('\n'), "{e}");
    }
}
