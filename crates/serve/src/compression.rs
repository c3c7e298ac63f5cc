//! Request and response compression as Triton's HTTP endpoint does it: a request body with
//! `Content-Encoding: gzip` or `deflate` (zlib) is decompressed before it is parsed, within the
//! body limit and charged to the memory budget as it grows; a response is compressed when the
//! client's `Accept-Encoding` asks for gzip or deflate.

use std::io::{Read, Write};

use flate2::read::{GzDecoder, ZlibDecoder};
use flate2::write::{GzEncoder, ZlibEncoder};
use flate2::Compression;
use hyper::header::{HeaderMap, ACCEPT_ENCODING, CONTENT_ENCODING};

/// A content coding this server reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coding {
    /// No compression.
    Identity,
    /// gzip (RFC 1952).
    Gzip,
    /// HTTP's `deflate`: the zlib format (RFC 1950).
    Deflate,
}

impl Coding {
    /// The header value.
    pub fn name(self) -> &'static str {
        match self {
            Coding::Identity => "identity",
            Coding::Gzip => "gzip",
            Coding::Deflate => "deflate",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "identity" => Some(Coding::Identity),
            "gzip" | "x-gzip" => Some(Coding::Gzip),
            "deflate" => Some(Coding::Deflate),
            _ => None,
        }
    }
}

/// Why a compressed body could not be read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// `Content-Encoding` names a coding this server does not read (400).
    #[error("Content-Encoding `{0}` is not supported (use gzip, deflate or identity)")]
    Unsupported(String),
    /// Decompressed, the body is larger than the limit (413).
    #[error("the decompressed request body is more than the limit of {0} bytes")]
    TooLarge(usize),
    /// The memory budget cannot hold the decompressed body (503).
    #[error("overloaded: the server holds as many request bytes as its memory budget allows")]
    OverBudget,
    /// The data is not valid for its coding (400).
    #[error("the request body is not valid {coding} data: {why}")]
    Corrupt {
        /// The coding.
        coding: &'static str,
        /// The decoder's message.
        why: String,
    },
}

/// The request body's coding, from `Content-Encoding`.
pub fn request_coding(headers: &HeaderMap) -> Result<Coding, DecodeError> {
    match headers.get(CONTENT_ENCODING) {
        None => Ok(Coding::Identity),
        Some(v) => {
            let s = v.to_str().unwrap_or("(not text)");
            Coding::parse(s).ok_or_else(|| DecodeError::Unsupported(s.to_string()))
        }
    }
}

/// The coding for the response: gzip if `Accept-Encoding` accepts it, else deflate, else none
/// (a coding with `q=0` is refused).
pub fn response_coding(headers: &HeaderMap) -> Coding {
    let Some(accept) = headers.get(ACCEPT_ENCODING).and_then(|v| v.to_str().ok()) else {
        return Coding::Identity;
    };
    let accepted = |want: Coding| {
        accept.split(',').any(|item| {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or("");
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    == Some(0.0)
            });
            Coding::parse(name) == Some(want) && !refused
        })
    };
    [Coding::Gzip, Coding::Deflate]
        .into_iter()
        .find(|&c| accepted(c))
        .unwrap_or(Coding::Identity)
}

/// Decompresses `body` into at most `max` bytes; `grow(n)` is asked before the output holds `n`
/// bytes (the memory budget) and refuses with false.
pub fn decode(
    coding: Coding,
    body: &[u8],
    max: usize,
    mut grow: impl FnMut(usize) -> bool,
) -> Result<Vec<u8>, DecodeError> {
    let mut reader: Box<dyn Read + '_> = match coding {
        Coding::Identity => return Ok(body.to_vec()),
        Coding::Gzip => Box::new(GzDecoder::new(body)),
        Coding::Deflate => Box::new(ZlibDecoder::new(body)),
    };
    let mut out = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let n = reader.read(&mut chunk).map_err(|e| DecodeError::Corrupt {
            coding: coding.name(),
            why: e.to_string(),
        })?;
        if n == 0 {
            return Ok(out);
        }
        let total = out.len() + n;
        if total > max {
            return Err(DecodeError::TooLarge(max));
        }
        if !grow(total) {
            return Err(DecodeError::OverBudget);
        }
        out.extend_from_slice(&chunk[..n]);
    }
}

/// Compresses a response body.
pub fn encode(coding: Coding, body: Vec<u8>) -> Vec<u8> {
    fn finish<W: Write>(mut w: W, body: &[u8]) -> std::io::Result<W> {
        w.write_all(body)?;
        Ok(w)
    }
    let done = match coding {
        Coding::Identity => return body,
        Coding::Gzip => {
            finish(GzEncoder::new(Vec::new(), Compression::fast()), &body).and_then(|w| w.finish())
        }
        Coding::Deflate => finish(ZlibEncoder::new(Vec::new(), Compression::fast()), &body)
            .and_then(|w| w.finish()),
    };
    done.expect("compressing into memory cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(k: hyper::header::HeaderName, v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(k, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn round_trips_and_limits() {
        let body = b"{\"inputs\": []}".repeat(1000);
        for c in [Coding::Gzip, Coding::Deflate] {
            let z = encode(c, body.clone());
            assert!(z.len() < body.len() / 10, "{c:?} compresses");
            assert_eq!(decode(c, &z, body.len(), |_| true).unwrap(), body);
            assert_eq!(
                decode(c, &z, body.len() - 1, |_| true),
                Err(DecodeError::TooLarge(body.len() - 1))
            );
            assert_eq!(
                decode(c, &z, body.len(), |n| n <= 1000),
                Err(DecodeError::OverBudget)
            );
            assert!(matches!(
                decode(c, &z[..z.len() / 2], body.len(), |_| true),
                Err(DecodeError::Corrupt { .. })
            ));
        }
    }

    #[test]
    fn headers_choose_the_codings() {
        assert_eq!(
            request_coding(&headers(CONTENT_ENCODING, "GZIP")),
            Ok(Coding::Gzip)
        );
        assert_eq!(request_coding(&HeaderMap::new()), Ok(Coding::Identity));
        assert_eq!(
            request_coding(&headers(CONTENT_ENCODING, "br")),
            Err(DecodeError::Unsupported("br".into()))
        );
        let accept = |v: &str| response_coding(&headers(ACCEPT_ENCODING, v));
        assert_eq!(accept("gzip, deflate"), Coding::Gzip);
        assert_eq!(accept("deflate"), Coding::Deflate);
        assert_eq!(accept("gzip;q=0, deflate"), Coding::Deflate);
        assert_eq!(accept("br"), Coding::Identity);
        assert_eq!(response_coding(&HeaderMap::new()), Coding::Identity);
    }
}
