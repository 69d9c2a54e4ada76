//! The mDNS responder's thread: advertises every served device as `_iostream._tcp` (with the
//! TXT keys ser2net uses, so browsers of ser2net ports find serialhub's too) and the portal as
//! `_serialhub._tcp`, on the interfaces it may use.
//!
//! One thread, one `poll()` over the mDNS socket, a netlink socket that says when addresses
//! come and go (a Pi whose Wi-Fi comes up after boot), and a wake fd for the supervisor's
//! changes. The thread only moves things: packets (with the interface they came in on),
//! interfaces and the supervisor's changes go into [`Machine`], which decides — probing,
//! announcing, conflicts and renames, goodbyes, what answers what and the answer budget
//! ([`crate::protocol::mdns`]) — and what it gives back is sent, out of the interface it
//! names; the thread sleeps until the machine's next timeout (none while nothing changes) and
//! logs the machine's notes.
//!
//! Bounded: at most `PACKETS_PER_SECOND` packets are parsed and `ANSWERS_PER_SECOND`
//! answers leave per second (the machine's budgets, charged before the work), at most 64
//! packets are read per wakeup (so a flood cannot starve the changes), into one fixed buffer.
//!
//! Who is heard: only sources on the receiving interface's link (the machine checks them
//! against the interface's networks, read here with their prefixes) and inside `[access]
//! allow` (checked here, before the machine sees the packet): a host that may not use the
//! devices is not told about them either. With `private = true` only the portal is
//! advertised ([`Publish::PortalOnly`]): the device ports, which a token cannot guard, are
//! not announced to the LAN.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::thread;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use nix::net::if_::InterfaceFlags;
use nix::poll::{PollFd, PollFlags};
use nix::sys::socket::{
    bind, recvmsg, sendmsg, setsockopt, socket, sockopt, AddressFamily, ControlMessage,
    ControlMessageOwned, IpMembershipRequest, MsgFlags, NetlinkAddr, SockFlag, SockProtocol,
    SockType, SockaddrIn,
};

use crate::daemon::access::Allow;
use crate::daemon::config::MdnsConfig;
use crate::daemon::mailbox::{mailbox, Mailbox, Refused, Sender};
use crate::daemon::registry::DeviceEntry;
use crate::daemon::wait::{poll_until, Woke};
use crate::protocol::mdns::{IfAddr, Iface, Machine, Note, Peer, Service, To, GROUP, PORT};
use crate::protocol::Protocol;

/// How many advertisement changes may wait for the responder: the supervisor sends one or two
/// per device event, and the responder takes them all each round.
const CHANGES: usize = 256;
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

/// What is advertised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Publish {
    /// The portal and every served device.
    Everything,
    /// The portal only (`private = true`): what a device port offers cannot be guarded by
    /// the token, so it is not announced; users find the ports through the portal, with it.
    PortalOnly,
}

impl Publish {
    pub(crate) fn for_private(private: bool) -> Publish {
        if private {
            Publish::PortalOnly
        } else {
            Publish::Everything
        }
    }
}

/// How the supervisor and `serve` reach the responder.
pub(crate) struct Adverts {
    tx: Sender<Change>,
    thread: Option<thread::JoinHandle<()>>,
    publish: Publish,
}

impl Adverts {
    /// Advertise the portal.
    pub(crate) fn serve_portal(&self, service: Service) {
        self.send(Change::Serve("portal".to_owned(), service));
    }

    /// Advertise a served device under `key`, unless only the portal is published.
    pub(crate) fn serve(&self, key: &str, service: Service) {
        if self.publish == Publish::Everything {
            self.send(Change::Serve(key.to_owned(), service));
        }
    }

    pub(crate) fn withdraw(&self, key: &str) {
        self.send(Change::Withdraw(key.to_owned()));
    }

    fn send(&self, c: Change) {
        if let Err(why) = self.tx.post(c) {
            if why == Refused::Full {
                warn!("mDNS: the responder is {why}; an advertisement change is dropped");
            }
        }
    }
}

