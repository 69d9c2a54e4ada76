//! One client's session, sans-IO: protocol detection, Telnet negotiation, COM-PORT commands,
//! the client's mirrored DTR/RTS, the ESP loader follower on raw sessions, and the answers.
//!
//! The bridge feeds it bytes (from the client, from the device), times and the device's
//! modem lines; it writes data for the device and bytes for the client into an [`Out`], and
//! returns at most one [`Effect`] at a time — a setting to apply, a line change, a break, a
//! purge, a reset. The session then waits: the bridge performs the effect (a setting only
//! once every byte written before it has reached the device, as on a local port) and reports
//! the outcome with [`Session::done`], which writes the answer and may return the next effect.
//! Until then the bridge feeds it nothing but modem lines and finished resets, so effects
//! happen in stream order and the session never needs the device's answer in advance.
//!
//! Every request is answered as soon as it has been acted on, with the value actually in
//! force, because pyserial waits for each answer (and re-sends all settings whenever a client
//! changes its read timeout — esptool does so twice per command): a setting equal to the one
//! in force is answered at once, without an effect.
//!
//! The rooms: this file is the data path (detection, bytes both ways through the ESP
//! follower, the effect in flight and what follows it); [`negotiation`] the Telnet options
//! and what COM-PORT says unasked; [`comport`] the COM-PORT requests and their answers.

mod comport;
mod negotiation;
mod note;
#[cfg(test)]
mod tests;

use std::fmt::Display;
use std::time::{Duration, Instant};

use self::comport::Answer;
use self::negotiation::{reply, Negotiation};
use crate::protocol::esp::{Action, Command as LoaderCommand, Entry, EspWatch, InjectError};
use crate::protocol::line::{LineSettings, Lines, ModemStatus, Purge};
use crate::protocol::notes::{Notes, Weight};
use crate::protocol::reset::{ResetError, ResetTo};
use crate::protocol::telnet::{self, Event, IAC};
use crate::protocol::Protocol;

pub(crate) use self::note::Note;

/// Where a session writes; the bridge owns both buffers.
pub(crate) struct Out<'a> {
    /// Client data for the device, in stream order.
    pub(crate) device: &'a mut Vec<u8>,
    /// Answers and device output for the client, in stream order.
    pub(crate) client: &'a mut Vec<u8>,
}

/// Something only the device can do, asked for in stream order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Program the UART with these settings.
    Apply(LineSettings),
    /// The client's DTR/RTS changed: the device's reset policy decides what the board sees.
    Lines(Lines),
    /// Start or end a break condition.
    Break(bool),
    /// Empty these buffers; `Output` and `Both` include client data not yet written.
    Purge(Purge),
    /// Reset the chip through the device's reset policy; [`Session::reset_done`] follows
    /// once the sequence has played.
    Reset(ResetTo),
}

impl Effect {
    /// The effect must wait until every byte the session wrote before it has reached the
    /// device: bytes written before a baud change leave at the old baud, as with a local
    /// port. A purge discards them instead; a reset does not care.
    pub(crate) fn after_data(self) -> bool {
        matches!(self, Effect::Apply(_) | Effect::Lines(_) | Effect::Break(_))
    }
}

/// Why an effect could not be performed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The device refused (the operating system's error).
    Device(std::io::Error),
    /// Data written before it did not reach the device in time (a flow-stopped UART).
    Stalled,
    /// The reset policy cannot do it.
    Reset(ResetError),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Device(e) => write!(f, "{e}"),
            Failure::Stalled => write!(f, "the device did not accept the data queued before it"),
            Failure::Reset(e) => write!(f, "{e}"),
        }
    }
}

/// What [`Session::on_client_bytes`] did with its input.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Step {
    /// Input bytes consumed; feed the rest after the effect is done.
    pub(crate) consumed: usize,
    pub(crate) effect: Option<Effect>,
}

/// How this session's client talks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// `protocol = "auto"`, nothing from the client yet: its first byte decides (IAC: RFC
    /// 2217), or, when device output has waited `window` for a silent client, raw. Device
    /// output is held meanwhile, since `since`.
    Detect {
        window: Duration,
        since: Option<Instant>,
    },
    /// RFC 2217 over Telnet.
    Telnet,
    /// A plain byte stream (`socket://` clients, netcat): no Telnet, no escaping.
    Raw,
}

