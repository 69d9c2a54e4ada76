//! The per-device thread: one `poll()` over the listener, the client socket, the device and
//! a wake fd; one controlling client at a time; the device stays open across clients.
//!
//! Buffers are bounded both ways. A slow client fills `to_client`, which stops us reading
//! the device (back-pressure lands in the device's kernel buffer, exactly as with a slow
//! local reader); a fast client fills `to_device`, which stops us reading the socket.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::socket::{setsockopt, sockopt};

use crate::daemon::assign::DeviceKey;
use crate::daemon::config::{After, Busy, DevicePath, DeviceSpec, Protocol, ResetKind};
use crate::daemon::registry::{ClientInfo, DeviceState, LogRing, Registry, Stats};
use crate::device::gpio::GpioWired;
use crate::device::{Device, Tty};
use crate::protocol::line::{LineSettings, Lines, ModemStatus, Purge};
use crate::protocol::reset::{Policy, ResetError, ResetTo, Resetter};
use crate::protocol::session::{Port, Session};

/// Stop reading the device once this much escaped output waits for the client.
const CLIENT_HIGH_WATER: usize = 64 * 1024;
/// Stop reading the client once this much data waits for the device.
const DEVICE_HIGH_WATER: usize = 16 * 1024;
const READ_CHUNK: usize = 16 * 1024;
/// How often modem lines (CTS/DSR/RI/CD) are checked while a client is connected.
const MODEM_POLL: Duration = Duration::from_secs(1);
/// Re-open back-off for a device that cannot be opened (first try, then doubling).
const REOPEN_MIN: Duration = Duration::from_millis(500);
/// Right after a device appears, udev may still be setting its group and mode: try often
/// (and quietly) for a while, so it is served within a few hundred ms of becoming openable
/// even when no inotify event says so.
const REOPEN_EAGER: Duration = Duration::from_millis(25);
const REOPEN_EAGER_CAP: Duration = Duration::from_millis(100);
const REOPEN_EAGER_FOR: Duration = Duration::from_secs(5);
const REOPEN_MAX: Duration = Duration::from_secs(30);
/// Re-open cadence while a vanished device may be re-enumerating.
const REOPEN_LOST: Duration = Duration::from_millis(50);
/// How long a settings change may wait for queued client data to reach the device first.
const DRAIN_BEFORE_APPLY: Duration = Duration::from_secs(2);

const BUSY_MESSAGE: &[u8] = b"Port already in use\r\n";
const KICKED_MESSAGE: &[u8] = b"kicked off, new user is coming\r\n";
const NO_DEVICE_MESSAGE: &[u8] = b"Port's device is not available\r\n";

/// Requests from other threads, delivered through the wake fd.
#[derive(Debug)]
pub(crate) enum BridgeCommand {
    /// Restore the device, close the client, end the thread.
    Shutdown,
    /// Reset the chip through the device's reset policy; the result is sent back.
    Reset(ResetTo, mpsc::Sender<Result<(), ResetError>>),
    /// The device is back under another node (USB re-enumeration): open that one.
    Replace(DevicePath),
    /// Try to open the device now (its node appeared or its permissions changed).
    Retry,
    /// Close the client, if any, with this reason.
    Disconnect(String),
    /// The device node was removed (the supervisor saw it go).
    Gone,
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
}

/// How another thread talks to a running bridge.
pub(crate) struct BridgeHandle {
    pub(crate) name: String,
    pub(crate) addr: SocketAddr,
    tx: mpsc::Sender<BridgeCommand>,
    wake: Arc<EventFd>,
    thread: thread::JoinHandle<()>,
}

impl BridgeHandle {
    pub(crate) fn send(&self, cmd: BridgeCommand) {
        if self.tx.send(cmd).is_ok() {
            let _ = self.wake.write(1);
        }
    }

    /// Reset the device's chip through its reset policy. Returns once the sequence has
    /// started (it runs on in the bridge thread); errors if the bridge does not answer.
    pub(crate) fn reset(&self, to: ResetTo) -> Result<(), String> {
        let (tx, rx) = mpsc::channel();
        self.send(BridgeCommand::Reset(to, tx));
        match rx.recv_timeout(Duration::from_secs(2)) {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => Err(format!("{}: the bridge did not answer", self.name)),
        }
    }

