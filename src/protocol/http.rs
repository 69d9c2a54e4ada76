//! HTTP/1.1 message framing, pure: request heads for the portal's bounded server, responses
//! for the client commands, and chunked bodies for both. The line and header syntax is
//! httparse's; the limits and what each header means are ours.

/// A request head, parsed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Head {
    pub(crate) method: String,
    pub(crate) target: String,
    pub(crate) host: Option<String>,
    pub(crate) authorization: Option<String>,
    pub(crate) content_type: Option<String>,
    pub(crate) content_length: usize,
    /// The body comes in chunks (`Transfer-Encoding: chunked`) instead.
    pub(crate) chunked: bool,
    pub(crate) expect_continue: bool,
    /// The client wants the connection closed after this request (or speaks HTTP/1.0).
    pub(crate) close: bool,
}

/// What the bytes received so far make.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parse {
    /// Not a whole head yet.
    Incomplete,
    /// A head of this many bytes.
    Head(Head, usize),
    /// A request the server refuses: status and reason.
    Refused(u16, &'static str),
}

/// Most header lines a request may have (a browser sends about twenty).
const MAX_HEADERS: usize = 64;

/// Parse a request head from the start of `buf`: at most `head_max` bytes of request line
/// and headers, a declared body of at most `body_max`. The request line and header syntax
/// are httparse's (the parser hyper uses; it refuses whitespace before a header's colon,
/// RFC 9112 §5.1); what a header means to us is decided here, and framing a proxy in front
/// could read otherwise (a signed or listed `Content-Length`, two of anything that frames or
/// names the request, `Transfer-Encoding` other than one plain `chunked`) is refused.
pub(crate) fn parse_head(buf: &[u8], head_max: usize, body_max: usize) -> Parse {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let end = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n > head_max => {
            return Parse::Refused(431, "request head too large")
        }
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= head_max => {
            return Parse::Refused(431, "request head too large")
        }
        Ok(httparse::Status::Partial) => return Parse::Incomplete,
        Err(httparse::Error::TooManyHeaders) => {
            return Parse::Refused(431, "too many header lines")
        }
        Err(httparse::Error::Version) => {
            return Parse::Refused(505, "only HTTP/1.0 and HTTP/1.1 are spoken here")
        }
        Err(httparse::Error::HeaderName | httparse::Error::HeaderValue) => {
            return Parse::Refused(400, "malformed header")
        }
        Err(_) => return Parse::Refused(400, "malformed request line"),
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Parse::Refused(400, "malformed request line");
    };
    if !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Parse::Refused(400, "malformed method");
    }
    if !target.starts_with('/') {
        return Parse::Refused(400, "the request target must be a path");
    }
    let mut head = Head {
        method: method.to_owned(),
        target: target.to_owned(),
        host: None,
        authorization: None,
        content_type: None,
        content_length: 0,
        chunked: false,
        expect_continue: false,
        close: version == 0,
    };
    let mut length: Option<usize> = None;
    for h in req.headers.iter() {
        let Ok(value) = std::str::from_utf8(h.value) else {
            return Parse::Refused(400, "a header value is not text");
        };
        let value = value.trim();
        let name = h.name.to_ascii_lowercase();
        match name.as_str() {
            "host" if head.host.is_some() => return Parse::Refused(400, "more than one Host"),
            "host" => head.host = Some(value.to_owned()),
            "authorization" => head.authorization = Some(value.to_owned()),
            "content-type" => head.content_type = Some(value.to_owned()),
            "content-length" => {
                // Digits only: `+5`, `5, 5`, ` ` and the like are refused, not read the way
                // Rust's integer parser (or a proxy in front) might read them.
                if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                    return Parse::Refused(400, "malformed Content-Length");
                }
                let n = value.parse::<u64>().unwrap_or(u64::MAX);
                if length.is_some_and(|l| l as u64 != n) {
                    return Parse::Refused(400, "conflicting Content-Length");
                }
                if n > body_max as u64 {
                    return Parse::Refused(413, "request body too large");
                }
                length = Some(n as usize);
            }
            // A second line would make it `chunked, chunked`: not a framing we take.
            "transfer-encoding" if head.chunked => {
                return Parse::Refused(400, "more than one Transfer-Encoding")
            }
            // HTTP/1.0 has no transfer codings (RFC 9112 §6.1: treat the framing as faulty).
            "transfer-encoding" if version == 0 => {
                return Parse::Refused(400, "Transfer-Encoding in an HTTP/1.0 request")
            }
            "transfer-encoding" if value.eq_ignore_ascii_case("chunked") => head.chunked = true,
            "transfer-encoding" if value.to_ascii_lowercase().contains("chunked") => {
                // `gzip, chunked` and the like: a coding we do not decode, or a list a
                // proxy may read differently.
                return Parse::Refused(400, "unsupported Transfer-Encoding");
            }
            "transfer-encoding" => return Parse::Refused(501, "unknown transfer encoding"),
            // A framing header spelled with `_` (`Transfer_Encoding`): a proxy that folds
            // `_` into `-` would frame the body differently than we do.
            "content_length" | "transfer_encoding" => {
                return Parse::Refused(400, "a framing header spelled with `_`")
            }
            "expect" if value.eq_ignore_ascii_case("100-continue") => head.expect_continue = true,
            "connection" => {
                let v = value.to_ascii_lowercase();
                if v.contains("close") {
                    head.close = true;
                } else if v.contains("keep-alive") {
                    head.close = false;
                }
            }
            _ => {}
        }
    }
    if head.chunked && length.is_some() {
        return Parse::Refused(400, "both Content-Length and chunked");
    }
    head.content_length = length.unwrap_or(0);
    Parse::Head(head, end)
}

