//! The gRPC port's connections in the server's connection registry ([`crate::conn`]): counted
//! against `max_connections` with the HTTP port's, chosen for eviction at the limit like them,
//! and closed by the same sweeper when no call starts within the header timeout of the
//! connection's opening (a client that never sends its preface or first call) or when idle past
//! the keep-alive timeout. A connection is busy while any of its calls runs ([`CallGuard`]).

use std::future::Future as _;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tonic::transport::server::Connected;

use crate::conn::{Conn, Conns, Phase, Registered};

/// What a call learns of its connection (a request extension).
#[derive(Clone, Debug)]
pub struct ConnInfo {
    conn: Arc<Conn>,
    calls: Arc<AtomicUsize>,
    /// The client's address.
    pub remote: Option<SocketAddr>,
}

/// Marks the connection busy for the life of one call, idle after its last.
pub struct CallGuard(Option<ConnInfo>);

impl CallGuard {
    /// Starts a call on the connection of `req` (none for a request that did not come through
    /// [`Incoming`], e.g. in a unit test).
    pub fn start<T>(req: &tonic::Request<T>) -> Self {
        let info = req.extensions().get::<ConnInfo>().cloned();
        if let Some(i) = &info {
            if i.calls.fetch_add(1, Ordering::SeqCst) == 0 {
                i.conn.enter(Phase::Busy);
            }
        }
        CallGuard(info)
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if let Some(i) = &self.0 {
            if i.calls.fetch_sub(1, Ordering::SeqCst) == 1 {
                i.conn.enter(Phase::Idle);
            }
        }
    }
}

/// An accepted gRPC connection: the socket, its registration, and a watcher that shuts the
/// socket down when the registry closes the connection (hyper then sees the end and drops it).
pub struct GrpcIo {
    io: TcpStream,
    info: ConnInfo,
    /// The socket's descriptor while it is open; the watcher shuts down only under this lock.
    fd: Arc<Mutex<Option<RawFd>>>,
    watcher: JoinHandle<()>,
    _reg: Registered,
}

impl GrpcIo {
    fn new(io: TcpStream, reg: Registered) -> Self {
        let fd = Arc::new(Mutex::new(Some(io.as_raw_fd())));
        let watcher = {
            let (conn, fd) = (Arc::clone(&reg.conn), Arc::clone(&fd));
            tokio::spawn(async move {
                conn.killed().await;
                if let Some(fd) = *fd.lock().unwrap_or_else(|p| p.into_inner()) {
                    // SAFETY: the descriptor is open (GrpcIo clears it under this lock before
                    // the socket closes); shutdown neither closes nor frees it.
                    unsafe {
                        libc::shutdown(fd, libc::SHUT_RDWR);
                    }
                }
            })
        };
        let info = ConnInfo {
            conn: Arc::clone(&reg.conn),
            calls: Arc::new(AtomicUsize::new(0)),
            remote: io.peer_addr().ok(),
        };
        GrpcIo {
            io,
            info,
            fd,
            watcher,
            _reg: reg,
        }
    }
}

impl Drop for GrpcIo {
    fn drop(&mut self) {
        *self.fd.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.watcher.abort();
    }
}

impl Connected for GrpcIo {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for GrpcIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

crate::conn::delegate_write!([] GrpcIo, io);

/// The gRPC port's accepted connections, registered: at the connection limit the registry
/// closes its slowest or longest-idle connections first, and a new connection finding every
/// one busy is closed at once. Accept failures (out of descriptors) close the slowest client
/// and back off (10 ms doubling to 1 s).
pub struct Incoming {
    listener: TcpListener,
    conns: Arc<Conns>,
    backoff: Duration,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Incoming {
    /// Accepts from `listener` into `conns`.
    pub fn new(listener: TcpListener, conns: Arc<Conns>) -> Self {
        Incoming {
            listener,
            conns,
            backoff: Duration::ZERO,
            pause: None,
        }
    }
}

impl futures_core::Stream for Incoming {
    type Item = io::Result<GrpcIo>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(p) = &mut this.pause {
                if p.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.pause = None;
            }
            match this.listener.poll_accept(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => {
                    this.conns.evict();
                    this.backoff =
                        (this.backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                    this.pause = Some(Box::pin(tokio::time::sleep(this.backoff)));
                }
                Poll::Ready(Ok((stream, _))) => {
                    this.backoff = Duration::ZERO;
                    if this.conns.staying() >= this.conns.limit && !this.conns.evict() {
                        // Every connection has a call under way: no room.
                        drop(stream);
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    let reg = this.conns.open();
                    return Poll::Ready(Some(Ok(GrpcIo::new(stream, reg))));
                }
            }
        }
    }
}
