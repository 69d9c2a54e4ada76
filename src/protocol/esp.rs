//! The ESP serial loader protocol as it passes a session, sans-IO.
//!
//! On `socket://` esptool sends no line changes and no settings: it cannot reset the chip or
//! change the UART's rate; neither can a flasher behind a pty, or esptool `--before no-reset`
//! over RFC 2217. The watch does both for them by following the SLIP frames of the loader
//! protocol as they pass, in both directions (on every device; the entry only where its reset
//! policy can move lines):
//!
//! - the first SYNC of a session, to a chip not known to be in its loader, asks for a
//!   bootloader entry (the device's reset policy) and is held back; SYNCs arriving while
//!   the chip resets are swallowed, one that esptool still waits on is replayed the moment the
//!   chip is ready, and what the chip
//!   printed while booting is dropped, so esptool's retries meet a chip that answers;
//! - a CHANGE_BAUDRATE request parks later client bytes until the chip has answered at the
//!   old rate; then the UART switches to the rate the client meant, and they are released.
//!
//! Everything else passes untouched: a frame is a SYNC only if it decodes to exactly
//! esptool's SYNC request, and malformed frames pass as they came. Only the first few decoded
//! bytes of a frame are ever looked at; the rest of a frame is skipped with one `memchr` for
//! its end, so a chunk in which nothing matches costs a scan and no copy beyond the one into
//! the outgoing buffer that every session makes.

use std::time::{Duration, Instant};

use crate::protocol::reset::ResetTo;
use log::{debug, log};

/// SLIP (RFC 1055) framing bytes.
const END: u8 = 0xC0;
const ESC: u8 = 0xDB;
const ESC_END: u8 = 0xDC;
const ESC_ESC: u8 = 0xDD;

/// A request's direction byte; responses carry [`RESPONSE`].
const REQUEST: u8 = 0x00;
const RESPONSE: u8 = 0x01;

/// A request's header (direction, opcode, size, checksum: 8 bytes) plus CHANGE_BAUDRATE's
/// two words: the frames the watch acts on other than SYNC.
const HEAD: usize = 16;
/// How many decoded bytes of a frame are kept: enough to recognise a whole SYNC and to tell
/// that a frame is longer than one.
const LOOK: usize = SYNC_BODY.len() + 1;

/// The loader commands the watch acts on (esptool's `ESP_CMDS`); the rest pass unread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Op {
    Sync = 0x08,
    ChangeBaudrate = 0x0F,
}

/// esptool's SYNC request, decoded (fixed by the protocol: 36 data bytes, checksum 0).
const SYNC_BODY: [u8; 44] = {
    let mut b = [0x55u8; 44];
    let head = [
        REQUEST,
        Op::Sync as u8,
        36,
        0,
        0,
        0,
        0,
        0,
        0x07,
        0x07,
        0x12,
        0x20,
    ];
    let mut i = 0;
    while i < head.len() {
        b[i] = head[i];
        i += 1;
    }
    b
};

/// The SYNC request on the wire (nothing in it needs escaping), replayed once the chip is
/// ready.
pub(crate) const SYNC_FRAME: [u8; 46] = {
    let mut f = [END; 46];
    let mut i = 0;
    while i < SYNC_BODY.len() {
        f[i + 1] = SYNC_BODY[i];
        i += 1;
    }
    f
};

/// Rates a client may mean; a ROM-form CHANGE_BAUDRATE is snapped to the nearest one.
const STANDARD_RATES: [u32; 18] = [
    9_600, 19_200, 38_400, 57_600, 74_880, 115_200, 230_400, 250_000, 460_800, 500_000, 576_000,
    921_600, 1_000_000, 1_152_000, 1_500_000, 2_000_000, 2_500_000, 3_000_000,
];
/// How far (per mille) a ROM-form rate may be from a standard one: the ROM's crystal
/// estimate is off by a few percent at most.
const SNAP_PER_MILLE: u64 = 30;

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

