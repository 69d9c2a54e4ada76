//! `serialhub pty TARGET --link PATH`: a local pseudo-terminal bridged to a remote port, for
//! tools that insist on a device path (espflash, minicom, an IDE's port picker).
//!
//! The master is in packet mode (TIOCPKT) and the slave has EXTPROC set, so whenever the
//! program on the slave changes its termios the master reads a TIOCPKT_IOCTL status byte;
//! we then read the termios through our own fd on the slave (TCGETS2: any integer rate) and
//! forward the baud and stop bits as RFC 2217 settings. (Linux's pty driver forces CS8 and
//! clears PARENB on every termios change, so data bits and parity never reach us: they are
//! fixed with `--format`, default 8N1.) Holding the slave
//! open also keeps the master from seeing EIO when the program closes and reopens the path.
//!
//! A pty has no DTR/RTS: programs cannot reset the board through it (the portal's reset
//! endpoint, or `serialhub monitor`'s Ctrl-T keys, can). The server does what a flasher
//! cannot: it enters the bootloader on esptool's (or espflash's) SYNC and follows its baud
//! changes. When the last program closes the link after using it, this client ends its
//! RFC 2217 session and opens a new one, so the server finishes what the program started —
//! a chip it put into its loader goes back to its application (unless `after = "stay"`) —
//! and the next program on the link, a monitor say, sees the application boot. (Who has the
//! slave open is told by inotify's open and close events on it: our own fd never closes.)

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use inotify::{EventMask, Inotify, WatchMask};
use lexopt::ValueExt;
use log::debug;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::device::Selector;
use super::error::ClientError;
use super::monitor::{install_signal_handlers, stopped, DEFAULT_BAUD};
use super::rfc::Conn;
use super::target::Target;
use crate::protocol::line::{DataBits, Parity, StopBits};

const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Device output nobody reads from the pty is dropped beyond this (as a UART overruns).
const MAX_PENDING: usize = 64 * 1024;
/// `TIOCPKT_IOCTL`: the slave's termios changed (with EXTPROC set).
const TIOCPKT_IOCTL: u8 = 64;
/// `CMSPAR` (mark/space parity), the generic Linux value.
const CMSPAR: libc::tcflag_t = 0o10000000000;

pub(crate) fn main(mut parser: lexopt::Parser) -> Result<(), ClientError> {
    use lexopt::Arg::{Long, Short, Value};
    let mut target = None;
    let mut sel = Selector::default();
    let mut link: Option<PathBuf> = None;
    let mut baud = DEFAULT_BAUD;
    let mut fixed = (DataBits::Eight, Parity::None);
    while let Some(arg) = parser.next()? {
        if let Some(field) = Selector::flag(&arg) {
            sel.set(field, &mut parser)?;
            continue;
        }
        match arg {
            Long("link") | Short('l') => link = Some(parser.value()?.into()),
            Long("baud") | Short('b') => {
                let v = parser.value()?.string()?;
                baud =
                    v.parse().ok().filter(|&b| b > 0).ok_or_else(|| {
                        ClientError::Usage(format!("--baud: `{v}` is not a rate"))
                    })?;
            }
            Long("format") => {
                let v = parser.value()?.string()?;
                fixed = parse_format(&v).ok_or_else(|| {
                    ClientError::Usage(format!(
                        "--format: `{v}` is not like 8N1 (5-8 data bits, N/E/O/M/S parity)"
                    ))
                })?;
            }
            Long("help") | Short('h') => {
                print!("{}", super::HELP);
                return Ok(());
            }
            Value(v) if target.is_none() => target = Some(v.string()?),
            a => return Err(a.unexpected().into()),
        }
    }
    let link = link.ok_or_else(|| ClientError::Usage("pty needs --link PATH".into()))?;
    let target = Target::from_args(target.as_deref(), sel)?;
    run(&target, &link, baud, fixed)
}

