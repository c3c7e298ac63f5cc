//! The server against clients that try to hold it: slow request heads (slowloris), slow and
//! stalled bodies, idle keep-alive connections, more connections than it may hold, uploads past
//! its memory budget, half-closed and reset clients, a non-finite score, and a port in use; in
//! process with small limits, and as `streamrec serve` processes under `ulimit -n 1024` and
//! `ulimit -v` at the scale of the attacks that once stopped it.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use streamrec::graph::ModelSpec;
use streamrec::runtime::gen::{random_batch, Skew};
use streamrec::runtime::request::InferRequest;
use streamrec::runtime::trace::TraceEvent;
use streamrec::runtime::{Infer, ValidatedBatch};
use streamrec::serve::client::Client;
use streamrec::serve::{Model, ServeConfig, Server};

mod common;

use common::serving::{self, serve, tiny};

const INFER: &str = "/v2/models/tiny/infer";

/// The tests that run `streamrec serve` at scale take turns, so one's load is not the other's
/// latency.
static AT_SCALE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The shared test settings with a 5 s drain.
fn config() -> ServeConfig {
    ServeConfig {
        drain_timeout_s: 5.0,
        ..serving::config()
    }
}

/// The tiny model's engine as these tests use it (max batch 64, one context).
fn engine(spec: &ModelSpec) -> Arc<dyn Infer> {
    serving::engine(spec, 64, 1)
}

fn body(n: usize, seed: u64) -> Vec<u8> {
    let spec = tiny();
    serde_json::to_vec(&InferRequest::from_batch(
        &spec,
        &random_batch(&spec, n, Skew::Uniform, seed),
    ))
    .unwrap()
}

/// One inference on a fresh connection; the status (0 when the exchange failed) and the time.
fn infer_once(addr: SocketAddr, timeout: Duration) -> (u16, Duration) {
    let t = Instant::now();
    let status = Client::new(addr)
        .timeout(timeout)
        .close_each()
        .post(INFER, &body(1, 1))
        .map_or(0, |r| r.status);
    (status, t.elapsed())
}

fn metrics(addr: SocketAddr) -> String {
    let r = Client::new(addr).close_each().get("/metrics").unwrap();
    String::from_utf8(r.body).unwrap()
}

/// The value of the first series line that contains every one of `parts`.
fn series(m: &str, parts: &[&str]) -> Option<f64> {
    m.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| parts.iter().all(|p| l.contains(p)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn connect(addr: SocketAddr, head: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.write_all(head).unwrap();
    s
}

/// Reads what the server sends until it closes or `limit` passes: the status of the response
/// in it (0 if none) and whether the connection was closed.
fn read_reply(s: &mut TcpStream, limit: Duration) -> (u16, String, bool) {
    let end = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break false;
        }
        s.set_read_timeout(Some(left.min(Duration::from_millis(100))))
            .unwrap();
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if complete(&got) {
                    break false;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break true,
        }
    };
    let text = String::from_utf8_lossy(&got).to_string();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|t| t.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text, closed)
}

/// Whether `b` holds a whole response (head and a body of its Content-Length).
fn complete(b: &[u8]) -> bool {
    let t = String::from_utf8_lossy(b);
    let Some(end) = t.find("\r\n\r\n") else {
        return false;
    };
    let len = t[..end]
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    b.len() >= end + 4 + len
}

const SLOW_HEAD: &[u8] = b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\n";

fn slow_body_head(len: usize) -> Vec<u8> {
    format!(
        "POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
    )
    .into_bytes()
}

