//! One device and its clients, without sockets: the sans-IO half of a bridge.
//!
//! The hub owns everything a device's thread decides — the device's life and its grace
//! period, the line-up of clients (control, observers, the waiting), admission and leases,
//! each client's session and buffers, the effect in flight, the reset lines, the fan-out to
//! observers — and none of the sockets. The bridge (`daemon/bridge.rs`) accepts,
//! polls, reads and writes the clients' sockets and hands the hub what happened:
//!
//! ```text
//!  bridge                                  hub
//!  accept()        ── accept(addr, now) ──▶ admission, leases, a session  ─▶ Ok(id) | refusal
//!  read(client)    ── client_bytes(id) ───▶ session ─▶ to_device, answers
//!  poll: device    ── device_ready(now) ──▶ read ─▶ sessions ─▶ each client's output
//!  write(client)   ◀─ client_output(id) ── client_sent(id, n)
//!  close(client)   ◀─ poll_effect() ─────── Effect::Close
//!  poll timeout    ◀─ poll_timeout() ────── handle_timeout(now)
//! ```
//!
//! The device is reached through the [`Device`] trait (a tty, the simulator, a fake in the
//! tests): its calls do not block, and an answer to the client depends on their result, so
//! they are made in place rather than queued. Time comes in as `now`; the tests drive the
//! hub with an in-memory device and no clock.
//!
//! Split by what it owns: this file the state and the bridge's view of it; `clients.rs` who
//! is connected and who controls the device; `flow.rs` the bytes and the effects.

mod clients;
mod flow;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::daemon::access::Allow;
use crate::daemon::assign::DeviceKey;
use crate::daemon::config::DeviceSpec;
use crate::daemon::lease::{Lease, Leases};
use crate::daemon::lineup::{LineUp, Member, Turn};
use crate::daemon::peerlog::PeerLog;
use crate::daemon::registry::{ClientInfo, DeviceState, Dropped, LogRing, Registry, Role, Stats};
use crate::daemon::reopen::Backoff;
use crate::device::{Device, DevicePath};
use crate::protocol::line::LineSettings;
use crate::protocol::reset::{LineDriver, Policy};
use crate::protocol::session::{Effect, Session};
use crate::protocol::Voice;

/// Stop reading the device (and the client) once this much output waits for the client.
pub(crate) const CLIENT_HIGH_WATER: usize = 64 * 1024;
/// Stop reading the client once this much data waits for the device.
pub(crate) const DEVICE_HIGH_WATER: usize = 16 * 1024;
pub(crate) const READ_CHUNK: usize = 16 * 1024;
/// A client's output buffer: below the high water a chunk is read, which at most doubles when
/// Telnet-escaped; a little more for the notices and replies that come with it.
pub(crate) const CLIENT_BUFFER: usize = CLIENT_HIGH_WATER + 2 * READ_CHUNK + 1024;
/// How often modem lines (CTS/DSR/RI/CD) are checked while a client is connected.
const MODEM_POLL: Duration = Duration::from_secs(1);
/// Re-open cadence while a vanished device may be re-enumerating.
const REOPEN_LOST: Duration = Duration::from_millis(50);
/// How long an effect may wait for the data queued before it to reach the device; then it
/// fails (the answer reports the setting still in force), as a stalled local port would.
pub(crate) const DRAIN_WAIT: Duration = Duration::from_secs(2);

pub(crate) const KICKED_MESSAGE: &[u8] = b"kicked off, new user is coming\r\n";
const NO_LEASE_MESSAGE: &[u8] = b"Port needs a lease: serialhub lease HOST ... -- COMMAND\r\n";
const LEASED_MESSAGE: &[u8] = b"Port leased to another address\r\n";