/// `8N1`-style: data bits and parity (the stop bits come from the pty).
fn parse_format(s: &str) -> Option<(DataBits, Parity)> {
    let b = s.as_bytes();
    let bits = match b.first()? {
        b'5' => DataBits::Five,
        b'6' => DataBits::Six,
        b'7' => DataBits::Seven,
        b'8' => DataBits::Eight,
        _ => return None,
    };
    let parity = match b.get(1).map(u8::to_ascii_uppercase) {
        None | Some(b'N') => Parity::None,
        Some(b'E') => Parity::Even,
        Some(b'O') => Parity::Odd,
        Some(b'M') => Parity::Mark,
        Some(b'S') => Parity::Space,
        _ => return None,
    };
    Some((bits, parity))
}

/// The line settings a program set on the pty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Format {
    baud: u32,
    bits: DataBits,
    parity: Parity,
    stop: StopBits,
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn get_termios2(f: &File) -> io::Result<libc::termios2> {
    // SAFETY: TCGETS2 fills a termios2.
    let mut t: libc::termios2 = unsafe { std::mem::zeroed() };
    check(unsafe { libc::ioctl(f.as_raw_fd(), libc::TCGETS2, &mut t) })?;
    Ok(t)
}

fn set_termios2(f: &File, t: &libc::termios2) -> io::Result<()> {
    // SAFETY: TCSETS2 reads a termios2.
    check(unsafe { libc::ioctl(f.as_raw_fd(), libc::TCSETS2, t) })?;
    Ok(())
}

fn format_of(t: &libc::termios2) -> Format {
    let c = t.c_cflag;
    let bits = match c & libc::CSIZE {
        libc::CS5 => DataBits::Five,
        libc::CS6 => DataBits::Six,
        libc::CS7 => DataBits::Seven,
        _ => DataBits::Eight,
    };
    let parity = if c & libc::PARENB == 0 {
        Parity::None
    } else if c & CMSPAR != 0 {
        if c & libc::PARODD != 0 {
            Parity::Mark
        } else {
            Parity::Space
        }
    } else if c & libc::PARODD != 0 {
        Parity::Odd
    } else {
        Parity::Even
    };
    let stop = if c & libc::CSTOPB != 0 {
        StopBits::Two
    } else {
        StopBits::One
    };
    Format {
        baud: t.c_ospeed,
        bits,
        parity,
        stop,
    }
}

/// The pty pair: master (packet mode, non-blocking) and our fd on the slave.
struct Pty {
    master: File,
    slave: File,
    path: PathBuf,
    /// Data bits and parity: a pty cannot carry them.
    fixed: (DataBits, Parity),
    /// Opens and closes of the slave by programs (ours was made before the watch).
    watch: Inotify,
    /// Programs that have the slave open now.
    openers: i32,
}

