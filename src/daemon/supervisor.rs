//! The supervisor: the thread that performs the hotplug plan (daemon/plan.rs decides which
//! devices are served, on which ports, and what becomes of them). Fixed devices (config,
//! flags, the simulator) are started at once; hotplugged ones are found by a scan at start
//! and then by inotify on the device directory — no udev, no polling loop. This file keeps
//! the I/O: inotify and poll, the mailbox, sysfs look-ups, listeners and the stable-port
//! file, the registry and adverts, and spawning and stopping bridges (stops are signalled
//! together and joined with one deadline, daemon/stopping.rs).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::io;
use std::net::{IpAddr, TcpListener};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::{mpsc, Arc};
use std::time::Instant;

use inotify::{EventMask, Inotify, WatchMask};
use log::{error, info, log, warn};
use nix::poll::{PollFd, PollFlags};

use crate::daemon::assign::{Assignments, DeviceKey};
use crate::daemon::bridge::{self, BridgeCommand, BridgeHandle, Shared};
use crate::daemon::config::{Config, DeviceSpec};
use crate::daemon::control::{Command, Inbox, Reply, Request, RequestError};
use crate::daemon::identity::{self, UsbInfo};
use crate::daemon::lease::Leases;
use crate::daemon::mdns::{self, Adverts};
use crate::daemon::plan::{Decision, Identity, Plan, PortChoice, Serve, Shown, Start};
use crate::daemon::registry::{DeviceEntry, DeviceState, LogRing, Registry, LOG_RING_BYTES};
use crate::daemon::stopping::Stopping;
use crate::daemon::wait::poll_until;

/// Room for a burst of inotify events (each is 16 bytes plus the node's name).
const INOTIFY_BUFFER: usize = 4096;

/// A device the plan said to serve that could not be.
struct Failed {
    /// A fixed device (from the config or the command line), not a hotplugged node.
    fixed: bool,
    error: String,
}

pub(crate) struct Supervisor {
    config: Config,
    registry: Arc<Registry>,
    assignments: Assignments,
    /// Ports configured explicitly; never handed out by assignment.
    reserved: BTreeSet<u16>,
    watch: Option<Inotify>,
    plan: Plan,
    /// The running bridges (served devices, and parked ones waiting for their node).
    bridges: BTreeMap<DeviceKey, BridgeHandle>,
    /// Who holds which device (the portal changes it; the bridges read it).
    leases: Arc<Leases>,
    /// The mDNS responder: served devices are advertised, stopped ones withdrawn.
    adverts: Option<Adverts>,
    /// This machine's name in the advertised instance names.
    host: String,
}

impl Supervisor {
    pub(crate) fn new(
        config: Config,
        registry: Arc<Registry>,
        leases: Arc<Leases>,
        adverts: Option<Adverts>,
    ) -> Supervisor {
        let legacy = config
            .hotplug
            .enabled
            .then_some(config.hotplug.legacy_devices_conf.as_path());
        let assignments = Assignments::load(&config.state_file, config.base_port, legacy);
        let reserved = reserved(&config);
        let plan = Plan::new(config.hotplug.clone(), config.rules.clone());
        Supervisor {
            config,
            registry,
            assignments,
            reserved,
            watch: None,
            plan,
            bridges: BTreeMap::new(),
            leases,
            adverts,
            host: mdns::host_names().0,
        }
    }

    /// Devices from the config and the command line: bound up front. Every device that can
    /// be served is; the others are in the registry as errors and their messages returned
    /// (at start the daemon refuses to run with them, on reload they are logged).
    pub(crate) fn start_fixed(&mut self, specs: Vec<DeviceSpec>) -> Vec<String> {
        let sysfs = self.config.hotplug.sysfs.clone();
        let decisions = self
            .plan
            .fixed(Instant::now(), specs, &|p| identify(&sysfs, p));
        let failed = self.perform(decisions);
        failed.into_iter().map(|f| f.error).collect()
    }

