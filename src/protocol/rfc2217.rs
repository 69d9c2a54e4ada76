//! RFC 2217 COM-PORT-OPTION (Telnet option 44) commands as typed values, sans-IO.
//!
//! One type serves both directions: a client sends command code `n`, a server answers with
//! `n + 100` and the same value shape. [`decode`] tells which direction a payload came from.

use crate::protocol::line::{DataBits, FlowControl, Parity, Purge, StopBits};

/// Server-to-client codes are the client's code plus this.
const SERVER_OFFSET: u8 = 100;

/// A value that may instead be a request for the current one (wire value 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Setting<T> {
    Query,
    Value(T),
}

/// SET-CONTROL values (RFC 2217 §3, "SET-CONTROL").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Control {
    QueryFlow,
    Flow(FlowControl),
    QueryBreak,
    Break(bool),
    QueryDtr,
    Dtr(bool),
    QueryRts,
    Rts(bool),
    QueryInboundFlow,
    /// Inbound flow control (values 14..=19); termios has one flow setting for both
    /// directions, so these are answered with what is in force rather than applied.
    InboundFlow(u8),
}

impl Control {
    fn from_byte(v: u8) -> Option<Control> {
        Some(match v {
            0 => Control::QueryFlow,
            1 => Control::Flow(FlowControl::None),
            2 => Control::Flow(FlowControl::XonXoff),
            3 => Control::Flow(FlowControl::RtsCts),
            4 => Control::QueryBreak,
            5 => Control::Break(true),
            6 => Control::Break(false),
            7 => Control::QueryDtr,
            8 => Control::Dtr(true),
            9 => Control::Dtr(false),
            10 => Control::QueryRts,
            11 => Control::Rts(true),
            12 => Control::Rts(false),
            13 => Control::QueryInboundFlow,
            14..=19 => Control::InboundFlow(v),
            _ => return None,
        })
    }

    fn byte(self) -> u8 {
        match self {
            Control::QueryFlow => 0,
            Control::Flow(FlowControl::None) => 1,
            Control::Flow(FlowControl::XonXoff) => 2,
            Control::Flow(FlowControl::RtsCts) => 3,
            Control::QueryBreak => 4,
            Control::Break(true) => 5,
            Control::Break(false) => 6,
            Control::QueryDtr => 7,
            Control::Dtr(true) => 8,
            Control::Dtr(false) => 9,
            Control::QueryRts => 10,
            Control::Rts(true) => 11,
            Control::Rts(false) => 12,
            Control::QueryInboundFlow => 13,
            Control::InboundFlow(v) => v,
        }
    }
}

/// One COM-PORT-OPTION subnegotiation body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Command {
    /// Empty = "send me yours".
    Signature(Vec<u8>),
    SetBaud(Setting<u32>),
    SetDataSize(Setting<DataBits>),
    SetParity(Setting<Parity>),
    SetStopSize(Setting<StopBits>),
    SetControl(Control),
    /// From a client: a poll (value ignored); from a server: the line state.
    NotifyLineState(u8),
    /// From a client: a poll (value ignored); from a server: the modem state.
    NotifyModemState(u8),
    FlowControlSuspend,
    FlowControlResume,
    SetLineStateMask(u8),
    SetModemStateMask(u8),
    PurgeData(Purge),
}

/// Who sent a command: the code space tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    ClientToServer,
    ServerToClient,
}

/// Why a payload is not a valid command. `code` is the client-side code (0..=12) when known,
/// so a server can still answer a bad SET-DATASIZE with the value in force.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum DecodeError {
    Empty,
    UnknownCommand(u8),
    BadLength { code: u8, len: usize },
    BadValue { code: u8, value: u32 },
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Empty => write!(f, "empty COM-PORT-OPTION subnegotiation"),
            DecodeError::UnknownCommand(c) => write!(f, "unknown COM-PORT-OPTION command {c}"),
            DecodeError::BadLength { code, len } => {
                write!(f, "COM-PORT-OPTION command {code} with a {len}-byte value")
            }
            DecodeError::BadValue { code, value } => {
                write!(
                    f,
                    "COM-PORT-OPTION command {code} with invalid value {value}"
                )
            }
        }
    }
}

fn data_bits(v: u8) -> Option<DataBits> {
    Some(match v {
        5 => DataBits::Five,
        6 => DataBits::Six,
        7 => DataBits::Seven,
        8 => DataBits::Eight,
        _ => return None,
    })
}

fn parity(v: u8) -> Option<Parity> {
    Some(match v {
        1 => Parity::None,
        2 => Parity::Odd,
        3 => Parity::Even,
        4 => Parity::Mark,
        5 => Parity::Space,
        _ => return None,
    })
}

