//! Loader requests the server sends on its own, between two of the client's, and what comes
//! of them.
//!
//! The native-USB boards need a register written that a remote esptool cannot know to write;
//! the turbo runs the UART faster than the client asked: both are a request of the server's
//! own slipped into the client's loader session, whose answer the client never sees.

use super::frame::{baud_meant, Op, END, ESC, ESC_END, ESC_ESC, REQUEST};

/// The most data bytes a request of ours carries (WRITE_REG's four words; READ_FLASH's too).
const MAX_DATA: usize = 16;
/// A whole request on the wire, every byte escaped at worst, with its two ENDs.
const MAX_WIRE: usize = 2 * (8 + MAX_DATA) + 2;

/// A loader request of the server's own (checksum 0: none of these carries a data block).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Command {
    op: Op,
    len: usize,
    data: [u8; MAX_DATA],
}

// Issues 22 (native USB) and 23 (turbo) build these; until then only the tests do.
#[allow(dead_code)]
impl Command {
    fn new(op: Op, words: &[u32]) -> Command {
        let mut data = [0; MAX_DATA];
        for (slot, w) in data.chunks_exact_mut(4).zip(words) {
            slot.copy_from_slice(&w.to_le_bytes());
        }
        Command {
            op,
            len: 4 * words.len(),
            data,
        }
    }

    /// WRITE_REG: `*addr = (*addr & !mask) | (value & mask)`, then wait `delay_us`.
    pub(crate) fn write_reg(addr: u32, value: u32, mask: u32, delay_us: u32) -> Command {
        Command::new(Op::WriteReg, &[addr, value, mask, delay_us])
    }

    /// READ_REG: the value comes back in the response's value word.
    pub(crate) fn read_reg(addr: u32) -> Command {
        Command::new(Op::ReadReg, &[addr])
    }

    /// CHANGE_BAUDRATE to `new`, in the stub's form (`old` the rate in force) or the ROM's
    /// (`old` 0, `new` scaled by the ROM's crystal estimate).
    pub(crate) fn change_baudrate(new: u32, old: u32) -> Command {
        Command::new(Op::ChangeBaudrate, &[new, old])
    }

    pub(crate) fn op(&self) -> Op {
        self.op
    }

    /// The request's words (address, value, mask, delay for WRITE_REG; address for READ_REG),
    /// for tests that play the commands against a simulated chip.
    #[cfg(test)]
    pub(crate) fn words(&self) -> Vec<u32> {
        (0..self.len / 4).map(|i| self.word(i)).collect()
    }

    fn word(&self, i: usize) -> u32 {
        let b = &self.data[4 * i..4 * i + 4];
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    /// The rate the UART switches to once the chip has accepted this command.
    pub(crate) fn baud(&self) -> Option<u32> {
        (self.op == Op::ChangeBaudrate).then(|| baud_meant(self.word(0), self.word(1)))
    }

    /// The request as one SLIP frame, handed to `out` in one piece.
    pub(super) fn encode(&self, out: &mut dyn FnMut(&[u8])) {
        let mut raw = [0u8; 8 + MAX_DATA];
        raw[0] = REQUEST;
        raw[1] = self.op as u8;
        raw[2..4].copy_from_slice(&(self.len as u16).to_le_bytes());
        raw[8..8 + self.len].copy_from_slice(&self.data[..self.len]);
        let mut wire = [0u8; MAX_WIRE];
        let mut n = 0;
        let mut put = |b: u8| {
            wire[n] = b;
            n += 1;
        };
        put(END);
        for &b in &raw[..8 + self.len] {
            match b {
                END => [ESC, ESC_END].into_iter().for_each(&mut put),
                ESC => [ESC, ESC_ESC].into_iter().for_each(&mut put),
                b => put(b),
            }
        }
        put(END);
        out(&wire[..n]);
    }
}

/// What came of a command the server sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    /// The chip answered: the response's value word and its first two data bytes (status
    /// and error under the ROM and the stub, for these commands, which return no data).
    Answered { value: u32, status: u8, error: u8 },
    /// No answer in time; one that comes later reaches the client, which skips it as it
    /// skips any response to a command it did not send.
    TimedOut,
    /// It never went out: the client was not between two commands of a synced loader
    /// session in time (or the chip was reset meanwhile).
    NotSent,
}

impl Reply {
    /// The chip did what was asked.
    pub(crate) fn ok(&self) -> bool {
        matches!(self, Reply::Answered { status: 0, .. })
    }
}

/// Why a command cannot be queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum InjectError {
    /// The session does not follow the loader protocol (not an ESP device, or a plain tty).
    NotFollowing,
    /// Too many of the server's commands wait already; try again once one is answered.
    QueueFull,
}

impl std::fmt::Display for InjectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            InjectError::NotFollowing => "this session does not follow the ESP loader protocol",
            InjectError::QueueFull => "too many loader commands of the server's own wait already",
        })
    }
}
