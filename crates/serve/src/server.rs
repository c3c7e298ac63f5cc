//! The HTTP server: hyper 1.x on tokio, KServe v2 routes, admission control, and the
//! lifecycle (bound first and answering "not ready" while the model loads; ready after warm-up;
//! on shutdown, not ready, no new connections, in-flight and queued requests finish within the
//! drain timeout).
//!
//! What a client can hold is bounded: connections (the limit, below the open-file limit), time
//! (header, body and keep-alive timeouts, see [`crate::conn`]) and memory (one budget for the
//! request bytes of all connections, see [`crate::budget`]).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::header::{HeaderValue, RETRY_AFTER};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use streamrec_graph::ModelSpec;
use streamrec_runtime::gen::{random_batch, Skew};
use streamrec_runtime::{Infer, ValidatedBatch};
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;

use crate::batcher::{BatchConfig, Batcher};
use crate::budget::Budget;
use crate::config::ServeConfig;
use crate::conn::{Conns, Phase, Tracked};
use crate::error::ServeError;
use crate::metrics::Metrics;
use crate::protocol;
use crate::reply::{error, json};
use crate::routes::handle;
use crate::state::State;

/// hyper's read buffer per connection, the most a request head may take (hyper's default is
/// about 400 KB, which thousands of unfinished heads turn into gigabytes).
const MAX_HEAD_BYTES: usize = 64 << 10;

/// The accept queue asked for.
#[cfg(unix)]
const ACCEPT_BACKLOG: i32 = 4096;

/// How often the sweeper closes connections past their header or keep-alive timeout.
const SWEEP_EVERY: Duration = Duration::from_millis(250);

/// A failed `accept` is logged at most once per this interval, with how many failed since.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(5);

/// The model a server serves: its spec and an engine built for it (any backend). The engine's
/// max batch must be at least the server's `max_batch`, and it should have `contexts` execution
/// contexts.
pub struct Model {
    /// The validated spec (input names, shapes, row counts for validation).
    pub spec: ModelSpec,
    /// The engine.
    pub engine: Arc<dyn Infer>,
}

/// A bound, warmed-up server that has not started serving yet.
pub struct Server {
    state: Arc<State>,
    listener: std::net::TcpListener,
    /// The gRPC endpoint's listener, when it has one.
    grpc: Option<std::net::TcpListener>,
}

/// A server running on its own thread (tests, benchmarks, embedding).
pub struct Running {
    addr: SocketAddr,
    grpc_addr: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), ServeError>>>,
}

impl Running {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address of the gRPC endpoint, when it has one (`grpc_port`).
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc_addr
    }

    /// Shuts it down (drain included) and waits for it.
    pub fn stop(mut self) -> Result<(), ServeError> {
        self.finish()
    }

    fn finish(&mut self) -> Result<(), ServeError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| ServeError::Io("the server thread panicked".into()))?,
            None => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// A bound address answering "not ready" while the model loads (`/v2/health/live` is 200,
/// everything else 503 with Retry-After). [`Binding::start`] turns it into a [`Server`].
pub struct Binding {
    cfg: ServeConfig,
    addr: SocketAddr,
    grpc: Option<std::net::TcpListener>,
    stop: Option<oneshot::Sender<()>>,
    loader: Option<std::thread::JoinHandle<std::io::Result<std::net::TcpListener>>>,
}

impl Binding {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bound address of the gRPC endpoint, when it has one (`grpc_port`); it answers once
    /// the server runs.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The settings as the server will run them (limits derived from the machine).
    pub fn config(&self) -> &ServeConfig {
        &self.cfg
    }

