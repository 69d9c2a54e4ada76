//! The mDNS responder's thread: advertises every served device as `_iostream._tcp` (with the
//! TXT keys ser2net uses, so browsers of ser2net ports find serialhub's too) and the portal as
//! `_serialhub._tcp`, on the interfaces it may use.
//!
//! One thread, one `poll()` over the mDNS socket, a netlink socket that says when addresses
//! come and go (a Pi whose Wi-Fi comes up after boot), and a wake fd for the supervisor's
//! changes; no timer runs while nothing changes. The records themselves are
//! [`crate::protocol::mdns`]'s. Answers go out on the interface the question came in on, with
//! that interface's address, so a host on one network is never told another's.
//!
//! Bounded: at most [`ANSWERS_PER_SECOND`] answers leave per second (a flood of questions
//! cannot make the daemon flood the network), packets are read into one fixed buffer.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use nix::net::if_::InterfaceFlags;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::socket::{
    bind, recvmsg, sendmsg, setsockopt, socket, sockopt, AddressFamily, ControlMessage,
    ControlMessageOwned, IpMembershipRequest, MsgFlags, NetlinkAddr, SockFlag, SockProtocol,
    SockType, SockaddrIn,
};

use crate::daemon::config::MdnsConfig;
use crate::daemon::registry::DeviceEntry;
use crate::protocol::mdns::{self, Dest, Responder, Service, GROUP, PORT};
use crate::protocol::Protocol;

/// The most answers sent per second, all interfaces together.
const ANSWERS_PER_SECOND: u32 = 50;
/// Announcements are sent twice, this far apart (RFC 6762 §8.3).
const ANNOUNCE_AGAIN: Duration = Duration::from_secs(1);
/// A new host name is probed this many times, this far apart, before it is used (RFC 6762
/// §8.1).
const PROBES: u8 = 3;
const PROBE_EVERY: Duration = Duration::from_millis(250);
/// The netlink groups for IPv4 address and link changes.
const RTMGRP_LINK: u32 = 0x1;
const RTMGRP_IPV4_IFADDR: u32 = 0x10;

/// What the supervisor tells the responder.
enum Change {
    /// Advertise (or re-advertise) a service under `key`.
    Serve(String, Service),
    /// Say goodbye to `key`'s service.
    Withdraw(String),
    Shutdown,
}

