//! The `streamrec` binary: one clear error line and a non-zero status for bad specs, bad
//! requests and unavailable backends; scores for a request file; plans, DOT and comparisons.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn streamrec(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_streamrec"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("streamrec runs")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("streamrec-cli-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

fn one_error_line(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success(), "expected failure, stderr: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {err}");
    lines[0].to_string()
}

#[test]
fn a_spec_with_a_mistake_names_the_field() {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads/tiny.toml"))
            .unwrap();
    let p = tmp("bad.toml");
    std::fs::write(
        &p,
        text.replace("rows = [100, 37, 250, 8]", "rows = [100, 37, 0, 8]"),
    )
    .unwrap();
    let o = streamrec(&["run", p.to_str().unwrap(), "--batch", "4", "--iters", "1"]);
    let line = one_error_line(&o);
    assert!(line.ends_with("sparse[2].rows: must be > 0"), "{line}");
    assert_eq!(o.status.code(), Some(1));
    std::fs::write(&p, text.replace("kind = \"dot\"", "kind = \"dott\"")).unwrap();
    let line = one_error_line(&streamrec(&["plan", p.to_str().unwrap()]));
    assert!(line.contains("unknown variant `dott`"), "{line}");
    let line = one_error_line(&streamrec(&["plan", "workloads/missing.toml"]));
    assert!(line.contains("workloads/missing.toml"), "{line}");
}