#[test]
fn a_slow_head_and_an_idle_connection_are_closed_by_their_timeouts() {
    let srv = serve(
        ServeConfig {
            header_timeout_s: 0.5,
            keepalive_idle_s: 0.8,
            ..config()
        },
        engine(&tiny()),
    );
    // A head dribbled a byte every 100 ms never completes: closed after about 0.5 s.
    let t = Instant::now();
    let mut slow = connect(srv.addr(), SLOW_HEAD);
    let mut closed_after = None;
    while t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
        let (_, _, closed) = read_reply(&mut slow, Duration::from_millis(1));
        if closed || slow.write_all(b"X").is_err() {
            closed_after = Some(t.elapsed());
            break;
        }
    }
    let after = closed_after.expect("the slow head is closed within 5 s");
    assert!(
        after >= Duration::from_millis(400),
        "closed after {after:?}, before its timeout"
    );
    // A connection that never sends a byte is a head that never comes.
    let mut silent = TcpStream::connect(srv.addr()).unwrap();
    let (_, _, closed) = read_reply(&mut silent, Duration::from_secs(3));
    assert!(closed, "a silent connection is closed");
    // A kept-alive connection: served, then closed once idle for 0.8 s, not at the header
    // timeout of 0.5 s.
    let mut ka = connect(
        srv.addr(),
        b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    let (status, _, closed) = read_reply(&mut ka, Duration::from_secs(2));
    assert_eq!((status, closed), (200, false));
    let idle = Instant::now();
    let (_, _, closed) = read_reply(&mut ka, Duration::from_secs(5));
    assert!(closed, "the idle connection is closed");
    assert!(
        idle.elapsed() >= Duration::from_millis(700),
        "closed after {:?} idle, before keepalive_idle_s",
        idle.elapsed()
    );
    srv.stop().unwrap();
}

#[test]
fn a_slow_body_gets_a_408_and_holds_no_inflight_slot() {
    let srv = serve(
        ServeConfig {
            max_inflight: 1,
            body_timeout_s: 0.5,
            min_body_rate: 1000,
            ..config()
        },
        engine(&tiny()),
    );
    let b = body(1, 3);
    // A stalled body: 10 of its bytes, then nothing.
    let mut stalled = connect(srv.addr(), &slow_body_head(b.len()));
    stalled.write_all(&b[..10]).unwrap();
    // A dribbled body: a byte every 50 ms is 20 bytes/s, under the 1000 bytes/s asked for.
    let dribbler = {
        let head = slow_body_head(b.len());
        let b = b.clone();
        let addr = srv.addr();
        std::thread::spawn(move || {
            let mut s = connect(addr, &head);
            let t = Instant::now();
            for &byte in &b[..b.len() - 1] {
                if s.write_all(&[byte]).is_err() || t.elapsed() > Duration::from_secs(5) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            read_reply(&mut s, Duration::from_secs(5))
        })
    };
    // With max_inflight 1, a request that completes is still served: the slow ones hold no slot.
    std::thread::sleep(Duration::from_millis(100));
    let (status, _) = infer_once(srv.addr(), Duration::from_secs(5));
    assert_eq!(
        status, 200,
        "a whole request is served while two bodies crawl"
    );
    let (status, text, _) = read_reply(&mut stalled, Duration::from_secs(5));
    assert_eq!(status, 408, "{text}");
    assert!(
        text.contains("no part of the request body for 0.5 s"),
        "{text}"
    );
    let (status, text, _) = dribbler.join().unwrap();
    assert_eq!(status, 408, "{text}");
    assert!(text.contains("slower than 1000 bytes/s"), "{text}");
    let m = metrics(srv.addr());
    assert_eq!(series(&m, &["reason=\"TIMEOUT\""]), Some(2.0), "{m}");
    srv.stop().unwrap();
}

#[test]
fn at_the_connection_limit_the_slowest_client_makes_room() {
    let srv = serve(
        ServeConfig {
            max_connections: 8,
            ..config()
        },
        engine(&tiny()),
    );
    let mut slow: Vec<TcpStream> = (0..8)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(5));
            connect(srv.addr(), SLOW_HEAD)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    for i in 0..5 {
        let (status, took) = infer_once(srv.addr(), Duration::from_secs(5));
        assert_eq!(status, 200, "request {i} at the limit, after {took:?}");
    }
    // The oldest slow heads were closed for them, the youngest kept.
    let (_, _, closed) = read_reply(&mut slow[0], Duration::from_secs(2));
    assert!(closed, "the oldest slow head was closed");
    let (_, _, closed) = read_reply(&mut slow[7], Duration::from_millis(300));
    assert!(!closed, "the youngest slow head is still open");
    srv.stop().unwrap();
}

