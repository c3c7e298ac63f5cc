//! The exact merge of shard results, with every part checked first.
//!
//! Histograms are added bucket by bucket, which is exact: the merged histogram equals the
//! histogram of all the shards' samples. Before that, each part must be consistent on its own
//! ([`check`]: shards `i/n` with `i < n`, `ok + failed + not_sent == requests`, histogram counts
//! equal to the summary's, ...), and all parts must be shards of one load: the same protocol, URL, model,
//! schedule, batch sizes, skew, body format, seed, per-shard rate, duration, send-lag bound and
//! shard count, each shard index once. Counts are summed with checked arithmetic. Shards missing
//! from the split are an error naming them, unless [`MergeOptions::partial`] allows them; the
//! merged summary then lists them in `missing_shards`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use hdrhistogram::Histogram;

use crate::error::LoadError;
use crate::results::{histogram, saturated, Percentiles, RunResult, Summary};
use crate::schedule::MAX_SHARDS;
use crate::sizes::MAX_BATCH;

/// How to merge.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MergeOptions {
    /// Merge even when shards of the split are missing (the summary names them).
    pub partial: bool,
}

/// How a part is named in errors: its folder, or its position.
fn label(p: &RunResult, i: usize) -> String {
    match &p.from {
        Some(d) => d.join("summary.json").display().to_string(),
        None => format!("part {}", i + 1),
    }
}

/// Parses a shard `i/n` of a summary: `n` in 1..=MAX_SHARDS and `i < n`.
fn parse_shard(what: &str, s: &str) -> Result<(u32, u32), LoadError> {
    let bad = |why: String| LoadError::invalid(format!("merge: {what}: shard `{s}`: {why}"));
    let (i, n) = s
        .split_once('/')
        .ok_or_else(|| bad("expected i/n".into()))?;
    let (i, n): (u32, u32) = match (i.parse(), n.parse()) {
        (Ok(i), Ok(n)) => (i, n),
        _ => return Err(bad("expected i/n with non-negative integers".into())),
    };
    if n == 0 || n > MAX_SHARDS {
        return Err(bad(format!("the shard count must be in 1..={MAX_SHARDS}")));
    }
    if i >= n {
        return Err(bad(format!("index {i} is not below the shard count {n}")));
    }
    Ok((i, n))
}

/// Checked sum of `values`, or an error naming the field.
fn sum<'a>(
    what: &str,
    field: &str,
    values: impl IntoIterator<Item = &'a u64>,
) -> Result<u64, LoadError> {
    values.into_iter().try_fold(0u64, |a, &v| {
        a.checked_add(v).ok_or_else(|| {
            LoadError::invalid(format!("merge: {what}: `{field}` overflows a 64-bit count"))
        })
    })
}