/// What a device shares with the rest of the daemon.
pub(crate) struct Shared {
    pub(crate) registry: Arc<Registry>,
    pub(crate) key: DeviceKey,
    pub(crate) stats: Arc<Stats>,
    /// The device's recent output (the portal's boot log), fed whether or not a client is
    /// connected.
    pub(crate) log: Arc<std::sync::Mutex<LogRing>>,
    /// How long a client outlives its vanished device (re-enumeration grace).
    pub(crate) grace: Duration,
    /// Do not open the device before this (driver settle delay after hotplug).
    pub(crate) open_after: Instant,
    /// The reset policy in force (from the config, or picked from the USB identity).
    pub(crate) policy: Policy,
    /// Who may connect (the device's `allow`, else `[access] allow`).
    pub(crate) allow: Allow,
    /// Who holds the device (`[access] lease`).
    pub(crate) leases: Arc<Leases>,
}

/// What the bridge must do for the hub besides moving bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Close this client's socket, after a best-effort write of `last_words` (what was
    /// still waiting for it is not sent: it left, or is made to).
    Close { id: u64, last_words: &'static [u8] },
}

/// What the bridge should poll a client's socket for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Interest {
    pub(crate) read: bool,
    pub(crate) write: bool,
}

/// The device's life, one state at a time.
enum Link {
    /// Not open; the next try is at `at`.
    Closed {
        at: Instant,
    },
    Open(Box<dyn Device>),
    /// Vanished while a client was connected (a native-USB chip re-enumerating as it
    /// resets): the client waits up to the grace period; what it sends meanwhile is dropped.
    Lost {
        since: Instant,
        at: Instant,
        dropped: u64,
    },
}

impl Link {
    fn device(&mut self) -> Option<&mut dyn Device> {
        match self {
            Link::Open(d) => Some(d.as_mut()),
            _ => None,
        }
    }

    /// When the next open should be tried, if the device is not open.
    fn retry_at(&self) -> Option<Instant> {
        match self {
            Link::Closed { at } | Link::Lost { at, .. } => Some(*at),
            Link::Open(_) => None,
        }
    }
}

/// Client bytes read but not yet taken by the session (it paused for an effect).
struct Input {
    buf: Box<[u8]>,
    at: usize,
    end: usize,
}

impl Input {
    fn pending(&self) -> &[u8] {
        &self.buf[self.at..self.end]
    }

    /// The same bytes, for a session that decodes them in place.
    fn pending_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.at..self.end]
    }
}

/// An observer that does not read its output as fast as the device makes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lag {
    Keeping,
    /// Output is dropped for it: this many bytes since it fell behind.
    Missing(u64),
}

struct Client {
    /// Tells clients apart while the list changes under one round's events.
    id: u64,
    addr: SocketAddr,
    since: Instant,
    session: Session,
    /// How loudly its session's notes are logged (a peer past its log budget: at debug).
    voice: Voice,
    input: Input,
    /// Telnet-escaped device output and session answers, not yet sent to the client.
    to_client: Vec<u8>,
    /// How much of `to_client` the bridge has sent.
    sent: usize,
    bytes_in: u64,
    bytes_out: u64,
    turn: Turn,
    lag: Lag,
    /// What it lost while observing, as the portal shows it.
    dropped: Arc<Dropped>,
    /// Its writes while observing were dropped, and the log said so (once per client).
    drop_said: bool,
    /// When it last sent anything: a client in control is idle (a newcomer may take over)
    /// once it has been quiet for [`crate::daemon::lineup::IDLE_AFTER`].
    last_input: Instant,
}

/// What a client's session had to say, logged with the client's voice under the device's
/// name.
fn say_notes(name: &str, c: &mut Client) {
    if c.session.quiet() {
        return;
    }
    let voice = c.voice;
    let lost = c
        .session
        .take_notes(&mut |weight, note| log::log!(voice.level(weight), "{name}: {note}"));
    if lost > 0 {
        log::debug!("{name}: {lost} more notes of {}'s session not kept", c.addr);
    }
}

impl Client {
    /// Output waiting for the client.
    fn waiting(&self) -> usize {
        self.to_client.len() - self.sent
    }

    /// Make room for `n` more bytes of output without growing the buffer: the part the
    /// bridge has sent goes first when the free end is too short. The buffer is allocated at
    /// [`CLIENT_BUFFER`], which holds the high water plus one read chunk escaped throughout, so
    /// a client that keeps up never makes it grow (nor holds the old and the new copy at once).
    fn room_for(&mut self, n: usize) {
        if self.sent > 0 && self.to_client.capacity() - self.to_client.len() < n {
            self.to_client.drain(..self.sent);
            self.sent = 0;
        }
    }

