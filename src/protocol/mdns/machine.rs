//! The responder's policy as a state machine, in the style of quinn-proto: the daemon's thread
//! owns the socket and the clock and feeds this what happened; this decides what to send, to
//! which interface, and when it next needs to be woken.
//!
//! ```text
//!  daemon thread                             machine
//!  recvmsg (interface, sender)  ── handle(now, iface, from, packet) ──▶ answer | conflict
//!  supervisor's change          ── serve(key, service, now) / withdraw(key) / close()
//!  netlink, getifaddrs          ── iface_up(iface) / iface_down(index)
//!  poll timeout                 ── handle_timeout(now) ──▶ the next probe, the announcement
//!  sendmsg                      ◀─ poll_transmit() ── Transmit { iface, to, bytes }
//!  log                          ◀─ poll_note() ────── Note
//!  poll(…, timeout)             ◀─ poll_timeout() ─── None once probed and announced
//! ```
//!
//! The host name goes through probing, announcing and a steady state:
//!
//! - Probing (RFC 6762 §8.1): [`PROBES`] probes, [`PROBE_EVERY`] apart, on every interface;
//!   nothing is answered meanwhile, and a service served meanwhile waits for the end. When
//!   the last probe has gone unanswered for [`PROBE_EVERY`], the name is ours
//!   ([`Note::Named`]). (As before the machine: during a re-probe after a rename, an
//!   announcement already due, an instance rename and a new interface still send.)
//! - Announcing (§8.3): every service is announced at once and again [`ANNOUNCE_AGAIN`] later.
//!   A service added in the steady state is announced by itself at once, and everything again
//!   a second later; an interface that comes up (or whose address changes) hears every
//!   service.
//! - Steady: questions are answered on the interface they came in on, with that interface's
//!   addresses, at most [`ANSWERS_PER_SECOND`] answers a second, all interfaces together.
//!   No timer runs ([`Machine::poll_timeout`] is `None`).
//!
//! Whatever a peer sends, the work is bounded and charged first: at most
//! [`PACKETS_PER_SECOND`] packets are read (charged before parsing; while they are spent the
//! loop does not read the socket, [`Machine::deaf_until`]); a source must be on the link of
//! the interface it came in on ([`Iface::on_link`]) and allowed by the daemon
//! ([`Peer`]); the answer budget is charged once a query is known to ask about our names and
//! before its answer is built; and the answer itself is bounded (see
//! `Responder::answer`).
//!
//! A conflict: another host answering for our host name (two Pis cloned from one image) has
//! ours take a suffix from this host's own address, once, and probe again; another host's SRV
//! for one of our instance names has that instance take ` (host)`, once, and be announced
//! again (§9, without probing: instance names are already host-specific). A second claim
//! changes nothing more, so a peer that claims every name it hears cannot make the name, or
//! the log, grow. A withdrawn service, and every service at [`Machine::close`], gets a goodbye
//! (§10.1: its records with TTL 0).

use std::collections::{BTreeMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use super::responder::{probe, Dest, Responder, Service};
use super::wire::parse;

/// The most answers sent per second, all interfaces together.
pub(crate) const ANSWERS_PER_SECOND: u32 = 50;
/// The most packets read per second (parsed, checked for conflicts, maybe answered), all
/// interfaces together: charged before a packet is parsed, so a flood costs a bounded amount
/// of work whatever it holds. A busy LAN's mDNS traffic is well under this.
pub(crate) const PACKETS_PER_SECOND: u32 = 500;
/// Announcements are sent twice, this far apart (RFC 6762 §8.3).
pub(crate) const ANNOUNCE_AGAIN: Duration = Duration::from_secs(1);
/// A new host name is probed this many times, this far apart, before it is used (RFC 6762
/// §8.1).
pub(crate) const PROBES: u8 = 3;
pub(crate) const PROBE_EVERY: Duration = Duration::from_millis(250);
/// At most this many notes wait for the loop (it takes them after every call); more are
/// dropped.
const NOTES_MAX: usize = 64;

/// An interface in use: its index and IPv4 addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Iface {
    pub(crate) index: u32,
    pub(crate) addrs: Vec<IfAddr>,
}

/// One of an interface's addresses and its network's prefix length (`10.0.0.2/24`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IfAddr {
    pub(crate) ip: Ipv4Addr,
    pub(crate) prefix: u8,
}

impl Iface {
    fn ips(&self) -> Vec<Ipv4Addr> {
        self.addrs.iter().map(|a| a.ip).collect()
    }

