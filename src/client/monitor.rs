//! `serialhub monitor`: a serial monitor over RFC 2217 with idf-monitor's keys.
//!
//! One thread, one poll loop over the connection and (when it is a terminal) stdin. Output
//! is complete lines by default (`--raw`: bytes as they come); when stdin is a terminal a
//! partial line (a prompt) is shown after a short pause too.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lexopt::ValueExt;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::termios::{self, SetArg, Termios};

use super::device::Selector;
use super::error::ClientError;
use super::rfc::Conn;
use super::target::{Resolved, Target};

pub(crate) const DEFAULT_BAUD: u32 = 115_200;
const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A partial line is shown after this long without more output (interactive only).
const PARTIAL_AFTER: Duration = Duration::from_millis(100);

const CTRL_T: u8 = 0x14;
const CTRL_R: u8 = 0x12;
const CTRL_P: u8 = 0x10;
const CTRL_H: u8 = 0x08;
const CTRL_X: u8 = 0x18;
const CTRL_RBRACKET: u8 = 0x1d;

const KEYS_HELP: &str =
    "--- Ctrl-T Ctrl-R: reset into the application | Ctrl-T Ctrl-P: reset into the \
bootloader | Ctrl-T Ctrl-T: send Ctrl-T | Ctrl-]: quit ---";

pub(super) static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// SIGINT/SIGTERM/SIGHUP set `STOP` (and cut `poll` short: no SA_RESTART).
pub(super) fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction is valid; the handler only stores to an atomic.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

pub(super) fn stopped() -> bool {
    STOP.load(Ordering::SeqCst)
}

#[derive(Clone, Copy, Debug, Default)]
struct Options {
    baud: u32,
    raw: bool,
    timestamps: bool,
}

pub(crate) fn main(mut parser: lexopt::Parser) -> Result<(), ClientError> {
    use lexopt::Arg::{Long, Short, Value};
    let mut target = None;
    let mut sel = Selector::default();
    let mut opts = Options {
        baud: DEFAULT_BAUD,
        ..Options::default()
    };
    while let Some(arg) = parser.next()? {
        if let Some(field) = Selector::flag(&arg) {
            sel.set(field, &mut parser)?;
            continue;
        }
        match arg {
            Long("baud") | Short('b') => {
                let v = parser.value()?.string()?;
                opts.baud =
                    v.parse().ok().filter(|&b| b > 0).ok_or_else(|| {
                        ClientError::Usage(format!("--baud: `{v}` is not a rate"))
                    })?;
            }
            Long("raw") => opts.raw = true,
            Long("timestamps") | Short('t') => opts.timestamps = true,
            Long("help") | Short('h') => {
                print!("{}", super::HELP);
                return Ok(());
            }
            Value(v) if target.is_none() => target = Some(v.string()?),
            a => return Err(a.unexpected().into()),
        }
    }
    let target = Target::from_args(target.as_deref(), sel)?;
    run(&target, opts)
}

/// What a key (sequence) asks for.
#[derive(Debug, PartialEq, Eq)]
enum Action {
    Send(u8),
    ResetApp,
    ResetBootloader,
    Help,
    Quit,
}

/// idf-monitor's menu key: Ctrl-T then a command key.
#[derive(Default)]
struct Keys {
    menu: bool,
}

impl Keys {
    fn feed(&mut self, b: u8) -> Option<Action> {
        if std::mem::take(&mut self.menu) {
            return match b {
                CTRL_R | b'r' | b'R' => Some(Action::ResetApp),
                CTRL_P | b'p' | b'P' => Some(Action::ResetBootloader),
                CTRL_T => Some(Action::Send(CTRL_T)),
                CTRL_X | b'x' | b'X' | b'q' | CTRL_RBRACKET => Some(Action::Quit),
                CTRL_H | b'h' | b'H' | b'?' => Some(Action::Help),
                _ => None,
            };
        }
        match b {
            CTRL_RBRACKET => Some(Action::Quit),
            CTRL_T => {
                self.menu = true;
                None
            }
            b => Some(Action::Send(b)),
        }
    }
}