/// Where an ESP-aware session leaves the chip (see [`Session::esp_end`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EspEnd {
    /// The session reset the chip into its loader: it owes the chip a reset into its
    /// application (what esptool's `--after hard-reset` would do, which it cannot over a
    /// socket).
    Entered,
    /// The chip is in its loader, not by this session's doing.
    InLoader,
    /// Nothing known.
    Unknown,
}

/// Device output kept while the protocol is undecided (then the device is not read).
const DETECT_HOLD_MAX: usize = 64 * 1024;

/// Why a session must end.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SessionError {
    /// The client sent something no Telnet client sends; it is disconnected.
    Garbage(String),
}

impl std::fmt::Display for SessionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionError::Garbage(what) => write!(f, "protocol violation: {what}"),
        }
    }
}

/// What to do when the effect in flight is done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Then {
    /// Answer the client's request with what is in force now.
    Answer(Answer),
    /// The UART follows the chip's CHANGE_BAUDRATE: release the parked client bytes.
    ReleaseParked,
}

/// The state of one client's session.
pub(crate) struct Session {
    /// What it has to say, until the daemon takes it ([`Session::take_notes`]).
    notes: Notes<Note>,
    signature: String,
    decoder: telnet::Decoder,
    neg: Negotiation,
    settings: LineSettings,
    client_lines: Lines,
    break_on: bool,
    suspended: bool,
    lines_unsupported_logged: bool,
    mode: Mode,
    /// Device output that arrived while the protocol was undecided.
    held: Vec<u8>,
    /// Follows the ESP loader protocol.
    esp: Option<EspWatch>,
    /// ESP-aware RFC 2217 sessions: the watch's output for the client, before escaping.
    scratch: Vec<u8>,
    /// The UART followed the chip's CHANGE_BAUDRATE `(from, to)`: the client still asks
    /// for `from` (pyserial re-sends its settings while esptool waits for the answer) until
    /// it sets `to` itself; those requests are answered as asked and change nothing.
    followed: Option<(u32, u32)>,
    /// The effect the bridge is performing, and what follows it.
    in_flight: Option<(Effect, Then)>,
}

impl Session {
    /// `settings` is what is in force on the device when the client arrives; `signature`
    /// answers SIGNATURE queries.
    pub(crate) fn new(signature: String, settings: LineSettings) -> Session {
        Session {
            notes: Notes::default(),
            signature,
            decoder: telnet::Decoder::new(),
            neg: Negotiation::new(),
            settings,
            client_lines: Lines::default(),
            break_on: false,
            suspended: false,
            lines_unsupported_logged: false,
            mode: Mode::Telnet,
            held: Vec::new(),
            esp: None,
            scratch: Vec::new(),
            followed: None,
            in_flight: None,
        }
    }

    /// A session that passes bytes through untouched both ways.
    pub(crate) fn raw(settings: LineSettings) -> Session {
        Session {
            mode: Mode::Raw,
            ..Session::new(String::new(), settings)
        }
    }

    /// A session whose client's first byte decides: IAC starts RFC 2217, anything else (or
    /// silence for `window` while device output waits) a raw session. Nothing is lost or
    /// reordered: device output is held until then.
    pub(crate) fn detect(signature: String, settings: LineSettings, window: Duration) -> Session {
        Session {
            mode: Mode::Detect {
                window,
                since: None,
            },
            ..Session::new(signature, settings)
        }
    }

    /// Follow the ESP loader protocol: enter the bootloader on esptool's first SYNC unless
    /// the chip is known `in_loader` (or `entry` is `Never`), and switch the UART on
    /// CHANGE_BAUDRATE.
    pub(crate) fn watch_esp(mut self, in_loader: bool, entry: Entry) -> Session {
        self.esp = Some(EspWatch::new(in_loader, entry));
        self
    }

    /// The port is the chip's own USB-Serial/JTAG: the follower turns the chip's watchdogs
    /// off once its ROM loader answers, as esptool does only when it sees a local port.
    pub(crate) fn on_native_usb(mut self) -> Session {
        self.esp = self.esp.map(EspWatch::on_native_usb);
        self
    }

