//! Who holds a device, pure: the line-up of one device's clients — the one in control, those
//! who get control back when it leaves, those waiting for a flash to end — and who may join.
//!
//! The bridge keeps each client's socket, session and buffers; this module only orders them
//! and decides when control moves. It takes the time as an argument and reads nothing else,
//! so the rules are tested here without sockets or threads (the bridge's tests cover the
//! wiring).

use std::net::IpAddr;
use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use crate::daemon::config::Busy;
use crate::daemon::lease::{Book, Refusal};

/// A client in control that has sent nothing for this long is idle: a newcomer may take
/// control from it.
pub(crate) const IDLE_AFTER: Duration = Duration::from_secs(1);

pub(crate) const BUSY_MESSAGE: &[u8] = b"Port already in use\r\n";
pub(crate) const NO_DEVICE_MESSAGE: &[u8] = b"Port's device is not available\r\n";

/// Where a client stands in the line for control.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Turn {
    /// It holds control, or held it and gets it back when those who took it from it leave.
    Had,
    /// It arrived while the client in control was flashing: it takes control when that ends.
    Waiting,
}

/// What the line-up needs to know of a client.
pub(crate) trait Member {
    fn turn(&self) -> Turn;
    fn set_turn(&mut self, turn: Turn);
    /// When it last sent anything.
    fn last_input(&self) -> Instant;
    /// It is flashing the chip (its ESP follower saw the loader): never interrupted.
    fn loading(&self) -> bool;
    /// Its session waits on the device (an effect in flight, bytes parked behind a baud change).
    fn paused(&self) -> bool;
    fn ip(&self) -> IpAddr;
}

/// Who may connect now.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Alone, or sharing the device with those connected.
    Accept,
    /// Accept, after closing the client in control.
    Kick,
    Refuse(&'static [u8]),
}

/// The admission rule: `share` takes clients up to `max`, `reject` and `kick` one; the
/// device must be there.
pub(crate) fn admit(busy: Busy, connected: usize, max: usize, device_open: bool) -> Admission {
    match (busy, connected, device_open) {
        (Busy::Reject, 1.., _) => Admission::Refuse(BUSY_MESSAGE),
        (Busy::Share, n, _) if n >= max => Admission::Refuse(BUSY_MESSAGE),
        (_, _, false) => Admission::Refuse(NO_DEVICE_MESSAGE),
        (Busy::Kick, 1.., true) => Admission::Kick,
        _ => Admission::Accept,
    }
}

/// Why the client in control keeps it for now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Engaged {
    /// A loader session (a flash): never interrupted.
    Flashing,
    /// It sent something within [`IDLE_AFTER`]: a stream is not cut in the middle.
    Writing,
    /// An effect, a parked baud change or a reset is under way: a moment.
    Acting,
}

impl Engaged {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Engaged::Flashing => "flashing the chip",
            Engaged::Writing => "writing to the device",
            Engaged::Acting => "changing the port's settings",
        }
    }
}

/// How a newcomer joined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Joined {
    /// No one else is connected: it is in control.
    Alone,
    /// It took control from an idle client, which observes until it leaves.
    TookControl,
    /// The client in control is engaged: the newcomer observes until that ends.
    Waits(Engaged),
}

/// A device's clients, in line: `[0]` is in control, then those who get control back when it
/// leaves (most recent first), then those waiting for the one in control to finish. Reads as
/// a slice; only the methods here change the order.
pub(crate) struct LineUp<C> {
    members: Vec<C>,
}

impl<C> Default for LineUp<C> {
    fn default() -> Self {
        LineUp {
            members: Vec::new(),
        }
    }
}

impl<C> Deref for LineUp<C> {
    type Target = [C];
    fn deref(&self) -> &[C] {
        &self.members
    }
}

impl<C> DerefMut for LineUp<C> {
    fn deref_mut(&mut self) -> &mut [C] {
        &mut self.members
    }
}

impl<C: Member> LineUp<C> {
    /// Whether the client in control must not lose it now, and why. `acting`: the device is
    /// busy on its behalf (an effect waits, a reset plays).
    pub(crate) fn engaged(&self, acting: bool, now: Instant) -> Option<Engaged> {
        let c = self.members.first()?;
        if c.loading() {
            Some(Engaged::Flashing)
        } else if acting || c.paused() {
            Some(Engaged::Acting)
        } else if now.saturating_duration_since(c.last_input()) < IDLE_AFTER {
            Some(Engaged::Writing)
        } else {
            None
        }
    }

    /// A newcomer joins: alone it is in control; it takes control from an idle client; it
    /// waits while the one in control is engaged.
    pub(crate) fn join(&mut self, mut c: C, acting: bool, now: Instant) -> Joined {
        if self.members.is_empty() {
            c.set_turn(Turn::Had);
            self.members.push(c);
            return Joined::Alone;
        }
        match self.engaged(acting, now) {
            Some(why) => {
                c.set_turn(Turn::Waiting);
                self.members.push(c);
                Joined::Waits(why)
            }
            None => {
                c.set_turn(Turn::Had);
                self.members.insert(0, c);
                Joined::TookControl
            }
        }
    }

