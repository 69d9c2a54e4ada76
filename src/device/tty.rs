//! A real serial device (USB-UART bridge, native USB CDC-ACM, Pi UART, or a PTY in tests),
//! and the PTY-master helper the simulator and the client's `pty` share.

use std::io;
use std::os::fd::BorrowedFd;

use super::Device;
use crate::protocol::line::{
    DataBits, FlowControl, LineSettings, Lines, ModemStatus, Parity, Purge, StopBits,
};

/// A real serial device (USB-UART bridge, native USB CDC-ACM, Pi UART, or a PTY in tests).
pub(crate) struct Tty {
    port: serialport::TTYPort,
}

impl Tty {
    /// Open `path` exclusively (TIOCEXCL), raw, non-blocking, with `settings` applied, HUPCL
    /// cleared (closing must not pulse the board's reset) and both lines released: the kernel
    /// and serialport assert DTR on open, which an auto-reset circuit turns into a reset.
    pub(crate) fn open(path: &std::path::Path, settings: &LineSettings) -> io::Result<Tty> {
        use std::os::fd::AsRawFd;
        let port = serialport::new(path.to_string_lossy(), settings.baud)
            .dtr_on_open(false)
            .open_native()
            .map_err(io::Error::from)?;
        let mut tty = Tty { port };
        let fd = tty.port.as_raw_fd();
        // SAFETY: fd is a valid open descriptor owned by `port`.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        tty.apply(settings)?;
        // A PTY has no modem lines; that is not an error for a device.
        let _ = tty.set_lines(Lines::default());
        Ok(tty)
    }

    fn raw(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.port.as_raw_fd()
    }