/// stdin in raw mode (keys go to the device as typed), output processing kept so `\n` still
/// returns the carriage; restored on drop.
struct RawTerminal {
    saved: Termios,
}

impl RawTerminal {
    fn enter() -> io::Result<RawTerminal> {
        let stdin = io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd())?;
        let mut t = saved.clone();
        termios::cfmakeraw(&mut t);
        t.output_flags = saved.output_flags;
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &t)?;
        Ok(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(io::stdin().as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

/// "HH:MM:SS.mmm " in local time.
fn timestamp() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() as libc::time_t;
    // SAFETY: localtime_r writes only into `tm`.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    unsafe { libc::localtime_r(&secs, &mut tm) };
    format!(
        "{:02}:{:02}:{:02}.{:03} ",
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        now.subsec_millis()
    )
}

/// Turns device bytes into what is printed.
struct Printer {
    raw: bool,
    timestamps: bool,
    /// Line mode: the current line; `shown` bytes of it are already printed.
    line: Vec<u8>,
    shown: usize,
    at_line_start: bool,
    last_data: Instant,
}

impl Printer {
    fn new(o: Options) -> Printer {
        Printer {
            raw: o.raw,
            timestamps: o.timestamps,
            line: Vec::new(),
            shown: 0,
            at_line_start: true,
            last_data: Instant::now(),
        }
    }

    /// Bytes to print for `data`.
    fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) {
        self.last_data = Instant::now();
        if self.raw {
            for &b in data {
                if self.at_line_start && self.timestamps {
                    out.extend_from_slice(timestamp().as_bytes());
                }
                out.push(b);
                self.at_line_start = b == b'\n';
            }
            return;
        }
        for &b in data {
            if b != b'\n' {
                self.line.push(b);
                continue;
            }
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if self.shown == 0 && self.timestamps {
                out.extend_from_slice(timestamp().as_bytes());
            }
            out.extend_from_slice(line.get(self.shown..).unwrap_or_default());
            out.push(b'\n');
            self.shown = 0;
        }
    }

    /// A partial line waiting since `PARTIAL_AFTER`: print what there is.
    fn flush_partial(&mut self, out: &mut Vec<u8>) {
        if self.raw || self.line.len() <= self.shown {
            return;
        }
        if self.shown == 0 && self.timestamps {
            out.extend_from_slice(timestamp().as_bytes());
        }
        let end = if self.line.last() == Some(&b'\r') {
            self.line.len() - 1
        } else {
            self.line.len()
        };
        if end > self.shown {
            out.extend_from_slice(&self.line[self.shown..end]);
            self.shown = end;
        }
    }

    fn partial_pending(&self) -> bool {
        !self.raw && self.line.len() > self.shown
    }
}

/// Write everything to stdout; Err when the reader went away (EPIPE).
fn emit(out: &mut Vec<u8>) -> io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    let mut stdout = io::stdout().lock();
    stdout.write_all(out)?;
    stdout.flush()?;
    out.clear();
    Ok(())
}

fn say(msg: &str, raw_tty: bool) {
    // In raw mode the terminal does not turn \n into \r\n on input echo, but output
    // processing is kept; still, start on a fresh line.
    let _ = raw_tty;
    eprintln!("--- {msg} ---");
}

enum Outcome {
    Quit,
    Lost(String),
}

