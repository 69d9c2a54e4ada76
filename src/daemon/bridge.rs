//! The per-device thread: one `poll()` over the listener, the client socket, the device and
//! a wake fd; one controlling client at a time; the device stays open across clients.
//!
//! The loop only moves bytes and performs what the client's [`Session`] asks for. Nothing in
//! it waits: a setting that must follow data still queued for a slow (or flow-stopped) UART
//! waits as the session's effect in flight, while the client is not read and everything else
//! — commands from the supervisor, new connections, the reset steps — goes on. Every buffer
//! is bounded: a client that does not read its answers and output stops being read (and the
//! device with it, so back-pressure lands in the device's kernel buffer, as with a slow local
//! reader); a fast client fills `to_device`, which stops us reading the socket.
//!
//! Why one file of ~2,000 lines: the loop, the device's life and the clients' sessions still
//! share one set of buffers and one effect in flight; issue 21 moves them into a sans-IO hub
//! piece by piece (the line-up went first, to `lineup.rs`), leaving the fds and syscalls here.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use log::{debug, error, info, log, warn};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::socket::{setsockopt, sockopt};

use crate::daemon::access::Allow;
use crate::daemon::assign::DeviceKey;
use crate::daemon::config::{After, Busy, DeviceSpec, MAX_CLIENTS};
use crate::daemon::control::{Reply, RequestError};
use crate::daemon::lease::{self, Expiry, Lease, Leases, Refusal};
use crate::daemon::lineup::{
    admit, Admission, Engaged, Joined, LineUp, Member, Turn, BUSY_MESSAGE, IDLE_AFTER,
};
use crate::daemon::peerlog::{suppressed_note, PeerLog, Verdict};
use crate::daemon::registry::{ClientInfo, DeviceState, Dropped, LogRing, Registry, Role, Stats};
use crate::daemon::reopen::{Backoff, Report};
use crate::device::{Device, DevicePath};
use crate::protocol::esp::Entry;
use crate::protocol::line::{LineSettings, Lines, Purge};
use crate::protocol::reset::{LineDriver, Played, Policy, ResetError, ResetTo};
use crate::protocol::session::{Effect, EspEnd, Failure, Out, Session};
use crate::protocol::{Protocol, Voice};

/// Stop reading the device (and the client) once this much output waits for the client.
const CLIENT_HIGH_WATER: usize = 64 * 1024;
/// Stop reading the client once this much data waits for the device.
const DEVICE_HIGH_WATER: usize = 16 * 1024;
const READ_CHUNK: usize = 16 * 1024;
/// How often modem lines (CTS/DSR/RI/CD) are checked while a client is connected.
const MODEM_POLL: Duration = Duration::from_secs(1);
/// Re-open cadence while a vanished device may be re-enumerating.
const REOPEN_LOST: Duration = Duration::from_millis(50);
/// How long an effect may wait for the data queued before it to reach the device; then it
/// fails (the answer reports the setting still in force), as a stalled local port would.
const DRAIN_WAIT: Duration = Duration::from_secs(2);
/// How long poll may sleep when nothing is due (it is woken for everything that matters).
const POLL_CAP_MS: u128 = 60_000;
/// After a failed poll, pause this long so a persistent error cannot spin the thread.
const POLL_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// After a failed accept (out of descriptors, most likely), the listener rests this long,
/// doubling to [`ACCEPT_PAUSE_MAX`] while it keeps failing: the loop must not spin on a
/// listener that stays readable, and connected clients go on being served meanwhile.
const ACCEPT_PAUSE_MIN: Duration = Duration::from_millis(50);
const ACCEPT_PAUSE_MAX: Duration = Duration::from_secs(2);
pub(crate) const STOP_WAIT: Duration = Duration::from_secs(2);

/// How a vanished client is noticed (see [`tune_socket`]).
const KEEPALIVE_IDLE_S: u32 = 10;
const KEEPALIVE_INTERVAL_S: u32 = 5;
const KEEPALIVE_PROBES: u32 = 3;
const UNACKED_TIMEOUT_MS: u32 = 25_000;

const KICKED_MESSAGE: &[u8] = b"kicked off, new user is coming\r\n";
const NO_LEASE_MESSAGE: &[u8] = b"Port needs a lease: serialhub lease HOST ... -- COMMAND\r\n";
const LEASED_MESSAGE: &[u8] = b"Port leased to another address\r\n";

/// Requests from other threads, delivered through the wake fd.
#[derive(Debug)]
pub(crate) enum BridgeCommand {
    /// Restore the device, close the client, end the thread.
    Shutdown,
    /// Reset the chip through the device's reset policy (the portal's request); the answer
    /// goes straight back to whoever asked.
    Reset(ResetTo, mpsc::Sender<Reply>),
    /// The device is back under another node (USB re-enumeration): open that one.
    Replace(DevicePath),
    /// Try to open the device now (its node appeared or its permissions changed).
    Retry,
    /// Close the client, if any, with this reason.
    Disconnect(String),
    /// The device node was removed (the supervisor saw it go).
    Gone,
    /// The device's leases changed: close whom they no longer admit.
    Leases,
}

/// What a bridge shares with the rest of the daemon.
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

/// Opens the bridge's device (a tty, the simulator; a fake one in tests).
pub(crate) type Opener =
    Box<dyn FnMut(&DevicePath, &LineSettings) -> io::Result<Box<dyn Device>> + Send>;

/// The opener for a configured device: [`crate::device::open`] with its wiring.
pub(crate) fn opener(spec: &DeviceSpec) -> Opener {
    let wiring = spec.wiring();
    let name = spec.display_name();
    Box::new(move |path, settings| crate::device::open(path, &wiring, &name, settings))
}

/// How another thread talks to a running bridge.
pub(crate) struct BridgeHandle {
    pub(crate) name: String,
    pub(crate) addr: SocketAddr,
    tx: mpsc::Sender<BridgeCommand>,
    wake: Arc<EventFd>,
    thread: thread::JoinHandle<()>,
    /// Closed (all senders dropped) when the thread ends.
    ended: mpsc::Receiver<()>,
}

impl BridgeHandle {
    pub(crate) fn send(&self, cmd: BridgeCommand) {
        if self.tx.send(cmd).is_ok() {
            let _ = self.wake.write(1);
        }
    }

    /// Close the client (with `why`), restore the device and end the thread. Waits a short
    /// while for it; a thread stuck in the kernel (a tty that will not close) is left to
    /// finish alone, so one device never holds up the others. (The supervisor stops
    /// several at once: [`BridgeHandle::signal_stop`], then [`BridgeHandle::join_by`].)
    #[cfg(test)]
    pub(crate) fn stop(self, why: &str) {
        self.signal_stop(why);
        self.join_by(Instant::now() + STOP_WAIT);
    }

    /// The first half of [`BridgeHandle::stop`]: tell the bridge to close its client (with
    /// `why`) and end. Several bridges are signalled first and joined after, with one
    /// deadline (daemon/stopping.rs), so the slowest sets the pace, not the sum.
    pub(crate) fn signal_stop(&self, why: &str) {
        self.send(BridgeCommand::Disconnect(why.to_string()));
        self.send(BridgeCommand::Shutdown);
    }

    /// The second half: wait until `deadline` for the thread to end.
    pub(crate) fn join_by(self, deadline: Instant) {
        let wait = deadline.saturating_duration_since(Instant::now());
        match self.ended.recv_timeout(wait) {
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let _ = self.thread.join();
            }
            _ => warn!(
                "{}: the bridge did not stop within {:.0} s; leaving it to finish",
                self.name,
                STOP_WAIT.as_secs_f32()
            ),
        }
    }
}

