//! The shared view of every device: identity, key, port, state, client, counters. The
//! supervisor and the bridges write it; the portal only reads snapshots. One short-held
//! mutex for the structure; the byte counters are atomics the bridges bump without locking.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::daemon::assign::DeviceKey;
use crate::daemon::identity::UsbInfo;

/// Where a device is in its life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum DeviceState {
    /// Known (it has a port) but not plugged in.
    Absent,
    /// Plugged in; waiting to settle or to become openable.
    Starting,
    /// Open and waiting for a client.
    Idle,
    /// A client is connected.
    Connected,
    /// Came and went too often; left alone until the cool-down ends.
    Flapping,
    /// Switched off in the config (`enabled = false`).
    Disabled,
    /// Cannot be served; the message says why and what to do.
    Error(String),
}

impl DeviceState {
    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            DeviceState::Absent => "absent",
            DeviceState::Starting => "starting",
            DeviceState::Idle => "idle",
            DeviceState::Connected => "connected",
            DeviceState::Flapping => "flapping",
            DeviceState::Disabled => "disabled",
            DeviceState::Error(_) => "error",
        }
    }
}

/// The last bytes a device printed, kept whether or not a client is connected, so a boot log
/// or a crash dump is never lost. Offsets count every byte ever written, so a reader can
/// follow it with a cursor (`since`).
#[derive(Debug)]
pub(crate) struct LogRing {
    buf: Vec<u8>,
    cap: usize,
    /// Total bytes ever written; the ring holds `total - buf.len() .. total`.
    total: u64,
}

/// How much of each device's output is kept.
pub(crate) const LOG_RING_BYTES: usize = 64 * 1024;

impl LogRing {
    pub(crate) fn new(cap: usize) -> LogRing {
        LogRing {
            buf: Vec::new(),
            cap,
            total: 0,
        }
    }

    /// Append device output; the oldest bytes fall off. Amortised: the buffer is compacted
    /// only when it has grown to twice the capacity.
    pub(crate) fn push(&mut self, data: &[u8]) {
        self.total += data.len() as u64;
        let data = &data[data.len().saturating_sub(self.cap)..];
        if self.buf.len() + data.len() > 2 * self.cap {
            let keep = self.cap.saturating_sub(data.len());
            let drop = self.buf.len().saturating_sub(keep);
            self.buf.drain(..drop);
        }
        self.buf.extend_from_slice(data);
    }

    /// The kept bytes from offset `since` (clamped to what is kept) and the offset to pass
    /// next time.
    pub(crate) fn read_since(&self, since: u64) -> (Vec<u8>, u64) {
        let kept = (self.buf.len()).min(self.cap);
        let first = self.total - kept as u64;
        let from = since.clamp(first, self.total);
        let skip = (from - first) as usize;
        let start = self.buf.len() - kept + skip;
        (self.buf[start..].to_vec(), self.total)
    }
}

/// Counters a bridge bumps on its data path: atomics, so no lock is taken per read.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) bytes_to_device: AtomicU64,
    pub(crate) bytes_to_client: AtomicU64,
    pub(crate) connects: AtomicU64,
    pub(crate) resets: AtomicU64,
    /// Bytes observers wrote (dropped: only the client in control reaches the device).
    pub(crate) observer_bytes_dropped: AtomicU64,
    /// Device output observers missed by not reading fast enough.
    pub(crate) observer_output_missed: AtomicU64,
    /// Connections refused for want of a lease.
    pub(crate) lease_refusals: AtomicU64,
}

impl Stats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// What a connected client may do with the device (see `daemon::bridge`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// Its bytes, settings and lines reach the device.
    Control,
    /// It receives the device's output; what it writes is dropped.
    Observe,
}

impl Role {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Role::Control => "control",
            Role::Observe => "observe",
        }
    }
}

/// What an observer lost, counted by the bridge without a lock.
#[derive(Debug, Default)]
pub(crate) struct Dropped {
    /// Bytes it wrote while observing (never reach the device).
    pub(crate) from_client: AtomicU64,
    /// Device output it missed because it did not read fast enough.
    pub(crate) to_client: AtomicU64,
}

#[derive(Clone, Debug)]
pub(crate) struct ClientInfo {
    pub(crate) addr: SocketAddr,
    /// When the client connected, on the monotonic clock: a Pi without an RTC boots in 1970
    /// and NTP steps its wall clock later, which would make "connected for" jump. The wall
    /// time for the API is derived when it is shown.
    pub(crate) since: Instant,
    pub(crate) role: Role,
    pub(crate) dropped: Arc<Dropped>,
}