/// How the supervisor and `serve` reach the responder.
pub(crate) struct Adverts {
    tx: mpsc::Sender<Change>,
    wake: Arc<EventFd>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Adverts {
    pub(crate) fn serve(&self, key: &str, service: Service) {
        self.send(Change::Serve(key.to_owned(), service));
    }

    pub(crate) fn withdraw(&self, key: &str) {
        self.send(Change::Withdraw(key.to_owned()));
    }

    fn send(&self, c: Change) {
        if self.tx.send(c).is_ok() {
            let _ = self.wake.write(1);
        }
    }
}

impl Drop for Adverts {
    /// Goodbyes for everything, then the thread ends (it only sends a few packets).
    fn drop(&mut self) {
        self.send(Change::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The `_iostream._tcp` advertisement of a served device: ser2net's TXT keys (`provider`,
/// `gensiostack`, and its `mdns-sysattrs` ones), plus serialhub's `key` and `name`.
pub(crate) fn device_service(e: &DeviceEntry, host: &str) -> Service {
    let mut txt = vec![
        ("provider".to_owned(), "serialhub".to_owned()),
        (
            "gensiostack".to_owned(),
            match e.protocol {
                Protocol::Raw => "tcp",
                Protocol::Auto | Protocol::Rfc2217 => "telnet(rfc2217),tcp",
            }
            .to_owned(),
        ),
        (
            "devicetype".to_owned(),
            if e.usb.is_some() {
                "serialusb"
            } else {
                "serial"
            }
            .to_owned(),
        ),
    ];
    if let Some(u) = &e.usb {
        let mut add = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                txt.push((k.to_owned(), v));
            }
        };
        add("idVendor", u.id.map(|id| format!("{:04x}", id.vid)));
        add("idProduct", u.id.map(|id| format!("{:04x}", id.pid)));
        add("serial", u.serial.clone());
        add("manufacturer", u.manufacturer.clone());
        add("product", u.product.clone());
        add("bInterfaceNumber", u.interface.map(|i| format!("{i:02x}")));
        add("interface", u.interface.map(|i| i.to_string()));
    }
    txt.push(("key".to_owned(), e.key.to_string()));
    txt.push(("name".to_owned(), e.name.clone()));
    txt.push(("protocol".to_owned(), e.protocol.as_str().to_owned()));
    Service {
        instance: format!("{}@{host}", e.name),
        kind: "_iostream._tcp".to_owned(),
        port: e.port,
        txt,
    }
}

/// The portal's advertisement: `_serialhub._tcp` with its API path and version.
pub(crate) fn portal_service(port: u16, host: &str) -> Service {
    Service {
        instance: format!("serialhub@{host}"),
        kind: "_serialhub._tcp".to_owned(),
        port,
        txt: vec![
            ("path".to_owned(), "/api".to_owned()),
            ("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned()),
        ],
    }
}

/// This machine's name for instance names (`pi`), and the host label its records name
/// (`pi-1a2b`: the hostname and a piece of /etc/machine-id, so two Pis both called
/// `raspberrypi` do not claim one name).
pub(crate) fn host_names() -> (String, String) {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "serialhub".to_owned());
    let id = std::fs::read_to_string("/etc/machine-id")
        .map(|s| s.trim().chars().take(4).collect::<String>())
        .unwrap_or_default();
    let label = if id.is_empty() {
        host.clone()
    } else {
        format!("{host}-{id}")
    };
    (host, label)
}

/// Start the responder on `config`'s interfaces; `only` is the address devices listen on
/// when it is a specific one (then only the interface that has it is used).
pub(crate) fn spawn(
    config: &MdnsConfig,
    only: Option<Ipv4Addr>,
    label: String,
) -> io::Result<Adverts> {
    let sock = multicast_socket()?;
    let netlink = address_watch()
        .map_err(|e| {
            warn!("mDNS: cannot watch address changes ({e}); interfaces are read at start only")
        })
        .ok();
    let wake = Arc::new(EventFd::from_flags(
        EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC,
    )?);
    let (tx, rx) = mpsc::channel();
    let mut r = Runner {
        sock,
        netlink,
        wake: wake.clone(),
        rx,
        names: config.interfaces.clone(),
        only,
        ifaces: Vec::new(),
        base_host: label.clone(),
        responder: Responder {
            host: label,
            services: Vec::new(),
        },
        keys: BTreeMap::new(),
        again: None,
        probing: None,
        budget: (Instant::now(), ANSWERS_PER_SECOND),
        buf: vec![0; 9000].into_boxed_slice(),
    };
    let thread = thread::Builder::new()
        .name("mdns".into())
        .spawn(move || r.run())?;
    Ok(Adverts {
        tx,
        wake,
        thread: Some(thread),
    })
}

fn multicast_socket() -> io::Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // avahi (or another responder) may hold 5353 too: both receive every packet.
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    setsockopt(&fd, sockopt::ReusePort, &true)?;
    setsockopt(&fd, sockopt::Ipv4PacketInfo, &true)?;
    setsockopt(&fd, sockopt::IpMulticastTtl, &255)?;
    bind(fd.as_raw_fd(), &SockaddrIn::new(0, 0, 0, 0, PORT))?;
    Ok(fd)
}

fn address_watch() -> io::Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )?;
    bind(
        fd.as_raw_fd(),
        &NetlinkAddr::new(0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR),
    )?;
    Ok(fd)
}

/// An interface in use: its index and IPv4 addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Iface {
    index: u32,
    name: String,
    addrs: Vec<Ipv4Addr>,
}