    pub(crate) fn join(self) {
        let _ = self.thread.join();
    }
}

/// Start a bridge thread for `spec` on an already bound listener.
pub(crate) fn spawn(
    spec: DeviceSpec,
    listener: TcpListener,
    shared: Shared,
) -> io::Result<BridgeHandle> {
    let name = spec.display_name();
    let addr = listener.local_addr()?;
    let wake = Arc::new(EventFd::from_flags(
        EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC,
    )?);
    let (tx, rx) = mpsc::channel();
    let policy = shared.policy;
    info!(
        "{name} ({}) listening on {addr}, reset policy {policy:?}",
        spec.path
    );
    let mut bridge = Bridge {
        name: name.clone(),
        configured: LineSettings {
            baud: spec.baud,
            ..LineSettings::default()
        },
        spec,
        listener,
        wake: wake.clone(),
        commands: rx,
        device: None,
        lines: LineDriver::new(policy, shared.stats.clone()),
        reopen_at: shared.open_after,
        reopen_delay: REOPEN_MIN,
        eager_delay: REOPEN_EAGER / 2,
        ever_opened: false,
        lost_since: None,
        dropped_while_lost: 0,
        shared,
        client: None,
        to_client: Vec::with_capacity(CLIENT_HIGH_WATER),
        to_device: Vec::with_capacity(DEVICE_HIGH_WATER),
        buf: vec![0; READ_CHUNK].into_boxed_slice(),
    };
    let thread = thread::Builder::new()
        .name(format!("bridge {name}"))
        .spawn(move || bridge.run())?;
    Ok(BridgeHandle {
        name,
        addr,
        tx,
        wake,
        thread,
    })
}

struct Client {
    stream: TcpStream,
    addr: SocketAddr,
    since: Instant,
    session: Session,
    next_modem_poll: Instant,
    bytes_in: u64,
    bytes_out: u64,
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
    /// The device vanished while a client was connected; the client waits for it.
    lost_since: Option<Instant>,
    dropped_while_lost: u64,
    device: Option<Box<dyn Device>>,
    /// The device's reset policy and any sequence in progress; outlives clients.
    lines: LineDriver,
    reopen_at: Instant,
    reopen_delay: Duration,
    eager_delay: Duration,
    /// The device has been open once; later failures are real problems, logged as such.
    ever_opened: bool,
    client: Option<Client>,
    /// Telnet-escaped device output and session answers, not yet sent to the client.
    to_client: Vec<u8>,
    /// Client data, not yet written to the device.
    to_device: Vec<u8>,
    buf: Box<[u8]>,
}

enum Stop {
    Shutdown,
}

impl Bridge {
    fn run(&mut self) {
        loop {
            if self.device.is_none() && Instant::now() >= self.reopen_at {
                self.open_device();
            }
            match self.turn() {
                Ok(()) => {}
                Err(Stop::Shutdown) => break,
            }
        }
        self.drop_client("server shutting down");
        debug!("{}: bridge thread done", self.name);
    }