    /// Warms the engine up (the sizes it asks for: each context, each graph bucket; and one
    /// batch of `max_batch` samples), takes the address
    /// back from the loading responder and starts the batcher. Ready once this returns.
    pub fn start(mut self, model: Model) -> Result<Server, ServeError> {
        let mut cfg = self.cfg.clone();
        let Model { spec, engine } = model;
        if cfg.contexts == 0 {
            cfg.contexts = engine.contexts();
        }
        // The name goes into URL paths and metric labels.
        streamrec_graph::spec::check_model_name(&spec.name)
            .map_err(|e| ServeError::Config(format!("model {e}")))?;
        // Every size the engine asks for (each context, and with graphs each bucket), capped at
        // the server's max batch, before readiness: no capture or first-touch inside a request.
        let sizes = engine
            .warm_up_sizes()
            .into_iter()
            .map(|s| s.min(cfg.max_batch));
        for (i, size) in sizes.chain([cfg.max_batch]).enumerate() {
            let b = ValidatedBatch::new(
                random_batch(&spec, size, Skew::Uniform, 7 + i as u64),
                &spec,
            )?;
            engine.infer(&b)?;
        }
        engine.take_trace();
        let listener = self.take_listener()?;
        let metrics = Arc::new(Metrics::new(&spec.name, &cfg.version));
        let healthy = Arc::new(AtomicBool::new(true));
        let batcher = Batcher::start(
            BatchConfig {
                max_batch: cfg.max_batch,
                max_queue_delay: Duration::from_micros(cfg.max_queue_delay_us),
                queue_capacity: cfg.queue_capacity,
                workers: cfg.contexts,
                inline_max: Duration::from_micros(cfg.inline_max_us),
            },
            engine,
            Arc::clone(&metrics),
            Arc::clone(&healthy),
        );
        let conns = Arc::new(Conns::new(
            cfg.max_connections,
            Duration::from_secs_f64(cfg.header_timeout_s),
            Duration::from_secs_f64(cfg.keepalive_idle_s),
        ));
        let budget = Budget::new(cfg.max_buffered_bytes);
        Ok(Server {
            state: Arc::new(State {
                spec,
                cfg,
                accepting: AtomicBool::new(true),
                healthy,
                batcher,
                metrics,
                inflight: AtomicUsize::new(0),
                ui: std::sync::OnceLock::new(),
                conns,
                budget,
            }),
            listener,
            grpc: self.grpc.take(),
        })
    }

    fn take_listener(&mut self) -> Result<std::net::TcpListener, ServeError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let thread = self
            .loader
            .take()
            .ok_or_else(|| ServeError::Io("the listener was already taken".into()))?;
        thread
            .join()
            .map_err(|_| ServeError::Io("the loading responder panicked".into()))?
            .map_err(|e| ServeError::Io(format!("taking the listener back: {e}")))
    }
}

impl Drop for Binding {
    fn drop(&mut self) {
        if self.loader.is_some() {
            let _ = self.take_listener();
        }
    }
}

/// Answers while the model loads, on its own thread, until told to stop; gives the listener back.
fn loading_responder(
    listener: std::net::TcpListener,
    retry_after_s: u32,
    stop: oneshot::Receiver<()>,
) -> std::io::Result<std::net::TcpListener> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let graceful = GracefulShutdown::new();
        let mut http = http1::Builder::new();
        http.keep_alive(false);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                conn = listener.accept() => {
                    let Ok((stream, _)) = conn else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    let svc = service_fn(move |req: Request<Incoming>| async move {
                        Ok::<_, Infallible>(if req.uri().path().trim_end_matches('/') == "/v2/health/live" {
                            json(StatusCode::OK, &serde_json::json!({"live": true}))
                        } else {
                            let mut r = error(StatusCode::SERVICE_UNAVAILABLE, "not ready: loading the model");
                            r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(retry_after_s.max(1)));
                            r
                        })
                    });
                    let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), svc));
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                }
                _ = &mut stop => break,
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), graceful.shutdown()).await;
        listener.into_std()
    })
}

