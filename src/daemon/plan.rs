//! The hotplug plan: which devices are served, under which key and on which port, and what
//! becomes of them as their nodes come and go — pure. The supervisor tells it what happened
//! (the fixed devices at start, a node appearing or vanishing, a re-read configuration, the
//! portal's start and stop, the time) and performs the [`Decision`]s it gets back, in order,
//! logging what it is told; it keeps only inotify, poll, the mailbox and the bridges' threads.
//!
//! The rules, in one place:
//! - **Keying.** A device's key is its USB serial number while no other present device reports
//!   the same one, else its USB path, else its node name ([`DeviceKey::choose`]); fixed devices
//!   are keyed as if their serial were unique, and made unique with `#2`… The key, not the node,
//!   owns the stable port (daemon/assign.rs), so a board keeps its port across replugs.
//! - **Settle.** A node is served at once (its port listens, clients may wait), but opened only
//!   after its driver's settle time (`[hotplug] settle`, by pattern).
//! - **Grace.** A native-USB chip (reset policy `usb-jtag`) vanishes and comes back when it
//!   resets: its bridge is parked with its client for `grace` and handed the node the device
//!   comes back as; when the grace passes first, it is stopped.
//! - **Flap damping.** A key that appears more than `flap_count` times within `flap_window` is
//!   stopped and left alone for `flap_cooldown`; then the directory is scanned again.
//! - **Reload.** Fixed devices are compared by their whole spec (a changed one is stopped and
//!   started again, an unchanged one and its clients are not touched); hotplugged devices are
//!   restarted when the settings their rule gives them changed.
//!
//! One piece, at about 700 lines: every rule reads and changes the same state (what is served,
//! parked, stopped, flapping), and split up they would hand it around; the tests are in
//! plan_test.rs.
//!
//! Stops come first in a batch of decisions (before the registry marks and serves that follow
//! them), so the supervisor can signal every bridge at once and wait for them together.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use log::Level;

use crate::daemon::assign::{DeviceKey, KeyKind};
use crate::daemon::config::{glob_match, DeviceSpec, Hotplug};
use crate::daemon::identity::UsbInfo;
use crate::device::DevicePath;
use crate::protocol::reset::Policy;

/// What the supervisor can find out about a node when the plan asks (sysfs, the file system).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Identity {
    pub(crate) usb: Option<UsbInfo>,
    /// The node with its symlinks resolved: a fixed device seen again by hotplug is not served
    /// twice.
    pub(crate) canonical: Option<PathBuf>,
}

/// How the plan asks who a node is: called only for nodes it does not know yet.
pub(crate) type Identify<'a> = &'a dyn Fn(&Path) -> Identity;

/// Where a device's listener goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PortChoice {
    /// The port pinned in its config.
    Pinned(u16),
    /// The first free one, never persisted (the simulator).
    Free,
    /// The key's stable port (daemon/assign.rs): given once, kept across replugs and reboots.
    Stable,
}

/// Serve a device: bind its port, show it in the registry, start its bridge.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Serve {
    pub(crate) key: DeviceKey,
    pub(crate) spec: DeviceSpec,
    pub(crate) usb: Option<UsbInfo>,
    /// The node's name in the watched directory; `None` for fixed devices.
    pub(crate) node: Option<String>,
    pub(crate) port: PortChoice,
    pub(crate) policy: Policy,
    /// How long a client outlives the node (native-USB re-enumeration); zero otherwise.
    pub(crate) grace: Duration,
    /// Do not open the device before this: its driver's settle time after the node appeared.
    pub(crate) open_after: Instant,
}

/// What the registry shows of a device after its bridge is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shown {
    /// Unplugged, or stopped because it changed: `absent`, with no clients.
    Absent,
    /// Stopped on request: `disabled`, with no clients.
    Stopped,
    /// Came and went too often: `flapping`.
    Flapping,
    /// Its cool-down is over: `absent` again (it is served if the rescan finds it).
    Cooled,
}