    fn open_device(&mut self) {
        let mut result: io::Result<Box<dyn Device>> = match &self.spec.path {
            DevicePath::Tty(p) => Tty::open(p, &self.configured).map(|d| Box::new(d) as _),
            DevicePath::Sim { board, flash_file } => {
                open_sim(*board, flash_file.clone(), &self.name, &self.configured)
            }
        };
        if self.spec.reset == ResetKind::Gpio {
            let gpio = self.spec.gpio.clone().unwrap_or_default();
            let consumer = format!("serialhub {}", self.name);
            result = result.and_then(|d| Ok(Box::new(GpioWired::new(d, gpio, &consumer)?) as _));
        }
        match result {
            Ok(mut d) => {
                info!(
                    "{}: opened {} at {}",
                    self.name, self.spec.path, self.configured
                );
                self.lines =
                    LineDriver::new(self.lines.resetter.policy(), self.shared.stats.clone());
                self.reopen_delay = REOPEN_MIN;
                self.ever_opened = true;
                if let (Some(c), Some(since)) = (&self.client, self.lost_since.take()) {
                    // Re-enumerated (a native-USB chip resetting): the client carries on.
                    let s = c.session.settings();
                    if s != self.configured {
                        if let Err(e) = d.apply(&s) {
                            warn!("{}: cannot re-apply {s}: {e}", self.name);
                        }
                    }
                    info!(
                        "{}: device is back after {:.2} s; client {} carries on at {s}{}",
                        self.name,
                        since.elapsed().as_secs_f32(),
                        c.addr,
                        if self.dropped_while_lost > 0 {
                            format!(
                                " ({} bytes it sent meanwhile were dropped)",
                                self.dropped_while_lost
                            )
                        } else {
                            String::new()
                        }
                    );
                    self.dropped_while_lost = 0;
                }
                self.device = Some(d);
                let state = if self.client.is_some() {
                    DeviceState::Connected
                } else {
                    DeviceState::Idle
                };
                self.shared.registry.update(&self.shared.key, |e| {
                    e.state = state;
                    e.tty = self.spec.path.to_string();
                });
            }
            Err(e) if self.lost_since.is_some() => {
                debug!("{}: {} not back yet: {e}", self.name, self.spec.path);
                self.reopen_at = Instant::now() + REOPEN_LOST;
            }
            Err(e) if self.shared.open_after.elapsed() < REOPEN_EAGER_FOR && !self.ever_opened => {
                if self.eager_delay < REOPEN_EAGER {
                    error!(
                        "{}: cannot open {}: {e}; retrying (check that it is plugged in and that this user may open it)",
                        self.name, self.spec.path
                    );
                } else {
                    debug!("{}: {} not openable yet: {e}", self.name, self.spec.path);
                }
                self.eager_delay = (self.eager_delay * 2).min(REOPEN_EAGER_CAP);
                self.reopen_at = Instant::now() + self.eager_delay;
            }
            Err(e) => {
                error!(
                    "{}: cannot open {}: {e}; retrying in {:.1} s (check that it is plugged in and that this user may open it)",
                    self.name,
                    self.spec.path,
                    self.reopen_delay.as_secs_f32()
                );
                self.shared.registry.set_state(
                    &self.shared.key,
                    DeviceState::Error(format!("cannot open {}: {e}", self.spec.path)),
                );
                self.reopen_at = Instant::now() + self.reopen_delay;
                self.reopen_delay = (self.reopen_delay * 2).min(REOPEN_MAX);
            }
        }
    }

    /// One round of poll and the work it reveals.
    fn turn(&mut self) -> Result<(), Stop> {
        let suspended = self.client.as_ref().is_some_and(|c| c.session.suspended());
        let want_device_in = self.to_client.len() < CLIENT_HIGH_WATER && !suspended;
        let paused = self
            .client
            .as_ref()
            .is_some_and(|c| c.session.client_paused());
        let want_client_in = self.to_device.len() < DEVICE_HIGH_WATER && !paused;

        // A fixed array, no allocation per round: absent slots poll the wake fd for nothing.
        let idle = || PollFd::new(self.wake.as_fd(), PollFlags::empty());
        let device_fd = self.device.as_ref().map(|dev| {
            let mut ev = PollFlags::empty();
            if want_device_in {
                ev |= PollFlags::POLLIN;
            }
            if !self.to_device.is_empty() {
                ev |= PollFlags::POLLOUT;
            }
            PollFd::new(dev.fd(), ev)
        });
        let client_fd = self.client.as_ref().map(|c| {
            let mut ev = PollFlags::empty();
            if want_client_in {
                ev |= PollFlags::POLLIN;
            }
            if !self.to_client.is_empty() {
                ev |= PollFlags::POLLOUT;
            }
            PollFd::new(c.stream.as_fd(), ev)
        });
        let mut fds = [
            PollFd::new(self.listener.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.wake.as_fd(), PollFlags::POLLIN),
            device_fd.unwrap_or_else(idle),
            client_fd.unwrap_or_else(idle),
        ];
        let timeout = self.next_deadline().map(|d| {
            let ms = d.saturating_duration_since(Instant::now()).as_millis();
            PollTimeout::try_from(ms.min(60_000) as i32 + 1).unwrap_or(PollTimeout::MAX)
        });
        match poll(&mut fds, timeout.unwrap_or(PollTimeout::NONE)) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => return Ok(()),
            Err(e) => {
                error!("{}: poll failed: {e}", self.name);
                thread::sleep(Duration::from_millis(100));
                return Ok(());
            }
        }
        let [listener_ready, wake_ready, dev_ready, client_ready] =
            fds.map(|f| f.revents().unwrap_or(PollFlags::empty()));

