//! What `merge` refuses, on shard folders written to disk and read back: histogram files whose
//! header claims more than the file holds (checked before anything is allocated), shards of
//! different loads (each field named, with both files), a shard index twice or out of range,
//! counts that do not add up, sums that overflow, and missing shards without `partial`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use streamrec_loadgen::results::{histogram, SUMMARY_VERSION};
use streamrec_loadgen::*;

/// A consistent shard `i/n` of a 200 req/s load: 12 requests, 10 answered 200, one 503, one
/// timeout.
fn shard(i: u32, n: u32) -> RunResult {
    let mut latency = histogram();
    let mut lag = histogram();
    for k in 0..10 {
        latency.record(100 + k).unwrap();
    }
    for k in 0..12 {
        lag.record(5 + k).unwrap();
    }
    let counts = |kv: &[(&str, u64)]| -> BTreeMap<String, u64> {
        kv.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    };
    let summary = Summary {
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
        ok: 10,
        samples_ok: 10,
        offered_qps: 12.0,
        achieved_qps: 10.0,
        samples_per_s: 10.0,
        elapsed_s: 1.0,
        latency_us: Percentiles::of(&latency),
        send_lag_us: Percentiles::of(&lag),
        status: counts(&[("200", 10), ("503", 1)]),
        grpc_status: BTreeMap::new(),
        errors: counts(&[("status_503", 1), ("timeout", 1)]),
        connection_waits: 0,
        connections: 64,
        not_sent: 0,
        send_lag_bound_us: 10_000,
        late: 0,
        saturated: false,
        missing_shards: Vec::new(),
    };
    RunResult {
        summary,
        latency,
        lag,
        records: Vec::new(),
        start: None,
        from: None,
    }
}

