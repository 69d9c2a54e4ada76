//! `serialhub sim --pty LINK`: the simulated chip on a pseudo-terminal, so esptool (or any
//! RFC 2217 server under test) can open LINK like a USB-UART.
//!
//! We keep our own fd on the slave: the master then never sees EIO when clients come and
//! go, and through it we read the termios the client set (TCGETS2, for any rate) to pace
//! and garble like a real line. A PTY has no DTR/RTS, so nothing can reset this chip; it
//! starts in download mode with `--bootloader`.
//!
//! A chip on its own USB (`sim-usb`, `sim-s3-usb`, `sim-otg`) takes its USB peripheral down
//! when the RTC watchdog resets it, and a real `/dev/ttyACM*` vanishes and comes back: here
//! the PTY is closed (a client's reads and writes fail, as on an unplugged ttyACM) and a new
//! one is made, LINK pointing at it — the by-id symlink of the re-enumerated port.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::sim_flash::FlashStore;
use crate::protocol::line::{DataBits, FlowControl, LineSettings, Parity, StopBits};
use crate::sim::chip::Chip;
use crate::sim::flash::Flash;
use crate::sim::uart::Uart;
use crate::sim::SimOptions;

/// Longest sleep: bounds how late a signal that slipped in before `poll` is noticed.
const MAX_SLEEP: Duration = Duration::from_millis(200);

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// SIGINT/SIGTERM set `STOP`; without SA_RESTART they also cut `poll` short.
fn install_signal_handlers() -> io::Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction is valid; the handler only stores to an atomic,
        // which is async-signal-safe.
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// `-1` from libc into the OS error.
fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// A new PTY master and its slave's path.
fn open_master() -> io::Result<(File, PathBuf)> {
    super::open_pty_master(libc::O_RDWR | libc::O_NOCTTY)
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd the caller owns.
    unsafe {
        let flags = check(libc::fcntl(fd, libc::F_GETFL))?;
        check(libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK))?;
    }
    Ok(())
}

/// Raw mode at `speed` (a `Bxxx` code) on a tty.
fn make_raw(fd: RawFd, speed: libc::speed_t) -> io::Result<()> {
    // SAFETY: termios is plain data, filled by tcgetattr before use.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        check(libc::tcgetattr(fd, &mut t))?;
        libc::cfmakeraw(&mut t);
        check(libc::cfsetspeed(&mut t, speed))?;
        check(libc::tcsetattr(fd, libc::TCSANOW, &t))?;
    }
    Ok(())
}

/// Standard `Bxxx` codes, for a kernel that leaves `c_ospeed` empty.
const BAUD_CODES: &[(libc::tcflag_t, u32)] = &[
    (libc::B1200, 1200),
    (libc::B2400, 2400),
    (libc::B4800, 4800),
    (libc::B9600, 9600),
    (libc::B19200, 19_200),
    (libc::B38400, 38_400),
    (libc::B57600, 57_600),
    (libc::B115200, 115_200),
    (libc::B230400, 230_400),
    (libc::B460800, 460_800),
    (libc::B500000, 500_000),
    (libc::B576000, 576_000),
    (libc::B921600, 921_600),
    (libc::B1000000, 1_000_000),
    (libc::B1152000, 1_152_000),
    (libc::B1500000, 1_500_000),
    (libc::B2000000, 2_000_000),
    (libc::B3000000, 3_000_000),
];

/// What the client configured on the slave, as a `LineSettings`.
fn line_settings(slave: &File) -> io::Result<LineSettings> {
    // SAFETY: termios2 is plain data; TCGETS2 fills exactly this struct.
    let t = unsafe {
        let mut t: libc::termios2 = std::mem::zeroed();
        check(libc::ioctl(slave.as_raw_fd(), libc::TCGETS2, &mut t))?;
        t
    };
    let cflag = t.c_cflag;
    let baud = if t.c_ospeed != 0 {
        t.c_ospeed
    } else {
        let code = cflag & libc::CBAUD;
        BAUD_CODES
            .iter()
            .find(|&&(c, _)| c == code)
            .map_or(115_200, |&(_, rate)| rate)
    };
    let data_bits = match cflag & libc::CSIZE {
        libc::CS5 => DataBits::Five,
        libc::CS6 => DataBits::Six,
        libc::CS7 => DataBits::Seven,
        _ => DataBits::Eight,
    };
    let parity = match (
        cflag & libc::PARENB != 0,
        cflag & libc::CMSPAR != 0,
        cflag & libc::PARODD != 0,
    ) {
        (false, _, _) => Parity::None,
        (true, true, true) => Parity::Mark,
        (true, true, false) => Parity::Space,
        (true, false, true) => Parity::Odd,
        (true, false, false) => Parity::Even,
    };
    let stop_bits = if cflag & libc::CSTOPB != 0 {
        StopBits::Two
    } else {
        StopBits::One
    };
    let flow = if cflag & libc::CRTSCTS != 0 {
        FlowControl::RtsCts
    } else if t.c_iflag & libc::IXON != 0 {
        FlowControl::XonXoff
    } else {
        FlowControl::None
    };
    Ok(LineSettings {
        baud,
        data_bits,
        parity,
        stop_bits,
        flow,
    })
}

