//! One RFC 2217 client's session, sans-IO: Telnet negotiation, COM-PORT commands, the
//! client's mirrored DTR/RTS, and the answers. The bridge feeds it the client's bytes and a
//! [`Port`] to act on; it returns data for the device and bytes for the client.
//!
//! Every request is answered at once, with the value actually in force after acting on it,
//! because pyserial waits for each answer (and re-sends all settings whenever a client changes
//! its read timeout — esptool does so twice per command): a setting equal to the one in force
//! is answered without touching the UART.

use std::io;
use std::time::{Duration, Instant};

use log::{debug, info, warn};

use crate::protocol::esp::{Action, EspWatch};
use crate::protocol::line::{FlowControl, LineSettings, Lines, ModemStatus, Purge};
use crate::protocol::reset::{ResetError, ResetTo};
use crate::protocol::rfc2217::{self, Command, Control, DecodeError, Direction, Setting};
use crate::protocol::telnet::{self, option, Event, Verb, IAC};

/// What a session may do to the device. The bridge implements it over a [`crate::device::Device`]
/// (plus its own buffers, for PURGE); tests implement it with a recorder.
pub(crate) trait Port {
    /// Queue client data for the device.
    fn write(&mut self, data: &[u8]);
    fn apply(&mut self, settings: &LineSettings) -> io::Result<()>;
    fn set_lines(&mut self, lines: Lines) -> io::Result<()>;
    fn set_break(&mut self, on: bool) -> io::Result<()>;
    fn purge(&mut self, which: Purge) -> io::Result<()>;
    fn modem_status(&mut self) -> io::Result<ModemStatus>;
    /// Reset the chip through the device's reset policy; the bridge calls
    /// [`Session::reset_done`] when the sequence has played.
    fn reset(&mut self, to: ResetTo) -> Result<(), ResetError>;
}

/// How this session's client talks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// `protocol = "auto"`, nothing from the client yet: its first byte decides (IAC: RFC
    /// 2217), or, when device output has waited `window` for a silent client, raw.
    Detect { window: Duration },
    /// RFC 2217 over Telnet.
    Telnet,
    /// A plain byte stream (`socket://` clients, netcat): no Telnet, no escaping.
    Raw,
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

/// Per-side state of one option (a small subset of RFC 1143's Q method: enough to never
/// answer an answer, which is what makes negotiation loops impossible).
#[derive(Clone, Copy, Default, Debug)]
struct OptState {
    enabled: bool,
    requested: bool,
}

/// The state of one client's RFC 2217 session.
pub(crate) struct Session {
    label: String,
    signature: String,
    decoder: telnet::Decoder,
    ours: [OptState; OURS.len()],
    theirs: [OptState; THEIRS.len()],
    com_port_agreed: bool,
    settings: LineSettings,
    client_lines: Lines,
    break_on: bool,
    modem_mask: u8,
    line_mask: u8,
    last_modem: u8,
    suspended: bool,
    lines_unsupported_logged: bool,
    mode: Mode,
    /// Device output that arrived while the protocol was undecided, and since when.
    held: Vec<u8>,
    held_since: Option<Instant>,
    /// Follows the ESP loader protocol on raw sessions (devices with an ESP reset policy).
    esp: Option<EspWatch>,
}

impl Session {
    /// `settings` is what is in force on the device when the client arrives; `label` names the
    /// device in logs and `signature` answers SIGNATURE queries.
    pub(crate) fn new(label: &str, signature: String, settings: LineSettings) -> Session {
        Session {
            label: label.to_owned(),
            signature,
            decoder: telnet::Decoder::new(),
            ours: Default::default(),
            theirs: Default::default(),
            com_port_agreed: false,
            settings,
            client_lines: Lines::default(),
            break_on: false,
            modem_mask: 0xFF,
            line_mask: 0,
            last_modem: 0,
            suspended: false,
            lines_unsupported_logged: false,
            mode: Mode::Telnet,
            held: Vec::new(),
            held_since: None,
            esp: None,
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
            mode: Mode::Detect { window },
            ..Session::new(label, signature, settings)
        }
    }

    /// Follow the ESP loader protocol if the session is (or turns out) raw: enter the
    /// bootloader on esptool's first SYNC unless the chip is known `in_loader`, and switch
    /// the UART on CHANGE_BAUDRATE.
    pub(crate) fn watch_esp(mut self, in_loader: bool) -> Session {
        if self.mode != Mode::Telnet {
            self.esp = Some(EspWatch::new(&self.label, in_loader));
        }
        self
    }

