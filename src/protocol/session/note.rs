//! What a session has to say (the daemon logs it, with the client's voice).

use std::fmt;
use std::time::Duration;

use crate::protocol::esp::{self, Op, Reply};
use crate::protocol::line::LineSettings;
use crate::protocol::notes::{self, Weight};
use crate::protocol::rfc2217::DecodeError;
use crate::protocol::Protocol;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Note {
    /// The client said nothing for this long while device output waited: a raw session.
    SilentClientRaw(Duration),
    /// The protocol is decided (`esp`: the loader protocol is followed).
    Speaks {
        protocol: Protocol,
        esp: bool,
    },
    Baud {
        from: u32,
        to: u32,
    },
    Settings(LineSettings),
    /// The device refused `asked` (the error), `kept` stays in force.
    Refused {
        asked: LineSettings,
        kept: LineSettings,
        error: String,
    },
    BreakFailed {
        on: bool,
        error: String,
    },
    /// DTR/RTS cannot be set (said once per session).
    LinesUnsupported(String),
    PurgeFailed(String),
    EntryFailed(String),
    /// What came of a command of the server's own.
    Ours {
        op: Op,
        reply: Reply,
    },
    ServerCommandIgnored,
    SubnegotiationIgnored(u8),
    SubnegotiationAborted(u8),
    TelnetCommandIgnored(u8),
    BadCommand(DecodeError),
    /// The ESP follower's.
    Esp(esp::Note),
}

impl notes::Note for Note {
    fn weight(&self) -> Weight {
        match self {
            Note::SilentClientRaw(_) | Note::Speaks { .. } | Note::Baud { .. } => Weight::Told,
            Note::Refused { .. }
            | Note::BreakFailed { .. }
            | Note::LinesUnsupported(_)
            | Note::PurgeFailed(_)
            | Note::EntryFailed(_) => Weight::Trouble,
            Note::Settings(_)
            | Note::Ours { .. }
            | Note::ServerCommandIgnored
            | Note::SubnegotiationIgnored(_)
            | Note::SubnegotiationAborted(_)
            | Note::TelnetCommandIgnored(_)
            | Note::BadCommand(_) => Weight::Trace,
            Note::Esp(n) => n.weight(),
        }
    }
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Note::SilentClientRaw(window) => write!(
                f,
                "client sent nothing for {} ms while device output waited: raw session",
                window.as_millis()
            ),
            Note::Speaks { protocol, esp } => write!(
                f,
                "the client speaks {}{}",
                protocol.as_str(),
                if *esp { ", esp-aware" } else { "" }
            ),
            Note::Baud { from, to } => write!(f, "baud {from} -> {to}"),
            Note::Settings(s) => write!(f, "line settings {s}"),
            Note::Refused { asked, kept, error } => {
                write!(f, "device refused {asked} ({error}); keeping {kept}")
            }
            Note::BreakFailed { on, error } => write!(f, "cannot set break {on}: {error}"),
            Note::LinesUnsupported(e) => write!(f, "cannot set DTR/RTS ({e}); continuing without"),
            Note::PurgeFailed(e) => write!(f, "purge failed: {e}"),
            Note::EntryFailed(e) => write!(f, "cannot enter the bootloader: {e}"),
            Note::Ours { op, reply } => write!(f, "the server's {op:?}: {reply:?}"),
            Note::ServerCommandIgnored => {
                f.write_str("ignoring a server-side command from the client")
            }
            Note::SubnegotiationIgnored(o) => write!(f, "ignoring subnegotiation for option {o}"),
            Note::SubnegotiationAborted(o) => {
                write!(f, "client cut a subnegotiation for option {o} short")
            }
            Note::TelnetCommandIgnored(c) => write!(f, "ignoring Telnet command {c:#04x}"),
            Note::BadCommand(e) => write!(f, "{e}"),
            Note::Esp(n) => n.fmt(f),
        }
    }
}
