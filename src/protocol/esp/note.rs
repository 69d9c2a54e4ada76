//! What the follower has to say (the session passes it on; the daemon logs it).

use std::fmt;

use super::frame::Op;
use super::watchdogs::Outcome;
use super::ENTRY_WAIT;
use crate::protocol::notes::{self, Weight};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Note {
    /// esptool syncs with a chip that may run its application: a bootloader entry starts.
    SyncToApp,
    /// A chip believed in its loader left this many SYNCs unanswered: it is reset.
    SyncsUnanswered(u8),
    /// The client's CHANGE_BAUDRATE `(new, old)`: the UART moves to `rate` once answered.
    BaudAsked { new: u32, old: u32, rate: u32 },
    /// The chip's first answer: it is in its loader.
    InLoader,
    /// What the chip printed while booting, dropped.
    BootOutputDropped(usize),
    /// A command of the server's own goes to the chip.
    SendingOurs(Op),
    /// The bootloader entry did not finish in time: SYNCs pass again.
    EntryTimedOut,
    /// No answer to the client's CHANGE_BAUDRATE to this rate: the UART stays.
    BaudUnanswered(u32),
    /// No answer to the server's own command.
    OursUnanswered(Op),
    /// A native-USB chip's watchdogs, for a client that cannot know to turn them off.
    Watchdogs(Outcome),
}

impl notes::Note for Note {
    fn weight(&self) -> Weight {
        match self {
            Note::SyncToApp | Note::SyncsUnanswered(_) => Weight::Told,
            Note::EntryTimedOut | Note::BaudUnanswered(_) | Note::OursUnanswered(_) => {
                Weight::Trouble
            }
            Note::Watchdogs(Outcome::GaveUp(_)) => Weight::Trouble,
            Note::Watchdogs(_) => Weight::Trace,
            Note::BaudAsked { .. }
            | Note::InLoader
            | Note::BootOutputDropped(_)
            | Note::SendingOurs(_) => Weight::Trace,
        }
    }
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Note::SyncToApp => f.write_str(
                "esptool is syncing with a chip that may be running its application; entering the bootloader",
            ),
            Note::SyncsUnanswered(n) => {
                write!(f, "the chip did not answer {n} SYNCs; entering its bootloader")
            }
            Note::BaudAsked { new, old, rate } => {
                write!(f, "CHANGE_BAUDRATE ({new}, {old}): {rate} once the chip answers")
            }
            Note::InLoader => f.write_str("the chip answers: it is in its loader"),
            Note::BootOutputDropped(k) => write!(f, "dropped {k} bytes of boot output"),
            Note::SendingOurs(op) => write!(f, "sending {op:?} of the server's own"),
            Note::EntryTimedOut => write!(
                f,
                "the bootloader entry did not finish in {:.1} s; letting SYNCs through",
                ENTRY_WAIT.as_secs_f32()
            ),
            Note::BaudUnanswered(rate) => write!(
                f,
                "the chip did not answer CHANGE_BAUDRATE to {rate}; staying at the current rate"
            ),
            Note::OursUnanswered(op) => write!(f, "the chip did not answer the server's {op:?}"),
            Note::Watchdogs(Outcome::Disarmed(chip)) => write!(
                f,
                "native USB: turned off the {chip}'s RTC watchdog and set its super watchdog to auto-feed, as esptool does on a local port"
            ),
            Note::Watchdogs(Outcome::NotNeeded(magic)) => write!(
                f,
                "native USB: chip magic {magic:#010x} has no USB-Serial/JTAG watchdog to turn off"
            ),
            Note::Watchdogs(Outcome::GaveUp(reply)) => write!(
                f,
                "native USB: could not turn off the chip's watchdogs ({reply:?}); a long flash may be cut short by a chip reset"
            ),
        }
    }
}