    /// Our opening offers, sent as soon as an RFC 2217 client connects (as pyserial's own
    /// server does), so that a client waiting for `DO COM-PORT` never waits for a round trip.
    pub(crate) fn start(&mut self, to_client: &mut Vec<u8>) {
        if self.mode != Mode::Telnet {
            return;
        }
        for (i, &opt) in OURS.iter().enumerate() {
            self.ours[i].requested = true;
            telnet::negotiate(Verb::Will, opt, to_client);
        }
        for (i, &opt) in THEIRS.iter().enumerate() {
            self.theirs[i].requested = true;
            telnet::negotiate(Verb::Do, opt, to_client);
        }
    }

    /// The line settings in force (what the device has been told).
    pub(crate) fn settings(&self) -> LineSettings {
        self.settings
    }

    /// Stop reading the device: the client asked us to (FLOWCONTROL-SUSPEND), or output
    /// held while the protocol is undecided reached its bound.
    pub(crate) fn suspended(&self) -> bool {
        self.suspended || self.held.len() >= DETECT_HOLD_MAX
    }

    /// Stop reading the client: its bytes wait for a baud change to finish.
    pub(crate) fn client_paused(&self) -> bool {
        self.esp.as_ref().is_some_and(EspWatch::parked)
    }

    /// The protocol the client speaks, once known.
    pub(crate) fn protocol(&self) -> Option<&'static str> {
        match self.mode {
            Mode::Detect { .. } => None,
            Mode::Telnet => Some("rfc2217"),
            Mode::Raw if self.esp.is_some() => Some("raw, esp-aware"),
            Mode::Raw => Some("raw"),
        }
    }

    /// The ESP watch's view at the end of a raw session: did it enter the bootloader, and
    /// is the chip known to be in its loader now. `None` for other sessions.
    pub(crate) fn esp_state(&self) -> Option<(bool, bool)> {
        match self.mode {
            Mode::Raw => self.esp.as_ref().map(|w| (w.entered(), w.in_loader())),
            _ => None,
        }
    }

    /// When [`Session::on_timer`] has something to do.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        match self.mode {
            Mode::Detect { window } => self.held_since.map(|t| t + window),
            Mode::Raw => self.esp.as_ref().and_then(EspWatch::deadline),
            Mode::Telnet => None,
        }
    }

    /// Time passed: a silent client becomes raw, an ESP watch stops waiting.
    pub(crate) fn on_timer(&mut self, now: Instant, port: &mut dyn Port, to_client: &mut Vec<u8>) {
        match self.mode {
            Mode::Detect { window } => {
                if self.held_since.is_some_and(|t| now >= t + window) {
                    info!(
                        "{}: client sent nothing for {} ms while device output waited: raw session",
                        self.label,
                        window.as_millis()
                    );
                    self.decide(Mode::Raw, now, port, to_client);
                }
            }
            Mode::Raw => {
                if let Some(w) = &mut self.esp {
                    let action = w.on_timer(now, &mut |b| port.write(b));
                    self.act(action, now, port);
                }
            }
            Mode::Telnet => {}
        }
    }

    /// A reset sequence the session asked for (or any other) has played.
    pub(crate) fn reset_done(&mut self, to: ResetTo, now: Instant, port: &mut dyn Port) {
        if let (Mode::Raw, Some(w), ResetTo::Bootloader) = (self.mode, &mut self.esp, to) {
            w.bootloader_entered(now, &mut |b| port.write(b));
        }
    }

    /// The protocol is known: the held device output goes out in its form.
    fn decide(&mut self, mode: Mode, now: Instant, port: &mut dyn Port, to_client: &mut Vec<u8>) {
        self.mode = mode;
        self.held_since = None;
        if mode == Mode::Telnet {
            self.esp = None;
            self.start(to_client);
        }
        info!(
            "{}: the client speaks {}",
            self.label,
            self.protocol().unwrap_or("?")
        );
        let held = std::mem::take(&mut self.held);
        self.device_data(&held, now, port, to_client);
    }

    /// Carry out what the ESP watch asked for; releasing parked bytes may ask for more.
    fn act(&mut self, mut action: Option<Action>, now: Instant, port: &mut dyn Port) {
        while let Some(a) = action.take() {
            match a {
                Action::EnterBootloader => {
                    if let Err(e) = port.reset(ResetTo::Bootloader) {
                        warn!("{}: cannot enter the bootloader: {e}", self.label);
                        if let Some(w) = &mut self.esp {
                            w.bootloader_entered(now, &mut |b| port.write(b));
                        }
                    }
                }
                Action::BaudAnswered(rate) => {
                    if let Some(baud) = rate {
                        let mut s = self.settings;
                        s.baud = baud;
                        self.change(s, port);
                    }
                    if let Some(w) = &mut self.esp {
                        action = w.baud_switched(now, &mut |b| port.write(b));
                    }
                }
            }
        }
    }

    /// Handle bytes from the client: data goes to `port.write`, answers to `to_client`, in
    /// stream order.
    pub(crate) fn on_client_bytes(
        &mut self,
        input: &[u8],
        now: Instant,
        port: &mut dyn Port,
        to_client: &mut Vec<u8>,
    ) -> Result<(), SessionError> {
        if let (Mode::Detect { .. }, Some(&first)) = (self.mode, input.first()) {
            let mode = if first == IAC {
                Mode::Telnet
            } else {
                Mode::Raw
            };
            self.decide(mode, now, port, to_client);
        }
        match (self.mode, &mut self.esp) {
            (Mode::Detect { .. }, _) => return Ok(()),
            (Mode::Raw, None) => {
                port.write(input);
                return Ok(());
            }
            (Mode::Raw, Some(w)) => {
                let action = w.on_client(input, now, &mut |b| port.write(b));
                self.act(action, now, port);
                return Ok(());
            }
            (Mode::Telnet, _) => {}
        }
        let mut decoder = std::mem::take(&mut self.decoder);
        let mut sink = SessionSink {
            session: self,
            port,
            out: to_client,
            result: Ok(()),
        };
        decoder.decode(input, &mut sink);
        let result = sink.result;
        self.decoder = decoder;
        result
    }

    /// Check the modem lines and notify the client of a change (masked by its
    /// SET-MODEMSTATE-MASK). The bridge calls this periodically while a client is connected.
    pub(crate) fn poll_modem(&mut self, port: &mut dyn Port, to_client: &mut Vec<u8>) {
        if self.com_port_agreed {
            self.notify_modem(port, false, to_client);
        }
    }

    /// Append device output for the client, in the session's form (Telnet-escaped, raw, or
    /// held while the protocol is undecided).
    pub(crate) fn device_data(
        &mut self,
        data: &[u8],
        now: Instant,
        port: &mut dyn Port,
        to_client: &mut Vec<u8>,
    ) {
        match (self.mode, &mut self.esp) {
            (Mode::Detect { .. }, _) => {
                self.held.extend_from_slice(data);
                self.held_since.get_or_insert(now);
            }
            (Mode::Telnet, _) => telnet::escape_into(data, to_client),
            (Mode::Raw, None) => to_client.extend_from_slice(data),
            (Mode::Raw, Some(w)) => {
                let action = w.on_device(data, to_client);
                self.act(action, now, port);
            }
        }
    }

    fn on_event(
        &mut self,
        ev: Event,
        port: &mut dyn Port,
        out: &mut Vec<u8>,
    ) -> Result<(), SessionError> {
        match ev {
            Event::Negotiate(verb, opt) => self.negotiate(verb, opt, port, out),
            Event::Subnegotiation {
                option: option::COM_PORT,
                payload,
            } => match rfc2217::decode(&payload) {
                Ok((Direction::ClientToServer, cmd)) => self.command(cmd, port, out),
                Ok((Direction::ServerToClient, cmd)) => {
                    debug!(
                        "{}: ignoring server-side command from client: {cmd:?}",
                        self.label
                    )
                }
                Err(e) => self.bad_command(e, out),
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
                warn!(
                    "{}: client cut a subnegotiation for option {option} short",
                    self.label
                )
            }
            Event::Command(c) => debug!("{}: ignoring Telnet command {c:#04x}", self.label),
        }
        Ok(())
    }

    fn negotiate(&mut self, verb: Verb, opt: u8, port: &mut dyn Port, out: &mut Vec<u8>) {
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
                telnet::negotiate(no, opt, out);
            }
            return;
        };
        let st = &mut table[i];
        match verb {
            Verb::Do | Verb::Will => {
                if !st.enabled {
                    st.enabled = true;
                    if !st.requested {
                        telnet::negotiate(yes, opt, out);
                    }
                }
                st.requested = false;
            }
            Verb::Dont | Verb::Wont => {
                if st.enabled || st.requested {
                    let was_requested = st.requested;
                    *st = OptState::default();
                    if !was_requested {
                        telnet::negotiate(no, opt, out);
                    }
                }
            }
        }
        if opt == option::COM_PORT && matches!(verb, Verb::Do | Verb::Will) && !self.com_port_agreed
        {
            // pyserial refuses to read modem lines until it has seen one NOTIFY-MODEMSTATE.
            self.com_port_agreed = true;
            self.notify_modem(port, true, out);
        }
    }

    fn reply(&self, cmd: Command, out: &mut Vec<u8>) {
        let mut payload = Vec::with_capacity(8);
        rfc2217::encode(Direction::ServerToClient, &cmd, &mut payload);
        telnet::subnegotiation(option::COM_PORT, &payload, out);
    }

    /// Apply `new` if it differs from what is in force; the answer then reports the truth.
    fn change(&mut self, new: LineSettings, port: &mut dyn Port) {
        if new == self.settings {
            return;
        }
        match port.apply(&new) {
            Ok(()) => {
                if new.baud != self.settings.baud {
                    info!(
                        "{}: baud {} -> {}",
                        self.label, self.settings.baud, new.baud
                    );
                } else {
                    debug!("{}: line settings {new}", self.label);
                }
                self.settings = new;
            }
            Err(e) => warn!(
                "{}: device refused {new} ({e}); keeping {}",
                self.label, self.settings
            ),
        }
    }

    fn command(&mut self, cmd: Command, port: &mut dyn Port, out: &mut Vec<u8>) {
        let mut s = self.settings;
        match cmd {
            Command::Signature(text) if text.is_empty() => {
                self.reply(Command::Signature(self.signature.clone().into_bytes()), out)
            }
            Command::Signature(text) => {
                info!(
                    "{}: client signature: {}",
                    self.label,
                    String::from_utf8_lossy(&text)
                )
            }
            Command::SetBaud(v) => {
                if let Setting::Value(b) = v {
                    s.baud = b;
                    self.change(s, port);
                }
                self.reply(Command::SetBaud(Setting::Value(self.settings.baud)), out)
            }
            Command::SetDataSize(v) => {
                if let Setting::Value(d) = v {
                    s.data_bits = d;
                    self.change(s, port);
                }
                self.reply(
                    Command::SetDataSize(Setting::Value(self.settings.data_bits)),
                    out,
                )
            }
            Command::SetParity(v) => {
                if let Setting::Value(p) = v {
                    s.parity = p;
                    self.change(s, port);
                }
                self.reply(
                    Command::SetParity(Setting::Value(self.settings.parity)),
                    out,
                )
            }
            Command::SetStopSize(v) => {
                if let Setting::Value(b) = v {
                    s.stop_bits = b;
                    self.change(s, port);
                }
                self.reply(
                    Command::SetStopSize(Setting::Value(self.settings.stop_bits)),
                    out,
                )
            }
            Command::SetControl(c) => {
                let answer = self.control(c, port);
                self.reply(Command::SetControl(answer), out)
            }
            Command::NotifyLineState(_) => {
                // We see no line errors through termios; report "nothing to report".
                self.reply(Command::NotifyLineState(0), out)
            }
            Command::NotifyModemState(_) => self.notify_modem(port, true, out),
            Command::FlowControlSuspend => self.suspended = true,
            Command::FlowControlResume => self.suspended = false,
            Command::SetLineStateMask(m) => {
                self.line_mask = m;
                self.reply(Command::SetLineStateMask(m), out)
            }
            Command::SetModemStateMask(m) => {
                self.modem_mask = m;
                self.reply(Command::SetModemStateMask(m), out)
            }
            Command::PurgeData(p) => {
                if let Err(e) = port.purge(p) {
                    warn!("{}: purge failed: {e}", self.label);
                }
                self.reply(Command::PurgeData(p), out)
            }
        }
    }

    /// Act on a SET-CONTROL value and return the value to answer with.
    fn control(&mut self, c: Control, port: &mut dyn Port) -> Control {
        let flow_answer = |s: &LineSettings| Control::Flow(s.flow);
        match c {
            Control::QueryFlow => flow_answer(&self.settings),
            Control::Flow(f) => {
                let mut s = self.settings;
                s.flow = f;
                self.change(s, port);
                flow_answer(&self.settings)
            }
            Control::QueryBreak => Control::Break(self.break_on),
            Control::Break(on) => {
                match port.set_break(on) {
                    Ok(()) => self.break_on = on,
                    Err(e) => warn!("{}: cannot set break {on}: {e}", self.label),
                }
                Control::Break(self.break_on)
            }
            Control::QueryDtr => Control::Dtr(self.client_lines.dtr),
            Control::QueryRts => Control::Rts(self.client_lines.rts),
            // The client's view of its lines is acknowledged as asked, whatever reaches the
            // board: the reset policy (not this session) decides that.
            Control::Dtr(on) => {
                self.client_lines.dtr = on;
                self.lines_changed(port);
                c
            }
            Control::Rts(on) => {
                self.client_lines.rts = on;
                self.lines_changed(port);
                c
            }
            Control::QueryInboundFlow | Control::InboundFlow(_) => {
                Control::InboundFlow(match self.settings.flow {
                    FlowControl::None => 14,
                    FlowControl::XonXoff => 15,
                    FlowControl::RtsCts => 16,
                })
            }
        }
    }

    /// Pass the client's lines to the device.
    fn lines_changed(&mut self, port: &mut dyn Port) {
        if let Err(e) = port.set_lines(self.client_lines) {
            // PTYs and some adapters have no modem lines; say so once, then stay quiet.
            if !self.lines_unsupported_logged {
                warn!(
                    "{}: cannot set DTR/RTS ({e}); continuing without",
                    self.label
                );
                self.lines_unsupported_logged = true;
            }
        }
    }

    fn notify_modem(&mut self, port: &mut dyn Port, force: bool, out: &mut Vec<u8>) {
        use rfc2217::modem::*;
        let st = port.modem_status().unwrap_or_default();
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
            self.reply(Command::NotifyModemState(value), out);
        }
    }

    fn bad_command(&mut self, e: DecodeError, out: &mut Vec<u8>) {
        warn!("{}: {e}", self.label);
        // Answer a bad setting with the value in force, so the client sees the rejection
        // at once instead of waiting for its timeout.
        let s = self.settings;
        let cmd = match e {
            DecodeError::BadValue { code: 1, .. } | DecodeError::BadLength { code: 1, .. } => {
                Command::SetBaud(Setting::Value(s.baud))
            }
            DecodeError::BadValue { code: 2, .. } => {
                Command::SetDataSize(Setting::Value(s.data_bits))
            }
            DecodeError::BadValue { code: 3, .. } => Command::SetParity(Setting::Value(s.parity)),
            DecodeError::BadValue { code: 4, .. } => {
                Command::SetStopSize(Setting::Value(s.stop_bits))
            }
            _ => return,
        };
        self.reply(cmd, out);
    }
}