/// The gRPC port's connections are in the same registry as the HTTP port's: one that never
/// sends its preface is closed at the header timeout, and at the connection limit new HTTP
/// connections close the oldest silent gRPC ones.
#[test]
fn grpc_connections_share_the_timeouts_and_the_connection_limit() {
    let srv = serve(
        ServeConfig {
            grpc_port: Some(0),
            header_timeout_s: 0.5,
            ..config()
        },
        engine(&tiny()),
    );
    let t = Instant::now();
    let mut silent = TcpStream::connect(srv.grpc_addr().unwrap()).unwrap();
    let (_, _, closed) = read_reply(&mut silent, Duration::from_secs(3));
    assert!(closed, "a silent gRPC connection is closed");
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "closed after {:?}, before its timeout",
        t.elapsed()
    );
    srv.stop().unwrap();

    let srv = serve(
        ServeConfig {
            grpc_port: Some(0),
            max_connections: 8,
            ..config()
        },
        engine(&tiny()),
    );
    let g = srv.grpc_addr().unwrap();
    let mut held: Vec<TcpStream> = (0..8)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(5));
            TcpStream::connect(g).unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    for i in 0..5 {
        let (status, took) = infer_once(srv.addr(), Duration::from_secs(5));
        assert_eq!(status, 200, "request {i} at the limit, after {took:?}");
    }
    let (_, _, closed) = read_reply(&mut held[0], Duration::from_secs(2));
    assert!(closed, "the oldest gRPC connection made room");
    let (_, _, closed) = read_reply(&mut held[7], Duration::from_millis(300));
    assert!(!closed, "the youngest gRPC connection is still open");
    srv.stop().unwrap();
}

#[test]
fn uploads_past_the_memory_budget_are_503_and_small_requests_still_get_in() {
    let srv = serve(
        ServeConfig {
            max_buffered_bytes: 16 << 20,
            max_body_bytes: 3 << 20,
            ..config()
        },
        engine(&tiny()),
    );
    let part = vec![b' '; 1 << 20];
    let mut admitted = Vec::new();
    let mut refused = 0;
    // Large bodies may hold three quarters (12 MiB): four stalled 3 MiB uploads.
    for _ in 0..6 {
        let mut s = connect(srv.addr(), &slow_body_head(3 << 20));
        let (status, text, _) = read_reply(&mut s, Duration::from_millis(200));
        match status {
            0 => {
                s.write_all(&part).unwrap();
                admitted.push(s);
            }
            503 => {
                assert!(text.contains("memory budget"), "{text}");
                assert!(text.to_lowercase().contains("retry-after: 1"), "{text}");
                refused += 1;
            }
            s => panic!("unexpected status {s}: {text}"),
        }
    }
    assert_eq!((admitted.len(), refused), (4, 2));
    for i in 0..5 {
        let (status, _) = infer_once(srv.addr(), Duration::from_secs(5));
        assert_eq!(
            status, 200,
            "small request {i} while the large share is full"
        );
    }
    let m = metrics(srv.addr());
    assert_eq!(
        series(&m, &["streamrec_buffered_request_bytes"]),
        Some((12 << 20) as f64),
        "{m}"
    );
    // The budget comes back when the uploads go.
    drop(admitted);
    std::thread::sleep(Duration::from_millis(300));
    let mut s = connect(srv.addr(), &slow_body_head(3 << 20));
    let (status, text, _) = read_reply(&mut s, Duration::from_millis(300));
    assert_eq!(status, 0, "admitted again: {text}");
    drop(s);
    srv.stop().unwrap();
}