    fn ioctl_int(&self, req: libc::Ioctl, arg: libc::c_int) -> io::Result<()> {
        // SAFETY: the requests used take a pointer to an int.
        let r = unsafe { libc::ioctl(self.raw(), req, &arg) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

fn standard_rate(baud: u32) -> Option<libc::tcflag_t> {
    use libc::*;
    Some(match baud {
        50 => B50,
        75 => B75,
        110 => B110,
        134 => B134,
        150 => B150,
        200 => B200,
        300 => B300,
        600 => B600,
        1200 => B1200,
        1800 => B1800,
        2400 => B2400,
        4800 => B4800,
        9600 => B9600,
        19200 => B19200,
        38400 => B38400,
        57600 => B57600,
        115200 => B115200,
        230400 => B230400,
        460800 => B460800,
        500000 => B500000,
        576000 => B576000,
        921600 => B921600,
        1000000 => B1000000,
        1152000 => B1152000,
        1500000 => B1500000,
        2000000 => B2000000,
        2500000 => B2500000,
        3000000 => B3000000,
        3500000 => B3500000,
        4000000 => B4000000,
        _ => return None,
    })
}

/// The two termios calls [`program`] makes, so a test can play a driver that clamps.
pub(crate) trait Termios2 {
    fn get(&mut self) -> io::Result<libc::termios2>;
    fn set(&mut self, t: &libc::termios2) -> io::Result<()>;
}

/// TCGETS2 and TCSETS2 on a descriptor.
struct Ioctl(std::os::fd::RawFd);

impl Termios2 for Ioctl {
    fn get(&mut self) -> io::Result<libc::termios2> {
        // SAFETY: a zeroed termios2 is a valid value; TCGETS2 fills it.
        let mut t: libc::termios2 = unsafe { std::mem::zeroed() };
        // SAFETY: TCGETS2 writes a termios2 through the pointer.
        if unsafe { libc::ioctl(self.0, libc::TCGETS2, &mut t) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(t)
    }

    fn set(&mut self, t: &libc::termios2) -> io::Result<()> {
        // SAFETY: TCSETS2 reads a termios2.
        if unsafe { libc::ioctl(self.0, libc::TCSETS2, t) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Why settings were not applied. After a refused rate the device is back at what it had.
#[derive(Debug)]
pub(crate) enum ApplyError {
    /// TCGETS2 or TCSETS2 failed: nothing changed (or the kernel refused all of it).
    Io(io::Error),
    /// The driver took `got` baud for `asked` (more than 2 % off): the previous settings are
    /// back on the UART.
    Clamped { asked: u32, got: u32 },
    /// The rate could not be read back, so what the UART runs at is unknown: the previous
    /// settings are back.
    Unverified { asked: u32, err: io::Error },
    /// Restoring the previous settings failed too: the UART's rate is unknown.
    NotRestored {
        why: Box<ApplyError>,
        err: io::Error,
    },
}

impl std::fmt::Display for ApplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApplyError::Io(e) => write!(f, "{e}"),
            ApplyError::Clamped { asked, got } => write!(
                f,
                "the driver set {got} baud instead of {asked}; the previous settings are restored"
            ),
            ApplyError::Unverified { asked, err } => write!(
                f,
                "cannot read back the rate after setting {asked} baud ({err}); the previous settings are restored"
            ),
            ApplyError::NotRestored { why, err } => write!(
                f,
                "{why}, but restoring failed ({err}): reopen the device (stop and start it) before trusting its rate"
            ),
        }
    }
}

impl From<ApplyError> for io::Error {
    fn from(e: ApplyError) -> io::Error {
        match e {
            ApplyError::Io(e) => e,
            other => io::Error::other(other.to_string()),
        }
    }
}

/// Set `s` with one TCSETS2, then read the rate back: a driver may take a rate it cannot do
/// and round it (`SET-BAUDRATE 1` becomes 300, or whatever the UART's divider allows). A
/// rate more than 2 % off, or one that cannot be read back, is refused and the previous
/// termios put back, so the UART runs at what the session still believes — and what the next
/// client gets restored to — instead of a rate nobody asked for.
pub(crate) fn program(dev: &mut impl Termios2, s: &LineSettings) -> Result<(), ApplyError> {
    let before = dev.get().map_err(ApplyError::Io)?;
    let mut t = before;
    t.c_cflag &= !(libc::CSIZE
        | libc::PARENB
        | libc::PARODD
        | libc::CMSPAR
        | libc::CSTOPB
        | libc::CRTSCTS
        | libc::HUPCL
        | libc::CBAUD);
    // A standard rate goes in as its Bxxx code, so that tools reading the line with plain
    // tcgetattr (and old drivers) see it; any other integer rate goes in as BOTHER.
    t.c_cflag |= libc::CREAD | libc::CLOCAL | standard_rate(s.baud).unwrap_or(libc::BOTHER);
    t.c_cflag |= match s.data_bits {
        DataBits::Five => libc::CS5,
        DataBits::Six => libc::CS6,
        DataBits::Seven => libc::CS7,
        DataBits::Eight => libc::CS8,
    };
    t.c_cflag |= match s.parity {
        Parity::None => 0,
        Parity::Odd => libc::PARENB | libc::PARODD,
        Parity::Even => libc::PARENB,
        Parity::Mark => libc::PARENB | libc::PARODD | libc::CMSPAR,
        Parity::Space => libc::PARENB | libc::CMSPAR,
    };
    // termios has no 1.5 stop bits; CSTOPB gives 1.5 at 5 data bits on a 16550.
    if s.stop_bits != StopBits::One {
        t.c_cflag |= libc::CSTOPB;
    }
    t.c_iflag &= !(libc::IXON | libc::IXOFF | libc::IXANY);
    match s.flow {
        FlowControl::None => {}
        FlowControl::XonXoff => t.c_iflag |= libc::IXON | libc::IXOFF,
        FlowControl::RtsCts => t.c_cflag |= libc::CRTSCTS,
    }
    t.c_ispeed = s.baud;
    t.c_ospeed = s.baud;
    dev.set(&t).map_err(ApplyError::Io)?;
    let refused = match dev.get() {
        // A driver that reports no rate (0) has nothing to compare.
        Ok(back) if back.c_ospeed == 0 || back.c_ospeed.abs_diff(s.baud) <= s.baud / 50 => {
            return Ok(())
        }
        Ok(back) => ApplyError::Clamped {
            asked: s.baud,
            got: back.c_ospeed,
        },
        Err(err) => ApplyError::Unverified { asked: s.baud, err },
    };
    match dev.set(&before) {
        Ok(()) => Err(refused),
        Err(err) => Err(ApplyError::NotRestored {
            why: Box::new(refused),
            err,
        }),
    }
}

fn cvt(r: libc::ssize_t) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// Closing a tty waits until its output has drained (the driver's closing_wait, up to 30 s
/// on a flow-stopped UART): what is still queued belongs to a client that is gone, so it is
/// discarded first, and closing never holds up the thread.
impl Drop for Tty {
    fn drop(&mut self) {
        // SAFETY: plain syscall on a valid fd.
        unsafe { libc::tcflush(self.raw(), libc::TCOFLUSH) };
    }
}

impl Device for Tty {
    fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the fd lives as long as `self.port`.
        unsafe { BorrowedFd::borrow_raw(self.raw()) }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: buf is valid for buf.len() bytes.
        cvt(unsafe { libc::read(self.raw(), buf.as_mut_ptr().cast(), buf.len()) })
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: buf is valid for buf.len() bytes.
        cvt(unsafe { libc::write(self.raw(), buf.as_ptr().cast(), buf.len()) })
    }

    /// One TCSETS2 with every field, so any integer baud (BOTHER) works and the UART is
    /// reprogrammed once, not once per field; see [`program`] for what a refused rate does.
    fn apply(&mut self, s: &LineSettings) -> io::Result<()> {
        program(&mut Ioctl(self.raw()), s).map_err(io::Error::from)
    }

    fn set_lines(&mut self, lines: Lines) -> io::Result<()> {
        let mut bits: libc::c_int = 0;
        // SAFETY: TIOCMGET writes an int.
        if unsafe { libc::ioctl(self.raw(), libc::TIOCMGET, &mut bits) } < 0 {
            return Err(io::Error::last_os_error());
        }
        bits &= !(libc::TIOCM_DTR | libc::TIOCM_RTS);
        if lines.dtr {
            bits |= libc::TIOCM_DTR;
        }
        if lines.rts {
            bits |= libc::TIOCM_RTS;
        }
        self.ioctl_int(libc::TIOCMSET, bits)
    }

    fn modem_status(&mut self) -> io::Result<ModemStatus> {
        let mut bits: libc::c_int = 0;
        // SAFETY: TIOCMGET writes an int.
        if unsafe { libc::ioctl(self.raw(), libc::TIOCMGET, &mut bits) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(ModemStatus {
            cts: bits & libc::TIOCM_CTS != 0,
            dsr: bits & libc::TIOCM_DSR != 0,
            ri: bits & libc::TIOCM_RI != 0,
            cd: bits & libc::TIOCM_CD != 0,
        })
    }

    fn set_break(&mut self, on: bool) -> io::Result<()> {
        let req = if on { libc::TIOCSBRK } else { libc::TIOCCBRK };
        // SAFETY: TIOCSBRK/TIOCCBRK take no argument.
        if unsafe { libc::ioctl(self.raw(), req) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn purge(&mut self, which: Purge) -> io::Result<()> {
        let q = match which {
            Purge::Input => libc::TCIFLUSH,
            Purge::Output => libc::TCOFLUSH,
            Purge::Both => libc::TCIOFLUSH,
        };
        // SAFETY: plain syscall on a valid fd.
        if unsafe { libc::tcflush(self.raw(), q) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// A new pseudo-terminal master (`posix_openpt` with `flags`, `grantpt`, `unlockpt`) and its
/// slave's path. The simulator's `sim --pty` and the client's `pty` command both make one.
pub(crate) fn open_pty_master(
    flags: libc::c_int,
) -> io::Result<(std::fs::File, std::path::PathBuf)> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let check = |rc: libc::c_int| {
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    };
    // SAFETY: plain libc calls on an fd we own from here on; ptsname_r writes at most
    // `buf.len()` bytes including the NUL.
    unsafe {
        let fd = check(libc::posix_openpt(flags))?;
        let master = std::fs::File::from(OwnedFd::from_raw_fd(fd));
        check(libc::grantpt(fd))?;
        check(libc::unlockpt(fd))?;
        let mut buf = [0 as libc::c_char; 128];
        let rc = libc::ptsname_r(fd, buf.as_mut_ptr(), buf.len());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        let name = std::ffi::CStr::from_ptr(buf.as_ptr())
            .to_string_lossy()
            .into_owned();
        Ok((master, std::path::PathBuf::from(name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A driver whose UART cannot go below `min` baud: it takes any TCSETS2 and rounds the
    /// rate up, as a USB-UART bridge's divider does; or whose read-back fails.
    struct Clamping {
        now: libc::termios2,
        min: u32,
        sets: Vec<u32>,
        fail_read_back: bool,
        gets: u32,
    }

    impl Clamping {
        fn at(baud: u32, min: u32) -> Clamping {
            // SAFETY: a zeroed termios2 is a valid value.
            let mut now: libc::termios2 = unsafe { std::mem::zeroed() };
            now.c_cflag = libc::CS8 | libc::CREAD | libc::B115200;
            now.c_ispeed = baud;
            now.c_ospeed = baud;
            Clamping {
                now,
                min,
                sets: Vec::new(),
                fail_read_back: false,
                gets: 0,
            }
        }
    }

    impl Termios2 for Clamping {
        fn get(&mut self) -> io::Result<libc::termios2> {
            self.gets += 1;
            if self.fail_read_back && self.gets > 1 {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            Ok(self.now)
        }

        fn set(&mut self, t: &libc::termios2) -> io::Result<()> {
            self.now = *t;
            self.now.c_ospeed = t.c_ospeed.max(self.min);
            self.now.c_ispeed = t.c_ispeed.max(self.min);
            self.sets.push(t.c_ospeed);
            Ok(())
        }
    }

    fn at(baud: u32) -> LineSettings {
        LineSettings {
            baud,
            ..LineSettings::default()
        }
    }

    #[test]
    fn a_rate_the_driver_clamps_is_refused_and_the_previous_settings_restored() {
        let mut d = Clamping::at(115_200, 300);
        let before = d.now;
        let e = program(&mut d, &at(1)).unwrap_err();
        assert!(
            matches!(e, ApplyError::Clamped { asked: 1, got: 300 }),
            "{e:?}"
        );
        assert_eq!(d.sets, [1, 115_200], "set, then the old settings put back");
        assert_eq!((d.now.c_ospeed, d.now.c_cflag), (115_200, before.c_cflag));
        assert_eq!(
            io::Error::from(e).to_string(),
            "the driver set 300 baud instead of 1; the previous settings are restored"
        );
        // Within 2 %: taken (a divider's rounding is not an error).
        let mut d = Clamping::at(115_200, 300);
        program(&mut d, &at(295)).unwrap();
        assert_eq!((d.sets.as_slice(), d.now.c_ospeed), (&[295][..], 300));
        program(&mut d, &at(9600)).unwrap();
        assert_eq!(d.now.c_ospeed, 9600);
    }

    #[test]
    fn a_rate_that_cannot_be_read_back_is_undone() {
        let mut d = Clamping::at(115_200, 0);
        d.fail_read_back = true;
        let e = program(&mut d, &at(1)).unwrap_err();
        assert!(
            matches!(e, ApplyError::Unverified { asked: 1, .. }),
            "{e:?}"
        );
        assert_eq!(d.sets, [1, 115_200]);
        assert_eq!(d.now.c_ospeed, 115_200);
    }

    #[test]
    fn on_a_pty_the_rate_read_back_is_the_rate_set() {
        // A PTY stores any rate it is given: nothing to refuse, nothing restored.
        let (_master, slave) = open_pty_master(libc::O_RDWR | libc::O_NOCTTY).unwrap();
        let mut tty = Tty::open(&slave, &at(115_200)).unwrap();
        tty.apply(&at(1)).unwrap();
        assert_eq!(Ioctl(tty.raw()).get().unwrap().c_ospeed, 1);
        tty.apply(&at(115_200)).unwrap();
        assert_eq!(Ioctl(tty.raw()).get().unwrap().c_ospeed, 115_200);
    }
}
