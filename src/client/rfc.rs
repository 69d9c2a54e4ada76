//! The client side of RFC 2217 over the project's own codecs ([`crate::protocol::telnet`],
//! [`crate::protocol::rfc2217`]): option negotiation, COM-PORT settings, DTR/RTS, data both ways.
//!
//! Blocking writes, reads driven by the caller's poll loop ([`Conn::read`]).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use log::debug;

use crate::protocol::line::{DataBits, Parity, StopBits};
use crate::protocol::rfc2217::{self, Command, Control, Direction, Setting};
use crate::protocol::telnet::{self, option, Event, Sink, Verb};

/// How long to wait for the server to agree to COM-PORT and to answer SET-BAUD.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Options we perform (WILL) and options we let the server perform (DO).
const OURS: [u8; 3] = [option::BINARY, option::SGA, option::COM_PORT];
const THEIRS: [u8; 2] = [option::BINARY, option::SGA];

/// One RFC 2217 connection.
pub(crate) struct Conn {
    sock: TcpStream,
    decoder: telnet::Decoder,
    /// Options we asked for (WILL/DO sent) or agreed to: never answer an answer twice.
    ours_sent: [bool; OURS.len()],
    theirs_sent: [bool; THEIRS.len()],
    refused: Vec<(Verb, u8)>,
    com_port: bool,
    /// The last baud the server reported.
    pub(crate) baud: Option<u32>,
    /// Data received while waiting for an answer, delivered by the next [`Conn::read`].
    held: Vec<u8>,
    /// What the server said about the port (its role when clients share it), not shown yet.
    news: Option<String>,
}

/// Decoded output of one read: data for the user and bytes to answer with.
struct ReadSink<'a> {
    data: &'a mut Vec<u8>,
    reply: Vec<u8>,
    conn_events: Vec<Event>,
}

impl Sink for ReadSink<'_> {
    fn data(&mut self, bytes: &[u8]) {
        self.data.extend_from_slice(bytes);
    }
    fn event(&mut self, event: Event) {
        self.conn_events.push(event);
    }
}

