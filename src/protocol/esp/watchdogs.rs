//! Turning off a native-USB chip's RTC watchdogs for a client that cannot know it should,
//! sans-IO: the commands, in order, and what their answers decide.
//!
//! On its USB-Serial/JTAG port a chip enters download mode with its RTC watchdog still armed
//! (the second-stage bootloader armed it, the peripheral's reset keeps the RTC domain), and
//! the ROM loader does not feed it: 9 s later the chip resets in the middle of a flash.
//! esptool disables it right after connecting — `disable_watchdogs` in `targets/esp32c3.py`,
//! `esp32s3.py`, `esp32c6.py` — but since 5.3 only when it sees the USB-Serial/JTAG VID/PID
//! of a *local* port, so never over `rfc2217://`, `socket://` or a pty link. The server knows
//! the port is native USB; it sends the same writes itself, between two of the client's
//! commands ([`super::EspWatch::inject`]), and the client sees none of them.
//!
//! The chip is told apart the way esptool 4.x did, by the ROM word at `CHIP_DETECT_MAGIC_REG`
//! (one READ_REG that every ROM answers, also in secure download mode); its value picks the
//! chip's register layout (esptool's `CHIP_DETECT_MAGIC_VALUE` lists, v4.8.1). A chip not in
//! the table is left alone.
//!
//! Then, as esptool does: unlock the RWDT's configuration, turn it off, lock it; unlock the
//! super watchdog's, read its configuration, write it back with auto-feed on, lock it.

use super::command::{Command, Reply};

/// The ROM word that differs per chip model (esptool `CHIP_DETECT_MAGIC_REG_ADDR`).
pub(crate) const CHIP_DETECT_MAGIC_REG: u32 = 0x4000_1000;

/// One chip model's watchdog registers (esptool `targets/*.py`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    pub(crate) chip: &'static str,
    magic: &'static [u32],
    wdt_config0: u32,
    wdt_wprotect: u32,
    wdt_wkey: u32,
    swd_conf: u32,
    swd_wprotect: u32,
    swd_wkey: u32,
    swd_auto_feed: u32,
}

/// RTC_CNTL_WDT_WKEY / RTC_CNTL_SWD_WKEY of the C3 and S3 (the C6 and H2 use the first for
/// both).
const WDT_WKEY: u32 = 0x50D8_3AA1;
const SWD_WKEY: u32 = 0x8F1D_312A;

/// The ESP32-C6's watchdogs: DR_REG_LP_WDT_BASE 0x600B_1C00, one key for both.
const C6: Layout = Layout {
    chip: "ESP32-C6",
    magic: &[0x2CE0_806F],
    wdt_config0: 0x600B_1C00,
    wdt_wprotect: 0x600B_1C18,
    wdt_wkey: WDT_WKEY,
    swd_conf: 0x600B_1C1C,
    swd_wprotect: 0x600B_1C20,
    swd_wkey: WDT_WKEY,
    swd_auto_feed: 1 << 18,
};

/// The chips with a USB-Serial/JTAG port, by their magic word.
const LAYOUTS: &[Layout] = &[
    // RTCCNTL_BASE_REG 0x6000_8000.
    Layout {
        chip: "ESP32-C3",
        magic: &[0x6921_506F, 0x1B31_506F, 0x4881_606F, 0x4361_606F],
        wdt_config0: 0x6000_8090,
        wdt_wprotect: 0x6000_80A8,
        wdt_wkey: WDT_WKEY,
        swd_conf: 0x6000_80AC,
        swd_wprotect: 0x6000_80B0,
        swd_wkey: SWD_WKEY,
        swd_auto_feed: 1 << 31,
    },
    Layout {
        chip: "ESP32-S3",
        magic: &[0x9],
        wdt_config0: 0x6000_8098,
        wdt_wprotect: 0x6000_80B0,
        wdt_wkey: WDT_WKEY,
        swd_conf: 0x6000_80B4,
        swd_wprotect: 0x6000_80B8,
        swd_wkey: SWD_WKEY,
        swd_auto_feed: 1 << 31,
    },
    C6,
    // The H2 has the C6's LP_WDT block.
    Layout {
        chip: "ESP32-H2",
        magic: &[0xD7B7_3E80],
        ..C6
    },
];

