//! Leases: a device reserved for one address for a while, so a board opens to one machine for
//! one job and closes again (`[access] lease`, `POST /api/devices/{key}/lease`).
//!
//! Stock clients cannot authenticate in-band, so a lease is by address: what the server sees
//! of a connection. The book is shared: the portal grants and releases (and writes the file),
//! each bridge checks it when a client connects and keeps a timer for its device's next
//! expiry. Times are wall-clock Unix seconds, since leases outlive the process; a device has
//! at most one holder at a time, so the book is bounded by the devices it names.

use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use log::warn;
use serde::{Deserialize, Serialize};

use crate::daemon::assign::write_atomically;

/// The `[access] lease` key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Policy {
    /// A device port accepts only an address that holds a lease on it.
    Required,
    /// A device with an active lease is reserved for its holder; the others are open.
    #[default]
    Optional,
    /// No leases: the endpoints answer 404.
    Off,
}

/// The `[access] lease_expiry` key: what happens to the holder's connections when its lease
/// runs out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Expiry {
    /// They stay until they end (a flash in progress finishes); new ones follow the policy.
    #[default]
    Finish,
    /// They are closed.
    Close,
}

/// The shortest and longest lease one request may take.
pub(crate) const MIN_SECONDS: u64 = 10;
pub(crate) const MAX_SECONDS: u64 = 7 * 24 * 3600;
/// The length of a lease whose request names none.
pub(crate) const DEFAULT_SECONDS: u64 = 1800;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Lease {
    /// Random, so one holder cannot guess another's to end it.
    pub(crate) id: String,
    /// The device's key (`serial:0123`).
    pub(crate) device: String,
    pub(crate) address: IpAddr,
    /// Unix seconds.
    pub(crate) granted: u64,
    pub(crate) expires: u64,
}

impl Lease {
    pub(crate) fn active(&self, now: u64) -> bool {
        now < self.expires
    }

    /// Seconds left at `now`.
    pub(crate) fn left(&self, now: u64) -> u64 {
        self.expires.saturating_sub(now)
    }
}

/// Why a lease cannot be granted or released.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LeaseError {
    /// Another address holds the device.
    Held { by: IpAddr, left: u64 },
    /// The length asked for is out of range.
    Length(u64),
    /// No such lease on that device.
    NotFound(String),
}

impl std::fmt::Display for LeaseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LeaseError::Held { by, left } => write!(
                f,
                "the device is leased to {by} for {left} s more; ask its holder, or wait"
            ),
            LeaseError::Length(s) => write!(
                f,
                "a lease of {s} s: give \"seconds\" from {MIN_SECONDS} to {MAX_SECONDS}"
            ),
            LeaseError::NotFound(id) => write!(f, "no lease {id} on this device"),
        }
    }
}

/// Why a connection is refused for want of a lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `lease = "required"` and the address holds none.
    NoLease,
    /// The device is leased to another address.
    LeasedToOther,
}

impl Refusal {
    /// What the log and the client are told (a form fail2ban can match after the address).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Refusal::NoLease => "no lease",
            Refusal::LeasedToOther => "leased to another address",
        }
    }
}

/// Whether `ip` may connect to a device whose active leases are `leases`.
pub(crate) fn admits<'a>(
    policy: Policy,
    mut leases: impl Iterator<Item = &'a Lease>,
    ip: IpAddr,
) -> Result<(), Refusal> {
    let mut any = false;
    let holder = leases.any(|l| {
        any = true;
        same_host(l.address, ip)
    });
    match (policy, holder, any) {
        (Policy::Off, _, _) | (_, true, _) => Ok(()),
        (Policy::Required, false, _) => Err(Refusal::NoLease),
        (Policy::Optional, false, true) => Err(Refusal::LeasedToOther),
        (Policy::Optional, false, false) => Ok(()),
    }
}

/// An IPv4 address and its IPv6-mapped form are one host (a dual-stack listener sees the
/// latter).
fn same_host(a: IpAddr, b: IpAddr) -> bool {
    a.to_canonical() == b.to_canonical()
}