impl Server {
    /// Validates the config (limits derived from the machine where left at 0), binds the
    /// address and answers "not ready" on it until [`Binding::start`]: a port in use is an
    /// error before any model is loaded.
    pub fn bind(cfg: ServeConfig) -> Result<Binding, ServeError> {
        let cfg = cfg.resolved()?;
        let listener = std::net::TcpListener::bind((cfg.host.as_str(), cfg.port))
            .map_err(|e| ServeError::Io(format!("cannot bind {}:{}: {e}", cfg.host, cfg.port)))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| ServeError::Io(e.to_string()))?;
        // A deeper accept queue than std's for bursts of connections (Linux takes a second
        // listen(2) as a new backlog; the kernel caps it at net.core.somaxconn).
        #[cfg(unix)]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: listen(2) on the socket we own.
            unsafe { libc::listen(listener.as_raw_fd(), ACCEPT_BACKLOG) };
        }
        let addr = listener
            .local_addr()
            .map_err(|e| ServeError::Io(e.to_string()))?;
        let grpc = match cfg.grpc_port {
            None => None,
            Some(port) => {
                let l = std::net::TcpListener::bind((cfg.host.as_str(), port)).map_err(|e| {
                    ServeError::Io(format!("cannot bind {}:{port} (gRPC): {e}", cfg.host))
                })?;
                l.set_nonblocking(true)
                    .map_err(|e| ServeError::Io(e.to_string()))?;
                Some(l)
            }
        };
        let (tx, rx) = oneshot::channel();
        let retry = cfg.retry_after_s;
        let loader = std::thread::Builder::new()
            .name("streamrec-loading".into())
            .spawn(move || loading_responder(listener, retry, rx))
            .map_err(|e| ServeError::Io(format!("cannot start a thread: {e}")))?;
        Ok(Binding {
            cfg,
            addr,
            grpc,
            stop: Some(tx),
            loader: Some(loader),
        })
    }

    /// [`Server::bind`], then [`Binding::start`].
    pub fn start(cfg: ServeConfig, model: Model) -> Result<Self, ServeError> {
        Self::bind(cfg)?.start(model)
    }

    /// The settings it runs with (limits derived from the machine).
    pub fn config(&self) -> &ServeConfig {
        &self.state.cfg
    }

    /// Serves `html` (a self-contained page, e.g. the plan view of `streamrec plan --html`)
    /// read-only at `GET /ui`; without it `/ui` is a 404. Only the first call counts.
    pub fn set_ui(&self, html: String) {
        let _ = self.state.ui.set(html);
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The address of the gRPC endpoint, when it has one (`grpc_port`).
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves on a new thread until [`Running::stop`].
    pub fn spawn(self) -> Running {
        let addr = self.local_addr();
        let grpc_addr = self.grpc_addr();
        let (tx, rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("streamrec-serve".into())
            .spawn(move || {
                self.run(async {
                    let _ = rx.await;
                })
            })
            .expect("spawn the server thread");
        Running {
            addr,
            grpc_addr,
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    /// Serves until `shutdown` completes, then drains: readiness goes false, the listener
    /// closes (new connections are refused), in-flight and queued requests finish (at most
    /// `drain_timeout_s`), and the batcher stops.
    pub fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(self.state.cfg.http_threads)
            .thread_name("streamrec-http")
            .enable_all()
            .build()
            .map_err(|e| ServeError::Io(format!("cannot start the async runtime: {e}")))?;
        rt.block_on(self.serve(shutdown))
    }

    async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
        let Server {
            state,
            listener,
            grpc,
        } = self;
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(|e| ServeError::Io(e.to_string()))?;
        // The gRPC endpoint: tonic on the same runtime and state, stopped with the HTTP side
        // (in-flight calls finish within the drain timeout).
        let (grpc_stop, grpc_task) = match grpc {
            None => (None, None),
            Some(l) => {
                let l = tokio::net::TcpListener::from_std(l)
                    .map_err(|e| ServeError::Io(e.to_string()))?;
                let (tx, rx) = oneshot::channel::<()>();
                let svc = crate::grpc::service(Arc::clone(&state));
                // Registered with the HTTP port's connections (limit, eviction, sweeper), and
                // TCP_NODELAY on each (without it a response's last frame waits for the client's
                // delayed ACK, 40 ms).
                let incoming = crate::grpc_conn::Incoming::new(l, Arc::clone(&state.conns));
                // HTTP/2 windows for ranking-sized requests (hundreds of KB) in one round trip
                // instead of one per 64 KB; tonic reads each message as it arrives (at most
                // the body limit), so the windows add no memory beyond that.
                let task = tokio::spawn(
                    tonic::transport::Server::builder()
                        .initial_stream_window_size(4 << 20)
                        .initial_connection_window_size(16 << 20)
                        .add_service(svc)
                        .serve_with_incoming_shutdown(incoming, async {
                            let _ = rx.await;
                        }),
                );
                (Some(tx), Some(task))
            }
        };
        let graceful = GracefulShutdown::new();
        let mut http = http1::Builder::new();
        // No hyper timer: the header and keep-alive timeouts are the sweeper's (crate::conn),
        // the body's the handler's. Half-closes are held back by `Tracked`, so hyper's own
        // half-close mode stays off and a reset connection still cancels its request.
        http.keep_alive(true).max_buf_size(MAX_HEAD_BYTES);
        let sweeper = {
            let st = Arc::clone(&state);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(SWEEP_EVERY);
                loop {
                    tick.tick().await;
                    st.conns.sweep();
                }
            })
        };
        let mut accept_errors = AcceptErrors::default();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                conn = listener.accept() => {
                    let stream = match conn {
                        Ok((s, _)) => {
                            accept_errors.ok();
                            s
                        }
                        Err(e) => {
                            // Out of file descriptors and the like: close the slowest client,
                            // back off, keep serving the connections we have.
                            state.conns.evict();
                            let (pause, line) = accept_errors.failed(&e);
                            if let Some(line) = line {
                                eprintln!("{line}");
                            }
                            tokio::time::sleep(pause).await;
                            continue;
                        }
                    };
                    if state.conns.staying() >= state.conns.limit && !state.conns.evict() {
                        // Every connection has a request queued or running.
                        tokio::spawn(refuse(stream, state.cfg.retry_after_s));
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    let reg = state.conns.open();
                    let st = Arc::clone(&state);
                    let c = Arc::clone(&reg.conn);
                    let svc = service_fn(move |req| {
                        // The head is in: from here an end of stream is a half-close.
                        c.enter(Phase::Body);
                        handle(Arc::clone(&st), Arc::clone(&c), req)
                    });
                    let io = TokioIo::new(Tracked::new(stream, Arc::clone(&reg.conn)));
                    let conn = graceful.watch(http.serve_connection(io, svc));
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = conn => {}
                            _ = reg.conn.killed() => {}
                        }
                        drop(reg);
                    });
                }
                _ = &mut shutdown => break,
            }
        }
        sweeper.abort();
        state.accepting.store(false, Ordering::SeqCst);
        drop(listener);
        let (queued, _) = state.batcher.depth();
        eprintln!(
            "streamrec serve: shutting down: not ready, no new connections; draining {} request(s) in flight ({queued} queued)",
            state.inflight.load(Ordering::SeqCst)
        );
        // Connections with no request under way only hold the drain up: closed now.
        state.conns.close_waiting();
        let timeout = state.cfg.drain_timeout();
        if let Some(tx) = grpc_stop {
            let _ = tx.send(());
        }
        let grpc_done = async {
            if let Some(task) = grpc_task {
                if let Ok(Err(e)) = task.await {
                    eprintln!("streamrec serve: gRPC endpoint: {e}");
                }
            }
        };
        if tokio::time::timeout(timeout, async {
            tokio::join!(graceful.shutdown(), grpc_done);
        })
        .await
        .is_err()
        {
            eprintln!(
                "streamrec serve: drain timeout ({:.1} s) passed with {} request(s) in flight",
                timeout.as_secs_f64(),
                state.inflight.load(Ordering::SeqCst)
            );
        }
        let st = Arc::clone(&state);
        let _ = tokio::task::spawn_blocking(move || st.batcher.close()).await;
        eprintln!(
            "streamrec serve: stopped after {} successful request(s)",
            state.metrics.successes()
        );
        Ok(())
    }
}

