//! The vocabulary of a serial line, shared by every layer: the format a client can set, the
//! output and input modem lines, and which buffers a purge empties. Plain values, no I/O.

use std::fmt;

/// Character size on the line (RFC 2217 SET-DATASIZE values 5..=8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DataBits {
    Five,
    Six,
    Seven,
    Eight,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Parity {
    None,
    Odd,
    Even,
    Mark,
    Space,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StopBits {
    One,
    OnePointFive,
    Two,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FlowControl {
    None,
    XonXoff,
    RtsCts,
}

/// Everything about the line format a client can change; restored when the client leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LineSettings {
    pub(crate) baud: u32,
    pub(crate) data_bits: DataBits,
    pub(crate) parity: Parity,
    pub(crate) stop_bits: StopBits,
    pub(crate) flow: FlowControl,
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
pub(crate) struct Lines {
    pub(crate) dtr: bool,
    pub(crate) rts: bool,
}

/// Input lines, as reported in RFC 2217 NOTIFY-MODEMSTATE.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ModemStatus {
    pub(crate) cts: bool,
    pub(crate) dsr: bool,
    pub(crate) ri: bool,
    pub(crate) cd: bool,
}

/// Which buffers PURGE-DATA empties.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Purge {
    /// Data received from the device and not yet read.
    Input,
    /// Data written to the device and not yet sent.
    Output,
    Both,
}