/// Start a bridge thread for `spec` on an already bound listener.
pub(crate) fn spawn(
    spec: DeviceSpec,
    listener: TcpListener,
    shared: Shared,
    open: Opener,
) -> io::Result<BridgeHandle> {
    let name = spec.display_name();
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let wake = Arc::new(EventFd::from_flags(
        EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC,
    )?);
    let (tx, rx) = mpsc::channel();
    let (ended_tx, ended) = mpsc::channel::<()>();
    let policy = shared.policy;
    info!(
        "{name} ({}) listening on {addr}, reset policy {}",
        spec.path,
        policy.name()
    );
    let lease_key = shared.key.to_string();
    let mut bridge = Bridge {
        name: name.clone(),
        configured: LineSettings {
            baud: spec.baud,
            ..LineSettings::default()
        },
        listener,
        wake: wake.clone(),
        commands: rx,
        open,
        link: Link::Closed {
            at: shared.open_after,
        },
        backoff: Backoff::new(shared.open_after),
        lines: LineDriver::new(policy),
        lines_refused: false,
        spec,
        shared,
        clients: LineUp::default(),
        next_id: 0,
        next_modem_poll: Instant::now(),
        to_device: Vec::with_capacity(DEVICE_HIGH_WATER),
        discard: Vec::new(),
        effect: None,
        accept_rest: None,
        peer_log: PeerLog::default(),
        refusals: PeerLog::with_burst(1),
        lease_key,
        leases: Vec::new(),
        lease_ends: None,
        buf: vec![0; READ_CHUNK].into_boxed_slice(),
    };
    let thread = thread::Builder::new()
        .name(format!("bridge {name}"))
        .spawn(move || {
            let _ended = ended_tx;
            bridge.run();
        })?;
    Ok(BridgeHandle {
        name,
        addr,
        tx,
        wake,
        thread,
        ended,
    })
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
    stream: TcpStream,
    addr: SocketAddr,
    since: Instant,
    session: Session,
    input: Input,
    /// Telnet-escaped device output and session answers, not yet sent to the client.
    to_client: Vec<u8>,
    bytes_in: u64,
    bytes_out: u64,
    turn: Turn,
    lag: Lag,
    /// What it lost while observing, as the portal shows it.
    dropped: Arc<Dropped>,
    /// Its writes while observing were dropped, and the log said so (once per client).
    drop_said: bool,
    /// When it last sent anything: a client in control is idle (a newcomer may take over)
    /// once it has been quiet for [`IDLE_AFTER`].
    last_input: Instant,
}

