//! `cargo xtask cluster --workers N --replicas R`: the sharded load of deploy/k8s/ on many
//! network stacks: R `streamrec serve` replicas, nginx and N `streamrec load --shards N`
//! workers, each on a host of its own (a network namespace, see [`net`]),
//! started together with `--start-at`, their shards merged with `streamrec load merge`.
//!
//! Each phase is one load: `base`, then the fault scenarios of `--faults` (a worker's link
//! down and back, a worker killed, a replica's link down and back, a worker started late),
//! each with the checks of what must hold ([`checks`]). Everything goes into
//! one run folder: `hosts.tsv` (each host's namespace, address, pid, role and log), the logs,
//! per phase the shards, the merge and its log, and `report.md`. The task fails when a check
//! fails; the network is torn down in every case (also on ctrl-c).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

mod checks;
mod manifest;
mod net;

use checks::{Check, PhaseData};
use net::Net;

pub const HELP: &str = "\
  cluster [--workers N] [--replicas R] [--qps Q] [--duration D] [--faults LIST] [--spec FILE]
          [--bin PATH] [--no-build] [--out DIR] [--timeout D] [--upstream-timeout D]
        The sharded load on a private network of Linux network namespaces (root and iproute2):
        one host per `streamrec serve` replica (default 2), one for nginx (deploy/nginx.conf's
        upstream generated for these addresses) and one per `streamrec load --shards N`
        worker (default 3), joined by veth pairs to a bridge in a namespace of its own, in
        192.0.2.0/24, with no route out (checked before anything is sent; refused otherwise).
        Phases: `base`, then each fault of --faults (default all: worker-link, worker-kill,
        replica-link, late-start; `none` for the base only), each a load of Q req/s in all
        (default 400) for D (default 6s) merged exactly, with its checks: offered vs achieved
        within 2% summed over the shards, merged counts equal to the replicas' Prometheus
        counters, and what each fault must leave. --bin: the streamrec binary (default: build
        target/release/streamrec; --no-build uses it as it is). --timeout: the workers' request
        timeout (default 5s); --upstream-timeout: nginx's proxy_read_timeout (default 1s; the
        deploy file's 30s would hold every request sent to a cut-off replica for 30 s).
        Results in DIR (default target/xtask-cluster/<run>; new or empty): hosts.tsv, logs,
        PHASE/shard-i, PHASE/merged, report.md. Tears everything down on exit, error or ctrl-c.
";

/// The faults, in the order they run.
pub(crate) const FAULTS: [&str; 4] = ["worker-link", "worker-kill", "replica-link", "late-start"];

pub(crate) struct Opts {
    pub workers: u32,
    pub replicas: u32,
    pub qps: f64,
    pub duration: Duration,
    pub faults: Vec<String>,
    pub spec: PathBuf,
    pub bin: Option<PathBuf>,
    pub build: bool,
    pub out: Option<PathBuf>,
    pub timeout: String,
    pub upstream_timeout: String,
    /// Test only: a default route added to this host before the isolation check.
    pub route_out: Option<String>,
}