#[test]
fn a_half_closed_request_is_answered() {
    let srv = serve(config(), engine(&tiny()));
    let b = body(2, 5);
    let mut infer = slow_body_head(b.len());
    infer.extend_from_slice(&b);
    for i in 0..20 {
        for req in [
            &infer[..],
            b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n".as_slice(),
        ] {
            let mut s = connect(srv.addr(), req);
            s.shutdown(Shutdown::Write).unwrap();
            let (status, text, _) = read_reply(&mut s, Duration::from_secs(5));
            assert_eq!(status, 200, "try {i}: {text}");
        }
    }
    srv.stop().unwrap();
}

/// An engine that takes `delay` per execution, over a real one.
struct Slow(Arc<dyn Infer>, Duration);

impl Infer for Slow {
    fn infer(&self, batch: &ValidatedBatch) -> streamrec::runtime::Result<Vec<f32>> {
        std::thread::sleep(self.1);
        self.0.infer(batch)
    }
    fn take_trace(&self) -> Vec<TraceEvent> {
        Vec::new()
    }
    fn backend_name(&self) -> &'static str {
        "slow"
    }
}

#[test]
fn a_client_that_resets_while_queued_is_counted_as_cancelled() {
    let spec = tiny();
    let srv = serve(
        config(),
        Arc::new(Slow(engine(&spec), Duration::from_millis(600))),
    );
    let b = body(1, 9);
    let mut req = slow_body_head(b.len());
    req.extend_from_slice(&b);
    // The first runs for 600 ms; the second waits in the queue behind it, and its client resets.
    let mut first = connect(srv.addr(), &req);
    std::thread::sleep(Duration::from_millis(100));
    let second = connect(srv.addr(), &req);
    std::thread::sleep(Duration::from_millis(100));
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own, with a linger struct of the right size.
    let rc = unsafe {
        use std::os::fd::AsRawFd;
        libc::setsockopt(
            second.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
    drop(second); // a reset, not a half-close
    let (status, _, _) = read_reply(&mut first, Duration::from_secs(5));
    assert_eq!(status, 200);
    let t = Instant::now();
    let mut m = metrics(srv.addr());
    while series(&m, &["reason=\"CANCELLED\""]).is_none() && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
        m = metrics(srv.addr());
    }
    assert_eq!(series(&m, &["reason=\"CANCELLED\""]), Some(1.0), "{m}");
    assert_eq!(series(&m, &["nv_inference_request_success"]), Some(1.0));
    srv.stop().unwrap();
}

/// An engine whose second sample's score is NaN.
struct Nan(Arc<dyn Infer>);

impl Infer for Nan {
    fn infer(&self, batch: &ValidatedBatch) -> streamrec::runtime::Result<Vec<f32>> {
        let mut s = self.0.infer(batch)?;
        if s.len() > 1 {
            s[1] = f32::NAN;
        }
        Ok(s)
    }
    fn take_trace(&self) -> Vec<TraceEvent> {
        Vec::new()
    }
    fn backend_name(&self) -> &'static str {
        "nan"
    }
}

#[test]
fn a_non_finite_score_is_a_500_counted_as_a_failure() {
    let srv = serve(config(), Arc::new(Nan(engine(&tiny()))));
    let r = Client::new(srv.addr()).post(INFER, &body(3, 4)).unwrap();
    let text = String::from_utf8_lossy(&r.body).to_string();
    assert_eq!(r.status, 500, "{text}");
    assert!(
        text.contains("score of sample 1 is NaN (not a finite number)"),
        "{text}"
    );
    let r = Client::new(srv.addr()).post(INFER, &body(1, 4)).unwrap();
    assert_eq!(r.status, 200, "one sample has a finite score");
    let m = metrics(srv.addr());
    assert_eq!(series(&m, &["reason=\"BACKEND\""]), Some(1.0), "{m}");
    assert_eq!(series(&m, &["nv_inference_request_success"]), Some(1.0));
    srv.stop().unwrap();
}

