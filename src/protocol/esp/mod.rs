//! The ESP serial loader protocol as it passes a session, sans-IO: the follower.
//!
//! On `socket://` esptool sends no line changes and no settings: it cannot reset the chip or
//! change the UART's rate; neither can a flasher behind a pty, or esptool `--before no-reset`
//! over RFC 2217. The follower does both for them by following the SLIP frames of the loader
//! protocol as they pass, in both directions (on every device; the entry only where its reset
//! policy can move lines):
//!
//! - the first SYNC of a session, to a chip not known to be in its loader, asks for a
//!   bootloader entry (the device's reset policy) and is held back; SYNCs arriving while
//!   the chip resets are swallowed, one that esptool still waits on is replayed the moment the
//!   chip is ready, and what the chip printed while booting is dropped, so esptool's retries
//!   meet a chip that answers;
//! - a CHANGE_BAUDRATE request parks later client bytes until the chip has answered at the
//!   old rate; then the UART switches to the rate the client meant, and they are released;
//! - the server can also *speak* the protocol ([`EspWatch::inject`]): a command of its own
//!   goes to the chip between two of the client's (once the chip has answered the client's
//!   last request, never inside a READ_FLASH stream), the client's next command is parked
//!   until the chip has answered ours, and that answer is taken out of the stream: the client
//!   never sees it ([`command`]).
//!
//! Everything else passes untouched: a frame is a SYNC only if it decodes to exactly
//! esptool's SYNC request, and malformed frames pass as they came. Only the first few decoded
//! bytes of a frame are ever looked at; the rest of a frame is skipped with one `memchr` for
//! its end, so a chunk in which nothing matches costs a scan and no copy beyond the one into
//! the outgoing buffer that every session makes. Only while one of the server's commands
//! waits for its answer are the chip's frames held, each in a small fixed buffer, until
//! their end says whether they are that answer.
//!
//! One piece past 700 lines: both directions share the framers, the hold and the queue of the
//! server's commands, and every rule above reads or moves them; the pure parts live in
//! `frame`, `command`, `note` and `watchdogs`.

mod command;
mod frame;
mod note;
#[cfg(test)]
mod tests;
pub(crate) mod watchdogs;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

pub(crate) use self::command::{Command, InjectError, Reply};
use self::frame::{baud_meant, Framer, END, HEAD, LOOK, REQUEST, RESPONSE, SYNC_BODY};
pub(crate) use self::frame::{Op, SYNC_FRAME};
pub(crate) use self::note::Note;
use self::watchdogs::Disarm;
use crate::protocol::notes::Notes;
use crate::protocol::reset::ResetTo;

/// How long client bytes may wait for the chip's answer to CHANGE_BAUDRATE (esptool's own
/// command timeout).
const BAUD_ANSWER_WAIT: Duration = Duration::from_secs(3);
/// How long a bootloader entry may take before SYNCs pass again regardless (a sequence that
/// was cut short, by a USB re-enumeration for instance, must not leave SYNCs swallowed).
const ENTRY_WAIT: Duration = Duration::from_secs(2);
/// How long esptool waits for the answer to a SYNC (its `SYNC_TIMEOUT`).
const SYNC_ANSWER_WAIT: Duration = Duration::from_millis(100);
/// SYNCs a chip believed to be in its loader may leave unanswered before it is reset anyway
/// (a replayed SYNC and esptool's own may both be in flight before the first answer).
const UNANSWERED_SYNCS: u8 = 3;
/// How long a command of the server's may wait for its moment, and then for its answer
/// (esptool's default command timeout: the client waits no longer than it would for a slow
/// answer of its own).
const INJECT_WAIT: Duration = Duration::from_secs(3);
/// How many of the server's commands may wait to go out.
const INJECT_QUEUE: usize = 4;
/// The longest chip frame held while one of ours waits for its answer: a response without
/// data, escaped throughout, fits many times. A longer frame is not that answer, and passes.
const HELD_FRAME: usize = 128;