impl Client {
    /// Can this client take more output now?
    fn keeps_up(&self) -> bool {
        self.to_client.len() < CLIENT_HIGH_WATER && !self.session.suspended()
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

struct Bridge {
    name: String,
    spec: DeviceSpec,
    /// The settings the device has when no client is connected.
    configured: LineSettings,
    listener: TcpListener,
    wake: Arc<EventFd>,
    commands: mpsc::Receiver<BridgeCommand>,
    shared: Shared,
    open: Opener,
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
    /// Accepting failed: the listener rests until then; the pause, and failures so far.
    accept_rest: Option<(Instant, Duration, u32)>,
    /// Log lines each remote address may cause.
    peer_log: PeerLog,
    /// Refusals each address may cause in the log (one a minute).
    refusals: PeerLog,
    /// The device's key as the lease book names it.
    lease_key: String,
    /// The device's active leases as last read, and when the first of them runs out.
    leases: Vec<Lease>,
    lease_ends: Option<Instant>,
    buf: Box<[u8]>,
}

enum Stop {
    Shutdown,
}

/// One poll slot per possible client, plus the listener, the wake fd and the device.
const SLOTS: usize = 3 + MAX_CLIENTS;

impl Bridge {
    fn run(&mut self) {
        self.apply_leases();
        loop {
            if self.link.retry_at().is_some_and(|t| Instant::now() >= t) {
                self.open_device();
            }
            match self.turn() {
                Ok(()) => {}
                Err(Stop::Shutdown) => break,
            }
        }
        self.drop_all("server shutting down");
        debug!("{}: bridge thread done", self.name);
    }

    fn open_device(&mut self) {
        let now = Instant::now();
        let settings = self
            .clients
            .first()
            .map_or(self.configured, |c| c.session.settings());
        let mut dev = match (self.open)(&self.spec.path, &settings) {
            Ok(dev) => dev,
            Err(e) => return self.open_failed(e, now),
        };
        info!("{}: opened {} at {}", self.name, self.spec.path, settings);
        self.backoff.opened();
        self.lines = LineDriver::new(self.lines.policy());
        let was = std::mem::replace(&mut self.link, Link::Closed { at: now });
        if let (Some(c), Link::Lost { since, dropped, .. }) = (self.clients.first(), was) {
            // Re-enumerated (a native-USB chip resetting): the clients carry on.
            let dropped = match dropped {
                0 => String::new(),
                n => format!(" ({n} bytes it sent meanwhile were dropped)"),
            };
            info!(
                "{}: device is back after {:.2} s; client {} carries on at {settings}{dropped}",
                self.name,
                since.elapsed().as_secs_f32(),
                c.addr,
            );
            if let Ok(st) = dev.modem_status() {
                for c in self.clients.iter_mut() {
                    c.session.modem_status(st, &mut c.to_client);
                }
            }
        }
        self.link = Link::Open(dev);
        self.publish();
    }

    fn open_failed(&mut self, e: io::Error, now: Instant) {
        let path = &self.spec.path;
        if let Link::Lost { at, .. } = &mut self.link {
            debug!("{}: {path} not back yet: {e}", self.name);
            *at = now + REOPEN_LOST;
            return;
        }
        let (delay, report) = self.backoff.failed(now);
        let hint = "check that it is plugged in and that this user may open it";
        match report {
            Report::Once => error!("{}: cannot open {path}: {e}; retrying ({hint})", self.name),
            Report::Quiet => debug!("{}: {path} not openable yet: {e}", self.name),
            Report::Error => {
                error!(
                    "{}: cannot open {path}: {e}; retrying in {:.1} s ({hint})",
                    self.name,
                    delay.as_secs_f32()
                );
                self.shared.registry.set_state(
                    &self.shared.key,
                    DeviceState::Error(format!("cannot open {path}: {e}")),
                );
            }
        }
        self.link = Link::Closed { at: now + delay };
    }

    /// One round of poll and the work it reveals.
    fn turn(&mut self) -> Result<(), Stop> {
        let waiting = self.effect.is_some();
        // Only the client in control holds the device back; observers that fall behind
        // lose output instead.
        let want_device_in = !waiting && self.clients.first().is_none_or(Client::keeps_up);
        let device_has_room = self.to_device.len() < DEVICE_HIGH_WATER;

        // A fixed array, no allocation per round: absent slots poll the wake fd for nothing.
        let idle = || PollFd::new(self.wake.as_fd(), PollFlags::empty());
        let mut fds: [PollFd; SLOTS] = std::array::from_fn(|_| idle());
        let resting = self
            .accept_rest
            .is_some_and(|(until, _, _)| Instant::now() < until);
        if !resting {
            fds[0] = PollFd::new(self.listener.as_fd(), PollFlags::POLLIN);
        }
        fds[1] = PollFd::new(self.wake.as_fd(), PollFlags::POLLIN);
        if let Link::Open(dev) = &self.link {
            let mut ev = PollFlags::empty();
            if want_device_in {
                ev |= PollFlags::POLLIN;
            }
            if !self.to_device.is_empty() {
                ev |= PollFlags::POLLOUT;
            }
            fds[2] = PollFd::new(dev.fd(), ev);
        }
        let mut ids = [0u64; MAX_CLIENTS];
        for (i, c) in self.clients.iter().enumerate().take(MAX_CLIENTS) {
            let mut ev = PollFlags::empty();
            // The controller is read while the device has room for its bytes; observers
            // whenever they keep up with their answers (what they write is dropped).
            let room = c.to_client.len() < CLIENT_HIGH_WATER
                && !c.session.client_paused()
                && (i > 0 || device_has_room);
            if room && c.input.pending().is_empty() {
                ev |= PollFlags::POLLIN;
            }
            if !c.to_client.is_empty() {
                ev |= PollFlags::POLLOUT;
            }
            fds[3 + i] = PollFd::new(c.stream.as_fd(), ev);
            ids[i] = c.id;
        }
        let used = 3 + self.clients.len().min(MAX_CLIENTS);
        let timeout = self.next_deadline().map_or(PollTimeout::NONE, |d| {
            let ms = d.saturating_duration_since(Instant::now()).as_millis();
            PollTimeout::try_from(ms.min(POLL_CAP_MS) as i32 + 1).unwrap_or(PollTimeout::MAX)
        });
        match poll(&mut fds[..used], timeout) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => return Ok(()),
            Err(e) => {
                error!("{}: poll failed: {e}", self.name);
                thread::sleep(POLL_ERROR_PAUSE);
                return Ok(());
            }
        }
        let ready = fds.map(|f| f.revents().unwrap_or(PollFlags::empty()));
        let (listener_ready, wake_ready, dev_ready) = (ready[0], ready[1], ready[2]);

        if wake_ready.contains(PollFlags::POLLIN) {
            let _ = self.wake.read();
            while let Ok(cmd) = self.commands.try_recv() {
                self.command(cmd)?;
            }
        }
        if dev_ready.contains(PollFlags::POLLOUT) {
            self.flush_device();
        }
        if dev_ready.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
            self.read_device();
        }
        for (k, &id) in ids.iter().enumerate().take(used - 3) {
            let ev = ready[3 + k];
            if ev.contains(PollFlags::POLLOUT) {
                self.flush_client(id);
            }
            if ev.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
                self.read_client(id);
            }
        }
        if listener_ready.contains(PollFlags::POLLIN) || self.accept_rest.is_some() && !resting {
            self.accept();
        }
        self.on_timers();
        self.advance();
        self.settle_control();
        self.flush_device();
        self.flush_clients();
        Ok(())
    }

    fn command(&mut self, cmd: BridgeCommand) -> Result<(), Stop> {
        match cmd {
            BridgeCommand::Shutdown => return Err(Stop::Shutdown),
            BridgeCommand::Reset(to, reply) => {
                let answer = match self.clients.first() {
                    // A reset would cut a flash short: the flasher alone decides.
                    Some(c) if c.session.loading() => Err(RequestError::Failed(format!(
                        "{}: {} is flashing the chip; reset it when the flash is over",
                        self.shared.key, c.addr
                    ))),
                    _ => match self.server_reset(to) {
                        Ok(()) => Ok(format!("{}: reset into {to:?} started", self.shared.key)),
                        Err(e) => Err(RequestError::Failed(e.to_string())),
                    },
                };
                let _ = reply.send(answer);
            }
            BridgeCommand::Replace(path) => {
                info!("{}: device now at {path}", self.name);
                self.spec.path = path;
                if let Link::Lost { at, .. } = &mut self.link {
                    *at = Instant::now();
                } else {
                    self.link = Link::Closed { at: Instant::now() };
                }
            }
            BridgeCommand::Retry => {
                if let Link::Closed { at } = &mut self.link {
                    *at = (*at).min(Instant::now()).max(self.shared.open_after);
                }
            }
            BridgeCommand::Disconnect(why) => self.drop_all(&why),
            BridgeCommand::Gone => {
                if matches!(self.link, Link::Open(_)) {
                    self.device_lost("unplugged");
                }
            }
            BridgeCommand::Leases => self.apply_leases(),
        }
        Ok(())
    }

    /// The device's leases changed (or the bridge starts): the clients they do not admit
    /// are closed — a device leased to one address is reserved for it — and the next expiry
    /// is timed.
    fn apply_leases(&mut self) {
        let now = lease::unix_now();
        self.read_leases(now);
        let refused = (self.clients).refused_by(&self.shared.leases.book(), &self.lease_key, now);
        for (i, why) in refused {
            self.drop_client(i, why.as_str());
        }
    }

    /// A lease of this device ran out: with `lease_expiry = "close"` its holder's clients
    /// are closed; otherwise they finish, and the next connection follows the policy.
    fn lease_expired(&mut self) {
        let now = lease::unix_now();
        let close = self.shared.leases.book().expiry == Expiry::Close;
        let ended: Vec<Lease> = self
            .leases
            .iter()
            .filter(|l| !l.active(now))
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
                    self.drop_client(i, "its lease ran out (lease_expiry = \"close\")");
                }
            }
        }
        self.read_leases(now);
    }

    /// The device's active leases, and when the first of them runs out.
    fn read_leases(&mut self, now: u64) {
        self.leases = self
            .shared
            .leases
            .book()
            .on(&self.lease_key, now)
            .cloned()
            .collect();
        self.lease_ends = (self.leases.iter().map(|l| l.expires).min())
            .map(|at| Instant::now() + lease::until(at));
    }

    fn next_deadline(&self) -> Option<Instant> {
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
        let rest = self.accept_rest.map(|(until, _, _)| until);
        [
            rest,
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

    /// Timers: reset steps, the sessions' own waits, modem lines, the grace period.
    fn on_timers(&mut self) {
        let now = Instant::now();
        if self.lease_ends.is_some_and(|t| now >= t) {
            self.lease_expired();
        }
        let mut played = None;
        if let Some(dev) = self.link.device() {
            while let Some(lines) = self.lines.due(now) {
                played = set_lines(
                    &self.name,
                    &mut self.lines,
                    dev,
                    lines,
                    &mut self.lines_refused,
                )
                .or(played);
            }
        }
        if let Some(p) = played {
            self.reset_played(p);
        }
        if let Link::Lost { since, .. } = self.link {
            if since.elapsed() >= self.shared.grace {
                self.link = Link::Closed {
                    at: now + REOPEN_LOST,
                };
                return self.drop_all(&format!(
                    "the device did not come back within {:.1} s",
                    self.shared.grace.as_secs_f32()
                ));
            }
        }
        let due = |c: &Client| c.session.deadline().is_some_and(|t| t <= now);
        if let Some(c) = self.clients.first_mut() {
            if self.effect.is_none() && due(c) {
                let mut out = Out {
                    device: &mut self.to_device,
                    client: &mut c.to_client,
                };
                let effect = c.session.on_timer(now, &mut out);
                self.effect = waiting(effect, now);
            }
        }
        for c in self.clients.iter_mut().skip(1).filter(|c| due(c)) {
            let mut out = Out {
                device: &mut self.discard,
                client: &mut c.to_client,
            };
            let effect = c.session.on_timer(now, &mut out);
            pretend(&mut c.session, effect, now, &mut out);
            self.discard.clear();
        }
        if !self.clients.is_empty() && now >= self.next_modem_poll {
            self.next_modem_poll = now + MODEM_POLL;
            if let Some(st) = self.link.device().and_then(|d| d.modem_status().ok()) {
                for c in self.clients.iter_mut() {
                    c.session.modem_status(st, &mut c.to_client);
                }
            }
        }
    }

    /// Move the sessions on. The controlling one: perform the effect it waits on once the
    /// data queued before it has reached the device (or could not in time), then feed it
    /// the client bytes it has not taken yet; returns when it waits on the device or has
    /// taken all. Observers: their requests are answered, their data dropped.
    fn advance(&mut self) {
        self.advance_controller();
        for i in (1..self.clients.len()).rev() {
            self.advance_observer(i);
        }
    }

    fn advance_controller(&mut self) {
        loop {
            let now = Instant::now();
            let Some(c) = self.clients.first_mut() else {
                self.effect = None;
                return;
            };
            if let Some((effect, until)) = self.effect {
                let outcome = if effect.after_data() && !self.to_device.is_empty() {
                    if now < until {
                        return; // POLLOUT on the device, or the deadline, brings us back.
                    }
                    Err(Failure::Stalled)
                } else {
                    Ok(())
                };
                let outcome = outcome.and_then(|()| self.perform(effect));
                let Some(c) = self.clients.first_mut() else {
                    return;
                };
                let mut out = Out {
                    device: &mut self.to_device,
                    client: &mut c.to_client,
                };
                let next = c.session.done(outcome, now, &mut out);
                self.effect = waiting(next, now);
                self.flush_device();
                continue;
            }
            if c.input.pending().is_empty() {
                return;
            }
            let mut out = Out {
                device: &mut self.to_device,
                client: &mut c.to_client,
            };
            match c
                .session
                .on_client_bytes(c.input.pending_mut(), now, &mut out)
            {
                Ok(step) => {
                    c.input.at += step.consumed;
                    let stuck = step.consumed == 0 && step.effect.is_none();
                    self.effect = waiting(step.effect, now);
                    self.flush_device();
                    if stuck {
                        return;
                    }
                }
                Err(e) => return self.drop_client(0, &format!("disconnected: {e}")),
            }
        }
    }

    /// An observer's bytes: requests answered as if applied (they are, when it gains
    /// control), data counted and dropped.
    fn advance_observer(&mut self, i: usize) {
        let now = Instant::now();
        let c = &mut self.clients[i];
        let mut dropped = 0;
        let mut failed = None;
        while !c.input.pending().is_empty() {
            let mut out = Out {
                device: &mut self.discard,
                client: &mut c.to_client,
            };
            match c
                .session
                .on_client_bytes(c.input.pending_mut(), now, &mut out)
            {
                Ok(step) => {
                    c.input.at += step.consumed;
                    let stuck = step.consumed == 0 && step.effect.is_none();
                    pretend(&mut c.session, step.effect, now, &mut out);
                    dropped += self.discard.len() as u64;
                    self.discard.clear();
                    if stuck {
                        break;
                    }
                }
                Err(e) => {
                    failed = Some(format!("disconnected: {e}"));
                    break;
                }
            }
        }
        if dropped > 0 {
            Stats::add(&c.dropped.from_client, dropped);
            Stats::add(&self.shared.stats.observer_bytes_dropped, dropped);
            if !std::mem::replace(&mut c.drop_said, true) {
                let controller = self.clients[0].addr;
                let c = &self.clients[i];
                if let Verdict::Log { .. } = self.peer_log.check(c.addr.ip(), now) {
                    info!(
                        "{}: observer {} writes while {controller} is in control; its data is dropped (counted in the portal)",
                        self.name, c.addr
                    );
                }
            }
        }
        if let Some(why) = failed {
            self.drop_client(i, &why);
        }
    }

    /// Do what the controlling session asked of the device. Without a device
    /// (re-enumerating) settings are only remembered — the session re-applies them when it
    /// is back — and a reset fails.
    fn perform(&mut self, effect: Effect) -> Result<(), Failure> {
        if let Effect::Purge(Purge::Output | Purge::Both) = effect {
            self.to_device.clear();
        }
        if let Effect::Reset(to) = effect {
            return self.server_reset(to).map_err(Failure::Reset);
        }
        let Some(dev) = self.link.device() else {
            return Ok(());
        };
        match effect {
            Effect::Apply(s) => dev.apply(&s).map_err(Failure::Device),
            Effect::Break(on) => dev.set_break(on).map_err(Failure::Device),
            Effect::Purge(p) => dev.purge(p).map_err(Failure::Device),
            Effect::Lines(lines) => {
                let now = Instant::now();
                let (change, started) = self.lines.client_lines(lines, now);
                if let Some(to) = started {
                    info!(
                        "{}: client started a reset into {to:?}; playing it locally",
                        self.name
                    );
                    Stats::add(&self.shared.stats.resets, 1);
                    if to == ResetTo::Bootloader {
                        if let Some(c) = self.clients.first_mut() {
                            c.session.entry_started();
                        }
                    }
                }
                let played = change.and_then(|l| {
                    set_lines(&self.name, &mut self.lines, dev, l, &mut self.lines_refused)
                });
                if let Some(p) = played {
                    self.reset_played(p);
                }
                Ok(())
            }
            Effect::Reset(_) => Ok(()),
        }
    }

    /// A reset on the server's initiative (the portal, an ESP session's SYNC, a session end).
    fn server_reset(&mut self, to: ResetTo) -> Result<(), ResetError> {
        let dev = self.link.device().ok_or(ResetError::NoDevice)?;
        let first = self.lines.reset(to, Instant::now())?;
        info!("{}: reset into {to:?} requested by the server", self.name);
        Stats::add(&self.shared.stats.resets, 1);
        let played = first
            .and_then(|l| set_lines(&self.name, &mut self.lines, dev, l, &mut self.lines_refused));
        if let Some(p) = played {
            self.reset_played(p);
        }
        Ok(())
    }

    /// A reset sequence finished: log its timings, tell the sessions (an ESP raw session
    /// waits for its bootloader entry; every session's follower learns where the chip is).
    fn reset_played(&mut self, played: Played) {
        info!(
            "{}: reset into {:?} done, lines (D/R = asserted):{}",
            self.name, played.to, played.steps
        );
        let now = Instant::now();
        for (i, c) in self.clients.iter_mut().enumerate() {
            let device = if i == 0 {
                &mut self.to_device
            } else {
                &mut self.discard
            };
            let mut out = Out {
                device,
                client: &mut c.to_client,
            };
            c.session.reset_done(played.to, now, &mut out);
        }
        self.discard.clear();
    }

    fn accept(&mut self) {
        loop {
            let (mut stream, addr) = match self.listener.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.accepting_again();
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.accept_failed(e),
            };
            self.accepting_again();
            if !self.shared.allow.permits(addr.ip()) {
                // Closed before a byte reaches the device or the session.
                let ip = addr.ip();
                if let Verdict::Log { suppressed } = self.refusals.check(ip, Instant::now()) {
                    let port = self.listener.local_addr().map_or(0, |a| a.port());
                    let note = suppressed_note(ip, suppressed);
                    warn!(
                        "{}: refused {ip} on port {port}: not in allow{note}",
                        self.name
                    );
                }
                continue;
            }
            let leased =
                (self.shared.leases.book()).admits(&self.lease_key, addr.ip(), lease::unix_now());
            if let Err(why) = leased {
                // Closed before a byte reaches the device or the session, with a word for
                // netcat users.
                let ip = addr.ip();
                Stats::add(&self.shared.stats.lease_refusals, 1);
                if let Verdict::Log { suppressed } = self.refusals.check(ip, Instant::now()) {
                    let port = self.listener.local_addr().map_or(0, |a| a.port());
                    let note = suppressed_note(ip, suppressed);
                    warn!(
                        "{}: refused {ip} on port {port}: {}{note}",
                        self.name,
                        why.as_str()
                    );
                }
                let _ = stream.write(match why {
                    Refusal::NoLease => NO_LEASE_MESSAGE,
                    Refusal::LeasedToOther => LEASED_MESSAGE,
                });
                continue;
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
                        (true, Some(c)) => {
                            format!(
                                "port in use by {} (busy = \"reject\": one client per device)",
                                c.addr
                            )
                        }
                        _ => format!("device {} is not open", self.spec.path),
                    };
                    if let Verdict::Log { suppressed } =
                        self.peer_log.check(addr.ip(), Instant::now())
                    {
                        let note = suppressed_note(addr.ip(), suppressed);
                        info!("{}: refused {addr}: {why}{note}", self.name);
                    }
                    let _ = stream.write(message);
                    continue;
                }
                Admission::Kick => {
                    if let Some(c) = self.clients.first_mut() {
                        // Best effort: the kicked client gets the reason if its socket has room.
                        let _ = c.stream.write(KICKED_MESSAGE);
                    }
                    self.drop_all(&format!("kicked off by {addr} (busy = \"kick\")"));
                }
                Admission::Accept => {}
            }
            if let Err(e) = tune_socket(&stream) {
                warn!(
                    "{}: cannot set up the connection from {addr}: {e}",
                    self.name
                );
                continue;
            }
            self.connect(stream, addr);
        }
    }

    /// Accepting failed (out of descriptors, most likely: EMFILE): rest the listener, say so
    /// once, try again later.
    fn accept_failed(&mut self, e: io::Error) {
        let now = Instant::now();
        let (pause, failures) = match self.accept_rest {
            None => {
                warn!(
                    "{}: cannot accept connections: {e}; retrying every {:.0} s at most, connected clients are still served (too many open files? raise LimitNOFILE)",
                    self.name,
                    ACCEPT_PAUSE_MAX.as_secs_f32()
                );
                (ACCEPT_PAUSE_MIN, 1)
            }
            Some((_, pause, n)) => ((pause * 2).min(ACCEPT_PAUSE_MAX), n + 1),
        };
        self.accept_rest = Some((now + pause, pause, failures));
    }

    fn accepting_again(&mut self) {
        if let Some((_, _, failures)) = self.accept_rest.take() {
            info!(
                "{}: accepting connections again ({failures} attempts failed)",
                self.name
            );
        }
    }

    fn connect(&mut self, stream: TcpStream, addr: SocketAddr) {
        let now = Instant::now();
        let settings = self.configured;
        let signature = format!(
            "serialhub {} {} ({})",
            env!("CARGO_PKG_VERSION"),
            self.name,
            self.spec.path
        );
        let mut session = match self.spec.protocol {
            Protocol::Rfc2217 => Session::new(&self.name, signature, settings),
            Protocol::Raw => Session::raw(&self.name, settings),
            Protocol::Auto => {
                Session::detect(&self.name, signature, settings, self.spec.detect_window)
            }
        };
        // Every session follows the ESP loader protocol: following CHANGE_BAUDRATE needs no
        // wiring, and a bootloader entry is tried wherever the policy can move lines.
        let entry = match self.lines.policy() {
            Policy::None => Entry::Never,
            _ => Entry::Reset,
        };
        session = session.watch_esp(self.lines.in_loader(), entry);
        let mut to_client = Vec::with_capacity(READ_CHUNK);
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
        session = session.with_voice(voice);
        Stats::add(&self.shared.stats.connects, 1);
        let client = Client {
            id: self.next_id,
            stream,
            addr,
            since: now,
            session,
            input: Input {
                buf: vec![0; READ_CHUNK].into_boxed_slice(),
                at: 0,
                end: 0,
            },
            to_client,
            bytes_in: 0,
            bytes_out: 0,
            turn: Turn::Had,
            lag: Lag::Keeping,
            dropped: Arc::default(),
            drop_said: false,
            last_input: now.checked_sub(IDLE_AFTER).unwrap_or(now),
        };
        self.next_id += 1;
        if self.clients.is_empty() {
            self.to_device.clear();
            self.effect = None;
            self.next_modem_poll = now + MODEM_POLL;
        }
        let controller = self.clients.first().map(|c| c.addr);
        let waiting_news = |engaged: Engaged| {
            let c = controller.map_or_else(String::new, |a| a.to_string());
            (
                format!(
                    "serialhub: observing; {c} is {}, control follows when it is done",
                    engaged.as_str()
                ),
                c,
            )
        };
        let acting = self.acting();
        let id = client.id;
        match self.clients.join(client, acting, now) {
            Joined::Alone => {}
            // The client in control is flashing (or in the middle of a change): the
            // newcomer observes until that ends.
            Joined::Waits(engaged) => {
                let (news, c) = waiting_news(engaged);
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
    }

    /// The device is busy on the controller's behalf: an effect waits, a reset plays.
    fn acting(&self) -> bool {
        self.effect.is_some() || self.lines.playing()
    }

    /// Clients waiting for a flash (or a stream, or a change) to end take control once it has.
    fn settle_control(&mut self) {
        let acting = self.acting();
        if self.clients.settle(acting, Instant::now()) {
            self.give_control(Instant::now());
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
        let played = self
            .lines
            .hand_over(lines, now)
            .and_then(|l| set_lines(&self.name, &mut self.lines, dev, l, &mut self.lines_refused));
        if let Some(p) = played {
            self.reset_played(p);
        }
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

    fn read_device(&mut self) {
        let Some(dev) = self.link.device() else {
            return;
        };
        match dev.read(&mut self.buf) {
            Ok(0) => self.device_lost("end of file"),
            Ok(n) => {
                let data = &self.buf[..n];
                let now = Instant::now();
                // What the chip says during a flash is for the flasher alone: not for
                // observers, not for the portal's log.
                let loading = self.clients.first().is_some_and(|c| c.session.loading());
                if !loading {
                    if let Ok(mut log) = self.shared.log.lock() {
                        log.push(data);
                    }
                }
                let Some((c, observers)) = self.clients.split_first_mut() else {
                    return;
                };
                c.bytes_out += n as u64;
                Stats::add(&self.shared.stats.bytes_to_client, n as u64);
                let mut out = Out {
                    device: &mut self.to_device,
                    client: &mut c.to_client,
                };
                let effect = c.session.on_device_bytes(data, now, &mut out);
                self.effect = waiting(effect, now);
                if loading {
                    return;
                }
                for o in observers {
                    if !o.keeps_up() {
                        Stats::add(&o.dropped.to_client, n as u64);
                        Stats::add(&self.shared.stats.observer_output_missed, n as u64);
                        o.lag = match o.lag {
                            Lag::Keeping => {
                                if let Verdict::Log { .. } = self.peer_log.check(o.addr.ip(), now) {
                                    warn!(
                                        "{}: observer {} does not keep up; dropping output for it until it does",
                                        self.name, o.addr
                                    );
                                }
                                Lag::Missing(n as u64)
                            }
                            Lag::Missing(k) => Lag::Missing(k + n as u64),
                        };
                        continue;
                    }
                    if let Lag::Missing(k) = std::mem::replace(&mut o.lag, Lag::Keeping) {
                        if let Verdict::Log { .. } = self.peer_log.check(o.addr.ip(), now) {
                            info!(
                                "{}: observer {} keeps up again; it missed {k} bytes",
                                self.name, o.addr
                            );
                        }
                    }
                    o.bytes_out += n as u64;
                    let mut out = Out {
                        device: &mut self.discard,
                        client: &mut o.to_client,
                    };
                    let effect = o.session.on_device_bytes(data, now, &mut out);
                    pretend(&mut o.session, effect, now, &mut out);
                    self.discard.clear();
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => self.device_lost(&e.to_string()),
        }
    }

    fn device_lost(&mut self, why: &str) {
        let now = Instant::now();
        self.to_device.clear();
        self.shared
            .registry
            .set_state(&self.shared.key, DeviceState::Starting);
        match self.clients.first() {
            Some(c) if !self.shared.grace.is_zero() => {
                // Native-USB chips vanish for a moment when they reset; keep the clients.
                warn!(
                    "{}: device {} went away ({why}); keeping client {} for {:.1} s in case it comes back",
                    self.name,
                    self.spec.path,
                    c.addr,
                    self.shared.grace.as_secs_f32()
                );
                self.link = Link::Lost {
                    since: now,
                    at: now + REOPEN_LOST,
                    dropped: 0,
                };
            }
            _ => {
                error!(
                    "{}: device {} failed: {why}; closing it and retrying",
                    self.name, self.spec.path
                );
                let (delay, _) = self.backoff.failed(now);
                self.link = Link::Closed { at: now + delay };
                self.drop_all("the device went away");
            }
        }
    }

    fn read_client(&mut self, id: u64) {
        let Some(i) = self.clients.iter().position(|c| c.id == id) else {
            return;
        };
        let c = &mut self.clients[i];
        if !c.input.pending().is_empty() {
            return;
        }
        let n = match c.stream.read(&mut c.input.buf) {
            Ok(0) => return self.drop_client(i, "client closed the connection"),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return,
            Err(e) => return self.drop_client(i, &format!("connection error: {e}")),
        };
        c.input.at = 0;
        c.input.end = n;
        c.bytes_in += n as u64;
        c.last_input = Instant::now();
        if i == 0 {
            Stats::add(&self.shared.stats.bytes_to_device, n as u64);
        }
    }

    fn flush_client(&mut self, id: u64) {
        if let Some(i) = self.clients.iter().position(|c| c.id == id) {
            if let Err(why) = send(&mut self.clients[i]) {
                self.drop_client(i, &why);
            }
        }
    }

    fn flush_clients(&mut self) {
        for i in (0..self.clients.len()).rev() {
            if let Err(why) = send(&mut self.clients[i]) {
                self.drop_client(i, &why);
            }
        }
    }

    fn flush_device(&mut self) {
        let dev = match &mut self.link {
            Link::Open(dev) => dev,
            Link::Lost { dropped, .. } => {
                *dropped += self.to_device.len() as u64;
                self.to_device.clear();
                return;
            }
            Link::Closed { .. } => {
                self.to_device.clear();
                return;
            }
        };
        while !self.to_device.is_empty() {
            match dev.write(&self.to_device) {
                Ok(n) => {
                    self.to_device.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.device_lost(&e.to_string()),
            }
        }
    }

    /// Close every client, observers first (so control is never handed to one that is
    /// about to go).
    fn drop_all(&mut self, why: &str) {
        while let Some(last) = self.clients.len().checked_sub(1) {
            self.drop_client(last, why);
        }
    }

    /// Close client `i`. An observer just goes. When the client in control goes, the next
    /// in line takes control, or — when it was the last — the device gets its configured
    /// settings back with both lines released; either way the chip is settled where an ESP
    /// session leaves it.
    fn drop_client(&mut self, i: usize, why: &str) {
        if i >= self.clients.len() {
            return;
        }
        let Some(c) = self.clients.leave(i) else {
            return;
        };
        if let Verdict::Log { suppressed } = self.peer_log.check(c.addr.ip(), Instant::now()) {
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
                c.since.elapsed().as_secs_f32(),
                c.bytes_in,
                c.bytes_out,
                suppressed_note(c.addr.ip(), suppressed)
            );
        }
        if i == 0 {
            self.controller_left(&c);
        }
        if self.clients.is_empty() {
            if let Link::Lost { .. } = self.link {
                self.link = Link::Closed { at: Instant::now() };
            }
        }
        self.publish();
    }

    fn controller_left(&mut self, c: &Client) {
        self.to_device.clear();
        self.effect = None;
        let now = Instant::now();
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
            let played = released.and_then(|l| {
                set_lines(&self.name, &mut self.lines, dev, l, &mut self.lines_refused)
            });
            if let Some(p) = played {
                self.reset_played(p);
            }
        }
        if reset_app {
            if let Err(e) = self.server_reset(ResetTo::App) {
                warn!(
                    "{}: cannot reset the chip into its application: {e}",
                    self.name
                );
            }
        }
    }
}

/// An observer's session asked for an effect: it is answered as done (its settings are
/// recorded and applied when it gains control), and whatever follows is settled the same
/// way. Nothing reaches the device.
fn pretend(session: &mut Session, mut effect: Option<Effect>, now: Instant, out: &mut Out) {
    // Each answer may ask for one more effect (a parked baud change, then its release);
    // a bounded number settles any chain.
    for _ in 0..8 {
        if effect.is_none() {
            return;
        }
        effect = session.done(Ok(()), now, out);
    }
}

/// Write what waits for a client; `Err` says why it must be closed.
fn send(c: &mut Client) -> Result<(), String> {
    while !c.to_client.is_empty() {
        match c.stream.write(&c.to_client) {
            Ok(n) => {
                c.to_client.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("connection error: {e}")),
        }
    }
    Ok(())
}

/// An effect the session now waits on, and until when it waits for the data before it.
fn waiting(effect: Option<Effect>, now: Instant) -> Option<(Effect, Instant)> {
    effect.map(|e| (e, now + DRAIN_WAIT))
}

/// Set both lines in one call and tell the driver when they got there.
/// A device without modem lines (a PTY, some adapters) is said once, at debug: a policy
/// that tries a bootloader entry on any tty meets them routinely.
fn set_lines(
    name: &str,
    driver: &mut LineDriver,
    dev: &mut dyn Device,
    lines: Lines,
    refused_said: &mut bool,
) -> Option<Played> {
    if let Err(e) = dev.set_lines(lines) {
        if !std::mem::replace(refused_said, true) {
            debug!("{name}: cannot set DTR/RTS ({e}); this device has no modem lines");
        }
    }
    driver.applied(lines, Instant::now())
}

/// Non-blocking, TCP_NODELAY (every answer is latency-critical), keepalive (about 10 s idle,
/// then 3 probes 5 s apart) and a user timeout of the same 25 s for data the client does not
/// acknowledge, so a client that vanished without a FIN frees the port in ~25 s, idle or in
/// the middle of a flash (where keepalive alone would wait out minutes of retransmissions).
/// A connection that cannot be made non-blocking is refused: it would stall the loop.
fn tune_socket(s: &TcpStream) -> io::Result<()> {
    s.set_nonblocking(true)?;
    let _ = s.set_nodelay(true);
    let _ = setsockopt(s, sockopt::KeepAlive, &true);
    let _ = setsockopt(s, sockopt::TcpKeepIdle, &KEEPALIVE_IDLE_S);
    let _ = setsockopt(s, sockopt::TcpKeepInterval, &KEEPALIVE_INTERVAL_S);
    let _ = setsockopt(s, sockopt::TcpKeepCount, &KEEPALIVE_PROBES);
    let _ = setsockopt(s, sockopt::TcpUserTimeout, &UNACKED_TIMEOUT_MS);
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The loop over a fake device (one end of a socket pair, which the test holds the other
    //! end of) and real TCP clients on 127.0.0.1.

    use super::*;
    use crate::protocol::line::ModemStatus;
    use crate::protocol::telnet;
    use std::os::fd::BorrowedFd;
    use std::os::unix::net::UnixStream;
    use std::sync::Mutex;

    /// What the fake device was asked to do.
    #[derive(Default)]
    struct Record {
        /// Each setting applied, with how many bytes had been written to the device then.
        applied: Vec<(u32, usize)>,
        written: usize,
        opens: usize,
    }

    struct Fake {
        stream: UnixStream,
        record: Arc<Mutex<Record>>,
    }

    impl Device for Fake {
        fn fd(&self) -> BorrowedFd<'_> {
            self.stream.as_fd()
        }
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.stream.read(buf)
        }
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = self.stream.write(buf)?;
            self.record.lock().unwrap().written += n;
            Ok(n)
        }
        fn apply(&mut self, s: &LineSettings) -> io::Result<()> {
            let mut r = self.record.lock().unwrap();
            let at = r.written;
            r.applied.push((s.baud, at));
            Ok(())
        }
        fn set_lines(&mut self, _: Lines) -> io::Result<()> {
            Ok(())
        }
        fn modem_status(&mut self) -> io::Result<ModemStatus> {
            Ok(ModemStatus::default())
        }
        fn set_break(&mut self, _: bool) -> io::Result<()> {
            Ok(())
        }
        fn purge(&mut self, _: Purge) -> io::Result<()> {
            Ok(())
        }
    }

    const WAIT: Duration = Duration::from_secs(5);

    struct Rig {
        handle: BridgeHandle,
        /// The far ends of the device, one per open.
        far: mpsc::Receiver<UnixStream>,
        record: Arc<Mutex<Record>>,
        registry: Arc<Registry>,
    }

    impl Rig {
        /// The clients as the portal sees them: (role, bytes dropped in, output missed).
        fn clients(&self) -> Vec<(Role, u64, u64)> {
            let e = self
                .registry
                .get(&DeviceKey::name("fake"))
                .expect("registered");
            e.clients
                .iter()
                .map(|c| {
                    let d = &c.dropped;
                    (c.role, Stats::get(&d.from_client), Stats::get(&d.to_client))
                })
                .collect()
        }

        /// Wait until `client` is the one in control.
        fn wait_control(&self, client: &TcpStream) {
            let me = client.local_addr().unwrap();
            let key = DeviceKey::name("fake");
            let deadline = Instant::now() + WAIT;
            while self
                .registry
                .get(&key)
                .unwrap()
                .clients
                .first()
                .map(|c| c.addr)
                != Some(me)
            {
                assert!(Instant::now() < deadline, "{me} never got control");
                thread::sleep(Duration::from_millis(5));
            }
        }

        /// Wait until the clients are as `want` says.
        fn wait_clients(&self, want: impl Fn(&[(Role, u64, u64)]) -> bool) {
            let deadline = Instant::now() + WAIT;
            loop {
                let now = self.clients();
                if want(&now) {
                    return;
                }
                assert!(Instant::now() < deadline, "clients stayed {now:?}");
                thread::sleep(Duration::from_millis(5));
            }
        }
    }

    fn rig(busy: Busy, protocol: Protocol) -> Rig {
        rig_with(busy, protocol, 4)
    }

    fn rig_with(busy: Busy, protocol: Protocol, max_clients: usize) -> Rig {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let (tx, far) = mpsc::channel();
        let record = Arc::new(Mutex::new(Record::default()));
        let rec = record.clone();
        let open: Opener = Box::new(move |_, _| {
            let (near, far) = UnixStream::pair()?;
            near.set_nonblocking(true)?;
            // A small device buffer, so a device that is not read stalls quickly.
            setsockopt(&near, sockopt::SndBuf, &4096)?;
            rec.lock().unwrap().opens += 1;
            let _ = tx.send(far);
            Ok(Box::new(Fake {
                stream: near,
                record: rec.clone(),
            }))
        });
        let shared = Shared {
            registry: Registry::new(),
            key: DeviceKey::name("fake"),
            stats: Arc::default(),
            log: Arc::new(std::sync::Mutex::new(LogRing::new(1024))),
            grace: Duration::ZERO,
            open_after: Instant::now(),
            policy: Policy::Passthrough,
            allow: Allow::Everyone,
            leases: Arc::default(),
        };
        let spec = DeviceSpec {
            busy,
            protocol,
            max_clients,
            ..DeviceSpec::new(DevicePath::Tty("/dev/fake".into()))
        };
        let registry = shared.registry.clone();
        registry.upsert(crate::daemon::registry::DeviceEntry {
            key: DeviceKey::name("fake"),
            name: "fake".into(),
            tty: "/dev/fake".into(),
            usb: None,
            port: 0,
            state: DeviceState::Starting,
            clients: Vec::new(),
            reset: Policy::Passthrough,
            protocol,
            stats: Arc::default(),
            log: Arc::new(Mutex::new(LogRing::new(16))),
        });
        let handle = spawn(spec, listener, shared, open).unwrap();
        Rig {
            handle,
            far,
            record,
            registry,
        }
    }

    fn connect(addr: SocketAddr) -> TcpStream {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s
    }

    /// Read exactly `n` bytes (the read timeout bounds every wait).
    fn read_n(r: &mut impl Read, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        r.read_exact(&mut buf).unwrap();
        buf
    }

    fn device(rig: &Rig) -> UnixStream {
        let d = rig.far.recv_timeout(WAIT).expect("the device was opened");
        d.set_read_timeout(Some(WAIT)).unwrap();
        d
    }

    /// A raw client's bytes reach the device and the device's reach the client.
    fn exchange(client: &mut TcpStream, dev: &mut UnixStream) {
        client.write_all(b"ping").unwrap();
        assert_eq!(read_n(dev, 4), b"ping");
        dev.write_all(b"pong").unwrap();
        assert_eq!(read_n(client, 4), b"pong");
    }

    /// Read until the peer closes; returns what came.
    fn until_closed(s: &mut TcpStream) -> Vec<u8> {
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        all
    }

    #[test]
    fn admission_one_client_in_control_the_next_is_told_busy() {
        let rig = rig(Busy::Reject, Protocol::Raw);
        let mut dev = device(&rig);
        let mut a = connect(rig.handle.addr);
        exchange(&mut a, &mut dev);
        let mut b = connect(rig.handle.addr);
        assert_eq!(until_closed(&mut b), BUSY_MESSAGE);
        exchange(&mut a, &mut dev);
        rig.handle.stop("test over");
        assert!(until_closed(&mut a).is_empty());
    }

    #[test]
    fn kick_hands_the_device_to_the_newcomer() {
        let rig = rig(Busy::Kick, Protocol::Raw);
        let mut dev = device(&rig);
        let mut a = connect(rig.handle.addr);
        exchange(&mut a, &mut dev);
        let mut b = connect(rig.handle.addr);
        assert_eq!(until_closed(&mut a), KICKED_MESSAGE);
        exchange(&mut b, &mut dev);
        rig.handle.stop("test over");
    }

    #[test]
    fn a_client_that_leaves_mid_write_frees_the_port() {
        let rig = rig(Busy::Reject, Protocol::Raw);
        let mut dev = device(&rig);
        let mut a = connect(rig.handle.addr);
        exchange(&mut a, &mut dev);
        // More than the device takes at once, then gone without reading anything.
        a.write_all(&vec![b'x'; 256 * 1024]).unwrap();
        drop(a);
        // Its bytes still drain to the device; meanwhile the port is busy. Once the loop has
        // seen the close, the next client is served (every wait here is bounded).
        dev.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let deadline = Instant::now() + WAIT;
        let mut chunk = vec![0u8; 64 * 1024];
        let mut b = loop {
            assert!(Instant::now() < deadline, "the port was never freed");
            while dev.read(&mut chunk).is_ok_and(|n| n > 0) {}
            let mut b = connect(rig.handle.addr);
            b.write_all(b"!").unwrap();
            b.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let mut first = [0u8; 1];
            match b.read(&mut first) {
                Ok(1) => assert_eq!(first[0], BUSY_MESSAGE[0]),
                _ => break b,
            }
        };
        dev.set_read_timeout(Some(WAIT)).unwrap();
        b.set_read_timeout(Some(WAIT)).unwrap();
        // The newcomer's byte, after whatever was left of the first client's.
        let mut got = Vec::new();
        while !got.ends_with(b"!") {
            let n = dev.read(&mut chunk).unwrap();
            assert!(n > 0, "the device end closed");
            got.extend_from_slice(&chunk[..n]);
        }
        assert!(got.iter().all(|&c| c == b'x' || c == b'!'));
        exchange(&mut b, &mut dev);
        rig.handle.stop("test over");
    }

    #[test]
    fn device_loss_closes_the_client_and_the_device_comes_back() {
        let rig = rig(Busy::Reject, Protocol::Raw);
        let mut dev = device(&rig);
        let mut a = connect(rig.handle.addr);
        exchange(&mut a, &mut dev);
        drop(dev);
        assert!(until_closed(&mut a).is_empty(), "closed with the device");
        let mut dev = device(&rig);
        assert_eq!(rig.record.lock().unwrap().opens, 2);
        let mut b = connect(rig.handle.addr);
        exchange(&mut b, &mut dev);
        rig.handle.stop("test over");
    }

    #[test]
    fn a_setting_follows_the_data_queued_before_it_and_a_stalled_device_stalls_nothing_else() {
        let rig = rig(Busy::Reject, Protocol::Rfc2217);
        let mut dev = device(&rig);
        let mut a = connect(rig.handle.addr);
        // Our offers, then data the device will not take yet, then SET-BAUD 921600.
        let mut offers = Vec::new();
        Session::new("t", String::new(), LineSettings::default()).start(&mut offers);
        assert_eq!(read_n(&mut a, offers.len()), offers);
        let data = vec![b'd'; 64 * 1024];
        let mut baud = Vec::new();
        telnet::subnegotiation(44, &[1, 0, 0x0E, 0x10, 0x00], &mut baud);
        a.write_all(&[&data[..], &baud].concat()).unwrap();
        // The device is not read: the setting waits. The loop does not: a second client is
        // answered at once.
        let t0 = Instant::now();
        let mut b = connect(rig.handle.addr);
        assert_eq!(until_closed(&mut b), BUSY_MESSAGE);
        assert!(t0.elapsed() < DRAIN_WAIT, "the loop waited on the device");
        assert!(
            rig.record.lock().unwrap().applied.is_empty(),
            "the baud waits for the data"
        );
        // Now the device takes everything: the baud changes after the last byte.
        assert_eq!(read_n(&mut dev, data.len()), data);
        let mut answer = Vec::new();
        telnet::subnegotiation(44, &[101, 0, 0x0E, 0x10, 0x00], &mut answer);
        assert_eq!(read_n(&mut a, answer.len()), answer);
        let applied = rig.record.lock().unwrap().applied.clone();
        assert_eq!(applied.last(), Some(&(921_600, data.len())), "{applied:?}");
        rig.handle.stop("test over");
    }

    /// Read what `client` has been sent until it holds `want` (every wait bounded).
    fn read_until(client: &mut impl Read, want: &[u8]) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.windows(want.len()).any(|w| w == want) {
            let n = client.read(&mut buf).expect("output within the wait");
            assert!(n > 0, "closed before {want:?}; got {got:?}");
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    #[test]
    fn shared_a_newcomer_takes_control_observers_see_output_and_control_comes_back() {
        let rig = rig(Busy::Share, Protocol::Raw);
        let mut dev = device(&rig);
        let mut a = connect(rig.handle.addr);
        exchange(&mut a, &mut dev);
        let mut b = connect(rig.handle.addr);
        rig.wait_clients(|c| c.len() == 2);
        // The first client wrote a moment ago: the newcomer waits until it has been idle,
        // then it is in control; the first client observes: both get the output.
        rig.wait_control(&b);
        exchange(&mut b, &mut dev);
        assert_eq!(read_n(&mut a, 4), b"pong");
        // What the observer writes never reaches the device; it is counted.
        a.write_all(b"ignored").unwrap();
        rig.wait_clients(|c| c.len() == 2 && c[1] == (Role::Observe, 7, 0));
        b.write_all(b"mine").unwrap();
        assert_eq!(read_n(&mut dev, 4), b"mine", "only the controller's bytes");
        // The newcomer leaves: the first client is in control again.
        drop(b);
        rig.wait_clients(|c| c.len() == 1);
        exchange(&mut a, &mut dev);
        rig.handle.stop("test over");
    }

    #[test]
    fn shared_a_flash_is_never_interrupted_and_its_traffic_is_for_the_flasher_alone() {
        let rig = rig(Busy::Share, Protocol::Raw);
        let mut dev = device(&rig);
        let mut flasher = connect(rig.handle.addr);
        // esptool's SYNC: a loader session starts (the bridge enters the bootloader, then
        // passes the SYNC on).
        // The first is held while the chip resets; like esptool, send one every 100 ms
        // until one reaches it.
        let sync = crate::protocol::esp::SYNC_FRAME;
        dev.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut got = Vec::new();
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline && !got.windows(sync.len()).any(|w| w == sync) {
            flasher.write_all(&sync).unwrap();
            let mut buf = [0u8; 256];
            while let Ok(n) = dev.read(&mut buf) {
                got.extend_from_slice(&buf[..n]);
            }
        }
        assert!(
            got.windows(sync.len()).any(|w| w == sync),
            "no SYNC reached the chip"
        );
        // Whatever else is in flight (a second SYNC) arrives before the next frame.
        dev.set_read_timeout(Some(WAIT)).unwrap();
        flasher.write_all(b"\xc0end\xc0").unwrap();
        read_until(&mut dev, b"\xc0end\xc0");
        let mut monitor = connect(rig.handle.addr);
        rig.wait_clients(|c| c.len() == 2);
        // The newcomer waits: the flasher keeps control, and the chip's answers reach it
        // alone.
        flasher.write_all(b"\xc0frame\xc0").unwrap();
        assert_eq!(read_n(&mut dev, 7), b"\xc0frame\xc0");
        monitor.write_all(b"typed").unwrap();
        dev.write_all(b"\xc0\x01\x08answer\xc0").unwrap();
        assert_eq!(read_n(&mut flasher, 10), b"\xc0\x01\x08answer\xc0");
        // The flasher is done: the monitor takes control and sees what comes next, and
        // nothing of the flash.
        drop(flasher);
        rig.wait_clients(|c| c.len() == 1);
        dev.write_all(b"boot log").unwrap();
        assert_eq!(read_n(&mut monitor, 8), b"boot log");
        monitor.write_all(b"key").unwrap();
        let mut got = Vec::new();
        while !got.ends_with(b"key") {
            got.extend(read_n(&mut dev, 1));
        }
        assert!(
            !got.windows(5).any(|w| w == b"typed"),
            "an observer's bytes leaked: {got:?}"
        );
        rig.handle.stop("test over");
    }

    #[test]
    fn shared_at_most_max_clients_and_a_slow_observer_slows_nothing() {
        let rig = rig_with(Busy::Share, Protocol::Raw, 2);
        let mut dev = device(&rig);
        // The first client will observe and never read: the newcomer takes control.
        let slow = connect(rig.handle.addr);
        rig.wait_clients(|c| c.len() == 1);
        let mut a = connect(rig.handle.addr);
        rig.wait_control(&a);
        exchange(&mut a, &mut dev);
        let mut third = connect(rig.handle.addr);
        assert_eq!(until_closed(&mut third), BUSY_MESSAGE);
        // More device output than the kernel can buffer towards the observer (the server's
        // send buffer grows up to tcp_wmem's maximum; the observer's receive buffer, while it
        // does not read, stays below rmem_default): the controller gets all of it, in
        // order, while the observer that does not read loses what it cannot take.
        let chunk: Vec<u8> = (0..=255u8).cycle().take(64 * 1024).collect();
        let kernel_max = |f: &str| {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            let max = text.split_whitespace().last().and_then(|v| v.parse().ok());
            max.unwrap_or(4 << 20)
        };
        let buffered: usize = kernel_max("/proc/sys/net/ipv4/tcp_wmem")
            + kernel_max("/proc/sys/net/core/rmem_default");
        let chunks = (2 * buffered / chunk.len()).max(64);
        let writer = {
            let mut dev = dev.try_clone().unwrap();
            let chunk = chunk.clone();
            thread::spawn(move || {
                for _ in 0..chunks {
                    dev.write_all(&chunk).unwrap();
                }
            })
        };
        for _ in 0..chunks {
            assert_eq!(read_n(&mut a, chunk.len()), chunk);
        }
        writer.join().unwrap();
        let clients = rig.clients();
        assert_eq!(clients[0].0, Role::Control);
        assert_eq!(clients[1].0, Role::Observe);
        assert!(clients[1].2 > 0, "the observer missed output: {clients:?}");
        drop(slow);
        rig.handle.stop("test over");
    }
}