    /// Whether `ip` is on this interface's link: inside one of its networks, or an IPv4
    /// link-local address (169.254/16, on-link by definition). mDNS is link-local (RFC 6762
    /// §11): a packet from anywhere else was routed here or has a forged source, and a
    /// unicast answer to it would go to someone who did not ask.
    pub(crate) fn on_link(&self, ip: Ipv4Addr) -> bool {
        let inside = |a: &IfAddr| {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(a.prefix.min(32)))
                .unwrap_or(0);
            u32::from(ip) & mask == u32::from(a.ip) & mask
        };
        !ip.is_unspecified() && (ip.is_link_local() || self.addrs.iter().any(inside))
    }
}

/// Whether the daemon's rules let a packet's source be heard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Peer {
    Allowed,
    /// Outside `[access] allow`.
    Refused,
}

/// Where a packet goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum To {
    /// To the group (224.0.0.251:5353), out of the packet's interface.
    Group,
    /// Back to a one-shot querier only, by unicast.
    Asker(SocketAddrV4),
}

/// A packet to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Transmit {
    /// The interface index it is for (a group packet leaves through it; a unicast answer
    /// goes back to whoever asked on it).
    pub(crate) iface: u32,
    pub(crate) to: To,
    pub(crate) bytes: Vec<u8>,
}

/// What the machine did that is worth a line in the log (the loop chooses the level).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Note {
    /// Probing went unanswered: this host is `host.local` now (it is announced).
    Named(String),
    /// Another host is called `old.local`: this one is `new.local` now, probed again.
    HostRenamed { old: String, new: String },
    /// `host.local` (already a new name) is claimed too: it stays.
    HostKept(String),
    /// Another host advertises the instance `old`: ours is `new` now, announced again.
    InstanceRenamed { old: String, new: String },
    /// A service is advertised (announced now, or once probing ends).
    Serving { instance: String, kind: String },
    /// A withdrawn service's goodbye.
    Goodbye(String),
}

/// The responder: this host's name and services, the interfaces it speaks on, where probing
/// and announcing stand, and the answer budget.
#[derive(Debug)]
pub(crate) struct Machine {
    responder: Responder,
    /// The host label we started with (a clash renames it once, from this).
    base_host: String,
    /// Device key → its instance label (for withdrawals and renames).
    keys: BTreeMap<String, String>,
    ifaces: Vec<Iface>,
    /// The host name is being probed: the next probe (or the end of probing) is due then,
    /// after this many probes. Nothing is answered meanwhile.
    probing: Option<(Instant, u8)>,
    /// When the second announcement is due.
    again: Option<Instant>,
    /// Answers left in the second that began then.
    budget: Budget,
    /// Packets that may still be read in the second that began then.
    packets: Budget,
    out: VecDeque<Transmit>,
    notes: VecDeque<Note>,
}

impl Machine {
    /// A responder for the host label `host` (`pi-1a2b`), no services and no interfaces yet;
    /// its first probe is due `now`.
    pub(crate) fn new(host: String, now: Instant) -> Machine {
        Machine {
            responder: Responder {
                host: host.clone(),
                services: Vec::new(),
            },
            base_host: host,
            keys: BTreeMap::new(),
            ifaces: Vec::new(),
            probing: Some((now, 0)),
            again: None,
            budget: Budget::new(now, ANSWERS_PER_SECOND),
            packets: Budget::new(now, PACKETS_PER_SECOND),
            out: VecDeque::new(),
            notes: VecDeque::new(),
        }
    }

    /// The host label in use (`pi-1a2b`, or `pi-1a2b-7` after a clash).
    #[cfg(test)]
    pub(crate) fn host(&self) -> &str {
        &self.responder.host
    }

    /// The services advertised, in the order they came.
    #[cfg(test)]
    pub(crate) fn services(&self) -> &[Service] {
        &self.responder.services
    }

    /// Whether the host name is being probed.
    #[cfg(test)]
    pub(crate) fn probing(&self) -> bool {
        self.probing.is_some()
    }

    /// The interfaces in use.
    pub(crate) fn ifaces(&self) -> &[Iface] {
        &self.ifaces
    }

