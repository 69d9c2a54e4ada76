//! The hub's rules without sockets, threads or a clock: an in-memory device, clients that
//! are only addresses, and times made up by the test.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::clients::Refused;
use super::*;
use crate::daemon::access::Allow;

use crate::daemon::config::Busy;
use crate::daemon::lease::{Book, Leases, Policy as LeasePolicy};
use crate::daemon::lineup::{BUSY_MESSAGE, IDLE_AFTER};
use crate::protocol::line::{Lines, ModemStatus, Purge};
use crate::protocol::telnet;
use crate::protocol::Protocol;

/// What the device saw.
#[derive(Default)]
struct Seen {
    /// Bytes to hand out on the next reads.
    input: VecDeque<u8>,
    written: Vec<u8>,
    /// How many more bytes it takes before it would block.
    room: usize,
    /// Each baud applied, with how many bytes had been written then.
    applied: Vec<(u32, usize)>,
}

struct Mem {
    seen: Arc<Mutex<Seen>>,
    /// Any descriptor: the hub only hands it to the bridge's poll.
    null: File,
}

impl Device for Mem {
    fn fd(&self) -> BorrowedFd<'_> {
        self.null.as_fd()
    }
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut s = self.seen.lock().unwrap();
        let n = buf.len().min(s.input.len());
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        for (b, x) in buf.iter_mut().zip(s.input.drain(..n)) {
            *b = x;
        }
        Ok(n)
    }
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut s = self.seen.lock().unwrap();
        let n = buf.len().min(s.room);
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        s.room -= n;
        s.written.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn apply(&mut self, settings: &LineSettings) -> io::Result<()> {
        let mut s = self.seen.lock().unwrap();
        let at = s.written.len();
        s.applied.push((settings.baud, at));
        Ok(())
    }
    fn set_lines(&mut self, _: Lines) -> io::Result<()> {
        Ok(())
    }
    fn modem_status(&mut self) -> io::Result<ModemStatus> {
        Ok(ModemStatus::default())
    }
    fn set_break(&mut self, _: bool) -> io::Result<()> {
        Ok(())
    }
    fn purge(&mut self, _: Purge) -> io::Result<()> {
        Ok(())
    }
}

struct Rig {
    hub: Hub,
    seen: Arc<Mutex<Seen>>,
    registry: Arc<Registry>,
    t: Instant,
}

fn key() -> DeviceKey {
    DeviceKey::name("mem")
}

