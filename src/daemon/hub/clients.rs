//! Who is connected and who controls the device: admission at accept (allow-list, leases,
//! the busy policy), each newcomer's session, the hand-over of control, a client's leaving
//! and what the device is left with, leases that change or run out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use log::{info, log, warn};

use super::{say_notes, CLIENT_BUFFER, NO_LEASE_MESSAGE, READ_CHUNK};
use super::{Client, Hub, Input, Lag, Link, KICKED_MESSAGE, LEASED_MESSAGE, MODEM_POLL};
use crate::daemon::config::{After, Busy};
use crate::daemon::lease::{self, Expiry, Lease, Refusal};
use crate::daemon::lineup::{admit, Admission, Engaged, Joined, Turn, BUSY_MESSAGE, IDLE_AFTER};
use crate::daemon::peerlog::{suppressed_note, Verdict};
use crate::daemon::registry::Stats;
use crate::protocol::esp::Entry;
use crate::protocol::reset::{Policy, ResetTo};
use crate::protocol::session::{EspEnd, Session};
use crate::protocol::{Protocol, Voice};

/// Why a connection was closed at once, and what it is told.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Refused(pub(crate) &'static [u8]);

impl Hub {
    /// A new connection from `addr`: refused (with a word for netcat users, or none for an
    /// address outside the allow-list) before a byte reaches the device, or joined.
    pub(crate) fn accept(&mut self, addr: SocketAddr, now: Instant) -> Result<u64, Refused> {
        let ip = addr.ip();
        let port = self.port;
        if !self.shared.allow.permits(ip) {
            if let Verdict::Log { suppressed } = self.refusals.check(ip, now) {
                let note = suppressed_note(ip, suppressed);
                warn!(
                    "{}: refused {ip} on port {port}: not in allow{note}",
                    self.name
                );
            }
            return Err(Refused(b""));
        }
        let leased = (self.shared.leases.book()).admits(&self.lease_key, ip, lease::unix_now());
        if let Err(why) = leased {
            Stats::add(&self.shared.stats.lease_refusals, 1);
            if let Verdict::Log { suppressed } = self.refusals.check(ip, now) {
                let note = suppressed_note(ip, suppressed);
                warn!(
                    "{}: refused {ip} on port {port}: {}{note}",
                    self.name,
                    why.as_str()
                );
            }
            return Err(Refused(match why {
                Refusal::NoLease => NO_LEASE_MESSAGE,
                Refusal::LeasedToOther => LEASED_MESSAGE,
            }));
        }
        let open = matches!(self.link, Link::Open(_));
        let connected = self.clients.len();
        match admit(self.spec.busy, connected, self.spec.max_clients, open) {
            Admission::Refuse(message) => {
                let why = match (message == BUSY_MESSAGE, self.clients.first()) {
                    (true, Some(c)) if self.spec.busy == Busy::Share => format!(
                        "{connected} clients connected already (max_clients), {} in control",
                        c.addr
                    ),
                    (true, Some(c)) => format!(
                        "port in use by {} (busy = \"reject\": one client per device)",
                        c.addr
                    ),
                    _ => format!("device {} is not open", self.spec.path),
                };
                if let Verdict::Log { suppressed } = self.peer_log.check(ip, now) {
                    let note = suppressed_note(ip, suppressed);
                    info!("{}: refused {addr}: {why}{note}", self.name);
                }
                return Err(Refused(message));
            }
            Admission::Kick => {
                let ids: Vec<u64> = self.clients.iter().map(|c| c.id).collect();
                self.drop_all(&format!("kicked off by {addr} (busy = \"kick\")"), now);
                // The kicked client gets the reason, best effort.
                if let Some(first) = self
                    .closing
                    .iter_mut()
                    .find(|(id, _)| ids.first() == Some(id))
                {
                    first.1 = KICKED_MESSAGE;
                }
            }
            Admission::Accept => {}
        }
        Ok(self.connect(addr, now))
    }