fn stop_bits(v: u8) -> Option<StopBits> {
    Some(match v {
        1 => StopBits::One,
        2 => StopBits::Two,
        3 => StopBits::OnePointFive,
        _ => return None,
    })
}

fn purge(v: u8) -> Option<Purge> {
    Some(match v {
        1 => Purge::Input,
        2 => Purge::Output,
        3 => Purge::Both,
        _ => return None,
    })
}

/// Decode one subnegotiation payload (after the option byte, already unescaped).
pub(crate) fn decode(payload: &[u8]) -> Result<(Direction, Command), DecodeError> {
    let (&raw, value) = payload.split_first().ok_or(DecodeError::Empty)?;
    let (dir, code) = match raw {
        0..=12 => (Direction::ClientToServer, raw),
        100..=112 => (Direction::ServerToClient, raw - SERVER_OFFSET),
        _ => return Err(DecodeError::UnknownCommand(raw)),
    };
    let byte = || match value {
        [v] => Ok(*v),
        _ => Err(DecodeError::BadLength {
            code,
            len: value.len(),
        }),
    };
    let bad = |v: u8| DecodeError::BadValue {
        code,
        value: v.into(),
    };
    // A one-byte setting where 0 is a query.
    fn setting<T>(v: u8, f: impl Fn(u8) -> Option<T>) -> Option<Setting<T>> {
        if v == 0 {
            Some(Setting::Query)
        } else {
            f(v).map(Setting::Value)
        }
    }
    let cmd = match code {
        0 => Command::Signature(value.to_vec()),
        1 => {
            let v: [u8; 4] = value.try_into().map_err(|_| DecodeError::BadLength {
                code,
                len: value.len(),
            })?;
            match u32::from_be_bytes(v) {
                0 => Command::SetBaud(Setting::Query),
                b => Command::SetBaud(Setting::Value(b)),
            }
        }
        2 => {
            let v = byte()?;
            Command::SetDataSize(setting(v, data_bits).ok_or(bad(v))?)
        }
        3 => {
            let v = byte()?;
            Command::SetParity(setting(v, parity).ok_or(bad(v))?)
        }
        4 => {
            let v = byte()?;
            Command::SetStopSize(setting(v, stop_bits).ok_or(bad(v))?)
        }
        5 => {
            let v = byte()?;
            Command::SetControl(Control::from_byte(v).ok_or(bad(v))?)
        }
        // Polls carry no meaningful value; accept any length from clients.
        6 => Command::NotifyLineState(value.first().copied().unwrap_or(0)),
        7 => Command::NotifyModemState(value.first().copied().unwrap_or(0)),
        8 => Command::FlowControlSuspend,
        9 => Command::FlowControlResume,
        10 => Command::SetLineStateMask(byte()?),
        11 => Command::SetModemStateMask(byte()?),
        12 => {
            let v = byte()?;
            Command::PurgeData(purge(v).ok_or(bad(v))?)
        }
        _ => unreachable!("code range checked above"),
    };
    Ok((dir, cmd))
}

/// Encode `cmd` as a subnegotiation payload for `dir` (not yet Telnet-escaped).
pub(crate) fn encode(dir: Direction, cmd: &Command, out: &mut Vec<u8>) {
    let offset = match dir {
        Direction::ClientToServer => 0,
        Direction::ServerToClient => SERVER_OFFSET,
    };
    let one = |code: u8, v: u8, out: &mut Vec<u8>| out.extend_from_slice(&[code + offset, v]);
    fn setting_byte<T: Copy>(s: &Setting<T>, f: impl Fn(T) -> u8) -> u8 {
        match s {
            Setting::Query => 0,
            Setting::Value(v) => f(*v),
        }
    }
    match cmd {
        Command::Signature(text) => {
            out.push(offset);
            out.extend_from_slice(text);
        }
        Command::SetBaud(s) => {
            out.push(1 + offset);
            out.extend_from_slice(&setting_byte_u32(s).to_be_bytes());
        }
        Command::SetDataSize(s) => one(
            2,
            setting_byte(s, |d| match d {
                DataBits::Five => 5,
                DataBits::Six => 6,
                DataBits::Seven => 7,
                DataBits::Eight => 8,
            }),
            out,
        ),
        Command::SetParity(s) => one(
            3,
            setting_byte(s, |p| match p {
                Parity::None => 1,
                Parity::Odd => 2,
                Parity::Even => 3,
                Parity::Mark => 4,
                Parity::Space => 5,
            }),
            out,
        ),
        Command::SetStopSize(s) => one(
            4,
            setting_byte(s, |b| match b {
                StopBits::One => 1,
                StopBits::Two => 2,
                StopBits::OnePointFive => 3,
            }),
            out,
        ),
        Command::SetControl(c) => one(5, c.byte(), out),
        Command::NotifyLineState(v) => one(6, *v, out),
        Command::NotifyModemState(v) => one(7, *v, out),
        Command::FlowControlSuspend => out.push(8 + offset),
        Command::FlowControlResume => out.push(9 + offset),
        Command::SetLineStateMask(v) => one(10, *v, out),
        Command::SetModemStateMask(v) => one(11, *v, out),
        Command::PurgeData(p) => one(
            12,
            match p {
                Purge::Input => 1,
                Purge::Output => 2,
                Purge::Both => 3,
            },
            out,
        ),
    }
}

