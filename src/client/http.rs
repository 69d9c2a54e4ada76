//! A tiny blocking HTTP/1.1 client for the portal's JSON API: one request per connection
//! (`Connection: close`), `Content-Length`, chunked or read-to-EOF bodies. Enough for
//! serialhub's portal and the old Python one; no TLS, no redirects.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// How long to wait for the TCP connection, and for each read.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest response we accept (the device list of a busy hub is a few KiB).
const MAX_RESPONSE: u64 = 16 << 20;

/// Why a request failed.
#[derive(Debug)]
pub(crate) enum HttpError {
    /// No TCP connection (name not resolved, refused, timed out): the host is unreachable.
    Connect(String),
    /// Connected, but the exchange failed or the answer is not HTTP.
    Protocol(String),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::Connect(m) | HttpError::Protocol(m) => write!(f, "{m}"),
        }
    }
}

/// A response: status code and body.
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
}

/// `host:port` to a connected stream, trying every address the name resolves to.
pub(crate) fn connect(authority: &str, timeout: Duration) -> Result<TcpStream, HttpError> {
    let addrs = authority
        .to_socket_addrs()
        .map_err(|e| HttpError::Connect(format!("cannot resolve {authority}: {e}")))?;
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(HttpError::Connect(match last {
        Some(e) => e.to_string(),
        None => format!("{authority} resolves to no address"),
    }))
}

/// Where client commands find the portal's API token.
pub(crate) const TOKEN_ENV: &str = "SERIALHUB_TOKEN";

/// One request to `authority` (`host:port`); `body` is sent as JSON, with `$SERIALHUB_TOKEN`
/// as the bearer token when it is set.
pub(crate) fn request(
    authority: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<Response, HttpError> {
    let mut s = connect(authority, CONNECT_TIMEOUT)?;
    let proto = |e: io::Error| HttpError::Protocol(format!("{authority}: {e}"));
    s.set_read_timeout(Some(READ_TIMEOUT)).map_err(proto)?;
    s.set_write_timeout(Some(READ_TIMEOUT)).map_err(proto)?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nAccept: application/json\r\n\
         User-Agent: serialhub/{}\r\nConnection: close\r\n",
        env!("CARGO_PKG_VERSION")
    );
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    // The portal's API token (`[access] token_file` on the server), for requests that need it.
    if let Some(token) = std::env::var(TOKEN_ENV)
        .ok()
        .filter(|t| !t.trim().is_empty())
    {
        req.push_str(&format!("Authorization: Bearer {}\r\n", token.trim()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body.unwrap_or_default());
    s.write_all(&bytes).map_err(proto)?;
    let mut raw = Vec::new();
    s.take(MAX_RESPONSE)
        .read_to_end(&mut raw)
        .map_err(|e| HttpError::Protocol(format!("{authority}: reading the answer: {e}")))?;
    parse_response(&raw).map_err(|e| HttpError::Protocol(format!("{authority}: {e}")))
}

/// Parse a complete response (the server closed the connection after it).
pub(crate) fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("not an HTTP response (no end of headers)")?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    let status = match (parts.next(), parts.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/") => code
            .parse::<u16>()
            .map_err(|_| format!("bad status line {status_line:?}"))?,
        _ => return Err(format!("not an HTTP response: {status_line:?}")),
    };
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    let rest = &raw[end + 4..];
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(n) = length {
        if rest.len() < n {
            return Err(format!("body cut short ({} of {n} bytes)", rest.len()));
        }
        rest[..n].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response { status, body })
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("chunked body cut short")?;
        let size_text = String::from_utf8_lossy(&rest[..eol]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if rest.len() < size {
            return Err("chunked body cut short".into());
        }
        out.extend_from_slice(&rest[..size]);
        rest = rest.get(size + 2..).unwrap_or_default();
    }
}

/// Percent-encode a path segment (keys contain `:` and `/`).
pub(crate) fn encode_segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_chunked_and_eof_bodies() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}xx").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"{}"[..]));
        let r = parse_response(
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (404, &b"abcde"[..]));
        let r = parse_response(b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nhello").unwrap();
        assert_eq!(r.body, b"hello");
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab").is_err());
    }

    #[test]
    fn keys_are_encoded() {
        assert_eq!(encode_segment("serial:01 A/b"), "serial%3A01%20A%2Fb");
    }
}