/// What the watch needs done, in stream order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Reset the chip into its loader with the device's reset policy, then call
    /// [`EspWatch::bootloader_entered`].
    EnterBootloader,
    /// The chip answered CHANGE_BAUDRATE: switch the UART to this rate (`None`: it refused,
    /// stay), then call [`EspWatch::baud_switched`] to release the parked client bytes.
    BaudAnswered(Option<u32>),
}

/// Where the chip is, as far as the watch knows.
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

/// Follows SLIP frame boundaries in one direction and decodes the start of each frame.
#[derive(Debug)]
struct Framer {
    /// An END has been seen: the bytes that follow are a frame's content.
    in_frame: bool,
    /// The last content byte was ESC.
    esc: bool,
    head: [u8; LOOK],
    /// Decoded bytes of the current frame, counted up to `LOOK`.
    len: usize,
}

impl Default for Framer {
    fn default() -> Framer {
        Framer {
            in_frame: false,
            esc: false,
            head: [0; LOOK],
            len: 0,
        }
    }
}

impl Framer {
    /// Decode content bytes into `head` until it holds `want` bytes; returns how many raw
    /// bytes of `raw` that took (all of them if `want` is not reached).
    fn decode(&mut self, raw: &[u8], want: usize) -> usize {
        let mut used = 0;
        while self.len < want && used < raw.len() {
            let b = raw[used];
            used += 1;
            if self.esc {
                self.esc = false;
                // An invalid escape decodes as itself: the frame is malformed, and passes.
                self.head[self.len] = match b {
                    ESC_END => END,
                    ESC_ESC => ESC,
                    other => other,
                };
                self.len += 1;
            } else if b == ESC {
                self.esc = true;
            } else {
                self.head[self.len] = b;
                self.len += 1;
            }
        }
        used
    }

    /// An END: the current frame (if any) is over and a new one starts.
    fn restart(&mut self) {
        self.in_frame = true;
        self.esc = false;
        self.len = 0;
    }

    fn is(&self, dir: u8, op: Op) -> bool {
        self.len >= 2 && self.head[0] == dir && self.head[1] == op as u8
    }

    fn word(&self, at: usize) -> u32 {
        u32::from_le_bytes([
            self.head[at],
            self.head[at + 1],
            self.head[at + 2],
            self.head[at + 3],
        ])
    }
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
    label: String,
    /// How loudly to log.
    pub(crate) voice: crate::protocol::Voice,
    entry: Entry,
    chip: Chip,
    /// This session started a bootloader entry (so it owes the chip a reset into its app).
    entered: bool,
    up: Framer,
    down: Framer,
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
    /// CHANGE_BAUDRATE went to the chip: the rate it asked for and when we stop waiting.
    baud: Option<(u32, Instant)>,
    /// Client bytes that arrived after CHANGE_BAUDRATE, waiting for the switch.
    parked: Vec<u8>,
    /// Drop device output until the chip's first frame (its boot messages).
    discard: bool,
    /// The client is running a loader session: it sent a SYNC, or moved its lines into a
    /// bootloader entry, and the chip has not been reset into its application since. Such a
    /// session is never interrupted by another client, and what the chip says meanwhile is
    /// for this client alone.
    loading: bool,
}

impl EspWatch {
    /// `in_loader`: the chip is known to be in its loader already (a previous session left
    /// it there, or the server put it there), so a SYNC must not reset it again.
    pub(crate) fn new(label: &str, in_loader: bool, entry: Entry) -> EspWatch {
        EspWatch {
            label: label.to_owned(),
            voice: crate::protocol::Voice::Normal,
            entry,
            chip: if in_loader {
                Chip::Loader
            } else {
                Chip::Unknown
            },
            entered: false,
            up: Framer::default(),
            down: Framer::default(),
            candidate: false,
            held: [0; SYNC_FRAME.len()],
            held_len: 0,
            replay_until: None,
            unanswered: 0,
            baud: None,
            parked: Vec::new(),
            discard: false,
            loading: false,
        }
    }

