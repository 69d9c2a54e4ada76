//! A small bounded HTTP/1.1 server for the portal: one thread, one `poll()` over the
//! listener and at most `max_connections` connections, each with a head and a body limit and
//! deadlines — never a thread or an allocation a client can make the server multiply.
//!
//! It replaces tiny_http, which starts a thread per connection with no limit and no read
//! timeout, allocates a body's claimed length when it drops an unread one, and offers no way
//! in from outside to change either. When every slot is taken, one of the address holding
//! the most slots makes room (`room`), so a flood of slow, idle or never-reading connections
//! from one host cannot lock a real client out: its request arrives in one go and is
//! answered at once. No connection holds its slot for long either: an answer of 400 or more
//! closes it, it is closed after [`MAX_PIPELINED`] answers to requests sent without waiting
//! for them and after [`MAX_REQUESTS`] in all, and it has `write_time` in all, over its
//! life, for taking its answers.
//!
//! The parsing is pure (`protocol::http`: httparse for the head, our limits); the loop only
//! moves bytes. Requests are answered on
//! the loop's thread by the [`Handler`] (the portal's router, which reads a registry snapshot
//! or asks the supervisor, and answers at once).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use nix::poll::{PollFd, PollFlags};

use crate::daemon::backoff::{self, AcceptBackoff, Failed};
use crate::daemon::wait::poll_until;

use crate::protocol::http::{dechunk, parse_head, Chunks, Head, Parse};

mod room;
use room::{victim, Seat};

/// A request as the router sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HttpRequest<'a> {
    pub(crate) method: &'a str,
    /// Path and query, as sent (`/api/devices/serial%3A01/log?since=5`).
    pub(crate) url: &'a str,
    /// The `Host` header.
    pub(crate) host: Option<&'a str>,
    pub(crate) remote: Option<SocketAddr>,
    /// The `Authorization` header.
    pub(crate) authorization: Option<&'a str>,
    /// The `Content-Type` header.
    pub(crate) content_type: Option<&'a str>,
    pub(crate) body: &'a [u8],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HttpResponse {
    pub(crate) status: u16,
    pub(crate) content_type: &'static str,
    pub(crate) body: Vec<u8>,
    /// The `Allow` header of a 405.
    pub(crate) allow: Option<String>,
    /// The `Retry-After` header of a 429, in seconds.
    pub(crate) retry_after: Option<u64>,
}

/// Answers requests.
pub(crate) trait Handler: Send + 'static {
    fn handle(&self, req: &HttpRequest) -> HttpResponse;
    /// The answer to a request the server refused before routing it (too large, malformed,
    /// too slow).
    fn refuse(&self, status: u16, why: &str) -> HttpResponse;
}

/// The server's bounds.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Connections held at once.
    pub(crate) connections: usize,
    /// Request line and headers.
    pub(crate) head: usize,
    /// Request body.
    pub(crate) body: usize,
    /// From a connection's first byte of a request (or its opening) to the end of its head.
    pub(crate) head_time: Duration,
    /// For the body, once the head is in.
    pub(crate) body_time: Duration,
    /// Between requests on a kept-alive connection.
    pub(crate) idle_time: Duration,
    /// For the client to take the responses: in all, over a connection's life (the time an
    /// answer waits for the client to make room for it, not restarted per answer).
    pub(crate) write_time: Duration,
}

impl Limits {
    pub(crate) fn portal(body: usize) -> Limits {
        Limits {
            connections: 32,
            head: 8 * 1024,
            body,
            head_time: Duration::from_secs(5),
            body_time: Duration::from_secs(10),
            idle_time: Duration::from_secs(10),
            write_time: Duration::from_secs(10),
        }
    }
}

/// Answers in a row to requests the client sent without waiting for the previous answer
/// (pipelining, which no browser or common client does): the last of them closes the
/// connection, and what else was sent is dropped.
pub(crate) const MAX_PIPELINED: u32 = 8;
/// Requests answered on one connection; the last answer closes it (the client reconnects).
pub(crate) const MAX_REQUESTS: u32 = 100;
/// New connections taken per round, so a flood of them cannot starve the ones held.
const ACCEPTS_PER_ROUND: usize = 64;
const READ_CHUNK: usize = 4096;