/// What the supervisor is to do.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Decision {
    Serve(Serve),
    /// Close the bridge's client with `why` and end the bridge; withdraw its advert.
    Stop {
        key: DeviceKey,
        why: &'static str,
    },
    /// The node vanished: the bridge keeps its client for its grace period.
    Park {
        key: DeviceKey,
    },
    /// The parked device is back under another node: hand it to its bridge.
    Hand {
        key: DeviceKey,
        path: DevicePath,
    },
    /// The served node's attributes changed (udev set its group): try opening it now.
    Retry {
        key: DeviceKey,
    },
    /// Show a device that is configured off or stopped: in the registry with its port,
    /// startable on request.
    Disable {
        key: DeviceKey,
        spec: DeviceSpec,
        usb: Option<UsbInfo>,
    },
    Show {
        key: DeviceKey,
        shown: Shown,
    },
    /// Read the device directory again and tell the plan what is there.
    Rescan,
    Log(Level, String),
}

/// The outcome of asking to start a device.
#[derive(Debug, PartialEq)]
pub(crate) enum Start {
    Serve(Box<Serve>),
    AlreadyRunning,
    /// Neither served nor stopped: nothing to start.
    NotPresent,
}

/// A device that is served, or parked for its grace period.
#[derive(Debug)]
struct Served {
    spec: DeviceSpec,
    /// The node's name in the watched directory; `None` for fixed devices.
    node: Option<String>,
    usb: Option<UsbInfo>,
    /// When the node vanished; the bridge is stopped once the grace period has passed.
    gone_at: Option<Instant>,
    grace: Duration,
    /// Started from `stopped` (on request): if serving fails, it goes back there.
    from_stopped: bool,
}

/// What it takes to serve a device that is stopped on request or configured off.
#[derive(Debug)]
struct Stopped {
    spec: DeviceSpec,
    node: Option<String>,
    usb: Option<UsbInfo>,
}

/// The plan's state: see the module's documentation for its rules.
#[derive(Debug)]
pub(crate) struct Plan {
    hotplug: Hotplug,
    /// The config's `[[device]]` rules for hotplugged devices (by serial or USB path).
    rules: Vec<DeviceSpec>,
    /// Canonical paths of fixed devices, so hotplug does not serve them twice.
    fixed_paths: BTreeSet<PathBuf>,
    served: BTreeMap<DeviceKey, Served>,
    /// Node name in the watched directory → the key it is served under.
    nodes: HashMap<String, DeviceKey>,
    /// Recent appearances per key, for flap damping.
    appearances: HashMap<DeviceKey, VecDeque<Instant>>,
    flapping_until: BTreeMap<DeviceKey, Instant>,
    stopped: BTreeMap<DeviceKey, Stopped>,
}

impl Plan {
    pub(crate) fn new(hotplug: Hotplug, rules: Vec<DeviceSpec>) -> Plan {
        Plan {
            hotplug,
            rules,
            fixed_paths: BTreeSet::new(),
            served: BTreeMap::new(),
            nodes: HashMap::new(),
            appearances: HashMap::new(),
            flapping_until: BTreeMap::new(),
            stopped: BTreeMap::new(),
        }
    }

    /// Whether a node of this name in the watched directory is a device to serve.
    pub(crate) fn watches(&self, name: &str) -> bool {
        self.hotplug.patterns.iter().any(|p| glob_match(p, name))
    }

