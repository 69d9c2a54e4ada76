//! Device backends behind one trait: the bridge polls `fd()` and never knows whether a real
//! tty or the simulated ESP32 is behind it.

use std::fmt;
use std::io;
use std::os::fd::BorrowedFd;

/// Character size on the line (RFC 2217 SET-DATASIZE values 5..=8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataBits {
    Five,
    Six,
    Seven,
    Eight,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parity {
    None,
    Odd,
    Even,
    Mark,
    Space,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopBits {
    One,
    OnePointFive,
    Two,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowControl {
    None,
    XonXoff,
    RtsCts,
}

/// Everything about the line format a client can change; restored when the client leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LineSettings {
    pub baud: u32,
    pub data_bits: DataBits,
    pub parity: Parity,
    pub stop_bits: StopBits,
    pub flow: FlowControl,
}

impl Default for LineSettings {
    fn default() -> Self {
        LineSettings {
            baud: 115_200,
            data_bits: DataBits::Eight,
            parity: Parity::None,
            stop_bits: StopBits::One,
            flow: FlowControl::None,
        }
    }
}

impl fmt::Display for LineSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bits = match self.data_bits {
            DataBits::Five => 5,
            DataBits::Six => 6,
            DataBits::Seven => 7,
            DataBits::Eight => 8,
        };
        let parity = match self.parity {
            Parity::None => 'N',
            Parity::Odd => 'O',
            Parity::Even => 'E',
            Parity::Mark => 'M',
            Parity::Space => 'S',
        };
        let stop = match self.stop_bits {
            StopBits::One => "1",
            StopBits::OnePointFive => "1.5",
            StopBits::Two => "2",
        };
        write!(f, "{} {}{}{}", self.baud, bits, parity, stop)
    }
}

/// Output lines as pyserial means them: `true` = asserted (electrically low on a UART).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lines {
    pub dtr: bool,
    pub rts: bool,
}

/// Input lines, as reported in RFC 2217 NOTIFY-MODEMSTATE.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ModemStatus {
    pub cts: bool,
    pub dsr: bool,
    pub ri: bool,
    pub cd: bool,
}

/// Which buffers PURGE-DATA empties.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purge {
    /// Data received from the device and not yet read.
    Input,
    /// Data written to the device and not yet sent.
    Output,
    Both,
}

/// A serial device as the bridge sees it. `fd()` must be non-blocking and pollable:
/// readable when `read` has data, writable when `write` can accept some.
pub trait Device: Send {
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