fn parse(args: &[String], root: &Path) -> Result<Opts> {
    let mut o = Opts {
        workers: 3,
        replicas: 2,
        qps: 400.0,
        duration: Duration::from_secs(6),
        faults: FAULTS.iter().map(|s| s.to_string()).collect(),
        spec: root.join("workloads/tiny.toml"),
        bin: None,
        build: true,
        out: None,
        timeout: "5s".into(),
        upstream_timeout: "1s".into(),
        route_out: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .with_context(|| format!("cluster: {a} needs a value"))
        };
        let count = |v: String, max: u32| {
            v.parse::<u32>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .with_context(|| format!("cluster: {a} `{v}`: must be in 1..={max}"))
        };
        match a.as_str() {
            "--workers" => o.workers = count(val()?, 16)?,
            "--replicas" => o.replicas = count(val()?, 8)?,
            "--qps" => {
                let v = val()?;
                o.qps = v
                    .parse::<f64>()
                    .ok()
                    .filter(|q| *q > 0.0 && *q <= 100_000.0)
                    .with_context(|| format!("cluster: --qps `{v}`: must be in (0, 100000]"))?;
            }
            "--duration" => {
                o.duration = streamrec_loadgen::parse_duration("--duration", &val()?)?;
                if o.duration > Duration::from_secs(600) || o.duration < Duration::from_secs(3) {
                    bail!("cluster: --duration must be between 3 s and 10 min");
                }
            }
            "--faults" => {
                let v = val()?;
                o.faults = if v == "none" {
                    Vec::new()
                } else if v == "all" {
                    FAULTS.iter().map(|s| s.to_string()).collect()
                } else {
                    v.split(',').map(str::to_string).collect()
                };
                for f in &o.faults {
                    if !FAULTS.contains(&f.as_str()) {
                        bail!(
                            "cluster: unknown fault `{f}` (known: {}, all, none)",
                            FAULTS.join(", ")
                        );
                    }
                }
            }
            "--spec" => o.spec = PathBuf::from(val()?),
            "--bin" => o.bin = Some(PathBuf::from(val()?)),
            "--no-build" => o.build = false,
            "--out" => o.out = Some(PathBuf::from(val()?)),
            "--timeout" => o.timeout = val()?,
            "--upstream-timeout" => o.upstream_timeout = val()?,
            "--test-route-out" => o.route_out = Some(val()?),
            "--help" | "-h" => {
                print!("cargo xtask cluster: options\n{HELP}");
                std::process::exit(0);
            }
            x => bail!("cluster: unknown option `{x}`\n\n{HELP}"),
        }
    }
    if o.workers < 2
        && o.faults
            .iter()
            .any(|f| f.starts_with("worker") || f == "late-start")
    {
        bail!("cluster: the worker faults need --workers 2 or more (one to fault, one to compare)");
    }
    if o.replicas < 2 && o.faults.iter().any(|f| f == "replica-link") {
        bail!("cluster: the replica-link fault needs --replicas 2 or more");
    }
    streamrec_loadgen::parse_duration("--timeout", &o.timeout)?;
    streamrec_loadgen::parse_duration("--upstream-timeout", &o.upstream_timeout)?;
    Ok(o)
}

/// The port every server listens on in its host (as in deploy/k8s/server.yaml).
pub(crate) const PORT: u16 = 8000;

/// The lead from the workers' start to `--start-at`: enough to wait for the server and make
/// the request bodies.
const LEAD: Duration = Duration::from_secs(3);

/// How late the late worker of `late-start` is started after `--start-at`.
pub(crate) const LATE: Duration = Duration::from_millis(1500);

/// The workers' request timeout in the `worker-link` phase, and how long its link is down (at a
/// quarter of the run): twice as long, so that requests sent into the cut fail (TCP would carry
/// them over a shorter one).
const WORKER_LINK_TIMEOUT: Duration = Duration::from_secs(1);
const WORKER_OUTAGE: Duration = Duration::from_secs(2);

/// Addresses: nginx .2, replicas .10 + r, workers .100 + i.
fn addresses(o: &Opts) -> Vec<(String, Ipv4Addr)> {
    let mut v = vec![("lb".to_string(), Ipv4Addr::new(192, 0, 2, 2))];
    for r in 0..o.replicas {
        v.push((format!("r{r}"), Ipv4Addr::new(192, 0, 2, 10 + r as u8)));
    }
    for i in 0..o.workers {
        v.push((format!("w{i}"), Ipv4Addr::new(192, 0, 2, 100 + i as u8)));
    }
    v
}

/// The streamrec binary: --bin, else target/release/streamrec (built unless --no-build).
fn binary(o: &Opts, root: &Path) -> Result<PathBuf> {
    if let Some(b) = &o.bin {
        let b = b
            .canonicalize()
            .with_context(|| format!("--bin {}", b.display()))?;
        return Ok(b);
    }
    let bin = root.join("target/release/streamrec");
    if o.build {
        crate::common::build_release_cli(root)?;
    }
    if !bin.is_file() {
        bail!(
            "{} is missing (drop --no-build, or pass --bin)",
            bin.display()
        );
    }
    Ok(bin)
}

/// The run: its options, binary, folder, network and what it wrote about its hosts.
pub(crate) struct Cluster {
    pub o: Opts,
    pub root: PathBuf,
    pub bin: PathBuf,
    pub out: PathBuf,
    pub net: Net,
    pub model: String,
    /// hosts.tsv rows: phase, host, namespace, address, pid, role, log.
    pub hosts_tsv: Vec<String>,
}