    /// Can this client take more output now?
    fn keeps_up(&self) -> bool {
        self.waiting() < CLIENT_HIGH_WATER && !self.session.suspended()
    }
}

impl Member for Client {
    fn turn(&self) -> Turn {
        self.turn
    }
    fn set_turn(&mut self, turn: Turn) {
        self.turn = turn;
    }
    fn last_input(&self) -> Instant {
        self.last_input
    }
    fn loading(&self) -> bool {
        self.session.loading()
    }
    fn paused(&self) -> bool {
        self.session.client_paused()
    }
    fn ip(&self) -> std::net::IpAddr {
        self.addr.ip()
    }
}

/// One device and its clients (see the module's comment).
pub(crate) struct Hub {
    name: String,
    spec: DeviceSpec,
    /// The settings the device has when no client is connected.
    configured: LineSettings,
    shared: Shared,
    link: Link,
    backoff: Backoff,
    /// The device's reset policy and any sequence in progress; outlives clients.
    lines: LineDriver,
    /// The device refused a line change once (it has no modem lines); said once.
    lines_refused: bool,
    /// Connected clients: the one in control first, then those who get control back when
    /// it leaves, most recent first; clients waiting for a flash to end last.
    clients: LineUp<Client>,
    next_id: u64,
    /// When modem lines are read next (while clients are connected).
    next_modem_poll: Instant,
    /// Client data, not yet written to the device.
    to_device: Vec<u8>,
    /// What observers' sessions write for the device: dropped, after counting.
    discard: Vec<u8>,
    /// The effect the controlling session waits on, and when it stops waiting for the data
    /// queued before it.
    effect: Option<(Effect, Instant)>,
    /// Log lines each remote address may cause.
    peer_log: PeerLog,
    /// Refusals each address may cause in the log (one a minute).
    refusals: PeerLog,
    /// The device's key as the lease book names it.
    lease_key: String,
    /// The device's active leases as last read, and when the first of them runs out.
    leases: Vec<Lease>,
    lease_ends: Option<Instant>,
    /// Clients to close: at most one per client (a closed client is out of the line-up).
    closing: VecDeque<(u64, &'static [u8])>,
    /// The listener's port, for the log.
    port: u16,
    /// The device's bytes as read, handed to the sessions.
    buf: Box<[u8]>,
}

impl Hub {
    pub(crate) fn new(spec: DeviceSpec, shared: Shared, port: u16, now: Instant) -> Hub {
        let lease_key = shared.key.to_string();
        let mut hub = Hub {
            name: spec.display_name(),
            configured: LineSettings {
                baud: spec.baud,
                ..LineSettings::default()
            },
            link: Link::Closed {
                at: shared.open_after,
            },
            backoff: Backoff::new(shared.open_after),
            lines: LineDriver::new(shared.policy),
            lines_refused: false,
            spec,
            shared,
            clients: LineUp::default(),
            next_id: 0,
            next_modem_poll: now,
            to_device: Vec::with_capacity(DEVICE_HIGH_WATER),
            discard: Vec::new(),
            effect: None,
            peer_log: PeerLog::default(),
            refusals: PeerLog::with_burst(1),
            lease_key,
            leases: Vec::new(),
            lease_ends: None,
            closing: VecDeque::new(),
            port,
            buf: vec![0; READ_CHUNK].into_boxed_slice(),
        };
        hub.apply_leases(now);
        hub
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The device's node, for the log.
    pub(crate) fn path(&self) -> &DevicePath {
        &self.spec.path
    }

    /// When the device should be (re)opened, if it is not open.
    pub(crate) fn open_due(&self, now: Instant) -> bool {
        self.link.retry_at().is_some_and(|t| now >= t)
    }

    /// The settings to open the device with: the controlling client's, else the configured.
    pub(crate) fn open_settings(&self) -> LineSettings {
        self.clients
            .first()
            .map_or(self.configured, |c| c.session.settings())
    }

    pub(crate) fn device_fd(&self) -> Option<BorrowedFd<'_>> {
        match &self.link {
            Link::Open(d) => Some(d.fd()),
            _ => None,
        }
    }

