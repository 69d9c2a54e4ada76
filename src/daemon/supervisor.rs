//! The supervisor: which devices are served, on which ports. Fixed devices (config, flags,
//! the simulator) are started at once; hotplugged ones are found by a scan at start and then
//! by inotify on the device directory — no udev, no polling loop. On add it waits for the
//! driver to settle, gives the device its stable port and starts its bridge; on remove it
//! stops the bridge (or, for a native-USB chip that re-enumerates when it resets, keeps the
//! client for a grace period and hands the bridge the new node).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ffi::OsStr;
use std::io;
use std::net::{IpAddr, TcpListener};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use inotify::{EventMask, Inotify, WatchMask};
use log::{debug, error, info, warn};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::daemon::assign::{Assignments, DeviceKey, KeyKind};
use crate::daemon::bridge::{self, BridgeCommand, BridgeHandle, Shared};
use crate::daemon::config::{glob_match, Config, DeviceSpec, Hotplug};
use crate::daemon::control::{Command, Inbox, Reply, Request, RequestError};
use crate::daemon::identity::{self, UsbInfo};
use crate::daemon::lease::Leases;
use crate::daemon::mdns::{self, Adverts};
use crate::daemon::registry::{DeviceEntry, DeviceState, LogRing, Registry, LOG_RING_BYTES};
use crate::device::DevicePath;
use crate::protocol::reset::Policy;

/// Room for a burst of inotify events (each is 16 bytes plus the node's name).
const INOTIFY_BUFFER: usize = 4096;
/// How long poll may sleep when nothing is due (it is woken for everything that matters).
const POLL_CAP_MS: u128 = 60_000;
/// After a failed poll, pause this long so a persistent error cannot spin the thread.
const POLL_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// A device node being served, or recently gone.
struct Served {
    handle: BridgeHandle,
    spec: DeviceSpec,
    /// The node's name in the watched directory; `None` for fixed devices.
    node: Option<String>,
    usb: Option<UsbInfo>,
    /// When the node vanished; the bridge is stopped once the grace period has passed.
    gone_at: Option<Instant>,
    grace: Duration,
}

/// What it takes to serve a device that is not served now.
struct Parked {
    spec: DeviceSpec,
    /// The node's name in the watched directory; `None` for fixed devices.
    node: Option<String>,
    usb: Option<UsbInfo>,
}

struct Watch {
    inotify: Inotify,
    cfg: Hotplug,
}