/// One device as the registry knows it.
#[derive(Clone, Debug)]
pub(crate) struct DeviceEntry {
    pub(crate) key: DeviceKey,
    pub(crate) name: String,
    /// The device node, e.g. `/dev/ttyUSB0` (the last one it had, when absent).
    pub(crate) tty: String,
    pub(crate) usb: Option<UsbInfo>,
    pub(crate) port: u16,
    pub(crate) state: DeviceState,
    /// Connected clients, the one in control first.
    pub(crate) clients: Vec<ClientInfo>,
    /// The reset policy in force, as configured or picked by `auto`.
    pub(crate) reset: crate::protocol::reset::Policy,
    /// How clients talk to its port (`auto`: both RFC 2217 and raw).
    pub(crate) protocol: crate::protocol::Protocol,
    pub(crate) stats: Arc<Stats>,
    pub(crate) log: Arc<Mutex<LogRing>>,
}

/// The registry, shared as `Arc<Registry>`.
#[derive(Debug)]
pub(crate) struct Registry {
    started: Instant,
    devices: Mutex<BTreeMap<DeviceKey, DeviceEntry>>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            started: Instant::now(),
            devices: Mutex::new(BTreeMap::new()),
        }
    }
}

impl Registry {
    pub(crate) fn new() -> Arc<Registry> {
        Arc::new(Registry::default())
    }

    pub(crate) fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<DeviceKey, DeviceEntry>> {
        // A panic while holding the lock cannot leave an entry half-written in a way that
        // matters to readers; keep serving rather than propagate the poison.
        self.devices.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Add or replace a device's entry; returns it with its counters and log (kept when the
    /// key was known).
    pub(crate) fn upsert(&self, mut entry: DeviceEntry) -> DeviceEntry {
        let mut d = self.lock();
        if let Some(old) = d.get(&entry.key) {
            entry.stats = old.stats.clone();
            entry.log = old.log.clone();
        }
        d.insert(entry.key.clone(), entry.clone());
        entry
    }

    pub(crate) fn update(&self, key: &DeviceKey, f: impl FnOnce(&mut DeviceEntry)) {
        if let Some(e) = self.lock().get_mut(key) {
            f(e);
        }
    }

    pub(crate) fn set_state(&self, key: &DeviceKey, state: DeviceState) {
        self.update(key, |e| e.state = state);
    }

    #[cfg(test)]
    pub(crate) fn get(&self, key: &DeviceKey) -> Option<DeviceEntry> {
        self.lock().get(key).cloned()
    }

    /// A copy of every entry, in key order, taken under one short lock.
    pub(crate) fn snapshot(&self) -> Vec<DeviceEntry> {
        self.lock().values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_survive_replacement() {
        let r = Registry::new();
        let key = DeviceKey::name("ttyUSB0");
        let entry = DeviceEntry {
            key: key.clone(),
            name: "a".into(),
            tty: "/dev/ttyUSB0".into(),
            usb: None,
            port: 4001,
            state: DeviceState::Starting,
            clients: Vec::new(),
            reset: crate::protocol::reset::Policy::Esp { esp32r0: false },
            protocol: Default::default(),
            stats: Arc::default(),
            log: Arc::new(Mutex::new(LogRing::new(16))),
        };
        let first = r.upsert(entry.clone());
        Stats::add(&first.stats.connects, 2);
        let again = r.upsert(entry);
        assert_eq!(Stats::get(&again.stats.connects), 2);
        assert!(Arc::ptr_eq(&first.log, &again.log));
        r.set_state(&key, DeviceState::Idle);
        assert_eq!(r.get(&key).unwrap().state, DeviceState::Idle);
        assert_eq!(r.snapshot().len(), 1);
    }

    #[test]
    fn log_ring_keeps_the_tail_and_follows_a_cursor() {
        let mut l = LogRing::new(8);
        l.push(b"hello ");
        assert_eq!(l.read_since(0), (b"hello ".to_vec(), 6));
        l.push(b"world!");
        // 12 bytes written, 8 kept.
        assert_eq!(l.read_since(0), (b"o world!".to_vec(), 12));
        assert_eq!(l.read_since(10), (b"d!".to_vec(), 12));
        assert_eq!(l.read_since(99), (Vec::new(), 12));
        for _ in 0..100 {
            l.push(b"0123456789abc");
        }
        let (tail, next) = l.read_since(0);
        assert_eq!(tail, b"56789abc", "{:?}", String::from_utf8_lossy(&tail));
        assert_eq!(next, 12 + 1300);
    }
}
