//! The generator watches its own send lag. With a bound no generator can keep (1 ns: a request
//! cannot start within a nanosecond of its intended time), more than 1% of the requests are
//! late and the summary says the generator saturated: the run is invalid. With a timeout no
//! generator can keep either (1 us), the pacer reaches requests after their intended time plus
//! the timeout and does not send them: they are counted as not sent, apart from the server's
//! timeouts. Both are deterministic: neither depends on how fast this host is.

mod support;

use std::time::Duration;

use streamrec_loadgen::*;
use support::{inputs, serve, Action};

fn spec(run: RunConfig) -> LoadSpec {
    LoadSpec {
        schedule: ScheduleConfig {
            kind: ScheduleKind::Constant,
            qps: 2000.0,
            duration: Duration::from_millis(100),
            max_requests: None,
            seed: 1,
            shard: Shard::ALL,
        },
        batch: BatchSizes::Fixed(1),
        max_batch: 256,
        bodies: BodyConfig::default(),
        run,
    }
}

#[test]
fn a_generator_behind_its_send_lag_bound_reports_saturation() {
    let srv = serve(|_, _| Action::Reply(200, None));
    let run = RunConfig {
        max_send_lag: Duration::from_nanos(1),
        ..RunConfig::default()
    };
    let r = run_load(&Target::new(srv.url(), "m"), &inputs(), &spec(run)).unwrap();
    let s = &r.summary;
    println!("{}", describe(s));
    assert_eq!(s.requests, 200);
    assert_eq!(s.ok, 200, "{:?}", s.errors);
    assert_eq!(s.send_lag_bound_us, 0);
    assert!(s.late > 2, "{}", s.late);
    assert!(s.saturated && !s.valid());
    let note = saturation_note(s).unwrap();
    assert!(note.starts_with("generator saturated: "), "{note}");
    assert!(describe(s).contains(&format!("INVALID: {note}")));
    // The verdict is in summary.json, and reads back.
    let dir = std::env::temp_dir().join(format!("streamrec-saturation-{}", std::process::id()));
    r.write(&dir).unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(json["saturated"], true);
    assert_eq!(json["late"], s.late);
    assert!(RunResult::read(&dir).unwrap().summary.saturated);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn requests_the_generator_reaches_too_late_are_not_sent() {
    let srv = serve(|_, _| Action::Reply(200, None));
    let run = RunConfig {
        timeout: Duration::from_micros(1),
        max_send_lag: Duration::from_nanos(1),
        records: true,
        ..RunConfig::default()
    };
    let r = run_load(&Target::new(srv.url(), "m"), &inputs(), &spec(run)).unwrap();
    let s = &r.summary;
    println!("{}", describe(s));
    assert!(s.not_sent > 0, "{}", describe(s));
    assert_eq!(s.ok + s.failed() + s.not_sent, s.requests);
    // Not sent is its own count, never a timeout or any other error kind.
    assert!(!s.errors.contains_key("not_sent"), "{:?}", s.errors);
    let by_record = r
        .records
        .iter()
        .filter(|x| x.outcome == Outcome::NotSent)
        .count() as u64;
    assert_eq!(by_record, s.not_sent);
    assert_eq!(r.records.len() as u64, s.requests);
    // The send-lag histogram holds the requests sent; the late count includes those not sent.
    assert_eq!(r.lag.len(), s.requests - s.not_sent);
    assert!(s.late >= s.not_sent && s.saturated);
    // What reached the server was sent.
    assert!(srv.requests.load(std::sync::atomic::Ordering::SeqCst) <= s.requests - s.not_sent);
}
