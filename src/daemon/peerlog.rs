//! How often a remote peer may make the daemon write a log line. A scanner, a broken client
//! or a loop of connect/disconnect must not fill an SD card: each address gets a few lines a
//! minute; what it causes beyond that is counted, and the count is told with its next line.
//! Pure (the caller passes the time) and bounded (a fixed number of addresses is tracked).
//! [`Budget`] bounds what a peer may make the daemon write to disk the same way (lease
//! changes: each is an fsync and a log line). Both count a peer by [`PeerKey`]: an IPv6 host
//! picks any address of its /64 at will, so counting addresses would give it a new budget
//! with every connection and push every other peer out of the table.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

/// Who a budget is kept for: an IPv4 address (its IPv6-mapped form is the same host), or an
/// IPv6 /64 (what one host or one LAN segment holds; any address in it is the same peer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PeerKey(IpAddr);

impl PeerKey {
    pub(crate) fn of(ip: IpAddr) -> PeerKey {
        match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                PeerKey(IpAddr::V6(Ipv6Addr::from(bits)))
            }
            v4 => PeerKey(v4),
        }
    }
}

impl fmt::Display for PeerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(a) => write!(f, "{a}"),
            IpAddr::V6(a) => write!(f, "{a}/64"),
        }
    }
}

/// Lines one address may cause per [`WINDOW`].
const BURST: u32 = 10;
const WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at once; the one seen least recently makes room.
const PEERS: usize = 64;

/// What to do with a line a peer caused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Write it; `suppressed` lines from this address were left out since the last one.
    Log { suppressed: u32 },
    /// Leave it out (it is counted).
    Quiet,
}

#[derive(Debug)]
struct Peer {
    addr: PeerKey,
    since: Instant,
    lines: u32,
    suppressed: u32,
    seen: Instant,
}

/// Per-address line budgets.
#[derive(Debug)]
pub(crate) struct PeerLog {
    peers: Vec<Peer>,
    burst: u32,
}

impl Default for PeerLog {
    fn default() -> Self {
        PeerLog::with_burst(BURST)
    }
}

impl PeerLog {
    /// `burst` lines per address a minute.
    pub(crate) fn with_burst(burst: u32) -> PeerLog {
        PeerLog {
            peers: Vec::new(),
            burst,
        }
    }

    /// A line caused by `addr` at `now`: write it or not.
    pub(crate) fn check(&mut self, addr: IpAddr, now: Instant) -> Verdict {
        let addr = PeerKey::of(addr);
        let i = match self.peers.iter().position(|p| p.addr == addr) {
            Some(i) => i,
            None => {
                if self.peers.len() >= PEERS {
                    let oldest = (0..self.peers.len())
                        .min_by_key(|&i| self.peers[i].seen)
                        .unwrap_or(0);
                    self.peers.swap_remove(oldest);
                }
                self.peers.push(Peer {
                    addr,
                    since: now,
                    lines: 0,
                    suppressed: 0,
                    seen: now,
                });
                self.peers.len() - 1
            }
        };
        let p = &mut self.peers[i];
        p.seen = now;
        if now.saturating_duration_since(p.since) >= WINDOW {
            p.since = now;
            p.lines = 0;
        }
        if p.lines >= self.burst {
            p.suppressed += 1;
            return Verdict::Quiet;
        }
        p.lines += 1;
        Verdict::Log {
            suppressed: std::mem::take(&mut p.suppressed),
        }
    }
}

/// The note a logged line carries about the lines left out before it.
pub(crate) fn suppressed_note(addr: IpAddr, n: u32) -> String {
    match n {
        0 => String::new(),
        n => format!(
            " ({n} more lines about {} were left out of the log)",
            PeerKey::of(addr)
        ),
    }
}

/// What a peer may still do: go on, or wait this long (a 429's `Retry-After`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Spend {
    Granted,
    Exhausted { retry_after: Duration },
}

#[derive(Debug)]
struct Account {
    key: PeerKey,
    since: Instant,
    spent: u32,
}

/// `per_window` actions per [`PeerKey`] per window, for at most [`PEERS`] peers at once, so
/// what all peers together cause is bounded too (`PEERS × per_window` a window). A peer
/// takes the place of one whose window has ended; while every place is in use the newcomer
/// waits (evicting a live account would hand a peer with many addresses a fresh budget).
#[derive(Debug)]
pub(crate) struct Budget {
    accounts: Vec<Account>,
    per_window: u32,
    window: Duration,
}

impl Budget {
    pub(crate) fn new(per_window: u32, window: Duration) -> Budget {
        Budget {
            accounts: Vec::with_capacity(PEERS),
            per_window,
            window,
        }
    }

