//! The COM-PORT requests (RFC 2217): what each asks of the device, and how it is answered —
//! at once with the value in force, or once its effect is done.

use super::negotiation::reply;
use super::{Effect, Note, Out, Session, SessionError, Then};
use crate::protocol::line::{FlowControl, LineSettings, Lines, Purge};
use crate::protocol::reset::{ResetTo, EN_LOW, IO0_LOW};
use crate::protocol::rfc2217::{self, Command, Control, DecodeError, Direction, Setting};
use crate::protocol::telnet::{self, option, Event};

/// The answer a COM-PORT request gets once acted on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Answer {
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

impl Session {
    pub(super) fn on_event(
        &mut self,
        ev: Event,
        out: &mut Out,
    ) -> Result<Option<Effect>, SessionError> {
        match ev {
            Event::Negotiate(verb, opt) => self.neg.negotiate(verb, opt, out.client),
            Event::Subnegotiation {
                option: option::COM_PORT,
                payload,
            } => match rfc2217::decode(&payload) {
                Ok((Direction::ClientToServer, cmd)) => return Ok(self.command(cmd, out.client)),
                Ok((Direction::ServerToClient, _)) => self.notes.push(Note::ServerCommandIgnored),
                Err(e) => self.bad_command(e, out.client),
            },
            Event::Subnegotiation { option, .. } => {
                self.notes.push(Note::SubnegotiationIgnored(option))
            }
            Event::SubnegotiationTooLong { option } => {
                return Err(SessionError::Garbage(format!(
                    "subnegotiation for option {option} longer than {} bytes",
                    telnet::MAX_SUBNEGOTIATION
                )))
            }
            Event::SubnegotiationAborted { option } => {
                self.notes.push(Note::SubnegotiationAborted(option))
            }
            Event::Command(c) => self.notes.push(Note::TelnetCommandIgnored(c)),
        }
        Ok(None)
    }

    /// Ask for `new` if it differs from what is in force; answer now if it does not.
    fn change(
        &mut self,
        new: LineSettings,
        answer: Answer,
        client: &mut Vec<u8>,
    ) -> Option<Effect> {
        if new == self.settings {
            reply(self.answer(answer)?, client);
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
                        reply(Command::SetBaud(Setting::Value(b)), client);
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
                self.neg.notify_modem(true, client);
                return None;
            }
            Command::FlowControlSuspend | Command::FlowControlResume => {
                // No answer: 108/109 would mean the opposite direction.
                self.suspended = cmd == Command::FlowControlSuspend;
                return None;
            }
            Command::SetLineStateMask(m) => {
                self.neg.line_mask = m;
                Command::SetLineStateMask(m)
            }
            Command::SetModemStateMask(m) => {
                self.neg.modem_mask = m;
                Command::SetModemStateMask(m)
            }
            Command::PurgeData(p) => {
                return self.begin(Effect::Purge(p), Then::Answer(Answer::Purge(p)))
            }
        };
        reply(answer, client);
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
            reply(cmd, client);
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

    fn bad_command(&mut self, e: DecodeError, client: &mut Vec<u8>) {
        self.notes.push(Note::BadCommand(e.clone()));
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
            reply(cmd, client);
        }
    }

    pub(super) fn answer(&self, a: Answer) -> Option<Command> {
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
}