    /// Perform what the plan decided, in order. A stop is signalled at once and joined,
    /// together with the stops next to it, before the next decision that is not a log line.
    fn perform(&mut self, decisions: Vec<Decision>) -> Vec<Failed> {
        let mut stopping = Stopping::new();
        let mut failed = Vec::new();
        for d in decisions {
            match d {
                Decision::Log(level, msg) => log!(level, "{msg}"),
                Decision::Stop { key, why } => {
                    if let Some(h) = self.bridges.remove(&key) {
                        if let Some(a) = &self.adverts {
                            a.withdraw(&key.to_string());
                        }
                        stopping.signal(h, why);
                    }
                }
                d => {
                    stopping.join();
                    if let Some(f) = self.perform_one(d) {
                        failed.push(f);
                    }
                }
            }
        }
        stopping.join();
        failed
    }

    fn perform_one(&mut self, d: Decision) -> Option<Failed> {
        let send = |key: &DeviceKey, cmd| {
            if let Some(h) = self.bridges.get(key) {
                h.send(cmd);
            }
        };
        match d {
            Decision::Serve(serve) => {
                let fixed = serve.node.is_none();
                if let Err(error) = self.start(serve) {
                    return Some(Failed { fixed, error });
                }
            }
            Decision::Park { key } => send(&key, BridgeCommand::Gone),
            Decision::Hand { key, path } => send(&key, BridgeCommand::Replace(path)),
            Decision::Retry { key } => send(&key, BridgeCommand::Retry),
            Decision::Disable { key, spec, usb } => {
                let port = self.port_known(&key, &spec);
                let entry = self.entry(&key, &spec, usb.as_ref(), port, DeviceState::Disabled);
                self.registry.upsert(entry);
            }
            Decision::Show { key, shown } => {
                let (state, clear) = match shown {
                    Shown::Absent => (DeviceState::Absent, true),
                    Shown::Stopped => (DeviceState::Disabled, true),
                    Shown::Flapping => (DeviceState::Flapping, false),
                    Shown::Cooled => (DeviceState::Absent, false),
                };
                self.registry.update(&key, |e| {
                    e.state = state;
                    if clear {
                        e.clients.clear();
                    }
                });
            }
            Decision::Rescan => self.scan(),
            Decision::Log(..) | Decision::Stop { .. } => unreachable!("performed in order"),
        }
        None
    }

    /// The port a device not being served shows: pinned, else assigned, else none yet.
    fn port_known(&self, key: &DeviceKey, spec: &DeviceSpec) -> u16 {
        spec.port.or_else(|| self.assignments.get(key)).unwrap_or(0)
    }

    /// The one way a device gets its listener: the port pinned in its config, else (the
    /// simulator) the first free one, else its stable assigned port.
    fn listen(&mut self, key: &DeviceKey, port: PortChoice) -> Result<TcpListener, String> {
        let ip = self.config.bind;
        match port {
            PortChoice::Pinned(p) => bind(ip, p).map_err(|e| {
                format!(
                    "cannot listen on {ip}:{p} for {key}: {e} (the port pinned in the config is taken: is another server using it? pick another `port`)"
                )
            }),
            PortChoice::Free => self.bind_free(),
            PortChoice::Stable => self.bind_assigned(key),
        }
    }

    fn bind_free(&self) -> Result<TcpListener, String> {
        let used: BTreeSet<u16> = self.bridges.values().map(|h| h.addr.port()).collect();
        for port in self.config.base_port..=u16::MAX {
            if used.contains(&port) || self.reserved.contains(&port) {
                continue;
            }
            match bind(self.config.bind, port) {
                Ok(l) => return Ok(l),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => {}
                Err(e) => return Err(format!("cannot listen on {}:{port}: {e}", self.config.bind)),
            }
        }
        Err(format!("no free TCP port from {}", self.config.base_port))
    }

    fn bind_assigned(&mut self, key: &DeviceKey) -> Result<TcpListener, String> {
        let port = self
            .assignments
            .assign(key, &self.reserved)
            .map_err(|e| format!("{key}: {e}"))?;
        bind(self.config.bind, port).map_err(|e| {
            format!(
                "cannot listen on {}:{port} for {key}: {e} (another program holds the port this device was assigned; free it, or pin the device to another port in the config)",
                self.config.bind
            )
        })
    }