    /// Client `i` leaves. When it was in control and others remain, the waiting ones are
    /// moved up (see [`LineUp::promote_waiting`]): `[0]` is the new controller.
    pub(crate) fn leave(&mut self, i: usize) -> Option<C> {
        if i >= self.members.len() {
            return None;
        }
        let c = self.members.remove(i);
        if i == 0 && !self.members.is_empty() {
            self.promote_waiting();
        }
        Some(c)
    }

    /// The client in control is no longer engaged and clients wait: they take their turn.
    /// True when control moved (the bridge hands the device over).
    pub(crate) fn settle(&mut self, acting: bool, now: Instant) -> bool {
        if self.members.iter().all(|c| c.turn() == Turn::Had) || self.engaged(acting, now).is_some()
        {
            return false;
        }
        self.promote_waiting();
        true
    }

    /// When a waiting client should look again: the client in control stops counting as
    /// writing then.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        let waiting = self.members.iter().any(|c| c.turn() == Turn::Waiting);
        let c = self.members.first().filter(|_| waiting)?;
        Some(c.last_input() + IDLE_AFTER)
    }

    /// Move the waiting clients to the front, as if each had taken control on arrival (the
    /// latest first) — except that a flasher among them (it sent a SYNC while it waited)
    /// goes before them all: taken over before its next SYNC, it would fail.
    fn promote_waiting(&mut self) {
        let (waiting, had): (Vec<C>, Vec<C>) = std::mem::take(&mut self.members)
            .into_iter()
            .partition(|c| c.turn() == Turn::Waiting);
        let (flashers, others): (Vec<C>, Vec<C>) = waiting.into_iter().partition(|c| c.loading());
        self.members = flashers
            .into_iter()
            .chain(others.into_iter().rev())
            .chain(had)
            .collect();
        for c in &mut self.members {
            c.set_turn(Turn::Had);
        }
    }

    /// The clients the lease book no longer admits on `device` (a lease granted to another
    /// address reserves the device for it), last first so that they can be closed in turn.
    pub(crate) fn refused_by(&self, book: &Book, device: &str, now: u64) -> Vec<(usize, Refusal)> {
        (self.members.iter().enumerate().rev())
            .filter_map(|(i, c)| book.admits(device, c.ip(), now).err().map(|r| (i, r)))
            .collect()
    }

    /// The clients from `holder` (its lease ran out), last first.
    pub(crate) fn clients_of(&self, holder: IpAddr) -> Vec<usize> {
        let holder = holder.to_canonical();
        (0..self.members.len())
            .rev()
            .filter(|&i| self.members[i].ip().to_canonical() == holder)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::lease::Policy;
    use std::net::Ipv4Addr;

    #[derive(Debug)]
    struct Fake {
        name: &'static str,
        turn: Turn,
        last_input: Instant,
        loading: bool,
        paused: bool,
        ip: IpAddr,
    }

    impl Member for Fake {
        fn turn(&self) -> Turn {
            self.turn
        }
        fn set_turn(&mut self, turn: Turn) {
            self.turn = turn;
        }
        fn last_input(&self) -> Instant {
            self.last_input
        }
        fn loading(&self) -> bool {
            self.loading
        }
        fn paused(&self) -> bool {
            self.paused
        }
        fn ip(&self) -> IpAddr {
            self.ip
        }
    }

    fn t0() -> Instant {
        Instant::now()
    }

    /// A client that last wrote at `wrote`.
    fn client(name: &'static str, wrote: Instant) -> Fake {
        Fake {
            name,
            turn: Turn::Had,
            last_input: wrote,
            loading: false,
            paused: false,
            ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, name.len() as u8)),
        }
    }

    fn names(l: &LineUp<Fake>) -> Vec<&'static str> {
        l.iter().map(|c| c.name).collect()
    }

    #[test]
    fn admission_by_busy_policy_max_clients_and_device() {
        assert_eq!(admit(Busy::Reject, 0, 1, true), Admission::Accept);
        assert_eq!(
            admit(Busy::Reject, 1, 4, true),
            Admission::Refuse(BUSY_MESSAGE)
        );
        assert_eq!(admit(Busy::Kick, 1, 1, true), Admission::Kick);
        assert_eq!(
            admit(Busy::Kick, 0, 1, false),
            Admission::Refuse(NO_DEVICE_MESSAGE)
        );
        assert_eq!(admit(Busy::Share, 3, 4, true), Admission::Accept);
        assert_eq!(
            admit(Busy::Share, 4, 4, true),
            Admission::Refuse(BUSY_MESSAGE)
        );
        // Full is said before absent: a client retrying learns the port is taken.
        assert_eq!(
            admit(Busy::Share, 4, 4, false),
            Admission::Refuse(BUSY_MESSAGE)
        );
    }

    #[test]
    fn a_newcomer_takes_control_from_an_idle_client_which_gets_it_back() {
        let now = t0();
        let mut l = LineUp::default();
        let idle = now - IDLE_AFTER;
        assert_eq!(l.join(client("a", idle), false, now), Joined::Alone);
        assert_eq!(l.join(client("bb", idle), false, now), Joined::TookControl);
        assert_eq!(l.join(client("ccc", idle), false, now), Joined::TookControl);
        assert_eq!(names(&l), ["ccc", "bb", "a"]);
        // The controller leaves: the one it took control from has it again.
        l.leave(0);
        assert_eq!(names(&l), ["bb", "a"]);
        // An observer leaving changes nothing else.
        l.leave(1);
        assert_eq!(names(&l), ["bb"]);
    }

    #[test]
    fn a_newcomer_waits_while_the_controller_flashes_writes_or_acts() {
        let now = t0();
        let idle = now - IDLE_AFTER;
        for (engaged, make) in [
            (
                Engaged::Flashing,
                (|c: &mut Fake| c.loading = true) as fn(&mut Fake),
            ),
            (Engaged::Acting, |c: &mut Fake| c.paused = true),
            (Engaged::Writing, |c: &mut Fake| c.last_input = t0()),
        ] {
            let mut l = LineUp::default();
            let mut a = client("a", idle);
            make(&mut a);
            l.join(a, false, now);
            assert_eq!(
                l.join(client("bb", idle), false, now),
                Joined::Waits(engaged)
            );
            assert_eq!(names(&l), ["a", "bb"]);
            assert_eq!(l[1].turn, Turn::Waiting);
        }
        // The device acting for the controller (an effect, a reset) counts too.
        let mut l = LineUp::default();
        l.join(client("a", idle), false, now);
        let joined = l.join(client("bb", idle), true, now);
        assert_eq!(joined, Joined::Waits(Engaged::Acting));
    }

    #[test]
    fn waiting_clients_take_control_when_the_flash_ends_a_flasher_first() {
        let now = t0();
        let idle = now - IDLE_AFTER;
        let mut l = LineUp::default();
        let mut flasher = client("a", idle);
        flasher.loading = true;
        l.join(flasher, false, now);
        l.join(client("bb", idle), false, now);
        let mut second = client("ccc", idle);
        second.loading = true; // it sent a SYNC while it waited
        l.join(second, false, now);
        l.join(client("dddd", idle), false, now);
        assert!(
            !l.settle(false, now),
            "nothing moves while the flash goes on"
        );
        l[0].loading = false;
        assert!(l.settle(false, now));
        // The flasher that waited first, then the others latest first, then the old controller.
        assert_eq!(names(&l), ["ccc", "dddd", "bb", "a"]);
        assert!(l.iter().all(|c| c.turn == Turn::Had));
        assert!(!l.settle(false, now), "settled once");
    }

    #[test]
    fn a_writing_controller_keeps_control_until_quiet_for_a_second() {
        let now = t0();
        let mut l = LineUp::default();
        l.join(client("a", now), false, now);
        l.join(client("bb", now), false, now);
        assert_eq!(l.deadline(), Some(now + IDLE_AFTER));
        let later = now + IDLE_AFTER / 2;
        assert!(!l.settle(false, later));
        assert!(l.settle(false, now + IDLE_AFTER));
        assert_eq!(names(&l), ["bb", "a"]);
        assert_eq!(l.deadline(), None, "no one waits");
    }

    #[test]
    fn when_the_controller_leaves_the_waiting_go_first() {
        let now = t0();
        let mut l = LineUp::default();
        let idle = now - IDLE_AFTER;
        l.join(client("a", idle), false, now);
        l.join(client("bb", idle), false, now); // takes control from a
        l[0].loading = true;
        l.join(client("ccc", idle), false, now); // waits for the flash
        assert_eq!(names(&l), ["bb", "a", "ccc"]);
        l.leave(0);
        assert_eq!(names(&l), ["ccc", "a"]);
    }

    #[test]
    fn leases_close_the_clients_they_do_not_admit_and_a_holder_by_address() {
        let now = t0();
        let idle = now - IDLE_AFTER;
        let mut l = LineUp::default();
        l.join(client("a", idle), false, now); // 10.0.0.1
        l.join(client("bb", idle), false, now); // 10.0.0.2
        l.join(client("ccc", idle), false, now); // 10.0.0.3
        let mut book = Book::default();
        let holder = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
        assert!(
            l.refused_by(&book, "dev", 100).is_empty(),
            "no lease, no policy: all stay"
        );
        book.grant("dev", holder, 100, 100, || "id".into()).unwrap();
        let refused = l.refused_by(&book, "dev", 100);
        let who: Vec<&str> = refused.iter().map(|&(i, _)| l[i].name).collect();
        assert_eq!(who, ["a", "ccc"], "last first, the holder stays");
        assert!(refused.iter().all(|&(_, r)| r == Refusal::LeasedToOther));
        // Expired: everyone is admitted again; with a policy that needs one, no one.
        assert!(l.refused_by(&book, "dev", 300).is_empty());
        book.policy = Policy::Required;
        assert_eq!(l.refused_by(&book, "dev", 300).len(), 3);
        let mapped = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 2).to_ipv6_mapped());
        assert_eq!(
            l.clients_of(mapped),
            [1],
            "an IPv4-mapped address is the same host"
        );
    }
}