    /// `ip` wants to do one more thing at `now`: charged before the work is done.
    pub(crate) fn spend(&mut self, ip: IpAddr, now: Instant) -> Spend {
        let key = PeerKey::of(ip);
        let window = self.window;
        let ended = |a: &Account| now.saturating_duration_since(a.since) >= window;
        let i = match self.accounts.iter().position(|a| a.key == key) {
            Some(i) => i,
            None if self.accounts.len() < PEERS => {
                self.accounts.push(Account {
                    key,
                    since: now,
                    spent: 0,
                });
                self.accounts.len() - 1
            }
            None => match self.accounts.iter().position(ended) {
                Some(i) => {
                    self.accounts[i] = Account {
                        key,
                        since: now,
                        spent: 0,
                    };
                    i
                }
                None => {
                    let first = self.accounts.iter().map(|a| a.since).min().unwrap_or(now);
                    return Spend::Exhausted {
                        retry_after: (first + window).saturating_duration_since(now),
                    };
                }
            },
        };
        let a = &mut self.accounts[i];
        if ended(a) {
            a.since = now;
            a.spent = 0;
        }
        if a.spent >= self.per_window {
            return Spend::Exhausted {
                retry_after: (a.since + window).saturating_duration_since(now),
            };
        }
        a.spent += 1;
        Spend::Granted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_per_minute_then_counted_and_told_with_the_next_line() {
        let t0 = Instant::now();
        let a: IpAddr = "10.0.0.9".parse().unwrap();
        let b: IpAddr = "10.0.0.7".parse().unwrap();
        let mut log = PeerLog::default();
        for _ in 0..BURST {
            assert_eq!(log.check(a, t0), Verdict::Log { suppressed: 0 });
        }
        for _ in 0..1000 {
            assert_eq!(log.check(a, t0), Verdict::Quiet);
        }
        // Another address has its own budget.
        assert_eq!(log.check(b, t0), Verdict::Log { suppressed: 0 });
        assert_eq!(log.check(a, t0 + WINDOW), Verdict::Log { suppressed: 1000 });
        assert!(suppressed_note(a, 1000).contains("1000 more lines about 10.0.0.9"));
    }

    #[test]
    fn the_table_is_bounded() {
        let t0 = Instant::now();
        let mut log = PeerLog::default();
        for i in 0..10_000u32 {
            let addr = IpAddr::from(i.to_be_bytes());
            log.check(addr, t0 + Duration::from_millis(u64::from(i)));
        }
        assert_eq!(log.peers.len(), PEERS);
    }

    #[test]
    fn an_ipv6_slash_64_is_one_peer_and_a_mapped_ipv4_is_its_address() {
        let key = |s: &str| PeerKey::of(s.parse().unwrap());
        assert_eq!(
            key("2001:db8:1:2::1"),
            key("2001:db8:1:2:ffff:ffff:ffff:ffff")
        );
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:10.0.0.9"), key("10.0.0.9"));
        assert_eq!(key("2001:db8:1:2:3:4:5:6").to_string(), "2001:db8:1:2::/64");
        assert_eq!(key("10.0.0.9").to_string(), "10.0.0.9");
        // A host cycling through the addresses of its /64 has one log budget, and it is
        // told as the /64.
        let t0 = Instant::now();
        let mut log = PeerLog::default();
        for i in 0..10_000u64 {
            let a = IpAddr::V6(Ipv6Addr::from(
                (0x2001_0db8_0001_0002u128 << 64) | u128::from(i),
            ));
            let v = log.check(a, t0);
            assert_eq!(v == Verdict::Quiet, i >= u64::from(BURST), "{i}");
        }
        assert_eq!(log.peers.len(), 1);
        assert!(suppressed_note("2001:db8:1:2::9".parse().unwrap(), 3)
            .contains("3 more lines about 2001:db8:1:2::/64"));
    }

    #[test]
    fn a_budget_per_peer_with_the_wait_told_and_a_bounded_table() {
        let t0 = Instant::now();
        let w = Duration::from_secs(60);
        let mut b = Budget::new(12, w);
        let a: IpAddr = "10.0.0.9".parse().unwrap();
        for _ in 0..12 {
            assert_eq!(b.spend(a, t0), Spend::Granted);
        }
        let later = t0 + Duration::from_secs(20);
        assert_eq!(
            b.spend(a, later),
            Spend::Exhausted {
                retry_after: Duration::from_secs(40)
            }
        );
        // The mapped form and any address of a /64 are the same account.
        assert_ne!(
            b.spend("::ffff:10.0.0.9".parse().unwrap(), later),
            Spend::Granted
        );
        for i in 0..12u128 {
            let v6 = IpAddr::V6(Ipv6Addr::from((0xfd00u128 << 112) | i));
            assert_eq!(b.spend(v6, t0), Spend::Granted);
        }
        assert_ne!(b.spend("fd00::ffff".parse().unwrap(), t0), Spend::Granted);
        // A window later: a fresh budget.
        assert_eq!(b.spend(a, t0 + w), Spend::Granted);
        // The table holds PEERS accounts; while all are live a newcomer waits for the oldest.
        let mut b = Budget::new(1, w);
        for i in 0..PEERS as u32 {
            let t = t0 + Duration::from_secs(u64::from(i % 30));
            assert_eq!(
                b.spend(IpAddr::from((i + 1).to_be_bytes()), t),
                Spend::Granted
            );
        }
        let new: IpAddr = "192.0.2.1".parse().unwrap();
        let t = t0 + Duration::from_secs(30);
        assert_eq!(
            b.spend(new, t),
            Spend::Exhausted {
                retry_after: Duration::from_secs(30)
            }
        );
        assert_eq!(b.spend(new, t0 + w), Spend::Granted);
        assert_eq!(b.accounts.len(), PEERS);
    }
}
