//! `cargo xtask load --workers N`: the sharded load of the Kubernetes Indexed Job
//! (deploy/k8s/), as N local `streamrec load --shard i/N` processes on one machine, started
//! together against one server (a local `streamrec serve` on a free port unless `--url` is
//! given), then merged with `streamrec load merge`; prints the total and whether the achieved
//! rate is within 2% of the offered one.
//!
//! `--out` must be new or empty; `--replace` lets it hold an earlier run of this task, whose
//! files (listed in its manifest, `.xtask-load-files`) are removed and nothing else: a folder
//! holding anything else is refused. The task fails when a worker or the merge fails (failed
//! requests, a saturated generator), after printing what was measured.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

pub const HELP: &str = "\
  load [--workers N] [--url U] [--model M] [--spec FILE] [--row-cap N] [--qps Q]
       [--duration D] [--schedule S] [--batch B] [--skew S] [--seed S] [--connections C]
       [--out DIR] [--replace] [--no-build]
        The sharded load of deploy/k8s/load-job.yaml on one machine: N (default 3) processes
        `streamrec load --shard i/N` started together (--start-at) against --url, or against a
        local `streamrec serve SPEC` on a free port (default spec workloads/tiny.toml), then
        `streamrec load merge`; prints the total and checks that the achieved rate is within 2%
        of the offered one. Defaults: --qps 1500 (total), --duration 10s, --schedule poisson,
        --batch 1. Results in DIR/shard-i and DIR/merged (default target/xtask-load); DIR must
        be new or empty, or hold an earlier run of this task with --replace (its files are
        replaced; a folder holding anything else is refused). Fails when any request failed or
        a worker's generator saturated (each worker's log is DIR/shard-i.log).
";

/// The list of files this task writes into --out (what --replace may remove).
const MANIFEST: &str = ".xtask-load-files";

struct Opts {
    workers: u32,
    url: Option<String>,
    model: Option<String>,
    spec: PathBuf,
    row_cap: Option<String>,
    qps: String,
    duration: String,
    schedule: String,
    batch: String,
    skew: String,
    seed: String,
    connections: String,
    out: PathBuf,
    replace: bool,
    build: bool,
}

fn parse(args: &[String], root: &Path) -> Result<Opts> {
    let mut o = Opts {
        workers: 3,
        url: None,
        model: None,
        spec: root.join("workloads/tiny.toml"),
        row_cap: None,
        qps: "1500".into(),
        duration: "10s".into(),
        schedule: "poisson".into(),
        batch: "1".into(),
        skew: "uniform".into(),
        seed: "1".into(),
        connections: "32".into(),
        out: root.join("target/xtask-load"),
        replace: false,
        build: true,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .with_context(|| format!("load: {a} needs a value"))
        };
        match a.as_str() {
            "--workers" => {
                let v = val()?;
                o.workers = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=64).contains(n))
                    .with_context(|| format!("load: --workers `{v}`: must be in 1..=64"))?;
            }
            "--url" => o.url = Some(val()?),
            "--model" => o.model = Some(val()?),
            "--spec" => o.spec = PathBuf::from(val()?),
            "--row-cap" => o.row_cap = Some(val()?),
            "--qps" => o.qps = val()?,
            "--duration" => o.duration = val()?,
            "--schedule" => o.schedule = val()?,
            "--batch" => o.batch = val()?,
            "--skew" => o.skew = val()?,
            "--seed" => o.seed = val()?,
            "--connections" => o.connections = val()?,
            "--out" => o.out = PathBuf::from(val()?),
            "--replace" => o.replace = true,
            "--no-build" => o.build = false,
            "--help" | "-h" => {
                print!("cargo xtask load: options\n{HELP}");
                std::process::exit(0);
            }
            x => bail!("load: unknown option `{x}`\n\n{HELP}"),
        }
    }
    Ok(o)
}

/// A child process killed (SIGTERM, then SIGKILL after 5 s) when dropped.
pub(crate) struct Guard(pub(crate) Child);