    /// Hand what the session (and its ESP follower) has to say to `f`, oldest first, with its
    /// weight; returns how many notes were not kept since the last time.
    pub(crate) fn take_notes(&mut self, f: &mut dyn FnMut(Weight, &dyn Display)) -> u32 {
        self.esp_notes();
        self.notes.take(f)
    }

    /// Nothing to say.
    pub(crate) fn quiet(&self) -> bool {
        self.notes.is_empty() && self.esp.as_ref().is_none_or(|w| w.notes.is_empty())
    }

    /// The follower's notes join the session's, in the order they were made.
    fn esp_notes(&mut self) {
        if let Some(w) = &mut self.esp {
            w.notes.move_into(&mut self.notes, Note::Esp);
        }
    }

    /// Our opening offers, sent as soon as an RFC 2217 client connects (as pyserial's own
    /// server does), so that a client waiting for `DO COM-PORT` never waits for a round trip.
    pub(crate) fn start(&mut self, client: &mut Vec<u8>) {
        if self.mode == Mode::Telnet {
            self.neg.offer(client);
        }
    }

    /// The line settings in force (what the device has been told, or — while the client
    /// observes — what it will be told when the client gains control).
    pub(crate) fn settings(&self) -> LineSettings {
        self.settings
    }

    /// DTR and RTS as the client last set them.
    pub(crate) fn lines(&self) -> Lines {
        self.client_lines
    }

    /// The client is running a loader session (an ESP flash): it must not be interrupted,
    /// and the chip's output meanwhile is for it alone.
    pub(crate) fn loading(&self) -> bool {
        self.esp.as_ref().is_some_and(EspWatch::loading)
    }

    /// The client's line changes started a bootloader entry (the server plays it): from now
    /// on this is a loader session (see [`Session::loading`]).
    pub(crate) fn entry_started(&mut self) {
        if let Some(w) = &mut self.esp {
            w.entry_started();
        }
    }

    /// The client (re)gains control of the device, which is about to be given its settings
    /// and lines: what it did while observing touched nothing, so the ESP follower starts
    /// over with what is known of the chip now.
    pub(crate) fn take_control(&mut self, in_loader: bool) {
        self.esp = self.esp.as_ref().map(|w| w.restart(in_loader));
        self.followed = None;
    }

    /// Tell an RFC 2217 client something about the port (its role when several clients
    /// share it), as an unsolicited COM-PORT SIGNATURE: clients that do not show it ignore
    /// it (pyserial does), and it never mixes with the device's data. Sent once the client
    /// has agreed to COM-PORT; only the latest news is kept until then.
    pub(crate) fn tell(&mut self, news: &str, client: &mut Vec<u8>) {
        self.neg.tell(news, client);
    }

    /// Stop reading the device: the client asked us to (FLOWCONTROL-SUSPEND), or output
    /// held while the protocol is undecided reached its bound.
    pub(crate) fn suspended(&self) -> bool {
        self.suspended || self.held.len() >= DETECT_HOLD_MAX
    }

    /// Stop reading the client: an effect is in flight, or its bytes wait for a baud change.
    pub(crate) fn client_paused(&self) -> bool {
        self.in_flight.is_some() || self.esp.as_ref().is_some_and(EspWatch::parked)
    }

    /// The protocol the client speaks, once known (`Rfc2217` or `Raw`).
    pub(crate) fn protocol(&self) -> Option<Protocol> {
        match self.mode {
            Mode::Detect { .. } => None,
            Mode::Telnet => Some(Protocol::Rfc2217),
            Mode::Raw => Some(Protocol::Raw),
        }
    }

    /// Where an ESP-aware session leaves the chip; `None` for other sessions.
    pub(crate) fn esp_end(&self) -> Option<EspEnd> {
        let w = self.esp.as_ref().filter(|_| self.protocol().is_some())?;
        Some(if w.entered() {
            EspEnd::Entered
        } else if w.in_loader() {
            EspEnd::InLoader
        } else {
            EspEnd::Unknown
        })
    }

