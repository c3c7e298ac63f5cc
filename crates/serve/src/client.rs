//! A small blocking HTTP/1.1 client for the server's tests, benchmarks and tools: one
//! connection, kept alive between requests and opened again after an error or a
//! `Connection: close`.
//!
//! It speaks just what the server answers with: a status line, headers, and a body sized by
//! `Content-Length` (or, without one, running to the end of a closing connection).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// The longest response head read (status line and headers), in bytes.
const MAX_HEAD: usize = 64 * 1024;

/// A response: status, headers (names in lower case, in the order received) and body.
#[derive(Clone, Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header names (lower case) and values (trimmed).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of the header `name` (matched without regard to case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One connection to `addr`, opened on first use.
pub struct Client {
    addr: SocketAddr,
    timeout: Duration,
    keep_alive: bool,
    conn: Option<BufReader<TcpStream>>,
}

impl Client {
    /// A keep-alive client of `addr`; connecting, reading and writing each time out after 30 s.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            timeout: Duration::from_secs(30),
            keep_alive: true,
            conn: None,
        }
    }

    /// The same client with another timeout for connecting, reading and writing.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The same client asking for `Connection: close`: a fresh connection per request.
    pub fn close_each(mut self) -> Self {
        self.keep_alive = false;
        self
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `GET path`.
    pub fn get(&mut self, path: &str) -> io::Result<Response> {
        self.request("GET", path, &[], b"")
    }

    /// `POST path` with `body`.
    pub fn post(&mut self, path: &str, body: &[u8]) -> io::Result<Response> {
        self.request("POST", path, &[], body)
    }

    /// `POST path` with an inference body; `header_len`, when given, is sent as
    /// `Inference-Header-Content-Length` (the body's first bytes are then the JSON header of
    /// Triton's binary tensor data extension, [`crate::protocol::HEADER_LENGTH`]).
    pub fn post_infer(
        &mut self,
        path: &str,
        body: &[u8],
        header_len: Option<usize>,
    ) -> io::Result<Response> {
        let n = header_len.map(|n| n.to_string());
        let headers: Vec<(&str, &str)> = n
            .iter()
            .map(|n| (crate::protocol::HEADER_LENGTH, n.as_str()))
            .collect();
        self.request("POST", path, &headers, body)
    }

    /// Sends one request and reads its response. `Host`, `Connection` and (unless `headers`
    /// give one) `Content-Length` are added. After an error, or when either side asked to
    /// close, the next request opens a new connection.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<Response> {
        let r = self.exchange(method, path, headers, body);
        match &r {
            Ok(resp) if self.keep_alive && !closes(resp) => {}
            _ => self.conn = None,
        }
        r
    }

    fn exchange(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<Response> {
        if self.conn.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, self.timeout)?;
            s.set_read_timeout(Some(self.timeout))?;
            s.set_write_timeout(Some(self.timeout))?;
            s.set_nodelay(true)?;
            self.conn = Some(BufReader::new(s));
        }
        let Some(conn) = self.conn.as_mut() else {
            unreachable!("a connection was just opened");
        };
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: {}\r\n",
            self.addr,
            if self.keep_alive {
                "keep-alive"
            } else {
                "close"
            }
        );
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let mut req = head.into_bytes();
        req.extend_from_slice(body);
        conn.get_mut().write_all(&req)?;
        read_response(conn)
    }
}