/// The chip model whose magic word this is, if it has a USB-Serial/JTAG port.
pub(crate) fn layout(magic: u32) -> Option<&'static Layout> {
    LAYOUTS.iter().find(|l| l.magic.contains(&magic))
}

/// Where the sequence is: the command of ours whose answer is awaited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// Not started in this loader run.
    Idle,
    /// READ_REG of the magic word.
    Detect,
    /// The writes before the super watchdog's read, by index into [`Disarm::writes_before`].
    Write(&'static Layout, u8),
    /// READ_REG of SWD_CONF.
    ReadSwd(&'static Layout),
    /// SWD_CONF written back with auto-feed, then the lock.
    Finish(&'static Layout, u8),
    /// Finished: the watchdogs are off (or the chip is not one that needs it).
    Done(Outcome),
}

/// How a run of the sequence ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Both watchdogs handled, on this chip.
    Disarmed(&'static str),
    /// The magic word is not a chip with a USB-Serial/JTAG port: nothing written.
    NotNeeded(u32),
    /// A command failed or went unanswered: the client's session goes on as it would have.
    GaveUp(Reply),
}

/// One loader run's watchdog sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Disarm {
    step: Step,
}

impl Default for Disarm {
    fn default() -> Self {
        Disarm { step: Step::Idle }
    }
}

impl Disarm {
    /// The chip's ROM loader has answered a SYNC (not the stub's: a stub already running means
    /// a host handled the watchdogs before): the first command to send, once per loader run.
    pub(crate) fn start(&mut self) -> Option<Command> {
        if self.step != Step::Idle {
            return None;
        }
        self.step = Step::Detect;
        Some(Command::read_reg(CHIP_DETECT_MAGIC_REG))
    }

    /// The chip was reset: its next loader run needs the sequence again.
    pub(crate) fn chip_reset(&mut self) {
        self.step = Step::Idle;
    }

    /// How it ended, once it has.
    pub(crate) fn outcome(&self) -> Option<Outcome> {
        match self.step {
            Step::Done(o) => Some(o),
            _ => None,
        }
    }

    /// What came of the last command sent: the next one, or `None` when the sequence is over
    /// (see [`Disarm::outcome`]) or was not running.
    pub(crate) fn answered(&mut self, reply: Reply) -> Option<Command> {
        let value = match reply {
            Reply::Answered { value, .. } if reply.ok() => value,
            _ => {
                if !matches!(self.step, Step::Idle | Step::Done(_)) {
                    self.step = Step::Done(Outcome::GaveUp(reply));
                }
                return None;
            }
        };
        let (step, next) = match self.step {
            Step::Idle | Step::Done(_) => return None,
            Step::Detect => match layout(value) {
                None => (Step::Done(Outcome::NotNeeded(value)), None),
                Some(l) => (Step::Write(l, 0), Some(Self::writes_before(l)[0])),
            },
            Step::Write(l, i) => {
                let writes = Self::writes_before(l);
                match writes.get(i as usize + 1) {
                    Some(&cmd) => (Step::Write(l, i + 1), Some(cmd)),
                    None => (Step::ReadSwd(l), Some(Command::read_reg(l.swd_conf))),
                }
            }
            Step::ReadSwd(l) => (
                Step::Finish(l, 0),
                Some(write(l.swd_conf, value | l.swd_auto_feed)),
            ),
            Step::Finish(l, 0) => (Step::Finish(l, 1), Some(write(l.swd_wprotect, 0))),
            Step::Finish(l, _) => (Step::Done(Outcome::Disarmed(l.chip)), None),
        };
        self.step = step;
        next
    }

    /// esptool's order: the RWDT unlocked, off, locked; the super watchdog unlocked.
    fn writes_before(l: &Layout) -> [Command; 4] {
        [
            write(l.wdt_wprotect, l.wdt_wkey),
            write(l.wdt_config0, 0),
            write(l.wdt_wprotect, 0),
            write(l.swd_wprotect, l.swd_wkey),
        ]
    }
}

/// A whole-word WRITE_REG, as esptool's `write_reg` sends it (mask all ones, no delay).
fn write(addr: u32, value: u32) -> Command {
    Command::write_reg(addr, value, 0xFFFF_FFFF, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(value: u32) -> Reply {
        Reply::Answered {
            value,
            status: 0,
            error: 0,
        }
    }

    /// Runs the sequence against a chip whose registers read `regs` and whose magic is
    /// `magic`; the commands sent, in order.
    fn run(magic: u32, swd_conf: u32) -> (Vec<Command>, Option<Outcome>) {
        let mut d = Disarm::default();
        let mut sent = vec![];
        let mut next = d.start();
        while let Some(cmd) = next.take() {
            sent.push(cmd);
            assert!(sent.len() <= 8, "the sequence is bounded");
            let value = if cmd == Command::read_reg(CHIP_DETECT_MAGIC_REG) {
                magic
            } else if cmd.op() == super::super::Op::ReadReg {
                swd_conf
            } else {
                0
            };
            next = d.answered(ok(value));
        }
        (sent, d.outcome())
    }

    #[test]
    fn a_c3_gets_esptools_writes_in_esptools_order() {
        let (sent, outcome) = run(0x1B31_506F, 0x0000_1234);
        assert_eq!(
            sent,
            [
                Command::read_reg(CHIP_DETECT_MAGIC_REG),
                write(0x6000_80A8, WDT_WKEY),
                write(0x6000_8090, 0),
                write(0x6000_80A8, 0),
                write(0x6000_80B0, SWD_WKEY),
                Command::read_reg(0x6000_80AC),
                write(0x6000_80AC, 0x8000_1234),
                write(0x6000_80B0, 0),
            ]
        );
        assert_eq!(outcome, Some(Outcome::Disarmed("ESP32-C3")));
    }

    #[test]
    fn an_s3_and_a_c6_use_their_own_registers() {
        let (sent, outcome) = run(0x9, 0);
        assert_eq!(sent[1], write(0x6000_80B0, WDT_WKEY));
        assert_eq!(sent[2], write(0x6000_8098, 0));
        assert_eq!(sent[6], write(0x6000_80B4, 1 << 31));
        assert_eq!(outcome, Some(Outcome::Disarmed("ESP32-S3")));
        let (sent, outcome) = run(0x2CE0_806F, 0);
        assert_eq!(
            sent[4],
            write(0x600B_1C20, WDT_WKEY),
            "the C6's SWD key is the WDT's"
        );
        assert_eq!(sent[6], write(0x600B_1C1C, 1 << 18));
        assert_eq!(outcome, Some(Outcome::Disarmed("ESP32-C6")));
    }

    #[test]
    fn a_chip_without_usb_serial_jtag_is_left_alone() {
        // The ESP32's magic word (esptool targets/esp32.py).
        let (sent, outcome) = run(0x00F0_1D83, 0);
        assert_eq!(sent, [Command::read_reg(CHIP_DETECT_MAGIC_REG)]);
        assert_eq!(outcome, Some(Outcome::NotNeeded(0x00F0_1D83)));
    }

    #[test]
    fn it_runs_once_per_loader_run_and_again_after_a_reset() {
        let mut d = Disarm::default();
        assert!(d.start().is_some());
        assert_eq!(d.start(), None, "never twice in one run");
        d.chip_reset();
        assert!(d.start().is_some());
    }

    #[test]
    fn a_failed_or_unanswered_command_ends_it_and_nothing_more_is_sent() {
        let mut d = Disarm::default();
        d.start();
        let refused = Reply::Answered {
            value: 0,
            status: 1,
            error: 5,
        };
        assert_eq!(d.answered(refused), None);
        assert_eq!(d.outcome(), Some(Outcome::GaveUp(refused)));
        assert_eq!(d.answered(ok(0x9)), None, "a late answer starts nothing");
        let mut d = Disarm::default();
        d.start();
        assert!(d.answered(ok(0x9)).is_some());
        assert_eq!(d.answered(Reply::TimedOut), None);
        assert_eq!(d.outcome(), Some(Outcome::GaveUp(Reply::TimedOut)));
        assert_eq!(
            Disarm::default().answered(ok(0)),
            None,
            "not started: nothing"
        );
    }
}