    /// The same watch for a session that (re)gains control of the chip: it starts over, as
    /// if it had just connected, with what is known of the chip now.
    pub(crate) fn restart(&self, in_loader: bool) -> EspWatch {
        let mut w = EspWatch::new(&self.label, in_loader, self.entry);
        w.voice = self.voice;
        w
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

    /// Client bytes wait for a baud change: stop reading the client.
    pub(crate) fn parked(&self) -> bool {
        self.baud.is_some()
    }

    /// When [`EspWatch::on_timer`] has something to do.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        let entry = match self.chip {
            Chip::Entering { since } => Some(since + ENTRY_WAIT),
            _ => None,
        };
        [entry, self.baud.map(|(_, at)| at)]
            .into_iter()
            .flatten()
            .min()
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
            if self.baud.is_some() {
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
                if self.chip == Chip::Loader {
                    log!(
                        self.voice.info(),
                        "{}: the chip did not answer {} SYNCs; entering its bootloader",
                        self.label,
                        self.unanswered
                    );
                } else {
                    log!(self.voice.info(),
                        "{}: esptool is syncing with a chip that may be running its application; entering the bootloader",
                        self.label
                    );
                }
                self.chip = Chip::Entering { since: now };
                self.entered = true;
                self.replay_until = Some(now + SYNC_ANSWER_WAIT);
                self.unanswered = 0;
                self.discard = true;
                self.down = Framer::default();
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
        // Only a chip in its loader answers CHANGE_BAUDRATE; anything else must not stall
        // the client waiting for an answer that never comes.
        if matches!(self.chip, Chip::Loader | Chip::Client)
            && self.up.len == HEAD
            && self.up.is(REQUEST, Op::ChangeBaudrate)
            && self.up.head[2..4] == [8, 0]
        {
            let (new, old) = (self.up.word(8), self.up.word(12));
            let rate = if old == 0 { snap_rom_rate(new) } else { new };
            debug!(
                "{}: CHANGE_BAUDRATE ({new}, {old}): {rate} once the chip answers",
                self.label
            );
            self.baud = Some((rate, now + BAUD_ANSWER_WAIT));
        }
        self.up.restart();
        self.candidate = true;
    }

    /// Device bytes: what the client may see is appended to `out`.
    pub(crate) fn on_device(&mut self, input: &[u8], out: &mut Vec<u8>) -> Option<Action> {
        let mut action = None;
        let mut rest = input;
        if self.discard {
            match memchr::memchr(END, rest) {
                Some(k) => {
                    debug!("{}: dropped {k} bytes of boot output", self.label);
                    self.discard = false;
                    rest = &rest[k..];
                }
                None => return None,
            }
        }
        out.extend_from_slice(rest);
        while !rest.is_empty() {
            let (content, end) = match memchr::memchr(END, rest) {
                Some(k) => (&rest[..k], true),
                None => (rest, false),
            };
            if self.down.in_frame {
                self.down.decode(content, HEAD);
            }
            rest = &rest[content.len()..];
            if end {
                if let Some(a) = self.device_frame_end() {
                    action = Some(a);
                }
                rest = &rest[1..];
            }
        }
        action
    }

    fn device_frame_end(&mut self) -> Option<Action> {
        let answer = self.down.len >= 8 && self.down.head[0] == RESPONSE;
        let mut action = None;
        if answer {
            if self.chip == Chip::Unknown {
                debug!("{}: the chip answers: it is in its loader", self.label);
                self.chip = Chip::Loader;
            }
            self.unanswered = 0;
            if let (Some((rate, _)), true) = (self.baud, self.down.is(RESPONSE, Op::ChangeBaudrate))
            {
                // The first data byte is the status: 0 = done.
                let ok = self.down.len > 8 && self.down.head[8] == 0;
                action = Some(Action::BaudAnswered(ok.then_some(rate)));
            }
        }
        self.down.restart();
        action
    }

    /// A bootloader entry is done — the one asked for (or it could not be done), or one the
    /// client's lines or the portal started: SYNCs pass again, and one swallowed meanwhile
    /// that esptool still waits on goes to the chip now.
    pub(crate) fn bootloader_entered(&mut self, now: Instant, out: &mut dyn FnMut(&[u8])) {
        let asked = matches!(self.chip, Chip::Entering { .. });
        self.chip = Chip::Loader;
        self.unanswered = 0;
        if asked && self.replay_until.take().is_some_and(|t| now < t) {
            self.unanswered = 1;
            out(&SYNC_FRAME);
        }
    }