    /// Devices from the config and the command line (at start, and the new ones on reload).
    pub(crate) fn fixed(
        &mut self,
        now: Instant,
        specs: Vec<DeviceSpec>,
        identify: Identify,
    ) -> Vec<Decision> {
        let mut out = Vec::new();
        let mut sim_count = 0;
        for spec in specs {
            let (key, usb) = match &spec.path {
                DevicePath::Tty(p) => {
                    let id = identify(p);
                    self.fixed_paths.extend(id.canonical);
                    let name = p.file_name().map_or_else(
                        || p.display().to_string(),
                        |n| n.to_string_lossy().into_owned(),
                    );
                    (DeviceKey::choose(&name, id.usb.as_ref(), 1), id.usb)
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
                out.push(info(format!(
                    "{key}: disabled in the config (enabled = false); not serving it"
                )));
                out.push(self.disable(key, spec, usb, None));
                continue;
            }
            out.push(Decision::Serve(self.serve(key, spec, usb, None, now)));
        }
        out
    }

    /// The nodes found in the watched directory (at start, after an overflow or a cool-down).
    pub(crate) fn scanned(
        &mut self,
        now: Instant,
        mut names: Vec<String>,
        identify: Identify,
    ) -> Vec<Decision> {
        names.retain(|n| self.watches(n));
        names.sort();
        // Identities first, so duplicate serial numbers among present boards are seen before
        // any of them is keyed.
        let found: Vec<(String, Identity)> = names
            .into_iter()
            .map(|n| {
                let id = identify(&self.hotplug.dir.join(&n));
                (n, id)
            })
            .collect();
        let mut out = Vec::new();
        for (name, id) in &found {
            let dupes = same_serial(id.usb.as_ref(), found.iter().map(|(_, i)| i.usb.as_ref()));
            out.extend(self.add(now, name, id.clone(), dupes));
        }
        out
    }

    /// A node appeared (or its attributes changed, e.g. udev set its group).
    pub(crate) fn appeared(
        &mut self,
        now: Instant,
        name: &str,
        identify: Identify,
    ) -> Vec<Decision> {
        if let Some(key) = self.nodes.get(name) {
            return match self.served.get(key) {
                Some(_) => vec![Decision::Retry { key: key.clone() }],
                None => Vec::new(),
            };
        }
        let id = identify(&self.hotplug.dir.join(name));
        let present = self
            .served
            .values()
            .filter(|o| o.gone_at.is_none() && o.node.is_some())
            .map(|o| o.usb.as_ref());
        let dupes = same_serial(id.usb.as_ref(), present.chain([id.usb.as_ref()]));
        self.add(now, name, id, dupes)
    }

    /// A node vanished.
    pub(crate) fn removed(&mut self, now: Instant, name: &str) -> Vec<Decision> {
        let Some(key) = self.nodes.remove(name) else {
            return Vec::new();
        };
        let Some(s) = self.served.get_mut(&key) else {
            return Vec::new();
        };
        if s.grace.is_zero() {
            let mut out = vec![info(format!("{name}: unplugged; stopping {key}"))];
            self.unserve(&key, "the device was unplugged", &mut out);
            out.push(show(&key, Shown::Absent));
            return out;
        }
        s.gone_at = Some(now);
        vec![
            info(format!(
                "{name}: unplugged; {key} keeps its client for {:.1} s in case it comes back",
                s.grace.as_secs_f32()
            )),
            Decision::Park { key },
        ]
    }

    /// The configuration was re-read: `devices` are its fixed devices, `rules` its rules for
    /// hotplugged ones. Stops what it removes or changes, starts what it adds or changes.
    pub(crate) fn reloaded(
        &mut self,
        now: Instant,
        devices: Vec<DeviceSpec>,
        rules: Vec<DeviceSpec>,
        identify: Identify,
    ) -> Vec<Decision> {
        self.rules = rules;
        let mut stops = Vec::new();
        let mut shows = Vec::new();
        // Fixed devices, compared by their whole spec.
        let fixed: Vec<(DeviceKey, DeviceSpec)> = (self.served.iter())
            .filter(|(_, s)| s.node.is_none())
            .map(|(k, s)| (k.clone(), s.spec.clone()))
            .collect();
        let mut running = Vec::new();
        for (key, spec) in fixed {
            if devices.contains(&spec) {
                running.push(spec);
                continue;
            }
            stops.push(info(format!(
                "SIGHUP: {key} changed or was removed; stopping it"
            )));
            self.unserve(&key, "the configuration changed", &mut stops);
            shows.push(show(&key, Shown::Absent));
        }
        let added: Vec<DeviceSpec> = (devices.into_iter())
            .filter(|s| !running.contains(s))
            .collect();
        // Hotplugged devices: restarted when their rule's settings changed.
        let mut nodes: Vec<(String, DeviceKey)> = (self.nodes.iter())
            .map(|(n, k)| (n.clone(), k.clone()))
            .collect();
        nodes.sort();
        let mut again = Vec::new();
        for (node, key) in nodes {
            let Some(s) = self.served.get(&key) else {
                continue;
            };
            if self.spec_for(&node, s.usb.as_ref()) == s.spec {
                continue;
            }
            stops.push(info(format!(
                "SIGHUP: settings for {key} changed; restarting it"
            )));
            self.unserve(&key, "the configuration changed", &mut stops);
            shows.push(show(&key, Shown::Absent));
            again.push(node);
        }
        let mut out = stops;
        out.append(&mut shows);
        out.append(&mut self.fixed(now, added, identify));
        for node in again {
            out.append(&mut self.appeared(now, &node, identify));
        }
        out
    }

    /// Stop serving `key` on request: its client is closed, it shows as disabled and can be
    /// started again. Returns the answer for the user.
    pub(crate) fn stop(&mut self, key: &DeviceKey) -> (String, Vec<Decision>) {
        let (mut stops, mut after) = (Vec::new(), Vec::new());
        let msg = self.stop_one(key, &mut stops, &mut after);
        stops.append(&mut after);
        (msg, stops)
    }

    /// Stop every served device on request; every stop comes before every mark, so the
    /// bridges end together.
    pub(crate) fn stop_all(&mut self) -> (String, Vec<Decision>) {
        let keys: Vec<DeviceKey> = self.served.keys().cloned().collect();
        let (mut stops, mut after) = (Vec::new(), Vec::new());
        let msgs: Vec<String> = (keys.iter())
            .map(|k| self.stop_one(k, &mut stops, &mut after))
            .collect();
        stops.append(&mut after);
        (msgs.join("\n"), stops)
    }

    fn stop_one(
        &mut self,
        key: &DeviceKey,
        stops: &mut Vec<Decision>,
        after: &mut Vec<Decision>,
    ) -> String {
        let Some(s) = self.unserve(key, "the device was stopped", stops) else {
            return format!("{key}: already stopped");
        };
        self.stopped.insert(
            key.clone(),
            Stopped {
                spec: s.spec,
                node: s.node,
                usb: s.usb,
            },
        );
        after.push(show(key, Shown::Stopped));
        after.push(info(format!("{key}: stopped on request")));
        format!("{key}: stopped")
    }

    /// Start a stopped device on request.
    pub(crate) fn start(&mut self, now: Instant, key: &DeviceKey) -> Start {
        if self.served.contains_key(key) {
            return Start::AlreadyRunning;
        }
        let Some(s) = self.stopped.remove(key) else {
            return Start::NotPresent;
        };
        let serve = self.serve(key.clone(), s.spec, s.usb, s.node, now);
        if let Some(d) = self.served.get_mut(key) {
            d.from_stopped = true;
        }
        Start::Serve(Box::new(serve))
    }

    /// The devices stopped on request or configured off, in key order.
    pub(crate) fn stopped(&self) -> Vec<DeviceKey> {
        self.stopped.keys().cloned().collect()
    }

    /// Serving `key` failed (its port is taken, its thread would not start): it is not served.
    /// One started on request is stopped again; a node's next event tries again.
    pub(crate) fn serve_failed(&mut self, key: &DeviceKey) {
        let Some(s) = self.served.remove(key) else {
            return;
        };
        if let Some(n) = &s.node {
            self.nodes.remove(n);
        }
        if s.from_stopped {
            let Served {
                spec, node, usb, ..
            } = s;
            self.stopped
                .insert(key.clone(), Stopped { spec, node, usb });
        }
    }

    /// When [`Plan::due`] has something to do: a grace period or a cool-down ends.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        let gone = (self.served.values()).filter_map(|s| s.gone_at.map(|t| t + s.grace));
        gone.chain(self.flapping_until.values().copied()).min()
    }