struct Runner {
    sock: OwnedFd,
    netlink: Option<OwnedFd>,
    wake: Arc<EventFd>,
    rx: mpsc::Receiver<Change>,
    /// Configured interface names (empty: all).
    names: Vec<String>,
    only: Option<Ipv4Addr>,
    ifaces: Vec<Iface>,
    responder: Responder,
    /// The host label we started with (a clash renames it once, from this).
    base_host: String,
    /// Device key → its instance label (for withdrawals).
    keys: BTreeMap<String, String>,
    /// When the second announcement is due.
    again: Option<Instant>,
    /// The host name is being probed: the next probe (or the end of probing) is due then,
    /// after this many probes. Nothing is announced or answered meanwhile.
    probing: Option<(Instant, u8)>,
    /// Answers left in the current second.
    budget: (Instant, u32),
    buf: Box<[u8]>,
}

impl Runner {
    fn run(&mut self) {
        self.rescan();
        self.start_probing();
        loop {
            let next = [self.again, self.probing.map(|(t, _)| t)]
                .into_iter()
                .flatten()
                .min();
            let timeout = next.map_or(PollTimeout::NONE, |t| {
                let ms = t.saturating_duration_since(Instant::now()).as_millis() as i32 + 1;
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
            });
            let mut fds = vec![
                PollFd::new(self.sock.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.wake.as_fd(), PollFlags::POLLIN),
            ];
            if let Some(n) = &self.netlink {
                fds.push(PollFd::new(n.as_fd(), PollFlags::POLLIN));
            }
            if let Err(e) = poll(&mut fds, timeout) {
                if e != nix::errno::Errno::EINTR {
                    warn!("mDNS: poll failed: {e}");
                    thread::sleep(Duration::from_millis(100));
                }
                continue;
            }
            let ready: Vec<bool> = fds
                .iter()
                .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                .collect();
            drop(fds);
            if ready[1] {
                let _ = self.wake.read();
                while let Ok(c) = self.rx.try_recv() {
                    if !self.change(c) {
                        return;
                    }
                }
            }
            if ready.get(2).copied().unwrap_or(false) {
                self.drain_netlink();
                self.rescan();
            }
            if ready[0] {
                self.receive();
            }
            if self.probing.is_some_and(|(t, _)| Instant::now() >= t) {
                self.probe();
            }
            if self.again.is_some_and(|t| Instant::now() >= t) {
                self.again = None;
                self.announce_all();
            }
        }
    }

    fn start_probing(&mut self) {
        self.probing = Some((Instant::now(), 0));
        self.probe();
    }

    /// The next probe, or — after the last one went unanswered — the name is ours: announce.
    fn probe(&mut self) {
        let Some((_, sent)) = self.probing else {
            return;
        };
        if sent >= PROBES {
            self.probing = None;
            info!("mDNS: this host is {}.local", self.responder.host);
            self.announce_all();
            self.again = Some(Instant::now() + ANNOUNCE_AGAIN);
            return;
        }
        let p = mdns::probe(&self.responder.host);
        self.send_all(|_| vec![p.clone()]);
        self.probing = Some((Instant::now() + PROBE_EVERY, sent + 1));
    }

    /// Apply one change; false to stop.
    fn change(&mut self, c: Change) -> bool {
        match c {
            Change::Serve(key, service) => {
                if let Some(old) = self.keys.insert(key, service.instance.clone()) {
                    self.responder.services.retain(|s| s.instance != old);
                }
                debug!("mDNS: advertising {} ({})", service.instance, service.kind);
                self.responder.services.push(service.clone());
                if self.probing.is_none() {
                    let one = Responder {
                        host: self.responder.host.clone(),
                        services: vec![service],
                    };
                    self.send_all(|addrs| one.announce(addrs));
                    self.again = Some(Instant::now() + ANNOUNCE_AGAIN);
                }
            }
            Change::Withdraw(key) => {
                if let Some(instance) = self.keys.remove(&key) {
                    let gone: Vec<Service> = (self.responder.services.iter())
                        .filter(|s| s.instance == instance)
                        .cloned()
                        .collect();
                    self.responder.services.retain(|s| s.instance != instance);
                    debug!("mDNS: goodbye to {instance}");
                    let bye = self.responder.goodbye(&gone);
                    self.send_all(|_| bye.clone());
                }
            }
            Change::Shutdown => {
                let bye = self.responder.goodbye(&self.responder.services);
                self.send_all(|_| bye.clone());
                return false;
            }
        }
        true
    }

