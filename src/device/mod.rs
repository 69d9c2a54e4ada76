//! Device backends behind one trait: the bridge polls `fd()` and never knows whether a real
//! tty, a GPIO-wired board or the simulated ESP32 is behind it.

use std::io;
use std::os::fd::BorrowedFd;

use crate::protocol::line::{LineSettings, Lines, ModemStatus, Purge};

pub(crate) mod gpio;
mod tty;

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