    /// What the time `now` brings: parked devices that did not come back are stopped; devices
    /// whose cool-down is over are looked for again.
    pub(crate) fn due(&mut self, now: Instant) -> Vec<Decision> {
        let expired: Vec<DeviceKey> = (self.served.iter())
            .filter(|(_, s)| s.gone_at.is_some_and(|t| now >= t + s.grace))
            .map(|(k, _)| k.clone())
            .collect();
        let (mut out, mut shows) = (Vec::new(), Vec::new());
        for key in expired {
            out.push(info(format!("{key}: did not come back; stopped")));
            self.unserve(&key, "the device did not come back", &mut out);
            shows.push(show(&key, Shown::Absent));
        }
        out.append(&mut shows);
        let cooled: Vec<DeviceKey> = (self.flapping_until.iter())
            .filter(|(_, &t)| now >= t)
            .map(|(k, _)| k.clone())
            .collect();
        for key in &cooled {
            out.push(info(format!(
                "{key}: cool-down over; serving it again if it is present"
            )));
            self.flapping_until.remove(key);
            self.appearances.remove(key);
            out.push(show(key, Shown::Cooled));
        }
        if !cooled.is_empty() {
            out.push(Decision::Rescan);
        }
        out
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

    /// Record `key` as served (optimistically: [`Plan::serve_failed`] takes it back).
    fn serve(
        &mut self,
        key: DeviceKey,
        spec: DeviceSpec,
        usb: Option<UsbInfo>,
        node: Option<String>,
        open_after: Instant,
    ) -> Serve {
        let policy = spec.policy(usb.as_ref().and_then(|u| u.id));
        let grace = match policy {
            Policy::UsbJtag => self.hotplug.grace,
            _ => Duration::ZERO,
        };
        let port = match spec.port {
            Some(p) => PortChoice::Pinned(p),
            None if matches!(spec.path, DevicePath::Sim { .. }) => PortChoice::Free,
            None => PortChoice::Stable,
        };
        if let Some(n) = &node {
            self.nodes.insert(n.clone(), key.clone());
        }
        let served = Served {
            spec: spec.clone(),
            node: node.clone(),
            usb: usb.clone(),
            gone_at: None,
            grace,
            from_stopped: false,
        };
        self.served.insert(key.clone(), served);
        Serve {
            key,
            spec,
            usb,
            node,
            port,
            policy,
            grace,
            open_after,
        }
    }

    /// The one way a served device stops: forgotten here, its bridge told to end.
    fn unserve(
        &mut self,
        key: &DeviceKey,
        why: &'static str,
        out: &mut Vec<Decision>,
    ) -> Option<Served> {
        let s = self.served.remove(key)?;
        if let Some(n) = &s.node {
            self.nodes.remove(n);
        }
        out.push(Decision::Stop {
            key: key.clone(),
            why,
        });
        Some(s)
    }

    fn disable(
        &mut self,
        key: DeviceKey,
        spec: DeviceSpec,
        usb: Option<UsbInfo>,
        node: Option<String>,
    ) -> Decision {
        let stopped = Stopped {
            spec: spec.clone(),
            node,
            usb: usb.clone(),
        };
        self.stopped.insert(key.clone(), stopped);
        Decision::Disable { key, spec, usb }
    }

    /// Serve the node `name`. `dupes` = how many present devices report its serial number.
    fn add(&mut self, now: Instant, name: &str, id: Identity, dupes: usize) -> Vec<Decision> {
        let path = self.hotplug.dir.join(name);
        if id.canonical.is_some_and(|c| self.fixed_paths.contains(&c)) {
            return vec![Decision::Log(
                Level::Debug,
                format!("{name}: configured as a fixed device; not serving it twice"),
            )];
        }
        let usb = id.usb;
        let key = DeviceKey::choose(name, usb.as_ref(), dupes);
        let mut out = Vec::new();
        if dupes > 1 && key.kind == KeyKind::UsbPath {
            out.push(Decision::Log(Level::Warn, format!(
                "{name}: {dupes} devices report the USB serial number {:?}; keying {name} by its USB path {} instead (pin it in the config to name it)",
                usb.as_ref().and_then(|u| u.serial.as_deref()).unwrap_or(""),
                key.value
            )));
        }
        if let Some(stopped) = self.stopped.get_mut(&key) {
            out.push(Decision::Log(
                Level::Debug,
                format!("{name}: {key} is stopped; not serving it until started"),
            ));
            stopped.spec.path = DevicePath::Tty(path);
            stopped.node = Some(name.to_string());
            return out;
        }
        if self.flapping(&key, now, &mut out) {
            return out;
        }
        // The same device back under a new node within its grace period: re-enumeration.
        if let Some(s) = self.served.get_mut(&key) {
            if s.gone_at.take().is_some() {
                out.push(info(format!("{key}: back as {name}")));
                s.node = Some(name.to_string());
                self.nodes.insert(name.to_string(), key.clone());
                out.push(Decision::Hand {
                    key,
                    path: DevicePath::Tty(path),
                });
                return out;
            }
            out.push(Decision::Log(
                Level::Warn,
                format!("{name}: {key} is already served; ignoring this second node"),
            ));
            return out;
        }
        let spec = self.spec_for(name, usb.as_ref());
        if !spec.enabled {
            out.push(info(format!(
                "{name}: {key} is disabled in the config (enabled = false); not serving it"
            )));
            out.push(self.disable(key, spec, usb, Some(name.to_string())));
            return out;
        }
        let open_after = now + self.settle_for(name);
        out.push(Decision::Serve(self.serve(
            key,
            spec,
            usb,
            Some(name.to_string()),
            open_after,
        )));
        out
    }

    /// Record an appearance; true (and the device is left alone) if it flaps.
    fn flapping(&mut self, key: &DeviceKey, now: Instant, out: &mut Vec<Decision>) -> bool {
        if let Some(&until) = self.flapping_until.get(key) {
            if now < until {
                out.push(Decision::Log(
                    Level::Debug,
                    format!("{key}: flapping; ignored until the cool-down ends"),
                ));
                return true;
            }
            self.flapping_until.remove(key);
        }
        let window = self.hotplug.flap_window;
        let seen = self.appearances.entry(key.clone()).or_default();
        seen.push_back(now);
        while seen
            .front()
            .is_some_and(|&t| now.duration_since(t) > window)
        {
            seen.pop_front();
        }
        if seen.len() <= self.hotplug.flap_count {
            return false;
        }
        let cooldown = self.hotplug.flap_cooldown;
        out.push(Decision::Log(Level::Warn, format!(
            "{key}: appeared {} times in {:.0} s; leaving it alone for {:.0} s (check the cable, the hub, or the board's power)",
            seen.len(),
            window.as_secs_f64(),
            cooldown.as_secs_f64()
        )));
        seen.clear();
        self.flapping_until.insert(key.clone(), now + cooldown);
        self.unserve(key, "the device keeps coming and going", out);
        out.push(show(key, Shown::Flapping));
        true
    }

    /// The settings a hotplugged node gets: its matching [[device]] rule, else the defaults.
    fn spec_for(&self, name: &str, usb: Option<&UsbInfo>) -> DeviceSpec {
        let path = self.hotplug.dir.join(name);
        let rule = usb.and_then(|u| {
            self.rules.iter().find(|r| {
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

    fn settle_for(&self, name: &str) -> Duration {
        (self.hotplug.settle.iter())
            .find(|(p, _)| glob_match(p, name))
            .map_or(Duration::ZERO, |(_, &s)| s)
    }
}

fn info(msg: String) -> Decision {
    Decision::Log(Level::Info, msg)
}

fn show(key: &DeviceKey, shown: Shown) -> Decision {
    Decision::Show {
        key: key.clone(),
        shown,
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

#[cfg(test)]
#[path = "plan_test.rs"]
mod tests;