/// Routes the decoder's output: data to the device, events to the session. After a fatal
/// event the rest of the input is ignored.
struct SessionSink<'a> {
    session: &'a mut Session,
    port: &'a mut dyn Port,
    out: &'a mut Vec<u8>,
    result: Result<(), SessionError>,
}

impl telnet::Sink for SessionSink<'_> {
    fn data(&mut self, bytes: &[u8]) {
        if self.result.is_ok() {
            self.port.write(bytes);
        }
    }

    fn event(&mut self, event: Event) {
        if self.result.is_ok() {
            self.result = self.session.on_event(event, self.port, self.out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::line::{DataBits, Parity};
    use crate::protocol::telnet::IAC;

    #[derive(Default)]
    struct Recorder {
        written: Vec<u8>,
        /// How much data had been written when each setting was applied.
        applied_at: Vec<usize>,
        applied: Vec<LineSettings>,
        lines: Vec<Lines>,
        breaks: Vec<bool>,
        purges: Vec<Purge>,
        modem: ModemStatus,
        refuse_baud_above: Option<u32>,
        resets: Vec<ResetTo>,
    }

    impl Port for Recorder {
        fn write(&mut self, data: &[u8]) {
            self.written.extend_from_slice(data);
        }
        fn apply(&mut self, s: &LineSettings) -> io::Result<()> {
            if self.refuse_baud_above.is_some_and(|max| s.baud > max) {
                return Err(io::Error::other("unsupported baud"));
            }
            self.applied.push(*s);
            self.applied_at.push(self.written.len());
            Ok(())
        }
        fn set_lines(&mut self, l: Lines) -> io::Result<()> {
            self.lines.push(l);
            Ok(())
        }
        fn set_break(&mut self, on: bool) -> io::Result<()> {
            self.breaks.push(on);
            Ok(())
        }
        fn purge(&mut self, p: Purge) -> io::Result<()> {
            self.purges.push(p);
            Ok(())
        }
        fn modem_status(&mut self) -> io::Result<ModemStatus> {
            Ok(self.modem)
        }
        fn reset(&mut self, to: ResetTo) -> Result<(), ResetError> {
            self.resets.push(to);
            Ok(())
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

    fn feed(s: &mut Session, port: &mut Recorder, input: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let mut cli = Vec::new();
        port.written.clear();
        s.on_client_bytes(input, Instant::now(), port, &mut cli)
            .unwrap();
        (std::mem::take(&mut port.written), cli)
    }

    /// pyserial's opening: DO ECHO, WILL SGA, DO SGA, DO COM-PORT, WILL COM-PORT.
    const PYSERIAL_OPEN: [u8; 15] = [
        IAC, 0xFD, 1, IAC, 0xFB, 3, IAC, 0xFD, 3, IAC, 0xFD, 44, IAC, 0xFB, 44,
    ];

    #[test]
    fn opening_offers_com_port_and_never_answers_answers() {
        let mut s = session();
        let mut port = Recorder::default();
        let mut out = Vec::new();
        s.start(&mut out);
        assert!(
            out.windows(3).any(|w| w == [IAC, 0xFB, 44]),
            "WILL COM-PORT"
        );
        assert!(out.windows(3).any(|w| w == [IAC, 0xFD, 44]), "DO COM-PORT");
        let (_, out) = feed(&mut s, &mut port, &PYSERIAL_OPEN);
        // All of pyserial's requests cross our offers: the only output is the one
        // NOTIFY-MODEMSTATE that pyserial needs before it can read modem lines.
        assert_eq!(out, sb(&[107, 0]));
        // A repeated WILL is not answered again.
        let (_, out) = feed(&mut s, &mut port, &[IAC, 0xFB, 44]);
        assert!(out.is_empty());
    }

    #[test]
    fn unknown_options_are_refused() {
        let mut s = session();
        let mut port = Recorder::default();
        let (_, out) = feed(&mut s, &mut port, &[IAC, 0xFD, 24, IAC, 0xFB, 31]);
        assert_eq!(out, [IAC, 0xFC, 24, IAC, 0xFE, 31]);
    }

    #[test]
    fn baud_is_applied_once_and_answered_with_the_value_in_force() {
        let mut s = session();
        let mut port = Recorder::default();
        let (_, out) = feed(&mut s, &mut port, &sb(&[1, 0, 0x0E, 0x10, 0x00]));
        assert_eq!(out, sb(&[101, 0, 0x0E, 0x10, 0x00]));
        assert_eq!(port.applied.len(), 1);
        assert_eq!(port.applied[0].baud, 921_600);
        // The same value again (esptool re-sends everything): answered, UART untouched.
        let (_, out) = feed(&mut s, &mut port, &sb(&[1, 0, 0x0E, 0x10, 0x00]));
        assert_eq!(out, sb(&[101, 0, 0x0E, 0x10, 0x00]));
        assert_eq!(port.applied.len(), 1);
        // Query.
        let (_, out) = feed(&mut s, &mut port, &sb(&[1, 0, 0, 0, 0]));
        assert_eq!(out, sb(&[101, 0, 0x0E, 0x10, 0x00]));
    }

    #[test]
    fn refused_baud_answers_the_old_one() {
        let mut s = session();
        let mut port = Recorder {
            refuse_baud_above: Some(1_000_000),
            ..Default::default()
        };
        let (_, out) = feed(&mut s, &mut port, &sb(&[1, 0, 0x1E, 0x84, 0x80]));
        assert_eq!(out, sb(&[101, 0, 1, 0xC2, 0]));
        assert_eq!(s.settings().baud, 115_200);
    }

    #[test]
    fn baud_with_iac_bytes_in_value() {
        // 0x0001_FFFF = 131071: the 0xFF bytes are doubled on the wire both ways.
        let mut s = session();
        let mut port = Recorder::default();
        let wire = sb(&[1, 0, 1, 0xFF, 0xFF]);
        assert_eq!(wire.len(), 12);
        let (_, out) = feed(&mut s, &mut port, &wire);
        assert_eq!(out, sb(&[101, 0, 1, 0xFF, 0xFF]));
        assert_eq!(port.applied[0].baud, 131_071);
    }

    #[test]
    fn format_settings_and_bad_values() {
        let mut s = session();
        let mut port = Recorder::default();
        let (_, out) = feed(&mut s, &mut port, &sb(&[2, 7]));
        assert_eq!(out, sb(&[102, 7]));
        let (_, out) = feed(&mut s, &mut port, &sb(&[3, 3]));
        assert_eq!(out, sb(&[103, 3]));
        let (_, out) = feed(&mut s, &mut port, &sb(&[4, 2]));
        assert_eq!(out, sb(&[104, 2]));
        assert_eq!(s.settings().data_bits, DataBits::Seven);
        assert_eq!(s.settings().parity, Parity::Even);
        // Data size 9 does not exist: answered with the size in force.
        let (_, out) = feed(&mut s, &mut port, &sb(&[2, 9]));
        assert_eq!(out, sb(&[102, 7]));
    }

    #[test]
    fn control_is_acknowledged_at_once() {
        let mut s = session();
        let mut port = Recorder::default();
        let (_, out) = feed(&mut s, &mut port, &[sb(&[5, 8]), sb(&[5, 11])].concat());
        assert_eq!(out, [sb(&[105, 8]), sb(&[105, 11])].concat());
        assert_eq!(
            port.lines.last(),
            Some(&Lines {
                dtr: true,
                rts: true
            })
        );
        let (_, out) = feed(&mut s, &mut port, &[sb(&[5, 7]), sb(&[5, 10])].concat());
        assert_eq!(out, [sb(&[105, 8]), sb(&[105, 11])].concat());
        let (_, out) = feed(&mut s, &mut port, &[sb(&[5, 5]), sb(&[5, 4])].concat());
        assert_eq!(out, [sb(&[105, 5]), sb(&[105, 5])].concat());
        assert_eq!(port.breaks, [true]);
        let (_, out) = feed(&mut s, &mut port, &[sb(&[5, 3]), sb(&[5, 0])].concat());
        assert_eq!(out, [sb(&[105, 3]), sb(&[105, 3])].concat());
    }

    #[test]
    fn purge_and_masks_and_signature() {
        let mut s = session();
        let mut port = Recorder::default();
        let (_, out) = feed(&mut s, &mut port, &sb(&[12, 3]));
        assert_eq!(out, sb(&[112, 3]));
        assert_eq!(port.purges, [Purge::Both]);
        let (_, out) = feed(&mut s, &mut port, &sb(&[11, 0x30]));
        assert_eq!(out, sb(&[111, 0x30]));
        let (_, out) = feed(&mut s, &mut port, &sb(&[0]));
        let mut want = vec![100];
        want.extend_from_slice(b"serialhub test");
        assert_eq!(out, sb(&want));
        // Flow suspend/resume get no answer (108/109 would mean the opposite).
        let (_, out) = feed(&mut s, &mut port, &[sb(&[8]), sb(&[9])].concat());
        assert!(out.is_empty());
    }

    #[test]
    fn modem_changes_are_notified_masked() {
        let mut s = session();
        let mut port = Recorder::default();
        feed(&mut s, &mut port, &PYSERIAL_OPEN);
        let mut out = Vec::new();
        s.poll_modem(&mut port, &mut out);
        assert!(out.is_empty(), "no change, no notification");
        port.modem.cts = true;
        s.poll_modem(&mut port, &mut out);
        assert_eq!(out, sb(&[107, 0x11]));
        out.clear();
        feed(&mut s, &mut port, &sb(&[11, 0x20]));
        port.modem.cts = false;
        s.poll_modem(&mut port, &mut out);
        assert!(out.is_empty(), "CTS masked out");
    }

    #[test]
    fn data_passes_with_iac_unescaped() {
        let mut s = session();
        let mut port = Recorder::default();
        let (dev, _) = feed(&mut s, &mut port, &[1, IAC, IAC, 2]);
        assert_eq!(dev, [1, 0xFF, 2]);
    }

    #[test]
    fn data_before_a_baud_change_is_queued_before_it() {
        let mut s = session();
        let mut port = Recorder::default();
        let wire = [&b"ab"[..], &sb(&[1, 0, 0x0E, 0x10, 0x00]), b"cd"].concat();
        let (dev, _) = feed(&mut s, &mut port, &wire);
        assert_eq!(dev, b"abcd");
        assert_eq!(port.applied_at, [2]);
    }

    #[test]
    fn raw_sessions_pass_bytes_untouched() {
        let mut s = Session::raw("test", LineSettings::default());
        let mut port = Recorder::default();
        let mut out = Vec::new();
        s.start(&mut out);
        assert!(out.is_empty());
        let (dev, cli) = feed(&mut s, &mut port, &[IAC, 0xFD, 44, IAC, IAC]);
        assert_eq!(dev, [IAC, 0xFD, 44, IAC, IAC]);
        assert!(cli.is_empty() && port.applied.is_empty());
        s.device_data(&[IAC, 1], Instant::now(), &mut port, &mut out);
        assert_eq!(out, [IAC, 1]);
    }

    fn detecting() -> Session {
        let window = Duration::from_millis(300);
        Session::detect("test", "sig".into(), LineSettings::default(), window)
    }

    #[test]
    fn detection_iac_first_is_rfc2217_and_held_output_comes_escaped_after_the_offers() {
        let mut s = detecting();
        let mut port = Recorder::default();
        let mut out = Vec::new();
        s.start(&mut out);
        assert!(out.is_empty(), "no offers before the client shows itself");
        s.device_data(&[b'a', IAC], Instant::now(), &mut port, &mut out);
        assert!(out.is_empty() && s.protocol().is_none());
        let (_, cli) = feed(&mut s, &mut port, &PYSERIAL_OPEN);
        assert_eq!(s.protocol(), Some("rfc2217"));
        let mut offers = Vec::new();
        session().start(&mut offers);
        assert!(cli.starts_with(&offers), "{cli:02x?}");
        assert!(cli.ends_with(&[b'a', IAC, IAC]) || cli.windows(3).any(|w| w == [b'a', IAC, IAC]));
    }

    #[test]
    fn detection_other_first_byte_is_raw_and_nothing_is_reordered() {
        let mut s = detecting();
        let mut port = Recorder::default();
        let mut out = Vec::new();
        s.device_data(b"boot ", Instant::now(), &mut port, &mut out);
        let (dev, cli) = feed(&mut s, &mut port, b"hi\xff");
        assert_eq!(
            (dev.as_slice(), cli.as_slice()),
            (&b"hi\xff"[..], &b"boot "[..])
        );
        s.device_data(b"more", Instant::now(), &mut port, &mut out);
        assert_eq!(out, b"more");
        assert_eq!(s.protocol(), Some("raw"));
    }

    #[test]
    fn detection_silent_client_turns_raw_after_the_window_only_if_output_waits() {
        let mut s = detecting();
        let mut port = Recorder::default();
        let mut out = Vec::new();
        assert_eq!(s.deadline(), None, "no output waiting, no hurry");
        let t0 = Instant::now();
        s.device_data(b"log line\r\n", t0, &mut port, &mut out);
        let at = s.deadline().unwrap();
        assert_eq!(at, t0 + Duration::from_millis(300));
        s.on_timer(at - Duration::from_millis(1), &mut port, &mut out);
        assert!(out.is_empty() && s.protocol().is_none());
        s.on_timer(at, &mut port, &mut out);
        assert_eq!(out, b"log line\r\n");
        assert_eq!(s.protocol(), Some("raw"));
    }

    #[test]
    fn esp_raw_session_resets_on_sync_and_switches_baud_after_the_answer() {
        let mut s = detecting().watch_esp(false);
        let mut port = Recorder::default();
        let mut sync = vec![0xC0, 0, 0x08, 0x24, 0, 0, 0, 0, 0, 7, 7, 0x12, 0x20];
        sync.extend_from_slice(&[0x55; 32]);
        sync.push(0xC0);
        let (dev, _) = feed(&mut s, &mut port, &sync);
        assert_eq!(port.resets, [ResetTo::Bootloader]);
        assert_eq!(dev, [0xC0, 0xC0]);
        s.reset_done(ResetTo::Bootloader, Instant::now(), &mut port);
        assert_eq!(port.written, sync, "the swallowed SYNC is replayed");
        port.written.clear();

        // Stub form: (921600, 115200); bytes after it wait for the chip's answer.
        let mut req = vec![0xC0, 0, 0x0F, 8, 0, 0, 0, 0, 0];
        req.extend_from_slice(&921_600u32.to_le_bytes());
        req.extend_from_slice(&115_200u32.to_le_bytes());
        req.push(0xC0);
        let (dev, _) = feed(&mut s, &mut port, &[&req[..], b"\xc0next\xc0"].concat());
        assert_eq!(dev, req);
        assert!(s.client_paused() && port.applied.is_empty());
        let mut out = Vec::new();
        let answer = [0xC0, 1, 0x0F, 2, 0, 0, 0, 0, 0, 0, 0, 0xC0];
        s.device_data(&answer, Instant::now(), &mut port, &mut out);
        assert_eq!(out, answer);
        assert_eq!(
            port.applied.iter().map(|a| a.baud).collect::<Vec<_>>(),
            [921_600]
        );
        assert_eq!(
            port.applied_at,
            [0],
            "switched before the parked bytes went out"
        );
        assert_eq!(port.written, b"\xc0next\xc0");
        assert_eq!(s.settings().baud, 921_600);
        assert_eq!(s.esp_state(), Some((true, true)));
    }

    #[test]
    fn oversized_subnegotiation_ends_the_session() {
        let mut s = session();
        let mut port = Recorder::default();
        let mut wire = vec![IAC, 0xFA, 44];
        wire.resize(2000, 1);
        let mut c = Vec::new();
        assert!(matches!(
            s.on_client_bytes(&wire, Instant::now(), &mut port, &mut c),
            Err(SessionError::Garbage(_))
        ));
    }
}