impl Pty {
    fn open(baud: u32, fixed: (DataBits, Parity)) -> io::Result<Pty> {
        let (master, path) =
            crate::device::open_pty_master(libc::O_RDWR | libc::O_NOCTTY | libc::O_NONBLOCK)?;
        let slave = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(&path)?;
        // Raw 8N1 at `baud`, and EXTPROC so termios changes are reported to the master.
        let mut t = get_termios2(&slave)?;
        t.c_iflag &= !(libc::IGNBRK
            | libc::BRKINT
            | libc::PARMRK
            | libc::ISTRIP
            | libc::INLCR
            | libc::IGNCR
            | libc::ICRNL
            | libc::IXON);
        t.c_oflag &= !libc::OPOST;
        t.c_lflag &= !(libc::ECHO | libc::ECHONL | libc::ICANON | libc::ISIG | libc::IEXTEN);
        t.c_lflag |= libc::EXTPROC;
        t.c_cflag &= !(libc::CSIZE | libc::PARENB | libc::CBAUD);
        t.c_cflag |= libc::CS8 | libc::BOTHER | libc::CREAD | libc::CLOCAL;
        t.c_ispeed = baud;
        t.c_ospeed = baud;
        set_termios2(&slave, &t)?;
        let one: libc::c_int = 1;
        // SAFETY: TIOCPKT reads an int.
        check(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCPKT, &one) })?;
        let watch = Inotify::init()?;
        watch
            .watches()
            .add(&path, WatchMask::OPEN | WatchMask::CLOSE)?;
        Ok(Pty {
            master,
            slave,
            path,
            fixed,
            watch,
            openers: 0,
        })
    }

    /// Back to `baud`, as the link was made: the next program starts where the first one
    /// did, not at the rate a flasher left behind.
    fn reset_baud(&self, baud: u32) -> io::Result<()> {
        let mut t = get_termios2(&self.slave)?;
        t.c_cflag &= !libc::CBAUD;
        t.c_cflag |= libc::BOTHER;
        t.c_ispeed = baud;
        t.c_ospeed = baud;
        set_termios2(&self.slave, &t)
    }

    /// Count the opens and closes since the last call; true if the last program closed.
    fn all_closed(&mut self) -> bool {
        let mut buf = [0u8; 1024];
        let before = self.openers;
        while let Ok(events) = self.watch.read_events(&mut buf) {
            let mut any = false;
            for ev in events {
                any = true;
                if ev.mask.contains(EventMask::OPEN) {
                    self.openers += 1;
                } else if ev
                    .mask
                    .intersects(EventMask::CLOSE_WRITE | EventMask::CLOSE_NOWRITE)
                {
                    self.openers = (self.openers - 1).max(0);
                }
            }
            if !any {
                break;
            }
        }
        let finished = before > 0 && self.openers == 0;
        if finished {
            // A program that opened the link exclusively (espflash: TIOCEXCL, as serialport
            // does by default) leaves the flag on the tty, which our own fd keeps alive: the
            // next program would get EBUSY. Clear it.
            // SAFETY: TIOCNXCL takes no argument.
            let _ = unsafe { libc::ioctl(self.slave.as_raw_fd(), libc::TIOCNXCL) };
        }
        finished
    }

    /// The format now in force; puts EXTPROC back if the program cleared it.
    fn format(&self) -> io::Result<Format> {
        let mut t = get_termios2(&self.slave)?;
        if t.c_lflag & libc::EXTPROC == 0 {
            t.c_lflag |= libc::EXTPROC;
            set_termios2(&self.slave, &t)?;
        }
        let mut f = format_of(&t);
        (f.bits, f.parity) = self.fixed;
        Ok(f)
    }
}

/// The symlink at PATH, removed on drop.
struct Link(PathBuf);