/// A `streamrec serve` process under shell limits (`ulimit` lines), its address, and its stderr.
struct Proc {
    child: Child,
    addr: SocketAddr,
    stderr: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Proc {
    fn start(limits: &str, args: &[&str]) -> Proc {
        use std::io::BufRead;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("{limits} && exec \"$0\" serve \"$@\""))
            .arg(env!("CARGO_BIN_EXE_streamrec"))
            .args(args)
            .current_dir(root())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sh starts");
        let stderr = Arc::new(std::sync::Mutex::new(Vec::new()));
        let err = child.stderr.take().unwrap();
        let log = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                log.lock().unwrap().push(l);
            }
        });
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("first line {line:?}; stderr {:?}", stderr.lock()))
            .parse()
            .unwrap();
        Proc {
            child,
            addr,
            stderr,
        }
    }

    /// VmRSS and VmHWM of the server, in bytes.
    fn memory(&self) -> (u64, u64) {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kb = |key: &str| -> u64 {
            let l = s.lines().find(|l| l.starts_with(key)).unwrap();
            l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
        };
        (kb("VmRSS:"), kb("VmHWM:"))
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The client side of the tests below may need more than 1024 sockets of its own.
fn raise_open_files(want: u64) -> bool {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on structs we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return false;
        }
        if lim.rlim_cur >= want {
            return true;
        }
        if lim.rlim_max < want {
            return false;
        }
        lim.rlim_cur = want;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0
    }
}

/// Holds `n` connections that each send `head` and then a byte every 500 ms, reconnecting
/// when the server closes one, until `stop`; returns how many times it reconnected.
fn attacker(
    addr: SocketAddr,
    head: Vec<u8>,
    n: usize,
    stop: Arc<AtomicBool>,
    open: Arc<AtomicUsize>,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let dial = || {
            let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
            s.set_write_timeout(Some(Duration::from_millis(200))).ok()?;
            (&s).write_all(&head).ok()?;
            Some(s)
        };
        let mut conns: Vec<Option<TcpStream>> = (0..n).map(|_| dial()).collect();
        open.fetch_add(conns.iter().flatten().count(), Ordering::SeqCst);
        let mut redials = 0;
        let end = Instant::now() + Duration::from_secs(60);
        while !stop.load(Ordering::SeqCst) && Instant::now() < end {
            for c in conns.iter_mut() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let ok = c.as_mut().is_some_and(|s| s.write_all(b"X").is_ok());
                if !ok {
                    *c = dial();
                    redials += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        redials
    })
}

#[test]
fn slowloris_and_slow_bodies_at_scale_under_an_open_file_limit_of_1024() {
    let _turn = AT_SCALE.lock().unwrap_or_else(|p| p.into_inner());
    if !raise_open_files(8192) {
        eprintln!("skipped: this process cannot open 8192 files (ulimit -Hn)");
        return;
    }
    let mut srv = Proc::start(
        "ulimit -n 1024",
        &["workloads/tiny.toml", "--port", "0", "--algo", "single"],
    );
    let t = Instant::now();
    let mut started = String::new();
    while !started.contains("; ready") && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
        started = srv.stderr.lock().unwrap().join("\n");
    }
    assert!(
        started.contains("at most 960 connections (open-file limit 1024)"),
        "{started}"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let open = Arc::new(AtomicUsize::new(0));
    let attackers = vec![
        attacker(
            srv.addr,
            SLOW_HEAD.to_vec(),
            1100,
            Arc::clone(&stop),
            Arc::clone(&open),
        ),
        attacker(
            srv.addr,
            slow_body_head(1000),
            1024,
            Arc::clone(&stop),
            Arc::clone(&open),
        ),
    ];
    let t = Instant::now();
    while open.load(Ordering::SeqCst) < 2000 && t.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
    }
    // A normal client, a fresh connection per request, while the attack goes on.
    let mut times = Vec::new();
    let mut failed = Vec::new();
    for i in 0..200 {
        let (status, took) = infer_once(srv.addr, Duration::from_secs(10));
        if status != 200 {
            failed.push((i, status));
        }
        times.push(took);
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::SeqCst);
    let redials: usize = attackers.into_iter().map(|a| a.join().unwrap()).sum();
    times.sort();
    let p50 = times[times.len() / 2];
    let p99 = times[times.len() * 99 / 100];
    eprintln!(
        "200 requests under {} attacking connections ({redials} reconnects after the server closed them): p50 {p50:?}, p99 {p99:?}, max {:?}",
        open.load(Ordering::SeqCst),
        times.last().unwrap()
    );
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    assert!(
        p99 < Duration::from_millis(100),
        "p99 {p99:?} of a normal client under attack"
    );
    assert!(srv.alive(), "the server is still running");
    let log = srv.stderr.lock().unwrap().clone();
    let accept_lines = log.iter().filter(|l| l.contains("accept failed")).count();
    assert!(accept_lines <= 5, "{accept_lines} accept-failure lines");
}