/// A fresh folder for one test.
fn scratch(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "streamrec-merge-checks-{}-{test}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes the parts into `dir/shard-k` and returns the folders.
fn write(dir: &Path, parts: &[RunResult]) -> Vec<PathBuf> {
    parts
        .iter()
        .enumerate()
        .map(|(k, p)| {
            let d = dir.join(format!("shard-{k}"));
            p.write(&d).unwrap();
            d
        })
        .collect()
}

fn all() -> MergeOptions {
    MergeOptions::default()
}

/// The error of merging `parts` written to disk.
fn refusal(test: &str, parts: &[RunResult], opts: &MergeOptions) -> String {
    let dir = scratch(test);
    let dirs = write(&dir, parts);
    let e = merge_dirs(&dirs, opts)
        .err()
        .unwrap_or_else(|| panic!("{test}: merged"))
        .to_string();
    assert!(!e.contains('\n'), "{test}: {e}");
    let _ = std::fs::remove_dir_all(&dir);
    e
}

#[test]
fn shards_of_one_load_merge_with_their_totals() {
    let dir = scratch("ok");
    let dirs = write(&dir, &[shard(0, 3), shard(1, 3), shard(2, 3)]);
    let m = merge_dirs(&dirs, &all()).unwrap().summary;
    assert_eq!(m.shards, ["0/3", "1/3", "2/3"]);
    assert_eq!((m.requests, m.ok, m.failed()), (36, 30, 6));
    assert_eq!(m.errors["status_503"], 3);
    assert!((m.target_qps - 200.0).abs() < 1e-9, "{}", m.target_qps);
    assert!(m.valid() && m.missing_shards.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_histogram_header_is_checked_before_anything_is_allocated() {
    let dir = scratch("hdr");
    let dirs = write(&dir, &[shard(0, 2), shard(1, 2)]);
    let file = dirs[1].join("latency.hdr");
    let valid = std::fs::read(&file).unwrap();
    let refused = |bytes: &[u8]| {
        std::fs::write(&file, bytes).unwrap();
        let e = merge_dirs(&dirs, &all()).unwrap_err().to_string();
        assert!(e.starts_with(&file.display().to_string()), "{e}");
        e
    };
    // 40 bytes whose header claims a 4 GiB payload.
    let mut huge = valid[..40].to_vec();
    huge[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
    let e = refused(&huge);
    assert!(e.contains("payload of 4294967295 bytes"), "{e}");
    assert!(e.contains("holds 0 after its 40-byte header"), "{e}");
    // Other bounds or digits: a histogram of another size than the one this crate writes.
    let mut wide = valid.clone();
    wide[24..32].copy_from_slice(&u64::MAX.to_be_bytes());
    assert!(refused(&wide).contains("settings"));
    // A file longer than any histogram of these settings, and one shorter than a header.
    let mut long = valid.clone();
    long.resize(64 << 20, 0);
    assert!(refused(&long).contains("more than the limit"));
    assert!(refused(&valid[..12]).contains("shorter than a V2 HdrHistogram header"));
    std::fs::write(&file, &valid).unwrap();
    merge_dirs(&dirs, &all()).unwrap();
    // A summary.json larger than the bound is not read whole.
    let s = dirs[0].join("summary.json");
    std::fs::write(&s, vec![b' '; (2 << 20) + 1]).unwrap();
    let e = merge_dirs(&dirs, &all()).unwrap_err().to_string();
    assert!(e.contains("summary.json: more than the limit"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn shards_of_different_loads_are_refused_naming_the_field_and_both_files() {
    type Edit = fn(&mut Summary);
    let cases: [(&str, Edit); 10] = [
        ("model", |s| s.model = "dlrm-kaggle".into()),
        ("url", |s| s.url = "http://127.0.0.1:9000".into()),
        ("rate per shard", |s| s.target_qps *= 15.0),
        ("batch", |s| s.batch = "7".into()),
        ("format", |s| s.format = "json".into()),
        ("seed", |s| s.seed = 99),
        ("schedule", |s| s.schedule = "constant".into()),
        ("skew", |s| s.skew = "zipf:1.05".into()),
        ("duration_s", |s| s.duration_s = 2.0),
        ("shard count", |s| s.shards = vec!["1/4".into()]),
    ];
    for (field, edit) in cases {
        let mut other = shard(1, 2);
        edit(&mut other.summary);
        let e = refusal("differ", &[shard(0, 2), other], &all());
        assert!(e.contains("are not shards of one load"), "{field}: {e}");
        assert!(e.contains(field), "{field}: {e}");
        for k in 0..2 {
            assert!(
                e.contains(&format!("shard-{k}/summary.json")),
                "{field}: {e}"
            );
        }
    }
    // The attack of the issue: 200 req/s batch 1 binary and 3,000 req/s batch 7 JSON seed 99.
    let mut other = shard(1, 2);
    other.summary.target_qps = 1500.0;
    other.summary.batch = "7".into();
    other.summary.format = "json".into();
    other.summary.seed = 99;
    let e = refusal("issue", &[shard(0, 2), other], &all());
    assert!(e.contains("batch differs (`1` and `7`)"), "{e}");
}

#[test]
fn each_shard_index_once_and_below_the_count() {
    let e = refusal("twice", &[shard(0, 2), shard(0, 2), shard(1, 2)], &all());
    assert!(e.contains("shard 0/2 appears twice"), "{e}");
    assert!(
        e.contains("shard-0/summary.json") && e.contains("shard-1/summary.json"),
        "{e}"
    );
    let mut seven = shard(1, 2);
    seven.summary.shards = vec!["7/2".into()];
    let e = refusal("seven", &[shard(0, 2), seven], &all());
    assert!(
        e.contains("shard `7/2`: index 7 is not below the shard count 2"),
        "{e}"
    );
    for bad in ["0/0", "x/2", "1", "0/5000"] {
        let mut p = shard(0, 2);
        p.summary.shards = vec![bad.into()];
        let e = refusal("bad-shard", &[p], &all());
        assert!(e.contains(&format!("shard `{bad}`")), "{bad}: {e}");
    }
}

#[test]
fn counts_that_do_not_add_up_are_refused() {
    type Edit = fn(&mut RunResult);
    let cases: [(&str, Edit); 7] = [
        ("is not requests", |p| p.summary.ok = 13),
        ("is not requests", |p| p.summary.requests = 11),
        ("latency.hdr holds 10 values, not ok 9", |p| {
            p.summary.ok = 9;
            p.summary.requests = 11;
            *p.summary.status.get_mut("200").unwrap() = 9;
            p.summary.samples_ok = 9;
        }),
        ("status 503: 1 answers but 2 errors", |p| {
            p.summary.errors.insert("status_503".into(), 2);
            p.summary.errors.insert("timeout".into(), 0);
        }),
        ("samples_ok", |p| p.summary.samples_ok = 9),
        ("late 0 is not between not_sent 1", |p| {
            p.summary.not_sent = 1;
            p.summary.errors.remove("timeout");
        }),
        ("yet saturated is false", |p| p.summary.late = 2),
    ];
    for (want, edit) in cases {
        let mut p = shard(1, 2);
        edit(&mut p);
        let e = refusal("counts", &[shard(0, 2), p], &all());
        assert!(e.contains(want), "{want}: {e}");
        assert!(e.contains("shard-1/summary.json"), "{want}: {e}");
    }
}

#[test]
fn sums_that_overflow_are_refused() {
    // Three consistent shards whose request counts add up past u64::MAX (sums used to wrap:
    // u64::MAX + 182 read as 181). A V2 histogram holds counts up to i64::MAX.
    let big = |i: u32, n: u64| {
        let mut p = shard(i, 3);
        let s = &mut p.summary;
        (s.requests, s.ok, s.samples_ok) = (n, n, n);
        s.status = [("200".to_string(), n)].into();
        s.errors.clear();
        p.latency = histogram();
        p.latency.record_n(100, n).unwrap();
        p.lag = histogram();
        p.lag.record_n(5, n).unwrap();
        p
    };
    let n = i64::MAX as u64;
    let e = refusal("overflow", &[big(0, n), big(1, n), big(2, n)], &all());
    assert!(e.contains("`requests` overflows a 64-bit count"), "{e}");
}

#[test]
fn missing_shards_are_an_error_unless_partial() {
    let parts = [shard(0, 3), shard(2, 3)];
    let e = refusal("missing", &parts, &all());
    assert!(
        e.contains("shards 1/3 of the split are missing") && e.contains("--partial"),
        "{e}"
    );
    let m = merge(&parts, &MergeOptions { partial: true })
        .unwrap()
        .summary;
    assert_eq!(m.missing_shards, ["1/3"]);
    assert_eq!(m.shards, ["0/3", "2/3"]);
    assert!(
        describe(&m).contains("PARTIAL: shards 1/3 missing"),
        "{}",
        describe(&m)
    );
}

#[test]
fn a_saturated_shard_makes_the_merge_invalid() {
    let mut late = shard(1, 2);
    (late.summary.late, late.summary.saturated) = (2, true);
    let m = merge(&[shard(0, 2), late], &all()).unwrap().summary;
    assert!(m.saturated && !m.valid());
    assert_eq!(m.late, 2);
    assert!(describe(&m).contains("INVALID: generator saturated: 2 of 24 requests"));
}

/// Shard `i/n` as a gRPC run would write it: the same counts, the answers also by gRPC name.
fn grpc_shard(i: u32, n: u32) -> RunResult {
    let mut p = shard(i, n);
    let s = &mut p.summary;
    s.protocol = "grpc".into();
    s.url = "grpc://127.0.0.1:8001".into();
    s.format = "grpc".into();
    s.grpc_status = [("OK".to_string(), 10), ("UNAVAILABLE".to_string(), 1)].into();
    p
}

#[test]
fn grpc_shards_merge_their_grpc_statuses_and_never_with_http_ones() {
    let dir = scratch("grpc");
    let dirs = write(&dir, &[grpc_shard(0, 2), grpc_shard(1, 2)]);
    let m = merge_dirs(&dirs, &all()).unwrap().summary;
    assert_eq!(m.protocol, "grpc");
    assert_eq!(m.grpc_status["OK"], 20);
    assert_eq!(m.grpc_status["UNAVAILABLE"], 2);
    assert_eq!(m.errors["status_503"], 2);
    let _ = std::fs::remove_dir_all(&dir);
    // The same load over HTTP is another load.
    let mut http = grpc_shard(1, 2);
    http.summary.protocol = "http".into();
    http.summary.grpc_status.clear();
    let e = refusal("grpc-http", &[grpc_shard(0, 2), http], &all());
    assert!(e.contains("protocol differs (`grpc` and `http`)"), "{e}");
    // A gRPC part whose OK answers are not its ok count, an HTTP part with gRPC statuses.
    let mut bad = grpc_shard(1, 2);
    bad.summary.grpc_status.insert("OK".into(), 9);
    let e = refusal("grpc-ok", &[grpc_shard(0, 2), bad], &all());
    assert!(
        e.contains("grpc_status holds 9 OK of 10 answers, but ok is 10 of 11"),
        "{e}"
    );
    let mut bad = shard(1, 2);
    bad.summary.grpc_status.insert("OK".into(), 10);
    let e = refusal("http-grpc", &[shard(0, 2), bad], &all());
    assert!(e.contains("an http run with gRPC statuses"), "{e}");
}
