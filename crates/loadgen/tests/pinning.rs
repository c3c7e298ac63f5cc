//! `RunConfig::cpus` pins the run's threads: seen from /proc while a run lasts, the calling
//! thread (one runtime thread) or every `loadgen` worker (several) may run only on the CPUs
//! asked for, and the calling thread has its own CPUs back afterwards.

mod support;

use std::time::{Duration, Instant};

use streamrec_loadgen::*;
use support::{inputs, serve, Action};

/// `Cpus_allowed_list` of each thread of this process whose name is `name` (or whose id is
/// `tid`), by thread id.
fn allowed(name: &str, tid: i64) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for e in dir.flatten() {
        let id: i64 = e.file_name().to_string_lossy().parse().unwrap_or(-1);
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if comm.trim() != name && id != tid {
            continue;
        }
        let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
        if let Some(l) = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        {
            out.push((id, l.trim().to_string()));
        }
    }
    out
}

/// Runs 0.6 s of load with `threads` runtime threads pinned to `cpus`, and returns what a
/// watcher saw meanwhile of the calling thread and the `loadgen` workers (each observation:
/// thread id, allowed CPUs).
fn watch_run(threads: usize, cpus: &CpuSet) -> Vec<(i64, String)> {
    let srv = serve(|_, _| Action::Reply(200, None));
    // SAFETY: gettid has no preconditions.
    let me = unsafe { libc::gettid() } as i64;
    // The run pins the calling thread before it waits for its start (200 ms away) and lets it
    // go after the last answer (800 ms or more): the watcher looks from 100 ms to 700 ms.
    let watcher = std::thread::spawn(move || {
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_millis(100));
        let mut seen = Vec::new();
        while t0.elapsed() < Duration::from_millis(700) {
            seen.extend(allowed("loadgen", me));
            std::thread::sleep(Duration::from_millis(5));
        }
        seen
    });
    let spec = LoadSpec {
        schedule: ScheduleConfig {
            kind: ScheduleKind::Constant,
            qps: 200.0,
            duration: Duration::from_millis(600),
            max_requests: None,
            seed: 1,
            shard: Shard::ALL,
        },
        batch: BatchSizes::Fixed(1),
        max_batch: 256,
        bodies: BodyConfig::default(),
        run: RunConfig {
            threads,
            cpus: Some(cpus.clone()),
            // A start 200 ms away: the calling thread is pinned while it waits.
            start_at: Some(std::time::SystemTime::now() + Duration::from_millis(200)),
            ..RunConfig::default()
        },
    };
    let r = run_load(&Target::new(srv.url(), "m"), &inputs(), &spec).unwrap();
    assert_eq!(r.summary.ok, r.summary.requests);
    watcher.join().unwrap()
}

#[test]
fn the_runs_threads_run_only_on_the_cpus_asked_for() {
    let before = CpuSet::available().unwrap();
    // One CPU of those available: on a machine with two or more, a set the threads would not
    // have had anyway.
    let one = CpuSet::new([*before.cpus().last().unwrap()]).unwrap();
    if before.len() < 2 {
        eprintln!("only CPU {before} is available: pinning cannot be told apart here");
    }
    for threads in [1, 2] {
        let seen = watch_run(threads, &one);
        assert!(
            !seen.is_empty(),
            "threads {threads}: no thread of the run seen"
        );
        for (tid, list) in &seen {
            assert_eq!(
                list,
                &one.to_string(),
                "threads {threads}: thread {tid} may run on {list}"
            );
        }
        // The calling thread, and with 2 threads the two workers too.
        let ids: std::collections::BTreeSet<i64> = seen.iter().map(|s| s.0).collect();
        assert!(ids.len() >= if threads == 1 { 1 } else { 3 }, "{ids:?}");
        // The calling thread has its CPUs back.
        assert_eq!(CpuSet::available().unwrap(), before);
    }
}

#[test]
fn a_cpu_set_the_process_may_not_use_is_refused_before_the_run() {
    let avail = CpuSet::available().unwrap();
    let outside = CpuSet::new([avail.cpus().last().unwrap() + 1]).unwrap();
    let cfg = RunConfig {
        cpus: Some(outside.clone()),
        ..RunConfig::default()
    };
    let e = cfg.check().unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("--cpus {outside}: CPU {outside} is not one")),
        "{e}"
    );
}