#[test]
fn stalled_62_mb_uploads_under_a_2_gb_limit_are_503_beyond_the_budget() {
    let _turn = AT_SCALE.lock().unwrap_or_else(|p| p.into_inner());
    const LIMIT: u64 = 2 << 30;
    let mut srv = Proc::start(
        &format!("ulimit -v {}", LIMIT >> 10),
        &["workloads/tiny.toml", "--port", "0", "--algo", "single"],
    );
    let size = 62_000_000;
    let part = vec![b' '; 1 << 20];
    let mut admitted = Vec::new();
    let mut refused = 0;
    for i in 0..100 {
        let mut s = connect(srv.addr, &slow_body_head(size));
        let (status, text, _) = read_reply(&mut s, Duration::from_millis(150));
        match status {
            0 => {
                s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
                let mut sent = 0;
                while sent + part.len() < size {
                    s.write_all(&part)
                        .unwrap_or_else(|e| panic!("upload {i} after {sent} bytes: {e}"));
                    sent += part.len();
                }
                admitted.push(s);
            }
            503 => {
                assert!(text.contains("memory budget"), "{text}");
                refused += 1;
            }
            other => panic!("upload {i}: status {other}: {text}"),
        }
    }
    let (rss, _) = srv.memory();
    for i in 0..20 {
        let (status, _) = infer_once(srv.addr, Duration::from_secs(10));
        assert_eq!(status, 200, "small request {i} with the uploads stalled");
    }
    let (_, hwm) = srv.memory();
    eprintln!(
        "{} uploads of 62 MB held, {refused} refused with 503; server RSS {} MB, peak {} MB (limit {} MB)",
        admitted.len(),
        rss >> 20,
        hwm >> 20,
        LIMIT >> 20
    );
    assert!(srv.alive(), "the server is still running");
    assert!(admitted.len() >= 8, "{} admitted", admitted.len());
    assert_eq!(admitted.len() + refused, 100);
    assert!(hwm < LIMIT, "peak RSS {hwm} over the limit");
}

