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
use serde_json::Value;

use crate::daemon::assign::{move_aside, write_atomically};

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
/// What a lease file may hold: leases.json is read whole at start, so a hostile or runaway
/// one must not take the memory or the time (a device has one lease, a hub a few hundred
/// devices at most).
const MAX_FILE_BYTES: u64 = 1 << 20;
const MAX_LEASES: usize = 1024;
/// A lease id and a device key as the file may give them (ours: 16 hex digits, and a
/// `serial:…`/`path:…`/`name:…` key).
const MAX_ID: usize = 64;
const MAX_DEVICE: usize = 512;

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

/// Who asks to see or change a lease, as far as leases go: the bearer of the API token may
/// do anything; any other peer only what concerns its own address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Asker {
    /// The request carried the portal's token (`access.token_file`).
    Bearer,
    /// Only an address: what the server sees of the connection.
    Peer(IpAddr),
}

impl Asker {
    /// Whether it may see `l`'s id and end `l`: the token, or the lease's own address.
    pub(crate) fn holds(self, l: &Lease) -> bool {
        match self {
            Asker::Bearer => true,
            Asker::Peer(ip) => same_host(l.address, ip),
        }
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
    /// A peer without the token asked to end another address's lease.
    NotHolder { holder: IpAddr },
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
            LeaseError::NotHolder { holder } => write!(
                f,
                "only its holder ({holder}) may end this lease early, or a request with the API token (Authorization: Bearer TOKEN, access.token_file); otherwise it ends by itself"
            ),
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

#[derive(Serialize)]
struct LeaseFile {
    version: u32,
    leases: Vec<Lease>,
}

impl Book {
    /// The leases stored in `file` that have not expired. A missing file is an empty book;
    /// one that cannot be read as a lease file is moved aside to `leases.json.corrupt` (the
    /// daemon serves without it); entries out of bounds are left out, named in one line, and
    /// the good ones kept — a hostile or damaged file never stops the start or drops the rest.
    pub(crate) fn load(file: &Path, now: u64) -> Book {
        let leases = match read_bounded(file) {
            Ok(Some(bytes)) => match parse_file(&bytes, now) {
                Ok((leases, bad)) => {
                    if !bad.is_empty() {
                        warn!(
                            "{}: left out {} bad lease(s): {}; kept {}",
                            file.display(),
                            bad.len(),
                            bad.join("; "),
                            leases.len()
                        );
                    }
                    leases
                }
                Err(why) => set_aside(file, &why),
            },
            Ok(None) => Vec::new(),
            Err(why) => set_aside(file, &why),
        };
        Book {
            leases,
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
        let expires = now.saturating_add(seconds);
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

    /// End lease `id` on `device` now, if `by` holds it.
    pub(crate) fn release(
        &mut self,
        device: &str,
        id: &str,
        by: Asker,
        now: u64,
    ) -> Result<Lease, LeaseError> {
        self.leases.retain(|l| l.active(now));
        let at = self
            .leases
            .iter()
            .position(|l| l.device == device && l.id == id)
            .ok_or_else(|| LeaseError::NotFound(id.to_owned()))?;
        if !by.holds(&self.leases[at]) {
            return Err(LeaseError::NotHolder {
                holder: self.leases[at].address,
            });
        }
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

/// The file's bytes (`None`: there is none), at most [`MAX_FILE_BYTES`].
fn read_bounded(file: &Path) -> Result<Option<Vec<u8>>, String> {
    use std::io::Read as _;
    let f = match std::fs::File::open(file) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("unreadable ({e})")),
    };
    let mut bytes = Vec::new();
    (f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("unreadable ({e})"))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("larger than {} KiB", MAX_FILE_BYTES / 1024));
    }
    Ok(Some(bytes))
}

/// The file's active leases within bounds, and a note on each entry left out; `Err`: it is
/// no lease file at all.
fn parse_file(bytes: &[u8], now: u64) -> Result<(Vec<Lease>, Vec<String>), String> {
    #[derive(Deserialize)]
    struct Raw {
        #[allow(dead_code)]
        version: u32,
        leases: Vec<Value>,
    }
    let raw: Raw = serde_json::from_slice(bytes).map_err(|e| format!("not a lease file ({e})"))?;
    let mut leases: Vec<Lease> = Vec::new();
    let mut bad = Vec::new();
    for (i, v) in raw.leases.into_iter().enumerate() {
        let checked = serde_json::from_value::<Lease>(v)
            .map_err(|e| e.to_string())
            .and_then(|l| check(l, now));
        let why = match checked {
            Ok(l) if !l.active(now) => continue,
            Ok(_) if leases.len() >= MAX_LEASES => format!("more than {MAX_LEASES} leases"),
            Ok(l) if leases.iter().any(|o| o.device == l.device) => {
                format!("{} is leased twice", l.device)
            }
            Ok(l) => {
                leases.push(l);
                continue;
            }
            Err(why) => why,
        };
        // Bounded: the names of the first few, then a count.
        if bad.len() < 8 {
            bad.push(format!("#{i}: {why}"));
        } else if bad.len() == 8 {
            bad.push("and more".to_string());
        }
    }
    Ok((leases, bad))
}

/// One lease from the file, if every field is within what the daemon itself would write.
fn check(l: Lease, now: u64) -> Result<Lease, String> {
    let latest = now.saturating_add(MAX_SECONDS);
    let printable = |s: &str| !s.chars().any(char::is_control);
    if l.id.is_empty() || l.id.len() > MAX_ID || !l.id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err("its id is not 1 to 64 letters and digits".to_string());
    }
    if l.device.is_empty() || l.device.len() > MAX_DEVICE || !printable(&l.device) {
        return Err(format!("lease {}: a bad device key", l.id));
    }
    if l.expires > latest {
        return Err(format!(
            "lease {} on {}: expires {} s from now, more than the longest lease ({MAX_SECONDS} s)",
            l.id,
            l.device,
            l.expires - now
        ));
    }
    if l.granted > l.expires {
        return Err(format!(
            "lease {} on {}: granted after it expires",
            l.id, l.device
        ));
    }
    Ok(l)
}

/// A file that is no lease file: moved aside (kept to look at), and no leases.
fn set_aside(file: &Path, why: &str) -> Vec<Lease> {
    match move_aside(file) {
        Ok(aside) => warn!(
            "{} is {why}: moved it to {} and starting without leases",
            file.display(),
            aside.display()
        ),
        Err(e) => warn!(
            "{} is {why} and cannot be moved aside ({e}); starting without leases, and it is overwritten on the next lease",
            file.display()
        ),
    }
    Vec::new()
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
            again.release("d", "nope", Asker::Bearer, now),
            Err(LeaseError::NotFound("nope".into()))
        );
        // Only its holder, or the token, ends it.
        assert_eq!(
            again.release("d", &a.id, Asker::Peer(ip("10.0.0.8")), now),
            Err(LeaseError::NotHolder {
                holder: ip("10.0.0.7")
            })
        );
        assert_eq!(
            again.release("d", &a.id, Asker::Peer(ip("::ffff:10.0.0.7")), now),
            Ok(a.clone())
        );
        again
            .grant("d", ip("10.0.0.7"), 60, now, || a.id.clone())
            .unwrap();
        assert_eq!(again.release("d", &a.id, Asker::Bearer, now), Ok(a));
        assert_eq!(again.all(now).count(), 0);
        // A damaged file is set aside, not fatal.
        std::fs::write(&file, b"{").unwrap();
        assert_eq!(Book::load(&file, now).all(now).count(), 0);
        assert!(!file.exists());
        assert_eq!(
            std::fs::read(dir.join("leases.json.corrupt")).unwrap(),
            b"{"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_hostile_file_keeps_its_good_leases_and_bounds_every_field() {
        let dir = std::env::temp_dir().join(format!("serialhub-lease-bad-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("leases.json");
        let now = 1_000_000;
        let entry = |id: &str, device: &str, address: &str, granted: u64, expires: u64| {
            serde_json::json!({"id": id, "device": device, "address": address,
                               "granted": granted, "expires": expires})
        };
        let body = serde_json::json!({"version": 1, "leases": [
            entry("good1", "serial:1", "10.0.0.7", now, now + 60),
            entry("far", "serial:2", "10.0.0.7", now, u64::MAX),
            entry("late", "serial:3", "10.0.0.7", now, now + MAX_SECONDS + 1),
            entry("", "serial:4", "10.0.0.7", now, now + 60),
            entry("x/y", "serial:4", "10.0.0.7", now, now + 60),
            entry("twice", "serial:1", "10.0.0.8", now, now + 60),
            entry("ctl", "serial:\n5", "10.0.0.7", now, now + 60),
            entry("back", "serial:6", "10.0.0.7", now + 100, now + 60),
            {"id": "noaddr", "device": "serial:7", "address": "pi", "granted": 0, "expires": now + 60},
            {"id": "neg", "device": "serial:8", "address": "10.0.0.7", "granted": 0, "expires": -1},
            "not an object",
            entry("old", "serial:9", "10.0.0.7", 0, now - 1),
            entry("good2", "serial:10", "::1", now, now + MAX_SECONDS),
        ]});
        std::fs::write(&file, body.to_string()).unwrap();
        let b = Book::load(&file, now);
        let ids: Vec<&str> = b.leases.iter().map(|l| l.id.as_str()).collect();
        assert_eq!(ids, ["good1", "good2"]);
        // The file stays (it was readable); the next save rewrites it with the good ones.
        assert!(file.exists() && !dir.join("leases.json.corrupt").exists());
        // Every field is bounded: no expiry beyond the longest lease, so no clock overflows.
        let r = parse_file(body.to_string().as_bytes(), now).unwrap();
        assert_eq!(r.1.len(), 9, "{:?}", r.1);
        assert!(
            r.1[0].starts_with("#1: lease far on serial:2: expires"),
            "{:?}",
            r.1
        );
        // No lease file at all: moved aside.
        for junk in [
            &b"[]"[..],
            b"{\"version\": 1}",
            b"\xff\xfe",
            b"{\"version\": 1, \"leases\": 5}",
        ] {
            std::fs::write(&file, junk).unwrap();
            assert_eq!(Book::load(&file, now).leases, vec![]);
            assert_eq!(
                std::fs::read(dir.join("leases.json.corrupt")).unwrap(),
                junk
            );
        }
        // Too large to be ours: moved aside unread.
        std::fs::write(&file, vec![b' '; MAX_FILE_BYTES as usize + 1]).unwrap();
        assert_eq!(Book::load(&file, now).leases, vec![]);
        assert!(!file.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