impl Drop for Adverts {
    /// Goodbyes for everything, then the thread ends (it only sends a few packets).
    fn drop(&mut self) {
        // The responder takes its whole mailbox each round, so a full one empties within a
        // round; one that stays full for a second belongs to a stuck thread, left to itself.
        let posted = (0..100).any(|_| match self.tx.post(Change::Shutdown) {
            Err(Refused::Full) => {
                thread::sleep(Duration::from_millis(10));
                false
            }
            _ => true,
        });
        if let Some(t) = self.thread.take().filter(|_| posted) {
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
/// when it is a specific one (then only the interface that has it is used); packets from
/// outside `allow` are not read; `publish` says whether devices are advertised.
pub(crate) fn spawn(
    config: &MdnsConfig,
    only: Option<Ipv4Addr>,
    label: String,
    allow: Allow,
    publish: Publish,
) -> io::Result<Adverts> {
    let sock = multicast_socket()?;
    let netlink = address_watch()
        .map_err(|e| {
            warn!("mDNS: cannot watch address changes ({e}); interfaces are read at start only")
        })
        .ok();
    let (tx, inbox) = mailbox(CHANGES)?;
    let mut r = Runner {
        sock,
        netlink,
        inbox,
        names: config.interfaces.clone(),
        only,
        allow,
        machine: Machine::new(label, Instant::now()),
        buf: vec![0; 9000].into_boxed_slice(),
    };
    let thread = thread::Builder::new()
        .name("mdns".into())
        .spawn(move || r.run())?;
    Ok(Adverts {
        tx,
        thread: Some(thread),
        publish,
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

/// An interface to use: its index, name (for the log) and IPv4 addresses with prefixes.
#[derive(Debug)]
struct Nic {
    index: u32,
    name: String,
    addrs: Vec<IfAddr>,
}

/// The thread's half: descriptors, the mailbox and the buffer; the policy is the machine's.
struct Runner {
    sock: OwnedFd,
    netlink: Option<OwnedFd>,
    /// Changes from the supervisor and `serve`.
    inbox: Mailbox<Change>,
    /// Configured interface names (empty: all).
    names: Vec<String>,
    only: Option<Ipv4Addr>,
    /// `[access] allow`: other sources are not heard.
    allow: Allow,
    machine: Machine,
    buf: Box<[u8]>,
}

impl Runner {
    fn run(&mut self) {
        self.rescan();
        loop {
            self.machine.handle_timeout(Instant::now());
            self.flush();
            let now = Instant::now();
            // The packet budget is spent: the socket is not read until it refills.
            let deaf = self.machine.deaf_until(now);
            let wake_at = [self.machine.poll_timeout(), deaf]
                .into_iter()
                .flatten()
                .min();
            let listen = if deaf.is_some() {
                PollFlags::empty()
            } else {
                PollFlags::POLLIN
            };
            // A fixed set, no allocation per round: without netlink its slot polls the
            // mailbox's fd for nothing.
            let mut fds = [
                PollFd::new(self.sock.as_fd(), listen),
                PollFd::new(self.inbox.fd(), PollFlags::POLLIN),
                match &self.netlink {
                    Some(n) => PollFd::new(n.as_fd(), PollFlags::POLLIN),
                    None => PollFd::new(self.inbox.fd(), PollFlags::empty()),
                },
            ];
            if poll_until(&mut fds, wake_at, &"mDNS") == Woke::Interrupted {
                continue;
            }
            let ready = fds.map(|f| f.revents().is_some_and(|r| !r.is_empty()));
            if ready[1] {
                while let Some(c) = self.inbox.pop() {
                    let go_on = self.change(c);
                    self.flush();
                    if !go_on {
                        return;
                    }
                }
            }
            if ready[2] {
                self.drain_netlink();
                self.rescan();
            }
            if ready[0] && deaf.is_none() {
                self.receive();
            }
        }
    }

    /// Apply one change; false to stop.
    fn change(&mut self, c: Change) -> bool {
        match c {
            Change::Serve(key, service) => self.machine.serve(&key, service, Instant::now()),
            Change::Withdraw(key) => self.machine.withdraw(&key),
            Change::Shutdown => {
                self.machine.close();
                return false;
            }
        }
        true
    }

    /// Send what the machine decided, and log what it tells.
    fn flush(&mut self) {
        while let Some(t) = self.machine.poll_transmit() {
            match t.to {
                To::Group => self.send_group(&t.bytes, t.iface),
                To::Asker(to) => {
                    let iov = [io::IoSlice::new(&t.bytes)];
                    let _ = sendmsg(
                        self.sock.as_raw_fd(),
                        &iov,
                        &[],
                        MsgFlags::empty(),
                        Some(&SockaddrIn::from(to)),
                    );
                }
            }
        }
        while let Some(n) = self.machine.poll_note() {
            match n {
                Note::Named(host) => info!("mDNS: this host is {host}.local"),
                Note::HostRenamed { old, new } => {
                    warn!("mDNS: another host is called {old}.local; this one is now {new}.local")
                }
                Note::HostKept(host) => debug!("mDNS: {host}.local is claimed too; keeping it"),
                Note::InstanceRenamed { old, new } => {
                    warn!("mDNS: another host advertises {old:?}; ours is now {new:?}")
                }
                Note::Serving { instance, kind } => {
                    debug!("mDNS: advertising {instance} ({kind})")
                }
                Note::Goodbye(instance) => debug!("mDNS: goodbye to {instance}"),
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
            if self.machine.deaf_until(Instant::now()).is_some() {
                return;
            }
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
            let peer = if self.allow.permits(IpAddr::V4(from.ip())) {
                Peer::Allowed
            } else {
                Peer::Refused
            };
            let (now, packet) = (Instant::now(), &self.buf[..len]);
            self.machine
                .handle_from(now, index, SocketAddrV4::from(from), peer, packet);
            self.flush();
        }
    }

    fn drain_netlink(&mut self) {
        let Some(n) = &self.netlink else { return };
        let mut buf = [0u8; 4096];
        while nix::unistd::read(n.as_raw_fd(), &mut buf).is_ok_and(|k| k > 0) {}
    }

    /// Read the interfaces again: join the group on new ones (the machine announces there),
    /// forget those gone.
    fn rescan(&mut self) {
        let now = interfaces(&self.names, self.only);
        let gone: Vec<u32> = (self.machine.ifaces().iter())
            .filter(|i| !now.iter().any(|n| n.index == i.index))
            .map(|i| i.index)
            .collect();
        for index in gone {
            self.machine.iface_down(index);
        }
        for nic in now {
            let iface = Iface {
                index: nic.index,
                addrs: nic.addrs.clone(),
            };
            if !self.machine.iface_up(iface) {
                continue;
            }
            let Some(addr) = nic.addrs.first().map(|a| a.ip) else {
                continue;
            };
            let req = IpMembershipRequest::new(GROUP, Some(addr));
            match setsockopt(&self.sock, sockopt::IpAddMembership, &req) {
                Ok(()) => info!("mDNS: advertising on {} ({addr})", nic.name),
                // Already a member (an address changed on a known interface).
                Err(nix::errno::Errno::EADDRINUSE) => {}
                Err(e) => warn!("mDNS: cannot join the group on {}: {e}", nic.name),
            }
        }
        self.flush();
    }
}

/// The interfaces to use: up, multicast-capable, not loopback, with an IPv4 address; only
/// `names` if any are given; only the one holding `only` if that is set.
fn interfaces(names: &[String], only: Option<Ipv4Addr>) -> Vec<Nic> {
    let mut out: Vec<Nic> = Vec::new();
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
        // No netmask (never seen for IPv4): the address alone is its link.
        let prefix = (a.netmask.as_ref())
            .and_then(|m| m.as_sockaddr_in())
            .map_or(32, |m| u32::from(m.ip()).leading_ones() as u8);
        let addr = IfAddr { ip, prefix };
        if only.is_some_and(|o| o != ip) {
            continue;
        }
        let Ok(index) = nix::net::if_::if_nametoindex(a.interface_name.as_str()) else {
            continue;
        };
        match out.iter_mut().find(|i| i.index == index) {
            Some(i) => i.addrs.push(addr),
            None => out.push(Nic {
                index,
                name: a.interface_name.clone(),
                addrs: vec![addr],
            }),
        }
    }
    out
}

/// Whether mDNS makes sense for devices listening on `bind` (not on loopback only).
pub(crate) fn reachable(bind: IpAddr) -> bool {
    !bind.is_loopback()
}