fn rig(busy: Busy, protocol: Protocol, book: Book) -> Rig {
    let t = Instant::now();
    let registry = Registry::new();
    registry.upsert(crate::daemon::registry::DeviceEntry {
        key: key(),
        name: "mem".into(),
        tty: "/dev/mem".into(),
        usb: None,
        port: 0,
        state: DeviceState::Starting,
        clients: Vec::new(),
        reset: Policy::Passthrough,
        protocol,
        stats: Arc::default(),
        log: Arc::new(Mutex::new(LogRing::new(16))),
    });
    let shared = Shared {
        registry: registry.clone(),
        key: key(),
        stats: Arc::default(),
        log: Arc::new(Mutex::new(LogRing::new(1024))),
        grace: Duration::from_secs(3),
        open_after: t,
        policy: Policy::Passthrough,
        allow: Allow::Everyone,
        leases: Arc::new(Leases::new(book)),
    };
    let spec = DeviceSpec {
        busy,
        protocol,
        max_clients: 3,
        ..DeviceSpec::new(DevicePath::Tty("/dev/mem".into()))
    };
    let mut hub = Hub::new(spec, shared, 4001, t);
    let seen = Arc::new(Mutex::new(Seen {
        room: usize::MAX,
        ..Seen::default()
    }));
    assert!(hub.open_due(t));
    let dev = Mem {
        seen: seen.clone(),
        null: File::open("/dev/null").unwrap(),
    };
    hub.opened(Box::new(dev), t);
    Rig {
        hub,
        seen,
        registry,
        t,
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

impl Rig {
    fn at(&self, ms: u64) -> Instant {
        self.t + Duration::from_millis(ms)
    }

    /// Client `id` sends `bytes`, and the hub moves.
    fn send(&mut self, id: u64, bytes: &[u8], now: Instant) {
        let buf = self.hub.client_input(id).expect("the hub wants input");
        buf[..bytes.len()].copy_from_slice(bytes);
        self.hub.client_bytes(id, bytes.len(), now);
        self.hub.advance(now);
    }

    /// The device says `bytes`, and the hub moves.
    fn device_says(&mut self, bytes: &[u8], now: Instant) {
        self.seen.lock().unwrap().input.extend(bytes);
        self.hub.device_readable(now);
        self.hub.advance(now);
    }

    /// Everything waiting for client `id`, as if the bridge sent it all.
    fn output(&mut self, id: u64) -> Vec<u8> {
        let out = self.hub.client_output(id).to_vec();
        self.hub.client_sent(id, out.len());
        out
    }

    /// The clients as the portal sees them, the one in control first.
    fn roles(&self) -> Vec<(SocketAddr, Role)> {
        let e = self.registry.get(&key()).unwrap();
        e.clients.iter().map(|c| (c.addr, c.role)).collect()
    }

    fn closes(&mut self) -> Vec<(u64, &'static [u8])> {
        std::iter::from_fn(|| self.hub.poll_effect())
            .map(|Action::Close { id, last_words }| (id, last_words))
            .collect()
    }

    fn written(&self) -> Vec<u8> {
        self.seen.lock().unwrap().written.clone()
    }
}

const A: &str = "10.0.0.1:5000";
const B: &str = "10.0.0.2:5000";
const C: &str = "10.0.0.3:5000";

#[test]
fn shared_the_controller_writes_observers_watch_and_control_passes_on_when_it_leaves() {
    let mut r = rig(Busy::Share, Protocol::Raw, Book::default());
    let a = r.hub.accept(addr(A), r.at(0)).unwrap();
    r.send(a, b"hello", r.at(10));
    // B arrives while A wrote just now: B observes.
    let b = r.hub.accept(addr(B), r.at(20)).unwrap();
    assert_eq!(
        r.roles(),
        [(addr(A), Role::Control), (addr(B), Role::Observe)]
    );
    r.output(b);
    r.send(b, b"ignored", r.at(30));
    assert_eq!(
        r.written(),
        b"hello",
        "an observer's bytes never reach the device"
    );
    r.device_says(b"boot", r.at(40));
    assert_eq!(r.output(a), b"boot");
    assert!(r.output(b).ends_with(b"boot"), "observers see the output");
    r.hub
        .client_gone(a, "client closed the connection", r.at(50));
    assert_eq!(r.closes(), [(a, &b""[..])]);
    assert_eq!(r.roles(), [(addr(B), Role::Control)]);
    r.send(b, b"now mine", r.at(60));
    assert_eq!(r.written(), b"hellonow mine");
}

#[test]
fn shared_a_newcomer_takes_control_from_an_idle_client_and_hands_it_back() {
    let mut r = rig(Busy::Share, Protocol::Raw, Book::default());
    let a = r.hub.accept(addr(A), r.at(0)).unwrap();
    r.send(a, b"x", r.at(0));
    let idle = IDLE_AFTER.as_millis() as u64 + 1;
    let c = r.hub.accept(addr(C), r.at(idle)).unwrap();
    assert_eq!(
        r.roles(),
        [(addr(C), Role::Control), (addr(A), Role::Observe)],
        "A was quiet for {idle} ms"
    );
    r.hub
        .client_gone(c, "client closed the connection", r.at(idle + 1));
    assert_eq!(r.roles(), [(addr(A), Role::Control)], "control goes back");
}

#[test]
fn reject_one_client_the_next_is_told_busy_kick_closes_the_first_with_a_word() {
    let mut r = rig(Busy::Reject, Protocol::Raw, Book::default());
    r.hub.accept(addr(A), r.at(0)).unwrap();
    assert_eq!(r.hub.accept(addr(B), r.at(1)), Err(Refused(BUSY_MESSAGE)));
    assert!(r.closes().is_empty());

    let mut r = rig(Busy::Kick, Protocol::Raw, Book::default());
    let a = r.hub.accept(addr(A), r.at(0)).unwrap();
    let b = r.hub.accept(addr(B), r.at(1)).unwrap();
    assert_eq!(r.closes(), [(a, KICKED_MESSAGE)]);
    assert_eq!(r.roles(), [(addr(B), Role::Control)]);
    assert_ne!(a, b);
}

#[test]
fn leases_refuse_at_accept_and_close_whom_they_no_longer_admit() {
    let unix = crate::daemon::lease::unix_now();
    let mut book = Book::default();
    book.set_rules(LeasePolicy::Optional, Default::default());
    let held: IpAddr = "10.0.0.1".parse().unwrap();
    book.grant(&key().to_string(), held, 600, unix, || "l1".into())
        .unwrap();
    let mut r = rig(Busy::Share, Protocol::Raw, book);
    assert_eq!(
        r.hub.accept(addr(B), r.at(0)),
        Err(Refused(LEASED_MESSAGE)),
        "leased to another address"
    );
    let a = r.hub.accept(addr(A), r.at(0)).unwrap();
    // The lease goes to B's address: A is closed when the hub hears of it.
    {
        let mut book = r.hub.shared.leases.book();
        let device = key().to_string();
        let id = book.on(&device, unix).next().unwrap().id.clone();
        book.release(&device, &id, crate::daemon::lease::Asker::Bearer, unix)
            .unwrap();
        book.grant(&device, "10.0.0.2".parse().unwrap(), 600, unix, || {
            "l2".into()
        })
        .unwrap();
    }
    r.hub.apply_leases(r.at(1));
    assert_eq!(r.closes(), [(a, &b""[..])]);
    assert!(r.roles().is_empty());
    assert!(r.hub.accept(addr(B), r.at(2)).is_ok());
}

#[test]
fn a_setting_waits_for_the_data_before_it_then_is_applied_after_its_last_byte() {
    let mut r = rig(Busy::Reject, Protocol::Rfc2217, Book::default());
    r.seen.lock().unwrap().room = 0; // the UART is flow-stopped
    let a = r.hub.accept(addr(A), r.at(0)).unwrap();
    r.output(a);
    let mut bytes = b"data".to_vec();
    telnet::subnegotiation(44, &[1, 0, 0x0E, 0x10, 0x00], &mut bytes); // SET-BAUDRATE 921600
    r.send(a, &bytes, r.at(1));
    assert!(r.seen.lock().unwrap().applied.is_empty(), "the baud waits");
    assert!(
        !r.hub.device_interest().read,
        "no device reads while it waits"
    );
    assert!(r.hub.device_interest().write);
    // The device takes the data: the baud follows its last byte, and the client hears.
    r.seen.lock().unwrap().room = usize::MAX;
    r.hub.device_writable(r.at(2));
    r.hub.advance(r.at(2));
    assert_eq!(r.seen.lock().unwrap().applied, [(921_600, 4)]);
    let mut answer = Vec::new();
    telnet::subnegotiation(44, &[101, 0, 0x0E, 0x10, 0x00], &mut answer);
    assert_eq!(r.output(a), answer);
}

#[test]
fn a_setting_behind_a_stalled_device_fails_after_the_drain_wait() {
    let mut r = rig(Busy::Reject, Protocol::Rfc2217, Book::default());
    r.seen.lock().unwrap().room = 0;
    let a = r.hub.accept(addr(A), r.at(0)).unwrap();
    r.output(a);
    let mut bytes = b"data".to_vec();
    telnet::subnegotiation(44, &[1, 0, 0x0E, 0x10, 0x00], &mut bytes);
    r.send(a, &bytes, r.at(1));
    // The hub's own timers (the modem poll, then the drain wait), as the bridge runs them.
    let mut answered = Vec::new();
    for _ in 0..10 {
        let due = r.hub.poll_timeout().expect("the wait is timed");
        assert!(due <= r.at(1) + DRAIN_WAIT, "{:?}", due - r.t);
        r.hub.handle_timeout(due);
        r.hub.advance(due);
        answered = r.output(a);
        if !answered.is_empty() {
            break;
        }
    }
    assert!(r.seen.lock().unwrap().applied.is_empty(), "never applied");
    // The answer reports the baud still in force (the configured 115200).
    let mut answer = Vec::new();
    telnet::subnegotiation(44, &[101, 0, 0x01, 0xC2, 0x00], &mut answer);
    assert_eq!(answered, answer);
}

#[test]
fn an_observer_that_does_not_read_loses_output_the_controller_loses_nothing() {
    let mut r = rig(Busy::Share, Protocol::Raw, Book::default());
    let a = r.hub.accept(addr(A), r.at(0)).unwrap();
    r.send(a, b"x", r.at(0));
    let b = r.hub.accept(addr(B), r.at(1)).unwrap();
    let chunk = vec![b'o'; 16 * 1024];
    let mut sent = 0;
    for k in 0..8 {
        r.device_says(&chunk, r.at(2 + k));
        sent += chunk.len();
        let got = r.output(a); // A reads everything, B nothing
        assert_eq!(got.len(), chunk.len());
    }
    let waiting_for_b = r.hub.client_output(b).len();
    assert!(waiting_for_b <= CLIENT_HIGH_WATER + chunk.len() + 256);
    let e = r.registry.get(&key()).unwrap();
    let missed = Stats::get(&e.clients[1].dropped.to_client) as usize;
    assert!(
        missed > 0 && missed + CLIENT_HIGH_WATER >= sent - 256,
        "missed {missed}"
    );
}

#[test]
fn a_device_that_vanishes_keeps_its_client_for_the_grace_period() {
    let mut r = rig(Busy::Reject, Protocol::Raw, Book::default());
    let a = r.hub.accept(addr(A), r.at(0)).unwrap();
    r.hub.gone(r.at(10));
    assert_eq!(r.roles(), [(addr(A), Role::Control)], "kept");
    assert!(r.hub.device_fd().is_none());
    r.send(a, b"lost", r.at(20));
    // Back within the grace period: the client carries on.
    assert!(r.hub.open_due(r.at(100)));
    let seen = Arc::new(Mutex::new(Seen {
        room: usize::MAX,
        ..Seen::default()
    }));
    let dev = Mem {
        seen: seen.clone(),
        null: File::open("/dev/null").unwrap(),
    };
    r.hub.opened(Box::new(dev), r.at(100));
    r.send(a, b"back", r.at(110));
    assert_eq!(seen.lock().unwrap().written, b"back");
    // Gone again, and not back: the client goes when the grace period ends.
    r.hub.gone(r.at(200));
    let end = r.at(200) + r.hub.shared.grace;
    assert!(r.hub.poll_timeout().is_some_and(|t| t <= end));
    r.hub.handle_timeout(end);
    assert_eq!(r.closes(), [(a, &b""[..])]);
    assert!(r.roles().is_empty());
}

#[test]
fn idle_nothing_is_timed_but_the_modem_poll_while_a_client_is_there() {
    let mut r = rig(Busy::Reject, Protocol::Raw, Book::default());
    assert_eq!(r.hub.poll_timeout(), None, "an idle device wakes nobody");
    let a = r.hub.accept(addr(A), r.at(0)).unwrap();
    assert!(r.hub.poll_timeout().is_some());
    r.hub
        .client_gone(a, "client closed the connection", r.at(1));
    assert_eq!(r.hub.poll_timeout(), None);
}
