//! `streamrec load` end to end over loopback: three shard processes against a real
//! `streamrec serve`, started together and merged with `streamrec load merge` (what
//! `cargo xtask load --workers 3` and the Kubernetes Indexed Job do), and one-line errors for
//! bad flags.

mod common;

use common::serving::ServeProcess;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_streamrec"));
    c.current_dir(root());
    c
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("streamrec-load-cli-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn three_shards_merge_to_the_offered_rate() {
    let srv = ServeProcess::start();
    let start = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        + 1.5;
    let n = 3;
    let dirs: Vec<PathBuf> = (0..n).map(|i| tmp(&format!("shard-{i}"))).collect();
    let workers: Vec<Child> = (0..n)
        .map(|i| {
            let mut c = bin();
            c.args(["load", "--url", &srv.url, "--model", "tiny"])
                .args([
                    "--spec",
                    "workloads/tiny.toml",
                    "--qps",
                    "300",
                    "--duration",
                    "3s",
                ])
                .args(["--schedule", "poisson", "--batch", "2"])
                .args([
                    "--skew",
                    "zipf:production",
                    "--seed",
                    "9",
                    "--connections",
                    "16",
                ])
                .args(["--start-at", &format!("{start:.3}")])
                // Three generators share this host with the server and whatever else runs:
                // this test is about the merge, so a generator stall up to 200 ms is not a
                // failure here (tests/load_checks.rs and the loadgen tests check the bound).
                .args(["--max-send-lag", "200ms"])
                .arg("--out")
                .arg(&dirs[i]);
            // Shard 1 takes its index from the environment, as in an Indexed Job.
            if i == 1 {
                c.args(["--shards", "3"]).env("JOB_COMPLETION_INDEX", "1");
            } else {
                c.args(["--shard", &format!("{i}/{n}")]);
            }
            c.stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, w) in workers.into_iter().enumerate() {
        let o = w.wait_with_output().unwrap();
        assert!(o.status.success(), "worker {i}: {}", text(&o));
        let s = json(&dirs[i].join("summary.json"));
        assert_eq!(s["shards"], serde_json::json!([format!("{i}/{n}")]));
        assert_eq!(s["ok"], s["requests"], "worker {i}: {s}");
    }
    let merged = tmp("merged");
    let o = bin()
        .args(["load", "merge"])
        .args(&dirs)
        .arg("--out")
        .arg(&merged)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    println!("{}", text(&o));
    let s = json(&merged.join("summary.json"));
    let offered = s["offered_qps"].as_f64().unwrap();
    let achieved = s["achieved_qps"].as_f64().unwrap();
    println!("3 shards: offered {offered:.1} req/s, achieved {achieved:.1} req/s");
    assert_eq!(s["shards"], serde_json::json!(["0/3", "1/3", "2/3"]));
    assert!((offered / 300.0 - 1.0).abs() < 0.15, "{offered}");
    assert!((achieved / offered - 1.0).abs() < 0.02, "{s}");
    assert_eq!(s["ok"], s["requests"], "{s}");
    assert!(merged.join("latency.hdr").is_file());
    let _ = std::fs::remove_dir_all(tmp(""));
}

#[test]
fn bad_flags_are_one_line_errors() {
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "load",
                "--model",
                "m",
                "--qps",
                "1",
                "--duration",
                "1s",
                "--out",
                "x",
            ],
            "--url is required",
        ),
        (
            &[
                "load",
                "--url",
                "http://127.0.0.1:9",
                "--model",
                "m",
                "--qps",
                "0",
                "--duration",
                "1s",
                "--out",
                "x",
            ],
            "--qps",
        ),
        (
            &[
                "load",
                "--url",
                "http://127.0.0.1:9",
                "--model",
                "m",
                "--qps",
                "1",
                "--duration",
                "1s",
                "--out",
                "x",
                "--ready-timeout",
                "1ms",
            ],
            "not ready",
        ),
        (
            &[
                "load",
                "--url",
                "http://127.0.0.1:9",
                "--model",
                "m",
                "--qps",
                "1",
                "--duration",
                "1s",
                "--out",
                "x",
                "--connections",
                "100000",
            ],
            "--connections",
        ),
        (
            &[
                "load",
                "--url",
                "http://127.0.0.1:9",
                "--model",
                "m",
                "--qps",
                "1e6",
                "--duration",
                "1h",
                "--out",
                "x",
            ],
            "limit",
        ),
        (
            &[
                "load",
                "--url",
                "http://127.0.0.1:9",
                "--model",
                "m",
                "--qps",
                "1",
                "--duration",
                "0s",
                "--out",
                "x",
            ],
            "--duration",
        ),
        (
            &[
                "load",
                "--url",
                "http://127.0.0.1:9",
                "--model",
                "m",
                "--qps",
                "1",
                "--duration",
                "1s",
                "--out",
                "x",
                "--shard",
                "3/3",
            ],
            "--shard",
        ),
        (
            &[
                "load",
                "--url",
                "http://127.0.0.1:9",
                "--model",
                "m",
                "--qps",
                "1",
                "--duration",
                "1s",
                "--out",
                "x",
                "--schedule",
                "bursty",
            ],
            "--schedule",
        ),
        (
            &[
                "load",
                "--url",
                "http://127.0.0.1:9",
                "--model",
                "m",
                "--qps",
                "1",
                "--duration",
                "1s",
                "--out",
                "x",
                "--batch",
                "0",
            ],
            "--batch",
        ),
        (
            &[
                "load",
                "--url",
                "http://127.0.0.1:9",
                "--model",
                "m",
                "--qps",
                "1",
                "--duration",
                "1s",
                "--out",
                "x",
                "--skew",
                "zipf:-1",
            ],
            "--skew",
        ),
        (
            &[
                "load",
                "--url",
                "ftp://x",
                "--model",
                "m",
                "--qps",
                "1",
                "--duration",
                "1s",
                "--out",
                "x",
            ],
            "--url",
        ),
        (
            &[
                "load",
                "--url",
                "http://127.0.0.1:9",
                "--model",
                "m",
                "--qps",
                "1",
                "--duration",
                "1s",
                "--out",
                "x",
                "--shards",
                "2",
            ],
            "JOB_COMPLETION_INDEX",
        ),
        (
            &["load", "merge", "/nonexistent-streamrec-dir"],
            "summary.json",
        ),
    ];
    for (args, want) in cases {
        let o = bin()
            .args(*args)
            .env_remove("JOB_COMPLETION_INDEX")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        // One error line; a wait for the server says what it waits for on a line before it.
        let lines: Vec<&str> = err
            .trim_end()
            .lines()
            .filter(|l| !l.starts_with("streamrec load: waiting for "))
            .collect();
        assert_eq!(lines.len(), 1, "{args:?}: {err}");
    }
    // Errors from trace files and batch sizes name the row and column, and the flag as given.
    let trace = tmp("year-9999.csv");
    std::fs::write(
        &trace,
        "\u{feff}TIMESTAMP,ContextTokens\n2023-11-16 18:15:46,10\n9999-12-31 23:59:59,20\n",
    )
    .unwrap();
    let schedule = format!("trace:{}", trace.display());
    let common = [
        "load",
        "--url",
        "http://127.0.0.1:9",
        "--model",
        "m",
        "--qps",
        "1",
        "--duration",
        "1s",
        "--out",
        "x",
    ];
    let cases: &[(&[&str], &str)] = &[
        (
            &["--schedule", &schedule],
            "line 3, column 1 (TIMESTAMP): `9999-12-31 23:59:59` is out of range",
        ),
        (
            &["--schedule", "poisson", "--batch", "trace"],
            "--batch trace: needs a trace schedule",
        ),
        (
            &["--allow-failures", "2"],
            "--allow-failures: 2 is not a fraction",
        ),
        (
            &["--max-send-lag", "20s"],
            "--max-send-lag: must be in (0, --timeout",
        ),
    ];
    for (args, want) in cases {
        let o = bin().args(common).args(*args).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    }
}