#[test]
fn a_port_in_use_fails_before_the_model_loads_and_readiness_waits_for_it() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    // streamrec-26 at full size (13 GB of tables): it would take minutes to load.
    let t = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_streamrec"))
        .args(["serve", "workloads/streamrec-26.toml", "--port", &port])
        .current_dir(root())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("still running after 20 s: the port is not checked first");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!status.success());
    assert!(err.contains("cannot bind"), "{err}");
    drop(taken);

    // While a model loads, the address is live but not ready.
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_streamrec"))
        .args([
            "serve",
            "workloads/streamrec-26.toml",
            "--row-cap",
            "100000",
            "--algo",
            "single",
            "--port",
            "0",
        ])
        .current_dir(root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    err.read_line(&mut line).unwrap();
    let addr: SocketAddr = line
        .split("bound http://")
        .nth(1)
        .and_then(|r| r.split(';').next())
        .unwrap_or_else(|| panic!("first stderr line {line:?}"))
        .parse()
        .unwrap();
    let ready = Client::new(addr)
        .close_each()
        .get("/v2/health/ready")
        .unwrap();
    let live = Client::new(addr)
        .close_each()
        .get("/v2/health/live")
        .unwrap();
    let loading = Client::new(addr).close_each().post(INFER, b"{}").unwrap();
    let mut out = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut out)
        .unwrap();
    let ready_after = Client::new(addr)
        .close_each()
        .get("/v2/health/ready")
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        ready.status,
        503,
        "{}",
        String::from_utf8_lossy(&ready.body)
    );
    assert!(String::from_utf8_lossy(&ready.body).contains("loading the model"));
    assert_eq!(live.status, 200);
    assert_eq!(loading.status, 503);
    assert_eq!(out.trim(), format!("listening on http://{addr}"));
    assert_eq!(ready_after.status, 200);
}

#[test]
fn a_model_name_unsafe_in_urls_or_metric_labels_is_refused_at_start() {
    let mut spec = tiny();
    let eng = engine(&spec);
    for bad in ["a/b", "m\"} 1\nfake_series{x=\"", "", " tiny"] {
        spec.name = bad.into();
        let err = Server::start(
            config(),
            Model {
                spec: spec.clone(),
                engine: Arc::clone(&eng),
            },
        )
        .err()
        .unwrap_or_else(|| panic!("{bad:?} was accepted"))
        .to_string();
        assert!(err.contains("name"), "{bad:?}: {err}");
        assert!(!err.contains('\n'), "{bad:?}: one line: {err}");
    }
}

fn gzip(b: &[u8]) -> Vec<u8> {
    use flate2::write::GzEncoder;
    let mut e = GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

#[test]
fn compressed_bodies_are_decoded_within_the_limits_and_answers_compressed_on_request() {
    let srv = serve(
        ServeConfig {
            max_body_bytes: 3 << 20,
            max_buffered_bytes: 16 << 20,
            ..config()
        },
        engine(&tiny()),
    );
    let b = body(4, 11);
    let plain = Client::new(srv.addr()).post(INFER, &b).unwrap();
    assert_eq!(plain.status, 200);
    let z = gzip(&b);
    let r = Client::new(srv.addr())
        .request(
            "POST",
            INFER,
            &[("Content-Encoding", "gzip"), ("Accept-Encoding", "gzip")],
            &z,
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    let mut unzipped = Vec::new();
    flate2::read::GzDecoder::new(&r.body[..])
        .read_to_end(&mut unzipped)
        .unwrap();
    assert_eq!(unzipped, plain.body, "the same answer, compressed");
    // A bomb: 100 MB of spaces in about 100 KB, against a 3 MiB limit.
    let bomb = gzip(&vec![b' '; 100_000_000]);
    assert!(bomb.len() < 1 << 20);
    let r = Client::new(srv.addr())
        .request("POST", INFER, &[("Content-Encoding", "gzip")], &bomb)
        .unwrap();
    let text = String::from_utf8_lossy(&r.body).to_string();
    assert_eq!(r.status, 413, "{text}");
    assert!(text.contains("decompressed request body is more than the limit of 3145728 bytes"));
    let r = Client::new(srv.addr())
        .request("POST", INFER, &[("Content-Encoding", "br")], &b)
        .unwrap();
    assert_eq!(r.status, 400);
    assert!(String::from_utf8_lossy(&r.body).contains("Content-Encoding `br` is not supported"));
    let r = Client::new(srv.addr())
        .request(
            "POST",
            INFER,
            &[("Content-Encoding", "gzip")],
            &z[..z.len() / 2],
        )
        .unwrap();
    assert_eq!(r.status, 400, "a truncated gzip body");
    srv.stop().unwrap();
}
