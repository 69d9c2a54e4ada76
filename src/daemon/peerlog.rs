//! How often a remote peer may make the daemon write a log line. A scanner, a broken client
//! or a loop of connect/disconnect must not fill an SD card: each address gets a few lines a
//! minute; what it causes beyond that is counted, and the count is told with its next line.
//! Pure (the caller passes the time) and bounded (a fixed number of addresses is tracked).

use std::net::IpAddr;
use std::time::{Duration, Instant};

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
    addr: IpAddr,
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
        n => format!(" ({n} more lines about {addr} were left out of the log)"),
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
}