        if wake_ready.contains(PollFlags::POLLIN) {
            let _ = self.wake.read();
            while let Ok(cmd) = self.commands.try_recv() {
                self.command(cmd)?;
            }
        }
        if !dev_ready.is_empty() {
            self.on_device(dev_ready);
        }
        if !client_ready.is_empty() {
            self.on_client(client_ready);
        }
        if listener_ready.contains(PollFlags::POLLIN) {
            self.accept();
        }
        self.run_reset_steps();
        self.session_timer();
        self.poll_modem();
        if let Some(t) = self.lost_since {
            if t.elapsed() >= self.shared.grace {
                self.lost_since = None;
                self.drop_client(&format!(
                    "the device did not come back within {:.1} s",
                    self.shared.grace.as_secs_f32()
                ));
            }
        }
        Ok(())
    }

    fn command(&mut self, cmd: BridgeCommand) -> Result<(), Stop> {
        match cmd {
            BridgeCommand::Shutdown => return Err(Stop::Shutdown),
            BridgeCommand::Reset(to, reply) => {
                let result = match self.device.as_deref_mut() {
                    Some(dev) => self.lines.reset(&self.name, to, dev),
                    None => Err(ResetError::NoDevice),
                };
                let _ = reply.send(result);
            }
            BridgeCommand::Replace(path) => {
                info!("{}: device now at {path}", self.name);
                self.spec.path = path;
                self.device = None;
                self.reopen_at = Instant::now();
            }
            BridgeCommand::Retry => {
                if self.device.is_none() {
                    self.reopen_at = self
                        .reopen_at
                        .min(Instant::now())
                        .max(self.shared.open_after);
                }
            }
            BridgeCommand::Disconnect(why) => self.drop_client(&why),
            BridgeCommand::Gone => {
                if self.device.is_some() {
                    self.device_lost("unplugged".into());
                }
            }
        }
        Ok(())
    }

    fn next_deadline(&self) -> Option<Instant> {
        let reopen = self.device.is_none().then_some(self.reopen_at);
        let modem = self.client.as_ref().map(|c| c.next_modem_poll);
        let grace = self.lost_since.map(|t| t + self.shared.grace);
        let session = self.client.as_ref().and_then(|c| c.session.deadline());
        [
            reopen,
            modem,
            grace,
            session,
            self.lines.resetter.deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Play the steps of a reset sequence that are due, each as its own line change; tell
    /// the session when one has finished (an ESP raw session waits for its bootloader entry).
    fn run_reset_steps(&mut self) {
        let Some(dev) = self.device.as_deref_mut() else {
            return;
        };
        self.lines.run_due(&self.name, dev);
        if let (Some(to), Some(c)) = (self.lines.finished.take(), self.client.as_mut()) {
            let mut port = BridgePort {
                device: dev,
                to_device: &mut self.to_device,
                lines: &mut self.lines,
                name: &self.name,
            };
            c.session.reset_done(to, Instant::now(), &mut port);
            self.flush_device();
        }
    }

    /// The session's own timers: protocol detection, the ESP watch's waits.
    fn session_timer(&mut self) {
        let now = Instant::now();
        let (Some(c), Some(dev)) = (self.client.as_mut(), self.device.as_deref_mut()) else {
            return;
        };
        if c.session.deadline().is_none_or(|t| t > now) {
            return;
        }
        let mut port = BridgePort {
            device: dev,
            to_device: &mut self.to_device,
            lines: &mut self.lines,
            name: &self.name,
        };
        c.session.on_timer(now, &mut port, &mut self.to_client);
        self.flush_device();
        self.flush_client();
    }

    fn accept(&mut self) {
        loop {
            let (mut stream, addr) = match self.listener.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    warn!("{}: accept failed: {e}", self.name);
                    return;
                }
            };
            if let Some(c) = &mut self.client {
                if self.spec.busy == Busy::Reject {
                    info!(
                        "{}: refused {addr}: port in use by {} (one controlling client per device)",
                        self.name, c.addr
                    );
                    let _ = stream.write(BUSY_MESSAGE);
                    continue;
                }
                // Best effort: the kicked client gets the reason if its socket has room.
                let _ = c.stream.write(KICKED_MESSAGE);
                self.drop_client(&format!("kicked off by {addr} (busy = \"kick\")"));
            }
            if self.device.is_none() {
                info!(
                    "{}: refused {addr}: device {} is not open",
                    self.name, self.spec.path
                );
                let _ = stream.write(NO_DEVICE_MESSAGE);
                continue;
            }
            if let Err(e) = tune_socket(&stream) {
                warn!("{}: cannot set socket options for {addr}: {e}", self.name);
            }
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
            if self.lines.resetter.policy().is_esp() {
                session = session.watch_esp(self.lines.in_loader);
            }
            self.to_client.clear();
            self.to_device.clear();
            session.start(&mut self.to_client);
            info!("{}: client {addr} connected", self.name);
            Stats::add(&self.shared.stats.connects, 1);
            self.shared.registry.update(&self.shared.key, |e| {
                e.state = DeviceState::Connected;
                e.client = Some(ClientInfo {
                    addr,
                    since: Instant::now(),
                });
            });
            self.client = Some(Client {
                stream,
                addr,
                since: Instant::now(),
                session,
                next_modem_poll: Instant::now() + MODEM_POLL,
                bytes_in: 0,
                bytes_out: 0,
            });
            self.flush_client();
        }
    }

    fn on_device(&mut self, ev: PollFlags) {
        if ev.contains(PollFlags::POLLOUT) {
            self.flush_device();
        }
        if ev.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
            let Some(dev) = self.device.as_mut() else {
                return;
            };
            match dev.read(&mut self.buf) {
                Ok(0) => self.device_lost("end of file".into()),
                Ok(n) => {
                    if let Ok(mut log) = self.shared.log.lock() {
                        log.push(&self.buf[..n]);
                    }
                    if let Some(c) = &mut self.client {
                        c.bytes_out += n as u64;
                        Stats::add(&self.shared.stats.bytes_to_client, n as u64);
                        let mut port = BridgePort {
                            device: dev.as_mut(),
                            to_device: &mut self.to_device,
                            lines: &mut self.lines,
                            name: &self.name,
                        };
                        c.session.device_data(
                            &self.buf[..n],
                            Instant::now(),
                            &mut port,
                            &mut self.to_client,
                        );
                        self.flush_device();
                        self.flush_client();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => self.device_lost(e.to_string()),
            }
        }
    }

    fn device_lost(&mut self, why: String) {
        self.device = None;
        self.to_device.clear();
        self.shared
            .registry
            .set_state(&self.shared.key, DeviceState::Starting);
        match &self.client {
            Some(c) if !self.shared.grace.is_zero() => {
                // Native-USB chips vanish for a moment when they reset; keep the client.
                warn!(
                    "{}: device {} went away ({why}); keeping client {} for {:.1} s in case it comes back",
                    self.name,
                    self.spec.path,
                    c.addr,
                    self.shared.grace.as_secs_f32()
                );
                self.lost_since = Some(Instant::now());
                self.reopen_at = Instant::now() + REOPEN_LOST;
            }
            _ => {
                error!(
                    "{}: device {} failed: {why}; closing it and retrying",
                    self.name, self.spec.path
                );
                self.reopen_at = Instant::now() + self.reopen_delay;
                self.drop_client("the device went away");
            }
        }
    }

    fn on_client(&mut self, ev: PollFlags) {
        if ev.contains(PollFlags::POLLOUT) {
            self.flush_client();
        }
        if !ev.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
            return;
        }
        let Some(c) = self.client.as_mut() else {
            return;
        };
        let n = match c.stream.read(&mut self.buf) {
            Ok(0) => return self.drop_client("client closed the connection"),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return,
            Err(e) => return self.drop_client(&format!("connection error: {e}")),
        };
        c.bytes_in += n as u64;
        Stats::add(&self.shared.stats.bytes_to_device, n as u64);
        let now = Instant::now();
        let result = match self.device.as_deref_mut() {
            Some(dev) => {
                let mut port = BridgePort {
                    device: dev,
                    to_device: &mut self.to_device,
                    lines: &mut self.lines,
                    name: &self.name,
                };
                c.session
                    .on_client_bytes(&self.buf[..n], now, &mut port, &mut self.to_client)
            }
            None => {
                // The device is re-enumerating: answer the protocol, remember settings (they
                // are re-applied when it is back), drop the data.
                let mut port = LostPort {
                    dropped: &mut self.dropped_while_lost,
                };
                c.session
                    .on_client_bytes(&self.buf[..n], now, &mut port, &mut self.to_client)
            }
        };
        if let Err(e) = result {
            return self.drop_client(&format!("disconnected: {e}"));
        }
        self.flush_device();
        self.flush_client();
    }

    fn flush_client(&mut self) {
        let Some(c) = self.client.as_mut() else {
            self.to_client.clear();
            return;
        };
        while !self.to_client.is_empty() {
            match c.stream.write(&self.to_client) {
                Ok(n) => {
                    self.to_client.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.drop_client(&format!("connection error: {e}")),
            }
        }
    }

    fn flush_device(&mut self) {
        let Some(dev) = self.device.as_mut() else {
            self.to_device.clear();
            return;
        };
        while !self.to_device.is_empty() {
            match dev.write(&self.to_device) {
                Ok(n) => {
                    self.to_device.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.device_lost(e.to_string()),
            }
        }
    }

    fn poll_modem(&mut self) {
        let (Some(c), Some(dev)) = (self.client.as_mut(), self.device.as_deref_mut()) else {
            return;
        };
        if Instant::now() < c.next_modem_poll {
            return;
        }
        c.next_modem_poll = Instant::now() + MODEM_POLL;
        let mut port = BridgePort {
            device: dev,
            to_device: &mut self.to_device,
            lines: &mut self.lines,
            name: &self.name,
        };
        c.session.poll_modem(&mut port, &mut self.to_client);
        self.flush_client();
    }

    /// End the client's session: restore what it changed, release both lines.
    fn drop_client(&mut self, why: &str) {
        let Some(c) = self.client.take() else {
            return;
        };
        info!(
            "{}: client {} left ({why}) after {:.1} s, {} bytes in, {} bytes out",
            self.name,
            c.addr,
            c.since.elapsed().as_secs_f32(),
            c.bytes_in,
            c.bytes_out
        );
        self.to_client.clear();
        self.to_device.clear();
        if let Some(dev) = self.device.as_mut() {
            if c.session.settings() != self.configured {
                if let Err(e) = dev.apply(&self.configured) {
                    warn!("{}: cannot restore {}: {e}", self.name, self.configured);
                }
            }
            let _ = dev.set_break(false);
        }
        let local = self.lines.resetter.client_left(Instant::now());
        if let Some(dev) = self.device.as_deref_mut() {
            self.lines.apply(&self.name, local, dev);
            // An ESP raw session that entered the bootloader owes the chip what esptool's
            // `--after hard-reset` would have done, which it cannot do over a socket.
            if let Some((entered, in_loader)) = c.session.esp_state() {
                if entered && self.spec.after == After::Reset {
                    if let Err(e) = self.lines.reset(&self.name, ResetTo::App, dev) {
                        warn!(
                            "{}: cannot reset the chip into its application: {e}",
                            self.name
                        );
                    }
                } else {
                    self.lines.in_loader = in_loader;
                }
            }
        }
        self.lost_since = None;
        let state = if self.device.is_some() {
            DeviceState::Idle
        } else {
            DeviceState::Starting
        };
        self.shared.registry.update(&self.shared.key, |e| {
            e.state = state;
            e.client = None;
        });
    }
}

/// The reset policy a device gets: its `reset` key, or for `auto` a guess from its USB ids.
pub(crate) fn policy_for(spec: &DeviceSpec, usb: Option<crate::daemon::identity::UsbId>) -> Policy {
    let esp = Policy::Esp {
        esp32r0: spec.esp32r0,
    };
    match spec.reset {
        ResetKind::Esp | ResetKind::Gpio => esp,
        ResetKind::UsbJtag => Policy::UsbJtag,
        ResetKind::Passthrough => Policy::Passthrough,
        ResetKind::None => Policy::None,
        ResetKind::Auto => match &spec.path {
            // sim-gpio's GPIO wiring is the simulator's own (`sim::SimGpioWired`).
            DevicePath::Sim { board, .. } => match board {
                crate::sim::SimBoard::UsbJtag => Policy::UsbJtag,
                crate::sim::SimBoard::DevKit | crate::sim::SimBoard::Gpio => esp,
            },
            DevicePath::Tty(_) => match usb {
                Some(id) if id.is_esp_usb_jtag() => Policy::UsbJtag,
                Some(id) if id.is_uart_bridge() => esp,
                _ => Policy::Passthrough,
            },
        },
    }
}

fn open_sim(
    board: crate::sim::SimBoard,
    flash_file: Option<std::path::PathBuf>,
    name: &str,
    settings: &LineSettings,
) -> io::Result<Box<dyn Device>> {
    let (mut sim, _) = crate::sim::open(crate::sim::SimOptions {
        flash_file,
        board,
        name: Some(name.to_owned()),
        ..Default::default()
    })?;
    sim.apply(settings)?;
    Ok(sim)
}

/// The device's reset policy plus the record of the sequence in progress: every line change
/// it makes reaches the device as one call, and a finished sequence is logged with the
/// offsets at which each step actually happened (users and tests read the timings there).
struct LineDriver {
    resetter: Resetter,
    trace: Option<(ResetTo, Instant, String)>,
    stats: Arc<Stats>,
    /// The sequence that has just finished, for the session to hear of.
    finished: Option<ResetTo>,
    /// The chip is known to be in its loader: a bootloader entry finished and no line has
    /// moved since (or an ESP raw session left it there). The next raw session's SYNC then
    /// needs no reset.
    in_loader: bool,
}

impl LineDriver {
    fn new(policy: Policy, stats: Arc<Stats>) -> LineDriver {
        LineDriver {
            resetter: Resetter::new(policy),
            trace: None,
            stats,
            finished: None,
            in_loader: false,
        }
    }

    fn apply(&mut self, name: &str, lines: Option<Lines>, dev: &mut dyn Device) {
        let Some(lines) = lines else { return };
        let now = Instant::now();
        if self.trace.is_none() && self.resetter.busy().is_some() {
            self.trace = self.resetter.busy().map(|to| (to, now, String::new()));
        }
        if let Some((_, t0, steps)) = &mut self.trace {
            use std::fmt::Write as _;
            let _ = write!(
                steps,
                " {}{}@{:.1}ms",
                if lines.dtr { 'D' } else { 'd' },
                if lines.rts { 'R' } else { 'r' },
                now.duration_since(*t0).as_secs_f64() * 1e3
            );
        }
        if let Err(e) = dev.set_lines(lines) {
            debug!("{name}: cannot set DTR/RTS: {e}");
        }
        self.resetter.applied(now);
        self.in_loader = false;
        if self.resetter.busy().is_none() {
            if let Some((to, _, steps)) = self.trace.take() {
                info!("{name}: reset into {to:?} done, lines (D/R = asserted):{steps}");
                self.finished = Some(to);
                self.in_loader = to == ResetTo::Bootloader;
            }
        }
    }

    fn client_lines(&mut self, name: &str, lines: Lines, dev: &mut dyn Device) {
        let was_busy = self.resetter.busy();
        let en_low_since = self.resetter.en_low_since();
        let now = Instant::now();
        let local = self.resetter.client_lines(lines, now);
        if let (None, Some(to)) = (was_busy, self.resetter.busy()) {
            info!("{name}: client started a reset into {to:?}; playing it locally");
            Stats::add(&self.stats.resets, 1);
            // A bootloader entry usually starts from an EN-low the client already caused:
            // the trace starts there, so the log shows how long EN was really held low.
            self.trace = Some(match en_low_since {
                Some(t0) => (to, t0, " dR@0.0ms".to_string()),
                None => (to, now, String::new()),
            });
        }
        self.apply(name, local, dev);
    }

    fn reset(&mut self, name: &str, to: ResetTo, dev: &mut dyn Device) -> Result<(), ResetError> {
        let now = Instant::now();
        let first = self.resetter.reset(to, now)?;
        info!("{name}: reset into {to:?} requested by the server");
        Stats::add(&self.stats.resets, 1);
        self.trace = Some((to, now, String::new()));
        self.apply(name, first, dev);
        Ok(())
    }

    fn run_due(&mut self, name: &str, dev: &mut dyn Device) {
        let now = Instant::now();
        while let Some(lines) = self.resetter.due(now) {
            self.apply(name, Some(lines), dev);
        }
    }
}

/// Stands in for the device while it re-enumerates: settings are accepted (the session keeps
/// them and they are applied to the device when it is back), data is dropped and counted.
struct LostPort<'a> {
    dropped: &'a mut u64,
}