    /// What to poll the device for: read while the client in control keeps up with its
    /// output and no effect waits (observers that fall behind lose output instead); write
    /// while data waits for it.
    pub(crate) fn device_interest(&self) -> Interest {
        Interest {
            read: self.effect.is_none() && self.clients.first().is_none_or(Client::keeps_up),
            write: !self.to_device.is_empty(),
        }
    }

    /// The connected clients' ids, the one in control first.
    pub(crate) fn client_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.clients.iter().map(|c| c.id)
    }

    /// What to poll client `id`'s socket for. The controller is read while the device has
    /// room for its bytes; observers whenever they keep up with their answers (what they
    /// write is dropped).
    pub(crate) fn client_interest(&self, id: u64) -> Interest {
        let device_has_room = self.to_device.len() < DEVICE_HIGH_WATER;
        let Some((i, c)) = self.clients.iter().enumerate().find(|(_, c)| c.id == id) else {
            return Interest {
                read: false,
                write: false,
            };
        };
        let room = c.waiting() < CLIENT_HIGH_WATER
            && !c.session.client_paused()
            && (i > 0 || device_has_room);
        Interest {
            read: room && c.input.pending().is_empty(),
            write: c.waiting() > 0,
        }
    }

    /// Where the bridge reads client `id`'s bytes into, when the hub wants them; then
    /// [`Hub::client_bytes`] says how many came.
    pub(crate) fn client_input(&mut self, id: u64) -> Option<&mut [u8]> {
        let c = self.clients.iter_mut().find(|c| c.id == id)?;
        c.input.pending().is_empty().then_some(&mut c.input.buf[..])
    }

    /// What waits to be sent to client `id`.
    pub(crate) fn client_output(&self, id: u64) -> &[u8] {
        match self.clients.iter().find(|c| c.id == id) {
            Some(c) => &c.to_client[c.sent..],
            None => &[],
        }
    }

    /// The bridge sent `n` bytes of [`Hub::client_output`].
    pub(crate) fn client_sent(&mut self, id: u64, n: usize) {
        if let Some(c) = self.clients.iter_mut().find(|c| c.id == id) {
            c.sent += n;
            if c.sent == c.to_client.len() {
                c.to_client.clear();
                c.sent = 0;
            } else if c.sent >= CLIENT_HIGH_WATER {
                // A client that never quite catches up: the sent part goes, so the buffer
                // stays within twice its high water.
                c.to_client.drain(..c.sent);
                c.sent = 0;
            }
        }
    }

    /// The next thing the bridge must do besides moving bytes.
    pub(crate) fn poll_effect(&mut self) -> Option<Action> {
        self.closing
            .pop_front()
            .map(|(id, last_words)| Action::Close { id, last_words })
    }

    /// When the hub next has something to do on its own.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let modem = (!self.clients.is_empty()).then_some(self.next_modem_poll);
        let grace = match &self.link {
            Link::Lost { since, .. } => Some(*since + self.shared.grace),
            _ => None,
        };
        let sessions = self
            .clients
            .iter()
            .filter_map(|c| c.session.deadline())
            .min();
        let effect = self.effect.map(|(_, until)| until);
        [
            self.lease_ends,
            self.clients.deadline(),
            self.link.retry_at(),
            modem,
            grace,
            sessions,
            effect,
            self.lines.deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Show the clients and the device's state to the rest of the daemon.
    fn publish(&self) {
        let clients = self
            .clients
            .iter()
            .enumerate()
            .map(|(i, c)| ClientInfo {
                addr: c.addr,
                since: c.since,
                role: if i == 0 { Role::Control } else { Role::Observe },
                dropped: c.dropped.clone(),
            })
            .collect();
        let state = match (&self.link, self.clients.is_empty()) {
            (Link::Open(_), true) => DeviceState::Idle,
            (Link::Open(_), false) => DeviceState::Connected,
            _ => DeviceState::Starting,
        };
        self.shared.registry.update(&self.shared.key, |e| {
            e.state = state;
            e.tty = self.spec.path.to_string();
            e.clients = clients;
        });
    }
}