impl Conn {
    /// Connect to `host:port`, negotiate COM-PORT, set `baud` (waiting for the server's
    /// answer) and release DTR and RTS, so opening resets nothing.
    pub(crate) fn open(authority: &str, baud: u32) -> io::Result<Conn> {
        let sock = super::http::connect(authority, CONNECT_TIMEOUT)
            .map_err(|e| io::Error::new(io::ErrorKind::ConnectionRefused, e.to_string()))?;
        sock.set_nodelay(true)?;
        let mut c = Conn {
            sock,
            decoder: telnet::Decoder::new(),
            ours_sent: [true; OURS.len()],
            theirs_sent: [true; THEIRS.len()],
            refused: Vec::new(),
            com_port: false,
            baud: None,
            held: Vec::new(),
            news: None,
        };
        let mut out = Vec::new();
        for opt in OURS {
            telnet::negotiate(Verb::Will, opt, &mut out);
        }
        for opt in THEIRS {
            telnet::negotiate(Verb::Do, opt, &mut out);
        }
        c.sock.write_all(&out)?;
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        c.wait(deadline, |c| c.com_port, "agree to COM-PORT-OPTION")?;
        // Release RTS first: from both-asserted that passes through IO0-low, never EN-low.
        c.command(Command::SetControl(Control::Rts(false)))?;
        c.command(Command::SetControl(Control::Dtr(false)))?;
        c.command(Command::SetModemStateMask(0))?;
        c.set_baud_wait(baud)?;
        Ok(c)
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    /// Set the baud and wait for the server to confirm it.
    pub(crate) fn set_baud_wait(&mut self, baud: u32) -> io::Result<()> {
        self.baud = None;
        self.command(Command::SetBaud(Setting::Value(baud)))?;
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        self.wait(deadline, |c| c.baud.is_some(), "answer SET-BAUD")?;
        if self.baud != Some(baud) {
            debug!("asked for {baud} baud, the server runs {:?}", self.baud);
        }
        Ok(())
    }

    /// Read until `done` or the deadline, holding data for later.
    fn wait(
        &mut self,
        deadline: Instant,
        done: impl Fn(&Conn) -> bool,
        what: &str,
    ) -> io::Result<()> {
        while !done(self) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the server did not {what} within {ANSWER_TIMEOUT:?}"),
                ));
            }
            self.sock.set_read_timeout(Some(left))?;
            let mut held = std::mem::take(&mut self.held);
            let r = self.read_some(&mut held);
            self.held = held;
            match r {
                Ok(true) => {}
                Ok(false) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the server closed the connection before it would {what}"),
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        self.sock.set_read_timeout(None)
    }

    /// Read what the socket has (call when poll says readable): device data is appended to
    /// `data`. Returns false at end of stream.
    pub(crate) fn read(&mut self, data: &mut Vec<u8>) -> io::Result<bool> {
        data.append(&mut self.held);
        self.read_some(data)
    }

    /// What the server last said about the port, once.
    pub(crate) fn take_news(&mut self) -> Option<String> {
        self.news.take()
    }

    /// Data that arrived while waiting for answers.
    pub(crate) fn take_held(&mut self, data: &mut Vec<u8>) {
        data.append(&mut self.held);
    }

    fn read_some(&mut self, data: &mut Vec<u8>) -> io::Result<bool> {
        let mut buf = [0u8; 16384];
        let n = match self.sock.read(&mut buf) {
            Ok(0) => return Ok(false),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(true),
            Err(e) => return Err(e),
        };
        let mut sink = ReadSink {
            data,
            reply: Vec::new(),
            conn_events: Vec::new(),
        };
        self.decoder.decode(&mut buf[..n], &mut sink);
        let (events, mut reply) = (sink.conn_events, sink.reply);
        for ev in events {
            self.on_event(ev, &mut reply);
        }
        if !reply.is_empty() {
            self.sock.write_all(&reply)?;
        }
        Ok(true)
    }

    fn on_event(&mut self, ev: Event, out: &mut Vec<u8>) {
        match ev {
            Event::Negotiate(verb, opt) => self.negotiate(verb, opt, out),
            Event::Subnegotiation {
                option: option::COM_PORT,
                payload,
            } => match rfc2217::decode(&payload) {
                Ok((Direction::ServerToClient, Command::SetBaud(Setting::Value(b)))) => {
                    self.baud = Some(b)
                }
                // serialhub's news: "serialhub: observing; …", "serialhub: in control".
                Ok((Direction::ServerToClient, Command::Signature(text))) => {
                    let text = String::from_utf8_lossy(&text);
                    if let Some(news) = text.strip_prefix("serialhub: ") {
                        self.news = Some(news.chars().filter(|c| !c.is_control()).collect());
                    }
                }
                Ok((_, cmd)) => debug!("server: {cmd:?}"),
                Err(e) => debug!("server sent a bad COM-PORT subnegotiation: {e}"),
            },
            other => debug!("server: {other:?}"),
        }
    }

    fn negotiate(&mut self, verb: Verb, opt: u8, out: &mut Vec<u8>) {
        match verb {
            Verb::Do => match OURS.iter().position(|&o| o == opt) {
                Some(i) => {
                    if opt == option::COM_PORT {
                        self.com_port = true;
                    }
                    if !self.ours_sent[i] {
                        self.ours_sent[i] = true;
                        telnet::negotiate(Verb::Will, opt, out);
                    }
                }
                None => self.refuse(Verb::Wont, opt, out),
            },
            Verb::Will => match THEIRS.iter().position(|&o| o == opt) {
                Some(i) => {
                    if !self.theirs_sent[i] {
                        self.theirs_sent[i] = true;
                        telnet::negotiate(Verb::Do, opt, out);
                    }
                }
                // ECHO included: the device's output is all we want to see.
                None => self.refuse(Verb::Dont, opt, out),
            },
            Verb::Wont | Verb::Dont => {
                if opt == option::COM_PORT && verb == Verb::Dont {
                    debug!("the server refuses COM-PORT-OPTION");
                }
            }
        }
    }

    fn refuse(&mut self, verb: Verb, opt: u8, out: &mut Vec<u8>) {
        if !self.refused.contains(&(verb, opt)) {
            self.refused.push((verb, opt));
            telnet::negotiate(verb, opt, out);
        }
    }

    /// Send one COM-PORT command.
    pub(crate) fn command(&mut self, cmd: Command) -> io::Result<()> {
        let mut payload = Vec::new();
        rfc2217::encode(Direction::ClientToServer, &cmd, &mut payload);
        let mut out = Vec::new();
        telnet::subnegotiation(option::COM_PORT, &payload, &mut out);
        self.sock.write_all(&out)
    }

    /// DTR and RTS (pyserial's sense: true = asserted), RTS first.
    pub(crate) fn set_lines(&mut self, dtr: bool, rts: bool) -> io::Result<()> {
        self.command(Command::SetControl(Control::Rts(rts)))?;
        self.command(Command::SetControl(Control::Dtr(dtr)))
    }

    pub(crate) fn set_rts(&mut self, rts: bool) -> io::Result<()> {
        self.command(Command::SetControl(Control::Rts(rts)))
    }

    pub(crate) fn set_dtr(&mut self, dtr: bool) -> io::Result<()> {
        self.command(Command::SetControl(Control::Dtr(dtr)))
    }

    /// Line format (no waiting for the answers).
    pub(crate) fn set_format(
        &mut self,
        bits: DataBits,
        parity: Parity,
        stop: StopBits,
    ) -> io::Result<()> {
        self.command(Command::SetDataSize(Setting::Value(bits)))?;
        self.command(Command::SetParity(Setting::Value(parity)))?;
        self.command(Command::SetStopSize(Setting::Value(stop)))
    }

    /// Data for the device, Telnet-escaped.
    pub(crate) fn write(&mut self, data: &[u8]) -> io::Result<()> {
        let mut out = Vec::with_capacity(data.len() + 8);
        telnet::escape_into(data, &mut out);
        self.sock.write_all(&out)
    }
}