/// Checks one part on its own; returns its shard count. `what` names it in errors.
pub fn check(what: &str, p: &RunResult) -> Result<u32, LoadError> {
    let s = &p.summary;
    let bad = |msg: String| LoadError::invalid(format!("merge: {what}: {msg}"));
    let mut count = None;
    for sh in &s.shards {
        let (_, n) = parse_shard(what, sh)?;
        if count.is_some_and(|c| c != n) {
            return Err(bad(format!(
                "shards {} are of different splits",
                s.shards.join(",")
            )));
        }
        count = Some(n);
    }
    let count = count.ok_or_else(|| bad("no shard listed".into()))?;
    let failed = sum(what, "errors", s.errors.values())?;
    let total = sum(
        what,
        "ok + errors + not_sent",
        [&s.ok, &failed, &s.not_sent],
    )?;
    if total != s.requests {
        return Err(bad(format!(
            "ok {} + failed {failed} + not_sent {} is not requests {}",
            s.ok, s.not_sent, s.requests
        )));
    }
    if s.late < s.not_sent || s.late > s.requests {
        return Err(bad(format!(
            "late {} is not between not_sent {} and requests {}",
            s.late, s.not_sent, s.requests
        )));
    }
    if saturated(s.late, s.requests) && !s.saturated {
        return Err(bad(format!(
            "late {} of {} requests is more than 1%, yet saturated is false",
            s.late, s.requests
        )));
    }
    // Every 2xx answer is an ok; every other status is the error `status_<code>`.
    let mut ok_status = Vec::new();
    for (code, &n) in &s.status {
        match code.parse::<u16>() {
            Ok(c) if (200..300).contains(&c) => ok_status.push(n),
            Ok(c) if (100..600).contains(&c) => {
                let e = s.errors.get(&format!("status_{c}")).copied().unwrap_or(0);
                if e != n {
                    return Err(bad(format!("status {c}: {n} answers but {e} errors")));
                }
            }
            _ => return Err(bad(format!("status `{code}` is not an HTTP status"))),
        }
    }
    for (kind, &n) in &s.errors {
        let known = match kind.strip_prefix("status_") {
            Some(code) => s.status.get(code) == Some(&n),
            None => ["timeout", "connect", "io", "malformed"].contains(&kind.as_str()),
        };
        if !known {
            return Err(bad(format!(
                "error `{kind}` ({n}) is not a known kind or has no matching status"
            )));
        }
    }
    // gRPC answers by name: every ok is an `OK` (an HTTP run has none).
    let grpc_ok = s.grpc_status.get("OK").copied().unwrap_or(0);
    let grpc_all = sum(what, "grpc_status", s.grpc_status.values())?;
    let answers = sum(what, "status", s.status.values())?;
    match s.protocol.as_str() {
        "http" if s.grpc_status.is_empty() => {}
        "http" => return Err(bad("an http run with gRPC statuses (grpc_status)".into())),
        "grpc" if grpc_ok == s.ok && grpc_all <= answers => {}
        "grpc" => {
            return Err(bad(format!(
                "grpc_status holds {grpc_ok} OK of {grpc_all} answers, but ok is {} of {answers}",
                s.ok
            )))
        }
        p => return Err(bad(format!("protocol `{p}` is neither http nor grpc"))),
    }
    let ok2 = sum(what, "status", &ok_status)?;
    if ok2 != s.ok {
        return Err(bad(format!(
            "ok {} but {ok2} answers with a 2xx status",
            s.ok
        )));
    }
    if s.samples_ok < s.ok || s.samples_ok / u64::from(MAX_BATCH) > s.ok {
        return Err(bad(format!(
            "samples_ok {} is not between ok {} and ok x {MAX_BATCH}",
            s.samples_ok, s.ok
        )));
    }
    if p.latency.len() != s.ok {
        return Err(bad(format!(
            "latency.hdr holds {} values, not ok {}",
            p.latency.len(),
            s.ok
        )));
    }
    if p.lag.len() != s.requests - s.not_sent {
        return Err(bad(format!(
            "lag.hdr holds {} values, not requests - not_sent {}",
            p.lag.len(),
            s.requests - s.not_sent
        )));
    }
    for (name, v) in [
        ("target_qps", s.target_qps),
        ("duration_s", s.duration_s),
        ("offered_qps", s.offered_qps),
        ("achieved_qps", s.achieved_qps),
        ("samples_per_s", s.samples_per_s),
        ("elapsed_s", s.elapsed_s),
    ] {
        if !(v.is_finite() && v >= 0.0) {
            return Err(bad(format!(
                "{name} {v} is not a finite non-negative number"
            )));
        }
    }
    if s.target_qps == 0.0 || s.duration_s == 0.0 {
        return Err(bad("target_qps and duration_s must be above 0".into()));
    }
    Ok(count)
}