impl Port for LostPort<'_> {
    fn write(&mut self, data: &[u8]) {
        *self.dropped += data.len() as u64;
    }
    fn apply(&mut self, _: &LineSettings) -> io::Result<()> {
        Ok(())
    }
    fn set_lines(&mut self, _: Lines) -> io::Result<()> {
        Ok(())
    }
    fn set_break(&mut self, _: bool) -> io::Result<()> {
        Ok(())
    }
    fn purge(&mut self, _: Purge) -> io::Result<()> {
        Ok(())
    }
    fn modem_status(&mut self) -> io::Result<ModemStatus> {
        Ok(ModemStatus::default())
    }
    fn reset(&mut self, _: ResetTo) -> Result<(), ResetError> {
        Err(ResetError::NoDevice)
    }
}

/// TCP_NODELAY (every answer is latency-critical) and keepalive (about 10 s idle, then 3
/// probes 5 s apart) so a client that vanished without a FIN frees the port in ~25 s.
fn tune_socket(s: &TcpStream) -> io::Result<()> {
    s.set_nonblocking(true)?;
    s.set_nodelay(true)?;
    setsockopt(s, sockopt::KeepAlive, &true)?;
    setsockopt(s, sockopt::TcpKeepIdle, &10)?;
    setsockopt(s, sockopt::TcpKeepInterval, &5)?;
    setsockopt(s, sockopt::TcpKeepCount, &3)?;
    Ok(())
}

