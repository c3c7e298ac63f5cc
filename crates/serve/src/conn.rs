//! Open connections and what each is doing: the registry behind the header and keep-alive
//! timeouts, the connection limit and half-closed requests.
//!
//! Every connection is in one phase: `Head` (opened, or the first byte of a request head has
//! arrived, until hyper hands the head to the service), `Body` (the service reads the body),
//! `Busy` (the request is queued or running) or `Idle` (between requests). The sweeper closes a
//! connection whose head takes longer than the header timeout or that stays idle longer than
//! the keep-alive timeout; the body timeouts are the handler's (it answers 408). At the
//! connection limit the one that has been in `Head` or `Body` longest (a slow client), or else
//! the one idle longest, is closed to make room. [`Tracked`] watches the socket: the first byte
//! read while idle starts a head, and an end of stream while a request is being read or run is
//! a half-close (the client still waits for its answer), held back from hyper until the answer
//! is out.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// What a connection is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Waiting for (the rest of) a request head.
    Head = 0,
    /// The service is reading the request body.
    Body = 1,
    /// The request is queued or running.
    Busy = 2,
    /// Between requests.
    Idle = 3,
}

impl Phase {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Phase::Head,
            1 => Phase::Body,
            2 => Phase::Busy,
            _ => Phase::Idle,
        }
    }
}

/// One open connection.
#[derive(Debug)]
pub struct Conn {
    id: u64,
    epoch: Instant,
    phase: AtomicU8,
    /// Milliseconds after `epoch` when the current phase began.
    since_ms: AtomicU64,
    /// The client closed its sending side while a request was being read or run.
    peer_eof: AtomicBool,
    /// Wakes the handler reading a body when the client closes its side.
    eof: Notify,
    /// Tells the connection's task to close it.
    kill: Notify,
    /// It has been told.
    killed: AtomicBool,
}

impl Conn {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::SeqCst))
    }

    /// Enters `phase` now.
    pub fn enter(&self, phase: Phase) {
        self.since_ms.store(self.now_ms(), Ordering::SeqCst);
        self.phase.store(phase as u8, Ordering::SeqCst);
    }

    fn age_ms(&self) -> u64 {
        self.now_ms()
            .saturating_sub(self.since_ms.load(Ordering::SeqCst))
    }

    /// Whether the client has closed its sending side during the current request.
    pub fn peer_closed(&self) -> bool {
        self.peer_eof.load(Ordering::SeqCst)
    }

    /// Completes when the client closes its sending side (at once if it has).
    pub async fn closed_by_peer(&self) {
        loop {
            let wait = self.eof.notified();
            if self.peer_closed() {
                return;
            }
            wait.await;
        }
    }

    /// Completes when the connection is to be closed (the sweeper or the limit chose it).
    pub async fn killed(&self) {
        self.kill.notified().await
    }
}

/// Marks a connection idle when the request it is serving ends, however it ends.
pub struct Serving<'a>(pub &'a Conn);

impl Drop for Serving<'_> {
    fn drop(&mut self) {
        self.0.enter(Phase::Idle);
    }
}

/// The registry of open connections.
#[derive(Debug)]
pub struct Conns {
    epoch: Instant,
    next: AtomicU64,
    map: Mutex<HashMap<u64, Arc<Conn>>>,
    /// Connections told to close that have not closed yet.
    closing: AtomicUsize,
    /// The connection limit.
    pub limit: usize,
    header_timeout_ms: u64,
    idle_timeout_ms: u64,
}