impl Link {
    fn create(link: &Path, target: &Path) -> Result<Link, ClientError> {
        match std::fs::symlink_metadata(link) {
            Ok(m) if m.file_type().is_symlink() => {
                let _ = std::fs::remove_file(link);
            }
            Ok(_) => {
                return Err(ClientError::Runtime(format!(
                    "{} exists and is not a symlink; not replacing it",
                    link.display()
                )))
            }
            Err(_) => {}
        }
        std::os::unix::fs::symlink(target, link).map_err(|e| {
            ClientError::Runtime(format!("cannot create the link {}: {e}", link.display()))
        })?;
        Ok(Link(link.to_path_buf()))
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

enum Outcome {
    Quit,
    Lost(String),
    /// The program that used the link closed it: a new session for the next one.
    Finished,
}

fn run(
    target: &Target,
    link: &Path,
    baud: u32,
    fixed: (DataBits, Parity),
) -> Result<(), ClientError> {
    install_signal_handlers();
    let mut pty = Pty::open(baud, fixed)
        .map_err(|e| ClientError::Runtime(format!("cannot create a pseudo-terminal: {e}")))?;
    let _link = Link::create(link, &pty.path)?;
    eprintln!(
        "serialhub: {} -> {} (no DTR/RTS through a pty: reset through the portal or `serialhub monitor`)",
        link.display(),
        pty.path.display()
    );
    let mut backoff = BACKOFF_START;
    let mut first = true;
    let mut pending: Vec<u8> = Vec::new();
    loop {
        if stopped() {
            return Ok(());
        }
        let format = pty
            .format()
            .map_err(|e| ClientError::Runtime(format!("pty termios: {e}")))?;
        let attempt = target
            .resolve()
            .and_then(|r| match open_with(&r.authority, format) {
                Ok(c) => Ok((r, c)),
                Err(e) => Err(ClientError::Runtime(format!("{}: {e}", r.url))),
            });
        match attempt {
            Ok((r, mut conn)) => {
                backoff = BACKOFF_START;
                eprintln!(
                    "serialhub: {} bridged to {} at {} baud",
                    link.display(),
                    r.url,
                    conn.baud.unwrap_or(format.baud)
                );
                match bridge(&mut pty, &mut conn, format, &mut pending) {
                    Outcome::Quit => return Ok(()),
                    Outcome::Finished => {
                        eprintln!(
                            "serialhub: the program on {} closed it; new session for the next one",
                            link.display()
                        );
                        drop(conn);
                        if let Err(e) = pty.reset_baud(baud) {
                            debug!("pty termios: {e}");
                        }
                        continue;
                    }
                    Outcome::Lost(why) => eprintln!(
                        "serialhub: {why}; reconnecting in {:.1} s",
                        backoff.as_secs_f32()
                    ),
                }
            }
            Err(e @ (ClientError::Usage(_) | ClientError::Select(_))) if first => return Err(e),
            Err(e) => eprintln!("serialhub: {e}; retrying in {:.1} s", backoff.as_secs_f32()),
        }
        first = false;
        // Meanwhile, what the program writes is dropped (the line is down).
        let until = Instant::now() + backoff;
        while Instant::now() < until && !stopped() {
            let left = until.saturating_duration_since(Instant::now());
            let mut fds = [PollFd::new(pty.master.as_fd(), PollFlags::POLLIN)];
            let _ = poll(
                &mut fds,
                PollTimeout::from(left.as_millis().min(200) as u16),
            );
            if fds[0].revents().is_some_and(|r| !r.is_empty()) {
                let mut buf = [0u8; 4096];
                let _ = (&pty.master).read(&mut buf);
            }
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

fn open_with(authority: &str, f: Format) -> io::Result<Conn> {
    let mut c = Conn::open(authority, f.baud)?;
    c.set_format(f.bits, f.parity, f.stop)?;
    Ok(c)
}

fn bridge(pty: &mut Pty, conn: &mut Conn, mut sent: Format, pending: &mut Vec<u8>) -> Outcome {
    // A program wrote through this session: it is finished when the last one closes.
    let mut used = false;
    let mut data = Vec::new();
    conn.take_held(&mut data);
    push_pending(pending, &data);
    data.clear();
    loop {
        if stopped() {
            return Outcome::Quit;
        }
        let (sock_ready, master_in, master_out, opened_or_closed) = {
            let mut master_flags = PollFlags::POLLIN;
            if !pending.is_empty() {
                master_flags |= PollFlags::POLLOUT;
            }
            let mut fds = [
                PollFd::new(conn.fd(), PollFlags::POLLIN),
                PollFd::new(pty.master.as_fd(), master_flags),
                PollFd::new(pty.watch.as_fd(), PollFlags::POLLIN),
            ];
            let timeout: u16 = if pending.is_empty() { 200 } else { 20 };
            match poll(&mut fds, PollTimeout::from(timeout)) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Outcome::Lost(format!("poll: {e}")),
            }
            let r0 = fds[0].revents().unwrap_or(PollFlags::empty());
            let r1 = fds[1].revents().unwrap_or(PollFlags::empty());
            let r2 = fds[2].revents().unwrap_or(PollFlags::empty());
            (
                !r0.is_empty(),
                r1.contains(PollFlags::POLLIN),
                r1.contains(PollFlags::POLLOUT),
                !r2.is_empty(),
            )
        };
        if opened_or_closed && pty.all_closed() && used {
            return Outcome::Finished;
        }
        if sock_ready {
            match conn.read(&mut data) {
                Ok(true) => {}
                Ok(false) => return Outcome::Lost("the server closed the connection".into()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Outcome::Lost(format!("connection lost: {e}")),
            }
            push_pending(pending, &data);
            data.clear();
        }
        if master_out || !pending.is_empty() {
            match (&pty.master).write(pending) {
                Ok(n) => {
                    pending.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => debug!("pty write: {e}"),
            }
        }
        if master_in {
            let mut buf = [0u8; 16385];
            let n = match (&pty.master).read(&mut buf) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue
                }
                Err(e) => {
                    debug!("pty read: {e}");
                    continue;
                }
            };
            if n == 0 {
                continue;
            }
            if buf[0] == 0 {
                // TIOCPKT_DATA: what the program wrote.
                used |= n > 1;
                if let Err(e) = conn.write(&buf[1..n]) {
                    return Outcome::Lost(format!("connection lost: {e}"));
                }
            } else if buf[0] & TIOCPKT_IOCTL != 0 {
                let now = match pty.format() {
                    Ok(f) => f,
                    Err(e) => {
                        debug!("pty termios: {e}");
                        continue;
                    }
                };
                if let Err(e) = forward(conn, sent, now) {
                    return Outcome::Lost(format!("connection lost: {e}"));
                }
                sent = now;
            }
        }
    }
}

/// Send what changed between `old` and `new`.
fn forward(conn: &mut Conn, old: Format, new: Format) -> io::Result<()> {
    use crate::protocol::rfc2217::{Command, Setting};
    if new == old {
        return Ok(());
    }
    debug!("pty settings {old:?} -> {new:?}");
    if new.baud != old.baud && new.baud > 0 {
        conn.command(Command::SetBaud(Setting::Value(new.baud)))?;
    }
    if new.bits != old.bits {
        conn.command(Command::SetDataSize(Setting::Value(new.bits)))?;
    }
    if new.parity != old.parity {
        conn.command(Command::SetParity(Setting::Value(new.parity)))?;
    }
    if new.stop != old.stop {
        conn.command(Command::SetStopSize(Setting::Value(new.stop)))?;
    }
    Ok(())
}

/// Queue device output for the pty, dropping the oldest beyond [`MAX_PENDING`].
fn push_pending(pending: &mut Vec<u8>, data: &[u8]) {
    pending.extend_from_slice(data);
    if pending.len() > MAX_PENDING {
        let excess = pending.len() - MAX_PENDING;
        pending.drain(..excess);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(parse_format("7e1"), Some((DataBits::Seven, Parity::Even)));
        assert_eq!(parse_format("8"), Some((DataBits::Eight, Parity::None)));
        assert_eq!(parse_format("9N1"), None);
    }

    #[test]
    fn a_program_setting_termios_is_reported_and_read() {
        let pty = Pty::open(115_200, (DataBits::Eight, Parity::None)).unwrap();
        assert_eq!(
            pty.format().unwrap(),
            Format {
                baud: 115_200,
                bits: DataBits::Eight,
                parity: Parity::None,
                stop: StopBits::One
            }
        );
        // A "program": another fd on the slave sets 460800 7E2 (clearing EXTPROC too); the
        // pty driver keeps only 8N of it.
        let prog = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(&pty.path)
            .unwrap();
        let mut t = get_termios2(&prog).unwrap();
        t.c_cflag &= !(libc::CBAUD | libc::CSIZE);
        t.c_cflag |= libc::BOTHER | libc::CS7 | libc::PARENB | libc::CSTOPB;
        t.c_ospeed = 460_800;
        t.c_ispeed = 460_800;
        t.c_lflag &= !libc::EXTPROC;
        set_termios2(&prog, &t).unwrap();
        (&prog).write_all(b"hi").unwrap();
        // The master sees the status byte, then the data.
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while got.len() < 2 && Instant::now() < deadline {
            let mut fds = [PollFd::new(pty.master.as_fd(), PollFlags::POLLIN)];
            let _ = poll(&mut fds, PollTimeout::from(100u16));
            let mut buf = [0u8; 64];
            if let Ok(n) = (&pty.master).read(&mut buf) {
                got.push(buf[..n].to_vec());
            }
        }
        assert!(got.iter().any(|p| p[0] & TIOCPKT_IOCTL != 0), "{got:?}");
        assert!(got.iter().any(|p| p == b"\0hi"), "{got:?}");
        let f = pty.format().unwrap();
        assert_eq!(
            (f.baud, f.bits, f.parity, f.stop),
            (460_800, DataBits::Eight, Parity::None, StopBits::Two)
        );
        // EXTPROC is back on.
        assert_ne!(get_termios2(&prog).unwrap().c_lflag & libc::EXTPROC, 0);
    }
}