/// Whether the response ends its connection.
fn closes(r: &Response) -> bool {
    r.header("connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("close"))
}

fn bad(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Reads one response from `conn`.
fn read_response(conn: &mut BufReader<TcpStream>) -> io::Result<Response> {
    let mut read_head = 0usize;
    let mut line = String::new();
    let mut next_line = |line: &mut String| -> io::Result<()> {
        line.clear();
        let n = conn.by_ref().take(MAX_HEAD as u64).read_line(line)?;
        read_head += n;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection before a complete response head",
            ));
        }
        if read_head > MAX_HEAD {
            return Err(bad(format!("response head longer than {MAX_HEAD} bytes")));
        }
        Ok(())
    };
    next_line(&mut line)?;
    let status = line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.split(' ').nth(1))
        .and_then(|code| code.trim().parse::<u16>().ok())
        .ok_or_else(|| {
            bad(format!(
                "not an HTTP/1.x status line: {:?}",
                line.trim_end()
            ))
        })?;
    let mut headers = Vec::new();
    loop {
        next_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l
            .split_once(':')
            .ok_or_else(|| bad(format!("malformed response header: {l:?}")))?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let mut resp = Response {
        status,
        headers,
        body: Vec::new(),
    };
    if resp
        .header("transfer-encoding")
        .is_some_and(|v| !v.eq_ignore_ascii_case("identity"))
    {
        return Err(bad("chunked response bodies are not supported".into()));
    }
    match resp.header("content-length") {
        Some(v) => {
            let len: usize = v
                .parse()
                .map_err(|_| bad(format!("bad Content-Length: {v:?}")))?;
            resp.body.resize(len, 0);
            conn.read_exact(&mut resp.body)?;
        }
        None => {
            conn.read_to_end(&mut resp.body)?;
        }
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A one-connection server that answers each request it reads with the next canned reply,
    /// and records the requests' raw bytes.
    fn canned(replies: Vec<&'static [u8]>) -> (SocketAddr, std::thread::JoinHandle<Vec<u8>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let h = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for reply in replies {
                let (mut s, _) = l.accept().unwrap();
                let mut buf = [0u8; 4096];
                let n = s.read(&mut buf).unwrap();
                seen.extend_from_slice(&buf[..n]);
                s.write_all(reply).unwrap();
            }
            seen
        });
        (addr, h)
    }

    #[test]
    fn reads_status_headers_and_sized_or_closing_bodies() {
        let (addr, h) = canned(vec![
            b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 5\r\nConnection: close\r\n\r\nbusy!trailing",
            b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{\"a\":1}",
        ]);
        let mut c = Client::new(addr);
        let r = c.post_infer("/p", b"xyz", Some(2)).unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.header("retry-after"), Some("1"));
        assert_eq!(r.body, b"busy!");
        // The server closed: the next request opens a new connection, and reads to its end.
        let r = c
            .request(
                "GET",
                "/q",
                &[("Content-Length", "0"), ("X-Test", "1")],
                b"",
            )
            .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"{\"a\":1}"[..]));
        let seen = String::from_utf8(h.join().unwrap()).unwrap();
        assert!(seen.starts_with("POST /p HTTP/1.1\r\n"), "{seen}");
        assert!(
            seen.contains("inference-header-content-length: 2\r\n"),
            "{seen}"
        );
        assert!(seen.contains("Content-Length: 3\r\n"), "{seen}");
        assert!(seen.contains("\r\n\r\nxyz"), "{seen}");
        // A caller's Content-Length is sent as given, not a second time.
        assert_eq!(seen.matches("Content-Length").count(), 2, "{seen}");
        assert!(seen.contains("GET /q HTTP/1.1\r\n") && seen.contains("X-Test: 1\r\n"));
    }

    #[test]
    fn keep_alive_reuses_one_connection() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let h = std::thread::spawn(move || {
            // One connection only: a request on a second one would get no answer and time out.
            let (s, _) = l.accept().unwrap();
            let mut r = BufReader::new(s);
            for body in ["one", "two"] {
                let mut line = String::new();
                loop {
                    line.clear();
                    r.read_line(&mut line).unwrap();
                    if line == "\r\n" {
                        break;
                    }
                }
                write!(
                    r.get_mut(),
                    "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n{body}"
                )
                .unwrap();
            }
        });
        let mut c = Client::new(addr).timeout(Duration::from_secs(5));
        assert_eq!(c.get("/").unwrap().body, b"one");
        assert_eq!(c.get("/").unwrap().body, b"two");
        h.join().unwrap();
    }

    #[test]
    fn a_broken_response_is_an_error_not_a_panic() {
        for reply in [
            &b"garbage\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            b"HTTP/1.1 200",
        ] {
            let (addr, h) = canned(vec![reply]);
            let r = Client::new(addr).timeout(Duration::from_secs(5)).get("/");
            assert!(
                r.is_err(),
                "{:?} gave {r:?}",
                String::from_utf8_lossy(reply)
            );
            h.join().unwrap();
        }
    }
}