    /// The interface `iface.index` is usable, with these addresses: true if it is new or its
    /// addresses changed (it hears every service at once), false if nothing changed.
    pub(crate) fn iface_up(&mut self, iface: Iface) -> bool {
        if self.ifaces.contains(&iface) {
            return false;
        }
        if !self.responder.services.is_empty() {
            for p in self.responder.announce(&iface.ips()) {
                self.send(iface.index, To::Group, p);
            }
        }
        match self.ifaces.iter_mut().find(|i| i.index == iface.index) {
            Some(i) => *i = iface,
            None => self.ifaces.push(iface),
        }
        true
    }

    /// The interface `index` is gone (or no longer usable): nothing is sent or answered there.
    pub(crate) fn iface_down(&mut self, index: u32) {
        self.ifaces.retain(|i| i.index != index);
    }

    /// Advertise (or re-advertise) `service` under `key`, replacing what `key` had.
    pub(crate) fn serve(&mut self, key: &str, service: Service, now: Instant) {
        if let Some(old) = self.keys.insert(key.to_owned(), service.instance.clone()) {
            self.responder.services.retain(|s| s.instance != old);
        }
        self.note(Note::Serving {
            instance: service.instance.clone(),
            kind: service.kind.clone(),
        });
        self.responder.services.push(service.clone());
        if self.probing.is_none() {
            let one = Responder {
                host: self.responder.host.clone(),
                services: vec![service],
            };
            self.send_all(|addrs| one.announce(addrs));
            self.again = Some(now + ANNOUNCE_AGAIN);
        }
    }

    /// Say goodbye to `key`'s service, on every interface, and stop answering for it.
    pub(crate) fn withdraw(&mut self, key: &str) {
        let Some(instance) = self.keys.remove(key) else {
            return;
        };
        let gone: Vec<Service> = (self.responder.services.iter())
            .filter(|s| s.instance == instance)
            .cloned()
            .collect();
        self.responder.services.retain(|s| s.instance != instance);
        self.note(Note::Goodbye(instance));
        let bye = self.responder.goodbye(&gone);
        self.send_all(|_| bye.clone());
    }

    /// Goodbyes for everything (the daemon stops); then nothing is advertised and no timer
    /// runs.
    pub(crate) fn close(&mut self) {
        let bye = self.responder.goodbye(&self.responder.services);
        self.send_all(|_| bye.clone());
        self.responder.services.clear();
        self.keys.clear();
        self.probing = None;
        self.again = None;
    }

    /// A packet came in on interface `iface` from `from`: a question is answered (unless the
    /// name is being probed or the budget is spent), a response is checked for conflicts.
    /// Packets from interfaces not in use, from sources not on that interface's link, past
    /// this second's packet budget, and malformed ones, are ignored — in that order, each
    /// before any work: the packet budget is charged before parsing, the answer budget
    /// before an answer is built.
    #[cfg(test)]
    pub(crate) fn handle(&mut self, now: Instant, iface: u32, from: SocketAddrV4, packet: &[u8]) {
        self.handle_from(now, iface, from, Peer::Allowed, packet);
    }

    /// [`Machine::handle`], for a source the daemon's rules (`[access] allow`) may refuse:
    /// a refused packet still costs one from the packet budget (so a flood from refused
    /// sources is as bounded as any), and nothing more.
    pub(crate) fn handle_from(
        &mut self,
        now: Instant,
        iface: u32,
        from: SocketAddrV4,
        peer: Peer,
        packet: &[u8],
    ) {
        if !self.ifaces.iter().any(|i| i.index == iface) || !self.packets.spend(now) {
            return;
        }
        let Some(i) = self.ifaces.iter().find(|i| i.index == iface) else {
            return;
        };
        if peer == Peer::Refused || !i.on_link(*from.ip()) {
            return;
        }
        let addrs = i.ips();
        let Some(m) = parse(packet) else {
            return;
        };
        if m.response {
            self.on_response(now, &m);
            return;
        }
        if self.probing.is_some() || !self.responder.concerns(&m) || !self.budget.spend(now) {
            return;
        }
        let Some((reply, dest)) = self.responder.answer(&m, packet.len(), from.port(), &addrs)
        else {
            return;
        };
        let to = match dest {
            Dest::Group => To::Group,
            Dest::Asker => To::Asker(from),
        };
        self.send(iface, to, reply);
    }