/// Failed `accept`s: the back-off (10 ms doubling to 1 s, reset by a success) and a log line
/// at most every [`ACCEPT_LOG_EVERY`].
#[derive(Default)]
struct AcceptErrors {
    backoff: Duration,
    since_log: u64,
    logged: Option<Instant>,
}

impl AcceptErrors {
    fn ok(&mut self) {
        self.backoff = Duration::ZERO;
    }

    /// The back-off after a failure, and the line to log when one is due.
    fn failed(&mut self, e: &std::io::Error) -> (Duration, Option<String>) {
        self.since_log += 1;
        self.backoff = (self.backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let mut line = None;
        if self.logged.is_none_or(|t| t.elapsed() >= ACCEPT_LOG_EVERY) {
            line = Some(format!(
                "streamrec serve: accept failed ({} time(s) since the last report): {e}; backing off {} ms",
                self.since_log,
                self.backoff.as_millis()
            ));
            self.logged = Some(Instant::now());
            self.since_log = 0;
        }
        (self.backoff, line)
    }
}

/// Answers a connection over the limit with a 503 and closes it.
async fn refuse(mut stream: tokio::net::TcpStream, retry_after_s: u32) {
    let body = protocol::error_body("overloaded: too many connections");
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: {}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        retry_after_s.max(1),
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&body).await
    })
    .await;
}

