//! A tiny blocking HTTP/1.1 client for the portal's JSON API: one request per connection
//! (`Connection: close`), `Content-Length`, chunked or read-to-EOF bodies. Enough for
//! serialhub's portal and the old Python one; no TLS, no redirects.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::protocol::http::parse_response;
pub(crate) use crate::protocol::http::Response;

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

/// `$SERIALHUB_TOKEN`, when it is set (the caller decides whom it is sent to).
pub(crate) fn token() -> Option<String> {
    std::env::var(TOKEN_ENV)
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// One request to `authority` (`host:port`); `body` is sent as JSON, and `token` as the
/// bearer token when given.
pub(crate) fn request(
    authority: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    token: Option<&str>,
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
    // The portal's API token (`[access] token_file` on the server), when the caller sends it.
    if let Some(token) = token {
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
    fn keys_are_encoded() {
        assert_eq!(encode_segment("serial:01 A/b"), "serial%3A01%20A%2Fb");
    }
}