pub(crate) struct Supervisor {
    config: Config,
    registry: Arc<Registry>,
    assignments: Assignments,
    /// Ports configured explicitly; never handed out by assignment.
    reserved: BTreeSet<u16>,
    /// Canonical paths of fixed devices, so hotplug does not serve them twice.
    fixed_paths: BTreeSet<PathBuf>,
    watch: Option<Watch>,
    served: BTreeMap<DeviceKey, Served>,
    /// Node name in the watched directory → the key it was served under.
    nodes: HashMap<String, DeviceKey>,
    /// Recent appearances per key, for flap damping.
    appearances: HashMap<DeviceKey, VecDeque<Instant>>,
    flapping_until: HashMap<DeviceKey, Instant>,
    /// Devices stopped on request, with what it takes to start them again.
    stopped: BTreeMap<DeviceKey, Parked>,
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
        let reserved = config
            .devices
            .iter()
            .chain(&config.rules)
            .filter_map(|d| d.port)
            .collect();
        Supervisor {
            config,
            registry,
            assignments,
            reserved,
            fixed_paths: BTreeSet::new(),
            watch: None,
            served: BTreeMap::new(),
            nodes: HashMap::new(),
            appearances: HashMap::new(),
            flapping_until: HashMap::new(),
            stopped: BTreeMap::new(),
            leases,
            adverts,
            host: mdns::host_names().0,
        }
    }

    /// Devices from the config and the command line: bound up front. Every device that can
    /// be served is; the others are in the registry as errors and their messages returned
    /// (at start the daemon refuses to run with them, on reload they are logged).
    pub(crate) fn start_fixed(&mut self, specs: Vec<DeviceSpec>) -> Vec<String> {
        let mut errors = Vec::new();
        let mut sim_count = 0;
        for spec in specs {
            let (key, usb) = match &spec.path {
                DevicePath::Tty(p) => {
                    if let Ok(c) = std::fs::canonicalize(p) {
                        self.fixed_paths.insert(c);
                    }
                    let usb = identity::usb_info(p, &self.config.hotplug.sysfs);
                    let name = p.file_name().map_or_else(
                        || p.display().to_string(),
                        |n| n.to_string_lossy().into_owned(),
                    );
                    (DeviceKey::choose(&name, usb.as_ref(), 1), usb)
                }
                DevicePath::Sim { .. } => {
                    sim_count += 1;
                    let name = match sim_count {
                        1 => "sim".to_string(),
                        n => format!("sim-{n}"),
                    };
                    (DeviceKey::name(&name), None)
                }
            };
            let key = self.unique(key);
            if !spec.enabled {
                info!("{key}: disabled in the config (enabled = false); not serving it");
                self.disable(key, spec, usb, None);
                continue;
            }
            if let Err(e) = self.start(key, spec, usb, None, Duration::ZERO) {
                errors.push(e);
            }
        }
        errors
    }

    /// Make a key unique among served devices (two fixed devices may share a name).
    fn unique(&self, key: DeviceKey) -> DeviceKey {
        if !self.served.contains_key(&key) {
            return key;
        }
        (2..)
            .map(|i| DeviceKey {
                kind: key.kind,
                value: format!("{}#{i}", key.value),
            })
            .find(|k| !self.served.contains_key(k))
            .expect("an unused suffix exists")
    }

    /// The one way a device gets its listener: the port pinned in its config, else (the
    /// simulator) the first free one, else its stable assigned port.
    fn listen(&mut self, key: &DeviceKey, spec: &DeviceSpec) -> Result<TcpListener, String> {
        let ip = self.config.bind;
        match spec.port {
            Some(p) => bind(ip, p).map_err(|e| {
                format!(
                    "cannot listen on {ip}:{p} for {key}: {e} (the port pinned in the config is taken: is another server using it? pick another `port`)"
                )
            }),
            // The simulator gets the first free port, never a persisted one.
            None if matches!(spec.path, DevicePath::Sim { .. }) => self.bind_free(),
            None => self.bind_assigned(key),
        }
    }

    fn bind_free(&self) -> Result<TcpListener, String> {
        let used: BTreeSet<u16> = self.served.values().map(|s| s.handle.addr.port()).collect();
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

    /// Record a device that is configured off: visible in the registry, startable on request.
    fn disable(
        &mut self,
        key: DeviceKey,
        spec: DeviceSpec,
        usb: Option<UsbInfo>,
        node: Option<String>,
    ) {
        let port = spec
            .port
            .or_else(|| self.assignments.get(&key))
            .unwrap_or(0);
        self.registry
            .upsert(self.entry(&key, &spec, usb.as_ref(), port, DeviceState::Disabled));
        self.stopped.insert(key, Parked { spec, node, usb });
    }

    /// Serve `key`: bind its listener, record it in the registry, start its bridge. A
    /// failure is recorded in the registry as an error (and returned).
    fn start(
        &mut self,
        key: DeviceKey,
        spec: DeviceSpec,
        usb: Option<UsbInfo>,
        node: Option<String>,
        settle: Duration,
    ) -> Result<(), String> {
        let policy = spec.policy(usb.as_ref().and_then(|u| u.id));
        let grace = match policy {
            Policy::UsbJtag => self.config.hotplug.grace,
            _ => Duration::ZERO,
        };
        let listener = self.listen(&key, &spec).and_then(|l| {
            let port = l.local_addr().map_err(|e| e.to_string())?.port();
            Ok((l, port))
        });
        let (listener, port) = match listener {
            Ok(x) => x,
            Err(e) => {
                error!("{key}: {e}");
                let port = spec
                    .port
                    .or_else(|| self.assignments.get(&key))
                    .unwrap_or(0);
                let entry = self.entry(
                    &key,
                    &spec,
                    usb.as_ref(),
                    port,
                    DeviceState::Error(e.clone()),
                );
                self.registry.upsert(entry);
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
            open_after: Instant::now() + settle,
            policy,
            allow: spec
                .allow
                .clone()
                .unwrap_or_else(|| self.config.access.allow.clone()),
            leases: self.leases.clone(),
        };
        let open = bridge::opener(&spec);
        let handle = match bridge::spawn(spec.clone(), listener, shared, open) {
            Ok(h) => h,
            Err(e) => {
                let e = format!("cannot start serving {key}: {e}");
                error!("{e}");
                self.registry.set_state(&key, DeviceState::Error(e.clone()));
                return Err(e);
            }
        };
        if let Some(n) = &node {
            self.nodes.insert(n.clone(), key.clone());
        }
        if let Some(a) = &self.adverts {
            a.serve(&key.to_string(), advert);
        }
        self.served.insert(
            key,
            Served {
                handle,
                spec,
                node,
                usb,
                gone_at: None,
                grace,
            },
        );
        Ok(())
    }

    /// The one way a served device stops: its client is closed with `why`, its bridge ends,
    /// and it is forgotten here. Returns what it takes to serve it again.
    fn stop_served(&mut self, key: &DeviceKey, why: &str) -> Option<Parked> {
        let s = self.served.remove(key)?;
        if let Some(n) = &s.node {
            self.nodes.remove(n);
        }
        if let Some(a) = &self.adverts {
            a.withdraw(&key.to_string());
        }
        s.handle.stop(why);
        Some(Parked {
            spec: s.spec,
            node: s.node,
            usb: s.usb,
        })
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
                self.watch = Some(Watch { inotify, cfg });
                self.scan();
            }
            Err(e) => error!(
                "cannot watch {} for devices: {e}; only configured devices are served",
                cfg.dir.display()
            ),
        }
    }

    fn scan(&mut self) {
        let Some(w) = &self.watch else { return };
        let dir = w.cfg.dir.clone();
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        let mut names: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| self.matches(n))
            .collect();
        names.sort();
        // Identities first, so duplicate serial numbers among present boards are seen
        // before any of them is keyed.
        let found: Vec<(String, Option<UsbInfo>)> = names
            .into_iter()
            .map(|n| {
                let usb = identity::usb_info(&dir.join(&n), &self.config.hotplug.sysfs);
                (n, usb)
            })
            .collect();
        for (name, usb) in &found {
            let dupes = same_serial(usb.as_ref(), found.iter().map(|(_, u)| u.as_ref()));
            self.add(name, usb.clone(), dupes);
        }
    }

    fn matches(&self, name: &str) -> bool {
        self.watch
            .as_ref()
            .is_some_and(|w| w.cfg.patterns.iter().any(|p| glob_match(p, name)))
    }

    fn settle_for(&self, name: &str) -> Duration {
        self.watch
            .as_ref()
            .and_then(|w| {
                w.cfg
                    .settle
                    .iter()
                    .find(|(p, _)| glob_match(p, name))
                    .map(|(_, &s)| s)
            })
            .unwrap_or(Duration::ZERO)
    }

    /// A node appeared (or its attributes changed, e.g. udev set its group).
    fn on_appear(&mut self, name: &str) {
        if let Some(key) = self.nodes.get(name) {
            if let Some(s) = self.served.get(key) {
                s.handle.send(BridgeCommand::Retry);
            }
            return;
        }
        let Some(w) = &self.watch else { return };
        let path = w.cfg.dir.join(name);
        let usb = identity::usb_info(&path, &self.config.hotplug.sysfs);
        let present = self
            .served
            .values()
            .filter(|o| o.gone_at.is_none() && o.node.is_some())
            .map(|o| o.usb.as_ref());
        let dupes = same_serial(usb.as_ref(), present.chain([usb.as_ref()]));
        self.add(name, usb, dupes);
    }

    /// Serve the node `name`. `dupes` = how many present devices report its serial number.
    fn add(&mut self, name: &str, usb: Option<UsbInfo>, dupes: usize) {
        let Some(w) = &self.watch else { return };
        let path = w.cfg.dir.join(name);
        if std::fs::canonicalize(&path).is_ok_and(|c| self.fixed_paths.contains(&c)) {
            debug!("{name}: configured as a fixed device; not serving it twice");
            return;
        }
        let key = DeviceKey::choose(name, usb.as_ref(), dupes);
        if dupes > 1 && key.kind == KeyKind::UsbPath {
            warn!(
                "{name}: {dupes} devices report the USB serial number {:?}; keying {name} by its USB path {} instead (pin it in the config to name it)",
                usb.as_ref().and_then(|u| u.serial.as_deref()).unwrap_or(""),
                key.value
            );
        }
        if let Some(stopped) = self.stopped.get_mut(&key) {
            debug!("{name}: {key} is stopped; not serving it until started");
            stopped.spec.path = DevicePath::Tty(path);
            stopped.node = Some(name.to_string());
            return;
        }
        let now = Instant::now();
        if self.flapping(&key, now) {
            return;
        }
        // The same device back under a new node within its grace period: re-enumeration.
        if let Some(s) = self.served.get_mut(&key) {
            if s.gone_at.take().is_some() {
                info!("{key}: back as {name}");
                s.node = Some(name.to_string());
                s.handle.send(BridgeCommand::Replace(DevicePath::Tty(path)));
                self.nodes.insert(name.to_string(), key);
                return;
            }
            warn!("{name}: {key} is already served; ignoring this second node");
            return;
        }
        let spec = self.spec_for(name, usb.as_ref());
        if !spec.enabled {
            info!("{name}: {key} is disabled in the config (enabled = false); not serving it");
            self.disable(key, spec, usb, Some(name.to_string()));
            return;
        }
        let settle = self.settle_for(name);
        // A failure is in the log and the registry already.
        let _ = self.start(key, spec, usb, Some(name.to_string()), settle);
    }

    /// Record an appearance; true (and the device is left alone) if it flaps.
    fn flapping(&mut self, key: &DeviceKey, now: Instant) -> bool {
        let cfg = &self.config.hotplug;
        if let Some(&until) = self.flapping_until.get(key) {
            if now < until {
                debug!("{key}: flapping; ignored until the cool-down ends");
                return true;
            }
            self.flapping_until.remove(key);
        }
        let window = cfg.flap_window;
        let seen = self.appearances.entry(key.clone()).or_default();
        seen.push_back(now);
        while seen
            .front()
            .is_some_and(|&t| now.duration_since(t) > window)
        {
            seen.pop_front();
        }
        if seen.len() <= cfg.flap_count {
            return false;
        }
        let cooldown = cfg.flap_cooldown;
        warn!(
            "{key}: appeared {} times in {:.0} s; leaving it alone for {:.0} s (check the cable, the hub, or the board's power)",
            seen.len(),
            window.as_secs_f64(),
            cooldown.as_secs_f64()
        );
        seen.clear();
        self.flapping_until.insert(key.clone(), now + cooldown);
        self.stop_served(key, "the device keeps coming and going");
        self.registry.set_state(key, DeviceState::Flapping);
        true
    }

    /// A node vanished.
    fn on_remove(&mut self, name: &str) {
        let Some(key) = self.nodes.remove(name) else {
            return;
        };
        let Some(s) = self.served.get_mut(&key) else {
            return;
        };
        if s.grace.is_zero() {
            info!("{name}: unplugged; stopping {key}");
            self.stop(&key, "the device was unplugged");
        } else {
            info!(
                "{name}: unplugged; {key} keeps its client for {:.1} s in case it comes back",
                s.grace.as_secs_f32()
            );
            s.gone_at = Some(Instant::now());
            s.handle.send(BridgeCommand::Gone);
        }
    }

    /// Stop serving a device that is gone (or changed): it shows as absent.
    fn stop(&mut self, key: &DeviceKey, why: &str) {
        self.stop_served(key, why);
        self.registry.update(key, |e| {
            e.state = DeviceState::Absent;
            e.clients.clear();
        });
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
        self.reserved = self
            .config
            .devices
            .iter()
            .chain(&self.config.rules)
            .filter_map(|d| d.port)
            .collect();
        // Fixed devices, compared by their whole spec: a changed one is stopped and started
        // again with the new settings.
        let fixed = |served: &BTreeMap<DeviceKey, Served>| -> Vec<(DeviceKey, DeviceSpec)> {
            served
                .iter()
                .filter(|(_, s)| s.node.is_none())
                .map(|(k, s)| (k.clone(), s.spec.clone()))
                .collect()
        };
        for (key, spec) in fixed(&self.served) {
            if !self.config.devices.contains(&spec) {
                info!("SIGHUP: {key} changed or was removed; stopping it");
                self.stop(&key, "the configuration changed");
            }
        }
        let running: Vec<DeviceSpec> = fixed(&self.served).into_iter().map(|(_, s)| s).collect();
        let new: Vec<DeviceSpec> = (self.config.devices.iter())
            .filter(|s| !running.contains(s))
            .cloned()
            .collect();
        for e in self.start_fixed(new) {
            error!("SIGHUP: {e}");
        }
        // Hotplugged devices: restart those whose matching rule changed.
        let nodes: Vec<(String, DeviceKey)> = self
            .nodes
            .iter()
            .map(|(n, k)| (n.clone(), k.clone()))
            .collect();
        for (node, key) in nodes {
            let Some(s) = self.served.get(&key) else {
                continue;
            };
            let wanted = self.spec_for(&node, s.usb.as_ref());
            if wanted != s.spec {
                info!("SIGHUP: settings for {key} changed; restarting it");
                self.stop(&key, "the configuration changed");
                self.nodes.remove(&node);
                self.on_appear(&node);
            }
        }
    }

    /// The settings a hotplugged node gets: its matching [[device]] rule, else the defaults.
    fn spec_for(&self, name: &str, usb: Option<&UsbInfo>) -> DeviceSpec {
        let path = self
            .watch
            .as_ref()
            .map_or_else(|| PathBuf::from(name), |w| w.cfg.dir.join(name));
        let rule = usb.and_then(|u| {
            self.config.rules.iter().find(|r| {
                (r.serial.is_some() && r.serial == u.serial)
                    || (r.usb_path.is_some() && r.usb_path == u.path)
            })
        });
        let mut spec = match rule {
            Some(r) => r.clone(),
            None => DeviceSpec::new(DevicePath::Tty(path.clone())),
        };
        spec.path = DevicePath::Tty(path);
        spec.name.get_or_insert_with(|| name.to_string());
        spec
    }

    /// Answer a request. A reset is the device's bridge's to answer: the supervisor hands
    /// it the reply channel and goes on, so it never waits on one device's thread.
    fn handle(&mut self, req: Request, reply: mpsc::Sender<Reply>) {
        if let Request::Reset(key, to) = &req {
            match self.served.get(key) {
                Some(s) => s.handle.send(BridgeCommand::Reset(*to, reply)),
                None => {
                    let _ = reply.send(Err(RequestError::NotFound(key.to_string())));
                }
            }
            return;
        }
        let _ = reply.send(self.answer(req));
    }

    fn answer(&mut self, req: Request) -> Reply {
        match req {
            Request::Reset(key, _) => Err(RequestError::NotFound(key.to_string())),
            Request::Leased(key) => {
                let s = self
                    .served
                    .get(&key)
                    .ok_or_else(|| RequestError::NotFound(key.to_string()))?;
                s.handle.send(BridgeCommand::Leases);
                Ok(format!("{key}: leases applied"))
            }
            Request::Disconnect(key) => {
                let s = self
                    .served
                    .get(&key)
                    .ok_or_else(|| RequestError::NotFound(key.to_string()))?;
                s.handle
                    .send(BridgeCommand::Disconnect("closed by the portal".into()));
                Ok(format!("{key}: client disconnected"))
            }
            Request::Stop(tty) => {
                let key = self.key_for_tty(&tty)?;
                self.stop_by_request(&key)
            }
            Request::Start(tty) => {
                let key = self.key_for_tty(&tty)?;
                self.start_by_request(&key)
            }
            Request::StopAll => {
                let keys: Vec<DeviceKey> = self.served.keys().cloned().collect();
                let msgs: Vec<String> = keys
                    .iter()
                    .map(|k| self.stop_by_request(k).unwrap_or_else(|e| e.to_string()))
                    .collect();
                Ok(msgs.join("\n"))
            }
            Request::StartAll => {
                let keys: Vec<DeviceKey> = self.stopped.keys().cloned().collect();
                let msgs: Vec<String> = keys
                    .iter()
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

    fn stop_by_request(&mut self, key: &DeviceKey) -> Reply {
        let Some(parked) = self.stop_served(key, "the device was stopped") else {
            return Ok(format!("{key}: already stopped"));
        };
        self.stopped.insert(key.clone(), parked);
        self.registry.update(key, |e| {
            e.state = DeviceState::Disabled;
            e.clients.clear();
        });
        info!("{key}: stopped on request");
        Ok(format!("{key}: stopped"))
    }

    fn start_by_request(&mut self, key: &DeviceKey) -> Reply {
        if self.served.contains_key(key) {
            return Ok(format!("{key}: already running"));
        }
        let Some(parked) = self.stopped.remove(key) else {
            return Err(RequestError::Failed(format!("{key} is not present")));
        };
        let Parked { spec, node, usb } = &parked;
        let started = self.start(
            key.clone(),
            spec.clone(),
            usb.clone(),
            node.clone(),
            Duration::ZERO,
        );
        if let Err(e) = started {
            self.stopped.insert(key.clone(), parked);
            return Err(RequestError::Failed(e));
        }
        info!("{key}: started on request");
        Ok(format!("{key}: started"))
    }

    fn next_deadline(&self) -> Option<Instant> {
        let gone = self
            .served
            .values()
            .filter_map(|s| s.gone_at.map(|t| t + s.grace));
        let cool = self.flapping_until.values().copied();
        gone.chain(cool).min()
    }

    fn on_timers(&mut self) {
        let now = Instant::now();
        let expired: Vec<DeviceKey> = self
            .served
            .iter()
            .filter(|(_, s)| s.gone_at.is_some_and(|t| now >= t + s.grace))
            .map(|(k, _)| k.clone())
            .collect();
        for key in expired {
            info!("{key}: did not come back; stopped");
            self.stop(&key, "the device did not come back");
        }
        let cooled: Vec<DeviceKey> = self
            .flapping_until
            .iter()
            .filter(|(_, &t)| now >= t)
            .map(|(k, _)| k.clone())
            .collect();
        if !cooled.is_empty() {
            for key in &cooled {
                info!("{key}: cool-down over; serving it again if it is present");
                self.flapping_until.remove(key);
                self.appearances.remove(key);
                self.registry.set_state(key, DeviceState::Absent);
            }
            self.scan();
        }
    }

    /// Serve requests, hotplug events and timers until told to shut down; then stop every
    /// bridge (all at once, so the slowest sets the pace, not their sum).
    pub(crate) fn run(&mut self, inbox: Inbox) {
        let mut buf = [0u8; INOTIFY_BUFFER];
        let wake = &inbox.wake;
        loop {
            let timeout = self.next_deadline().map_or(PollTimeout::NONE, |d| {
                let ms = d.saturating_duration_since(Instant::now()).as_millis();
                PollTimeout::try_from(ms.min(POLL_CAP_MS) as i32 + 1).unwrap_or(PollTimeout::MAX)
            });
            let (wake_ready, ino_ready) = {
                let mut fds = vec![PollFd::new(wake.as_fd(), PollFlags::POLLIN)];
                if let Some(w) = &self.watch {
                    fds.push(PollFd::new(w.inotify.as_fd(), PollFlags::POLLIN));
                }
                match poll(&mut fds, timeout) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => {
                        error!("supervisor: poll failed: {e}");
                        std::thread::sleep(POLL_ERROR_PAUSE);
                    }
                }
                let r = |i: usize| {
                    fds.get(i)
                        .and_then(|f| f.revents())
                        .is_some_and(|r| !r.is_empty())
                };
                (r(0), r(1))
            };
            if wake_ready {
                let _ = wake.read();
                let mut shutdown = false;
                while let Ok(cmd) = inbox.rx.try_recv() {
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
            self.on_timers();
        }
        let served = std::mem::take(&mut self.served);
        for s in served.values() {
            s.handle.send(BridgeCommand::Shutdown);
        }
        let deadline = Instant::now() + bridge::STOP_WAIT;
        for (_, s) in served {
            s.handle.stop_by("server shutting down", deadline);
        }
    }

    fn read_events(&mut self, buf: &mut [u8]) {
        let Some(w) = &mut self.watch else { return };
        let mut happened: Vec<(bool, String)> = Vec::new();
        let mut overflow = false;
        match w.inotify.read_events(buf) {
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
        for (appeared, name) in happened {
            if !self.matches(&name) {
                continue;
            }
            if appeared {
                self.on_appear(&name);
            } else {
                self.on_remove(&name);
            }
        }
        if overflow {
            warn!("inotify queue overflowed; rescanning the device directory");
            self.scan();
        }
    }
}

/// How many of the `present` devices (the new one included) report `usb`'s serial number;
/// 0 when it has none. Keys are serial numbers only while they are unique.
fn same_serial<'a>(
    usb: Option<&UsbInfo>,
    present: impl Iterator<Item = Option<&'a UsbInfo>>,
) -> usize {
    let Some(serial) = usb.and_then(|u| u.serial.as_ref()) else {
        return 0;
    };
    present
        .filter(|o| o.and_then(|u| u.serial.as_ref()) == Some(serial))
        .count()
}

fn bind(ip: IpAddr, port: u16) -> io::Result<TcpListener> {
    // std sets SO_REUSEADDR on Unix, so a restart does not wait out TIME_WAIT.
    let l = TcpListener::bind((ip, port))?;
    l.set_nonblocking(true)?;
    Ok(l)
}
