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
//! Why one file of ~1,750 lines (half of it tests): negotiation and the data path share one
//! effect in flight and one ESP follower; issue 21 splits the Telnet/COM-PORT negotiation from
//! the data path (not done yet).

use std::time::{Duration, Instant};

use log::{debug, log};

use crate::protocol::esp::{Action, Entry, EspWatch};
use crate::protocol::line::{FlowControl, LineSettings, Lines, ModemStatus, Purge};
use crate::protocol::reset::{ResetError, ResetTo, EN_LOW, IO0_LOW};
use crate::protocol::rfc2217::{self, Command, Control, DecodeError, Direction, Setting};
use crate::protocol::telnet::{self, option, Event, Verb, IAC};
use crate::protocol::{Protocol, Voice};

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

/// Telnet options we agree to perform ourselves (WILL).
const OURS: [u8; 4] = [option::BINARY, option::ECHO, option::SGA, option::COM_PORT];
/// Telnet options we agree the client performs (DO).
const THEIRS: [u8; 3] = [option::BINARY, option::SGA, option::COM_PORT];

/// One side of one option, after RFC 1143's Q method (the subset a server that never
/// changes its mind needs): enough to never answer an answer, which is what makes
/// negotiation loops impossible.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
enum OptState {
    #[default]
    No,
    /// We asked; the answer has not come.
    WantYes,
    Yes,
}

/// What to do when the effect in flight is done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Then {
    /// Answer the client's request with what is in force now.
    Answer(Answer),
    /// The UART follows the chip's CHANGE_BAUDRATE: release the parked client bytes.
    ReleaseParked,
}

/// The answer a COM-PORT request gets once acted on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    Baud,
    DataSize,
    Parity,
    StopSize,
    Flow,
    Break,
    /// Acknowledged as asked (DTR/RTS: the reset policy, not the session, decides what the
    /// board sees).
    Control(Control),
    Purge(Purge),
    /// Nothing to say (an effect the client did not ask for).
    None,
}

/// The state of one client's session.
pub(crate) struct Session {
    label: String,
    voice: Voice,
    signature: String,
    decoder: telnet::Decoder,
    ours: [OptState; OURS.len()],
    theirs: [OptState; THEIRS.len()],
    com_port_agreed: bool,
    settings: LineSettings,
    client_lines: Lines,
    break_on: bool,
    modem: ModemStatus,
    modem_mask: u8,
    line_mask: u8,
    last_modem: u8,
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
    /// Said with [`Session::tell`] before the client agreed to COM-PORT.
    news: Option<String>,
}

impl Session {
    /// `settings` is what is in force on the device when the client arrives; `label` names the
    /// device in logs and `signature` answers SIGNATURE queries.
    pub(crate) fn new(label: &str, signature: String, settings: LineSettings) -> Session {
        Session {
            label: label.to_owned(),
            voice: Voice::Normal,
            signature,
            decoder: telnet::Decoder::new(),
            ours: Default::default(),
            theirs: Default::default(),
            com_port_agreed: false,
            settings,
            client_lines: Lines::default(),
            break_on: false,
            modem: ModemStatus::default(),
            modem_mask: 0xFF,
            line_mask: 0,
            last_modem: 0,
            suspended: false,
            lines_unsupported_logged: false,
            mode: Mode::Telnet,
            held: Vec::new(),
            esp: None,
            scratch: Vec::new(),
            followed: None,
            in_flight: None,
            news: None,
        }
    }

    /// A session that passes bytes through untouched both ways.
    pub(crate) fn raw(label: &str, settings: LineSettings) -> Session {
        Session {
            mode: Mode::Raw,
            ..Session::new(label, String::new(), settings)
        }
    }

    /// A session whose client's first byte decides: IAC starts RFC 2217, anything else (or
    /// silence for `window` while device output waits) a raw session. Nothing is lost or
    /// reordered: device output is held until then.
    pub(crate) fn detect(
        label: &str,
        signature: String,
        settings: LineSettings,
        window: Duration,
    ) -> Session {
        Session {
            mode: Mode::Detect {
                window,
                since: None,
            },
            ..Session::new(label, signature, settings)
        }
    }

    /// Follow the ESP loader protocol: enter the bootloader on esptool's first SYNC unless
    /// the chip is known `in_loader` (or `entry` is `Never`), and switch the UART on
    /// CHANGE_BAUDRATE.
    pub(crate) fn watch_esp(mut self, in_loader: bool, entry: Entry) -> Session {
        let mut w = EspWatch::new(&self.label, in_loader, entry);
        w.voice = self.voice;
        self.esp = Some(w);
        self
    }

    /// Log this session's events at `voice`'s levels.
    pub(crate) fn with_voice(mut self, voice: Voice) -> Session {
        self.voice = voice;
        if let Some(w) = &mut self.esp {
            w.voice = voice;
        }
        self
    }

    /// Our opening offers, sent as soon as an RFC 2217 client connects (as pyserial's own
    /// server does), so that a client waiting for `DO COM-PORT` never waits for a round trip.
    pub(crate) fn start(&mut self, client: &mut Vec<u8>) {
        if self.mode != Mode::Telnet {
            return;
        }
        for (i, &opt) in OURS.iter().enumerate() {
            self.ours[i] = OptState::WantYes;
            telnet::negotiate(Verb::Will, opt, client);
        }
        for (i, &opt) in THEIRS.iter().enumerate() {
            self.theirs[i] = OptState::WantYes;
            telnet::negotiate(Verb::Do, opt, client);
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
        if self.com_port_agreed {
            self.reply(Command::Signature(news.as_bytes().to_vec()), client);
        } else {
            self.news = Some(news.to_owned());
        }
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
                    log!(
                        self.voice.info(),
                        "{}: client sent nothing for {} ms while device output waited: raw session",
                        self.label,
                        window.as_millis()
                    );
                    return self.decide(Mode::Raw, now, out);
                }
                None
            }
            Mode::Raw | Mode::Telnet => {
                let w = self.esp.as_mut()?;
                let action = w.on_timer(now, &mut |b| out.device.extend_from_slice(b));
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
        self.modem = status;
        if self.com_port_agreed {
            self.notify_modem(false, client);
        }
    }

    /// The protocol is known: the held device output goes out in its form.
    fn decide(&mut self, mode: Mode, now: Instant, out: &mut Out) -> Option<Effect> {
        self.mode = mode;
        if mode == Mode::Telnet {
            self.start(out.client);
        }
        log!(
            self.voice.info(),
            "{}: the client speaks {}{}",
            self.label,
            self.protocol().map_or("?", Protocol::as_str),
            if self.esp.is_some() {
                ", esp-aware"
            } else {
                ""
            }
        );
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
        match action? {
            Action::EnterBootloader => self.begin(
                Effect::Reset(ResetTo::Bootloader),
                Then::Answer(Answer::None),
            ),
            Action::BaudAnswered(rate) => {
                let new = LineSettings {
                    baud: rate.unwrap_or(self.settings.baud),
                    ..self.settings
                };
                if new != self.settings {
                    return self.begin(Effect::Apply(new), Then::ReleaseParked);
                }
                self.release_parked(now, out)
            }
        }
    }