    /// The chip was reset into its application (by anyone): a SYNC needs an entry again.
    pub(crate) fn app_started(&mut self) {
        self.loading = false;
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
        if !matches!(self.chip, Chip::Entering { .. }) {
            self.chip = Chip::Client;
        }
    }

    /// The UART runs at the new rate (or stayed): release the parked client bytes.
    pub(crate) fn baud_switched(
        &mut self,
        now: Instant,
        out: &mut dyn FnMut(&[u8]),
    ) -> Option<Action> {
        self.baud = None;
        let parked = std::mem::take(&mut self.parked);
        let action = self.on_client(&parked, now, out);
        if self.parked.is_empty() {
            // Keep the allocation for the next baud change.
            self.parked = parked;
            self.parked.clear();
        }
        action
    }

    /// Time passed: give up waiting for a bootloader entry or a CHANGE_BAUDRATE answer.
    pub(crate) fn on_timer(&mut self, now: Instant, out: &mut dyn FnMut(&[u8])) -> Option<Action> {
        if let Chip::Entering { since } = self.chip {
            if now >= since + ENTRY_WAIT {
                log!(
                    self.voice.warn(),
                    "{}: the bootloader entry did not finish in {:.1} s; letting SYNCs through",
                    self.label,
                    ENTRY_WAIT.as_secs_f32()
                );
                self.bootloader_entered(now, out);
            }
        }
        match self.baud {
            Some((rate, at)) if now >= at => {
                log!(self.voice.warn(),
                    "{}: the chip did not answer CHANGE_BAUDRATE to {rate}; staying at the current rate",
                    self.label
                );
                self.baud_switched(now, out)
            }
            _ => None,
        }
    }
}