/// The fields every shard of one load shares, as (name, value) to compare and print.
fn identity(s: &Summary) -> [(&'static str, String); 11] {
    [
        ("protocol", s.protocol.clone()),
        ("url", s.url.clone()),
        ("model", s.model.clone()),
        ("schedule", s.schedule.clone()),
        ("batch", s.batch.clone()),
        ("skew", s.skew.clone()),
        ("format", s.format.clone()),
        ("seed", s.seed.to_string()),
        ("duration_s", s.duration_s.to_string()),
        ("send_lag_bound_us", s.send_lag_bound_us.to_string()),
        // The shard count is compared separately.
        ("version", s.version.to_string()),
    ]
}

/// One shard's nominal rate (a part's target rate is the sum over its shards).
fn rate_per_shard(s: &Summary) -> f64 {
    s.target_qps / s.shards.len() as f64
}

/// Merges shard results: histograms added exactly, counts summed (checked), rates summed,
/// durations the longest. See the module documentation for what is checked.
pub fn merge(parts: &[RunResult], opts: &MergeOptions) -> Result<RunResult, LoadError> {
    let first = parts
        .first()
        .ok_or_else(|| LoadError::invalid("merge: nothing to merge"))?;
    let names: Vec<String> = parts.iter().enumerate().map(|(i, p)| label(p, i)).collect();
    let n = check(&names[0], first)?;
    let id0 = identity(&first.summary);
    let mut seen: BTreeMap<u32, usize> = BTreeMap::new();
    for (k, p) in parts.iter().enumerate() {
        let q = &p.summary;
        let nk = if k == 0 { n } else { check(&names[k], p)? };
        let differ = |field: &str, a: &str, b: &str| {
            LoadError::invalid(format!(
                "merge: {} and {} are not shards of one load: {field} differs (`{a}` and `{b}`)",
                names[0], names[k]
            ))
        };
        if nk != n {
            return Err(differ("the shard count", &n.to_string(), &nk.to_string()));
        }
        for ((field, a), (_, b)) in id0.iter().zip(identity(q)) {
            if *a != b {
                return Err(differ(field, a, &b));
            }
        }
        let (r0, r) = (rate_per_shard(&first.summary), rate_per_shard(q));
        if (r - r0).abs() > 1e-9 * r0.max(r) {
            return Err(differ(
                "the rate per shard (target_qps / shards)",
                &r0.to_string(),
                &r.to_string(),
            ));
        }
        for sh in &q.shards {
            let (i, _) = parse_shard(&names[k], sh)?;
            if let Some(&j) = seen.get(&i) {
                return Err(LoadError::invalid(format!(
                    "merge: shard {sh} appears twice: in {} and in {}",
                    names[j], names[k]
                )));
            }
            seen.insert(i, k);
        }
    }
    let missing: Vec<String> = (0..n)
        .filter(|i| !seen.contains_key(i))
        .map(|i| format!("{i}/{n}"))
        .collect();
    if !missing.is_empty() && !opts.partial {
        return Err(LoadError::invalid(format!(
            "merge: shards {} of the split are missing (given: {}); pass --partial to merge \
             without them",
            missing.join(", "),
            names.join(", ")
        )));
    }
    let sums = |field: &str, f: fn(&Summary) -> u64| -> Result<u64, LoadError> {
        let v: Vec<u64> = parts.iter().map(|p| f(&p.summary)).collect();
        sum("the merged shards", field, &v)
    };
    let mut s = first.summary.clone();
    s.requests = sums("requests", |s| s.requests)?;
    s.ok = sums("ok", |s| s.ok)?;
    s.samples_ok = sums("samples_ok", |s| s.samples_ok)?;
    s.connection_waits = sums("connection_waits", |s| s.connection_waits)?;
    s.not_sent = sums("not_sent", |s| s.not_sent)?;
    s.late = sums("late", |s| s.late)?;
    s.status = sum_maps("status", parts.iter().map(|p| &p.summary.status))?;
    s.errors = sum_maps("errors", parts.iter().map(|p| &p.summary.errors))?;
    s.grpc_status = sum_maps("grpc_status", parts.iter().map(|p| &p.summary.grpc_status))?;
    let floats = |f: fn(&Summary) -> f64| parts.iter().map(move |p| f(&p.summary));
    s.target_qps = floats(|s| s.target_qps).sum();
    s.offered_qps = floats(|s| s.offered_qps).sum();
    s.achieved_qps = floats(|s| s.achieved_qps).sum();
    s.samples_per_s = floats(|s| s.samples_per_s).sum();
    s.duration_s = floats(|s| s.duration_s).fold(0.0, f64::max);
    s.elapsed_s = floats(|s| s.elapsed_s).fold(0.0, f64::max);
    s.connections = parts
        .iter()
        .map(|p| p.summary.connections)
        .max()
        .unwrap_or(0);
    s.saturated = parts.iter().any(|p| p.summary.saturated) || saturated(s.late, s.requests);
    s.shards = seen.keys().map(|i| format!("{i}/{n}")).collect();
    s.missing_shards = missing;
    let mut latency = histogram();
    let mut lag = histogram();
    for (k, p) in parts.iter().enumerate() {
        add(&mut latency, &p.latency, &names[k], "latency.hdr")?;
        add(&mut lag, &p.lag, &names[k], "lag.hdr")?;
    }
    s.latency_us = Percentiles::of(&latency);
    s.send_lag_us = Percentiles::of(&lag);
    Ok(RunResult {
        summary: s,
        latency,
        lag,
        records: Vec::new(),
        start: None,
        from: None,
    })
}

fn add(
    into: &mut Histogram<u64>,
    h: &Histogram<u64>,
    what: &str,
    file: &str,
) -> Result<(), LoadError> {
    into.add(h)
        .map_err(|e| LoadError::invalid(format!("merge: {what}: {file}: {e:?}")))
}

fn sum_maps<'a>(
    field: &str,
    maps: impl Iterator<Item = &'a BTreeMap<String, u64>>,
) -> Result<BTreeMap<String, u64>, LoadError> {
    let mut out: BTreeMap<String, u64> = BTreeMap::new();
    for m in maps {
        for (k, &v) in m {
            let e = out.entry(k.clone()).or_default();
            *e = e.checked_add(v).ok_or_else(|| {
                LoadError::invalid(format!(
                    "merge: the merged shards: `{field}.{k}` overflows a 64-bit count"
                ))
            })?;
        }
    }
    Ok(out)
}

/// Reads and merges result folders.
pub fn merge_dirs(dirs: &[PathBuf], opts: &MergeOptions) -> Result<RunResult, LoadError> {
    let mut parts = Vec::with_capacity(dirs.len());
    let mut seen = BTreeSet::new();
    for d in dirs {
        if !seen.insert(d) {
            return Err(LoadError::invalid(format!(
                "merge: {} is given twice",
                d.display()
            )));
        }
        parts.push(RunResult::read(d)?);
    }
    merge(&parts, opts)
}
