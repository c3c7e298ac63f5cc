//! What `streamrec load` and `streamrec load merge` refuse and report, as a user meets it:
//! `--out` is checked before anything is sent (a path under a regular file, a folder holding
//! other files, `--replace` removing only result files), failed requests and a saturated
//! generator exit 1 after the summary is printed and written, the wait for the server says
//! what it waits for, and merge errors name the shard files and say their cause once.

mod common;

use common::serving::ServeProcess;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use streamrec_loadgen::results::{histogram, SUMMARY_VERSION};
use streamrec_loadgen::{Percentiles, RunResult, Summary};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_streamrec"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

/// A fresh folder for one test.
fn scratch(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "streamrec-load-checks-{}-{test}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The `error:` lines of stderr (main prints exactly one for a failed command).
fn error_lines(o: &Output) -> Vec<String> {
    stderr(o)
        .lines()
        .filter(|l| l.starts_with("error: "))
        .map(String::from)
        .collect()
}

/// A loopback URL where nothing listens.
fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    url
}

/// `streamrec load` against `url` (model tiny, 200 req/s for 0.5 s) with `extra` flags.
fn load(url: &str, out: &Path, extra: &[&str]) -> Output {
    bin()
        .args(["load", "--url", url, "--model", "tiny"])
        .args(["--qps", "200", "--duration", "500ms", "--out"])
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn out_is_checked_before_anything_is_sent() {
    let d = scratch("out");
    std::fs::write(d.join("FILE"), "a file").unwrap();
    // Nothing listens and the ready wait is a minute long: only a check made before the wait
    // can answer at once, and it names the flag.
    let url = dead_url();
    let o = load(&url, &d.join("FILE/sub"), &["--ready-timeout", "60s"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = error_lines(&o);
    assert_eq!(err.len(), 1, "{}", stderr(&o));
    assert!(err[0].starts_with("error: --out "), "{}", err[0]);
    assert!(!stderr(&o).contains("waiting for"), "{}", stderr(&o));
    // A folder with anything in it: refused without --replace.
    let full = d.join("full");
    std::fs::create_dir_all(&full).unwrap();
    std::fs::write(full.join("summary.json"), "{}").unwrap();
    let o = load(&url, &full, &["--ready-timeout", "60s"]);
    let err = error_lines(&o);
    assert!(
        err[0].contains("is not empty") && err[0].contains("--replace"),
        "{err:?}"
    );
    // With --replace, a folder holding something else than results (a working folder) is
    // refused and keeps everything.
    std::fs::write(full.join("notes.txt"), "mine").unwrap();
    let o = load(&url, &full, &["--replace", "--ready-timeout", "60s"]);
    let err = error_lines(&o);
    assert!(
        err[0].contains("`notes.txt`, which this tool did not write"),
        "{err:?}"
    );
    assert!(full.join("notes.txt").is_file() && full.join("summary.json").is_file());
    // A folder the run made, and left empty when the run failed before writing, goes again.
    let fresh = d.join("fresh");
    let o = load(&url, &fresh, &["--ready-timeout", "1ms"]);
    assert!(error_lines(&o)[0].contains("not ready"), "{}", stderr(&o));
    assert!(!fresh.exists());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn the_wait_for_the_server_says_what_it_waits_for() {
    let url = dead_url();
    let d = scratch("wait");
    let o = load(&url, &d.join("r"), &["--ready-timeout", "300ms"]);
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "streamrec load: waiting for {url}/v2/models/tiny/ready to answer 200 (timeout 0.3 s)"
        )),
        "{err}"
    );
    assert_eq!(error_lines(&o).len(), 1, "{err}");
    assert!(error_lines(&o)[0].contains("not ready after"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn failed_requests_and_a_saturated_generator_exit_1_after_the_summary() {
    let srv = ServeProcess::start();
    let d = scratch("exit");
    // Indices far beyond tiny's tables: every request is answered 400.
    let out = d.join("bad-rows");
    let o = load(
        &srv.url,
        &out,
        &["--rows", "100000", "--max-send-lag", "1s"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let s: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    let n = s["requests"].as_u64().unwrap();
    assert!(n > 50, "{s}");
    assert_eq!(s["errors"]["status_400"], n, "{s}");
    assert!(
        stdout(&o).contains(&format!("ok 0, failed {n}")),
        "{}",
        stdout(&o)
    );
    let err = error_lines(&o);
    assert_eq!(
        err,
        [format!(
            "error: streamrec load: {n} of {n} requests failed (status_400 {n}), more than \
             --allow-failures 0 allows"
        )]
    );
    // Allowed: the same run exits 0 (and --replace lets it reuse the folder).
    let o = load(
        &srv.url,
        &out,
        &[
            "--rows",
            "100000",
            "--max-send-lag",
            "1s",
            "--allow-failures",
            "1",
            "--replace",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // A send-lag bound no generator keeps (1 ns): saturated, the run is invalid, exit 1.
    let out = d.join("saturated");
    let o = load(
        &srv.url,
        &out,
        &["--rows", "8", "--max-send-lag", "0.000001ms"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let s: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(s["saturated"], true, "{s}");
    assert_eq!(s["ok"], s["requests"], "{s}");
    assert!(
        stdout(&o).contains("INVALID: generator saturated: "),
        "{}",
        stdout(&o)
    );
    let err = error_lines(&o);
    assert_eq!(err.len(), 1, "{}", stderr(&o));
    assert!(
        err[0].starts_with("error: streamrec load: generator saturated: "),
        "{err:?}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

/// A consistent result of shard `i/n` (12 requests, all ok) written to `dir`.
fn write_shard(dir: &Path, i: u32, n: u32, edit: impl Fn(&mut Summary)) {
    let mut latency = histogram();
    let mut lag = histogram();
    latency.record_n(150, 12).unwrap();
    lag.record_n(20, 12).unwrap();
    let mut summary = Summary {
        version: SUMMARY_VERSION,
        protocol: "http".into(),
        url: "http://127.0.0.1:8000".into(),
        model: "tiny".into(),
        schedule: "poisson".into(),
        batch: "1".into(),
        skew: "uniform".into(),
        format: "binary".into(),
        seed: 1,
        shards: vec![format!("{i}/{n}")],
        target_qps: 200.0 / f64::from(n),
        duration_s: 1.0,
        requests: 12,
        ok: 12,
        samples_ok: 12,
        offered_qps: 12.0,
        achieved_qps: 12.0,
        samples_per_s: 12.0,
        elapsed_s: 1.0,
        latency_us: Percentiles::of(&latency),
        send_lag_us: Percentiles::of(&lag),
        status: [("200".to_string(), 12)].into(),
        grpc_status: Default::default(),
        errors: Default::default(),
        connection_waits: 0,
        connections: 64,
        not_sent: 0,
        send_lag_bound_us: 10_000,
        late: 0,
        saturated: false,
        missing_shards: Vec::new(),
    };
    edit(&mut summary);
    RunResult {
        summary,
        latency,
        lag,
        records: Vec::new(),
        start: None,
        from: None,
    }
    .write(dir)
    .unwrap();
}

#[test]
fn merge_errors_name_the_files_and_say_their_cause_once() {
    let d = scratch("merge");
    let (a, b) = (d.join("a"), d.join("b"));
    write_shard(&a, 0, 2, |_| {});
    write_shard(&b, 1, 2, |s| s.model = "dlrm-kaggle".into());
    let merge = |args: &[&Path], extra: &[&str]| {
        bin()
            .args(["load", "merge"])
            .args(args)
            .args(extra)
            .output()
            .unwrap()
    };
    let o = merge(&[&a, &b], &[]);
    let err = error_lines(&o);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(err.len(), 1, "{}", stderr(&o));
    assert!(
        err[0].contains("model differs (`tiny` and `dlrm-kaggle`)"),
        "{err:?}"
    );
    assert!(
        err[0].contains(&a.join("summary.json").display().to_string())
            && err[0].contains(&b.join("summary.json").display().to_string()),
        "{err:?}"
    );
    // A missing shard: an error naming it, unless --partial (then the summary says so).
    let o = merge(&[&a], &[]);
    assert!(error_lines(&o)[0].contains("shards 1/2 of the split are missing"));
    let o = merge(&[&a], &["--partial"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("PARTIAL: shards 1/2 missing"),
        "{}",
        stdout(&o)
    );
    // A folder that is not there: the I/O error's text once.
    let gone = d.join("b1");
    let o = merge(&[&gone], &[]);
    let err = error_lines(&o);
    assert_eq!(err.len(), 1, "{}", stderr(&o));
    let cause = std::io::Error::from_raw_os_error(2).to_string();
    assert!(err[0].contains("b1/summary.json: "), "{err:?}");
    assert_eq!(err[0].matches(&cause).count(), 1, "{err:?}");
    // --out with --replace keeps anything that is not a result file.
    write_shard(&b, 1, 2, |_| {});
    let merged = d.join("merged");
    std::fs::create_dir_all(&merged).unwrap();
    std::fs::write(merged.join("notes.txt"), "mine").unwrap();
    let o = merge(&[&a, &b], &["--out", merged.to_str().unwrap(), "--replace"]);
    assert!(
        error_lines(&o)[0].contains("did not write"),
        "{}",
        stderr(&o)
    );
    std::fs::remove_file(merged.join("notes.txt")).unwrap();
    let o = merge(&[&a, &b], &["--out", merged.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(merged.join("summary.json").is_file());
    let _ = std::fs::remove_dir_all(&d);
}