/// The session's view of the device: settings changes first push queued client data out,
/// so bytes the client wrote before a baud change leave at the old baud, as with a local port.
struct BridgePort<'a> {
    device: &'a mut dyn Device,
    to_device: &'a mut Vec<u8>,
    lines: &'a mut LineDriver,
    name: &'a str,
}

impl BridgePort<'_> {
    fn drain(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + DRAIN_BEFORE_APPLY;
        while !self.to_device.is_empty() {
            match self.device.write(self.to_device) {
                Ok(n) => {
                    self.to_device.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "device did not accept queued data",
                        ));
                    }
                    let mut fds = [PollFd::new(self.device.fd(), PollFlags::POLLOUT)];
                    let ms = PollTimeout::try_from(left.as_millis().min(1000) as i32)
                        .unwrap_or(PollTimeout::MAX);
                    let _ = poll(&mut fds, ms);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Port for BridgePort<'_> {
    fn write(&mut self, data: &[u8]) {
        self.to_device.extend_from_slice(data);
    }

    fn apply(&mut self, settings: &LineSettings) -> io::Result<()> {
        self.drain()?;
        self.device.apply(settings)
    }

    /// The client's lines go through the reset policy, which decides what the board sees.
    fn set_lines(&mut self, lines: Lines) -> io::Result<()> {
        self.drain()?;
        self.lines.client_lines(self.name, lines, self.device);
        Ok(())
    }

    fn set_break(&mut self, on: bool) -> io::Result<()> {
        self.drain()?;
        self.device.set_break(on)
    }

    fn purge(&mut self, which: Purge) -> io::Result<()> {
        if matches!(which, Purge::Output | Purge::Both) {
            self.to_device.clear();
        }
        self.device.purge(which)
    }

    fn modem_status(&mut self) -> io::Result<ModemStatus> {
        self.device.modem_status()
    }

    fn reset(&mut self, to: ResetTo) -> Result<(), ResetError> {
        self.lines.reset(self.name, to, self.device)
    }
}