/// A response on the wire; the body is left out for HEAD.
pub(crate) fn serialize(r: &HttpResponse, head_only: bool, close: bool, out: &mut Vec<u8>) {
    use std::fmt::Write as _;
    let mut h = String::with_capacity(256);
    let _ = write!(
        h,
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len()
    );
    if let Some(a) = &r.allow {
        let _ = write!(h, "Allow: {a}\r\n");
    }
    if let Some(s) = r.retry_after {
        let _ = write!(h, "Retry-After: {s}\r\n");
    }
    h.push_str(if close {
        "Connection: close\r\n\r\n"
    } else {
        "Connection: keep-alive\r\n\r\n"
    });
    out.extend_from_slice(h.as_bytes());
    if !head_only {
        out.extend_from_slice(&r.body);
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// Where a connection is.
enum Stage {
    /// Waiting for (the rest of) a request head.
    Head,
    /// Waiting for `need` body bytes.
    Body { head: Head, need: usize },
    /// Waiting for the rest of a chunked body.
    Chunked { head: Head, body: Vec<u8> },
    /// Sending a response; then closing, or waiting for the next request.
    Write { close: bool },
}

struct Conn {
    stream: TcpStream,
    addr: SocketAddr,
    opened: Instant,
    /// Bytes received in all.
    received: u64,
    stage: Stage,
    deadline: Instant,
    input: Vec<u8>,
    out: Vec<u8>,
    sent: usize,
    /// Requests answered in all, and in the current run of pipelined ones.
    answered: u32,
    run: u32,
    /// What is left of `write_time`, and since when the answer being written waits.
    write_left: Duration,
    write_since: Instant,
}

impl Conn {
    fn seat(&self) -> Seat {
        Seat {
            ip: self.addr.ip(),
            opened: self.opened,
            received: self.received,
            writing: matches!(self.stage, Stage::Write { .. }),
        }
    }
}

/// Where a connection's work stands after a step.
enum Step {
    /// Waiting for the client (to send, or to take what is written).
    Wait,
    /// Done with: close it.
    Close,
    /// More can be done now (an answer is ready to write, or a pipelined request is here).
    Again,
}

/// Serve `listener` until the process exits.
pub(crate) fn spawn(
    listener: TcpListener,
    handler: impl Handler,
    limits: Limits,
) -> io::Result<JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("portal".into())
        .spawn(move || Server::new(listener, handler, limits).run())
}

struct Server<H> {
    listener: TcpListener,
    handler: H,
    limits: Limits,
    conns: Vec<Conn>,
    /// Accepting failed (out of descriptors): the listener rests, longer while it fails.
    rest: AcceptBackoff,
}

impl<H: Handler> Server<H> {
    fn new(listener: TcpListener, handler: H, limits: Limits) -> Self {
        Server {
            listener,
            handler,
            limits,
            conns: Vec::with_capacity(limits.connections),
            rest: AcceptBackoff::default(),
        }
    }

    fn run(&mut self) {
        let mut ready: Vec<PollFlags> = Vec::with_capacity(self.limits.connections + 1);
        loop {
            let now = Instant::now();
            let resting = self.rest.resting(now);
            let deadline = self
                .conns
                .iter()
                .map(|c| c.deadline)
                .chain(self.rest.deadline().filter(|_| resting))
                .min();
            ready.clear();
            {
                let mut fds = Vec::with_capacity(self.conns.len() + 1);
                let listen = if resting {
                    PollFlags::empty()
                } else {
                    PollFlags::POLLIN
                };
                fds.push(PollFd::new(self.listener.as_fd(), listen));
                for c in &self.conns {
                    let ev = match c.stage {
                        Stage::Write { .. } => PollFlags::POLLOUT,
                        _ => PollFlags::POLLIN,
                    };
                    fds.push(PollFd::new(c.stream.as_fd(), ev));
                }
                // Interrupted: no revents, and the round goes on to the deadlines.
                poll_until(&mut fds, deadline, &"portal");
                ready.extend(
                    fds.iter()
                        .map(|f| f.revents().unwrap_or(PollFlags::empty())),
                );
            }
            let now = Instant::now();
            // Connections first (by index, from the back, so closing one moves none of the
            // others still to be looked at), then new ones.
            for i in (0..self.conns.len()).rev() {
                let ev = ready.get(i + 1).copied().unwrap_or(PollFlags::empty());
                let keep = if !ev.is_empty() {
                    self.on_ready(i, ev, now)
                } else {
                    true
                };
                let keep = keep && self.on_time(i, now);
                if !keep {
                    self.conns.swap_remove(i);
                }
            }
            if ready.first().is_some_and(|e| e.contains(PollFlags::POLLIN)) || self.rest.due(now) {
                self.accept(now);
            }
        }
    }

    fn accept(&mut self, now: Instant) {
        for _ in 0..ACCEPTS_PER_ROUND {
            let (stream, addr) = match self.listener.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if self.rest.failed(now) == Failed::First {
                        warn!("portal: cannot accept connections: {e}; retrying every {:.0} s at most (too many open files? raise LimitNOFILE)", backoff::LONGEST.as_secs_f32());
                    }
                    return;
                }
            };
            if let Some(failures) = self.rest.accepted() {
                info!("portal: accepting connections again ({failures} attempts failed)");
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let _ = stream.set_nodelay(true);
            if self.conns.len() >= self.limits.connections {
                let seats: Vec<Seat> = self.conns.iter().map(Conn::seat).collect();
                let Some(i) = victim(&seats, addr.ip(), now) else {
                    continue;
                };
                debug!(
                    "portal: {} makes room for a connection from {addr}",
                    self.conns[i].addr
                );
                self.conns.swap_remove(i);
            }
            self.conns.push(Conn {
                stream,
                addr,
                opened: now,
                received: 0,
                stage: Stage::Head,
                deadline: now + self.limits.head_time,
                input: Vec::new(),
                out: Vec::new(),
                sent: 0,
                answered: 0,
                run: 0,
                write_left: self.limits.write_time,
                write_since: now,
            });
        }
    }

    /// A connection's deadline: a request that is late gets 408, an idle one is closed.
    fn on_time(&mut self, i: usize, now: Instant) -> bool {
        let c = &mut self.conns[i];
        if now < c.deadline {
            return true;
        }
        match c.stage {
            Stage::Head if c.input.is_empty() => false,
            Stage::Head | Stage::Body { .. } | Stage::Chunked { .. } => {
                let r = self
                    .handler
                    .refuse(408, "the request took too long to arrive");
                let mut out = Vec::new();
                serialize(&r, false, true, &mut out);
                let _ = c.stream.write(&out);
                false
            }
            Stage::Write { .. } => false,
        }
    }

    /// Readable or writable: move bytes, answer what is complete. False: close it.
    fn on_ready(&mut self, i: usize, ev: PollFlags, now: Instant) -> bool {
        if ev.contains(PollFlags::POLLOUT) {
            return self.drive(i, now);
        }
        if !ev.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
            return true;
        }
        let c = &mut self.conns[i];
        let room = match &c.stage {
            Stage::Head => self.limits.head.saturating_sub(c.input.len()),
            Stage::Body { need, .. } => need.saturating_sub(c.input.len()),
            Stage::Chunked { .. } => READ_CHUNK,
            Stage::Write { .. } => return true,
        };
        let mut buf = [0u8; READ_CHUNK];
        let want = room.clamp(1, READ_CHUNK);
        match c.stream.read(&mut buf[..want]) {
            Ok(0) => return false,
            Ok(n) => {
                c.received += n as u64;
                c.input.extend_from_slice(&buf[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return true,
            Err(_) => return false,
        }
        self.drive(i, now)
    }

    /// Answer and write until the connection has to wait for its client. A loop, not
    /// recursion: each turn takes one request or writes one answer, and a run of pipelined
    /// requests ends after [`MAX_PIPELINED`] answers. False: close it.
    fn drive(&mut self, i: usize, now: Instant) -> bool {
        loop {
            let step = match self.conns[i].stage {
                Stage::Write { .. } => self.write(i, now),
                _ => self.progress(i, now),
            };
            match step {
                Step::Wait => return true,
                Step::Close => return false,
                Step::Again => {}
            }
        }
    }

    /// Parse and answer what the connection has sent.
    fn progress(&mut self, i: usize, now: Instant) -> Step {
        let limits = self.limits;
        let c = &mut self.conns[i];
        if let Stage::Head = c.stage {
            match parse_head(&c.input, limits.head, limits.body) {
                Parse::Incomplete => return Step::Wait,
                Parse::Refused(status, why) => {
                    debug!("portal: {} refused: {status} {why}", c.addr);
                    let r = self.handler.refuse(status, why);
                    return self.respond(i, &r, false, true, now);
                }
                Parse::Head(head, n) => {
                    c.input.drain(..n);
                    if head.expect_continue && head.content_length > 0 {
                        let _ = c.stream.write(b"HTTP/1.1 100 Continue\r\n\r\n");
                    }
                    let need = head.content_length;
                    c.stage = match head.chunked {
                        true => Stage::Chunked {
                            head,
                            body: Vec::new(),
                        },
                        false => Stage::Body { head, need },
                    };
                    c.deadline = now + limits.body_time;
                }
            }
        }
        let c = &mut self.conns[i];
        let (head, body) = match &mut c.stage {
            Stage::Body { need, .. } => {
                if c.input.len() < *need {
                    return Step::Wait;
                }
                let need = *need;
                let Stage::Body { head, .. } = std::mem::replace(&mut c.stage, Stage::Head) else {
                    return Step::Wait;
                };
                (head, c.input.drain(..need).collect::<Vec<u8>>())
            }
            Stage::Chunked { body, .. } => match dechunk(&c.input, body, limits.body) {
                Chunks::More(n) => {
                    c.input.drain(..n);
                    return Step::Wait;
                }
                Chunks::Refused(status, why) => {
                    debug!("portal: {} refused: {status} {why}", c.addr);
                    let r = self.handler.refuse(status, why);
                    return self.respond(i, &r, false, true, now);
                }
                Chunks::Done(n) => {
                    c.input.drain(..n);
                    let Stage::Chunked { head, body } =
                        std::mem::replace(&mut c.stage, Stage::Head)
                    else {
                        return Step::Wait;
                    };
                    (head, body)
                }
            },
            _ => return Step::Wait,
        };
        let req = HttpRequest {
            method: &head.method,
            url: &head.target,
            host: head.host.as_deref(),
            remote: Some(c.addr),
            authorization: head.authorization.as_deref(),
            content_type: head.content_type.as_deref(),
            body: &body,
        };
        let r = self.handler.handle(&req);
        debug!(
            "portal: {} {} {} -> {}",
            req.remote.map_or_else(|| "?".into(), |a| a.to_string()),
            head.method,
            head.target,
            r.status
        );
        self.respond(i, &r, head.method == "HEAD", head.close, now)
    }

    /// Queue an answer. The connection is closed after it when the client asked, when it is
    /// a refusal or an error (400 and up: whoever was refused tries again on a new
    /// connection, and keeps no slot meanwhile), or when the connection has had its share of
    /// answers.
    fn respond(
        &mut self,
        i: usize,
        r: &HttpResponse,
        head_only: bool,
        close: bool,
        now: Instant,
    ) -> Step {
        let c = &mut self.conns[i];
        c.answered += 1;
        c.run += 1;
        let close =
            close || r.status >= 400 || c.run >= MAX_PIPELINED || c.answered >= MAX_REQUESTS;
        c.out.clear();
        c.sent = 0;
        serialize(r, head_only, close, &mut c.out);
        c.stage = Stage::Write { close };
        // What is left of the connection's write time, not a new deadline per answer.
        c.write_since = now;
        c.deadline = now + c.write_left;
        Step::Again
    }

    fn write(&mut self, i: usize, now: Instant) -> Step {
        let c = &mut self.conns[i];
        let Stage::Write { close } = c.stage else {
            return Step::Again;
        };
        while c.sent < c.out.len() {
            match c.stream.write(&c.out[c.sent..]) {
                Ok(0) => return Step::Close,
                Ok(n) => c.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Wait,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Step::Close,
            }
        }
        let waited = now.saturating_duration_since(c.write_since);
        c.write_left = c.write_left.saturating_sub(waited);
        if close {
            return Step::Close;
        }
        // Kept alive: the next request (perhaps already here) has the idle time to come.
        c.out = Vec::new();
        c.stage = Stage::Head;
        c.deadline = now + self.limits.idle_time;
        if c.input.is_empty() {
            // The client waited for this answer: whatever it sends next starts a new run.
            c.run = 0;
            Step::Wait
        } else {
            Step::Again
        }
    }
}

#[cfg(test)]
mod tests;
