//! Telnet option negotiation and what the COM-PORT option tells the client unasked: our
//! opening offers, the answers to the client's (never an answer to an answer), the modem
//! lines once COM-PORT is agreed, and news held until then.

use crate::protocol::line::ModemStatus;
use crate::protocol::rfc2217::{self, Command, Direction};
use crate::protocol::telnet::{self, option, Verb};

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

/// One client's Telnet options and COM-PORT notifications.
#[derive(Debug)]
pub(super) struct Negotiation {
    ours: [OptState; OURS.len()],
    theirs: [OptState; THEIRS.len()],
    /// The client agreed to COM-PORT: notifications may go.
    agreed: bool,
    /// Said with [`Negotiation::tell`] before the client agreed to COM-PORT.
    news: Option<String>,
    modem: ModemStatus,
    /// The client's SET-MODEMSTATE-MASK.
    pub(super) modem_mask: u8,
    /// The client's SET-LINESTATE-MASK (kept; no line state is ever reported).
    pub(super) line_mask: u8,
    last_modem: u8,
}

impl Negotiation {
    pub(super) fn new() -> Negotiation {
        Negotiation {
            ours: Default::default(),
            theirs: Default::default(),
            agreed: false,
            news: None,
            modem: ModemStatus::default(),
            modem_mask: 0xFF,
            line_mask: 0,
            last_modem: 0,
        }
    }

    /// Our opening offers, sent as soon as an RFC 2217 client connects (as pyserial's own
    /// server does), so that a client waiting for `DO COM-PORT` never waits for a round trip.
    pub(super) fn offer(&mut self, client: &mut Vec<u8>) {
        for (i, &opt) in OURS.iter().enumerate() {
            self.ours[i] = OptState::WantYes;
            telnet::negotiate(Verb::Will, opt, client);
        }
        for (i, &opt) in THEIRS.iter().enumerate() {
            self.theirs[i] = OptState::WantYes;
            telnet::negotiate(Verb::Do, opt, client);
        }
    }

    /// Tell the client something as an unsolicited SIGNATURE, now if it agreed to COM-PORT,
    /// else once it does (only the latest news is kept).
    pub(super) fn tell(&mut self, news: &str, client: &mut Vec<u8>) {
        if self.agreed {
            reply(Command::Signature(news.as_bytes().to_vec()), client);
        } else {
            self.news = Some(news.to_owned());
        }
    }

    /// The device's modem lines: a change is notified once COM-PORT is agreed.
    pub(super) fn modem_status(&mut self, status: ModemStatus, client: &mut Vec<u8>) {
        self.modem = status;
        if self.agreed {
            self.notify_modem(false, client);
        }
    }

    pub(super) fn negotiate(&mut self, verb: Verb, opt: u8, client: &mut Vec<u8>) {
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
        if opt == option::COM_PORT && matches!(verb, Verb::Do | Verb::Will) && !self.agreed {
            // pyserial refuses to read modem lines until it has seen one NOTIFY-MODEMSTATE.
            self.agreed = true;
            self.notify_modem(true, client);
            if let Some(news) = self.news.take() {
                reply(Command::Signature(news.into_bytes()), client);
            }
        }
    }

    pub(super) fn notify_modem(&mut self, force: bool, client: &mut Vec<u8>) {
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
            reply(Command::NotifyModemState(value), client);
        }
    }
}

/// A COM-PORT answer or notification for the client.
pub(super) fn reply(cmd: Command, client: &mut Vec<u8>) {
    let mut payload = Vec::with_capacity(8);
    rfc2217::encode(Direction::ServerToClient, &cmd, &mut payload);
    telnet::subnegotiation(option::COM_PORT, &payload, client);
}