/// Completes on ctrl-c or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_accept_backs_off_and_is_logged_once_per_interval() {
        let mut a = AcceptErrors::default();
        let emfile = std::io::Error::from_raw_os_error(libc::EMFILE);
        let mut pauses = Vec::new();
        let mut lines = Vec::new();
        for _ in 0..10 {
            let (pause, line) = a.failed(&emfile);
            pauses.push(pause.as_millis());
            lines.extend(line);
        }
        assert_eq!(
            pauses,
            [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000],
            "doubling from 10 ms to 1 s"
        );
        assert_eq!(lines.len(), 1, "one line in the interval: {lines:?}");
        assert!(
            lines[0].contains("(1 time(s) since the last report)"),
            "{}",
            lines[0]
        );
        assert!(lines[0].contains("backing off 10 ms"), "{}", lines[0]);
        a.ok();
        assert_eq!(
            a.failed(&emfile).0,
            Duration::from_millis(10),
            "reset by a success"
        );
        a.logged = Some(Instant::now() - ACCEPT_LOG_EVERY);
        let (_, line) = a.failed(&emfile);
        let line = line.expect("a line once the interval has passed");
        assert!(
            line.contains("(11 time(s) since the last report)"),
            "{line}"
        );
    }

    /// Records the batch sizes it runs; asks to be warmed up with `sizes`.
    struct Sizes {
        sizes: Vec<usize>,
        ran: std::sync::Mutex<Vec<usize>>,
    }

    impl Infer for Sizes {
        fn infer(&self, batch: &ValidatedBatch) -> streamrec_runtime::Result<Vec<f32>> {
            self.ran.lock().unwrap().push(batch.size);
            Ok(vec![0.5; batch.size])
        }
        fn take_trace(&self) -> Vec<streamrec_runtime::trace::TraceEvent> {
            Vec::new()
        }
        fn backend_name(&self) -> &'static str {
            "sizes"
        }
        fn warm_up_sizes(&self) -> Vec<usize> {
            self.sizes.clone()
        }
        fn contexts(&self) -> usize {
            3
        }
    }

    #[test]
    fn the_engine_runs_every_warm_up_size_before_readiness() {
        let spec = ModelSpec::parse(
            "dense = 2\n[bottom]\nlayers = [4]\n[sparse]\ncount = 1\nrows = [9]\ndim = 4\n\
             [top]\nlayers = [1]\n[interaction]\nkind = \"cat\"\n",
            "m",
            None,
        )
        .unwrap();
        let engine = Arc::new(Sizes {
            // Buckets past the server's max batch are capped at it.
            sizes: vec![1, 1, 2, 2, 4, 4, 8, 8, 16, 16],
            ran: Default::default(),
        });
        let server = Server::start(
            ServeConfig {
                port: 0,
                max_batch: 10,
                ..ServeConfig::default()
            },
            Model {
                spec,
                engine: Arc::clone(&engine) as Arc<dyn Infer>,
            },
        )
        .unwrap();
        assert_eq!(
            *engine.ran.lock().unwrap(),
            [1, 1, 2, 2, 4, 4, 8, 8, 10, 10, 10]
        );
        // Contexts left at 0: the engine's; front-end threads from the machine.
        let cfg = &server.state.cfg;
        assert_eq!(cfg.contexts, 3);
        assert_eq!(cfg.http_threads, ServeConfig::auto_http_threads());
        assert!((2..=8).contains(&cfg.http_threads), "{}", cfg.http_threads);
        drop(server);
    }
}