    /// A registry entry for a device that is not (yet) served by a bridge.
    fn entry(
        &self,
        key: &DeviceKey,
        spec: &DeviceSpec,
        usb: Option<&UsbInfo>,
        port: u16,
        state: DeviceState,
    ) -> DeviceEntry {
        DeviceEntry {
            key: key.clone(),
            name: spec.display_name(),
            tty: spec.path.to_string(),
            usb: usb.cloned(),
            port,
            state,
            clients: Vec::new(),
            reset: spec.policy(usb.and_then(|u| u.id)),
            protocol: spec.protocol,
            stats: Arc::default(),
            log: Arc::new(std::sync::Mutex::new(LogRing::new(LOG_RING_BYTES))),
        }
    }

    /// Serve a device as the plan says: bind its listener, record it in the registry, start
    /// its bridge. A failure is logged, recorded in the registry as an error, told to the
    /// plan, and returned.
    fn start(&mut self, serve: Serve) -> Result<(), String> {
        let Serve {
            key,
            spec,
            usb,
            port,
            policy,
            grace,
            open_after,
            ..
        } = serve;
        let listener = self.listen(&key, port).and_then(|l| {
            let port = l.local_addr().map_err(|e| e.to_string())?.port();
            Ok((l, port))
        });
        let (listener, port) = match listener {
            Ok(x) => x,
            Err(e) => {
                error!("{key}: {e}");
                let port = self.port_known(&key, &spec);
                let entry = self.entry(
                    &key,
                    &spec,
                    usb.as_ref(),
                    port,
                    DeviceState::Error(e.clone()),
                );
                self.registry.upsert(entry);
                self.plan.serve_failed(&key);
                return Err(e);
            }
        };
        let entry = self.registry.upsert(self.entry(
            &key,
            &spec,
            usb.as_ref(),
            port,
            DeviceState::Starting,
        ));
        let advert = mdns::device_service(&entry, &self.host);
        let shared = Shared {
            registry: self.registry.clone(),
            key: key.clone(),
            stats: entry.stats,
            log: entry.log,
            grace,
            open_after,
            policy,
            allow: spec
                .allow
                .clone()
                .unwrap_or_else(|| self.config.access.allow.clone()),
            leases: self.leases.clone(),
        };
        let open = bridge::opener(&spec);
        let handle = match bridge::spawn(spec, listener, shared, open) {
            Ok(h) => h,
            Err(e) => {
                let e = format!("cannot start serving {key}: {e}");
                error!("{e}");
                self.registry.set_state(&key, DeviceState::Error(e.clone()));
                self.plan.serve_failed(&key);
                return Err(e);
            }
        };
        if let Some(a) = &self.adverts {
            a.serve(&key.to_string(), advert);
        }
        self.bridges.insert(key, handle);
        Ok(())
    }

    /// Watch the device directory and serve what is already there.
    pub(crate) fn start_hotplug(&mut self) {
        let cfg = self.config.hotplug.clone();
        if !cfg.enabled {
            return;
        }
        let watched = Inotify::init().and_then(|ino| {
            ino.watches().add(
                &cfg.dir,
                WatchMask::CREATE
                    | WatchMask::DELETE
                    | WatchMask::MOVED_TO
                    | WatchMask::MOVED_FROM
                    | WatchMask::ATTRIB,
            )?;
            Ok(ino)
        });
        match watched {
            Ok(inotify) => {
                info!(
                    "watching {} for {}",
                    cfg.dir.display(),
                    cfg.patterns.join(", ")
                );
                self.watch = Some(inotify);
                self.scan();
            }
            Err(e) => error!(
                "cannot watch {} for devices: {e}; only configured devices are served",
                cfg.dir.display()
            ),
        }
    }

    /// Tell the plan what the device directory holds now.
    fn scan(&mut self) {
        if self.watch.is_none() {
            return;
        }
        let Ok(entries) = std::fs::read_dir(&self.config.hotplug.dir) else {
            return;
        };
        let names: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        let sysfs = self.config.hotplug.sysfs.clone();
        let decisions = self
            .plan
            .scanned(Instant::now(), names, &|p| identify(&sysfs, p));
        self.perform(decisions);
    }

