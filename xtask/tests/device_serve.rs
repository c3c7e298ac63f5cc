//! The device run's serving step (`xtask/device/run.sh`, `STEPS=serve`) as a GPU machine runs
//! it, with the CPU standing in for CUDA: a bundle laid out as `cargo xtask device-bundle`
//! writes it (run.sh, find-libs.sh, bin/streamrec, bin/xtask, workloads/ with the trace), whose
//! `bin/streamrec` runs this build's CLI with `cuda` read as `cpu`. The step must warm each
//! server up, run `single` against `auto` with MLPerf-sized requests and write the report,
//! within its budget.

use std::path::{Path, PathBuf};
use std::process::Command;

fn bundle() -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let cli = root.join("target/debug/streamrec");
    assert!(
        cli.is_file(),
        "{} is missing: `cargo build --bin streamrec` (cargo test --workspace builds it)",
        cli.display()
    );
    let dir = std::env::temp_dir().join(format!("xtask-device-serve-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for d in ["bin", "workloads/traces"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    for f in ["run.sh", "find-libs.sh"] {
        std::fs::copy(root.join("xtask/device").join(f), dir.join(f)).unwrap();
    }
    std::fs::copy(
        root.join("workloads/tiny.toml"),
        dir.join("workloads/tiny.toml"),
    )
    .unwrap();
    for f in [
        "azure-llm-2023-conv.csv",
        "LICENSE-azure-public-dataset-CC-BY-4.0.txt",
    ] {
        std::fs::copy(
            root.join("workloads/traces").join(f),
            dir.join("workloads/traces").join(f),
        )
        .unwrap();
    }
    let streamrec = dir.join("bin/streamrec");
    std::fs::write(
        &streamrec,
        format!(
            "#!/usr/bin/env bash\nargs=()\nfor a in \"$@\"; do case $a in cuda) a=cpu ;; esac; args+=(\"$a\"); done\n\
             exec \"{}\" \"${{args[@]}}\"\n",
            cli.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&streamrec, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_xtask"), dir.join("bin/xtask")).unwrap();
    dir
}

#[test]
fn the_serving_step_runs_single_against_auto_and_writes_its_report() {
    let dir = bundle();
    let out = dir.join("out");
    let o = Command::new("bash")
        .arg(dir.join("run.sh"))
        .env("OUT", &out)
        .env("STEPS", "serve")
        .env("SERVE_MODEL", "tiny")
        .env("SERVE_ROW_CAP", "1000")
        .env(
            "SERVE_ARGS",
            "--serve-secs 0.3 --serve-passes 1 --serve-rounds 1 --serve-start-qps 100 \
             --serve-growth 4 --serve-load-threads 1",
        )
        .env("SERVE_BUDGET", "150")
        .env("DEADLINE", "200")
        .output()
        .expect("bash runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(o.status.code(), Some(0), "{text}");
    let log = std::fs::read_to_string(out.join("serving.log")).expect("serving.log");
    // Each server is warmed up with the experiment's requests before its first point.
    for p in ["single", "auto"] {
        assert!(
            log.contains(&format!("{p} warm-up (not recorded): ")),
            "{log}"
        );
    }
    let md = std::fs::read_to_string(out.join("serving/serving.md")).expect("serving.md");
    assert!(md.contains("single") && md.contains("auto"), "{md}");
    let csv = std::fs::read_to_string(out.join("serving/serving.csv")).expect("serving.csv");
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).expect(name);
    let (plan, requests, samples, achieved) = (
        col("plan"),
        col("requests"),
        col("samples_per_s"),
        col("achieved_qps"),
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    for p in ["single", "auto"] {
        assert!(rows.iter().any(|r| r[plan] == p), "no {p} row: {csv}");
    }
    // MLPerf-sized requests: at least 100 samples each, so samples/s >= 100 x requests/s.
    for r in rows.iter().filter(|r| r[requests] != "0") {
        let (s, q): (f64, f64) = (r[samples].parse().unwrap(), r[achieved].parse().unwrap());
        assert!(s >= 100.0 * q * 0.999, "{s} samples/s at {q} req/s: {csv}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