fn setting_byte_u32(s: &Setting<u32>) -> u32 {
    match s {
        Setting::Query => 0,
        Setting::Value(v) => *v,
    }
}

/// NOTIFY-MODEMSTATE bits.
pub(crate) mod modem {
    pub(crate) const CD: u8 = 0x80;
    pub(crate) const RI: u8 = 0x40;
    pub(crate) const DSR: u8 = 0x20;
    pub(crate) const CTS: u8 = 0x10;
    pub(crate) const DELTA_CD: u8 = 0x08;
    pub(crate) const TRAILING_RI: u8 = 0x04;
    pub(crate) const DELTA_DSR: u8 = 0x02;
    pub(crate) const DELTA_CTS: u8 = 0x01;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_commands() -> Vec<Command> {
        let mut v = vec![
            Command::Signature(b"serialhub".to_vec()),
            Command::Signature(vec![]),
            Command::SetBaud(Setting::Query),
            Command::SetBaud(Setting::Value(921_600)),
            Command::SetBaud(Setting::Value(0xFFFF_FFFF)),
            Command::SetDataSize(Setting::Query),
            Command::SetParity(Setting::Value(Parity::Space)),
            Command::SetStopSize(Setting::Value(StopBits::OnePointFive)),
            Command::NotifyLineState(0x60),
            Command::NotifyModemState(0xB1),
            Command::FlowControlSuspend,
            Command::FlowControlResume,
            Command::SetLineStateMask(0),
            Command::SetModemStateMask(255),
            Command::PurgeData(Purge::Both),
        ];
        for d in [
            DataBits::Five,
            DataBits::Six,
            DataBits::Seven,
            DataBits::Eight,
        ] {
            v.push(Command::SetDataSize(Setting::Value(d)));
        }
        for c in 0..=19 {
            v.push(Command::SetControl(Control::from_byte(c).unwrap()));
        }
        v
    }

    #[test]
    fn roundtrip_both_directions() {
        for dir in [Direction::ClientToServer, Direction::ServerToClient] {
            for cmd in all_commands() {
                let mut buf = Vec::new();
                encode(dir, &cmd, &mut buf);
                assert_eq!(decode(&buf), Ok((dir, cmd.clone())), "{buf:?}");
            }
        }
    }

    #[test]
    fn wire_values_match_the_rfc() {
        let mut b = Vec::new();
        encode(
            Direction::ServerToClient,
            &Command::SetBaud(Setting::Value(115_200)),
            &mut b,
        );
        assert_eq!(b, [101, 0, 1, 0xC2, 0x00]);
        b.clear();
        encode(
            Direction::ClientToServer,
            &Command::SetControl(Control::Rts(false)),
            &mut b,
        );
        assert_eq!(b, [5, 12]);
    }

    #[test]
    fn bad_payloads_are_errors_not_panics() {
        assert_eq!(decode(&[]), Err(DecodeError::Empty));
        assert_eq!(decode(&[13]), Err(DecodeError::UnknownCommand(13)));
        assert_eq!(decode(&[99]), Err(DecodeError::UnknownCommand(99)));
        assert_eq!(
            decode(&[1, 0, 1]),
            Err(DecodeError::BadLength { code: 1, len: 2 })
        );
        assert_eq!(
            decode(&[2, 9]),
            Err(DecodeError::BadValue { code: 2, value: 9 })
        );
        assert_eq!(
            decode(&[102, 9]),
            Err(DecodeError::BadValue { code: 2, value: 9 })
        );
        assert_eq!(
            decode(&[5, 20]),
            Err(DecodeError::BadValue { code: 5, value: 20 })
        );
        assert_eq!(
            decode(&[12]),
            Err(DecodeError::BadLength { code: 12, len: 0 })
        );
        // Every possible 1- and 2-byte payload decodes or errors without panicking.
        for a in 0..=255u8 {
            let _ = decode(&[a]);
            for b in 0..=255u8 {
                let _ = decode(&[a, b]);
            }
        }
    }
}