    fn connect(&mut self, addr: SocketAddr, now: Instant) -> u64 {
        let settings = self.configured;
        let signature = format!(
            "serialhub {} {} ({})",
            env!("CARGO_PKG_VERSION"),
            self.name,
            self.spec.path
        );
        let mut session = match self.spec.protocol {
            Protocol::Rfc2217 => Session::new(signature, settings),
            Protocol::Raw => Session::raw(settings),
            Protocol::Auto => Session::detect(signature, settings, self.spec.detect_window),
        };
        // Every session follows the ESP loader protocol: following CHANGE_BAUDRATE needs no
        // wiring, and a bootloader entry is tried wherever the policy can move lines.
        let entry = match self.lines.policy() {
            Policy::None => Entry::Never,
            _ => Entry::Reset,
        };
        session = session.watch_esp(self.lines.in_loader(), entry);
        // USB-Serial/JTAG (its own reset policy: 303a:1001, the sims on it) keeps the RTC
        // watchdog armed in download mode; a remote esptool 5.3+ cannot know to disarm it.
        if self.lines.policy() == Policy::UsbJtag {
            session = session.on_native_usb();
        }
        let mut to_client = Vec::with_capacity(CLIENT_BUFFER);
        if let Some(st) = self.link.device().and_then(|d| d.modem_status().ok()) {
            session.modem_status(st, &mut to_client);
        }
        session.start(&mut to_client);
        let voice = match self.peer_log.check(addr.ip(), now) {
            Verdict::Log { suppressed } => {
                let note = suppressed_note(addr.ip(), suppressed);
                info!("{}: client {addr} connected{note}", self.name);
                Voice::Normal
            }
            Verdict::Quiet => Voice::Quiet,
        };
        Stats::add(&self.shared.stats.connects, 1);
        let id = self.next_id;
        self.next_id += 1;
        let client = Client {
            id,
            addr,
            since: now,
            session,
            voice,
            input: Input {
                buf: vec![0; READ_CHUNK].into_boxed_slice(),
                at: 0,
                end: 0,
            },
            to_client,
            sent: 0,
            bytes_in: 0,
            bytes_out: 0,
            turn: Turn::Had,
            lag: Lag::Keeping,
            dropped: Arc::default(),
            drop_said: false,
            last_input: now.checked_sub(IDLE_AFTER).unwrap_or(now),
        };
        if self.clients.is_empty() {
            self.to_device.clear();
            self.effect = None;
            self.next_modem_poll = now + MODEM_POLL;
        }
        let controller = self.clients.first().map(|c| c.addr);
        let acting = self.acting();
        match self.clients.join(client, acting, now) {
            Joined::Alone => {}
            // The client in control is flashing (or in the middle of a change): the
            // newcomer observes until that ends.
            Joined::Waits(engaged) => {
                let c = controller.map_or_else(String::new, |a| a.to_string());
                let news = waiting_news(&c, engaged);
                log!(
                    voice.info(),
                    "{}: {addr} waits: {c} is {}",
                    self.name,
                    engaged.as_str()
                );
                if let Some(w) = self.clients.iter_mut().find(|w| w.id == id) {
                    w.session.tell(&news, &mut w.to_client);
                }
            }
            // A newcomer takes control from an idle client, which observes until it leaves.
            Joined::TookControl => self.give_control(now),
        }
        self.publish();
        id
    }

    /// The device is busy on the controller's behalf: an effect waits, a reset plays.
    pub(super) fn acting(&self) -> bool {
        self.effect.is_some() || self.lines.playing()
    }

    /// Clients waiting for a flash (or a stream, or a change) to end take control once it has.
    pub(super) fn settle_control(&mut self, now: Instant) {
        let acting = self.acting();
        if self.clients.settle(acting, now) {
            self.give_control(now);
            self.publish();
        }
    }

    /// `clients[0]` takes control: the device gets its settings and lines (what it asked
    /// for while observing, or had when it lost control), and everyone hears who has it.
    fn give_control(&mut self, now: Instant) {
        let in_loader = self.lines.in_loader();
        let Some(c) = self.clients.first_mut() else {
            return;
        };
        c.session.take_control(in_loader);
        c.lag = Lag::Keeping;
        let (settings, lines, addr) = (c.session.settings(), c.session.lines(), c.addr);
        c.session.tell("serialhub: in control", &mut c.to_client);
        if let Verdict::Log { .. } = self.peer_log.check(addr.ip(), now) {
            info!("{}: {addr} is in control, at {settings}", self.name);
        }
        let news = format!("serialhub: observing; {addr} is in control");
        for o in self.clients.iter_mut().skip(1) {
            o.session.tell(&news, &mut o.to_client);
        }
        let Some(dev) = self.link.device() else {
            return;
        };
        if let Err(e) = dev.apply(&settings) {
            warn!("{}: cannot set {settings} for {addr}: {e}", self.name);
        }
        let _ = dev.set_break(false);
        if let Some(l) = self.lines.hand_over(lines, now) {
            self.set_lines(l, now);
        }
    }

    /// Close every client, observers first (so control is never handed to one that is
    /// about to go).
    pub(crate) fn drop_all(&mut self, why: &str, now: Instant) {
        while let Some(last) = self.clients.len().checked_sub(1) {
            self.drop_client(last, why, now);
        }
    }

    /// The bridge saw client `id` go (end of file, a socket error), or must close it.
    pub(crate) fn client_gone(&mut self, id: u64, why: &str, now: Instant) {
        if let Some(i) = self.clients.iter().position(|c| c.id == id) {
            self.drop_client(i, why, now);
        }
    }