impl Drop for Guard {
    fn drop(&mut self) {
        // Already exited (and reaped): its pid may belong to another process by now.
        if let Ok(Some(_)) = self.0.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn run(args: &[String]) -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()?;
    let o = parse(args, &root)?;
    // The folder first: nothing is built, started or sent if it cannot take the results.
    prepare_out(&o.out, o.replace, &files(o.workers))?;
    let bin = root.join("target/release/streamrec");
    if o.build {
        crate::common::build_release_cli(&root)?;
    }
    if !bin.is_file() {
        bail!("{} is missing (drop --no-build)", bin.display());
    }
    let model = match &o.model {
        Some(m) => m.clone(),
        None => o
            .spec
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .context("--spec has no file name")?,
    };
    // The server: the given URL, or a local one on a free port.
    let mut _server = None;
    let url = match &o.url {
        Some(u) => u.clone(),
        None => {
            let mut cmd = Command::new(&bin);
            cmd.arg("serve").arg(&o.spec).args(["--port", "0"]);
            if let Some(c) = &o.row_cap {
                cmd.args(["--row-cap", c]);
            }
            let mut child = cmd
                .current_dir(&root)
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .context("starting streamrec serve")?;
            let mut line = String::new();
            BufReader::new(child.stdout.take().context("server stdout")?).read_line(&mut line)?;
            let guard = Guard(child);
            let addr = line
                .trim()
                .strip_prefix("listening on ")
                .with_context(|| format!("streamrec serve printed `{}`", line.trim()))?
                .to_string();
            _server = Some(guard);
            eprintln!("server: {addr}");
            addr
        }
    };
    // Every worker starts at the same wall-clock time, 2 s from now.
    let start_at = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64() + 2.0;
    eprintln!(
        "{} workers: {} at {} req/s in all for {}, batch {}, starting together",
        o.workers, o.schedule, o.qps, o.duration, o.batch
    );
    let mut workers = Vec::new();
    for i in 0..o.workers {
        let dir = o.out.join(format!("shard-{i}"));
        let log = std::fs::File::create(o.out.join(format!("shard-{i}.log")))?;
        let mut cmd = Command::new(&bin);
        cmd.arg("load")
            .args(["--url", &url, "--model", &model])
            .arg("--spec")
            .arg(&o.spec)
            .args(["--qps", &o.qps, "--duration", &o.duration])
            .args([
                "--schedule",
                &o.schedule,
                "--batch",
                &o.batch,
                "--skew",
                &o.skew,
            ])
            .args(["--seed", &o.seed, "--connections", &o.connections])
            .args(["--shard", &format!("{i}/{}", o.workers)])
            .args(["--start-at", &format!("{start_at:.3}")])
            .arg("--out")
            .arg(&dir);
        if let Some(c) = &o.row_cap {
            cmd.args(["--row-cap", c]);
        }
        let child = cmd
            .current_dir(&root)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting streamrec load")?;
        workers.push((i, dir, Guard(child)));
    }
    // A worker that wrote its summary finished its run (exit 1: failed requests or a saturated
    // generator, which the merge shows); one that did not, failed outright.
    let mut unfinished = Vec::new();
    let mut failing = Vec::new();
    let mut dirs = Vec::new();
    for (i, dir, mut g) in workers {
        let st = g.0.wait()?;
        if !dir.join("summary.json").is_file() {
            unfinished.push(i);
        } else if !st.success() {
            failing.push(i);
        }
        dirs.push(dir);
    }
    let log = |i: &u32| std::fs::read_to_string(o.out.join(format!("shard-{i}.log")));
    for i in &unfinished {
        eprintln!("worker {i} failed:\n{}", log(i).unwrap_or_default());
    }
    if !unfinished.is_empty() {
        bail!("{} of {} workers failed", unfinished.len(), o.workers);
    }
    for i in &failing {
        let text = log(i).unwrap_or_default();
        eprintln!(
            "worker {i}: {}",
            text.lines().last().unwrap_or("exited with an error")
        );
    }
    let merged = o.out.join("merged");
    let out = Command::new(&bin)
        .args(["load", "merge"])
        .args(&dirs)
        .arg("--out")
        .arg(&merged)
        .current_dir(&root)
        .output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    let summary = merged.join("summary.json");
    if !summary.is_file() {
        bail!("streamrec load merge failed (see above)");
    }
    let s: serde_json::Value = serde_json::from_slice(&std::fs::read(&summary)?)?;
    let offered = s["offered_qps"].as_f64().unwrap_or(0.0);
    let achieved = s["achieved_qps"].as_f64().unwrap_or(0.0);
    let ratio = if offered > 0.0 {
        achieved / offered
    } else {
        0.0
    };
    println!(
        "total over {} workers: offered {offered:.1} req/s, achieved {achieved:.1} req/s \
         ({:+.2}% of offered; {}), p99 {} us",
        o.workers,
        (ratio - 1.0) * 100.0,
        if (ratio - 1.0).abs() <= 0.02 {
            "within 2%"
        } else {
            "NOT within 2%"
        },
        s["latency_us"]["p99"]
    );
    if !failing.is_empty() || !out.status.success() {
        bail!(
            "the load did not pass: {} of {} workers reported failed requests or a saturated \
             generator (see above)",
            failing.len(),
            o.workers
        );
    }
    Ok(())
}

/// The files this task writes into --out for `workers` workers, relative to it.
fn files(workers: u32) -> Vec<PathBuf> {
    let results = |d: String| {
        streamrec_loadgen::results::RESULT_FILES
            .iter()
            .map(move |f| Path::new(&d).join(f))
    };
    let mut v = vec![PathBuf::from(MANIFEST)];
    for i in 0..workers {
        v.extend(results(format!("shard-{i}")));
        v.push(PathBuf::from(format!("shard-{i}.log")));
    }
    v.extend(results("merged".into()));
    v
}

/// Makes `out` ready for a task that writes `files` (relative to it) and lists them in its
/// manifest `.xtask-load-files`; see [`prepare_listed`].
fn prepare_out(out: &Path, replace: bool, files: &[PathBuf]) -> Result<()> {
    prepare_listed(out, replace, MANIFEST, files)
}

/// Makes `out` ready for a task that writes `files` (relative to it) and keeps their list in
/// `out/manifest`: created if missing; if it holds anything, only with `replace`, and then
/// only the files an earlier run listed in its manifest are removed (a folder that holds
/// anything else is refused, nothing removed). The new list is written before any other file,
/// so that a run cut short can still be replaced.
pub(crate) fn prepare_listed(
    out: &Path,
    replace: bool,
    manifest: &str,
    files: &[PathBuf],
) -> Result<()> {
    let earlier = if out.is_dir() {
        streamrec_loadgen::out::read_manifest(out, manifest)?
    } else {
        Vec::new()
    };
    streamrec_loadgen::out::prepare(out, "--out", replace, &earlier)?;
    streamrec_loadgen::out::write_manifest(out, manifest, files)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(test: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("xtask-load-out-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn put(dir: &Path, rel: &str) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, rel).unwrap();
    }

    /// What a finished run of 3 workers leaves.
    fn a_run(dir: &Path) {
        for i in 0..3 {
            for f in ["summary.json", "latency.hdr", "lag.hdr"] {
                put(dir, &format!("shard-{i}/{f}"));
            }
            put(dir, &format!("shard-{i}.log"));
        }
        for f in ["summary.json", "latency.hdr", "lag.hdr"] {
            put(dir, &format!("merged/{f}"));
        }
    }

    #[test]
    fn an_earlier_run_is_replaced_only_with_replace_and_only_its_files() {
        let d = scratch("replace");
        let out = d.join("out");
        prepare_out(&out, false, &files(3)).unwrap();
        a_run(&out);
        let e = prepare_out(&out, false, &files(2)).unwrap_err().to_string();
        assert!(e.contains("is not empty") && e.contains("--replace"), "{e}");
        assert!(out.join("merged/summary.json").is_file());
        // Fewer workers this time: the earlier run's manifest still covers shard-2.
        prepare_out(&out, true, &files(2)).unwrap();
        let left: Vec<_> = std::fs::read_dir(&out).unwrap().collect();
        assert_eq!(left.len(), 1, "only the new manifest: {left:?}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_folder_holding_anything_else_is_never_removed() {
        let d = scratch("foreign");
        // An earlier run, plus a file someone put there.
        let out = d.join("out");
        prepare_out(&out, false, &files(3)).unwrap();
        a_run(&out);
        put(&out, "notes.txt");
        let e = prepare_out(&out, true, &files(3)).unwrap_err().to_string();
        assert!(
            e.contains("`notes.txt`, which this tool did not write"),
            "{e}"
        );
        assert!(out.join("notes.txt").is_file() && out.join("shard-0/summary.json").is_file());
        // `--out .`: a working folder with no manifest of this task.
        let work = d.join("work");
        put(&work, "src/main.rs");
        put(&work, "Cargo.toml");
        let e = prepare_out(&work, true, &files(3)).unwrap_err().to_string();
        assert!(e.contains("which this tool did not write"), "{e}");
        assert!(work.join("src/main.rs").is_file() && work.join("Cargo.toml").is_file());
        let _ = std::fs::remove_dir_all(&d);
    }
}
