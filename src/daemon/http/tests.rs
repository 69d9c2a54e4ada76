use super::*;

#[test]
fn responses_carry_length_and_connection_and_no_body_for_head() {
    let r = HttpResponse {
        status: 405,
        content_type: "application/json",
        body: b"{}\n".to_vec(),
        allow: Some("GET, HEAD".into()),
        retry_after: None,
    };
    let mut out = Vec::new();
    serialize(&r, false, true, &mut out);
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
        "{text}"
    );
    assert!(text.contains("Content-Length: 3\r\n") && text.contains("Allow: GET, HEAD\r\n"));
    assert!(text.ends_with("Connection: close\r\n\r\n{}\n"));
    let mut out = Vec::new();
    serialize(&r, true, false, &mut out);
    assert!(String::from_utf8(out)
        .unwrap()
        .ends_with("keep-alive\r\n\r\n"));
}

// ---------------------------------------------------------------------------------------------
// The server over loopback sockets: a client that floods, pipelines or never reads keeps no
// one else out (issue 26).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};

/// `/big`: 1 MiB; `/huge`: 16 MiB (more than the socket buffers can take); `/bad`: 404;
/// anything else: a small 200.
struct Bench;

impl Handler for Bench {
    fn handle(&self, req: &HttpRequest) -> HttpResponse {
        let (status, body) = match req.url {
            "/big" => (200, vec![b'x'; 1 << 20]),
            "/huge" => (200, vec![b'x'; 16 << 20]),
            "/bad" => (404, b"{\"error\":\"Not found\"}".to_vec()),
            _ => (200, b"{}".to_vec()),
        };
        HttpResponse {
            status,
            content_type: "application/json",
            body,
            allow: None,
            retry_after: None,
        }
    }

    fn refuse(&self, status: u16, _why: &str) -> HttpResponse {
        HttpResponse {
            status,
            content_type: "application/json",
            body: b"{}".to_vec(),
            allow: None,
            retry_after: None,
        }
    }
}

fn serve(limits: Limits) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    spawn(l, Bench, limits).unwrap();
    addr
}

/// A connection from `from` (any 127.x address) whose receive buffer is as small as the
/// kernel allows, so what it does not read backs up into the server at once.
fn small_window(to: SocketAddr, from: Ipv4Addr) -> TcpStream {
    use nix::sys::socket::{
        bind, connect, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn,
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    setsockopt(&fd, sockopt::RcvBuf, &1024).unwrap();
    bind(
        fd.as_raw_fd(),
        &SockaddrIn::from(SocketAddrV4::new(from, 0)),
    )
    .unwrap();
    let SocketAddr::V4(to) = to else { panic!() };
    connect(fd.as_raw_fd(), &SockaddrIn::from(to)).unwrap();
    // SAFETY: a connected TCP socket we own.
    unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) }
}

/// Read one response: (status, head, body); `None` if the connection ends first.
fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(u16, String, Vec<u8>)> {
    let mut chunk = [0u8; 65536];
    let end = loop {
        if let Some(i) = memchr::memmem::find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))?
        .trim()
        .parse()
        .ok()?;
    while buf.len() < end + len {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = buf[end..end + len].to_vec();
    buf.drain(..end + len);
    Some((status, head, body))
}

/// `GET path` on a new connection: the status and how long the answer took.
fn timed_get(addr: SocketAddr, path: &str) -> (Option<u16>, Duration) {
    let t0 = Instant::now();
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
        return (None, t0.elapsed());
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return (None, t0.elapsed());
    }
    let status = read_response(&mut s, &mut Vec::new()).map(|(st, _, _)| st);
    (status, t0.elapsed())
}