    /// Apply a re-read configuration: devices whose settings changed are restarted (their
    /// clients with them); unchanged devices and their clients are not touched. Settings that
    /// need a restart of the daemon are named in the log.
    fn reload(&mut self, new: Config) {
        let old = std::mem::replace(&mut self.config, new);
        for (what, changed) in [
            ("bind", old.bind != self.config.bind),
            ("base_port", old.base_port != self.config.base_port),
            ("state_file", old.state_file != self.config.state_file),
            ("http", old.http != self.config.http),
            ("hotplug", old.hotplug != self.config.hotplug),
            ("access", old.access != self.config.access),
        ] {
            if changed {
                warn!("SIGHUP: `{what}` changed; restart serialhub to apply it");
            }
        }
        self.config.bind = old.bind;
        self.config.hotplug = old.hotplug;
        self.config.access = old.access;
        self.reserved = reserved(&self.config);
        let sysfs = self.config.hotplug.sysfs.clone();
        let decisions = self.plan.reloaded(
            Instant::now(),
            self.config.devices.clone(),
            self.config.rules.clone(),
            &|p| identify(&sysfs, p),
        );
        for f in self.perform(decisions) {
            if f.fixed {
                error!("SIGHUP: {}", f.error);
            }
        }
    }

    /// Answer a request. A reset is the device's bridge's to answer: the supervisor hands
    /// it the reply channel and goes on, so it never waits on one device's thread.
    fn handle(&mut self, req: Request, reply: mpsc::Sender<Reply>) {
        if let Request::Reset(key, to) = &req {
            match self.bridges.get(key) {
                Some(h) => h.send(BridgeCommand::Reset(*to, reply)),
                None => {
                    let _ = reply.send(Err(RequestError::NotFound(key.to_string())));
                }
            }
            return;
        }
        let _ = reply.send(self.answer(req));
    }

    /// The answer to a request that stops devices comes once their bridges have ended (or
    /// one [`bridge::STOP_WAIT`] has passed, however many there are): "stopped" means the tty
    /// is free for whoever asked.
    fn answer(&mut self, req: Request) -> Reply {
        match req {
            Request::Reset(key, _) => Err(RequestError::NotFound(key.to_string())),
            Request::Leased(key) => {
                let h = (self.bridges.get(&key))
                    .ok_or_else(|| RequestError::NotFound(key.to_string()))?;
                h.send(BridgeCommand::Leases);
                Ok(format!("{key}: leases applied"))
            }
            Request::Disconnect(key) => {
                let h = (self.bridges.get(&key))
                    .ok_or_else(|| RequestError::NotFound(key.to_string()))?;
                h.send(BridgeCommand::Disconnect("closed by the portal".into()));
                Ok(format!("{key}: client disconnected"))
            }
            Request::Stop(tty) => {
                let key = self.key_for_tty(&tty)?;
                let (msg, decisions) = self.plan.stop(&key);
                self.perform(decisions);
                Ok(msg)
            }
            Request::Start(tty) => {
                let key = self.key_for_tty(&tty)?;
                self.start_by_request(&key)
            }
            Request::StopAll => {
                let (msg, decisions) = self.plan.stop_all();
                self.perform(decisions);
                Ok(msg)
            }
            Request::StartAll => {
                let msgs: Vec<String> = (self.plan.stopped().iter())
                    .map(|k| self.start_by_request(k).unwrap_or_else(|e| e.to_string()))
                    .collect();
                Ok(msgs.join("\n"))
            }
        }
    }

    /// The key of the device whose node is `tty` (served or stopped).
    fn key_for_tty(&self, tty: &str) -> Result<DeviceKey, RequestError> {
        self.registry
            .snapshot()
            .into_iter()
            .find(|e| e.tty == tty || e.key.to_string() == tty)
            .map(|e| e.key)
            .ok_or_else(|| RequestError::NotFound(tty.to_string()))
    }

