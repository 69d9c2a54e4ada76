//! Who gives way when every slot of the portal is taken. Pure: the server passes what it
//! knows of each connection ([`Seat`]) and the time.
//!
//! The newcomer's slot comes from the address holding the most slots (an IPv6 address
//! counts as its /64, which one host can fill on its own), its own on a tie: an address that
//! holds fewer slots than another never gives way to it, so one host — one that is refused
//! everything included — cannot lock the others out by opening connections, however it
//! keeps them busy. Within that address, the reading connection that has sent the least for
//! the longest gives way (a slowloris, an idle keep-alive); if there is none, its oldest
//! connection, whatever it is doing — also one whose answers the client is slow to take.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

// Slots are counted per peer, as the log and lease budgets are: an IPv4 address (also in its
// IPv6-mapped form), or an IPv6 /64.
use crate::daemon::peerlog::PeerKey;

/// A connection must be at least this old before its sending rate can make it give way, so
/// a client that has just connected gets the time to send its request.
pub(super) const EVICT_MIN_AGE: Duration = Duration::from_millis(200);

/// What the choice looks at, of one connection.
#[derive(Clone, Copy, Debug)]
pub(super) struct Seat {
    pub(super) ip: IpAddr,
    pub(super) opened: Instant,
    /// Bytes received in all.
    pub(super) received: u64,
    /// An answer is being written to it (it is not reading).
    pub(super) writing: bool,
}

impl Seat {
    /// How fast it has been sending (bytes per second).
    fn rate(&self, now: Instant) -> f64 {
        self.received as f64
            / now
                .saturating_duration_since(self.opened)
                .as_secs_f64()
                .max(1e-3)
    }
}

/// The index of the connection that makes room for a new one from `newcomer`; `None` only
/// when there is none.
pub(super) fn victim(seats: &[Seat], newcomer: IpAddr, now: Instant) -> Option<usize> {
    let mut held: HashMap<PeerKey, usize> = HashMap::with_capacity(seats.len());
    for s in seats {
        *held.entry(PeerKey::of(s.ip)).or_default() += 1;
    }
    let most = held.values().copied().max()?;
    let own = PeerKey::of(newcomer);
    let own_gives_way = held.get(&own) == Some(&most);
    let gives_way = |s: &Seat| match own_gives_way {
        true => PeerKey::of(s.ip) == own,
        false => held[&PeerKey::of(s.ip)] == most,
    };
    let candidates = || seats.iter().enumerate().filter(|(_, s)| gives_way(s));
    let slowest_reader = candidates()
        .filter(|(_, s)| !s.writing && now.saturating_duration_since(s.opened) >= EVICT_MIN_AGE)
        .min_by(|(_, a), (_, b)| a.rate(now).total_cmp(&b.rate(now)))
        .map(|(i, _)| i);
    slowest_reader.or_else(|| candidates().min_by_key(|(_, s)| s.opened).map(|(i, _)| i))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seat(ip: &str, age_ms: u64, received: u64, writing: bool, now: Instant) -> Seat {
        Seat {
            ip: ip.parse().unwrap(),
            opened: now - Duration::from_millis(age_ms),
            received,
            writing,
        }
    }

    #[test]
    fn the_address_holding_most_gives_way_even_while_its_answers_are_written() {
        let now = Instant::now() + Duration::from_secs(100);
        // 127.0.0.2 holds three slots, every one of them busy writing; 127.0.0.1 one idle.
        let seats = [
            seat("127.0.0.2", 5_000, 9_000, true, now),
            seat("127.0.0.1", 9_000, 0, false, now),
            seat("127.0.0.2", 9_000, 9_000, true, now),
            seat("127.0.0.2", 1_000, 9_000, true, now),
        ];
        // A third address: the oldest of the one holding most (once it was never taken).
        assert_eq!(victim(&seats, "10.0.0.1".parse().unwrap(), now), Some(2));
        // The flooder itself: the same.
        assert_eq!(victim(&seats, "127.0.0.2".parse().unwrap(), now), Some(2));
        // The idle one at 127.0.0.1 is never taken while the other holds more.
        assert_eq!(victim(&seats, "127.0.0.1".parse().unwrap(), now), Some(2));
    }

    #[test]
    fn within_the_address_the_slowest_aged_reader_goes_first_then_the_oldest() {
        let now = Instant::now() + Duration::from_secs(100);
        let seats = [
            seat("127.0.0.1", 9_000, 10, true, now),
            seat("127.0.0.1", 5_000, 500, false, now),
            seat("127.0.0.1", 5_000, 20, false, now), // slowest aged reader
            seat("127.0.0.1", 50, 0, false, now),     // just connected: spared
        ];
        assert_eq!(victim(&seats, "127.0.0.1".parse().unwrap(), now), Some(2));
        // Only writers and a newcomer left: the oldest.
        let seats = [
            seat("127.0.0.1", 50, 0, false, now),
            seat("127.0.0.1", 3_000, 10, true, now),
            seat("127.0.0.1", 9_000, 10, true, now),
        ];
        assert_eq!(victim(&seats, "127.0.0.1".parse().unwrap(), now), Some(2));
        assert_eq!(victim(&[], "127.0.0.1".parse().unwrap(), now), None);
    }

    #[test]
    fn on_a_tie_the_newcomers_own_address_gives_way() {
        let now = Instant::now() + Duration::from_secs(100);
        let seats = [
            seat("10.0.0.1", 9_000, 0, false, now),
            seat("10.0.0.2", 8_000, 0, false, now),
        ];
        assert_eq!(victim(&seats, "10.0.0.2".parse().unwrap(), now), Some(1));
        assert_eq!(victim(&seats, "10.0.0.1".parse().unwrap(), now), Some(0));
        // A third address takes from either (the slowest reader of both).
        assert!(victim(&seats, "10.0.0.3".parse().unwrap(), now).is_some());
    }

    #[test]
    fn an_ipv6_host_counts_as_its_64() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let now = Instant::now() + Duration::from_secs(100);
        // Four addresses of one /64 against one other host: the /64 gives way.
        let seats = [
            seat("2001:db8::1", 1_000, 0, true, now),
            seat("2001:db8::2", 2_000, 0, true, now),
            seat("2001:db8::3", 3_000, 0, true, now),
            seat("2001:db8::4", 4_000, 0, true, now),
            seat("192.168.1.9", 9_000, 0, false, now),
        ];
        assert_eq!(victim(&seats, ip("192.168.1.7"), now), Some(3));
        // A mapped IPv4 address is that address.
        let seats = [
            seat("::ffff:10.0.0.1", 9_000, 0, true, now),
            seat("10.0.0.1", 1_000, 0, true, now),
            seat("10.0.0.2", 5_000, 0, true, now),
        ];
        assert_eq!(victim(&seats, ip("10.0.0.3"), now), Some(0));
    }
}
