//! What each phase of `cargo xtask cluster` must leave, checked from the shards' summaries,
//! the merge (strict and, after a lost worker, `--partial`) and the replicas' Prometheus
//! counters (`nv_inference_request_success`, `nv_inference_request_failure`, summed over the
//! replicas, read before and after the phase), and the phase's section of report.md.

use std::path::Path;
use std::process::Command;

use anyhow::Result;
use streamrec_loadgen::Summary;

use super::{Cluster, Opts};

/// One check: its name, whether it held, and the figures.
pub(crate) struct Check {
    pub name: String,
    pub pass: bool,
    pub detail: String,
}

fn check_of(name: &str, pass: bool, detail: String) -> Check {
    Check {
        name: name.into(),
        pass,
        detail,
    }
}

/// What a phase left.
pub(crate) struct PhaseData {
    /// Workers.
    pub n: u32,
    /// Each shard's summary (None: the worker wrote none).
    pub shards: Vec<Option<Summary>>,
    /// Each worker's exit code (None: killed).
    pub exits: Vec<Option<i32>>,
    /// Each worker's log.
    pub logs: Vec<String>,
    /// The merged summary (`--partial` after a lost worker).
    pub merged: Option<Summary>,
    /// The merge's exit code and output.
    pub merge: (Option<i32>, String),
    /// The strict merge without `--partial` (only when a shard is missing).
    pub strict: Option<(Option<i32>, String)>,
    /// Per replica, (success, failure) counted during the phase.
    pub replicas: Vec<(u64, u64)>,
    /// The cut-off replica's (success, failure) counted while its link was down.
    pub victim_during: Option<(u64, u64)>,
    /// Each worker's pid.
    pub pids: Vec<u32>,
    /// What nginx logged about its upstreams during the phase.
    pub nginx: NginxRetries,
}

/// nginx's upstream timeouts in its error log: each one is a request it tried elsewhere.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct NginxRetries {
    /// Timed out connecting (the request never reached the replica).
    pub connecting: u64,
    /// Timed out waiting for the answer: the request was written to the replica's connection
    /// and may still reach it (TCP delivers it when the link is back) and be counted there.
    pub reading: u64,
}

impl NginxRetries {
    pub(crate) fn count(log: &str) -> NginxRetries {
        let n = |what: &str| {
            log.lines()
                .filter(|l| l.contains("upstream timed out") && l.contains(what))
                .count() as u64
        };
        NginxRetries {
            connecting: n("while connecting to upstream"),
            reading: n("while reading response header"),
        }
    }
}