    /// When [`Session::on_timer`] has something to do.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        match self.mode {
            Mode::Detect { window, since } => since.map(|t| t + window),
            Mode::Raw | Mode::Telnet => self.esp.as_ref().and_then(EspWatch::deadline),
        }
    }

    /// Time passed: a silent client becomes raw, an ESP watch stops waiting.
    pub(crate) fn on_timer(&mut self, now: Instant, out: &mut Out) -> Option<Effect> {
        if self.in_flight.is_some() {
            return None;
        }
        match self.mode {
            Mode::Detect { window, since } => {
                if since.is_some_and(|t| now >= t + window) {
                    self.notes.push(Note::SilentClientRaw(window));
                    return self.decide(Mode::Raw, now, out);
                }
                None
            }
            Mode::Raw | Mode::Telnet => {
                let w = self.esp.as_mut()?;
                self.scratch.clear();
                let device = &mut *out.device;
                let action =
                    w.on_timer(now, &mut |b| device.extend_from_slice(b), &mut self.scratch);
                self.scratch_to_client(out.client);
                self.act(action, now, out)
            }
        }
    }

    /// A reset sequence (the session's or anyone's) has played.
    pub(crate) fn reset_done(&mut self, to: ResetTo, now: Instant, out: &mut Out) {
        let Some(w) = &mut self.esp else { return };
        match to {
            ResetTo::Bootloader => {
                w.bootloader_entered(now, &mut |b| out.device.extend_from_slice(b));
            }
            ResetTo::App => w.app_started(),
        }
    }

    /// The device's modem lines as the bridge last read them; a change is notified to an
    /// RFC 2217 client (masked by its SET-MODEMSTATE-MASK).
    pub(crate) fn modem_status(&mut self, status: ModemStatus, client: &mut Vec<u8>) {
        self.neg.modem_status(status, client);
    }

    /// The protocol is known: the held device output goes out in its form.
    fn decide(&mut self, mode: Mode, now: Instant, out: &mut Out) -> Option<Effect> {
        self.mode = mode;
        if mode == Mode::Telnet {
            self.start(out.client);
        }
        if let Some(protocol) = self.protocol() {
            let esp = self.esp.is_some();
            self.notes.push(Note::Speaks { protocol, esp });
        }
        let held = std::mem::take(&mut self.held);
        self.on_device_bytes(&held, now, out)
    }

    /// Start an effect; the session waits for [`Session::done`].
    fn begin(&mut self, effect: Effect, then: Then) -> Option<Effect> {
        self.in_flight = Some((effect, then));
        Some(effect)
    }

    /// What the ESP watch asked for, as an effect (or, for a baud that needs no change, at
    /// once).
    fn act(&mut self, action: Option<Action>, now: Instant, out: &mut Out) -> Option<Effect> {
        self.esp_notes();
        match action? {
            Action::EnterBootloader => self.begin(
                Effect::Reset(ResetTo::Bootloader),
                Then::Answer(Answer::None),
            ),
            Action::BaudAnswered(rate) => self.follow_baud(rate, now, out),
            Action::Injected(cmd, reply) => {
                self.notes.push(Note::Ours {
                    op: cmd.op(),
                    reply,
                });
                match cmd.baud() {
                    Some(rate) => self.follow_baud(reply.ok().then_some(rate), now, out),
                    None => self.release_parked(now, out),
                }
            }
        }
    }

    /// The chip answered a CHANGE_BAUDRATE (`None`: it refused): the UART follows, then the
    /// parked client bytes go.
    fn follow_baud(&mut self, rate: Option<u32>, now: Instant, out: &mut Out) -> Option<Effect> {
        let new = LineSettings {
            baud: rate.unwrap_or(self.settings.baud),
            ..self.settings
        };
        if new != self.settings {
            return self.begin(Effect::Apply(new), Then::ReleaseParked);
        }
        self.release_parked(now, out)
    }

    fn release_parked(&mut self, now: Instant, out: &mut Out) -> Option<Effect> {
        let w = self.esp.as_mut()?;
        let action = w.resume(now, &mut |b| out.device.extend_from_slice(b));
        self.act(action, now, out)
    }

    /// Send a loader command of the server's own to the chip between two of the client's;
    /// what comes of it is handled here (a CHANGE_BAUDRATE the chip accepts moves the UART)
    /// and the client never sees the answer.
    #[allow(dead_code)] // issues 22 (native USB) and 23 (turbo) send commands; the tests do now
    pub(crate) fn inject(
        &mut self,
        cmd: LoaderCommand,
        now: Instant,
        out: &mut Out,
    ) -> Result<(), InjectError> {
        let idle = self.in_flight.is_none();
        let w = self.esp.as_mut().ok_or(InjectError::NotFollowing)?;
        let device = &mut *out.device;
        let mut to_chip = |b: &[u8]| device.extend_from_slice(b);
        w.inject(
            cmd,
            now,
            idle.then_some(&mut to_chip as &mut dyn FnMut(&[u8])),
        )
    }

    /// The ESP follower's output for the client, in the session's form.
    fn scratch_to_client(&mut self, client: &mut Vec<u8>) {
        match self.mode {
            Mode::Telnet => telnet::escape_into(&self.scratch, client),
            Mode::Raw | Mode::Detect { .. } => client.extend_from_slice(&self.scratch),
        }
    }

    /// The bridge performed the effect in flight (`Ok`) or could not: record what is in
    /// force, answer the client, and carry on — which may need the next effect.
    pub(crate) fn done(
        &mut self,
        outcome: Result<(), Failure>,
        now: Instant,
        out: &mut Out,
    ) -> Option<Effect> {
        let (effect, then) = self.in_flight.take()?;
        if let (Effect::Apply(new), Ok(()), Then::ReleaseParked) = (effect, &outcome, then) {
            self.followed = Some((self.settings.baud, new.baud));
        }
        match (effect, outcome) {
            (Effect::Apply(new), Ok(())) => {
                if new.baud != self.settings.baud {
                    self.notes.push(Note::Baud {
                        from: self.settings.baud,
                        to: new.baud,
                    });
                } else {
                    self.notes.push(Note::Settings(new));
                }
                self.settings = new;
            }
            (Effect::Apply(asked), Err(e)) => self.notes.push(Note::Refused {
                asked,
                kept: self.settings,
                error: e.to_string(),
            }),
            (Effect::Break(on), Ok(())) => self.break_on = on,
            (Effect::Break(on), Err(e)) => self.notes.push(Note::BreakFailed {
                on,
                error: e.to_string(),
            }),
            (Effect::Lines(_), Err(e)) => {
                // PTYs and some adapters have no modem lines; say so once, then stay quiet.
                if !self.lines_unsupported_logged {
                    self.notes.push(Note::LinesUnsupported(e.to_string()));
                    self.lines_unsupported_logged = true;
                }
            }
            (Effect::Purge(_), Err(e)) => self.notes.push(Note::PurgeFailed(e.to_string())),
            (Effect::Reset(_), Err(e)) => {
                self.notes.push(Note::EntryFailed(e.to_string()));
                if let Some(w) = &mut self.esp {
                    w.bootloader_entered(now, &mut |b| out.device.extend_from_slice(b));
                }
            }
            (Effect::Lines(_) | Effect::Purge(_) | Effect::Reset(_), Ok(())) => {}
        }
        let next = match then {
            Then::Answer(a) => {
                if let Some(cmd) = self.answer(a) {
                    reply(cmd, out.client);
                }
                None
            }
            Then::ReleaseParked => self.release_parked(now, out),
        };
        if let (None, Some(w)) = (next, &mut self.esp) {
            // The chip takes bytes again: a command of the server's may go now.
            w.poll(now, &mut |b| out.device.extend_from_slice(b));
        }
        next
    }

    /// Handle bytes from the client: data goes to `out.device`, answers to `out.client`, in
    /// stream order. Stops after the first request that needs an effect: the rest of
    /// `input` is to be fed again once [`Session::done`] has been called.
    pub(crate) fn on_client_bytes(
        &mut self,
        input: &mut [u8],
        now: Instant,
        out: &mut Out,
    ) -> Result<Step, SessionError> {
        let idle = |effect| Step {
            consumed: 0,
            effect,
        };
        if self.in_flight.is_some() {
            return Ok(idle(None));
        }
        if let (Mode::Detect { .. }, Some(&first)) = (self.mode, input.first()) {
            let mode = if first == IAC {
                Mode::Telnet
            } else {
                Mode::Raw
            };
            if let Some(effect) = self.decide(mode, now, out) {
                return Ok(idle(Some(effect)));
            }
        }
        let all = |effect| Step {
            consumed: input.len(),
            effect,
        };
        match (self.mode, &mut self.esp) {
            (Mode::Detect { .. }, _) => Ok(all(None)),
            (Mode::Raw, None) => {
                out.device.extend_from_slice(input);
                Ok(all(None))
            }
            (Mode::Raw, Some(w)) => {
                let action = w.on_client(input, now, &mut |b| out.device.extend_from_slice(b));
                Ok(all(self.act(action, now, out)))
            }
            (Mode::Telnet, _) => {
                let mut decoder = std::mem::take(&mut self.decoder);
                let mut sink = SessionSink {
                    session: self,
                    out,
                    now,
                    effect: None,
                    result: Ok(()),
                };
                let consumed = decoder.decode(input, &mut sink);
                let (effect, result) = (sink.effect, sink.result);
                self.decoder = decoder;
                result.map(|()| Step { consumed, effect })
            }
        }
    }

    /// Device output for the client, in the session's form (Telnet-escaped, raw, or held
    /// while the protocol is undecided). An ESP raw session may need the UART switched.
    pub(crate) fn on_device_bytes(
        &mut self,
        data: &[u8],
        now: Instant,
        out: &mut Out,
    ) -> Option<Effect> {
        // While an effect is in flight, nothing of the server's may go to the chip.
        let idle = self.in_flight.is_none();
        match (&mut self.mode, &mut self.esp) {
            (Mode::Detect { since, .. }, _) => {
                self.held.extend_from_slice(data);
                since.get_or_insert(now);
                None
            }
            (Mode::Telnet, None) => {
                telnet::escape_into(data, out.client);
                None
            }
            (Mode::Telnet, Some(w)) => {
                self.scratch.clear();
                let device = &mut *out.device;
                let mut to_chip = |b: &[u8]| device.extend_from_slice(b);
                let chip = idle.then_some(&mut to_chip as &mut dyn FnMut(&[u8]));
                let action = w.on_device(data, now, &mut self.scratch, chip);
                telnet::escape_into(&self.scratch, out.client);
                self.act(action, now, out)
            }
            (Mode::Raw, None) => {
                out.client.extend_from_slice(data);
                None
            }
            (Mode::Raw, Some(w)) => {
                let device = &mut *out.device;
                let mut to_chip = |b: &[u8]| device.extend_from_slice(b);
                let chip = idle.then_some(&mut to_chip as &mut dyn FnMut(&[u8]));
                let action = w.on_device(data, now, out.client, chip);
                self.act(action, now, out)
            }
        }
    }
}

/// Routes the decoder's output: data to the device, events to the session. The decoder
/// pauses after an event that needs an effect, or after a fatal one.
struct SessionSink<'s, 'o, 'b> {
    session: &'s mut Session,
    out: &'o mut Out<'b>,
    now: Instant,
    effect: Option<Effect>,
    result: Result<(), SessionError>,
}

impl telnet::Sink for SessionSink<'_, '_, '_> {
    /// Data for the device, through the ESP watch if there is one (which may need a reset).
    fn data(&mut self, bytes: &[u8]) {
        let Some(w) = &mut self.session.esp else {
            return self.out.device.extend_from_slice(bytes);
        };
        let device = &mut *self.out.device;
        let action = w.on_client(bytes, self.now, &mut |b| device.extend_from_slice(b));
        if action.is_some() {
            self.effect = self.session.act(action, self.now, self.out);
        }
    }

    fn event(&mut self, event: Event) {
        match self.session.on_event(event, self.out) {
            Ok(effect) => self.effect = effect,
            Err(e) => self.result = Err(e),
        }
    }

    fn paused(&self) -> bool {
        self.effect.is_some() || self.result.is_err()
    }
}
