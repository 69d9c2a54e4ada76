//! Device backends behind one trait: the bridge polls `fd()` and never knows whether a real
//! tty, a GPIO-wired board or the simulated ESP32 is behind it. All the I/O to devices lives
//! here, the simulator's too; [`open`] makes any of them from a configured path.

use std::fmt;
use std::io;
use std::os::fd::BorrowedFd;
use std::path::PathBuf;

use serde::Deserialize;

use crate::protocol::line::{LineSettings, Lines, ModemStatus, Purge};
use crate::sim::SimBoard;

pub(crate) mod gpio; // DTR/RTS to GPIO lines (EN, IO0) for GPIO-wired boards
pub(crate) mod sim; // the simulated ESP32 as an in-process device
pub(crate) mod sim_flash; // the simulated chip's flash file
mod sim_park; // where a simulated chip waits while its USB re-enumerates
pub(crate) mod sim_pty; // `serialhub sim --pty`: the simulated chip on a pseudo-terminal
mod tty; // real ttys, and the PTY-master helper

pub(crate) use tty::{open_pty_master, Tty};

/// A serial device as the bridge sees it. `fd()` must be non-blocking and pollable:
/// readable when `read` has data, writable when `write` can accept some.
pub(crate) trait Device: Send {
    fn fd(&self) -> BorrowedFd<'_>;
    /// Non-blocking read; `WouldBlock` when nothing is waiting.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Non-blocking write; `WouldBlock` when the device cannot take more now.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize>;
    /// Apply a complete line format. Callers only call this when something changed.
    fn apply(&mut self, settings: &LineSettings) -> io::Result<()>;
    /// Set both output lines at once (one TIOCMSET on a tty), so no intermediate state
    /// ever reaches the board's reset circuit.
    fn set_lines(&mut self, lines: Lines) -> io::Result<()>;
    fn modem_status(&mut self) -> io::Result<ModemStatus>;
    fn set_break(&mut self, on: bool) -> io::Result<()>;
    fn purge(&mut self, which: Purge) -> io::Result<()>;
}

/// Where a device's bytes come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum DevicePath {
    Tty(PathBuf),
    /// A built-in simulated board (`sim`: ESP32 DevKit, `sim-usb`: ESP32-C3 on USB-Serial/JTAG,
    /// `sim-s3-usb`: ESP32-S3 on USB-Serial/JTAG, `sim-otg`: ESP32-S3 on USB-OTG,
    /// `sim-gpio`: ESP32 with EN/IO0 on GPIOs, `sim-esp8266`: ESP8266 board), optionally
    /// keeping its flash in a file
    /// (`sim-usb:FLASHFILE`).
    Sim {
        board: SimBoard,
        flash_file: Option<PathBuf>,
    },
}

impl DevicePath {
    pub(crate) fn unset() -> DevicePath {
        DevicePath::Tty(PathBuf::new())
    }

    pub(crate) fn is_unset(&self) -> bool {
        matches!(self, DevicePath::Tty(p) if p.as_os_str().is_empty())
    }

    pub(crate) fn parse(s: &str) -> DevicePath {
        let (head, file) = match s.split_once(':') {
            Some((head, file)) => (head, Some(PathBuf::from(file))),
            None => (s, None),
        };
        match SimBoard::from_path_name(head) {
            Some(board) => DevicePath::Sim {
                board,
                flash_file: file,
            },
            None => DevicePath::Tty(PathBuf::from(s)),
        }
    }
}

impl fmt::Display for DevicePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DevicePath::Tty(p) => write!(f, "{}", p.display()),
            DevicePath::Sim { board, .. } => write!(f, "{board}"),
        }
    }
}

impl<'de> Deserialize<'de> for DevicePath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() {
            return Err(serde::de::Error::custom("`path` must not be empty"));
        }
        Ok(DevicePath::parse(&s))
    }
}

/// What a device's DTR/RTS reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Wiring {
    /// The tty's own modem lines (or the simulated board's).
    ModemLines,
    /// GPIO lines on the chip's EN and IO0 (a Pi UART).
    Gpio(gpio::GpioConfig),
}

/// Open the device at `path` with `settings` applied and both lines released. `name` labels
/// the GPIO request and the simulator's log lines.
pub(crate) fn open(
    path: &DevicePath,
    wiring: &Wiring,
    name: &str,
    settings: &LineSettings,
) -> io::Result<Box<dyn Device>> {
    let device: Box<dyn Device> = match path {
        DevicePath::Tty(p) => Box::new(Tty::open(p, settings)?),
        DevicePath::Sim { board, flash_file } => {
            let (mut sim, _) = sim::open(crate::sim::SimOptions {
                flash_file: flash_file.clone(),
                board: *board,
                name: Some(name.to_owned()),
                ..Default::default()
            })?;
            sim.apply(settings)?;
            sim
        }
    };
    match wiring {
        Wiring::ModemLines => Ok(device),
        Wiring::Gpio(cfg) => {
            let consumer = format!("serialhub {name}");
            Ok(Box::new(gpio::GpioWired::new(
                device,
                cfg.clone(),
                &consumer,
            )?))
        }
    }
}