/// Where bytes for the chip go, in order.
pub(crate) type Sink<'a> = &'a mut dyn FnMut(&[u8]);

/// What the follower needs done, in stream order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Reset the chip into its loader with the device's reset policy, then call
    /// [`EspWatch::bootloader_entered`].
    EnterBootloader,
    /// The chip answered the client's CHANGE_BAUDRATE: switch the UART to this rate (`None`:
    /// it refused, stay), then call [`EspWatch::resume`] to release the parked client bytes.
    BaudAnswered(Option<u32>),
    /// What came of a command of the server's: switch the UART if it was an accepted
    /// CHANGE_BAUDRATE ([`Command::baud`]), then call [`EspWatch::resume`].
    Injected(Command, Reply),
}

/// Where the chip is, as far as the follower knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chip {
    /// Possibly running its application: a SYNC means a bootloader entry is needed.
    Unknown,
    /// A bootloader entry is being played; SYNCs are swallowed meanwhile.
    Entering { since: Instant },
    /// In its ROM loader (or the stub): requests pass.
    Loader,
    /// The client resets the chip itself (its own lines, over RFC 2217): SYNCs pass, and
    /// the server never steps in, however they are answered.
    Client,
}

/// Why the client's bytes are parked, if they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hold {
    /// They pass.
    None,
    /// The client's CHANGE_BAUDRATE went to the chip: the rate it asked for, and when we
    /// stop waiting for the answer.
    Baud { rate: u32, until: Instant },
    /// A command of ours went to the chip at `sent`; its answer is due by `until`.
    Ours {
        cmd: Command,
        sent: Instant,
        until: Instant,
    },
    /// The answer came (or the wait ended): parked until [`EspWatch::resume`].
    Resume,
}

/// Whether the server can reset the chip into its loader for a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Entry {
    /// Through the device's reset policy (a SYNC to a chip that may be running its
    /// application starts a bootloader entry).
    Reset,
    /// Never (`reset = "none"`): SYNCs pass as they come; the baud still follows.
    Never,
}

/// One session's view of the ESP loader protocol.
#[derive(Debug)]
pub(crate) struct EspWatch {
    /// What it has to say, until the session takes it.
    pub(crate) notes: Notes<Note>,
    entry: Entry,
    chip: Chip,
    /// This session started a bootloader entry (so it owes the chip a reset into its app).
    entered: bool,
    up: Framer,
    down: Framer,
    /// Up: the last END opened a frame (the one before it was empty), so the client is
    /// inside a request even though none of its bytes has come yet.
    up_open: bool,
    /// Up: the current frame may still be a SYNC; its raw bytes wait in `held` until its
    /// end says whether it is.
    candidate: bool,
    held: [u8; SYNC_FRAME.len()],
    held_len: usize,
    /// A SYNC was swallowed while the chip reset: until when esptool waits for its answer
    /// (a SYNC it no longer waits on is not replayed: its answers would only be read, and
    /// skipped, by the next command).
    replay_until: Option<Instant>,
    /// SYNCs passed to a chip believed in its loader without an answer since.
    unanswered: u8,
    hold: Hold,
    /// Client bytes that arrived while parked.
    parked: Vec<u8>,
    /// Drop device output until the chip's first frame (its boot messages).
    discard: bool,
    /// The client is running a loader session: it sent a SYNC, or moved its lines into a
    /// bootloader entry, and the chip has not been reset into its application since. Such a
    /// session is never interrupted by another client, and what the chip says meanwhile is
    /// for this client alone.
    loading: bool,
    /// The chip has answered a request since it was last reset: it takes commands.
    synced: bool,
    /// The opcode of the client's last request while its answer has not come.
    pending: Option<u8>,
    /// The chip streams READ_FLASH data that the client acknowledges, until the client's
    /// next request.
    streaming: bool,
    /// The server's commands waiting for their moment, and since when.
    queue: VecDeque<(Command, Instant)>,
    /// Down, while one of ours waits: the current chip frame from its opening END (empty:
    /// the frame's start has passed already, or it was too long to be that answer).
    frame: [u8; HELD_FRAME],
    frame_len: usize,
    /// On a native-USB port: the watchdog sequence the server runs for the client once the
    /// ROM loader answers (`None`: a UART bridge, nothing to do), and the command of it that
    /// is queued or awaits its answer.
    disarm: Option<Disarm>,
    disarm_cmd: Option<Command>,
}