    fn start_by_request(&mut self, key: &DeviceKey) -> Reply {
        match self.plan.start(Instant::now(), key) {
            Start::AlreadyRunning => Ok(format!("{key}: already running")),
            Start::NotPresent => Err(RequestError::Failed(format!("{key} is not present"))),
            Start::Serve(serve) => {
                self.start(*serve).map_err(RequestError::Failed)?;
                info!("{key}: started on request");
                Ok(format!("{key}: started"))
            }
        }
    }

    /// Serve requests, hotplug events and timers until told to shut down; then stop every
    /// bridge (all at once, so the slowest sets the pace, not their sum).
    pub(crate) fn run(&mut self, inbox: Inbox) {
        let mut buf = [0u8; INOTIFY_BUFFER];
        loop {
            let (wake_ready, ino_ready) = {
                let mut fds = vec![PollFd::new(inbox.fd(), PollFlags::POLLIN)];
                if let Some(w) = &self.watch {
                    fds.push(PollFd::new(w.as_fd(), PollFlags::POLLIN));
                }
                // Interrupted: no revents, so neither is ready and the loop goes round.
                poll_until(&mut fds, self.plan.deadline(), &"supervisor");
                let r = |i: usize| {
                    fds.get(i)
                        .and_then(|f| f.revents())
                        .is_some_and(|r| !r.is_empty())
                };
                (r(0), r(1))
            };
            if wake_ready {
                let mut shutdown = false;
                while let Some(cmd) = inbox.pop() {
                    match cmd {
                        Command::Shutdown => shutdown = true,
                        Command::Reload(config) => self.reload(*config),
                        Command::Request(req, reply) => {
                            self.handle(req, reply);
                        }
                    }
                }
                if shutdown {
                    break;
                }
            }
            if ino_ready {
                self.read_events(&mut buf);
            }
            let due = self.plan.due(Instant::now());
            self.perform(due);
        }
        let mut stopping = Stopping::new();
        for (_, h) in std::mem::take(&mut self.bridges) {
            stopping.signal(h, "server shutting down");
        }
        stopping.join();
    }

    fn read_events(&mut self, buf: &mut [u8]) {
        let Some(w) = &mut self.watch else { return };
        let mut happened: Vec<(bool, String)> = Vec::new();
        let mut overflow = false;
        match w.read_events(buf) {
            Ok(events) => {
                for ev in events {
                    if ev.mask.contains(EventMask::Q_OVERFLOW) {
                        overflow = true;
                        continue;
                    }
                    let Some(name) = ev.name.and_then(OsStr::to_str) else {
                        continue;
                    };
                    let appeared = ev
                        .mask
                        .intersects(EventMask::CREATE | EventMask::MOVED_TO | EventMask::ATTRIB);
                    happened.push((appeared, name.to_string()));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => error!("reading inotify events: {e}"),
        }
        let sysfs = self.config.hotplug.sysfs.clone();
        for (appeared, name) in happened {
            if !self.plan.watches(&name) {
                continue;
            }
            let now = Instant::now();
            let decisions = if appeared {
                (self.plan).appeared(now, &name, &|p| identify(&sysfs, p))
            } else {
                self.plan.removed(now, &name)
            };
            self.perform(decisions);
        }
        if overflow {
            warn!("inotify queue overflowed; rescanning the device directory");
            self.scan();
        }
    }
}

/// Who the node at `path` is: its USB identity from sysfs, its canonical path.
fn identify(sysfs: &Path, path: &Path) -> Identity {
    Identity {
        usb: identity::usb_info(path, sysfs),
        canonical: std::fs::canonicalize(path).ok(),
    }
}

/// Ports configured explicitly: never handed out by assignment.
fn reserved(config: &Config) -> BTreeSet<u16> {
    (config.devices.iter())
        .chain(&config.rules)
        .filter_map(|d| d.port)
        .collect()
}

fn bind(ip: IpAddr, port: u16) -> io::Result<TcpListener> {
    // std sets SO_REUSEADDR on Unix, so a restart does not wait out TIME_WAIT.
    let l = TcpListener::bind((ip, port))?;
    l.set_nonblocking(true)?;
    Ok(l)
}