/// What a chunked body's bytes so far make.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Chunks {
    /// More to come; this many input bytes were taken (their data is in the body).
    More(usize),
    /// The body is complete; this many input bytes were taken.
    Done(usize),
    Refused(u16, &'static str),
}

/// Take whole chunks from `input` into `body`, which may not grow past `limit`. Incremental:
/// feed it what has arrived and call again with the rest when more comes.
pub(crate) fn dechunk(input: &[u8], body: &mut Vec<u8>, limit: usize) -> Chunks {
    let mut at = 0;
    loop {
        let rest = &input[at..];
        let Some(eol) = memchr::memmem::find(rest, b"\r\n") else {
            // A size line is a few bytes; one that does not end is not a size line.
            return if rest.len() > 64 {
                Chunks::Refused(400, "malformed chunk size")
            } else {
                Chunks::More(at)
            };
        };
        let line = &rest[..eol];
        let hex = line.split(|&b| b == b';').next().unwrap_or_default();
        let size = std::str::from_utf8(hex)
            .ok()
            .and_then(|h| usize::from_str_radix(h.trim(), 16).ok());
        let Some(size) = size else {
            return Chunks::Refused(400, "malformed chunk size");
        };
        if size == 0 {
            // The last chunk; no trailers are taken, only the final empty line.
            return match rest.get(eol + 2..eol + 4) {
                Some(b"\r\n") => Chunks::Done(at + eol + 4),
                Some(_) => Chunks::Refused(400, "trailers are not accepted"),
                None => Chunks::More(at),
            };
        }
        if body.len().saturating_add(size) > limit {
            return Chunks::Refused(413, "request body too large");
        }
        let Some(data) = rest.get(eol + 2..eol + 2 + size + 2) else {
            return Chunks::More(at);
        };
        if &data[size..] != b"\r\n" {
            return Chunks::Refused(400, "malformed chunk");
        }
        body.extend_from_slice(&data[..size]);
        at += eol + 2 + size + 2;
    }
}

/// A response the client read to its end: status and body.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
}