/// The rate a client meant by a ROM-form CHANGE_BAUDRATE: esptool scales it by the ROM's
/// crystal estimate, so a standard rate within a few percent is what a local esptool sets
/// on its own port.
pub(crate) fn snap_rom_rate(value: u32) -> u32 {
    let off = |r: u32| (u64::from(r)).abs_diff(u64::from(value)) * 1000 / u64::from(r);
    STANDARD_RATES
        .into_iter()
        .min_by_key(|&r| off(r))
        .filter(|&r| off(r) <= SNAP_PER_MILLE)
        .unwrap_or(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A loader packet (checksum/value 0), SLIP-encoded.
    fn packet(dir: u8, op: u8, data: &[u8]) -> Vec<u8> {
        let mut raw = vec![dir, op];
        raw.extend_from_slice(&(data.len() as u16).to_le_bytes());
        raw.extend_from_slice(&[0; 4]);
        raw.extend_from_slice(data);
        slip(&raw)
    }

    fn request(op: u8, data: &[u8]) -> Vec<u8> {
        packet(REQUEST, op, data)
    }

    fn response(op: u8, data: &[u8]) -> Vec<u8> {
        packet(RESPONSE, op, data)
    }

    fn slip(raw: &[u8]) -> Vec<u8> {
        let mut f = vec![END];
        for &b in raw {
            match b {
                END => f.extend_from_slice(&[ESC, ESC_END]),
                ESC => f.extend_from_slice(&[ESC, ESC_ESC]),
                b => f.push(b),
            }
        }
        f.push(END);
        f
    }

    fn sync() -> Vec<u8> {
        let mut data = vec![0x07, 0x07, 0x12, 0x20];
        data.extend_from_slice(&[0x55; 32]);
        request(0x08, &data)
    }

    fn baud(new: u32, old: u32) -> Vec<u8> {
        let mut d = new.to_le_bytes().to_vec();
        d.extend_from_slice(&old.to_le_bytes());
        request(0x0F, &d)
    }

    /// Feed `input` in chunks of `chunk` bytes; returns what reached the chip and the actions.
    fn up(w: &mut EspWatch, input: &[u8], chunk: usize) -> (Vec<u8>, Vec<Action>) {
        let now = Instant::now();
        let mut out = Vec::new();
        let mut actions = Vec::new();
        for c in input.chunks(chunk) {
            actions.extend(w.on_client(c, now, &mut |b| out.extend_from_slice(b)));
        }
        (out, actions)
    }

    fn down(w: &mut EspWatch, input: &[u8], chunk: usize) -> (Vec<u8>, Vec<Action>) {
        let mut out = Vec::new();
        let mut actions = Vec::new();
        for c in input.chunks(chunk) {
            actions.extend(w.on_device(c, &mut out));
        }
        (out, actions)
    }

    #[test]
    fn sync_frame_constant_is_esptools_request() {
        assert_eq!(SYNC_FRAME.to_vec(), sync());
    }

    #[test]
    fn first_sync_enters_the_bootloader_once_and_is_replayed_when_ready() {
        for chunk in 1..=sync().len() + 1 {
            let mut w = EspWatch::new("t", false, Entry::Reset);
            let twice = [sync(), sync()].concat();
            let (out, actions) = up(&mut w, &twice, chunk);
            assert_eq!(actions, vec![Action::EnterBootloader], "chunk {chunk}");
            // Only the frame delimiters reach the chip while it resets.
            assert!(out.iter().all(|&b| b == END), "chunk {chunk}: {out:02x?}");
            let mut replay = Vec::new();
            w.bootloader_entered(Instant::now(), &mut |b| replay.extend_from_slice(b));
            assert_eq!(replay, SYNC_FRAME.to_vec());
            assert!(w.entered() && w.in_loader());
            // Later SYNCs pass untouched.
            let (out, actions) = up(&mut w, &sync(), chunk);
            assert_eq!((out, actions), (sync(), vec![]));
        }
    }

    #[test]
    fn a_sync_esptool_no_longer_waits_on_is_not_replayed() {
        let mut w = EspWatch::new("t", false, Entry::Reset);
        let t0 = Instant::now();
        w.on_client(&sync(), t0, &mut |_| {});
        let mut out = Vec::new();
        w.bootloader_entered(t0 + SYNC_ANSWER_WAIT, &mut |b| out.extend_from_slice(b));
        assert!(out.is_empty() && w.in_loader());
    }

    #[test]
    fn a_chip_known_in_its_loader_is_not_reset() {
        let mut w = EspWatch::new("t", true, Entry::Reset);
        let (out, actions) = up(&mut w, &sync(), 7);
        assert_eq!((out, actions), (sync(), vec![]));
        assert!(!w.entered());
    }

    #[test]
    fn a_loader_that_never_answers_is_reset_after_a_few_syncs() {
        let mut w = EspWatch::new("t", true, Entry::Reset);
        let n = UNANSWERED_SYNCS as usize;
        let (out, actions) = up(&mut w, &sync().repeat(n), 64);
        assert_eq!((out, actions), (sync().repeat(n), vec![]));
        let (_, actions) = up(&mut w, &sync(), 64);
        assert_eq!(actions, vec![Action::EnterBootloader]);

        // An answer in between resets the count.
        let mut w = EspWatch::new("t", true, Entry::Reset);
        for _ in 0..2 * n {
            let (out, actions) = up(&mut w, &sync(), 64);
            assert_eq!((out, actions), (sync(), vec![]));
            down(&mut w, &response(0x08, &[0, 0]), 64);
        }
    }

    #[test]
    fn boot_output_is_dropped_until_the_chips_first_frame() {
        let mut w = EspWatch::new("t", false, Entry::Reset);
        up(&mut w, &sync(), 64);
        let answer = response(0x08, &[0, 0]);
        let stream = [
            b"rst:0x1 (POWERON_RESET)\r\nwaiting for download\r\n".to_vec(),
            answer.clone(),
        ]
        .concat();
        let (out, _) = down(&mut w, &stream, 5);
        assert_eq!(out, answer);
        // After that, everything passes (app text included).
        let (out, _) = down(&mut w, b"hello", 5);
        assert_eq!(out, b"hello");
    }

    #[test]
    fn stub_baud_change_parks_the_client_until_the_answer() {
        for chunk in [1, 3, 8, 200] {
            let mut w = EspWatch::new("t", true, Entry::Reset);
            let req = baud(921_600, 115_200);
            let later = request(0x02, &[1, 2, 3]);
            let (out, actions) = up(&mut w, &[req.clone(), later.clone()].concat(), chunk);
            assert_eq!((out, actions), (req.clone(), vec![]), "chunk {chunk}");
            assert!(w.parked());
            let (out, actions) = down(&mut w, &response(0x0F, &[0, 0]), chunk);
            assert_eq!(out, response(0x0F, &[0, 0]));
            assert_eq!(actions, vec![Action::BaudAnswered(Some(921_600))]);
            let mut released = Vec::new();
            w.baud_switched(Instant::now(), &mut |b| released.extend_from_slice(b));
            assert_eq!(released, later, "chunk {chunk}");
            assert!(!w.parked());
        }
    }

    #[test]
    fn rom_baud_change_goes_to_the_standard_rate_meant() {
        let mut w = EspWatch::new("t", true, Entry::Reset);
        // esptool scaled 460800 by a ROM crystal estimate of 39.2 MHz / 40 MHz.
        up(&mut w, &baud(451_584, 0), 64);
        let (_, actions) = down(&mut w, &response(0x0F, &[0, 0, 0, 0]), 64);
        assert_eq!(actions, vec![Action::BaudAnswered(Some(460_800))]);
        assert_eq!(snap_rom_rate(921_600), 921_600);
        assert_eq!(snap_rom_rate(940_000), 921_600);
        assert_eq!(snap_rom_rate(123_456), 123_456);
        assert_eq!(snap_rom_rate(0), 0);
    }

    #[test]
    fn a_refused_baud_change_stays_and_releases() {
        let mut w = EspWatch::new("t", true, Entry::Reset);
        up(&mut w, &baud(921_600, 115_200), 64);
        let (_, actions) = down(&mut w, &response(0x0F, &[1, 5]), 64);
        assert_eq!(actions, vec![Action::BaudAnswered(None)]);
    }

    #[test]
    fn an_unanswered_baud_change_releases_after_the_wait() {
        let mut w = EspWatch::new("t", true, Entry::Reset);
        up(&mut w, &baud(921_600, 115_200), 64);
        up(&mut w, b"after", 64);
        let at = w.deadline().expect("a deadline while parked");
        let mut out = Vec::new();
        w.on_timer(at - Duration::from_millis(1), &mut |b| {
            out.extend_from_slice(b)
        });
        assert!(out.is_empty() && w.parked());
        w.on_timer(at, &mut |b| out.extend_from_slice(b));
        assert_eq!(out, b"after");
        assert!(!w.parked());
    }

    #[test]
    fn an_unfinished_bootloader_entry_lets_syncs_through_after_a_while() {
        let mut w = EspWatch::new("t", false, Entry::Reset);
        up(&mut w, &sync(), 64);
        let at = w.deadline().unwrap();
        let mut out = Vec::new();
        w.on_timer(at, &mut |b| out.extend_from_slice(b));
        assert!(out.is_empty(), "that SYNC is long stale");
        assert!(w.deadline().is_none() && w.in_loader());
        let (out, actions) = up(&mut w, &sync(), 64);
        assert_eq!((out, actions), (sync(), vec![]));
    }

    #[test]
    fn anything_else_passes_unchanged_both_ways() {
        // Text, truncated frames, bad escapes, lone ENDs, frames with escaped bytes.
        let mut garbage = b"hello\xc0\xdb\xc0\x00\x08\xdb\x01\xc0\xc0\xc0\x00".to_vec();
        garbage.extend(request(0x02, &[END, ESC, 1, 2]));
        garbage.extend(request(0x0F, &[1, 2, 3])); // too short to be a baud change
        garbage.extend(&sync()[..20]); // a SYNC cut short...
        garbage.push(END);
        let mut longer = sync();
        longer.insert(45, 0x55); // ...and one byte too long
        garbage.extend(longer);
        garbage.extend_from_slice(&[ESC, ESC, END, 0x01, 0x0F, END]);
        garbage.extend((0..=255u8).cycle().take(3000));
        for chunk in [1, 2, 5, 17, 4096] {
            let mut w = EspWatch::new("t", true, Entry::Reset);
            let (out, actions) = up(&mut w, &garbage, chunk);
            assert_eq!(out, garbage, "chunk {chunk}");
            assert!(actions.is_empty() && !w.parked());
            let (out, _) = down(&mut w, &garbage, chunk);
            assert_eq!(out, garbage, "chunk {chunk}");
        }
    }

    #[test]
    fn a_sync_with_escaped_bytes_in_its_header_is_still_seen() {
        // A SYNC whose frame starts with a stray escape pair still decodes to 00 08 ...:
        // the decoder is what decides, not byte patterns.
        let mut w = EspWatch::new("t", false, Entry::Reset);
        let (out, actions) = up(&mut w, &[b"noise".to_vec(), sync()].concat(), 1);
        assert_eq!(actions, vec![Action::EnterBootloader]);
        assert_eq!(out, [b"noise".to_vec(), vec![END, END]].concat());
    }

    #[test]
    fn without_an_entry_syncs_pass_and_the_baud_follows_once_the_chip_answers() {
        let mut w = EspWatch::new("t", false, Entry::Never);
        let (out, actions) = up(&mut w, &sync().repeat(5), 64);
        assert_eq!((out, actions), (sync().repeat(5), vec![]));
        assert!(!w.entered());
        down(&mut w, &response(0x08, &[0, 0]), 64);
        let (_, actions) = up(&mut w, &baud(921_600, 115_200), 64);
        assert!(actions.is_empty() && w.parked());
        let (_, actions) = down(&mut w, &response(0x0F, &[0, 0]), 64);
        assert_eq!(actions, vec![Action::BaudAnswered(Some(921_600))]);
    }

    #[test]
    fn a_client_that_resets_the_chip_itself_is_trusted_and_owed_nothing() {
        let mut w = EspWatch::new("t", false, Entry::Reset);
        w.client_resets(ResetTo::Bootloader);
        assert!(
            w.loading(),
            "a bootloader entry by the client's lines starts a loader session"
        );
        let (out, actions) = up(&mut w, &sync(), 64);
        assert_eq!((out, actions), (sync(), vec![]));
        assert!(!w.entered());
        // A reset into the application by anyone: the next SYNC needs an entry again.
        w.app_started();
        assert!(
            !w.loading(),
            "the application runs: the loader session is over"
        );
        let (_, actions) = up(&mut w, &sync(), 64);
        assert_eq!(actions, vec![Action::EnterBootloader]);
        assert!(w.loading(), "a SYNC starts a loader session");
        // An entry the client's own lines completed counts as done.
        let mut replay = Vec::new();
        w.bootloader_entered(Instant::now(), &mut |b| replay.extend_from_slice(b));
        assert!(w.in_loader() && w.entered());
        w.client_resets(ResetTo::App);
        assert!(
            w.loading(),
            "a flasher's hard reset does not end its loader session"
        );
        assert!(
            !w.entered(),
            "the client's own reset at the end: nothing owed"
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn bytes() -> impl Strategy<Value = Vec<u8>> {
            proptest::collection::vec(
                prop_oneof![
                    Just(END),
                    Just(ESC),
                    Just(ESC_END),
                    Just(RESPONSE),
                    any::<u8>()
                ],
                0..2048,
            )
        }

        proptest! {
            /// Device output passes unchanged (nothing is dropped unless this session just
            /// reset the chip), however it is split; no input makes the watch panic.
            #[test]
            fn device_output_passes_unchanged(data in bytes(), chunk in 1usize..300) {
                let mut w = EspWatch::new("p", true, Entry::Reset);
                let (out, _) = down(&mut w, &data, chunk);
                prop_assert_eq!(out, data);
            }

            /// Client bytes to a chip without an entry to make reach it unchanged and in
            /// order, however they are split (unless a CHANGE_BAUDRATE the chip has answered
            /// before parks what follows).
            #[test]
            fn client_bytes_pass_unchanged(data in bytes(), chunk in 1usize..300) {
                let mut w = EspWatch::new("p", false, Entry::Never);
                let (out, actions) = up(&mut w, &data, chunk);
                prop_assert!(actions.is_empty());
                prop_assert_eq!(out, data);
            }
        }
    }
}