/// The rules, the leases in force, and the file they live in.
#[derive(Debug, Default)]
pub(crate) struct Book {
    pub(crate) policy: Policy,
    pub(crate) expiry: Expiry,
    leases: Vec<Lease>,
    file: Option<PathBuf>,
}

#[derive(Serialize, Deserialize)]
struct LeaseFile {
    version: u32,
    leases: Vec<Lease>,
}

impl Book {
    /// The leases stored in `file` that have not expired; a missing file is an empty book,
    /// an unreadable one is said and set aside (a new one is written on the next change).
    pub(crate) fn load(file: &Path, now: u64) -> Book {
        let leases = match std::fs::read(file) {
            Ok(bytes) => match serde_json::from_slice::<LeaseFile>(&bytes) {
                Ok(f) => f.leases,
                Err(e) => {
                    warn!(
                        "{}: not a lease file ({e}); starting without leases",
                        file.display()
                    );
                    Vec::new()
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                warn!(
                    "cannot read {}: {e}; starting without leases",
                    file.display()
                );
                Vec::new()
            }
        };
        Book {
            leases: leases.into_iter().filter(|l| l.active(now)).collect(),
            file: Some(file.to_owned()),
            ..Book::default()
        }
    }

    /// The rules from `[access]` (at start, and on SIGHUP).
    pub(crate) fn set_rules(&mut self, policy: Policy, expiry: Expiry) {
        self.policy = policy;
        self.expiry = expiry;
    }

    /// Whether `ip` may connect to `device` at `now`.
    pub(crate) fn admits(&self, device: &str, ip: IpAddr, now: u64) -> Result<(), Refusal> {
        admits(self.policy, self.on(device, now), ip)
    }

    /// Active leases on `device`.
    pub(crate) fn on<'a>(&'a self, device: &'a str, now: u64) -> impl Iterator<Item = &'a Lease> {
        self.leases
            .iter()
            .filter(move |l| l.device == device && l.active(now))
    }

    /// Every active lease.
    #[cfg(test)]
    fn all(&self, now: u64) -> impl Iterator<Item = &Lease> {
        self.leases.iter().filter(move |l| l.active(now))
    }

    /// Lease `device` to `address` for `seconds` from `now`. The holder asking again extends
    /// its lease (same id); another address is refused while the lease runs.
    pub(crate) fn grant(
        &mut self,
        device: &str,
        address: IpAddr,
        seconds: u64,
        now: u64,
        id: impl FnOnce() -> String,
    ) -> Result<Lease, LeaseError> {
        if !(MIN_SECONDS..=MAX_SECONDS).contains(&seconds) {
            return Err(LeaseError::Length(seconds));
        }
        self.leases.retain(|l| l.active(now));
        let expires = now + seconds;
        if let Some(l) = self.leases.iter_mut().find(|l| l.device == device) {
            if !same_host(l.address, address) {
                return Err(LeaseError::Held {
                    by: l.address,
                    left: l.left(now),
                });
            }
            l.expires = expires;
            return Ok(l.clone());
        }
        let lease = Lease {
            id: id(),
            device: device.to_owned(),
            address,
            granted: now,
            expires,
        };
        self.leases.push(lease.clone());
        Ok(lease)
    }

    /// End lease `id` on `device` now.
    pub(crate) fn release(
        &mut self,
        device: &str,
        id: &str,
        now: u64,
    ) -> Result<Lease, LeaseError> {
        self.leases.retain(|l| l.active(now));
        let at = self
            .leases
            .iter()
            .position(|l| l.device == device && l.id == id)
            .ok_or_else(|| LeaseError::NotFound(id.to_owned()))?;
        Ok(self.leases.remove(at))
    }

    /// Write the book atomically (a daemon restart keeps the leases).
    pub(crate) fn save(&self) -> io::Result<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let body = LeaseFile {
            version: 1,
            leases: self.leases.clone(),
        };
        let mut json = serde_json::to_vec_pretty(&body).map_err(io::Error::other)?;
        json.push(b'\n');
        write_atomically(file, &json)
    }
}

