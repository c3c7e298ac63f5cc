//! `cargo xtask cluster` end to end (as root, with `ip netns`; otherwise each test says that it
//! skipped): a short cluster of 2 replicas, nginx and 3 workers through every fault scenario,
//! whose checks must all pass and which must leave no namespace and no process behind; and the
//! refusal to send anything when a namespace has a route out.
//!
//! The workers and replicas are the debug `streamrec` binary that `cargo test --workspace`
//! builds for the root package's tests (target/debug/streamrec).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

fn skip_reason() -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("not root".into());
    }
    match Command::new("ip").args(["netns", "list"]).output() {
        Ok(o) if o.status.success() => None,
        _ => Some("`ip netns` is unavailable".into()),
    }
}

/// The streamrec binary, or None (having said why) when this machine cannot run a cluster.
fn streamrec_or_skip() -> Option<PathBuf> {
    if let Some(why) = skip_reason() {
        println!("skipped: {why} (cargo xtask cluster needs root and network namespaces)");
        return None;
    }
    let b = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/streamrec");
    assert!(
        b.is_file(),
        "{} is missing: `cargo build --bin streamrec` (cargo test --workspace builds it)",
        b.display()
    );
    Some(b)
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("xtask-cluster-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// `cargo xtask cluster --bin BIN --out OUT ARGS`: its output and its stdout and stderr.
fn xtask(bin: &Path, out: &Path, args: &[&str]) -> (Output, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("cluster")
        .arg("--bin")
        .arg(bin)
        .arg("--out")
        .arg(out)
        .args(args)
        .output()
        .expect("xtask runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

/// The run's namespace prefix, from its first line (`cluster PREFIX: ...`).
fn prefix(text: &str) -> String {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("cluster "))
        .unwrap_or_else(|| panic!("no `cluster PREFIX:` line in:\n{text}"));
    line.split(':').next().unwrap().to_string()
}

/// Nothing of the run is left: no namespace of its prefix, no process naming its folder.
fn assert_nothing_left(prefix: &str, out: &Path) {
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(
        !list.lines().any(|l| l.starts_with(prefix)),
        "namespaces of {prefix} left:\n{list}"
    );
    let needle = out.display().to_string();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            assert!(
                !cmd.contains(&needle),
                "process {:?} left: {cmd}",
                e.file_name()
            );
        }
    }
}

#[test]
fn a_short_cluster_passes_every_fault_scenario_and_leaves_nothing() {
    let Some(bin) = streamrec_or_skip() else {
        return;
    };
    let out = scratch("run");
    let t = Instant::now();
    let (o, text) = xtask(
        &bin,
        &out,
        &[
            "--workers",
            "3",
            "--replicas",
            "2",
            "--qps",
            "200",
            "--duration",
            "3s",
        ],
    );
    println!("{text}\n(cluster run: {:.1} s)", t.elapsed().as_secs_f64());
    let p = prefix(&text);
    assert_nothing_left(&p, &out);
    assert!(o.status.success(), "cargo xtask cluster failed:\n{text}");
    for want in [
        "[ok] base: offered vs achieved within 2%",
        "[ok] base: merged counts equal the replicas' metrics",
        "[ok] worker-link: the cut-off worker's shard records its failures with their reasons",
        "[ok] worker-link: the other shards are unaffected",
        "[ok] worker-kill: the merge names the missing shard and refuses",
        "[ok] worker-kill: --partial marks the run partial",
        "[ok] replica-link: nginx routes around the cut-off replica",
        "[ok] late-start: the late worker says it started late",
        "[ok] late-start: merged counts equal the replicas' metrics",
        "teardown: every process stopped",
    ] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("### Phase `replica-link`") && report.contains("p99.9"));
    let hosts = std::fs::read_to_string(out.join("hosts.tsv")).unwrap();
    assert!(
        hosts.contains("192.0.2.10") && hosts.contains("192.0.2.102"),
        "{hosts}"
    );
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_namespace_with_a_route_out_is_refused_before_anything_starts() {
    let Some(bin) = streamrec_or_skip() else {
        return;
    };
    let out = scratch("refused");
    let (o, text) = xtask(&bin, &out, &["--faults", "none", "--test-route-out", "w1"]);
    println!("{text}");
    let p = prefix(&text);
    assert_nothing_left(&p, &out);
    assert!(!o.status.success(), "ran with a route out:\n{text}");
    assert!(
        text.contains(&format!(
            "refusing to run: namespace `{p}-w1` has a route out"
        )) && text.contains("a default route"),
        "{text}"
    );
    assert!(!out.join("r0.log").exists(), "a replica was started");
    let _ = std::fs::remove_dir_all(&out);
}
