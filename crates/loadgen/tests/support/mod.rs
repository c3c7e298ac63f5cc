//! A tiny HTTP/1.1 test server on loopback (one thread: a single-threaded tokio runtime, one
//! task per connection) whose answer to each request is decided by a closure, and a small model
//! for the bodies.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use streamrec_loadgen::{FeatureInput, ModelInputs};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// What the server does with one request.
pub enum Action {
    /// Answer with this status, after waiting until the instant if one is given.
    Reply(u16, Option<Instant>),
    /// Close the connection without answering.
    Close,
}

/// A running test server; it stops when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicU64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TestServer {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Starts a server; `decide(n, received)` is called for the n-th request (from 0).
pub fn serve<F>(decide: F) -> TestServer
where
    F: Fn(u64, Instant) -> Action + Send + Sync + 'static,
{
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let addr = std_listener.local_addr().unwrap();
    let requests = Arc::new(AtomicU64::new(0));
    let decide = Arc::new(decide);
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let counter = requests.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = TcpListener::from_std(std_listener).unwrap();
            loop {
                tokio::select! {
                    _ = &mut stop_rx => break,
                    conn = listener.accept() => {
                        let Ok((conn, _)) = conn else { continue };
                        let (decide, counter) = (decide.clone(), counter.clone());
                        tokio::spawn(async move {
                            let _ = connection(conn, &*decide, &counter).await;
                        });
                    }
                }
            }
        });
    });
    TestServer {
        addr,
        requests,
        stop: Some(stop_tx),
    }
}

async fn connection<F>(conn: TcpStream, decide: &F, requests: &AtomicU64) -> std::io::Result<()>
where
    F: Fn(u64, Instant) -> Action,
{
    conn.set_nodelay(true)?;
    let (r, mut w) = conn.into_split();
    let mut r = BufReader::with_capacity(64 * 1024, r);
    let mut line = String::new();
    let mut body = Vec::new();
    loop {
        // Request line and headers.
        let mut len = 0usize;
        let mut first = true;
        loop {
            line.clear();
            if r.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            if line == "\r\n" && !first {
                break;
            }
            first = false;
            let l = line.to_ascii_lowercase();
            if let Some(v) = l.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let received = Instant::now();
        body.resize(len, 0);
        r.read_exact(&mut body).await?;
        let n = requests.fetch_add(1, Ordering::SeqCst);
        match decide(n, received) {
            Action::Close => return Ok(()),
            Action::Reply(status, hold) => {
                if let Some(t) = hold {
                    tokio::time::sleep_until(t.into()).await;
                }
                let resp = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{{}}"
                );
                w.write_all(resp.as_bytes()).await?;
            }
        }
    }
}

/// A small model: 4 dense inputs, two features.
pub fn inputs() -> ModelInputs {
    ModelInputs {
        dense: 4,
        features: vec![
            FeatureInput {
                name: "C1".into(),
                rows: 100,
                pooling: 2,
            },
            FeatureInput {
                name: "C2".into(),
                rows: 10,
                pooling: 1,
            },
        ],
    }
}