/// The book, shared by the portal (which changes it), the supervisor (which sets its rules)
/// and the bridges (which read it when a client connects: one short lock, no allocation).
#[derive(Debug, Default)]
pub(crate) struct Leases(Mutex<Book>);

impl Leases {
    pub(crate) fn new(book: Book) -> Leases {
        Leases(Mutex::new(book))
    }

    pub(crate) fn book(&self) -> MutexGuard<'_, Book> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The wall clock in Unix seconds.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// How long from now until Unix second `at` (zero if it has passed).
pub(crate) fn until(at: u64) -> Duration {
    Duration::from_secs(at.saturating_sub(unix_now()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn counter() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            format!("id{n}")
        }
    }

    #[test]
    fn one_holder_per_device_who_may_extend_it() {
        let mut b = Book::default();
        let mut id = counter();
        let a = b
            .grant("serial:1", ip("10.0.0.7"), 60, 1000, &mut id)
            .unwrap();
        assert_eq!((a.id.as_str(), a.expires), ("id1", 1060));
        assert_eq!(
            b.grant("serial:1", ip("10.0.0.9"), 60, 1010, &mut id),
            Err(LeaseError::Held {
                by: ip("10.0.0.7"),
                left: 50
            })
        );
        // The holder again (as an IPv6-mapped address): the same lease, longer.
        let again = b
            .grant("serial:1", ip("::ffff:10.0.0.7"), 600, 1010, &mut id)
            .unwrap();
        assert_eq!((again.id.as_str(), again.expires), ("id1", 1610));
        // Another device is free.
        assert!(b
            .grant("serial:2", ip("10.0.0.9"), 60, 1010, &mut id)
            .is_ok());
        assert_eq!(
            b.grant("serial:3", ip("10.0.0.9"), 5, 1010, &mut id),
            Err(LeaseError::Length(5))
        );
        // Expired: anyone may take it.
        assert!(b
            .grant("serial:1", ip("10.0.0.9"), 60, 1610, &mut id)
            .is_ok());
    }

    #[test]
    fn the_policy_decides_who_connects() {
        let mut b = Book::default();
        b.grant("d", ip("10.0.0.7"), 60, 1000, counter()).unwrap();
        let on = |now| b.on("d", now).collect::<Vec<_>>();
        let check = |p, now, who| admits(p, on(now).into_iter(), ip(who));
        assert_eq!(check(Policy::Required, 1001, "10.0.0.7"), Ok(()));
        assert_eq!(
            check(Policy::Required, 1001, "10.0.0.9"),
            Err(Refusal::NoLease)
        );
        assert_eq!(
            check(Policy::Optional, 1001, "10.0.0.9"),
            Err(Refusal::LeasedToOther)
        );
        assert_eq!(check(Policy::Off, 1001, "10.0.0.9"), Ok(()));
        // Expired: optional is open again, required closed to everyone.
        assert_eq!(check(Policy::Optional, 1060, "10.0.0.9"), Ok(()));
        assert_eq!(
            check(Policy::Required, 1060, "10.0.0.7"),
            Err(Refusal::NoLease)
        );
    }

    #[test]
    fn release_and_persistence() {
        let dir = std::env::temp_dir().join(format!("serialhub-lease-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let file = dir.join("leases.json");
        let now = unix_now();
        let mut b = Book::load(&file, now);
        let a = b.grant("d", ip("10.0.0.7"), 60, now, counter()).unwrap();
        b.grant("e", ip("10.0.0.8"), 60, now - 100, counter())
            .unwrap();
        b.save().unwrap();
        // Reloaded: the active one only.
        let mut again = Book::load(&file, now);
        assert_eq!(again.all(now).cloned().collect::<Vec<_>>(), vec![a.clone()]);
        assert_eq!(
            again.release("d", "nope", now),
            Err(LeaseError::NotFound("nope".into()))
        );
        assert_eq!(again.release("d", &a.id, now), Ok(a));
        assert_eq!(again.all(now).count(), 0);
        // A damaged file is set aside, not fatal.
        std::fs::write(&file, b"{").unwrap();
        assert_eq!(Book::load(&file, now).all(now).count(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