fn run(target: &Target, opts: Options) -> Result<(), ClientError> {
    install_signal_handlers();
    let interactive = nix::unistd::isatty(io::stdin().as_raw_fd()).unwrap_or(false);
    let _raw = if interactive {
        Some(RawTerminal::enter().map_err(|e| {
            ClientError::Runtime(format!("cannot put the terminal in raw mode: {e}"))
        })?)
    } else {
        None
    };
    let mut printer = Printer::new(opts);
    let mut keys = Keys::default();
    let mut backoff = BACKOFF_START;
    let mut first = true;
    loop {
        if stopped() {
            break;
        }
        let attempt = target
            .resolve()
            .and_then(|r| match Conn::open(&r.authority, opts.baud) {
                Ok(c) => Ok((r, c)),
                Err(e) => Err(ClientError::Runtime(format!("{}: {e}", r.url))),
            });
        match attempt {
            Ok((resolved, mut conn)) => {
                backoff = BACKOFF_START;
                let baud = conn.baud.unwrap_or(opts.baud);
                say(
                    &format!(
                        "connected to {} at {baud} baud{}",
                        resolved.url,
                        if interactive {
                            " (Ctrl-] quits, Ctrl-T Ctrl-H: keys)"
                        } else {
                            ""
                        }
                    ),
                    interactive,
                );
                match session(&mut conn, &resolved, &mut printer, &mut keys, interactive) {
                    Outcome::Quit => break,
                    Outcome::Lost(why) => say(
                        &format!("{why}; reconnecting in {:.1} s", backoff.as_secs_f32()),
                        interactive,
                    ),
                }
            }
            // A fixed first failure with no portal or a bad selection is final: nothing
            // will change by waiting.
            Err(e @ (ClientError::Usage(_) | ClientError::Select(_))) if first => return Err(e),
            Err(e) => say(
                &format!("{e}; retrying in {:.1} s", backoff.as_secs_f32()),
                interactive,
            ),
        }
        first = false;
        if wait_backoff(backoff, interactive, &mut keys) {
            break;
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
    let mut out = Vec::new();
    printer.flush_partial(&mut out);
    let _ = emit(&mut out);
    Ok(())
}

/// Sleep `d`, watching stdin for Ctrl-] (true: quit).
fn wait_backoff(d: Duration, interactive: bool, keys: &mut Keys) -> bool {
    let until = Instant::now() + d;
    loop {
        if stopped() {
            return true;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let stdin = io::stdin();
        let mut fds = Vec::new();
        if interactive {
            fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
        }
        let ms = left.as_millis().min(200) as u16;
        let _ = poll(&mut fds, PollTimeout::from(ms));
        if fds
            .first()
            .and_then(|f| f.revents())
            .is_some_and(|r| !r.is_empty())
        {
            let mut buf = [0u8; 256];
            let n = io::stdin().lock().read(&mut buf).unwrap_or(0);
            if n == 0 {
                return true;
            }
            if buf[..n].iter().any(|&b| keys.feed(b) == Some(Action::Quit)) {
                return true;
            }
        }
    }
}

fn session(
    conn: &mut Conn,
    resolved: &Resolved,
    printer: &mut Printer,
    keys: &mut Keys,
    interactive: bool,
) -> Outcome {
    let mut data = Vec::new();
    let mut out = Vec::new();
    // Data that arrived with the answers to our settings.
    conn.take_held(&mut data);
    if let Some(news) = conn.take_news() {
        say(&news, interactive);
    }
    printer.feed(&data, &mut out);
    data.clear();
    if emit(&mut out).is_err() {
        return Outcome::Quit;
    }
    loop {
        if stopped() {
            return Outcome::Quit;
        }
        let timeout = if interactive && printer.partial_pending() {
            let since = printer.last_data.elapsed();
            if since >= PARTIAL_AFTER {
                printer.flush_partial(&mut out);
                if emit(&mut out).is_err() {
                    return Outcome::Quit;
                }
                200
            } else {
                (PARTIAL_AFTER - since).as_millis() as u16 + 1
            }
        } else {
            200
        };
        let stdin = io::stdin();
        let (sock_ready, stdin_ready) = {
            let sock: BorrowedFd = conn.fd();
            let mut fds = vec![PollFd::new(sock, PollFlags::POLLIN)];
            if interactive {
                fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, PollTimeout::from(timeout)) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Outcome::Lost(format!("poll: {e}")),
            }
            let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
            (ready(&fds[0]), fds.get(1).is_some_and(ready))
        };
        if sock_ready {
            match conn.read(&mut data) {
                Ok(true) => {}
                Ok(false) => return Outcome::Lost("the server closed the connection".into()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Outcome::Lost(format!("connection lost: {e}")),
            }
            printer.feed(&data, &mut out);
            data.clear();
            if emit(&mut out).is_err() {
                return Outcome::Quit;
            }
            // Sharing the port: say when we observe and when we are in control again.
            if let Some(news) = conn.take_news() {
                printer.flush_partial(&mut out);
                let _ = emit(&mut out);
                say(&news, interactive);
            }
        }
        if stdin_ready {
            let mut buf = [0u8; 1024];
            let n = match stdin.lock().read(&mut buf) {
                Ok(0) | Err(_) => return Outcome::Quit,
                Ok(n) => n,
            };
            let mut send = Vec::new();
            for &b in &buf[..n] {
                let Some(action) = keys.feed(b) else { continue };
                if let Action::Send(b) = action {
                    send.push(b);
                    continue;
                }
                if !send.is_empty() {
                    if let Err(e) = conn.write(&send) {
                        return Outcome::Lost(format!("connection lost: {e}"));
                    }
                    send.clear();
                }
                match action {
                    Action::Quit => return Outcome::Quit,
                    Action::Help => say(KEYS_HELP, interactive),
                    Action::ResetApp | Action::ResetBootloader => {
                        let boot = action == Action::ResetBootloader;
                        if let Err(e) = reset(conn, resolved, boot) {
                            return Outcome::Lost(format!("connection lost: {e}"));
                        }
                    }
                    Action::Send(_) => {}
                }
            }
            if !send.is_empty() {
                if let Err(e) = conn.write(&send) {
                    return Outcome::Lost(format!("connection lost: {e}"));
                }
            }
        }
    }
}

/// Reset the board: through the portal when we know it, else with esptool's DTR/RTS
/// sequences (the server's `esp` policy recognises them and plays them with its timings).
fn reset(conn: &mut Conn, resolved: &Resolved, bootloader: bool) -> io::Result<()> {
    let to = if bootloader { "bootloader" } else { "app" };
    let what = if bootloader {
        "the bootloader"
    } else {
        "the application"
    };
    if let Some((portal, key)) = &resolved.portal {
        match portal.reset(key, to) {
            Ok(_) => {
                say(&format!("reset into {what} (portal)"), true);
                return Ok(());
            }
            Err(e) => say(
                &format!("the portal could not reset ({e}); using DTR/RTS"),
                true,
            ),
        }
    }
    // EN low (RTS asserted, DTR released) for 100 ms...
    conn.set_lines(false, true)?;
    std::thread::sleep(Duration::from_millis(100));
    if bootloader {
        // ...then IO0 low as EN rises (esptool's ClassicReset), held 50 ms.
        conn.set_dtr(true)?;
        conn.set_rts(false)?;
        std::thread::sleep(Duration::from_millis(50));
        conn.set_dtr(false)?;
    } else {
        conn.set_rts(false)?;
    }
    say(&format!("reset into {what} (DTR/RTS)"), true);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn menu_keys() {
        let mut k = Keys::default();
        assert_eq!(k.feed(b'a'), Some(Action::Send(b'a')));
        assert_eq!(k.feed(CTRL_T), None);
        assert_eq!(k.feed(CTRL_R), Some(Action::ResetApp));
        assert_eq!(k.feed(CTRL_T), None);
        assert_eq!(k.feed(CTRL_P), Some(Action::ResetBootloader));
        assert_eq!(k.feed(CTRL_T), None);
        assert_eq!(k.feed(CTRL_T), Some(Action::Send(CTRL_T)));
        assert_eq!(k.feed(CTRL_T), None);
        assert_eq!(k.feed(CTRL_H), Some(Action::Help));
        assert_eq!(k.feed(CTRL_RBRACKET), Some(Action::Quit));
    }

    #[test]
    fn line_mode_prints_complete_lines() {
        let mut p = Printer::new(Options::default());
        let mut out = Vec::new();
        p.feed(b"one\r\ntw", &mut out);
        assert_eq!(out, b"one\n");
        p.flush_partial(&mut out);
        assert_eq!(out, b"one\ntw");
        p.feed(b"o\r\n", &mut out);
        assert_eq!(out, b"one\ntwo\n");
        let mut raw = Printer::new(Options {
            raw: true,
            ..Options::default()
        });
        let mut out = Vec::new();
        raw.feed(b"a\r\nb", &mut out);
        assert_eq!(out, b"a\r\nb");
    }
}
