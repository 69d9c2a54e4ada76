//! The loop over a fake device (one end of a socket pair, which the test holds the other
//! end of) and real TCP clients on 127.0.0.1.

use super::*;
use crate::daemon::access::Allow;
use crate::daemon::assign::DeviceKey;
use crate::daemon::config::Busy;
use crate::daemon::hub::{DRAIN_WAIT, KICKED_MESSAGE};
use crate::daemon::lineup::BUSY_MESSAGE;
use crate::daemon::registry::{DeviceState, LogRing, Registry, Role, Stats};
use crate::protocol::line::{Lines, ModemStatus, Purge};
use crate::protocol::reset::Policy;
use crate::protocol::session::Session;
use crate::protocol::telnet;
use crate::protocol::Protocol;
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::Mutex;

/// What the fake device was asked to do.
#[derive(Default)]
struct Record {
    /// Each setting applied, with how many bytes had been written to the device then.
    applied: Vec<(u32, usize)>,
    written: usize,
    opens: usize,
}

struct Fake {
    stream: UnixStream,
    record: Arc<Mutex<Record>>,
}

impl Device for Fake {
    fn fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.read(buf)
    }
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.stream.write(buf)?;
        self.record.lock().unwrap().written += n;
        Ok(n)
    }
    fn apply(&mut self, s: &LineSettings) -> io::Result<()> {
        let mut r = self.record.lock().unwrap();
        let at = r.written;
        r.applied.push((s.baud, at));
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

const WAIT: Duration = Duration::from_secs(5);

struct Rig {
    handle: BridgeHandle,
    /// The far ends of the device, one per open.
    far: mpsc::Receiver<UnixStream>,
    record: Arc<Mutex<Record>>,
    registry: Arc<Registry>,
}

impl Rig {
    /// The clients as the portal sees them: (role, bytes dropped in, output missed).
    fn clients(&self) -> Vec<(Role, u64, u64)> {
        let e = self
            .registry
            .get(&DeviceKey::name("fake"))
            .expect("registered");
        e.clients
            .iter()
            .map(|c| {
                let d = &c.dropped;
                (c.role, Stats::get(&d.from_client), Stats::get(&d.to_client))
            })
            .collect()
    }

    /// Wait until `client` is the one in control.
    fn wait_control(&self, client: &TcpStream) {
        let me = client.local_addr().unwrap();
        let key = DeviceKey::name("fake");
        let deadline = Instant::now() + WAIT;
        while self
            .registry
            .get(&key)
            .unwrap()
            .clients
            .first()
            .map(|c| c.addr)
            != Some(me)
        {
            assert!(Instant::now() < deadline, "{me} never got control");
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Wait until the clients are as `want` says.
    fn wait_clients(&self, want: impl Fn(&[(Role, u64, u64)]) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            let now = self.clients();
            if want(&now) {
                return;
            }
            assert!(Instant::now() < deadline, "clients stayed {now:?}");
            thread::sleep(Duration::from_millis(5));
        }
    }
}

fn rig(busy: Busy, protocol: Protocol) -> Rig {
    rig_with(busy, protocol, 4)
}

fn rig_with(busy: Busy, protocol: Protocol, max_clients: usize) -> Rig {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let (tx, far) = mpsc::channel();
    let record = Arc::new(Mutex::new(Record::default()));
    let rec = record.clone();
    let open: Opener = Box::new(move |_, _| {
        let (near, far) = UnixStream::pair()?;
        near.set_nonblocking(true)?;
        // A small device buffer, so a device that is not read stalls quickly.
        setsockopt(&near, sockopt::SndBuf, &4096)?;
        rec.lock().unwrap().opens += 1;
        let _ = tx.send(far);
        Ok(Box::new(Fake {
            stream: near,
            record: rec.clone(),
        }))
    });
    let shared = Shared {
        registry: Registry::new(),
        key: DeviceKey::name("fake"),
        stats: Arc::default(),
        log: Arc::new(std::sync::Mutex::new(LogRing::new(1024))),
        grace: Duration::ZERO,
        open_after: Instant::now(),
        policy: Policy::Passthrough,
        allow: Allow::Everyone,
        leases: Arc::default(),
    };
    let spec = DeviceSpec {
        busy,
        protocol,
        max_clients,
        ..DeviceSpec::new(DevicePath::Tty("/dev/fake".into()))
    };
    let registry = shared.registry.clone();
    registry.upsert(crate::daemon::registry::DeviceEntry {
        key: DeviceKey::name("fake"),
        name: "fake".into(),
        tty: "/dev/fake".into(),
        usb: None,
        port: 0,
        state: DeviceState::Starting,
        clients: Vec::new(),
        reset: Policy::Passthrough,
        protocol,
        stats: Arc::default(),
        log: Arc::new(Mutex::new(LogRing::new(16))),
    });
    let handle = spawn(spec, listener, shared, open).unwrap();
    Rig {
        handle,
        far,
        record,
        registry,
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

/// Read exactly `n` bytes (the read timeout bounds every wait).
fn read_n(r: &mut impl Read, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    r.read_exact(&mut buf).unwrap();
    buf
}

fn device(rig: &Rig) -> UnixStream {
    let d = rig.far.recv_timeout(WAIT).expect("the device was opened");
    d.set_read_timeout(Some(WAIT)).unwrap();
    d
}

/// A raw client's bytes reach the device and the device's reach the client.
fn exchange(client: &mut TcpStream, dev: &mut UnixStream) {
    client.write_all(b"ping").unwrap();
    assert_eq!(read_n(dev, 4), b"ping");
    dev.write_all(b"pong").unwrap();
    assert_eq!(read_n(client, 4), b"pong");
}

/// Read until the peer closes; returns what came.
fn until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    all
}

#[test]
fn admission_one_client_in_control_the_next_is_told_busy() {
    let rig = rig(Busy::Reject, Protocol::Raw);
    let mut dev = device(&rig);
    let mut a = connect(rig.handle.addr);
    exchange(&mut a, &mut dev);
    let mut b = connect(rig.handle.addr);
    assert_eq!(until_closed(&mut b), BUSY_MESSAGE);
    exchange(&mut a, &mut dev);
    rig.handle.stop("test over");
    assert!(until_closed(&mut a).is_empty());
}

#[test]
fn kick_hands_the_device_to_the_newcomer() {
    let rig = rig(Busy::Kick, Protocol::Raw);
    let mut dev = device(&rig);
    let mut a = connect(rig.handle.addr);
    exchange(&mut a, &mut dev);
    let mut b = connect(rig.handle.addr);
    assert_eq!(until_closed(&mut a), KICKED_MESSAGE);
    exchange(&mut b, &mut dev);
    rig.handle.stop("test over");
}

#[test]
fn a_client_that_leaves_mid_write_frees_the_port() {
    let rig = rig(Busy::Reject, Protocol::Raw);
    let mut dev = device(&rig);
    let mut a = connect(rig.handle.addr);
    exchange(&mut a, &mut dev);
    // More than the device takes at once, then gone without reading anything.
    a.write_all(&vec![b'x'; 256 * 1024]).unwrap();
    drop(a);
    // Its bytes still drain to the device; meanwhile the port is busy. Once the loop has
    // seen the close, the next client is served (every wait here is bounded).
    dev.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + WAIT;
    let mut chunk = vec![0u8; 64 * 1024];
    let mut b = loop {
        assert!(Instant::now() < deadline, "the port was never freed");
        while dev.read(&mut chunk).is_ok_and(|n| n > 0) {}
        let mut b = connect(rig.handle.addr);
        b.write_all(b"!").unwrap();
        b.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut first = [0u8; 1];
        match b.read(&mut first) {
            Ok(1) => assert_eq!(first[0], BUSY_MESSAGE[0]),
            _ => break b,
        }
    };
    dev.set_read_timeout(Some(WAIT)).unwrap();
    b.set_read_timeout(Some(WAIT)).unwrap();
    // The newcomer's byte, after whatever was left of the first client's.
    let mut got = Vec::new();
    while !got.ends_with(b"!") {
        let n = dev.read(&mut chunk).unwrap();
        assert!(n > 0, "the device end closed");
        got.extend_from_slice(&chunk[..n]);
    }
    assert!(got.iter().all(|&c| c == b'x' || c == b'!'));
    exchange(&mut b, &mut dev);
    rig.handle.stop("test over");
}

#[test]
fn device_loss_closes_the_client_and_the_device_comes_back() {
    let rig = rig(Busy::Reject, Protocol::Raw);
    let mut dev = device(&rig);
    let mut a = connect(rig.handle.addr);
    exchange(&mut a, &mut dev);
    drop(dev);
    assert!(until_closed(&mut a).is_empty(), "closed with the device");
    let mut dev = device(&rig);
    assert_eq!(rig.record.lock().unwrap().opens, 2);
    let mut b = connect(rig.handle.addr);
    exchange(&mut b, &mut dev);
    rig.handle.stop("test over");
}

#[test]
fn a_setting_follows_the_data_queued_before_it_and_a_stalled_device_stalls_nothing_else() {
    let rig = rig(Busy::Reject, Protocol::Rfc2217);
    let mut dev = device(&rig);
    let mut a = connect(rig.handle.addr);
    // Our offers, then data the device will not take yet, then SET-BAUD 921600.
    let mut offers = Vec::new();
    Session::new(String::new(), LineSettings::default()).start(&mut offers);
    assert_eq!(read_n(&mut a, offers.len()), offers);
    let data = vec![b'd'; 64 * 1024];
    let mut baud = Vec::new();
    telnet::subnegotiation(44, &[1, 0, 0x0E, 0x10, 0x00], &mut baud);
    a.write_all(&[&data[..], &baud].concat()).unwrap();
    // The device is not read: the setting waits. The loop does not: a second client is
    // answered at once.
    let t0 = Instant::now();
    let mut b = connect(rig.handle.addr);
    assert_eq!(until_closed(&mut b), BUSY_MESSAGE);
    assert!(t0.elapsed() < DRAIN_WAIT, "the loop waited on the device");
    assert!(
        rig.record.lock().unwrap().applied.is_empty(),
        "the baud waits for the data"
    );
    // Now the device takes everything: the baud changes after the last byte.
    assert_eq!(read_n(&mut dev, data.len()), data);
    let mut answer = Vec::new();
    telnet::subnegotiation(44, &[101, 0, 0x0E, 0x10, 0x00], &mut answer);
    assert_eq!(read_n(&mut a, answer.len()), answer);
    let applied = rig.record.lock().unwrap().applied.clone();
    assert_eq!(applied.last(), Some(&(921_600, data.len())), "{applied:?}");
    rig.handle.stop("test over");
}

/// Read what `client` has been sent until it holds `want` (every wait bounded).
fn read_until(client: &mut impl Read, want: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(want.len()).any(|w| w == want) {
        let n = client.read(&mut buf).expect("output within the wait");
        assert!(n > 0, "closed before {want:?}; got {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    got
}

#[test]
fn shared_a_newcomer_takes_control_observers_see_output_and_control_comes_back() {
    let rig = rig(Busy::Share, Protocol::Raw);
    let mut dev = device(&rig);
    let mut a = connect(rig.handle.addr);
    exchange(&mut a, &mut dev);
    let mut b = connect(rig.handle.addr);
    rig.wait_clients(|c| c.len() == 2);
    // The first client wrote a moment ago: the newcomer waits until it has been idle,
    // then it is in control; the first client observes: both get the output.
    rig.wait_control(&b);
    exchange(&mut b, &mut dev);
    assert_eq!(read_n(&mut a, 4), b"pong");
    // What the observer writes never reaches the device; it is counted.
    a.write_all(b"ignored").unwrap();
    rig.wait_clients(|c| c.len() == 2 && c[1] == (Role::Observe, 7, 0));
    b.write_all(b"mine").unwrap();
    assert_eq!(read_n(&mut dev, 4), b"mine", "only the controller's bytes");
    // The newcomer leaves: the first client is in control again.
    drop(b);
    rig.wait_clients(|c| c.len() == 1);
    exchange(&mut a, &mut dev);
    rig.handle.stop("test over");
}

#[test]
fn shared_a_flash_is_never_interrupted_and_its_traffic_is_for_the_flasher_alone() {
    let rig = rig(Busy::Share, Protocol::Raw);
    let mut dev = device(&rig);
    let mut flasher = connect(rig.handle.addr);
    // esptool's SYNC: a loader session starts (the bridge enters the bootloader, then
    // passes the SYNC on).
    // The first is held while the chip resets; like esptool, send one every 100 ms
    // until one reaches it.
    let sync = crate::protocol::esp::SYNC_FRAME;
    dev.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline && !got.windows(sync.len()).any(|w| w == sync) {
        flasher.write_all(&sync).unwrap();
        let mut buf = [0u8; 256];
        while let Ok(n) = dev.read(&mut buf) {
            got.extend_from_slice(&buf[..n]);
        }
    }
    assert!(
        got.windows(sync.len()).any(|w| w == sync),
        "no SYNC reached the chip"
    );
    // Whatever else is in flight (a second SYNC) arrives before the next frame.
    dev.set_read_timeout(Some(WAIT)).unwrap();
    flasher.write_all(b"\xc0end\xc0").unwrap();
    read_until(&mut dev, b"\xc0end\xc0");
    let mut monitor = connect(rig.handle.addr);
    rig.wait_clients(|c| c.len() == 2);
    // The newcomer waits: the flasher keeps control, and the chip's answers reach it
    // alone.
    flasher.write_all(b"\xc0frame\xc0").unwrap();
    assert_eq!(read_n(&mut dev, 7), b"\xc0frame\xc0");
    monitor.write_all(b"typed").unwrap();
    dev.write_all(b"\xc0\x01\x08answer\xc0").unwrap();
    assert_eq!(read_n(&mut flasher, 10), b"\xc0\x01\x08answer\xc0");
    // The flasher is done: the monitor takes control and sees what comes next, and
    // nothing of the flash.
    drop(flasher);
    rig.wait_clients(|c| c.len() == 1);
    dev.write_all(b"boot log").unwrap();
    assert_eq!(read_n(&mut monitor, 8), b"boot log");
    monitor.write_all(b"key").unwrap();
    let mut got = Vec::new();
    while !got.ends_with(b"key") {
        got.extend(read_n(&mut dev, 1));
    }
    assert!(
        !got.windows(5).any(|w| w == b"typed"),
        "an observer's bytes leaked: {got:?}"
    );
    rig.handle.stop("test over");
}

#[test]
fn shared_at_most_max_clients_and_a_slow_observer_slows_nothing() {
    let rig = rig_with(Busy::Share, Protocol::Raw, 2);
    let mut dev = device(&rig);
    // The first client will observe and never read: the newcomer takes control.
    let slow = connect(rig.handle.addr);
    rig.wait_clients(|c| c.len() == 1);
    let mut a = connect(rig.handle.addr);
    rig.wait_control(&a);
    exchange(&mut a, &mut dev);
    let mut third = connect(rig.handle.addr);
    assert_eq!(until_closed(&mut third), BUSY_MESSAGE);
    // More device output than the kernel can buffer towards the observer (the server's
    // send buffer grows up to tcp_wmem's maximum; the observer's receive buffer, while it
    // does not read, stays below rmem_default): the controller gets all of it, in
    // order, while the observer that does not read loses what it cannot take.
    let chunk: Vec<u8> = (0..=255u8).cycle().take(64 * 1024).collect();
    let kernel_max = |f: &str| {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        let max = text.split_whitespace().last().and_then(|v| v.parse().ok());
        max.unwrap_or(4 << 20)
    };
    let buffered: usize =
        kernel_max("/proc/sys/net/ipv4/tcp_wmem") + kernel_max("/proc/sys/net/core/rmem_default");
    let chunks = (2 * buffered / chunk.len()).max(64);
    let writer = {
        let mut dev = dev.try_clone().unwrap();
        let chunk = chunk.clone();
        thread::spawn(move || {
            for _ in 0..chunks {
                dev.write_all(&chunk).unwrap();
            }
        })
    };
    for _ in 0..chunks {
        assert_eq!(read_n(&mut a, chunk.len()), chunk);
    }
    writer.join().unwrap();
    let clients = rig.clients();
    assert_eq!(clients[0].0, Role::Control);
    assert_eq!(clients[1].0, Role::Observe);
    assert!(clients[1].2 > 0, "the observer missed output: {clients:?}");
    drop(slow);
    rig.handle.stop("test over");
}