impl EspWatch {
    /// `in_loader`: the chip is known to be in its loader already (a previous session left
    /// it there, or the server put it there), so a SYNC must not reset it again.
    pub(crate) fn new(in_loader: bool, entry: Entry) -> EspWatch {
        EspWatch {
            notes: Notes::default(),
            entry,
            chip: if in_loader {
                Chip::Loader
            } else {
                Chip::Unknown
            },
            entered: false,
            up: Framer::default(),
            down: Framer::default(),
            up_open: false,
            candidate: false,
            held: [0; SYNC_FRAME.len()],
            held_len: 0,
            replay_until: None,
            unanswered: 0,
            hold: Hold::None,
            parked: Vec::new(),
            discard: false,
            loading: false,
            synced: false,
            pending: None,
            streaming: false,
            queue: VecDeque::new(),
            frame: [0; HELD_FRAME],
            frame_len: 0,
            disarm: None,
            disarm_cmd: None,
        }
    }

    /// The port is the chip's own USB (USB-Serial/JTAG): once its ROM loader answers a SYNC,
    /// the server turns the watchdogs off for the client ([`watchdogs`]).
    pub(crate) fn on_native_usb(mut self) -> EspWatch {
        self.disarm = Some(Disarm::default());
        self
    }

    /// The same watch for a session that (re)gains control of the chip: it starts over, as
    /// if it had just connected, with what is known of the chip now (the server's commands
    /// still queued are dropped with the session that wanted them).
    pub(crate) fn restart(&self, in_loader: bool) -> EspWatch {
        let w = EspWatch::new(in_loader, self.entry);
        match self.disarm {
            Some(_) => w.on_native_usb(),
            None => w,
        }
    }

    /// The client is running a loader session (see the field).
    pub(crate) fn loading(&self) -> bool {
        self.loading
    }

    /// The client's lines started a bootloader entry that the server plays: its loader
    /// session starts now, before the chip's download banner can come out.
    pub(crate) fn entry_started(&mut self) {
        self.loading = true;
    }

    /// This session reset the chip into its loader.
    pub(crate) fn entered(&self) -> bool {
        self.entered
    }

    /// The chip is known to be in its loader (the next session's SYNC must not reset it).
    pub(crate) fn in_loader(&self) -> bool {
        self.chip == Chip::Loader
    }

    /// Client bytes wait (for a baud change, or for the answer to a command of ours): stop
    /// reading the client.
    pub(crate) fn parked(&self) -> bool {
        self.hold != Hold::None
    }