/// Sums the values of every series of counter `name` in a Prometheus text page.
pub(crate) fn metric_sum(page: &str, name: &str) -> u64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// Runs `streamrec load merge` on the shards that finished; with a shard missing, first
/// without `--partial` (which must refuse), then with it.
pub(crate) fn collect(
    c: &Cluster,
    phase: &str,
    dir: &Path,
    exits: Vec<Option<i32>>,
    replicas: Vec<(u64, u64)>,
    victim_during: Option<(u64, u64)>,
    pids: Vec<u32>,
) -> Result<PhaseData> {
    let n = c.o.workers;
    let mut shards = Vec::new();
    let mut logs = Vec::new();
    let mut done = Vec::new();
    for i in 0..n {
        let d = dir.join(format!("shard-{i}"));
        let s = std::fs::read(d.join("summary.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Summary>(&b).ok());
        if s.is_some() {
            done.push(d);
        }
        shards.push(s);
        logs.push(std::fs::read_to_string(dir.join(format!("shard-{i}.log"))).unwrap_or_default());
    }
    let merge = |extra: &[&str]| -> Result<(Option<i32>, String)> {
        let out = Command::new(&c.bin)
            .args(["load", "merge"])
            .args(&done)
            .args(extra)
            .current_dir(&c.root)
            .output()?;
        Ok((
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ))
    };
    let merged_dir = dir.join("merged").display().to_string();
    let mut strict = None;
    let mut log = String::new();
    if done.len() < n as usize && !done.is_empty() {
        let s = merge(&[])?;
        log.push_str(&format!(
            "$ streamrec load merge (no --partial): exit {:?}\n{}\n",
            s.0, s.1
        ));
        strict = Some(s);
    }
    let m = if done.len() < n as usize {
        merge(&["--partial", "--out", &merged_dir])?
    } else {
        merge(&["--out", &merged_dir])?
    };
    log.push_str(&format!(
        "$ streamrec load merge --out merged: exit {:?}\n{}\n",
        m.0, m.1
    ));
    std::fs::write(dir.join("merge.log"), log)?;
    let merged = std::fs::read(dir.join("merged/summary.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Summary>(&b).ok());
    eprintln!("  {phase}: merged {} of {n} shards", done.len());
    Ok(PhaseData {
        n,
        shards,
        exits,
        logs,
        merged,
        merge: m,
        strict,
        replicas,
        victim_during,
        pids,
        nginx: NginxRetries::default(),
    })
}

/// Requests that may be in flight at the instant a link is cut (and fail, or be counted by a
/// replica whose answer was lost): a 20 ms window of the offered rate, at least 4.
fn in_flight_bound(o: &Opts) -> u64 {
    ((o.qps * 0.02).ceil() as u64).max(4)
}

/// The checks of `phase`.
pub(crate) fn check(phase: &str, d: &PhaseData, o: &Opts) -> Vec<Check> {
    let mut v = Vec::new();
    let victim = d.n as usize - 1;
    let shard_name = format!("{victim}/{}", d.n);
    let (succ, fail) = d
        .replicas
        .iter()
        .fold((0u64, 0u64), |a, r| (a.0 + r.0, a.1 + r.1));
    let Some(m) = &d.merged else {
        v.push(check_of(
            "merge",
            false,
            format!("no merged summary: {}", d.merge.1.trim()),
        ));
        return v;
    };
    let faulted = |i: usize| i == victim && (phase == "worker-link" || phase == "worker-kill");
    // Offered vs achieved over the shards the fault did not touch.
    let (mut off, mut ach) = (0.0, 0.0);
    for (i, s) in d.shards.iter().enumerate() {
        if let (Some(s), false) = (s, faulted(i)) {
            off += s.offered_qps;
            ach += s.achieved_qps;
        }
    }
    let ratio = if off > 0.0 { ach / off } else { 0.0 };
    v.push(check_of(
        "offered vs achieved within 2%",
        (ratio - 1.0).abs() <= 0.02,
        format!(
            "offered {off:.1} req/s, achieved {ach:.1} req/s ({:+.2}%) summed over {} shards",
            (ratio - 1.0) * 100.0,
            (0..d.n as usize)
                .filter(|&i| d.shards[i].is_some() && !faulted(i))
                .count()
        ),
    ));
    let mfailed = m.failed();
    let counts = format!(
        "merged requests {} (not sent {}), ok {}, failed {}; replicas' metrics: requests {}, \
         success {succ}, failure {fail}",
        m.requests,
        m.not_sent,
        m.ok,
        mfailed,
        succ + fail
    );
    let others_clean = |v: &mut Vec<Check>| {
        let bad: Vec<String> = d
            .shards
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != victim)
            .filter_map(|(i, s)| {
                let s = s.as_ref()?;
                (s.unsuccessful() > 0).then(|| format!("shard {i}: {:?}", s.errors))
            })
            .collect();
        v.push(check_of(
            "the other shards are unaffected",
            bad.is_empty(),
            if bad.is_empty() {
                "no failure on any other shard".into()
            } else {
                bad.join("; ")
            },
        ));
    };
    match phase {
        "base" | "late-start" => {
            let all = d.shards.iter().all(Option::is_some)
                && d.exits.iter().all(|e| *e == Some(0))
                && d.merge.0 == Some(0);
            v.push(check_of(
                "every worker and the merge succeeded",
                all,
                format!("worker exits {:?}, merge exit {:?}", d.exits, d.merge.0),
            ));
            let exact =
                m.not_sent == 0 && m.requests == succ + fail && m.ok == succ && mfailed == fail;
            v.push(check_of(
                "merged counts equal the replicas' metrics",
                exact,
                counts,
            ));
            if phase == "late-start" {
                const SAYS: &str = "--start-at is in the past";
                let late_says = d.logs[victim].contains(SAYS);
                let others = (0..victim).filter(|&i| d.logs[i].contains(SAYS)).count();
                v.push(check_of(
                    "the late worker says it started late",
                    late_says && others == 0,
                    format!(
                        "worker {victim} started {:.1} s after --start-at: {}; {others} on-time \
                         workers say so",
                        super::LATE.as_secs_f64(),
                        if late_says {
                            format!("its log says `{SAYS}`")
                        } else {
                            "its log does not say so".into()
                        }
                    ),
                ));
            }
        }
        "worker-link" => {
            let s = d.shards[victim].as_ref();
            let (vf, kinds, vok) = s.map_or((0, String::new(), 0), |s| {
                (s.failed(), format!("{:?}", s.errors), s.ok)
            });
            let known = s.is_some_and(|s| {
                s.errors
                    .keys()
                    .all(|k| ["timeout", "connect", "io"].contains(&k.as_str()))
            });
            v.push(check_of(
                "the cut-off worker's shard records its failures with their reasons",
                vf > 0 && known && vok > 0,
                format!("shard {shard_name}: {vf} failed {kinds}, {vok} ok (link down and back)"),
            ));
            others_clean(&mut v);
            // A request can reach a replica and lose only its answer: counted there as a success.
            let pass = succ >= m.ok && succ - m.ok <= vf && fail <= vf;
            v.push(check_of(
                "the replicas counted the merged successes, plus at most the cut-off shard's failures",
                pass,
                counts,
            ));
        }
        "worker-kill" => {
            let (sx, stext) = d.strict.clone().unwrap_or((Some(0), String::new()));
            let refused = sx != Some(0) && stext.contains("missing") && stext.contains(&shard_name);
            v.push(check_of(
                "the merge names the missing shard and refuses",
                d.shards[victim].is_none() && refused,
                format!(
                    "worker {victim} killed; merge without --partial: exit {sx:?}, `{}`",
                    stext
                        .lines()
                        .rev()
                        .find(|l| !l.trim().is_empty())
                        .unwrap_or("")
                        .trim()
                ),
            ));
            v.push(check_of(
                "--partial marks the run partial",
                m.missing_shards == vec![shard_name.clone()],
                format!("missing_shards {:?}", m.missing_shards),
            ));
            others_clean(&mut v);
            v.push(check_of(
                "the replicas counted at least the merged successes",
                succ >= m.ok && mfailed == 0,
                counts,
            ));
        }
        "replica-link" => {
            let bound = in_flight_bound(o);
            let bad = mfailed + m.not_sent;
            v.push(check_of(
                "nginx routes around the cut-off replica: failures only in flight",
                bad <= bound,
                format!(
                    "{bad} failed or not sent of {} (at most {bound} in flight); p99 {} us, max {} us",
                    m.requests, m.latency_us.p99, m.latency_us.max
                ),
            ));
            let vr = d.replicas.last().copied().unwrap_or_default();
            let during = d.victim_during.unwrap_or_default();
            v.push(check_of(
                "the cut-off replica served before and after its link was down",
                vr.0 > during.0 + bound,
                format!(
                    "replica r{}: {} successes in the phase, {} while down",
                    d.replicas.len() - 1,
                    vr.0,
                    during.0
                ),
            ));
            // A request nginx wrote to the cut-off replica and retried elsewhere after its read
            // timeout can still reach it when the link is back (TCP retransmits it) and be run
            // twice: the replicas may count one more success per such retry, and no more.
            let retried = d.nginx.reading;
            v.push(check_of(
                "the replicas counted the merged successes, plus at most nginx's retries after a read timeout",
                succ >= m.ok && succ - m.ok <= retried,
                format!(
                    "{counts}; nginx retried {retried} after a read timeout, {} after a connect \
                     timeout",
                    d.nginx.connecting
                ),
            ));
        }
        _ => {}
    }
    v
}

/// The phase's section of report.md: per shard, the merge, the replicas, the checks.
pub(crate) fn report_section(phase: &str, d: &PhaseData, checks: &[Check]) -> String {
    let mut s = format!(
        "\n### Phase `{phase}`\n\n| shard | host | pid | offered req/s | achieved req/s | ok | failed | not sent | exit |\n|---|---|---|---|---|---|---|---|---|\n"
    );
    for (i, sh) in d.shards.iter().enumerate() {
        let exit = d.exits[i].map_or("killed".to_string(), |c| c.to_string());
        match sh {
            Some(x) => s.push_str(&format!(
                "| {i}/{} | w{i} | {} | {:.1} | {:.1} | {} | {} {:?} | {} | {exit} |\n",
                d.n,
                d.pids[i],
                x.offered_qps,
                x.achieved_qps,
                x.ok,
                x.failed(),
                x.errors,
                x.not_sent
            )),
            None => s.push_str(&format!(
                "| {i}/{} | w{i} | {} | - | - | - | - | - | {exit} (no summary) |\n",
                d.n, d.pids[i]
            )),
        }
    }
    if let Some(m) = &d.merged {
        let l = &m.latency_us;
        s.push_str(&format!(
            "\nMerged{}: {} requests, {} ok, {} failed, {} not sent; offered {:.1} req/s, achieved \
             {:.1} req/s. Latency (us, from the intended send time): p50 {}, p90 {}, p99 {}, \
             p99.9 {}, max {} ({} values).\n",
            if m.missing_shards.is_empty() {
                String::new()
            } else {
                format!(" (partial: missing {})", m.missing_shards.join(", "))
            },
            m.requests,
            m.ok,
            m.failed(),
            m.not_sent,
            m.offered_qps,
            m.achieved_qps,
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max,
            l.count
        ));
    }
    let per: Vec<String> = d
        .replicas
        .iter()
        .enumerate()
        .map(|(r, (ok, f))| format!("r{r} {ok} success, {f} failure"))
        .collect();
    s.push_str(&format!(
        "\nReplicas' metrics during the phase: {}.\n\n",
        per.join("; ")
    ));
    for c in checks {
        s.push_str(&format!(
            "- {} {}: {}\n",
            if c.pass { "PASS" } else { "FAIL" },
            c.name,
            c.detail
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_summed_over_series_of_exactly_that_name() {
        let page = "# TYPE nv_inference_request_success counter\n\
            nv_inference_request_success{model=\"tiny\",version=\"1\"} 5\n\
            nv_inference_request_success_extra{model=\"tiny\"} 100\n\
            nv_inference_request_failure{model=\"tiny\",reason=\"REJECTED\",version=\"1\"} 2\n\
            nv_inference_request_failure{model=\"tiny\",reason=\"CANCELLED\",version=\"1\"} 3\n";
        assert_eq!(metric_sum(page, "nv_inference_request_success"), 5);
        assert_eq!(metric_sum(page, "nv_inference_request_failure"), 5);
        assert_eq!(metric_sum(page, "nv_inference_count"), 0);
    }
}