    fn announce_all(&mut self) {
        let r = self.responder.clone();
        self.send_all(|addrs| r.announce(addrs));
    }

    /// Send the packets `make` builds for each interface's addresses, out of that interface.
    fn send_all(&self, make: impl Fn(&[Ipv4Addr]) -> Vec<Vec<u8>>) {
        for i in &self.ifaces {
            for p in make(&i.addrs) {
                self.send_group(&p, i.index);
            }
        }
    }

    fn send_group(&self, packet: &[u8], index: u32) {
        let info = libc::in_pktinfo {
            ipi_ifindex: index as i32,
            ipi_spec_dst: libc::in_addr { s_addr: 0 },
            ipi_addr: libc::in_addr { s_addr: 0 },
        };
        let to = SockaddrIn::from(SocketAddrV4::new(GROUP, PORT));
        let iov = [io::IoSlice::new(packet)];
        let cmsg = [ControlMessage::Ipv4PacketInfo(&info)];
        if let Err(e) = sendmsg(
            self.sock.as_raw_fd(),
            &iov,
            &cmsg,
            MsgFlags::empty(),
            Some(&to),
        ) {
            debug!("mDNS: cannot send on interface {index}: {e}");
        }
    }

    fn receive(&mut self) {
        // A bounded number of packets per wakeup, so a flood cannot starve the changes.
        for _ in 0..64 {
            let mut cmsg = nix::cmsg_space!(libc::in_pktinfo);
            let (len, from, index) = {
                let mut iov = [io::IoSliceMut::new(&mut self.buf)];
                let msg = match recvmsg::<SockaddrIn>(
                    self.sock.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::MSG_DONTWAIT,
                ) {
                    Ok(m) => m,
                    Err(_) => return,
                };
                let index = msg.cmsgs().ok().and_then(|mut c| {
                    c.find_map(|m| match m {
                        ControlMessageOwned::Ipv4PacketInfo(i) => Some(i.ipi_ifindex as u32),
                        _ => None,
                    })
                });
                (msg.bytes, msg.address, index)
            };
            let (Some(from), Some(index)) = (from, index) else {
                continue;
            };
            let Some(iface) = self.ifaces.iter().find(|i| i.index == index) else {
                continue;
            };
            let Some(m) = mdns::parse(&self.buf[..len]) else {
                continue;
            };
            if m.response {
                self.on_response(&m);
                continue;
            }
            if self.probing.is_some() {
                continue;
            }
            let Some((reply, dest)) = self.responder.answer(&m, from.port(), &iface.addrs) else {
                continue;
            };
            if !self.spend() {
                continue;
            }
            match dest {
                Dest::Group => self.send_group(&reply, index),
                Dest::Asker => {
                    let iov = [io::IoSlice::new(&reply)];
                    let _ = sendmsg(
                        self.sock.as_raw_fd(),
                        &iov,
                        &[],
                        MsgFlags::empty(),
                        Some(&from),
                    );
                }
            }
        }
    }