    /// When [`EspWatch::on_timer`] has something to do.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        let entry = match self.chip {
            Chip::Entering { since } => Some(since + ENTRY_WAIT),
            _ => None,
        };
        let hold = match self.hold {
            Hold::Baud { until, .. } | Hold::Ours { until, .. } => Some(until),
            Hold::None => self.queue.front().map(|&(_, at)| at + INJECT_WAIT),
            Hold::Resume => None,
        };
        [entry, hold].into_iter().flatten().min()
    }

    /// Queue a command of the server's: it goes to the chip (through `to_chip`, now or from a
    /// later call) at the next moment between two of the client's commands, and its outcome
    /// comes back as [`Action::Injected`]. `to_chip` is `None` while the chip cannot take
    /// bytes (an effect is in flight).
    pub(crate) fn inject(
        &mut self,
        cmd: Command,
        now: Instant,
        to_chip: Option<Sink<'_>>,
    ) -> Result<(), InjectError> {
        if self.queue.len() >= INJECT_QUEUE {
            return Err(InjectError::QueueFull);
        }
        self.queue.push_back((cmd, now));
        if let Some(to_chip) = to_chip {
            self.try_inject(now, to_chip);
        }
        Ok(())
    }

    /// The chip can take bytes again: a command of ours whose moment has come goes out.
    pub(crate) fn poll(&mut self, now: Instant, to_chip: &mut dyn FnMut(&[u8])) {
        self.try_inject(now, to_chip);
    }

    /// The client is between two frames: nothing of a request has come (or is held).
    fn client_between_frames(&self) -> bool {
        self.up.len == 0 && !self.up.esc && !self.up_open && self.held_len == 0
    }

    /// Send the first queued command if this is its moment; true if it went.
    fn try_inject(&mut self, now: Instant, to_chip: &mut dyn FnMut(&[u8])) -> bool {
        let moment = self.hold == Hold::None
            && self.synced
            && matches!(self.chip, Chip::Loader | Chip::Client)
            && self.pending.is_none()
            && !self.streaming
            && !self.discard
            && self.client_between_frames();
        if !moment {
            return false;
        }
        let Some((cmd, _)) = self.queue.pop_front() else {
            return false;
        };
        self.notes.push(Note::SendingOurs(cmd.op()));
        cmd.encode(to_chip);
        self.hold = Hold::Ours {
            cmd,
            sent: now,
            until: now + INJECT_WAIT,
        };
        self.frame_len = 0;
        true
    }

    /// A reset of any kind: the chip takes no command until it has answered one again, and
    /// an answer we wait for will not come.
    fn chip_reset(&mut self) {
        if let Some(d) = &mut self.disarm {
            d.chip_reset();
        }
        if let Some(cmd) = self.disarm_cmd.take() {
            self.queue.retain(|&(c, _)| c != cmd);
        }
        self.synced = false;
        self.pending = None;
        self.streaming = false;
        if let Hold::Ours { sent, until, .. } = &mut self.hold {
            *until = *sent;
        }
    }

    /// Client bytes: what may go to the chip is passed to `out`, in order.
    pub(crate) fn on_client(
        &mut self,
        input: &[u8],
        now: Instant,
        out: &mut dyn FnMut(&[u8]),
    ) -> Option<Action> {
        let mut action = None;
        let mut rest = input;
        while !rest.is_empty() {
            if self.parked() {
                self.parked.extend_from_slice(rest);
                break;
            }
            let (content, end) = match memchr::memchr(END, rest) {
                Some(k) => (&rest[..k], true),
                None => (rest, false),
            };
            self.client_content(content, out);
            rest = &rest[content.len()..];
            if end {
                self.client_frame_end(now, out, &mut action);
                rest = &rest[1..];
            }
        }
        action
    }

    /// Bytes between two ENDs (or up to the end of the chunk), client to chip.
    fn client_content(&mut self, content: &[u8], out: &mut dyn FnMut(&[u8])) {
        if !self.up.in_frame {
            return out(content);
        }
        // Without an entry to make, a SYNC passes like any frame: nothing is held.
        if self.candidate && self.entry == Entry::Reset {
            self.up.decode(content, LOOK);
            let n = self.up.len;
            let fits = self.held_len + content.len() <= self.held.len();
            if fits && n <= SYNC_BODY.len() && self.up.head[..n] == SYNC_BODY[..n] {
                self.held[self.held_len..][..content.len()].copy_from_slice(content);
                self.held_len += content.len();
                return;
            }
            // Not a SYNC: what was held goes first.
            self.candidate = false;
            out(&self.held[..self.held_len]);
            self.held_len = 0;
        } else {
            self.up.decode(content, LOOK);
        }
        out(content);
    }

    /// A whole SYNC request arrived: does it wait for the chip (and does the chip need a
    /// reset)?
    fn sync_held_back(&mut self, now: Instant, action: &mut Option<Action>) -> bool {
        if self.entry == Entry::Never {
            return false;
        }
        match self.chip {
            Chip::Entering { .. } => {
                self.replay_until = Some(now + SYNC_ANSWER_WAIT);
                true
            }
            Chip::Loader if self.unanswered < UNANSWERED_SYNCS => {
                self.unanswered += 1;
                false
            }
            Chip::Client => false,
            Chip::Loader | Chip::Unknown => {
                self.notes.push(if self.chip == Chip::Loader {
                    Note::SyncsUnanswered(self.unanswered)
                } else {
                    Note::SyncToApp
                });
                self.chip = Chip::Entering { since: now };
                self.entered = true;
                self.replay_until = Some(now + SYNC_ANSWER_WAIT);
                self.unanswered = 0;
                self.discard = true;
                self.down = Framer::default();
                self.chip_reset();
                *action = Some(Action::EnterBootloader);
                true
            }
        }
    }

    fn client_frame_end(
        &mut self,
        now: Instant,
        out: &mut dyn FnMut(&[u8]),
        action: &mut Option<Action>,
    ) {
        let sync = self.candidate && self.up.len == SYNC_BODY.len() && !self.up.esc;
        self.loading |= sync;
        if !(sync && self.sync_held_back(now, action)) {
            out(&self.held[..self.held_len]);
        }
        self.held_len = 0;
        out(&[END]);
        if let Some(op) = self.up.packet(REQUEST) {
            self.pending = Some(op);
            self.streaming = false;
        }
        // Only a chip in its loader answers CHANGE_BAUDRATE; anything else must not stall
        // the client waiting for an answer that never comes.
        if matches!(self.chip, Chip::Loader | Chip::Client)
            && self.up.len == HEAD
            && self.up.is(REQUEST, Op::ChangeBaudrate)
            && self.up.head[2..4] == [8, 0]
        {
            let (new, old) = (self.up.word(8), self.up.word(12));
            let rate = baud_meant(new, old);
            self.notes.push(Note::BaudAsked { new, old, rate });
            self.hold = Hold::Baud {
                rate,
                until: now + BAUD_ANSWER_WAIT,
            };
        }
        self.up_open = self.up.len == 0;
        self.up.restart();
        self.candidate = true;
    }

    /// Device bytes: what the client may see is appended to `to_client`; a command of ours
    /// whose moment comes goes to `to_chip` (`None` while the chip cannot take bytes).
    pub(crate) fn on_device(
        &mut self,
        input: &[u8],
        now: Instant,
        to_client: &mut Vec<u8>,
        mut to_chip: Option<Sink<'_>>,
    ) -> Option<Action> {
        let mut action = None;
        let mut rest = input;
        if self.discard {
            match memchr::memchr(END, rest) {
                Some(k) => {
                    self.notes.push(Note::BootOutputDropped(k));
                    self.discard = false;
                    rest = &rest[k..];
                }
                None => return None,
            }
        }
        while !rest.is_empty() {
            if matches!(self.hold, Hold::Ours { .. }) {
                rest = self.device_awaiting_ours(rest, now, to_client, &mut action);
                continue;
            }
            let (content, end) = match memchr::memchr(END, rest) {
                Some(k) => (&rest[..k], true),
                None => (rest, false),
            };
            if self.down.in_frame {
                self.down.decode(content, HEAD);
            }
            if !end {
                to_client.extend_from_slice(rest);
                break;
            }
            to_client.extend_from_slice(&rest[..=content.len()]);
            rest = &rest[content.len() + 1..];
            if let Some(a) = self.device_frame_end(now) {
                action = Some(a);
            }
            if let Some(to_chip) = to_chip.as_deref_mut() {
                self.try_inject(now, to_chip);
            }
        }
        action
    }

    /// Device bytes while a command of ours waits for its answer, up to and including the
    /// next END: each frame is held from its opening END until its end says whether it is
    /// that answer, which is dropped whole; any other frame goes on as it came. Returns what
    /// is left of `input`.
    fn device_awaiting_ours<'a>(
        &mut self,
        input: &'a [u8],
        now: Instant,
        to_client: &mut Vec<u8>,
        action: &mut Option<Action>,
    ) -> &'a [u8] {
        let Hold::Ours { cmd, .. } = self.hold else {
            return input;
        };
        let (content, end) = match memchr::memchr(END, input) {
            Some(k) => (&input[..k], true),
            None => (input, false),
        };
        if self.down.in_frame {
            self.down.decode(content, HEAD);
        }
        if self.frame_len == 0 {
            to_client.extend_from_slice(content);
        } else if self.frame_len + content.len() <= HELD_FRAME {
            self.frame[self.frame_len..][..content.len()].copy_from_slice(content);
            self.frame_len += content.len();
        } else {
            // Too long to be the answer: it passes.
            to_client.extend_from_slice(&self.frame[..self.frame_len]);
            to_client.extend_from_slice(content);
            self.frame_len = 0;
        }
        if !end {
            return &input[input.len()..];
        }
        // Only a held frame can be taken out: one whose start passed (too long) goes on.
        let d = &self.down;
        if self.frame_len > 0 && d.is(RESPONSE, cmd.op()) && d.len >= 8 {
            let reply = Reply::Answered {
                value: d.word(4),
                status: if d.len > 8 { d.head[8] } else { 0xFF },
                error: if d.len > 9 { d.head[9] } else { 0 },
            };
            self.frame_len = 0;
            self.unanswered = 0;
            self.hold = Hold::Resume;
            self.ours_answered(cmd, reply, now);
            *action = Some(Action::Injected(cmd, reply));
            self.down.restart();
        } else {
            to_client.extend_from_slice(&self.frame[..self.frame_len]);
            if let Some(a) = self.device_frame_end(now) {
                *action = Some(a);
            }
            self.frame[0] = END;
            self.frame_len = 1;
        }
        &input[content.len() + 1..]
    }

    fn device_frame_end(&mut self, now: Instant) -> Option<Action> {
        let mut action = None;
        if let Some(op) = self.down.packet(RESPONSE) {
            if self.chip == Chip::Unknown {
                self.notes.push(Note::InLoader);
                self.chip = Chip::Loader;
            }
            self.unanswered = 0;
            self.synced = true;
            // The ROM answers a SYNC with a non-zero value, a running stub with 0 (esptool's
            // `sync_stub_detected`): only the ROM's loader needs the watchdogs turned off.
            if op == Op::Sync as u8 && self.down.word(4) != 0 {
                if let Some(cmd) = self.disarm.as_mut().and_then(Disarm::start) {
                    self.queue_disarm(cmd, now);
                }
            }
            if self.pending == Some(op) {
                self.pending = None;
            }
            self.streaming |= op == Op::ReadFlash as u8;
            if let (Hold::Baud { rate, .. }, true) = (self.hold, op == Op::ChangeBaudrate as u8) {
                // The first data byte is the status: 0 = done.
                let ok = self.down.len > 8 && self.down.head[8] == 0;
                self.hold = Hold::Resume;
                action = Some(Action::BaudAnswered(ok.then_some(rate)));
            }
        }
        self.down.restart();
        action
    }

    /// What came of a command of ours: if it was the watchdog sequence's, its next command
    /// goes to the front of the queue (out before the client's parked bytes), or how the
    /// sequence ended is noted.
    fn ours_answered(&mut self, cmd: Command, reply: Reply, now: Instant) {
        if self.disarm_cmd != Some(cmd) {
            return;
        }
        self.disarm_cmd = None;
        let Some(d) = &mut self.disarm else { return };
        match d.answered(reply) {
            Some(next) => self.queue_disarm(next, now),
            None => {
                if let Some(outcome) = d.outcome() {
                    self.notes.push(Note::Watchdogs(outcome));
                }
            }
        }
    }

    /// A command of the watchdog sequence goes first in the queue.
    fn queue_disarm(&mut self, cmd: Command, now: Instant) {
        if self.queue.len() < INJECT_QUEUE {
            self.queue.push_front((cmd, now));
            self.disarm_cmd = Some(cmd);
        }
    }

    /// A bootloader entry is done — the one asked for (or it could not be done), or one the
    /// client's lines or the portal started: SYNCs pass again, and one swallowed meanwhile
    /// that esptool still waits on goes to the chip now.
    pub(crate) fn bootloader_entered(&mut self, now: Instant, out: &mut dyn FnMut(&[u8])) {
        let asked = matches!(self.chip, Chip::Entering { .. });
        self.chip = Chip::Loader;
        self.unanswered = 0;
        self.chip_reset();
        if asked && self.replay_until.take().is_some_and(|t| now < t) {
            self.unanswered = 1;
            self.pending = Some(Op::Sync as u8);
            out(&SYNC_FRAME);
        }
    }

    /// The chip was reset into its application (by anyone): a SYNC needs an entry again.
    pub(crate) fn app_started(&mut self) {
        self.loading = false;
        self.chip_reset();
        if !matches!(self.chip, Chip::Entering { .. }) {
            self.chip = Chip::Unknown;
        }
    }

    /// The client moved its own lines in a reset pattern (esptool's own reset over RFC 2217),
    /// into the loader or (EN pulsed) its application: it takes care of the chip, so its
    /// SYNCs pass, and the session owes the chip nothing at its end. (A policy that plays
    /// bootloader entries tells [`bootloader_entered`] when the chip is there.) A bootloader
    /// entry starts a loader session; a hard reset does not end one: it is a flasher's last
    /// step, and the application it starts runs at the flasher's baud.
    ///
    /// [`bootloader_entered`]: EspWatch::bootloader_entered
    pub(crate) fn client_resets(&mut self, to: ResetTo) {
        self.entered = false;
        self.loading |= to == ResetTo::Bootloader;
        self.chip_reset();
        if !matches!(self.chip, Chip::Entering { .. }) {
            self.chip = Chip::Client;
        }
    }

    /// What held the client is over (the UART runs at its new rate, or an answer of ours was
    /// taken): the next command of ours goes out if its moment has come, else the parked
    /// client bytes are released.
    pub(crate) fn resume(&mut self, now: Instant, out: &mut dyn FnMut(&[u8])) -> Option<Action> {
        self.hold = Hold::None;
        if self.try_inject(now, out) {
            return None;
        }
        let parked = std::mem::take(&mut self.parked);
        let action = self.on_client(&parked, now, out);
        if self.parked.is_empty() {
            // Keep the allocation for the next time.
            self.parked = parked;
            self.parked.clear();
        }
        action
    }

    /// Time passed: give up waiting for a bootloader entry, a CHANGE_BAUDRATE answer, the
    /// answer to a command of ours (what was held of the chip's output goes to `to_client`)
    /// or a moment to send one.
    pub(crate) fn on_timer(
        &mut self,
        now: Instant,
        to_chip: &mut dyn FnMut(&[u8]),
        to_client: &mut Vec<u8>,
    ) -> Option<Action> {
        if let Chip::Entering { since } = self.chip {
            if now >= since + ENTRY_WAIT {
                self.notes.push(Note::EntryTimedOut);
                self.bootloader_entered(now, to_chip);
            }
        }
        match self.hold {
            Hold::Baud { rate, until } if now >= until => {
                self.notes.push(Note::BaudUnanswered(rate));
                self.resume(now, to_chip)
            }
            Hold::Ours { cmd, until, .. } if now >= until => {
                self.notes.push(Note::OursUnanswered(cmd.op()));
                to_client.extend_from_slice(&self.frame[..self.frame_len]);
                self.frame_len = 0;
                self.hold = Hold::Resume;
                self.ours_answered(cmd, Reply::TimedOut, now);
                Some(Action::Injected(cmd, Reply::TimedOut))
            }
            Hold::None => match self.queue.front() {
                Some(&(cmd, at)) if now >= at + INJECT_WAIT => {
                    self.queue.pop_front();
                    self.ours_answered(cmd, Reply::NotSent, now);
                    Some(Action::Injected(cmd, Reply::NotSent))
                }
                _ => None,
            },
            _ => None,
        }
    }
}