#[test]
fn a_request_with_an_out_of_range_index_is_refused() {
    let o = streamrec(&[
        "run",
        "workloads/tiny.toml",
        "--batch",
        "3",
        "--emit-request",
        "--seed",
        "9",
    ]);
    assert!(o.status.success());
    let mut req: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // A good request gives three scores.
    let good = tmp("good.json");
    std::fs::write(&good, req.to_string()).unwrap();
    let o = streamrec(&[
        "run",
        "workloads/tiny.toml",
        "--input",
        good.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let resp: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(resp["outputs"][0]["name"], "score");
    assert_eq!(resp["outputs"][0]["shape"], serde_json::json!([3, 1]));
    assert_eq!(resp["outputs"][0]["data"].as_array().unwrap().len(), 3);
    // Index 5 of feature C3 (250 rows) set to 250.
    let inputs = req["inputs"].as_array_mut().unwrap();
    let c3 = inputs.iter_mut().find(|t| t["name"] == "C3").unwrap();
    c3["data"][5] = serde_json::json!(250);
    let bad = tmp("bad.json");
    std::fs::write(&bad, req.to_string()).unwrap();
    let o = streamrec(&[
        "run",
        "workloads/tiny.toml",
        "--input",
        bad.to_str().unwrap(),
    ]);
    let line = one_error_line(&o);
    assert!(
        line.ends_with("C3: index at position 5 is 250, out of range for a table of 250 rows"),
        "{line}"
    );
}

#[test]
fn cuda_backend_without_a_device_is_a_clear_error_with_status_2() {
    let o = streamrec(&[
        "run",
        "workloads/tiny.toml",
        "--backend",
        "cuda",
        "--batch",
        "2",
        "--iters",
        "1",
    ]);
    if o.status.success() {
        println!("a CUDA device is present: the unavailable path is not exercised here");
        return;
    }
    let line = one_error_line(&o);
    assert!(line.contains("CUDA backend unavailable: "), "{line}");
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn plan_prints_dot_and_comparisons() {
    let o = streamrec(&[
        "plan",
        "workloads/streamrec-26.toml",
        "--dot",
        "--algo",
        "streamrec",
        "--streams",
        "8",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let dot = String::from_utf8(o.stdout).unwrap();
    assert!(dot.starts_with("digraph") && dot.contains("emb.C26") && dot.contains("stream 7"));
    let o = streamrec(&[
        "plan",
        "workloads/streamrec-26.toml",
        "--compare",
        "--batch",
        "1",
        "--streams",
        "8",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    for algo in [
        "single",
        "round-robin",
        "streamrec",
        "nimble",
        "critical-path",
        "auto",
    ] {
        let r = rows
            .iter()
            .find(|r| {
                r["algo"]
                    .as_str()
                    .is_some_and(|a| a == algo || (algo == "auto" && a.starts_with("auto")))
            })
            .unwrap_or_else(|| panic!("no row for {algo}"));
        for key in [
            "streams",
            "waits",
            "predicted_us_eager",
            "predicted_us_graph",
            "ratio_to_single_graph",
        ] {
            assert!(r[key].is_number(), "{algo}.{key}");
        }
    }
    let o = streamrec(&[
        "run",
        "workloads/tiny.toml",
        "--batch",
        "4",
        "--iters",
        "3",
        "--algo",
        "nimble",
        "--streams",
        "2",
        "--csv",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let csv = String::from_utf8(o.stdout).unwrap();
    assert!(
        csv.starts_with("model,backend,algo,streams") && csv.contains("tiny,cpu,nimble,2"),
        "{csv}"
    );
}

/// Runs the binary under a 4 GiB address-space limit (`ulimit -v`) and a 60 s deadline: a bad
/// input must fail fast with one line, never grow, hang or abort.
fn streamrec_bounded(args: &[&str]) -> Output {
    use std::io::Read;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 4194304 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_streamrec"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("streamrec runs");
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed() > std::time::Duration::from_secs(60) {
            child.kill().ok();
            panic!("streamrec {args:?} still running after 60 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    child.stdout.take().unwrap().read_to_end(&mut stdout).ok();
    child.stderr.take().unwrap().read_to_end(&mut stderr).ok();
    Output {
        status,
        stdout,
        stderr,
    }
}

/// One error line and exit status 1 (not 101, a panic, nor 134, an abort).
fn fails_with(args: &[&str], expected: &str) {
    let o = streamrec_bounded(args);
    let line = one_error_line(&o);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {line}");
    assert!(
        line.contains(expected),
        "{args:?}: expected `{expected}` in: {line}"
    );
}

fn tiny_text() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads/tiny.toml"))
        .unwrap()
}

/// Writes tiny.toml with one replacement (which must apply) and returns the path.
fn tiny_with(file: &str, from: &str, to: &str) -> String {
    let text = tiny_text();
    assert!(text.contains(from), "tiny.toml has no `{from}`");
    let p = tmp(file);
    std::fs::write(&p, text.replace(from, to)).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn huge_spec_sizes_are_one_line_errors_naming_the_field() {
    let cases = [
        (
            "rows.toml",
            "rows = [100, 37, 250, 8]",
            "rows = 9223372036854775807",
            "sparse[0].rows: is 9223372036854775807, more than the limit of 1099511627776",
        ),
        (
            "pooling.toml",
            "pooling = [1, 2, 3, 1]",
            "pooling = 1000000000000",
            "sparse[0].pooling: is 1000000000000, more than the limit of 4096",
        ),
        (
            "layers.toml",
            "kind = \"dot\"",
            "kind = \"dcn\"\nlayers = 100000000\nrank = 8",
            "interaction.layers: is 100000000, more than the limit of 64",
        ),
        (
            "rank.toml",
            "kind = \"dot\"",
            "kind = \"dcn\"\nlayers = 2\nrank = 100000000000",
            "interaction.rank: is 100000000000, more than the limit of 65536",
        ),
        (
            "count.toml",
            "count = 4\nrows = [100, 37, 250, 8]",
            "count = 100000000\nrows = 100",
            "sparse.count: is 100000000, more than the limit of 1024",
        ),
        (
            "dim.toml",
            "dim = 16",
            "dim = 4000000000",
            "sparse.dim: is 4000000000, more than the limit of 8192",
        ),
        (
            "width.toml",
            "layers = [32, 16]",
            "layers = [32, 10000000000]",
            "bottom.layers[1]: is 10000000000, more than the limit of 65536",
        ),
    ];
    for (file, from, to, expected) in cases {
        let p = tiny_with(file, from, to);
        fails_with(&["run", &p, "--batch", "4", "--iters", "1"], expected);
        fails_with(&["plan", &p], expected);
    }
}

#[test]
fn a_table_too_big_for_the_memory_limit_is_refused_before_allocating() {
    // 2^40 rows x 16 floats is within the row limit but 64 TiB of weights.
    let p = tiny_with(
        "big-table.toml",
        "rows = [100, 37, 250, 8]",
        "rows = 1099511627776",
    );
    fails_with(
        &["run", &p, "--batch", "4", "--iters", "1"],
        "shrink the tables with --row-cap N",
    );
    // The plan needs no weights: it still works.
    let o = streamrec_bounded(&["plan", &p]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn bad_flags_are_one_line_errors() {
    let t = "workloads/tiny.toml";
    fails_with(
        &["run", t, "--batch", "100000000", "--iters", "1"],
        "--batch: 100000000 is more than the limit of 65536",
    );
    fails_with(&["run", t, "--batch", "0"], "--batch: must be > 0");
    fails_with(&["run", t, "--iters", "0"], "--iters: must be > 0");
    fails_with(&["run", t, "--threads", "0"], "--threads: must be > 0");
    fails_with(
        &["run", t, "--intra-op-threads", "0"],
        "--cpu-threads: must be > 0",
    );
    fails_with(&["run", t, "--contexts", "0"], "--contexts: must be > 0");
    fails_with(
        &["run", t, "--cpu-isa", "sse9", "--iters", "1"],
        "--cpu-isa: unknown CPU ISA \"sse9\" (expected avx512, avx2 or portable)",
    );
    fails_with(
        &["run", t, "--contexts", "100000"],
        "--contexts: 100000 is more than the limit of 64",
    );
    fails_with(
        &["run", t, "--streams", "1000000000", "--iters", "1"],
        "--streams: 1000000000 is more than the limit of 256",
    );
    fails_with(
        &["plan", t, "--streams", "1000000000"],
        "--streams: 1000000000 is more than the limit of 256",
    );
    fails_with(
        &["plan", t, "--batch", "100000000"],
        "--batch: 100000000 is more than the limit of 65536",
    );
    fails_with(
        &[
            "run",
            t,
            "--backend",
            "cpu",
            "--graph",
            "on",
            "--iters",
            "1",
        ],
        "--graph on: CUDA graphs need the CUDA backend",
    );
    fails_with(
        &["run", t, "--graph", "on", "--profile", "p.json"],
        "--profile: per-op times need eager execution",
    );
    fails_with(
        &["run", t, "--backend", "cpu", "--tf32", "--iters", "1"],
        "--tf32: TF32 needs the CUDA backend",
    );
}

#[test]
fn flags_that_do_not_apply_together_are_refused() {
    let t = "workloads/tiny.toml";
    for args in [
        &["run", t, "--input", "x.json", "--trace", "t.json"][..],
        &["run", t, "--input", "x.json", "--iters", "5"],
        &["run", t, "--emit-request", "--compare"],
        &["run", t, "--compare", "--profile", "p.json"],
        &["plan", t, "--json"],
        &["plan", t, "--dot", "--compare"],
    ] {
        let o = streamrec(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("cannot be used with") || err.contains("required arguments"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn overflowing_and_oversized_requests_are_refused() {
    let o = streamrec(&[
        "run",
        "workloads/tiny.toml",
        "--batch",
        "2",
        "--emit-request",
    ]);
    assert!(o.status.success());
    let mut req: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let dense = req["inputs"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|t| t["name"] == "dense")
        .unwrap();
    dense["shape"] = serde_json::json!([1418980313362273202i64, 13]);
    let p = tmp("overflow.json");
    std::fs::write(&p, req.to_string()).unwrap();
    fails_with(
        &["run", "workloads/tiny.toml", "--input", p.to_str().unwrap()],
        "dense: shape [1418980313362273202, 13] has too many elements",
    );
    // A 120 MB body is refused by its size before it is read (a sparse file costs no disk).
    let big = tmp("big.json");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(120 << 20).unwrap();
    fails_with(
        &[
            "run",
            "workloads/tiny.toml",
            "--input",
            big.to_str().unwrap(),
        ],
        "more than the limit of 67108864 (--max-request-bytes)",
    );
    fails_with(
        &[
            "run",
            "workloads/tiny.toml",
            "--input",
            p.to_str().unwrap(),
            "--max-request-bytes",
            "100",
        ],
        "more than the limit of 100 (--max-request-bytes)",
    );
}

#[test]
fn trace_is_written_with_compare_and_with_several_contexts() {
    let t = "workloads/tiny.toml";
    let p = tmp("cmp.json");
    let o = streamrec(&[
        "run",
        t,
        "--batch",
        "4",
        "--iters",
        "4",
        "--algo",
        "nimble",
        "--streams",
        "2",
        "--compare",
        "--trace",
        p.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let spans = |p: &Path| -> Vec<serde_json::Value> {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
        v["traceEvents"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["ph"] == "X")
            .cloned()
            .collect()
    };
    let multi = spans(&p);
    let single = spans(&tmp("cmp-single.json"));
    assert!(!multi.is_empty() && !single.is_empty());
    let tids = |s: &[serde_json::Value]| {
        s.iter()
            .map(|e| e["tid"].as_u64().unwrap())
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(tids(&single).len(), 1, "the baseline runs on one stream");
    assert_eq!(tids(&multi).len(), 2, "nimble x2 runs on two streams");
    let p = tmp("ctx.json");
    let o = streamrec(&[
        "run",
        t,
        "--batch",
        "4",
        "--iters",
        "40",
        "--contexts",
        "2",
        "--trace",
        p.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let pids: std::collections::BTreeSet<u64> = spans(&p)
        .iter()
        .map(|e| e["pid"].as_u64().unwrap())
        .collect();
    assert_eq!(pids.len(), 2, "spans of both contexts: {pids:?}");
}

/// The CSV rows of `run --csv` as maps from column name to value (the header printed once).
fn csv_rows(stdout: &[u8]) -> Vec<std::collections::BTreeMap<String, String>> {
    let text = String::from_utf8_lossy(stdout);
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("a header").split(',').collect();
    lines
        .map(|l| {
            assert!(!l.starts_with("model,"), "a second header: {text}");
            let cells: Vec<&str> = l.split(',').collect();
            assert_eq!(cells.len(), header.len(), "{l}");
            header
                .iter()
                .zip(cells)
                .map(|(h, c)| (h.to_string(), c.to_string()))
                .collect()
        })
        .collect()
}

#[test]
fn a_batch_list_measures_each_size_in_one_process() {
    let t = "workloads/tiny.toml";
    let o = streamrec(&["run", t, "--batch", "1,16,4", "--iters", "3", "--csv"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows = csv_rows(&o.stdout);
    let batches: Vec<&str> = rows.iter().map(|r| r["batch"].as_str()).collect();
    assert_eq!(
        batches,
        ["1", "16", "4"],
        "one row per size, in the order given"
    );
    for r in &rows {
        assert_eq!(r["backend"], "cpu");
        assert_eq!(r["iters"], "3");
        assert!(r["p50_us"].parse::<f64>().unwrap() > 0.0);
        // The CPU backend measures no device time and counts no launches.
        for col in ["gpu_p50_us", "gpu_p99_us", "launches"] {
            assert_eq!(r[col], "", "{col} on the CPU");
        }
    }
    // With --compare: single, then the plan, for each size.
    let o = streamrec(&[
        "run",
        t,
        "--batch",
        "2,8",
        "--iters",
        "4",
        "--algo",
        "nimble",
        "--streams",
        "2",
        "--compare",
        "--csv",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows = csv_rows(&o.stdout);
    let got: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r["batch"].as_str(), r["algo"].as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("2", "single"),
            ("2", "nimble"),
            ("8", "single"),
            ("8", "nimble")
        ]
    );
    // Text: one line per size, each naming its batch; no GPU fields on the CPU.
    let o = streamrec(&["run", t, "--batch", "1,3", "--iters", "2"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8(o.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with("batch     1 ") && lines[1].starts_with("batch     3 "));
    assert!(
        !text.contains("gpu") && !text.contains("launches"),
        "{text}"
    );
    // One size keeps today's output: no batch prefix (the default plan is measured `auto`).
    let o = streamrec(&["run", t, "--batch", "2", "--iters", "2"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(text.trim_start().starts_with("auto:"), "{text}");
    let o = streamrec(&["run", t, "--batch", "2", "--iters", "2", "--algo", "single"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(text.trim_start().starts_with("single x1"), "{text}");
}

#[test]
fn bad_batch_lists_are_one_line_errors_naming_the_flag() {
    let t = "workloads/tiny.toml";
    fails_with(&["run", t, "--batch", "1,0"], "--batch: must be > 0");
    fails_with(
        &["run", t, "--batch", "1,100000000", "--iters", "1"],
        "--batch: 100000000 is more than the limit of 65536",
    );
    fails_with(
        &["run", t, "--batch", "1,x"],
        "--batch: `x` is not a batch size",
    );
    fails_with(
        &["run", t, "--batch", "1,,2"],
        "--batch: `1,,2` has an empty entry",
    );
    fails_with(&["run", t, "--batch", "4,4"], "--batch: 4 is listed twice");
    fails_with(
        &["run", t, "--batch", "1,2", "--emit-request"],
        "--batch: --emit-request takes one batch size",
    );
    fails_with(
        &["run", t, "--batch", "1,2", "--trace", "t.json"],
        "--batch: --trace takes one batch size",
    );
}

/// The absolute path of a program on this process's PATH.
fn on_path(name: &str) -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("no {name} on PATH"))
}

/// A device bundle laid out as `cargo xtask device-bundle` writes it (run.sh, find-libs.sh,
/// workloads/, bin/), with `bin/streamrec` and `bin/cuda-tests` given by the caller.
fn fake_bundle(name: &str, streamrec: &str, cuda_tests: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tmp(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::create_dir_all(dir.join("workloads")).unwrap();
    for f in ["run.sh", "find-libs.sh"] {
        std::fs::copy(root.join("xtask/device").join(f), dir.join(f)).unwrap();
    }
    for f in ["tiny.toml", "dlrm-kaggle.toml", "streamrec-26.toml"] {
        std::fs::copy(
            root.join("workloads").join(f),
            dir.join("workloads").join(f),
        )
        .unwrap();
    }
    for (f, text) in [("streamrec", streamrec), ("cuda-tests", cuda_tests)] {
        let p = dir.join("bin").join(f);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir
}

/// Runs a bundle's run.sh with OUT set and the given knobs; returns its output, exit status and
/// wall time.
fn run_bundle(dir: &Path, env: &[(&str, &str)]) -> (String, Option<i32>, f64, PathBuf) {
    let out = dir.join("out");
    let _ = std::fs::remove_dir_all(&out);
    let start = std::time::Instant::now();
    let o = Command::new(on_path("bash"))
        .arg(dir.join("run.sh"))
        .env("OUT", &out)
        .envs(env.iter().copied())
        .output()
        .expect("bash runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (text, o.status.code(), start.elapsed().as_secs_f64(), out)
}

/// `bin/streamrec` that runs this build of the CLI with the CPU standing in for CUDA (`cuda` ->
/// `cpu`, `--graph on` -> `off`); with FAKE_ROW_DELAY=S it prints each line S seconds late.
fn cpu_as_cuda() -> String {
    format!(
        r#"#!/usr/bin/env bash
args=()
for a in "$@"; do case $a in cuda) a=cpu ;; on) a=off ;; esac; args+=("$a"); done
if [ -n "${{FAKE_ROW_DELAY:-}}" ]; then
    "{bin}" "${{args[@]}}" | while IFS= read -r l; do sleep "$FAKE_ROW_DELAY"; echo "$l"; done
    exit "${{PIPESTATUS[0]}}"
fi
exec "{bin}" "${{args[@]}}"
"#,
        bin = env!("CARGO_BIN_EXE_streamrec")
    )
}

/// `bin/cuda-tests` that passes only when run.sh asks for a device to be required.
const FAKE_CUDA_TESTS: &str = r#"#!/bin/sh
if [ "${STREAMREC_REQUIRE_CUDA:-}" != 1 ]; then echo "STREAMREC_REQUIRE_CUDA is not 1"; exit 1; fi
echo "test result: ok. 1 passed; 0 failed"
"#;

#[test]
fn the_device_run_without_a_gpu_stops_at_once_with_no_cuda_device() {
    let real = format!(
        "#!/bin/sh\nexec \"{}\" \"$@\"\n",
        env!("CARGO_BIN_EXE_streamrec")
    );
    let dir = fake_bundle("bundle-nogpu", &real, FAKE_CUDA_TESTS);
    // STEPS=none: where a GPU is present, the run ends after the probe, passing.
    let (text, code, secs, out) = run_bundle(&dir, &[("STEPS", "none")]);
    let env = std::fs::read_to_string(out.join("env.txt")).expect("env.txt is written");
    assert!(secs < 30.0, "took {secs:.0} s: {text}");
    assert!(
        env.contains("libcuda: ") && env.contains("libnvrtc: ") && env.contains("libcublas: "),
        "{env}"
    );
    if code == Some(0) {
        println!("a CUDA device is present: the no-device path is not exercised here");
        return;
    }
    assert_eq!(code, Some(2), "{text}");
    assert!(
        env.contains("status: no CUDA device: CUDA backend unavailable: "),
        "{env}"
    );
    let last = text.lines().last().unwrap_or_default();
    assert!(last.contains("status 2 (no CUDA device)"), "{text}");
}

#[test]
fn the_device_run_appends_one_line_per_batch_and_graph_mode() {
    let dir = fake_bundle("bundle-cpu", &cpu_as_cuda(), FAKE_CUDA_TESTS);
    let (text, code, _, out) = run_bundle(
        &dir,
        &[
            ("STEPS", "tests check bench"),
            ("CHECK_MODELS", "tiny"),
            ("BENCH_MODEL", "tiny"),
            ("ROW_CAP", "1000"),
            ("ITERS", "4"),
            ("BATCHES", "1 4 16"),
            ("PLANS", "nimble:2"),
        ],
    );
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("test result: ok"), "{text}");
    let csv = std::fs::read_to_string(out.join("gpu-bench.csv")).unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    let got: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r[col("graph")], r[col("batch")]))
        .collect();
    // GRAPHS defaults to "on off"; the stand-in runs `--graph on` as off.
    assert_eq!(got.len(), 6, "{csv}");
    assert_eq!(
        got.iter().map(|g| g.1).collect::<Vec<_>>(),
        ["1", "4", "16", "1", "4", "16"],
        "{csv}"
    );
    for r in &rows {
        assert_eq!(r.len(), header.len(), "{csv}");
        assert_eq!(r[col("plan")], "nimble:2");
        assert!(r[col("p50_speedup")].parse::<f64>().unwrap() > 0.0, "{csv}");
        assert!(
            r[col("throughput_ratio")].parse::<f64>().unwrap() > 0.0,
            "{csv}"
        );
        assert_eq!(r[col("gpu_p50_speedup")], "", "no device time on the CPU");
    }
    let raw = std::fs::read_to_string(out.join("bench-raw.csv")).unwrap();
    assert_eq!(raw.lines().count(), 1 + 12, "{raw}");
}

#[test]
fn the_device_run_keeps_the_rows_done_when_the_deadline_cuts_it_off() {
    let dir = fake_bundle("bundle-deadline", &cpu_as_cuda(), FAKE_CUDA_TESTS);
    let (text, code, secs, out) = run_bundle(
        &dir,
        &[
            ("STEPS", "bench"),
            ("BENCH_MODEL", "tiny"),
            ("ROW_CAP", "1000"),
            ("ITERS", "4"),
            ("BATCHES", "1 2 4 8 16 32 64 128"),
            ("PLANS", "nimble:2"),
            ("DEADLINE", "12"),
            ("FAKE_ROW_DELAY", "1"),
        ],
    );
    // Nothing failed, but the first process was cut off and the second never started.
    assert_eq!(code, Some(3), "{text}");
    assert!(secs < 12.0 + 15.0, "took {secs:.0} s: {text}");
    assert!(text.contains("CUT OFF at the deadline"), "{text}");
    assert!(text.contains("SKIPPED (DEADLINE=12s"), "{text}");
    let csv = std::fs::read_to_string(out.join("gpu-bench.csv")).unwrap();
    let rows = csv.lines().count() - 1;
    assert!(
        (1..8).contains(&rows),
        "the rows done before the cut: {csv}"
    );
}

/// `streamrec run` with its own cache folder for `auto`'s choices.
fn run_cached(cache: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_streamrec"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("STREAMREC_CACHE_DIR", cache)
        .env_remove("STREAMREC_RETUNE")
        .output()
        .expect("streamrec runs")
}

fn cache_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir).map_or(Vec::new(), |r| {
        r.map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect()
    })
}

#[test]
fn run_defaults_to_measured_auto_and_caches_the_choice() {
    let cache = tmp("auto-cache");
    let _ = std::fs::remove_dir_all(&cache);
    let args = [
        "run",
        "workloads/tiny.toml",
        "--backend",
        "cpu",
        "--batch",
        "8",
        "--iters",
        "5",
        "--streams",
        "8",
    ];
    let o = run_cached(&cache, &args);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{err}");
    assert!(err.contains("auto: timing"), "{err}");
    let choice = err
        .lines()
        .find(|l| l.starts_with("auto: ") && l.contains("relative to single"))
        .unwrap_or_else(|| panic!("no choice line: {err}"))
        .to_string();
    // On the CPU a stream is a thread: no candidate has more streams than the machine has cores.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for word in choice.split([' ', ',', ';', '(', ')']) {
        if let Some(k) = word.strip_prefix('x').and_then(|k| k.parse::<usize>().ok()) {
            assert!(k <= cores, "{k} streams on {cores} cores: {choice}");
        }
    }
    assert!(choice.contains("single 1.00x"), "{choice}");
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        out.contains("auto:"),
        "the report names the measured choice: {out}"
    );
    let files = cache_files(&cache);
    assert_eq!(files.len(), 1, "{files:?}");
    // The second run takes the cached choice without timing anything.
    let o = run_cached(&cache, &args);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{err}");
    assert!(err.contains("cached choice in"), "{err}");
    assert!(!err.contains("auto: timing"), "{err}");
    // A damaged cache file is measured again and rewritten, never trusted.
    std::fs::write(&files[0], "{ not json").unwrap();
    let o = run_cached(&cache, &args);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success() && err.contains("auto: timing"), "{err}");
    assert!(std::fs::read_to_string(&files[0])
        .unwrap()
        .contains("\"choice\""));
    // Another batch size is another choice.
    let mut other = args;
    other[5] = "32";
    let o = run_cached(&cache, &other);
    assert!(o.status.success());
    assert_eq!(cache_files(&cache).len(), 2);
}

#[test]
fn an_explicit_algorithm_measures_nothing() {
    let cache = tmp("explicit-cache");
    let _ = std::fs::remove_dir_all(&cache);
    let o = run_cached(
        &cache,
        &[
            "run",
            "workloads/tiny.toml",
            "--backend",
            "cpu",
            "--algo",
            "streamrec",
            "--streams",
            "2",
            "--batch",
            "4",
            "--iters",
            "3",
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{err}");
    assert!(!err.contains("auto:"), "{err}");
    assert!(cache_files(&cache).is_empty());
}

/// Fails with one line and status 1, the line naming each of `once` exactly once.
fn says_once(args: &[&str], once: &[&str]) -> String {
    let o = streamrec_bounded(args);
    let line = one_error_line(&o);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {line}");
    for s in once {
        assert_eq!(line.matches(s).count(), 1, "`{s}` once in: {line}");
    }
    line
}

/// A model scoring `sigmoid(relu(a·x) - relu(a·x + bias))` for its one dense input `x` (its one
/// table holds a zero): 0.5 while `a·x` is finite, NaN once it overflows to inf. Spec `file`
/// reads the weights `weights` beside it; `a` writes them, `None` leaves them out.
fn overflow_model(file: &str, weights: &str, a: Option<f32>, bias: f32) -> String {
    use streamrec::runtime::{Tensor, Weights};
    let spec = tmp(file);
    std::fs::write(
        &spec,
        format!(
            "name = \"overflow\"\ndense = 1\n[sparse]\ncount = 1\nrows = 1\ndim = 1\n\
             [interaction]\nkind = \"cat\"\n[top]\nlayers = [2, 1]\n[weights]\npath = \"{weights}\"\n"
        ),
    )
    .unwrap();
    if let Some(a) = a {
        let mut w = Weights::default();
        let t = |shape: Vec<usize>, data: Vec<f32>| Tensor { shape, data };
        w.insert("top.0.weight", t(vec![2, 2], vec![a, 0.0, a, 0.0]));
        w.insert("top.0.bias", t(vec![2], vec![0.0, bias]));
        w.insert("top.1.weight", t(vec![1, 2], vec![1.0, -1.0]));
        w.insert("top.1.bias", t(vec![1], vec![0.0]));
        w.insert("emb.C1.weight", t(vec![1, 1], vec![0.0]));
        w.save(&tmp(weights)).unwrap();
    }
    spec.to_str().unwrap().to_string()
}

/// A request for two samples of [`overflow_model`] with these dense inputs.
fn two_sample_request(spec: &str, file: &str, dense: [f32; 2]) -> String {
    let o = streamrec(&["run", spec, "--batch", "2", "--emit-request"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut req: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let inputs = req["inputs"].as_array_mut().unwrap();
    let d = inputs.iter_mut().find(|t| t["name"] == "dense").unwrap();
    d["data"] = serde_json::json!(dense);
    let p = tmp(file);
    std::fs::write(&p, req.to_string()).unwrap();
    p.to_str().unwrap().to_string()
}

fn run_input(spec: &str, req: &str) -> Output {
    streamrec_bounded(&[
        "run",
        spec,
        "--input",
        req,
        "--backend",
        "cpu",
        "--algo",
        "single",
    ])
}

#[test]
fn a_score_that_is_not_a_number_is_an_error_never_null() {
    // 3e38 * 10 overflows to inf: sample 1's score is sigmoid(inf - inf), NaN.
    let spec = overflow_model("overflow.toml", "overflow.safetensors", Some(3e38), 0.0);
    let req = two_sample_request(&spec, "overflow.json", [0.0, 10.0]);
    let o = run_input(&spec, &req);
    let line = one_error_line(&o);
    assert_eq!(o.status.code(), Some(1), "{line}");
    assert!(
        o.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(
        line.ends_with("sample 1: the score is NaN, not a finite number (the model overflows f32 on this sample's inputs)"),
        "{line}"
    );
    // The same model on inputs that do not overflow scores both samples.
    let req = two_sample_request(&spec, "fine.json", [0.0, 1.0]);
    let o = run_input(&spec, &req);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let resp: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(resp["outputs"][0]["data"], serde_json::json!([0.5, 0.5]));
    // Infinite scores are refused the same way: the unit test of `finite_scores` in
    // src/cli/run.rs (the CLI is private to the binary).
}

#[test]
fn weights_holding_nan_are_refused_at_load() {
    let spec = overflow_model("nan-bias.toml", "nan-bias.safetensors", Some(1.0), f32::NAN);
    let req = two_sample_request(&spec, "nan-bias.json", [0.0; 2]);
    let o = run_input(&spec, &req);
    let line = one_error_line(&o);
    assert_eq!(o.status.code(), Some(1), "{line}");
    assert!(o.stdout.is_empty());
    assert!(
        line.ends_with("nan-bias.safetensors: tensor `top.0.bias` holds NaN at index 1"),
        "{line}"
    );
}

#[test]
fn load_errors_name_the_file_and_the_cause_once() {
    let bin = tmp("binary.toml");
    std::fs::write(&bin, [0xff, 0xfe, 0x00, 0x80, b'\n']).unwrap();
    let bin = bin.to_str().unwrap();
    for cmd in ["run", "plan", "check"] {
        says_once(
            &[cmd, bin],
            &["binary.toml", "stream did not contain valid UTF-8"],
        );
    }
    says_once(
        &["plan", "workloads/missing.toml"],
        &["missing.toml", "No such file or directory"],
    );
    let spec = overflow_model("no-weights.toml", "absent.safetensors", None, 0.0);
    says_once(
        &[
            "run",
            &spec,
            "--backend",
            "cpu",
            "--algo",
            "single",
            "--batch",
            "1",
            "--iters",
            "1",
        ],
        &["absent.safetensors", "No such file or directory"],
    );
    says_once(
        &["run", "workloads/tiny.toml", "--input", "absent.json"],
        &["absent.json", "No such file or directory"],
    );
    // A spec mistake still names the file, once.
    let p = tiny_with("named-once.toml", "name = \"tiny\"", "name = \"a/b\"");
    let line = says_once(&["plan", &p], &["named-once.toml", "'/'"]);
    assert!(
        line.contains("named-once.toml: name: \"a/b\" has the character '/'"),
        "{line}"
    );
}

#[test]
fn cpu_fold_and_isa_flags_run_and_the_environment_still_sets_them() {
    let t = "workloads/tiny.toml";
    for args in [
        &["--cpu-fold", "off"][..],
        &["--cpu-fold", "on", "--cpu-isa", "portable"],
    ] {
        let mut all = vec!["run", t, "--algo", "single", "--iters", "3"];
        all.extend_from_slice(args);
        let o = streamrec(&all);
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    // The variables the libraries once read are read by the CLI, once.
    let o = Command::new(env!("CARGO_BIN_EXE_streamrec"))
        .args(["run", t, "--algo", "single", "--iters", "3"])
        .env("STREAMREC_CPU_ISA", "bogus")
        .env("STREAMREC_CPU_FOLD", "off")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("STREAMREC_CPU_ISA ignored: unknown CPU ISA \"bogus\""),
        "{err}"
    );
}

/// The signals a running process ignores (`SigIgn` of /proc/PID/status).
fn ignored_signals(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .expect("a SigIgn line");
    u64::from_str_radix(line.trim(), 16).unwrap()
}

#[test]
fn the_server_and_the_load_generator_ignore_sigpipe() {
    use std::io::BufRead;
    // A client that resets its connection while the server writes must cost that connection
    // an EPIPE, not the server its life (SIGPIPE's default action), and likewise a server that
    // resets the load generator's connections.
    const SIGPIPE_BIT: u64 = 1 << (libc::SIGPIPE - 1);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut server = Command::new(env!("CARGO_BIN_EXE_streamrec"))
        .current_dir(root)
        .args(["serve", "workloads/tiny.toml", "--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let url = first
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();
    let served = ignored_signals(server.id());
    let out = tmp("sigpipe-load");
    let _ = std::fs::remove_dir_all(&out);
    let mut load = Command::new(env!("CARGO_BIN_EXE_streamrec"))
        .current_dir(root)
        .args([
            "load",
            "--url",
            &url,
            "--model",
            "tiny",
            "--spec",
            "workloads/tiny.toml",
        ])
        .args(["--qps", "50", "--duration", "3s", "--out"])
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let loading = ignored_signals(load.id());
    let _ = load.kill();
    let _ = load.wait();
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&out);
    assert_ne!(
        served & SIGPIPE_BIT,
        0,
        "serve does not ignore SIGPIPE: {served:x}"
    );
    assert_ne!(
        loading & SIGPIPE_BIT,
        0,
        "load does not ignore SIGPIPE: {loading:x}"
    );
}