#[test]
fn spec_must_match_the_server() {
    let srv = ServeProcess::start();
    let o = bin()
        .args([
            "load",
            "--url",
            &srv.url,
            "--model",
            "tiny",
            "--spec",
            "workloads/dlrm-kaggle.toml",
        ])
        .args(["--qps", "10", "--duration", "1s", "--out"])
        .arg(tmp("never"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("--spec workloads/dlrm-kaggle.toml"), "{err}");
    // Without a spec the server's metadata gives no row counts: --rows is needed.
    let o = bin()
        .args([
            "load",
            "--url",
            &srv.url,
            "--model",
            "tiny",
            "--qps",
            "10",
            "--duration",
            "1s",
        ])
        .arg("--out")
        .arg(tmp("never"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("--rows"));
    // --rows 8 (the smallest table of tiny) is valid for every feature.
    let out = tmp("rows");
    let o = bin()
        .args([
            "load", "--url", &srv.url, "--model", "tiny", "--rows", "8", "--qps", "200",
        ])
        .args([
            "--duration",
            "500ms",
            "--format",
            "json",
            "--records",
            "--max-send-lag",
            "200ms",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let s = json(&out.join("summary.json"));
    assert_eq!(s["ok"], s["requests"], "{s}");
    assert_eq!(s["format"], "json");
    assert!(out.join("records.csv").is_file());
    let _ = Duration::ZERO;
}