/// Removes a connection from the registry when its task ends.
pub struct Registered {
    conns: Arc<Conns>,
    /// The connection.
    pub conn: Arc<Conn>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.conns.lock().remove(&self.conn.id);
        if self.conn.killed.load(Ordering::SeqCst) {
            self.conns.closing.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Conns {
    /// An empty registry.
    pub fn new(limit: usize, header_timeout: Duration, idle_timeout: Duration) -> Self {
        Self {
            epoch: Instant::now(),
            next: AtomicU64::new(0),
            map: Mutex::new(HashMap::new()),
            closing: AtomicUsize::new(0),
            limit,
            header_timeout_ms: header_timeout.as_millis() as u64,
            idle_timeout_ms: idle_timeout.as_millis() as u64,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Connections open now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Connections open now and not told to close: what counts against the limit.
    pub fn staying(&self) -> usize {
        self.len()
            .saturating_sub(self.closing.load(Ordering::SeqCst))
    }

    /// Tells `c` to close (once).
    fn kill(&self, c: &Conn) {
        if !c.killed.swap(true, Ordering::SeqCst) {
            self.closing.fetch_add(1, Ordering::SeqCst);
            c.kill.notify_one();
        }
    }

    /// Whether none is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Registers a new connection, waiting for its head.
    pub fn open(self: &Arc<Self>) -> Registered {
        let conn = Arc::new(Conn {
            id: self.next.fetch_add(1, Ordering::Relaxed),
            epoch: self.epoch,
            phase: AtomicU8::new(Phase::Head as u8),
            since_ms: AtomicU64::new(0),
            peer_eof: AtomicBool::new(false),
            eof: Notify::new(),
            kill: Notify::new(),
            killed: AtomicBool::new(false),
        });
        conn.enter(Phase::Head);
        self.lock().insert(conn.id, Arc::clone(&conn));
        Registered {
            conns: Arc::clone(self),
            conn,
        }
    }

    /// The `n` connections to close for new ones at the limit: those in `Head` or `Body`
    /// longest, then those idle longest; never one with a request queued or running.
    pub fn victims(&self, n: usize) -> Vec<Arc<Conn>> {
        let map = self.lock();
        // Slow readers first (rank 0), then idle ones (rank 1); the oldest first within each.
        let mut ranked: Vec<(u8, std::cmp::Reverse<u64>, &Arc<Conn>)> = map
            .values()
            .filter(|c| !c.killed.load(Ordering::SeqCst))
            .filter_map(|c| {
                let rank = match c.phase() {
                    Phase::Head | Phase::Body => 0,
                    Phase::Idle => 1,
                    Phase::Busy => return None,
                };
                Some((rank, std::cmp::Reverse(c.age_ms()), c))
            })
            .collect();
        let n = n.min(ranked.len());
        if n > 0 && n < ranked.len() {
            ranked.select_nth_unstable_by_key(n - 1, |(r, a, _)| (*r, *a));
        }
        ranked.truncate(n);
        ranked.sort_by_key(|(r, a, _)| (*r, *a));
        ranked.into_iter().map(|(_, _, c)| Arc::clone(c)).collect()
    }

    /// The one connection [`Conns::victims`] would close first.
    pub fn victim(&self) -> Option<Arc<Conn>> {
        self.victims(1).pop()
    }

    /// Closes connections to make room at the limit: a thirty-second of it at once (so a flood
    /// of new connections pays for one scan per batch, not one per connection), at least one.
    /// False when none could be chosen.
    pub fn evict(&self) -> bool {
        let victims = self.victims((self.limit / 32).max(1));
        for c in &victims {
            self.kill(c);
        }
        !victims.is_empty()
    }

    /// Closes every connection without a request being read or run (shutting down: they would
    /// only hold the drain up); returns how many.
    pub fn close_waiting(&self) -> usize {
        let map = self.lock();
        let mut closed = 0;
        for c in map.values() {
            if matches!(c.phase(), Phase::Head | Phase::Idle) {
                self.kill(c);
                closed += 1;
            }
        }
        closed
    }

    /// Closes every connection whose head took longer than the header timeout or that stayed
    /// idle longer than the keep-alive timeout; returns how many.
    pub fn sweep(&self) -> usize {
        let map = self.lock();
        let mut closed = 0;
        for c in map.values() {
            let limit = match c.phase() {
                Phase::Head => self.header_timeout_ms,
                Phase::Idle => self.idle_timeout_ms,
                Phase::Body | Phase::Busy => continue,
            };
            if c.age_ms() >= limit && !c.killed.load(Ordering::SeqCst) {
                self.kill(c);
                closed += 1;
            }
        }
        closed
    }
}

/// A socket that reports to its connection's record: the first byte read while idle starts a
/// head; an end of stream while a request is read or run is held back as a half-close.
pub struct Tracked<S> {
    io: S,
    conn: Arc<Conn>,
}

impl<S> Tracked<S> {
    /// Wraps `io`.
    pub fn new(io: S, conn: Arc<Conn>) -> Self {
        Self { io, conn }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.conn.peer_closed() {
            // The client closed its side during a request: once that request is answered
            // (idle again), hyper sees the end of the stream and closes; until then, nothing.
            return match this.conn.phase() {
                Phase::Idle | Phase::Head => Poll::Ready(Ok(())),
                Phase::Body | Phase::Busy => Poll::Pending,
            };
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        let got = buf.filled().len() - before;
        match this.conn.phase() {
            Phase::Idle if got > 0 => this.conn.enter(Phase::Head),
            Phase::Body | Phase::Busy if got == 0 => {
                // A half-close: answer the request first. The handler reading a body hears of
                // it; hyper is not told (it would drop the request), and is woken by the answer.
                this.conn.peer_eof.store(true, Ordering::SeqCst);
                this.conn.eof.notify_waiters();
                return Poll::Pending;
            }
            _ => {}
        }
        Poll::Ready(Ok(()))
    }
}

/// Implements `AsyncWrite` for a socket wrapper by passing every call to its field `$f`.
macro_rules! delegate_write {
    ([$($g:tt)*] $t:ty, $f:ident) => {
        impl<$($g)*> tokio::io::AsyncWrite for $t {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.$f).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.$f).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.$f.is_write_vectored()
            }

            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.$f).poll_flush(cx)
            }

            fn poll_shutdown(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.$f).poll_shutdown(cx)
            }
        }
    };
}
pub(crate) use delegate_write;