    /// The next probe or announcement, if it is due.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if self.probing.is_some_and(|(t, _)| now >= t) {
            self.probe(now);
        }
        if self.again.is_some_and(|t| now >= t) {
            self.again = None;
            self.announce_all();
        }
    }

    /// While this second's packet budget is spent: until when (the loop stops reading the
    /// socket till then, and the kernel drops what does not fit in its buffer — a flood then
    /// costs this process nothing more).
    pub(crate) fn deaf_until(&self, now: Instant) -> Option<Instant> {
        let until = self.packets.since + Duration::from_secs(1);
        (self.packets.left == 0 && now < until).then_some(until)
    }

    /// When [`Machine::handle_timeout`] is next due; `None` once the name is probed and
    /// announced (nothing runs until something changes).
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        [self.again, self.probing.map(|(t, _)| t)]
            .into_iter()
            .flatten()
            .min()
    }

    /// The next packet to send, in the order they were decided.
    pub(crate) fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    /// The next thing worth logging.
    pub(crate) fn poll_note(&mut self) -> Option<Note> {
        self.notes.pop_front()
    }

    fn start_probing(&mut self, now: Instant) {
        self.probing = Some((now, 0));
        self.probe(now);
    }

    /// The next probe, or — after the last one went unanswered — the name is ours: announce.
    fn probe(&mut self, now: Instant) {
        let Some((_, sent)) = self.probing else {
            return;
        };
        if sent >= PROBES {
            self.probing = None;
            self.note(Note::Named(self.responder.host.clone()));
            self.announce_all();
            self.again = Some(now + ANNOUNCE_AGAIN);
            return;
        }
        let p = probe(&self.responder.host);
        self.send_all(|_| vec![p.clone()]);
        self.probing = Some((now + PROBE_EVERY, sent + 1));
    }

    /// Another host claims our host name or one of our instance names.
    fn on_response(&mut self, now: Instant, m: &super::wire::Message) {
        let ours: Vec<Ipv4Addr> = self.ifaces.iter().flat_map(Iface::ips).collect();
        if self.responder.host_taken(m, &ours) {
            // Another host has our name (two Pis both called raspberrypi, cloned from one
            // image): ours takes a suffix from this host's own address, once, and is probed
            // again. A second claim (or a peer that claims every name) changes nothing more:
            // the name, and the log, stay bounded.
            let old = self.responder.host.clone();
            if old != self.base_host {
                self.note(Note::HostKept(old));
                return;
            }
            let suffix = ours.first().map_or(2, |ip| ip.octets()[3]);
            let new = format!("{old}-{suffix}");
            self.note(Note::HostRenamed {
                old,
                new: new.clone(),
            });
            self.responder.host = new;
            self.start_probing(now);
            return;
        }
        let Some(instance) = self.responder.conflict(m) else {
            return;
        };
        if instance.ends_with(')') {
            return; // renamed once already: the rest is the other side's (bounded)
        }
        let renamed = format!("{instance} ({})", self.responder.host);
        for s in &mut self.responder.services {
            if s.instance == instance {
                s.instance = renamed.clone();
            }
        }
        for v in self.keys.values_mut() {
            if *v == instance {
                *v = renamed.clone();
            }
        }
        self.note(Note::InstanceRenamed {
            old: instance,
            new: renamed,
        });
        self.announce_all();
    }

    fn announce_all(&mut self) {
        let r = self.responder.clone();
        self.send_all(|addrs| r.announce(addrs));
    }

    /// Queue the packets `make` builds for each interface's addresses, out of that interface.
    fn send_all(&mut self, make: impl Fn(&[Ipv4Addr]) -> Vec<Vec<u8>>) {
        for i in &self.ifaces {
            for p in make(&i.ips()) {
                self.out.push_back(Transmit {
                    iface: i.index,
                    to: To::Group,
                    bytes: p,
                });
            }
        }
    }

    fn send(&mut self, iface: u32, to: To, bytes: Vec<u8>) {
        self.out.push_back(Transmit { iface, to, bytes });
    }

    fn note(&mut self, n: Note) {
        if self.notes.len() < NOTES_MAX {
            self.notes.push_back(n);
        }
    }
}

/// So many of something per second: refilled a second after the second began.
#[derive(Debug)]
struct Budget {
    since: Instant,
    left: u32,
    per_second: u32,
}

impl Budget {
    fn new(now: Instant, per_second: u32) -> Budget {
        Budget {
            since: now,
            left: per_second,
            per_second,
        }
    }

    /// Spend one; false if this second's are spent.
    fn spend(&mut self, now: Instant) -> bool {
        if now.saturating_duration_since(self.since) >= Duration::from_secs(1) {
            (self.since, self.left) = (now, self.per_second);
        }
        if self.left == 0 {
            return false;
        }
        self.left -= 1;
        true
    }
}