/// Parse a complete response (the server closed the connection after it): a
/// `Content-Length`, chunked or read-to-the-end body.
pub(crate) fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let end = match resp.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return Err("not an HTTP response (no end of headers)".into())
        }
        Err(e) => return Err(format!("not an HTTP response ({e})")),
    };
    let status = resp.code.ok_or("not an HTTP response (no status)")?;
    let mut length = None;
    let mut chunked = false;
    for h in resp.headers.iter() {
        let value = String::from_utf8_lossy(h.value);
        if h.name.eq_ignore_ascii_case("content-length") {
            length = value.trim().parse::<usize>().ok();
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    let rest = &raw[end..];
    let body = if chunked {
        let mut body = Vec::new();
        match dechunk(rest, &mut body, rest.len()) {
            Chunks::Done(_) => body,
            Chunks::More(_) => return Err("chunked body cut short".into()),
            Chunks::Refused(_, why) => return Err(why.into()),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Parse {
        parse_head(text.as_bytes(), 8 * 1024, 64 * 1024)
    }

    #[test]
    fn heads_are_parsed_and_bad_ones_refused_with_the_right_status() {
        let Parse::Head(h, n) =
            head("POST /api/stop HTTP/1.1\r\nHost: pi:8080\r\nContent-Length: 5\r\n\r\nhello")
        else {
            panic!()
        };
        assert_eq!(n, 61);
        assert_eq!(
            (h.method.as_str(), h.target.as_str(), h.host.as_deref()),
            ("POST", "/api/stop", Some("pi:8080"))
        );
        assert_eq!((h.content_length, h.close), (5, false));
        assert!(matches!(head("GET / HTTP/1.0\r\n\r\n"), Parse::Head(h, _) if h.close));
        assert_eq!(head("GET / HTTP/1.1\r\nHost: x\r\n"), Parse::Incomplete);
        let refused = |t: &str| match head(t) {
            Parse::Refused(s, _) => s,
            other => panic!("{other:?}"),
        };
        assert_eq!(refused("GET / HTTP/2\r\n\r\n"), 505);
        assert_eq!(refused("get / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(refused("GET http://x/ HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(
            refused("POST / HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n"),
            413
        );
        assert_eq!(
            refused("POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            400
        );
        assert_eq!(
            refused("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"),
            501
        );
        assert_eq!(refused("GET / HTTP/1.1\r\nnocolon\r\n\r\n"), 400);
        assert_eq!(
            refused("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            400,
            "two Hosts: which one a proxy checked is anyone's guess"
        );
        let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(9000));
        assert_eq!(refused(&huge), 431, "no end yet, but already too long");
    }

    /// Framing a proxy in front might read differently (request smuggling) is refused, not
    /// guessed at (issue 26).
    #[test]
    fn ambiguous_framing_is_refused_with_400() {
        let status = |t: &str| match head(t) {
            Parse::Refused(s, _) => s,
            Parse::Head(h, _) => panic!("accepted {t:?}: {h:?}"),
            Parse::Incomplete => panic!("incomplete {t:?}"),
        };
        for t in [
            "POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\nhello",
            "POST / HTTP/1.1\r\nContent-Length: -0\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\nhello",
            "POST / HTTP/1.1\r\nContent-Length: 0x5\r\n\r\nhello",
            "POST / HTTP/1.1\r\nContent-Length:\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
            "POST / HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding\t: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length : 5\r\n\r\nhello",
            "POST / HTTP/1.1\r\nTransfer_Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\ncontent_length: 5\r\n\r\nhello",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n folded\r\n\r\n",
        ] {
            assert_eq!(status(t), 400, "{t:?}");
        }
        // What is plain stays accepted: leading zeros, any case of `chunked`.
        assert!(matches!(
            head("POST / HTTP/1.1\r\ncontent-length: 005\r\n\r\n"),
            Parse::Head(
                Head {
                    content_length: 5,
                    ..
                },
                _
            )
        ));
        assert!(matches!(
            head("POST / HTTP/1.1\r\nTRANSFER-ENCODING: Chunked\r\n\r\n"),
            Parse::Head(Head { chunked: true, .. }, _)
        ));
    }

    #[test]
    fn chunked_bodies_are_taken_whole_chunks_at_a_time_and_bounded() {
        let wire = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n";
        let mut body = Vec::new();
        assert_eq!(dechunk(wire, &mut body, 64), Chunks::Done(wire.len()));
        assert_eq!(body, b"hello world");
        for cut in 0..wire.len() {
            let mut body = Vec::new();
            let Chunks::More(n) = dechunk(&wire[..cut], &mut body, 64) else {
                panic!("cut {cut}")
            };
            assert_eq!(
                dechunk(&wire[n..], &mut body, 64),
                Chunks::Done(wire.len() - n)
            );
            assert_eq!(body, b"hello world", "cut {cut}");
        }
        let mut body = Vec::new();
        assert_eq!(
            dechunk(b"ffffffffff\r\n", &mut body, 64),
            Chunks::Refused(413, "request body too large")
        );
        assert!(matches!(
            dechunk(b"zz\r\n", &mut body, 64),
            Chunks::Refused(400, _)
        ));
        assert!(matches!(
            dechunk(b"2\r\nabX\r\n", &mut body, 64),
            Chunks::Refused(400, _)
        ));
    }

    #[test]
    fn too_many_header_lines_are_refused() {
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("X-{i}: y\r\n"))
            .collect();
        let text = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert!(matches!(head(&text), Parse::Refused(431, _)));
    }

    #[test]
    fn responses_with_content_length_chunked_and_eof_bodies() {
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
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab")
                .is_err()
        );
    }
}