delegate_write!([S: AsyncWrite + Unpin] Tracked<S>, io);

#[cfg(test)]
mod tests {
    use super::*;

    fn conns(limit: usize) -> Arc<Conns> {
        Arc::new(Conns::new(
            limit,
            Duration::from_millis(50),
            Duration::from_millis(200),
        ))
    }

    #[test]
    fn the_victim_is_the_slowest_reader_then_the_longest_idle() {
        let c = conns(4);
        let idle = c.open();
        idle.conn.enter(Phase::Idle);
        let busy = c.open();
        busy.conn.enter(Phase::Busy);
        std::thread::sleep(Duration::from_millis(20));
        let body = c.open();
        body.conn.enter(Phase::Body);
        std::thread::sleep(Duration::from_millis(20));
        let head = c.open();
        assert_eq!(c.len(), 4);
        assert_eq!(
            c.victim().unwrap().id,
            body.conn.id,
            "the oldest slow reader"
        );
        drop(body);
        assert_eq!(c.victim().unwrap().id, head.conn.id);
        drop(head);
        assert_eq!(c.victim().unwrap().id, idle.conn.id, "then the idle one");
        drop(idle);
        assert!(c.victim().is_none(), "a busy connection is never closed");
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn the_sweep_closes_slow_heads_and_long_idle_connections_only() {
        let c = conns(8);
        let head = c.open();
        let idle = c.open();
        idle.conn.enter(Phase::Idle);
        let body = c.open();
        body.conn.enter(Phase::Body);
        assert_eq!(c.sweep(), 0, "nothing is late yet");
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(c.sweep(), 1, "the head is past its 50 ms");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(1), head.conn.killed())
                .await
                .expect("the slow head is told to close");
        });
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(c.sweep(), 1, "now the idle one; the head was told already");
        drop(body);
    }
}
