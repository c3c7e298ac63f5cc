//! `streamrec serve` as deployed, over loopback: interop with Triton's Python clients
//! (tritonclient[http], and tritonclient[grpc] against the gRPC endpoint), two replicas behind
//! nginx through a SIGTERM and a SIGKILL, and an overload at three times the measured capacity.
//!
//! The tritonclient and nginx tests need those installed (`.ci/run` installs both and sets
//! `STREAMREC_REQUIRE_DEPLOY=1`, which turns a missing one into a failure); elsewhere they say
//! that they skipped, on stderr past the test harness's capture.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use streamrec::serve::client::Client;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn skip(what: &str) {
    common::skip("STREAMREC_REQUIRE_DEPLOY", what);
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("streamrec-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

/// A `streamrec serve` process; killed when dropped.
struct Replica {
    child: Child,
    addr: SocketAddr,
}

impl Replica {
    fn start(args: &[&str]) -> Replica {
        Replica::start_with(args, Stdio::null())
    }

    /// [`Replica::start`] with the server's stderr going to `stderr`.
    fn start_with(args: &[&str], stderr: Stdio) -> Replica {
        let mut child = Command::new(env!("CARGO_BIN_EXE_streamrec"))
            .arg("serve")
            .args(args)
            .current_dir(root())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("streamrec serve starts");
        let url = common::serving::listening_on(&mut child);
        let addr = url
            .strip_prefix("http://")
            .unwrap_or_else(|| panic!("not an http URL: {url:?}"))
            .parse()
            .unwrap();
        Replica { child, addr }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    fn wait(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let t = Instant::now();
        while t.elapsed() < limit {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A keep-alive client of `addr` (reconnecting after an error) with a 10 s timeout.
fn client(addr: SocketAddr) -> Client {
    Client::new(addr).timeout(Duration::from_secs(10))
}

/// POSTs `body`; the status, or None on a connection error.
fn post(c: &mut Client, path: &str, body: &[u8]) -> Option<u16> {
    c.post(path, body).ok().map(|r| r.status)
}

fn request_body(batch: usize, seed: u64) -> Vec<u8> {
    let o = Command::new(env!("CARGO_BIN_EXE_streamrec"))
        .args(["run", "workloads/tiny.toml", "--emit-request"])
        .args(["--batch", &batch.to_string(), "--seed", &seed.to_string()])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(o.status.success());
    o.stdout
}

const INFER: &str = "/v2/models/tiny/infer";

/// Whether python3 can import `modules` (tritonclient's, numpy); else the test says it skipped.
fn python_has(modules: &str, what: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", &format!("import {modules}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        skip(&format!("python3 with {what} and numpy is not installed"));
    }
    ok
}

/// A request of 6 samples (seed `seed`) and the response `streamrec run --input` gives it, as
/// files named after `name`.
fn request_and_expected(name: &str, seed: u64) -> (PathBuf, PathBuf) {
    let req = tmp(&format!("{name}-request.json"));
    std::fs::write(&req, request_body(6, seed)).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_streamrec"))
        .args([
            "run",
            "workloads/tiny.toml",
            "--input",
            req.to_str().unwrap(),
        ])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let expected = tmp(&format!("{name}-expected.json"));
    std::fs::write(&expected, &o.stdout).unwrap();
    (req, expected)
}

/// Runs a tritonclient script of tests/python against `addr` with the request and the expected
/// response; its stdout, after checking it succeeded.
fn run_client(script: &str, addr: SocketAddr, req: &Path, expected: &Path) -> String {
    let o = Command::new("python3")
        .arg(root().join("tests/python").join(script))
        .arg(addr.to_string())
        .args(["tiny", req.to_str().unwrap(), expected.to_str().unwrap()])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

#[test]
fn tritonclient_interop_json_and_binary() {
    if !python_has("tritonclient.http, numpy", "tritonclient[http]") {
        return;
    }
    let (req, expected) = request_and_expected("interop", 3);
    let server = Replica::start(&["workloads/tiny.toml", "--port", "0"]);
    let out = run_client("triton_interop.py", server.addr, &req, &expected);
    assert!(out.contains("infer (binary): 6 scores equal"), "{out}");
    assert!(
        out.contains("infer (binary, deflate both ways): 6 scores equal"),
        "{out}"
    );
    assert!(out.contains("statistics: "), "{out}");
    println!("{out}");
}

/// `streamrec serve` with the gRPC endpoint on a free port: the replica and the address it
/// prints on stderr (`grpc on ADDR`); the rest of stderr is drained on a thread.
fn start_with_grpc(args: &[&str]) -> (Replica, SocketAddr) {
    let mut all = args.to_vec();
    all.extend(["--grpc-port", "0"]);
    let mut replica = Replica::start_with(&all, Stdio::piped());
    let grpc = common::serving::grpc_on(&mut replica.child);
    (replica, grpc)
}

#[test]
fn tritonclient_grpc_interop_sync_and_aio() {
    if !python_has(
        "tritonclient.grpc, tritonclient.grpc.aio, numpy",
        "tritonclient[grpc]",
    ) {
        return;
    }
    let (req, expected) = request_and_expected("grpc", 5);
    // A 1 MiB body limit, for the compressed request that inflates past it.
    let config = tmp("grpc-config.toml");
    std::fs::write(&config, "max_body_bytes = 1048576\n").unwrap();
    let config = config.to_str().unwrap().to_string();
    let (_server, grpc) =
        start_with_grpc(&["workloads/tiny.toml", "--port", "0", "--config", &config]);
    let out = run_client("triton_grpc.py", grpc, &req, &expected);
    for want in [
        "infer (sync, raw contents): 6 scores equal",
        "infer (sync, gzip-compressed): 6 scores equal",
        "infer (sync, deflate-compressed): 6 scores equal",
        "compressed request past the body limit: ",
        "infer (asyncio, 8 concurrent): 6 scores equal",
        "bad input (unknown tensor): INVALID_ARGUMENT naming `bogus`",
        "bad input (wrong shape): INVALID_ARGUMENT naming `dense`",
        "bad input (index out of range): INVALID_ARGUMENT",
        "statistics: ",
    ] {
        assert!(out.contains(want), "{want:?} missing from:\n{out}");
    }
    println!("{out}");
}

/// nginx in the foreground; stopped (workers included) when dropped, also when a test fails.
struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers too ("fast shutdown").
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Counts of a load phase.
#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    failed: AtomicUsize,
    /// Microseconds since the phase start of the last failure.
    last_failure_us: AtomicU64,
    /// What each failure was: a status, or None for a connection error.
    kinds: Mutex<Vec<Option<u16>>>,
}

/// `threads` keep-alive clients sending back to back for `secs` (at most 100,000 requests);
/// `at` runs once, `at_s` seconds in.
fn load_phase(addr: SocketAddr, threads: usize, secs: f64, at_s: f64, at: impl FnOnce()) -> Tally {
    let tally = Tally::default();
    let body = request_body(2, 11);
    let start = Instant::now();
    let sent = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut c = client(addr);
                while start.elapsed().as_secs_f64() < secs
                    && sent.fetch_add(1, Ordering::Relaxed) < 100_000
                {
                    let r = post(&mut c, INFER, &body);
                    if r == Some(200) {
                        tally.ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        tally.kinds.lock().unwrap().push(r);
                        tally.failed.fetch_add(1, Ordering::Relaxed);
                        tally
                            .last_failure_us
                            .fetch_max(start.elapsed().as_micros() as u64, Ordering::Relaxed);
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_secs_f64(at_s));
        at();
    });
    tally
}

#[test]
fn two_replicas_behind_nginx_survive_sigterm_and_sigkill() {
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let Some(nginx) = nginx else {
        skip("nginx is not installed (Debian package nginx-light)");
        return;
    };
    let mut a = Replica::start(&["workloads/tiny.toml", "--port", "0"]);
    let b = Replica::start(&["workloads/tiny.toml", "--port", "0"]);
    let front = free_port();
    let conf = std::fs::read_to_string(root().join("deploy/nginx.conf"))
        .unwrap()
        .replace("127.0.0.1:8001", &a.addr.to_string())
        .replace("127.0.0.1:8002", &b.addr.to_string())
        .replace(
            "listen 127.0.0.1:8000",
            &format!("listen 127.0.0.1:{front}"),
        )
        .replace("error_log stderr warn", "error_log error.log info");
    let prefix = tmp("nginx");
    std::fs::create_dir_all(&prefix).unwrap();
    let conf_path = prefix.join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let _lb = Nginx(
        Command::new(nginx)
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx starts"),
    );
    let front: SocketAddr = format!("127.0.0.1:{front}").parse().unwrap();
    let up = Instant::now();
    while post(&mut client(front), "/v2/health/ready", b"").is_none() {
        assert!(
            up.elapsed() < Duration::from_secs(10),
            "nginx did not come up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Phase 1: SIGTERM to replica A mid-run: it drains, nginx moves on; nothing fails.
    let t1 = load_phase(front, 4, 3.0, 1.0, || a.signal(libc::SIGTERM));
    let status = a.wait(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "the replica exits 0 after draining: {status:?}"
    );
    let (ok1, failed1) = (
        t1.ok.load(Ordering::Relaxed),
        t1.failed.load(Ordering::Relaxed),
    );
    assert!(ok1 > 100, "{ok1} requests");
    assert_eq!(
        failed1,
        0,
        "SIGTERM to one replica: {failed1} of {} failed",
        ok1 + failed1
    );
    // Phase 2: A back on its port, then SIGKILL to B mid-run: at most the requests in flight at
    // that instant fail, and all succeed again within 1 s.
    let a2 = Replica::start(&["workloads/tiny.toml", "--port", &a.addr.port().to_string()]);
    assert_eq!(a2.addr, a.addr);
    // nginx took A out for fail_timeout (1 s) at its last failed try while A was down: let that
    // pass so that both replicas are in the upstream when B is killed.
    std::thread::sleep(Duration::from_millis(1500));
    let kill_at = 1.0;
    let t2 = load_phase(front, 4, 3.0, kill_at, || b.signal(libc::SIGKILL));
    let (ok2, failed2) = (
        t2.ok.load(Ordering::Relaxed),
        t2.failed.load(Ordering::Relaxed),
    );
    let last = t2.last_failure_us.load(Ordering::Relaxed) as f64 / 1e6;
    println!(
        "nginx + 2 replicas: SIGTERM phase {ok1} ok, {failed1} failed; SIGKILL phase {ok2} ok, {failed2} failed{}",
        if failed2 > 0 {
            format!(", last failure {:.3} s after the kill", last - kill_at)
        } else {
            String::new()
        }
    );
    let log = std::fs::read_to_string(prefix.join("error.log")).unwrap_or_default();
    let kinds = t2.kinds.lock().unwrap();
    assert!(
        failed2 <= 4,
        "SIGKILL: {failed2} failures, more than the 4 requests in flight: first {:?}; nginx: {}",
        &kinds[..kinds.len().min(10)],
        log.lines().rev().take(10).collect::<Vec<_>>().join("\n")
    );
    if failed2 > 0 {
        assert!(
            last - kill_at < 1.0,
            "failures went on {:.3} s after the kill",
            last - kill_at
        );
    }
    drop(b);
    drop(a2);
}

#[test]
fn overload_at_three_times_capacity_gets_only_200_and_503() {
    let cfg = tmp("overload.toml");
    std::fs::write(
        &cfg,
        "max_batch = 64\nqueue_capacity = 128\nmax_inflight = 64\nmax_queue_delay_us = 200\n",
    )
    .unwrap();
    let server = Replica::start(&[
        "workloads/tiny.toml",
        "--port",
        "0",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    let addr = server.addr;
    // `streamrec serve` also serves the plan view, read-only, at /ui.
    let page = client(addr).get("/ui").expect("GET /ui");
    assert_eq!(page.status, 200, "{}", String::from_utf8_lossy(&page.body));
    let page = String::from_utf8_lossy(&page.body);
    assert!(page.contains("data-op=") && page.contains("data-algo="));
    let body = request_body(16, 5);
    // Capacity: closed loop, 8 keep-alive clients, 1 s.
    let done = AtomicUsize::new(0);
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                let mut c = client(addr);
                while t.elapsed() < Duration::from_secs(1) {
                    assert_eq!(post(&mut c, INFER, &body), Some(200));
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    let capacity = done.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64();
    let idle_rss = server.rss_kib();
    // Open loop at 3x for 2 s: intended send times fixed in advance, latency from them; 96
    // senders on keep-alive connections take the next due request.
    let rate = 3.0 * capacity;
    let total = ((rate * 2.0) as usize).min(40_000);
    let next = AtomicUsize::new(0);
    // Per admitted request: (latency from the intended time, latency from the actual send).
    let lat: Mutex<Vec<(f64, f64)>> = Mutex::new(Vec::with_capacity(total));
    let (ok, rejected, other) = (
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    );
    let peak_rss = AtomicU64::new(idle_rss);
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                peak_rss.fetch_max(server.rss_kib(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let senders: Vec<_> = (0..96)
            .map(|_| {
                s.spawn(|| {
                    let mut c = client(addr);
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= total || start.elapsed() > Duration::from_secs(20) {
                            break;
                        }
                        let due = Duration::from_secs_f64(i as f64 / rate);
                        if let Some(w) = due.checked_sub(start.elapsed()) {
                            std::thread::sleep(w);
                        }
                        let sent = start.elapsed();
                        match post(&mut c, INFER, &body) {
                            Some(200) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                let now = start.elapsed();
                                let us = |d: Duration| d.as_secs_f64() * 1e6;
                                lat.lock().unwrap().push((us(now - due), us(now - sent)));
                            }
                            Some(503) => {
                                rejected.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => {
                                other.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        for h in senders {
            h.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
    });
    let took = start.elapsed().as_secs_f64();
    let pairs = lat.into_inner().unwrap();
    let sorted = |f: fn(&(f64, f64)) -> f64| {
        let mut v: Vec<f64> = pairs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let (intended, service) = (sorted(|p| p.0), sorted(|p| p.1));
    let q = |v: &[f64], q: f64| {
        v.get(((v.len() as f64 * q) as usize).min(v.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    let (ok, rejected, other) = (ok.into_inner(), rejected.into_inner(), other.into_inner());
    let peak = peak_rss.load(Ordering::Relaxed);
    println!(
        "overload: capacity {capacity:.0} req/s (batch 16); offered {rate:.0} req/s for {took:.1} s: \
         {ok} x 200, {rejected} x 503, {other} other; admitted requests: from send p50 {:.0} us, \
         p99 {:.0} us; from the intended time (includes the 96 senders falling behind) p50 {:.0} us, \
         p99 {:.0} us; RSS idle {idle_rss} KiB, peak {peak} KiB",
        q(&service, 0.5),
        q(&service, 0.99),
        q(&intended, 0.5),
        q(&intended, 0.99)
    );
    assert_eq!(other, 0, "only 200 and 503");
    assert!(rejected > 0, "3x capacity is refused in part");
    assert!(ok > 0);
    assert!(
        peak <= 2 * idle_rss,
        "RSS {peak} KiB is more than twice idle ({idle_rss} KiB)"
    );
    assert!(
        q(&service, 0.99) < 500e3,
        "p99 of admitted requests {:.0} us",
        q(&service, 0.99)
    );
}