/// 32 connections each sending 256 pipelined requests and never reading, from `from`;
/// then a plain `GET /api/info`-like request from 127.0.0.1 on a new connection.
fn flood_then_ask(path: &str, from: Ipv4Addr) -> (Option<u16>, Duration) {
    let addr = serve(Limits::portal(64 * 1024));
    let burst = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").repeat(256);
    let flood: Vec<TcpStream> = (0..32)
        .map(|_| {
            let mut s = small_window(addr, from);
            s.set_nonblocking(true).unwrap();
            let _ = s.write(burst.as_bytes());
            s
        })
        .collect();
    // Every one of them aged past the grace a new connection gets, and its answers backed up.
    std::thread::sleep(Duration::from_millis(500));
    let answer = timed_get(addr, "/info");
    drop(flood);
    answer
}

#[test]
fn pipelined_floods_that_never_read_lock_nobody_out() {
    let loopback = Ipv4Addr::LOCALHOST;
    for (path, from) in [
        ("/big", loopback),
        ("/bad", loopback),
        ("/big", Ipv4Addr::new(127, 0, 0, 2)),
    ] {
        let (status, took) = flood_then_ask(path, from);
        assert_eq!(
            status,
            Some(200),
            "flood of {path} from {from}: unanswered after {took:?}"
        );
        assert!(
            took < Duration::from_secs(1),
            "{path} from {from}: {took:?}"
        );
    }
}

#[test]
fn pipelining_is_answered_eight_at_a_time_then_closed() {
    let addr = serve(Limits::portal(64 * 1024));
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(
        b"GET /info HTTP/1.1\r\nHost: x\r\n\r\n"
            .repeat(20)
            .as_slice(),
    )
    .unwrap();
    let mut buf = Vec::new();
    let mut heads = Vec::new();
    while let Some((status, head, _)) = read_response(&mut s, &mut buf) {
        assert_eq!(status, 200);
        heads.push(head);
    }
    assert_eq!(heads.len(), MAX_PIPELINED as usize, "{heads:?}");
    assert!(heads[..7].iter().all(|h| h.contains("keep-alive")));
    assert!(heads[7].contains("Connection: close"), "{}", heads[7]);
}

#[test]
fn an_error_closes_the_connection_and_so_does_the_hundredth_answer() {
    let addr = serve(Limits::portal(64 * 1024));
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /bad HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let (status, head, _) = read_response(&mut s, &mut buf).unwrap();
    assert!(
        status == 404 && head.contains("Connection: close"),
        "{head}"
    );
    assert_eq!(s.read(&mut [0u8; 16]).unwrap(), 0, "closed after the 404");
    // A client that waits for each answer is answered MAX_REQUESTS times, then closed.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = Vec::new();
    for n in 1..=MAX_REQUESTS {
        s.write_all(b"GET /info HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let (_, head, _) = read_response(&mut s, &mut buf).unwrap();
        assert_eq!(head.contains("Connection: close"), n == MAX_REQUESTS, "{n}");
    }
    assert_eq!(s.read(&mut [0u8; 16]).unwrap(), 0);
}

#[test]
fn the_write_time_is_for_the_whole_connection_not_each_answer() {
    let addr = serve(Limits {
        write_time: Duration::from_millis(600),
        ..Limits::portal(64 * 1024)
    });
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = Vec::new();
    // Each answer waits 400 ms for the client: the first within the 600 ms, the second not.
    s.write_all(b"GET /huge HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let first = read_response(&mut s, &mut buf);
    assert!(first.is_some_and(|(st, _, b)| st == 200 && b.len() == 16 << 20));
    s.write_all(b"GET /huge HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    assert!(
        read_response(&mut s, &mut buf).is_none(),
        "the second answer had the rest of the 600 ms, not 600 ms more"
    );
}

#[test]
fn a_client_that_waits_is_never_cut_by_the_write_time() {
    // Many answers taken at once add up to nothing.
    let addr = serve(Limits {
        write_time: Duration::from_millis(300),
        ..Limits::portal(64 * 1024)
    });
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = Vec::new();
    for _ in 0..20 {
        s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let (st, _, body) = read_response(&mut s, &mut buf).unwrap();
        assert_eq!((st, body.len()), (200, 1 << 20));
    }
}