/// Replace a stale symlink at `link`, but never a real file.
fn place_link(link: &Path, target: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(link) {
        Ok(m) if m.file_type().is_symlink() => std::fs::remove_file(link)?,
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a symlink", link.display()),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::os::unix::fs::symlink(target, link)
}

/// Removes the link on the way out, if it still points at our slave.
struct LinkGuard {
    link: PathBuf,
    target: PathBuf,
}

impl Drop for LinkGuard {
    fn drop(&mut self) {
        if std::fs::read_link(&self.link).is_ok_and(|t| t == self.target) {
            let _ = std::fs::remove_file(&self.link);
        }
    }
}

/// Our side of one PTY: the master the chip talks through, our fd on the slave, its path.
struct Pty {
    master: File,
    slave: File,
    slave_path: PathBuf,
}

impl Pty {
    fn open() -> io::Result<Pty> {
        let (master, slave_path) = open_master()?;
        set_nonblocking(master.as_raw_fd())?;
        let slave = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(&slave_path)?;
        // Raw 115200 8N1 until a client says otherwise; above all no echo, or the chip's
        // output would come straight back at it.
        make_raw(slave.as_raw_fd(), libc::B115200)?;
        Ok(Pty {
            master,
            slave,
            slave_path,
        })
    }
}

/// `serialhub sim --pty LINK`: serve the simulated chip on a pseudo-terminal until
/// SIGINT/SIGTERM.
pub(crate) fn run(link: &Path, opts: SimOptions) -> io::Result<()> {
    let (flash, mut store) = match &opts.flash_file {
        Some(path) => {
            let (store, flash) = FlashStore::open(path)?;
            (flash, Some(store))
        }
        None => (Flash::new(), None),
    };

    let mut pty = Pty::open()?;
    install_signal_handlers()?;
    place_link(link, &pty.slave_path)?;
    let mut guard = LinkGuard {
        link: link.to_path_buf(),
        target: pty.slave_path.clone(),
    };

    let epoch = Instant::now();
    let label = opts.name.as_deref().unwrap_or("");
    let mut chip = Chip::labelled(
        opts.board,
        flash,
        opts.start_in_bootloader,
        Duration::ZERO,
        label,
    );
    let mut uart = Uart::new(epoch);
    let mut line = LineSettings::default();
    eprintln!(
        "sim: {} ({}) on {} ({}), {}",
        opts.board.target().name(),
        opts.board,
        link.display(),
        pty.slave_path.display(),
        if opts.start_in_bootloader {
            "waiting for download"
        } else {
            "running its application"
        }
    );

    let mut usb_resets = chip.usb_resets();
    while !STOP.load(Ordering::SeqCst) {
        if chip.usb_resets() != usb_resets {
            usb_resets = chip.usb_resets();
            // The port goes away (closing both our fds hangs up the client's) and a new
            // one appears at LINK.
            pty = Pty::open()?;
            place_link(link, &pty.slave_path)?;
            guard.target = pty.slave_path.clone();
            uart = Uart::new(epoch);
            eprintln!(
                "sim: USB re-enumerated (RTC watchdog reset): {} -> {}",
                link.display(),
                pty.slave_path.display()
            );
        }
        // The client may have changed the rate since the last round: re-read it.
        if let Ok(l) = line_settings(&pty.slave) {
            line = l;
        }
        let mut host = &pty.master;
        let wait = uart.run(&mut host, &mut chip, &line, true, Instant::now(), epoch)?;
        if let Some(store) = store.as_mut() {
            store.persist(chip.flash_mut())?;
        } else {
            chip.flash_mut().take_dirty();
        }

        let mut events = PollFlags::empty();
        if wait.want_read {
            events |= PollFlags::POLLIN;
        }
        if wait.want_write {
            events |= PollFlags::POLLOUT;
        }
        let mut fds = [PollFd::new(pty.master.as_fd(), events)];
        let sleep = wait
            .deadline
            .map_or(MAX_SLEEP, |d| d.saturating_duration_since(Instant::now()))
            .min(MAX_SLEEP);
        let ms = u16::try_from(sleep.as_micros().div_ceil(1000)).unwrap_or(u16::MAX);
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    eprintln!("sim: stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_line_a_client_sets() {
        let (_master, path) = open_master().unwrap();
        let slave = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(&path)
            .unwrap();
        make_raw(slave.as_raw_fd(), libc::B921600).unwrap();
        assert_eq!(line_settings(&slave).unwrap().baud, 921_600);
        // An arbitrary rate, the way pyserial sets one (TCSETS2 with BOTHER).
        // SAFETY: termios2 is plain data, filled by TCGETS2 before use.
        unsafe {
            let mut t: libc::termios2 = std::mem::zeroed();
            check(libc::ioctl(slave.as_raw_fd(), libc::TCGETS2, &mut t)).unwrap();
            t.c_cflag &= !libc::CBAUD;
            t.c_cflag |= libc::BOTHER;
            t.c_ispeed = 1_000_123;
            t.c_ospeed = 1_000_123;
            check(libc::ioctl(slave.as_raw_fd(), libc::TCSETS2, &t)).unwrap();
        }
        let line = line_settings(&slave).unwrap();
        assert_eq!(line.baud, 1_000_123);
        // A PTY forces 8 data bits and no parity whatever the client asks.
        assert_eq!(line.data_bits, DataBits::Eight);
    }
}