    fn release_parked(&mut self, now: Instant, out: &mut Out) -> Option<Effect> {
        let w = self.esp.as_mut()?;
        let action = w.baud_switched(now, &mut |b| out.device.extend_from_slice(b));
        self.act(action, now, out)
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
                    log!(
                        self.voice.info(),
                        "{}: baud {} -> {}",
                        self.label,
                        self.settings.baud,
                        new.baud
                    );
                } else {
                    debug!("{}: line settings {new}", self.label);
                }
                self.settings = new;
            }
            (Effect::Apply(new), Err(e)) => log!(
                self.voice.warn(),
                "{}: device refused {new} ({e}); keeping {}",
                self.label,
                self.settings
            ),
            (Effect::Break(on), Ok(())) => self.break_on = on,
            (Effect::Break(on), Err(e)) => log!(
                self.voice.warn(),
                "{}: cannot set break {on}: {e}",
                self.label
            ),
            (Effect::Lines(_), Err(e)) => {
                // PTYs and some adapters have no modem lines; say so once, then stay quiet.
                if !self.lines_unsupported_logged {
                    log!(
                        self.voice.warn(),
                        "{}: cannot set DTR/RTS ({e}); continuing without",
                        self.label
                    );
                    self.lines_unsupported_logged = true;
                }
            }
            (Effect::Purge(_), Err(e)) => {
                log!(self.voice.warn(), "{}: purge failed: {e}", self.label)
            }
            (Effect::Reset(_), Err(e)) => {
                log!(
                    self.voice.warn(),
                    "{}: cannot enter the bootloader: {e}",
                    self.label
                );
                if let Some(w) = &mut self.esp {
                    w.bootloader_entered(now, &mut |b| out.device.extend_from_slice(b));
                }
            }
            (Effect::Lines(_) | Effect::Purge(_) | Effect::Reset(_), Ok(())) => {}
        }
        match then {
            Then::Answer(a) => {
                if let Some(cmd) = self.answer(a) {
                    self.reply(cmd, out.client);
                }
                None
            }
            Then::ReleaseParked => self.release_parked(now, out),
        }
    }

    fn answer(&self, a: Answer) -> Option<Command> {
        let s = &self.settings;
        Some(match a {
            Answer::Baud => Command::SetBaud(Setting::Value(s.baud)),
            Answer::DataSize => Command::SetDataSize(Setting::Value(s.data_bits)),
            Answer::Parity => Command::SetParity(Setting::Value(s.parity)),
            Answer::StopSize => Command::SetStopSize(Setting::Value(s.stop_bits)),
            Answer::Flow => Command::SetControl(Control::Flow(s.flow)),
            Answer::Break => Command::SetControl(Control::Break(self.break_on)),
            Answer::Control(c) => Command::SetControl(c),
            Answer::Purge(p) => Command::PurgeData(p),
            Answer::None => return None,
        })
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
                let action = w.on_device(data, &mut self.scratch);
                telnet::escape_into(&self.scratch, out.client);
                self.act(action, now, out)
            }
            (Mode::Raw, None) => {
                out.client.extend_from_slice(data);
                None
            }
            (Mode::Raw, Some(w)) => {
                let action = w.on_device(data, out.client);
                self.act(action, now, out)
            }
        }
    }

    fn on_event(&mut self, ev: Event, out: &mut Out) -> Result<Option<Effect>, SessionError> {
        match ev {
            Event::Negotiate(verb, opt) => self.negotiate(verb, opt, out.client),
            Event::Subnegotiation {
                option: option::COM_PORT,
                payload,
            } => match rfc2217::decode(&payload) {
                Ok((Direction::ClientToServer, cmd)) => return Ok(self.command(cmd, out.client)),
                Ok((Direction::ServerToClient, _)) => {
                    debug!(
                        "{}: ignoring a server-side command from the client",
                        self.label
                    )
                }
                Err(e) => self.bad_command(e, out.client),
            },
            Event::Subnegotiation { option, .. } => {
                debug!(
                    "{}: ignoring subnegotiation for option {option}",
                    self.label
                )
            }
            Event::SubnegotiationTooLong { option } => {
                return Err(SessionError::Garbage(format!(
                    "subnegotiation for option {option} longer than {} bytes",
                    telnet::MAX_SUBNEGOTIATION
                )))
            }
            Event::SubnegotiationAborted { option } => {
                debug!(
                    "{}: client cut a subnegotiation for option {option} short",
                    self.label
                )
            }
            Event::Command(c) => debug!("{}: ignoring Telnet command {c:#04x}", self.label),
        }
        Ok(None)
    }

    fn negotiate(&mut self, verb: Verb, opt: u8, client: &mut Vec<u8>) {
        let (table, supported): (&mut [OptState], &[u8]) = match verb {
            Verb::Do | Verb::Dont => (&mut self.ours, &OURS),
            Verb::Will | Verb::Wont => (&mut self.theirs, &THEIRS),
        };
        let (yes, no) = match verb {
            Verb::Do | Verb::Dont => (Verb::Will, Verb::Wont),
            Verb::Will | Verb::Wont => (Verb::Do, Verb::Dont),
        };
        let Some(i) = supported.iter().position(|&o| o == opt) else {
            // Refuse what we do not know; refusing never needs tracking (RFC 854).
            if matches!(verb, Verb::Do | Verb::Will) {
                telnet::negotiate(no, opt, client);
            }
            return;
        };
        let st = &mut table[i];
        *st = match (verb, *st) {
            // A request: agree. An answer to our own request: nothing to say.
            (Verb::Do | Verb::Will, OptState::No) => {
                telnet::negotiate(yes, opt, client);
                OptState::Yes
            }
            (Verb::Do | Verb::Will, OptState::WantYes | OptState::Yes) => OptState::Yes,
            // Switched off by the client: confirm, unless it is refusing our request.
            (Verb::Dont | Verb::Wont, OptState::Yes) => {
                telnet::negotiate(no, opt, client);
                OptState::No
            }
            (Verb::Dont | Verb::Wont, OptState::No | OptState::WantYes) => OptState::No,
        };
        if opt == option::COM_PORT && matches!(verb, Verb::Do | Verb::Will) && !self.com_port_agreed
        {
            // pyserial refuses to read modem lines until it has seen one NOTIFY-MODEMSTATE.
            self.com_port_agreed = true;
            self.notify_modem(true, client);
            if let Some(news) = self.news.take() {
                self.reply(Command::Signature(news.into_bytes()), client);
            }
        }
    }

    fn reply(&self, cmd: Command, client: &mut Vec<u8>) {
        let mut payload = Vec::with_capacity(8);
        rfc2217::encode(Direction::ServerToClient, &cmd, &mut payload);
        telnet::subnegotiation(option::COM_PORT, &payload, client);
    }

    /// Ask for `new` if it differs from what is in force; answer now if it does not.
    fn change(
        &mut self,
        new: LineSettings,
        answer: Answer,
        client: &mut Vec<u8>,
    ) -> Option<Effect> {
        if new == self.settings {
            self.reply(self.answer(answer)?, client);
            return None;
        }
        self.begin(Effect::Apply(new), Then::Answer(answer))
    }

    /// A COM-PORT request: answered at once, or once its effect is done.
    fn command(&mut self, cmd: Command, client: &mut Vec<u8>) -> Option<Effect> {
        let mut s = self.settings;
        let answer = match cmd {
            Command::Signature(text) if text.is_empty() => {
                Command::Signature(self.signature.clone().into_bytes())
            }
            // The client's own name needs no answer, and is never logged: it is the
            // client's text, and the log is not the client's to write.
            Command::Signature(_) => return None,
            Command::SetBaud(Setting::Value(b)) => {
                match self.followed {
                    Some((from, _)) if b == from => {
                        self.reply(Command::SetBaud(Setting::Value(b)), client);
                        return None;
                    }
                    _ => self.followed = None,
                }
                s.baud = b;
                return self.change(s, Answer::Baud, client);
            }
            Command::SetDataSize(Setting::Value(d)) => {
                s.data_bits = d;
                return self.change(s, Answer::DataSize, client);
            }
            Command::SetParity(Setting::Value(p)) => {
                s.parity = p;
                return self.change(s, Answer::Parity, client);
            }
            Command::SetStopSize(Setting::Value(b)) => {
                s.stop_bits = b;
                return self.change(s, Answer::StopSize, client);
            }
            Command::SetBaud(Setting::Query) => self.answer(Answer::Baud)?,
            Command::SetDataSize(Setting::Query) => self.answer(Answer::DataSize)?,
            Command::SetParity(Setting::Query) => self.answer(Answer::Parity)?,
            Command::SetStopSize(Setting::Query) => self.answer(Answer::StopSize)?,
            Command::SetControl(c) => return self.control(c, client),
            // We see no line errors through termios; report "nothing to report".
            Command::NotifyLineState(_) => Command::NotifyLineState(0),
            Command::NotifyModemState(_) => {
                self.notify_modem(true, client);
                return None;
            }
            Command::FlowControlSuspend | Command::FlowControlResume => {
                // No answer: 108/109 would mean the opposite direction.
                self.suspended = cmd == Command::FlowControlSuspend;
                return None;
            }
            Command::SetLineStateMask(m) => {
                self.line_mask = m;
                Command::SetLineStateMask(m)
            }
            Command::SetModemStateMask(m) => {
                self.modem_mask = m;
                Command::SetModemStateMask(m)
            }
            Command::PurgeData(p) => {
                return self.begin(Effect::Purge(p), Then::Answer(Answer::Purge(p)))
            }
        };
        self.reply(answer, client);
        None
    }

    /// A SET-CONTROL request.
    fn control(&mut self, c: Control, client: &mut Vec<u8>) -> Option<Effect> {
        let answer = match c {
            Control::QueryFlow => Answer::Flow,
            Control::Flow(f) => {
                let s = LineSettings {
                    flow: f,
                    ..self.settings
                };
                return self.change(s, Answer::Flow, client);
            }
            Control::QueryBreak => Answer::Break,
            Control::Break(on) => {
                return self.begin(Effect::Break(on), Then::Answer(Answer::Break))
            }
            Control::QueryDtr => Answer::Control(Control::Dtr(self.client_lines.dtr)),
            Control::QueryRts => Answer::Control(Control::Rts(self.client_lines.rts)),
            Control::Dtr(on) | Control::Rts(on) => {
                let prev = self.client_lines;
                if matches!(c, Control::Dtr(_)) {
                    self.client_lines.dtr = on;
                } else {
                    self.client_lines.rts = on;
                }
                self.client_lines_moved(prev);
                let lines = Effect::Lines(self.client_lines);
                return self.begin(lines, Then::Answer(Answer::Control(c)));
            }
            Control::QueryInboundFlow | Control::InboundFlow(_) => {
                Answer::Control(Control::InboundFlow(match self.settings.flow {
                    FlowControl::None => 14,
                    FlowControl::XonXoff => 15,
                    FlowControl::RtsCts => 16,
                }))
            }
        };
        if let Some(cmd) = self.answer(answer) {
            self.reply(cmd, client);
        }
        None
    }

    /// The client moved its lines. IO0 low reached by releasing RTS (esptool's bootloader
    /// entry) or EN low reached by asserting RTS (its hard reset) is the client resetting the
    /// chip itself; pyserial's open (DTR, then RTS asserted) and a monitor letting go of the
    /// port (DTR, then RTS released) are not.
    fn client_lines_moved(&mut self, prev: Lines) {
        let now = self.client_lines;
        let to = if now == IO0_LOW && prev.rts {
            ResetTo::Bootloader
        } else if now == EN_LOW && !prev.rts {
            ResetTo::App
        } else {
            return;
        };
        if let Some(w) = &mut self.esp {
            w.client_resets(to);
        }
    }

    fn notify_modem(&mut self, force: bool, client: &mut Vec<u8>) {
        use rfc2217::modem::*;
        let st = self.modem;
        let mut state = 0u8;
        for (on, bit) in [(st.cd, CD), (st.ri, RI), (st.dsr, DSR), (st.cts, CTS)] {
            if on {
                state |= bit;
            }
        }
        let changed = state ^ self.last_modem;
        let mut delta = 0u8;
        for (bit, d) in [(CD, DELTA_CD), (DSR, DELTA_DSR), (CTS, DELTA_CTS)] {
            if changed & bit != 0 {
                delta |= d;
            }
        }
        // RI reports its trailing edge only.
        if changed & RI != 0 && state & RI == 0 {
            delta |= TRAILING_RI;
        }
        self.last_modem = state;
        let value = (state | delta) & self.modem_mask;
        if force || (changed != 0 && value != 0) {
            self.reply(Command::NotifyModemState(value), client);
        }
    }

    fn bad_command(&mut self, e: DecodeError, client: &mut Vec<u8>) {
        debug!("{}: {e}", self.label);
        // Answer a bad setting with the value in force, so the client sees the rejection
        // at once instead of waiting for its timeout.
        let answer = match e {
            DecodeError::BadValue { code: 1, .. } | DecodeError::BadLength { code: 1, .. } => {
                Answer::Baud
            }
            DecodeError::BadValue { code: 2, .. } => Answer::DataSize,
            DecodeError::BadValue { code: 3, .. } => Answer::Parity,
            DecodeError::BadValue { code: 4, .. } => Answer::StopSize,
            _ => return,
        };
        if let Some(cmd) = self.answer(answer) {
            self.reply(cmd, client);
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
#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::line::{DataBits, Parity};
    use crate::protocol::telnet::IAC;

    /// Performs effects the moment they are asked for, as a bridge with an idle device
    /// does, and records them.
    #[derive(Default)]
    struct Rig {
        device: Vec<u8>,
        client: Vec<u8>,
        /// How much data had been written when each setting was applied.
        applied_at: Vec<usize>,
        applied: Vec<LineSettings>,
        lines: Vec<Lines>,
        breaks: Vec<bool>,
        purges: Vec<Purge>,
        resets: Vec<ResetTo>,
        refuse_baud_above: Option<u32>,
        /// Effects performed, in order.
        effects: Vec<Effect>,
    }

    impl Rig {
        fn perform(&mut self, e: Effect) -> Result<(), Failure> {
            self.effects.push(e);
            match e {
                Effect::Apply(s) => {
                    if self.refuse_baud_above.is_some_and(|max| s.baud > max) {
                        return Err(Failure::Device(std::io::Error::other("unsupported baud")));
                    }
                    self.applied.push(s);
                    self.applied_at.push(self.device.len());
                }
                Effect::Lines(l) => self.lines.push(l),
                Effect::Break(on) => self.breaks.push(on),
                Effect::Purge(p) => self.purges.push(p),
                Effect::Reset(to) => self.resets.push(to),
            }
            Ok(())
        }

        /// Perform `effect` and whatever follows from it.
        fn settle(&mut self, s: &mut Session, mut effect: Option<Effect>) {
            while let Some(e) = effect {
                let outcome = self.perform(e);
                let mut out = Out {
                    device: &mut self.device,
                    client: &mut self.client,
                };
                effect = s.done(outcome, Instant::now(), &mut out);
            }
        }

        fn feed_all(&mut self, s: &mut Session, input: &[u8]) -> Result<(), SessionError> {
            let mut input = input.to_vec();
            let mut rest = &mut input[..];
            loop {
                let mut out = Out {
                    device: &mut self.device,
                    client: &mut self.client,
                };
                let step = s.on_client_bytes(rest, Instant::now(), &mut out)?;
                rest = &mut rest[step.consumed..];
                self.settle(s, step.effect);
                if rest.is_empty() {
                    return Ok(());
                }
                assert!(
                    step.consumed > 0 || step.effect.is_some(),
                    "the session made no progress"
                );
            }
        }

        /// Feed client bytes; returns (device bytes, client bytes) produced by them.
        fn feed(&mut self, s: &mut Session, input: &[u8]) -> (Vec<u8>, Vec<u8>) {
            self.device.clear();
            self.client.clear();
            self.feed_all(s, input).unwrap();
            (
                std::mem::take(&mut self.device),
                std::mem::take(&mut self.client),
            )
        }

        fn device_bytes(&mut self, s: &mut Session, data: &[u8]) {
            let mut out = Out {
                device: &mut self.device,
                client: &mut self.client,
            };
            let effect = s.on_device_bytes(data, Instant::now(), &mut out);
            self.settle(s, effect);
        }

        fn timer(&mut self, s: &mut Session, now: Instant) {
            let mut out = Out {
                device: &mut self.device,
                client: &mut self.client,
            };
            let effect = s.on_timer(now, &mut out);
            self.settle(s, effect);
        }
    }

    fn sb(cmd: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        telnet::subnegotiation(44, cmd, &mut v);
        v
    }

    fn session() -> Session {
        Session::new("test", "serialhub test".into(), LineSettings::default())
    }

    /// pyserial's opening: DO ECHO, WILL SGA, DO SGA, DO COM-PORT, WILL COM-PORT.
    const PYSERIAL_OPEN: [u8; 15] = [
        IAC, 0xFD, 1, IAC, 0xFB, 3, IAC, 0xFD, 3, IAC, 0xFD, 44, IAC, 0xFB, 44,
    ];

    #[test]
    fn opening_offers_com_port_and_never_answers_answers() {
        let mut s = session();
        let mut rig = Rig::default();
        let mut out = Vec::new();
        s.start(&mut out);
        assert!(
            out.windows(3).any(|w| w == [IAC, 0xFB, 44]),
            "WILL COM-PORT"
        );
        assert!(out.windows(3).any(|w| w == [IAC, 0xFD, 44]), "DO COM-PORT");
        let (_, out) = rig.feed(&mut s, &PYSERIAL_OPEN);
        // All of pyserial's requests cross our offers: the only output is the one
        // NOTIFY-MODEMSTATE that pyserial needs before it can read modem lines.
        assert_eq!(out, sb(&[107, 0]));
        // A repeated WILL is not answered again.
        let (_, out) = rig.feed(&mut s, &[IAC, 0xFB, 44]);
        assert!(out.is_empty());
        // Switched off and on again by the client: confirmed both times.
        let (_, out) = rig.feed(&mut s, &[IAC, 0xFC, 3, IAC, 0xFB, 3]);
        assert_eq!(out, [IAC, 0xFE, 3, IAC, 0xFD, 3]);
    }

    #[test]
    fn unknown_options_are_refused() {
        let mut s = session();
        let mut rig = Rig::default();
        let (_, out) = rig.feed(&mut s, &[IAC, 0xFD, 24, IAC, 0xFB, 31]);
        assert_eq!(out, [IAC, 0xFC, 24, IAC, 0xFE, 31]);
    }

    #[test]
    fn baud_is_applied_once_and_answered_with_the_value_in_force() {
        let mut s = session();
        let mut rig = Rig::default();
        let (_, out) = rig.feed(&mut s, &sb(&[1, 0, 0x0E, 0x10, 0x00]));
        assert_eq!(out, sb(&[101, 0, 0x0E, 0x10, 0x00]));
        assert_eq!(rig.applied.len(), 1);
        assert_eq!(rig.applied[0].baud, 921_600);
        // The same value again (esptool re-sends everything): answered, UART untouched.
        let (_, out) = rig.feed(&mut s, &sb(&[1, 0, 0x0E, 0x10, 0x00]));
        assert_eq!(out, sb(&[101, 0, 0x0E, 0x10, 0x00]));
        assert_eq!(rig.applied.len(), 1);
        // Query.
        let (_, out) = rig.feed(&mut s, &sb(&[1, 0, 0, 0, 0]));
        assert_eq!(out, sb(&[101, 0, 0x0E, 0x10, 0x00]));
    }

    #[test]
    fn refused_baud_answers_the_old_one() {
        let mut s = session();
        let mut rig = Rig {
            refuse_baud_above: Some(1_000_000),
            ..Default::default()
        };
        let (_, out) = rig.feed(&mut s, &sb(&[1, 0, 0x1E, 0x84, 0x80]));
        assert_eq!(out, sb(&[101, 0, 1, 0xC2, 0]));
        assert_eq!(s.settings().baud, 115_200);
    }

    #[test]
    fn a_setting_waits_for_its_effect_and_the_rest_of_the_input_waits_for_it() {
        let mut s = session();
        let wire = [&b"ab"[..], &sb(&[1, 0, 0x0E, 0x10, 0x00]), b"cd"].concat();
        let mut dev = Vec::new();
        let mut cli = Vec::new();
        let mut out = Out {
            device: &mut dev,
            client: &mut cli,
        };
        let step = s
            .on_client_bytes(&mut wire.clone(), Instant::now(), &mut out)
            .unwrap();
        let want = LineSettings {
            baud: 921_600,
            ..LineSettings::default()
        };
        assert_eq!(step.effect, Some(Effect::Apply(want)));
        assert_eq!(
            step.consumed,
            wire.len() - 2,
            "stops right after the request"
        );
        assert!(Effect::Apply(want).after_data());
        assert_eq!((out.device.as_slice(), out.client.len()), (&b"ab"[..], 0));
        assert!(s.client_paused());
        // Until the effect is done, nothing more is taken.
        let again = s
            .on_client_bytes(&mut b"cd".to_vec(), Instant::now(), &mut out)
            .unwrap();
        assert_eq!(
            again,
            Step {
                consumed: 0,
                effect: None
            }
        );
        assert_eq!(s.done(Ok(()), Instant::now(), &mut out), None);
        assert_eq!(*out.client, sb(&[101, 0, 0x0E, 0x10, 0x00]));
        assert!(!s.client_paused());
    }

    #[test]
    fn a_stalled_device_keeps_the_old_setting() {
        let mut s = session();
        let (mut dev, mut cli) = (Vec::new(), Vec::new());
        let mut out = Out {
            device: &mut dev,
            client: &mut cli,
        };
        let step = s
            .on_client_bytes(&mut sb(&[1, 0, 0, 0x25, 0x80]), Instant::now(), &mut out)
            .unwrap();
        assert!(step.effect.is_some());
        s.done(Err(Failure::Stalled), Instant::now(), &mut out);
        assert_eq!(*out.client, sb(&[101, 0, 1, 0xC2, 0]));
        assert_eq!(s.settings().baud, 115_200);
    }

    #[test]
    fn baud_with_iac_bytes_in_value() {
        // 0x0001_FFFF = 131071: the 0xFF bytes are doubled on the wire both ways.
        let mut s = session();
        let mut rig = Rig::default();
        let wire = sb(&[1, 0, 1, 0xFF, 0xFF]);
        assert_eq!(wire.len(), 12);
        let (_, out) = rig.feed(&mut s, &wire);
        assert_eq!(out, sb(&[101, 0, 1, 0xFF, 0xFF]));
        assert_eq!(rig.applied[0].baud, 131_071);
    }

    #[test]
    fn format_settings_and_bad_values() {
        let mut s = session();
        let mut rig = Rig::default();
        let (_, out) = rig.feed(&mut s, &sb(&[2, 7]));
        assert_eq!(out, sb(&[102, 7]));
        let (_, out) = rig.feed(&mut s, &sb(&[3, 3]));
        assert_eq!(out, sb(&[103, 3]));
        let (_, out) = rig.feed(&mut s, &sb(&[4, 2]));
        assert_eq!(out, sb(&[104, 2]));
        assert_eq!(s.settings().data_bits, DataBits::Seven);
        assert_eq!(s.settings().parity, Parity::Even);
        // Data size 9 does not exist: answered with the size in force.
        let (_, out) = rig.feed(&mut s, &sb(&[2, 9]));
        assert_eq!(out, sb(&[102, 7]));
    }

    #[test]
    fn control_is_acknowledged_once_done() {
        let mut s = session();
        let mut rig = Rig::default();
        let (_, out) = rig.feed(&mut s, &[sb(&[5, 8]), sb(&[5, 11])].concat());
        assert_eq!(out, [sb(&[105, 8]), sb(&[105, 11])].concat());
        assert_eq!(
            rig.lines,
            [
                Lines {
                    dtr: true,
                    rts: false
                },
                Lines {
                    dtr: true,
                    rts: true
                }
            ]
        );
        let (_, out) = rig.feed(&mut s, &[sb(&[5, 7]), sb(&[5, 10])].concat());
        assert_eq!(out, [sb(&[105, 8]), sb(&[105, 11])].concat());
        let (_, out) = rig.feed(&mut s, &[sb(&[5, 5]), sb(&[5, 4])].concat());
        assert_eq!(out, [sb(&[105, 5]), sb(&[105, 5])].concat());
        assert_eq!(rig.breaks, [true]);
        let (_, out) = rig.feed(&mut s, &[sb(&[5, 3]), sb(&[5, 0])].concat());
        assert_eq!(out, [sb(&[105, 3]), sb(&[105, 3])].concat());
    }

    #[test]
    fn purge_and_masks_and_signature() {
        let mut s = session();
        let mut rig = Rig::default();
        let (_, out) = rig.feed(&mut s, &sb(&[12, 3]));
        assert_eq!(out, sb(&[112, 3]));
        assert_eq!(rig.purges, [Purge::Both]);
        let (_, out) = rig.feed(&mut s, &sb(&[11, 0x30]));
        assert_eq!(out, sb(&[111, 0x30]));
        let (_, out) = rig.feed(&mut s, &sb(&[0]));
        let mut want = vec![100];
        want.extend_from_slice(b"serialhub test");
        assert_eq!(out, sb(&want));
        // Flow suspend/resume get no answer (108/109 would mean the opposite).
        let (_, out) = rig.feed(&mut s, &sb(&[8]));
        assert!(out.is_empty() && s.suspended());
        let (_, out) = rig.feed(&mut s, &sb(&[9]));
        assert!(out.is_empty() && !s.suspended());
        // The client's own signature is not answered.
        let (_, out) = rig.feed(&mut s, &sb(b"\x00pyserial\x1b[31m"));
        assert!(out.is_empty());
    }

    #[test]
    fn modem_changes_are_notified_masked() {
        let mut s = session();
        let mut rig = Rig::default();
        rig.feed(&mut s, &PYSERIAL_OPEN);
        let mut out = Vec::new();
        let mut st = ModemStatus::default();
        s.modem_status(st, &mut out);
        assert!(out.is_empty(), "no change, no notification");
        st.cts = true;
        s.modem_status(st, &mut out);
        assert_eq!(out, sb(&[107, 0x11]));
        out.clear();
        rig.feed(&mut s, &sb(&[11, 0x20]));
        st.cts = false;
        s.modem_status(st, &mut out);
        assert!(out.is_empty(), "CTS masked out");
    }

    #[test]
    fn data_passes_with_iac_unescaped() {
        let mut s = session();
        let mut rig = Rig::default();
        let (dev, _) = rig.feed(&mut s, &[1, IAC, IAC, 2]);
        assert_eq!(dev, [1, 0xFF, 2]);
    }

    #[test]
    fn data_before_a_baud_change_is_written_before_it() {
        let mut s = session();
        let mut rig = Rig::default();
        let wire = [&b"ab"[..], &sb(&[1, 0, 0x0E, 0x10, 0x00]), b"cd"].concat();
        let (dev, _) = rig.feed(&mut s, &wire);
        assert_eq!(dev, b"abcd");
        assert_eq!(rig.applied_at, [2]);
    }

    #[test]
    fn raw_sessions_pass_bytes_untouched() {
        let mut s = Session::raw("test", LineSettings::default());
        let mut rig = Rig::default();
        let mut out = Vec::new();
        s.start(&mut out);
        assert!(out.is_empty());
        let (dev, cli) = rig.feed(&mut s, &[IAC, 0xFD, 44, IAC, IAC]);
        assert_eq!(dev, [IAC, 0xFD, 44, IAC, IAC]);
        assert!(cli.is_empty() && rig.effects.is_empty());
        rig.device_bytes(&mut s, &[IAC, 1]);
        assert_eq!(rig.client, [IAC, 1]);
    }

    fn detecting() -> Session {
        let window = Duration::from_millis(300);
        Session::detect("test", "sig".into(), LineSettings::default(), window)
    }

    #[test]
    fn detection_iac_first_is_rfc2217_and_held_output_comes_escaped_after_the_offers() {
        let mut s = detecting();
        let mut rig = Rig::default();
        let mut out = Vec::new();
        s.start(&mut out);
        assert!(out.is_empty(), "no offers before the client shows itself");
        rig.device_bytes(&mut s, &[b'a', IAC]);
        assert!(rig.client.is_empty() && s.protocol().is_none());
        let (_, cli) = rig.feed(&mut s, &PYSERIAL_OPEN);
        assert_eq!(s.protocol(), Some(Protocol::Rfc2217));
        let mut offers = Vec::new();
        session().start(&mut offers);
        assert!(cli.starts_with(&offers), "{cli:02x?}");
        assert!(cli.windows(3).any(|w| w == [b'a', IAC, IAC]));
    }

    #[test]
    fn detection_other_first_byte_is_raw_and_nothing_is_reordered() {
        let mut s = detecting();
        let mut rig = Rig::default();
        rig.device_bytes(&mut s, b"boot ");
        let (dev, cli) = rig.feed(&mut s, b"hi\xff");
        assert_eq!(
            (dev.as_slice(), cli.as_slice()),
            (&b"hi\xff"[..], &b"boot "[..])
        );
        rig.device_bytes(&mut s, b"more");
        assert_eq!(rig.client, b"more");
        assert_eq!(s.protocol(), Some(Protocol::Raw));
    }

    #[test]
    fn detection_silent_client_turns_raw_after_the_window_only_if_output_waits() {
        let mut s = detecting();
        let mut rig = Rig::default();
        assert_eq!(s.deadline(), None, "no output waiting, no hurry");
        let t0 = Instant::now();
        let mut out = Out {
            device: &mut rig.device,
            client: &mut rig.client,
        };
        assert_eq!(s.on_device_bytes(b"log line\r\n", t0, &mut out), None);
        let at = s.deadline().unwrap();
        assert_eq!(at, t0 + Duration::from_millis(300));
        rig.timer(&mut s, at - Duration::from_millis(1));
        assert!(rig.client.is_empty() && s.protocol().is_none());
        rig.timer(&mut s, at);
        assert_eq!(rig.client, b"log line\r\n");
        assert_eq!(s.protocol(), Some(Protocol::Raw));
    }

    #[test]
    fn esp_raw_session_resets_on_sync_and_switches_baud_after_the_answer() {
        let mut s = detecting().watch_esp(false, Entry::Reset);
        let mut rig = Rig::default();
        let mut sync = vec![0xC0, 0, 0x08, 0x24, 0, 0, 0, 0, 0, 7, 7, 0x12, 0x20];
        sync.extend_from_slice(&[0x55; 32]);
        sync.push(0xC0);
        let (dev, _) = rig.feed(&mut s, &sync);
        assert_eq!(rig.resets, [ResetTo::Bootloader]);
        assert_eq!(dev, [0xC0, 0xC0]);
        assert_eq!(s.esp_end(), Some(EspEnd::Entered));
        let mut out = Out {
            device: &mut rig.device,
            client: &mut rig.client,
        };
        s.reset_done(ResetTo::Bootloader, Instant::now(), &mut out);
        assert_eq!(rig.device, sync, "the swallowed SYNC is replayed");
        rig.device.clear();

        // Stub form: (921600, 115200); bytes after it wait for the chip's answer.
        let mut req = vec![0xC0, 0, 0x0F, 8, 0, 0, 0, 0, 0];
        req.extend_from_slice(&921_600u32.to_le_bytes());
        req.extend_from_slice(&115_200u32.to_le_bytes());
        req.push(0xC0);
        let (dev, _) = rig.feed(&mut s, &[&req[..], b"\xc0next\xc0"].concat());
        assert_eq!(dev, req);
        assert!(s.client_paused() && rig.applied.is_empty());
        let answer = [0xC0, 1, 0x0F, 2, 0, 0, 0, 0, 0, 0, 0, 0xC0];
        rig.device_bytes(&mut s, &answer);
        assert_eq!(rig.client, answer);
        assert_eq!(
            rig.applied.iter().map(|a| a.baud).collect::<Vec<_>>(),
            [921_600]
        );
        assert_eq!(
            rig.applied_at,
            [0],
            "switched before the parked bytes went out"
        );
        assert_eq!(rig.device, b"\xc0next\xc0");
        assert_eq!(s.settings().baud, 921_600);
        assert!(!s.client_paused());
    }

    #[test]
    fn a_failed_bootloader_entry_lets_the_sync_through() {
        let mut s = Session::raw("test", LineSettings::default()).watch_esp(false, Entry::Reset);
        let mut sync = vec![0xC0, 0, 0x08, 0x24, 0, 0, 0, 0, 0, 7, 7, 0x12, 0x20];
        sync.extend_from_slice(&[0x55; 32]);
        sync.push(0xC0);
        let (mut dev, mut cli) = (Vec::new(), Vec::new());
        let mut out = Out {
            device: &mut dev,
            client: &mut cli,
        };
        let now = Instant::now();
        let step = s.on_client_bytes(&mut sync.clone(), now, &mut out).unwrap();
        assert_eq!(step.effect, Some(Effect::Reset(ResetTo::Bootloader)));
        let failure = Failure::Reset(ResetError::LinesDisabled);
        assert_eq!(s.done(Err(failure), now, &mut out), None);
        assert!(out.device.ends_with(&sync), "replayed at once");
    }

    #[test]
    fn oversized_subnegotiation_ends_the_session() {
        let mut s = session();
        let mut rig = Rig::default();
        let mut wire = vec![IAC, 0xFA, 44];
        wire.resize(2000, 1);
        assert!(matches!(
            rig.feed_all(&mut s, &wire),
            Err(SessionError::Garbage(_))
        ));
    }

    #[test]
    fn thousands_of_line_changes_are_one_effect_at_a_time() {
        let mut s = session();
        let mut rig = Rig::default();
        let wire: Vec<u8> = (0..2000)
            .flat_map(|i| sb(&[5, if i % 2 == 0 { 8 } else { 9 }]))
            .collect();
        let (_, cli) = rig.feed(&mut s, &wire);
        assert_eq!(rig.lines.len(), 2000);
        assert_eq!(cli.len(), wire.len(), "every request answered, same size");
    }

    fn sync_frame() -> Vec<u8> {
        let mut sync = vec![0xC0, 0, 0x08, 0x24, 0, 0, 0, 0, 0, 7, 7, 0x12, 0x20];
        sync.extend_from_slice(&[0x55; 32]);
        sync.push(0xC0);
        sync
    }

    #[test]
    fn rfc2217_session_enters_the_loader_on_sync_and_follows_change_baudrate() {
        // esptool --before no-reset over rfc2217://: no line changes, just a SYNC.
        let mut s = session().watch_esp(false, Entry::Reset);
        let mut rig = Rig::default();
        rig.feed(&mut s, &PYSERIAL_OPEN);
        assert_eq!(s.protocol(), Some(Protocol::Rfc2217));
        assert!(s.esp.is_some());
        let sync = sync_frame();
        // A setting right behind the SYNC waits until the entry has been asked for.
        let wire = [sync.clone(), sb(&[1, 0, 1, 0xC2, 0])].concat();
        let (dev, cli) = rig.feed(&mut s, &wire);
        assert_eq!(rig.resets, [ResetTo::Bootloader]);
        assert_eq!(dev, [0xC0, 0xC0], "the SYNC is held while the chip resets");
        assert_eq!(
            cli,
            sb(&[101, 0, 1, 0xC2, 0]),
            "the unchanged baud is answered"
        );
        let mut out = Out {
            device: &mut rig.device,
            client: &mut rig.client,
        };
        s.reset_done(ResetTo::Bootloader, Instant::now(), &mut out);
        assert_eq!(rig.device, sync, "replayed");
        // The chip's answer reaches the client Telnet-escaped.
        rig.client.clear();
        let answer = [0xC0, 1, 8, 2, 0, 0xFF, 0, 0, 0, 0, 0, 0xC0];
        rig.device_bytes(&mut s, &answer);
        assert_eq!(
            rig.client,
            [&answer[..5], &[0xFF, 0xFF], &answer[6..]].concat()
        );
        // CHANGE_BAUDRATE in the data: the UART follows the chip's answer, and the
        // client's own SET-BAUD to that rate afterwards changes nothing.
        let mut req = vec![0xC0, 0, 0x0F, 8, 0, 0, 0, 0, 0];
        req.extend_from_slice(&921_600u32.to_le_bytes());
        req.extend_from_slice(&115_200u32.to_le_bytes());
        req.push(0xC0);
        rig.feed(&mut s, &req);
        rig.device_bytes(&mut s, &[0xC0, 1, 0x0F, 2, 0, 0, 0, 0, 0, 0, 0, 0xC0]);
        assert_eq!(s.settings().baud, 921_600);
        let applied = rig.applied.len();
        // pyserial re-sends the old rate while esptool waits: answered as asked, no change.
        let (_, cli) = rig.feed(&mut s, &sb(&[1, 0, 1, 0xC2, 0]));
        assert_eq!(cli, sb(&[101, 0, 1, 0xC2, 0]));
        assert_eq!(s.settings().baud, 921_600);
        let (_, cli) = rig.feed(&mut s, &sb(&[1, 0, 0x0E, 0x10, 0x00]));
        assert_eq!(cli, sb(&[101, 0, 0x0E, 0x10, 0x00]));
        assert_eq!(rig.applied.len(), applied, "UART untouched");
        // No reset of its own at the end: the chip is owed one.
        assert_eq!(s.esp_end(), Some(EspEnd::Entered));
    }

    #[test]
    fn rfc2217_client_that_resets_the_chip_itself_is_not_reset_again() {
        let mut s = session().watch_esp(false, Entry::Reset);
        let mut rig = Rig::default();
        rig.feed(&mut s, &PYSERIAL_OPEN);
        // pyserial's open (DTR, then RTS asserted), then esptool's ClassicReset: DTR
        // released (EN low), RTS asserted, DTR asserted, RTS released (IO0 low), DTR released.
        let open = [sb(&[5, 8]), sb(&[5, 11])].concat();
        let classic = [5, 9, 5, 11, 5, 8, 5, 12, 5, 9]
            .chunks(2)
            .map(sb)
            .collect::<Vec<_>>();
        let reset = [open, classic.concat()].concat();
        rig.feed(&mut s, &reset);
        let (dev, _) = rig.feed(&mut s, &sync_frame());
        assert_eq!(dev, sync_frame(), "passes at once");
        assert!(rig.resets.is_empty());
        assert_eq!(s.esp_end(), Some(EspEnd::Unknown));
        // A monitor letting go (DTR released, then RTS) is not a reset by the client.
        let mut s = session().watch_esp(false, Entry::Reset);
        rig.feed(
            &mut s,
            &[sb(&[5, 8]), sb(&[5, 11]), sb(&[5, 9]), sb(&[5, 12])].concat(),
        );
        rig.feed(&mut s, &sync_frame());
        assert_eq!(rig.resets, [ResetTo::Bootloader]);
    }

    #[test]
    fn a_loader_session_starts_with_a_sync_or_the_clients_bootloader_entry_and_ends_in_the_app() {
        let mut rig = Rig::default();
        // A monitor: opening with both lines released, a hard reset with RTS (EN low,
        // then released): no loader session.
        let mut s = session().watch_esp(false, Entry::Reset);
        rig.feed(&mut s, &PYSERIAL_OPEN);
        let hard_reset = [5, 9, 5, 12, 5, 11, 5, 12]
            .chunks(2)
            .map(sb)
            .collect::<Vec<_>>();
        rig.feed(&mut s, &hard_reset.concat());
        assert!(!s.loading());
        // esptool over RFC 2217: its own bootloader entry starts one (the chip's banner
        // that follows is the flasher's alone).
        let classic = [5, 9, 5, 11, 5, 8, 5, 12, 5, 9]
            .chunks(2)
            .map(sb)
            .collect::<Vec<_>>();
        rig.feed(&mut s, &classic.concat());
        assert!(s.loading());
        // The server resets the chip into its application: over.
        let mut out = Out {
            device: &mut rig.device,
            client: &mut rig.client,
        };
        s.reset_done(ResetTo::App, Instant::now(), &mut out);
        assert!(!s.loading());
        // esptool over socket://: its SYNC starts one.
        let mut s = Session::raw("t", LineSettings::default()).watch_esp(false, Entry::Reset);
        rig.feed(&mut s, &sync_frame());
        assert!(s.loading());
        // Regaining control starts the follower over.
        s.take_control(true);
        assert!(!s.loading());
        let (dev, _) = rig.feed(&mut s, &sync_frame());
        assert_eq!(
            dev,
            sync_frame(),
            "a chip known in its loader is not reset again"
        );
    }

    #[test]
    fn news_reach_an_rfc2217_client_as_a_signature_once_it_agreed_to_com_port() {
        let mut rig = Rig::default();
        let mut s = session();
        let mut out = Vec::new();
        s.start(&mut out);
        out.clear();
        s.tell("serialhub: observing", &mut out);
        assert!(out.is_empty(), "not before COM-PORT is agreed");
        let (_, answer) = rig.feed(&mut s, &PYSERIAL_OPEN);
        let mut news = Vec::new();
        s.reply(
            Command::Signature(b"serialhub: observing".to_vec()),
            &mut news,
        );
        assert_eq!(answer, [sb(&[107, 0]), news.clone()].concat());
        let mut out = Vec::new();
        s.tell("serialhub: observing", &mut out);
        assert_eq!(out, news, "at once afterwards");
        // A raw client hears nothing: its stream is the device's alone.
        let mut raw = Session::raw("t", LineSettings::default());
        let mut out = Vec::new();
        raw.tell("serialhub: observing", &mut out);
        assert!(out.is_empty());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn chunks(data: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
            cuts.sort_unstable();
            let mut out = Vec::new();
            let mut last = 0;
            for c in cuts.into_iter().chain([data.len()]) {
                out.push(data[last..c].to_vec());
                last = c;
            }
            out
        }

        /// Client bytes rich in what the session reacts to: IAC and its verbs, COM-PORT
        /// subnegotiations, SLIP framing and a whole SYNC.
        fn hostile() -> impl Strategy<Value = Vec<u8>> {
            let piece = prop_oneof![
                Just(vec![IAC]),
                Just(vec![IAC, 0xFA, 44]),
                Just(vec![IAC, 0xF0]),
                Just(vec![IAC, 0xFD, 44]),
                Just(vec![0xC0]),
                Just(sync_frame()),
                Just(vec![
                    0xC0, 0, 0x0F, 8, 0, 0, 0, 0, 0, 0, 0x10, 0x0E, 0, 0, 0, 0, 0, 0xC0
                ]),
                proptest::collection::vec(0u8..=12, 1..4),
                proptest::collection::vec(any::<u8>(), 1..64),
            ];
            proptest::collection::vec(piece, 0..64).prop_map(|v| v.concat())
        }

        proptest! {
            /// Whatever a client sends, however it is split, in any mode: no panic, every byte
            /// is eventually taken, and what the session writes stays in proportion to it.
            #[test]
            fn any_client_input_is_taken_and_bounded(
                wire in hostile(),
                cuts in proptest::collection::vec(0usize..4096, 0..6),
                mode in 0u8..3,
                device in proptest::collection::vec(any::<u8>(), 0..256),
            ) {
                let s = match mode {
                    0 => session(),
                    1 => Session::raw("p", LineSettings::default()),
                    _ => detecting(),
                };
                let mut s = s.watch_esp(false, Entry::Reset);
                let mut rig = Rig::default();
                for chunk in chunks(&wire, &cuts) {
                    if rig.feed_all(&mut s, &chunk).is_err() {
                        break;
                    }
                    rig.device_bytes(&mut s, &device);
                }
                // A SYNC can be replayed once per entry; everything else is at most the input.
                let replays = rig.resets.len() + 1;
                prop_assert!(rig.device.len() <= wire.len() + replays * sync_frame().len());
                // Answers: a fixed size per request, plus the device bytes (escaped: doubled).
                prop_assert!(rig.client.len() <= 64 * wire.len() + 2 * device.len() * (cuts.len() + 1) + 64);
            }

            /// A raw session on a device whose policy never resets: what reaches the device
            /// is exactly what the client sent, except that SYNCs are never held.
            #[test]
            fn raw_data_reaches_the_device_unchanged(
                wire in hostile(),
                cuts in proptest::collection::vec(0usize..4096, 0..6),
            ) {
                let mut s = Session::raw("p", LineSettings::default()).watch_esp(false, Entry::Never);
                let mut rig = Rig::default();
                for chunk in chunks(&wire, &cuts) {
                    rig.feed_all(&mut s, &chunk).unwrap();
                }
                // Without a chip answering, CHANGE_BAUDRATE is not followed: nothing parks.
                prop_assert_eq!(&rig.device, &wire);
            }

            /// RFC 2217: escaped data arrives unescaped, whatever the split.
            #[test]
            fn telnet_data_roundtrips(
                data in proptest::collection::vec(prop_oneof![Just(IAC), any::<u8>()], 0..1024),
                cuts in proptest::collection::vec(0usize..4096, 0..6),
            ) {
                let mut s = session();
                let mut rig = Rig::default();
                let mut wire = Vec::new();
                telnet::escape_into(&data, &mut wire);
                for chunk in chunks(&wire, &cuts) {
                    rig.feed_all(&mut s, &chunk).unwrap();
                }
                prop_assert_eq!(&rig.device, &data);
            }
        }
    }
}