pub fn run(args: &[String]) -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()?;
    let o = parse(args, &root)?;
    if let Some(why) = net::unavailable() {
        bail!("cluster: cannot build the network: {why}");
    }
    let bin = binary(&o, &root)?;
    let prefix = net::unique_prefix();
    let out = match &o.out {
        Some(d) => d.clone(),
        None => root.join("target/xtask-cluster").join(&prefix),
    };
    if out.is_dir() && std::fs::read_dir(&out)?.next().is_some() {
        bail!("cluster: --out {} is not empty", out.display());
    }
    std::fs::create_dir_all(&out)?;
    let out = out.canonicalize()?;
    let model = o
        .spec
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .context("--spec has no file name")?;
    net::catch_signals();
    eprintln!(
        "cluster {prefix}: {} replicas, nginx, {} workers on 192.0.2.0/24; results in {}",
        o.replicas,
        o.workers,
        out.display()
    );
    let net = Net::build(&prefix, &addresses(&o))?;
    let mut c = Cluster {
        o,
        root,
        bin,
        out,
        net,
        model,
        hosts_tsv: vec!["phase\thost\tnamespace\taddress\tpid\trole\tlog".into()],
    };
    let r = c.go();
    // Teardown before the verdict, so that what it leaves is reported too.
    let t = c.net.teardown();
    let _ = std::fs::write(c.out.join("hosts.tsv"), c.hosts_tsv.join("\n") + "\n");
    match (&r, &t) {
        (_, Err(e)) => eprintln!("cluster: teardown: {e:#}"),
        (_, Ok(())) => eprintln!(
            "teardown: every process stopped, no namespace of {} left",
            c.net.prefix
        ),
    }
    let checks = r?;
    t?;
    let failed: Vec<&Check> = checks.iter().filter(|c| !c.pass).collect();
    println!("report: {}", c.out.join("report.md").display());
    if !failed.is_empty() {
        bail!(
            "{} of {} checks failed: {}",
            failed.len(),
            checks.len(),
            failed
                .iter()
                .map(|c| format!("{} ({})", c.name, c.detail))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    println!("cluster: all {} checks passed", checks.len());
    Ok(())
}

impl Cluster {
    /// Everything after the network is built; the checks of every phase.
    fn go(&mut self) -> Result<Vec<Check>> {
        if let Some(h) = self.o.route_out.clone() {
            let ns = self.net.host(&h).ns.clone();
            net::ip(&[
                "-n",
                &ns,
                "route",
                "add",
                "default",
                "via",
                "192.0.2.1",
                "dev",
                "eth0",
            ])?;
        }
        self.net.check_isolated()?;
        eprintln!(
            "isolation checked: {} namespaces, routes only in 192.0.2.0/24 and loopback, no \
             interface but lo, the bridge and the run's veth pairs",
            self.net.all_ns().len()
        );
        self.start_servers()?;
        let mut phases = vec!["base".to_string()];
        phases.extend(self.o.faults.iter().cloned());
        let mut all = Vec::new();
        let mut report = self.report_head();
        for p in &phases {
            net::check_interrupted()?;
            let data = self.phase(p)?;
            let checks = checks::check(p, &data, &self.o);
            for c in &checks {
                println!(
                    "  [{}] {p}: {}: {}",
                    if c.pass { "ok" } else { "FAILED" },
                    c.name,
                    c.detail
                );
            }
            report.push_str(&checks::report_section(p, &data, &checks));
            std::fs::write(self.out.join("report.md"), &report)?;
            all.extend(checks);
        }
        Ok(all)
    }

    fn log(&self, name: &str) -> PathBuf {
        self.out.join(name)
    }

    fn note_host(&mut self, phase: &str, host: &str, pid: u32, role: &str, log: &Path) {
        let h = self.net.host(host);
        self.hosts_tsv.push(format!(
            "{phase}\t{host}\t{}\t{}\t{pid}\t{role}\t{}",
            h.ns,
            h.addr,
            log.strip_prefix(&self.out).unwrap_or(log).display()
        ));
    }

    /// The replicas and nginx, each ready; then one worker host reaches nginx.
    fn start_servers(&mut self) -> Result<()> {
        for r in 0..self.o.replicas {
            let host = format!("r{r}");
            let log = self.log(&format!("{host}.log"));
            // deploy/k8s/server.yaml's command line.
            let mut args = vec![self.bin.display().to_string()];
            args.extend(manifest::serve_command(
                &self.root,
                &self.o.spec.display().to_string(),
                PORT,
            )?);
            let pid = self
                .net
                .spawn(&host, "serve", &args, &[], &log, &self.root)?;
            self.note_host("all", &host, pid, "streamrec serve", &log);
        }
        let conf = self.nginx_conf()?;
        let prefix = self.out.join("nginx");
        std::fs::create_dir_all(&prefix)?;
        let conf_path = prefix.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .context("nginx is not installed (Debian package nginx-light)")?;
        let log = self.log("lb.log");
        let args = vec![
            nginx.to_string(),
            "-p".into(),
            prefix.display().to_string(),
            "-c".into(),
            conf_path.display().to_string(),
        ];
        let pid = self
            .net
            .spawn("lb", "nginx", &args, &[], &log, &self.root)?;
        self.note_host("all", "lb", pid, "nginx", &log);
        for r in 0..self.o.replicas {
            self.wait_ready(&format!("r{r}"), Ipv4Addr::LOCALHOST)?;
        }
        self.wait_ready("lb", Ipv4Addr::LOCALHOST)?;
        // Across the bridge: the first worker host reaches nginx, which reaches a replica.
        let lb = self.net.host("lb").addr;
        match self.net.get("w0", lb, PORT, "/v2/health/ready") {
            Some((200, _)) => {}
            other => bail!("w0 cannot reach nginx at {lb}:{PORT}: {other:?}"),
        }
        eprintln!(
            "{} replicas and nginx ready; w0 reaches nginx at {lb}:{PORT}",
            self.o.replicas
        );
        Ok(())
    }

    /// Waits (60 s at most) for `GET /v2/health/ready` from inside `host` to answer 200.
    fn wait_ready(&mut self, host: &str, addr: Ipv4Addr) -> Result<()> {
        let t = std::time::Instant::now();
        loop {
            if let Some((200, _)) = self.net.get(host, addr, PORT, "/v2/health/ready") {
                return Ok(());
            }
            for p in self.net.procs.iter_mut().filter(|p| p.host == host) {
                if let Ok(Some(st)) = p.child.try_wait() {
                    let log = std::fs::read_to_string(&p.log).unwrap_or_default();
                    bail!("{} on {host} exited ({st}):\n{log}", p.what);
                }
            }
            if t.elapsed() > Duration::from_secs(60) {
                bail!("{host} not ready after 60 s");
            }
            net::sleep(Duration::from_millis(100))?;
        }
    }

    /// deploy/nginx.conf with this network's upstream and listen address (see the help for
    /// proxy_read_timeout).
    fn nginx_conf(&self) -> Result<String> {
        let conf = std::fs::read_to_string(self.root.join("deploy/nginx.conf"))?;
        let upstream: String = (0..self.o.replicas)
            .map(|r| {
                format!(
                    "        server {}:{PORT} max_fails=1 fail_timeout=1s;\n",
                    self.net.host(&format!("r{r}")).addr
                )
            })
            .collect();
        let mut out = String::new();
        let mut placed = false;
        for line in conf.lines() {
            let t = line.trim_start();
            if t.starts_with("server 127.0.0.1:") {
                if !placed {
                    out.push_str(&upstream);
                    placed = true;
                }
                continue;
            }
            if t.starts_with("listen ") {
                out.push_str(&format!("        listen 0.0.0.0:{PORT};\n"));
                continue;
            }
            if t.starts_with("proxy_read_timeout ") {
                out.push_str(&format!(
                    "            proxy_read_timeout {};\n",
                    self.o.upstream_timeout
                ));
                continue;
            }
            out.push_str(line);
            out.push('\n');
        }
        if !placed {
            bail!("deploy/nginx.conf has no `server 127.0.0.1:...` upstream line to replace");
        }
        Ok(out)
    }

    /// Every replica's (success, failure) counters, read from inside its own host (loopback:
    /// also while its link is down).
    pub(crate) fn metrics(&self) -> Result<Vec<(u64, u64)>> {
        (0..self.o.replicas)
            .map(|r| {
                let host = format!("r{r}");
                let (st, body) = self
                    .net
                    .get(&host, Ipv4Addr::LOCALHOST, PORT, "/metrics")
                    .with_context(|| format!("GET /metrics on {host}"))?;
                if st != 200 {
                    bail!("GET /metrics on {host}: status {st}");
                }
                Ok((
                    checks::metric_sum(&body, "nv_inference_request_success"),
                    checks::metric_sum(&body, "nv_inference_request_failure"),
                ))
            })
            .collect()
    }

    /// One phase: the workers started together (`late-start`: the last one late), the fault
    /// done on time, the workers awaited, the replicas' counters read, the shards merged.
    fn phase(&mut self, phase: &str) -> Result<PhaseData> {
        let dir = self.out.join(phase);
        std::fs::create_dir_all(&dir)?;
        let n = self.o.workers;
        let before = self.metrics()?;
        let lb_log = self.log("lb.log");
        let lb_from = std::fs::metadata(&lb_log).map_or(0, |m| m.len() as usize);
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64();
        let start_at = now + LEAD.as_secs_f64();
        let victim = n - 1;
        let d = self.o.duration.as_secs_f64();
        let late = phase == "late-start";
        eprintln!(
            "phase {phase}: {n} workers, poisson {} req/s in all for {d} s, start at {start_at:.3}",
            self.o.qps
        );
        let mut pids = vec![0u32; n as usize];
        for i in 0..n {
            if !(late && i == victim) {
                pids[i as usize] = self.start_worker(phase, &dir, i, start_at)?;
            }
        }
        // The fault's events, in seconds after --start-at.
        let mut events: Vec<(f64, &str)> = match phase {
            // Longer than the workers' timeout in this phase, so requests fail, not just wait.
            "worker-link" => vec![
                (0.25 * d, "down"),
                (0.25 * d + WORKER_OUTAGE.as_secs_f64(), "up"),
            ],
            "replica-link" => vec![(0.3 * d, "down"), (0.6 * d, "up")],
            "worker-kill" => vec![(0.5 * d, "kill")],
            "late-start" => vec![(LATE.as_secs_f64(), "start")],
            _ => vec![],
        };
        events.sort_by(|a, b| a.0.total_cmp(&b.0));
        let target = match phase {
            "replica-link" => format!("r{}", self.o.replicas - 1),
            _ => format!("w{victim}"),
        };
        let mut victim_counts = Vec::new();
        for (at, what) in events {
            let wait = start_at + at - SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64();
            net::sleep(Duration::from_secs_f64(wait.max(0.0)))?;
            match what {
                "down" | "up" => {
                    if phase == "replica-link" {
                        victim_counts.push(self.metrics()?[self.o.replicas as usize - 1]);
                    }
                    self.net.set_link(&target, what == "up")?;
                    eprintln!("  {at:.1} s: link of {target} {what}");
                }
                "kill" => {
                    let p = self
                        .net
                        .procs
                        .iter_mut()
                        .rev()
                        .find(|p| p.host == target)
                        .context("the victim worker")?;
                    p.child.kill()?;
                    let _ = p.child.wait();
                    eprintln!("  {at:.1} s: worker {target} killed (SIGKILL)");
                }
                "start" => {
                    pids[victim as usize] = self.start_worker(phase, &dir, victim, start_at)?;
                    eprintln!("  {at:.1} s: worker {target} started late");
                }
                _ => unreachable!(),
            }
        }
        let exits = self.wait_workers(phase, start_at)?;
        if phase == "replica-link" {
            // nginx's fail_timeout (1 s) passes before the next phase, so every replica is in.
            net::sleep(Duration::from_millis(1500))?;
        }
        let after = self.metrics()?;
        let replicas: Vec<(u64, u64)> = after
            .iter()
            .zip(&before)
            .map(|(a, b)| (a.0 - b.0, a.1 - b.1))
            .collect();
        let victim_during = match victim_counts.as_slice() {
            [down, up] => Some((up.0 - down.0, up.1 - down.1)),
            _ => None,
        };
        let lb_text = std::fs::read(&lb_log).unwrap_or_default();
        let lb_text = String::from_utf8_lossy(lb_text.get(lb_from..).unwrap_or_default());
        let nginx = checks::NginxRetries::count(&lb_text);
        let mut data = checks::collect(self, phase, &dir, exits, replicas, victim_during, pids)?;
        data.nginx = nginx;
        Ok(data)
    }

    fn start_worker(&mut self, phase: &str, dir: &Path, i: u32, start_at: f64) -> Result<u32> {
        let host = format!("w{i}");
        let log = dir.join(format!("shard-{i}.log"));
        let lb = self.net.host("lb").addr;
        // deploy/k8s/load-job.yaml's command line with this run's values, the index from
        // JOB_COMPLETION_INDEX; plus the request timeout of the phase.
        // The late worker starts at a lower priority: its start-up (reading the spec, making
        // the bodies) runs while the others pace, and on one machine it would take their CPU
        // (on separate hosts it takes none), making their generators late.
        let mut args: Vec<String> = if phase == "late-start" && i == self.o.workers - 1 {
            vec!["nice".into(), "-n".into(), "10".into()]
        } else {
            Vec::new()
        };
        args.push(self.bin.display().to_string());
        args.extend(manifest::load_command(
            &self.root,
            &[
                ("--url", format!("http://{lb}:{PORT}")),
                ("--model", self.model.clone()),
                ("--spec", self.o.spec.display().to_string()),
                ("--qps", self.o.qps.to_string()),
                ("--duration", format!("{}ms", self.o.duration.as_millis())),
                ("--shards", self.o.workers.to_string()),
                ("--start-at", format!("{start_at:.3}")),
                ("--out", format!("{}/shard-{{shard}}", dir.display())),
            ],
        )?);
        args.push(if phase == "worker-link" {
            format!("--timeout={}ms", WORKER_LINK_TIMEOUT.as_millis())
        } else {
            format!("--timeout={}", self.o.timeout)
        });
        let env = [("JOB_COMPLETION_INDEX", i.to_string())];
        let pid = self.net.spawn(
            &host,
            &format!("load {phase}"),
            &args,
            &env,
            &log,
            &self.root,
        )?;
        self.note_host(
            phase,
            &host,
            pid,
            &format!("streamrec load shard {i}/{}", self.o.workers),
            &log,
        );
        Ok(pid)
    }

    /// Waits for this phase's workers (bounded: the run, the timeout and 60 s); their exit
    /// codes by index (None: killed by the harness or by a signal).
    fn wait_workers(&mut self, phase: &str, start_at: f64) -> Result<Vec<Option<i32>>> {
        let timeout = streamrec_loadgen::parse_duration("--timeout", &self.o.timeout)?;
        let limit = start_at + (self.o.duration + timeout).as_secs_f64() + 60.0;
        let what = format!("load {phase}");
        let n = self.o.workers as usize;
        let mut exits = vec![None; n];
        loop {
            let mut running = false;
            for p in self.net.procs.iter_mut().filter(|p| p.what == what) {
                let i: usize = p.host[1..].parse()?;
                match p.child.try_wait()? {
                    Some(st) => exits[i] = st.code(),
                    None => running = true,
                }
            }
            if !running {
                return Ok(exits);
            }
            if SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64() > limit {
                bail!(
                    "phase {phase}: workers still running 60 s after their run should have ended"
                );
            }
            net::sleep(Duration::from_millis(50))?;
        }
    }

    fn report_head(&self) -> String {
        let mut s =
            format!(
            "## Cluster run `{}`\n\n{} `streamrec serve` replicas ({}), nginx, {} `streamrec load \
             --shards {}` workers, each in a network namespace of its own on 192.0.2.0/24 \
             (a bridge in its own namespace, no route out); poisson {} req/s in all for {} s \
             per phase; binary `{}`.\n\n| host | namespace | address |\n|---|---|---|\n",
            self.net.prefix,
            self.o.replicas,
            self.o.spec.file_name().unwrap_or_default().to_string_lossy(),
            self.o.workers,
            self.o.workers,
            self.o.qps,
            self.o.duration.as_secs_f64(),
            self.bin.display()
        );
        for h in &self.net.hosts {
            s.push_str(&format!("| {} | {} | {} |\n", h.name, h.ns, h.addr));
        }
        s.push_str("\nPids and logs of every process: `hosts.tsv`.\n");
        s
    }
}