    /// Another host claims one of our instance names: ours gets a suffix and is announced
    /// again (RFC 6762 §9, without the probing: names here are already host-specific).
    fn on_response(&mut self, m: &mdns::Message) {
        let ours: Vec<Ipv4Addr> = self.ifaces.iter().flat_map(|i| i.addrs.clone()).collect();
        if self.responder.host_taken(m, &ours) {
            // Another host has our name (two Pis both called raspberrypi, cloned from one
            // image): ours takes a suffix from this host's own address, once, and is probed
            // again. A second claim (or a peer that claims every name) changes nothing more:
            // the name, and the log, stay bounded.
            let old = self.responder.host.clone();
            if old != self.base_host {
                debug!("mDNS: {old}.local is claimed too; keeping it");
                return;
            }
            let suffix = ours.first().map_or(2, |ip| ip.octets()[3]);
            let new = format!("{old}-{suffix}");
            warn!("mDNS: another host is called {old}.local; this one is now {new}.local");
            self.responder.host = new;
            self.start_probing();
            return;
        }
        let Some(instance) = self.responder.conflict(m) else {
            return;
        };
        let host = self.responder.host.clone();
        let renamed = format!("{instance} ({host})");
        if instance.ends_with(')') {
            return; // renamed once already: the rest is the other side's (bounded)
        }
        warn!("mDNS: another host advertises {instance:?}; ours is now {renamed:?}");
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
        self.announce_all();
    }

    /// Spend one answer from this second's budget.
    fn spend(&mut self) -> bool {
        let now = Instant::now();
        if now.duration_since(self.budget.0) >= Duration::from_secs(1) {
            self.budget = (now, ANSWERS_PER_SECOND);
        }
        if self.budget.1 == 0 {
            return false;
        }
        self.budget.1 -= 1;
        true
    }

    fn drain_netlink(&mut self) {
        let Some(n) = &self.netlink else { return };
        let mut buf = [0u8; 4096];
        while nix::unistd::read(n.as_raw_fd(), &mut buf).is_ok_and(|k| k > 0) {}
    }

    /// Read the interfaces again: join the group on new ones and announce there.
    fn rescan(&mut self) {
        let now = interfaces(&self.names, self.only);
        let new: Vec<Iface> = now
            .iter()
            .filter(|i| !self.ifaces.contains(i))
            .cloned()
            .collect();
        for i in &new {
            let Some(&addr) = i.addrs.first() else {
                continue;
            };
            let req = IpMembershipRequest::new(GROUP, Some(addr));
            match setsockopt(&self.sock, sockopt::IpAddMembership, &req) {
                Ok(()) => info!("mDNS: advertising on {} ({addr})", i.name),
                // Already a member (an address changed on a known interface).
                Err(nix::errno::Errno::EADDRINUSE) => {}
                Err(e) => warn!("mDNS: cannot join the group on {}: {e}", i.name),
            }
        }
        self.ifaces = now;
        if !new.is_empty() && !self.responder.services.is_empty() {
            let r = self.responder.clone();
            for i in &new {
                for p in r.announce(&i.addrs) {
                    self.send_group(&p, i.index);
                }
            }
        }
    }
}

/// The interfaces to use: up, multicast-capable, not loopback, with an IPv4 address; only
/// `names` if any are given; only the one holding `only` if that is set.
fn interfaces(names: &[String], only: Option<Ipv4Addr>) -> Vec<Iface> {
    let mut out: Vec<Iface> = Vec::new();
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return out;
    };
    for a in addrs {
        let usable = a.flags.contains(InterfaceFlags::IFF_UP)
            && a.flags.contains(InterfaceFlags::IFF_MULTICAST)
            && !a.flags.contains(InterfaceFlags::IFF_LOOPBACK);
        if !usable || !(names.is_empty() || names.contains(&a.interface_name)) {
            continue;
        }
        let Some(ip) = a
            .address
            .as_ref()
            .and_then(|s| s.as_sockaddr_in())
            .map(|s| s.ip())
        else {
            continue;
        };
        if only.is_some_and(|o| o != ip) {
            continue;
        }
        let Ok(index) = nix::net::if_::if_nametoindex(a.interface_name.as_str()) else {
            continue;
        };
        match out.iter_mut().find(|i| i.index == index) {
            Some(i) => i.addrs.push(ip),
            None => out.push(Iface {
                index,
                name: a.interface_name.clone(),
                addrs: vec![ip],
            }),
        }
    }
    out
}

/// Whether mDNS makes sense for devices listening on `bind` (not on loopback only).
pub(crate) fn reachable(bind: IpAddr) -> bool {
    !bind.is_loopback()
}