    /// Close client `i`. An observer just goes. When the client in control goes, the next
    /// in line takes control, or — when it was the last — the device gets its configured
    /// settings back with both lines released; either way the chip is settled where an ESP
    /// session leaves it.
    pub(super) fn drop_client(&mut self, i: usize, why: &str, now: Instant) {
        if i >= self.clients.len() {
            return;
        }
        let Some(mut c) = self.clients.leave(i) else {
            return;
        };
        say_notes(&self.name, &mut c);
        self.closing.push_back((c.id, b""));
        if let Verdict::Log { suppressed } = self.peer_log.check(c.addr.ip(), now) {
            let role = if i == 0 { "client" } else { "observer" };
            let dropped = match (
                Stats::get(&c.dropped.from_client),
                Stats::get(&c.dropped.to_client),
            ) {
                (0, 0) => String::new(),
                (w, m) => format!(", {w} bytes it wrote dropped, {m} bytes of output missed"),
            };
            info!(
                "{}: {role} {} left ({why}) after {:.1} s, {} bytes in, {} bytes out{dropped}{}",
                self.name,
                c.addr,
                now.saturating_duration_since(c.since).as_secs_f32(),
                c.bytes_in,
                c.bytes_out,
                suppressed_note(c.addr.ip(), suppressed)
            );
        }
        if i == 0 {
            self.controller_left(&c, now);
        }
        if self.clients.is_empty() {
            if let Link::Lost { .. } = self.link {
                self.link = Link::Closed { at: now };
            }
        }
        self.publish();
    }

    fn controller_left(&mut self, c: &Client, now: Instant) {
        self.to_device.clear();
        self.effect = None;
        let end = c.session.esp_end();
        let next = !self.clients.is_empty();
        let can_reset = self.lines.policy() != Policy::None && self.link.device().is_some();
        // A session that entered the loader owes the chip its application; so does a flash
        // handing over to a client that waited (the monitor sees the new firmware's boot
        // from its first line, at its own baud, whatever the flasher did at its end).
        let reset_app = can_reset
            && self.spec.after == After::Reset
            && (end == Some(EspEnd::Entered) || next && c.session.loading());
        if !reset_app {
            match end {
                Some(EspEnd::Entered | EspEnd::InLoader) => self.lines.set_in_loader(true),
                Some(EspEnd::Unknown) => self.lines.set_in_loader(false),
                None => {}
            }
        }
        if next {
            // The line-up has moved the waiting clients up already.
            self.give_control(now);
        } else if let Some(dev) = self.link.device() {
            let released = self.lines.client_left(now);
            if c.session.settings() != self.configured {
                if let Err(e) = dev.apply(&self.configured) {
                    warn!("{}: cannot restore {}: {e}", self.name, self.configured);
                }
            }
            let _ = dev.set_break(false);
            if let Some(l) = released {
                self.set_lines(l, now);
            }
        }
        if reset_app {
            if let Err(e) = self.server_reset(ResetTo::App, now) {
                warn!(
                    "{}: cannot reset the chip into its application: {e}",
                    self.name
                );
            }
        }
    }

    /// The device's leases changed (or the hub starts): the clients they do not admit
    /// are closed — a device leased to one address is reserved for it — and the next expiry
    /// is timed.
    pub(crate) fn apply_leases(&mut self, now: Instant) {
        let unix = lease::unix_now();
        self.read_leases(unix, now);
        let refused = (self.clients).refused_by(&self.shared.leases.book(), &self.lease_key, unix);
        for (i, why) in refused {
            self.drop_client(i, why.as_str(), now);
        }
    }

    /// A lease of this device ran out: with `lease_expiry = "close"` its holder's clients
    /// are closed; otherwise they finish, and the next connection follows the policy.
    pub(super) fn lease_expired(&mut self, now: Instant) {
        let unix = lease::unix_now();
        let close = self.shared.leases.book().expiry == Expiry::Close;
        let ended: Vec<Lease> = self
            .leases
            .iter()
            .filter(|l| !l.active(unix))
            .cloned()
            .collect();
        for l in &ended {
            info!(
                "{}: the lease of {} ran out{}",
                self.name,
                l.address,
                if close {
                    "; closing its connections"
                } else {
                    ""
                }
            );
            if close {
                for i in self.clients.clients_of(l.address) {
                    self.drop_client(i, "its lease ran out (lease_expiry = \"close\")", now);
                }
            }
        }
        self.read_leases(unix, now);
    }

    /// The device's active leases, and when the first of them runs out.
    fn read_leases(&mut self, unix: u64, now: Instant) {
        self.leases = self
            .shared
            .leases
            .book()
            .on(&self.lease_key, unix)
            .cloned()
            .collect();
        // Checked: an expiry the clock cannot reach is no timer (never a panic).
        self.lease_ends = (self.leases.iter().map(|l| l.expires).min())
            .and_then(|at| now.checked_add(lease::until(at)));
    }
}

/// What a client that must wait is told.
fn waiting_news(controller: &str, engaged: Engaged) -> String {
    format!(
        "serialhub: observing; {controller} is {}, control follows when it is done",
        engaged.as_str()
    )
}
