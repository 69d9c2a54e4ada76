//! Boards anywhere on the network, without a host: a one-shot mDNS browse (about 1.5 s) for
//! serialhub portals (`_serialhub._tcp`) and serial ports (`_iostream._tcp`), then each
//! portal's device list over its API. A serialhub whose portal is off is still found through
//! its ports' advertisements (their TXT records carry what the listing shows).
//!
//! The query goes out of every multicast interface from an ephemeral port, so responders
//! answer by unicast (RFC 6762 §6.7) and nothing needs port 5353 here.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use nix::net::if_::InterfaceFlags;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::device::Device;
use super::error::ClientError;
use super::portal::Portal;
use crate::protocol::mdns::{browse_query, Browser, Found, GROUP, PORT};

/// How long answers are collected.
pub(crate) const BROWSE_FOR: Duration = Duration::from_millis(1500);
/// The query is sent again this late, in case the first was lost.
const ASK_AGAIN: Duration = Duration::from_millis(500);

const PORTALS: &str = "_serialhub._tcp";
const PORTS: &str = "_iostream._tcp";

/// Browse for `wait`; every instance of `kinds` that answered.
pub(crate) fn browse(kinds: &[&str], wait: Duration) -> io::Result<Vec<Found>> {
    let sock = UdpSocket::bind("0.0.0.0:0")?;
    sock.set_nonblocking(true)?;
    let _ = sock.set_multicast_ttl_v4(255);
    let query = browse_query(0, kinds);
    let to = SocketAddrV4::new(GROUP, PORT);
    let send = || {
        let mut sent = false;
        for ip in multicast_addrs() {
            // Out of each interface in turn (by its address).
            if multicast_if(&sock, ip).is_ok() && sock.send_to(&query, to).is_ok() {
                sent = true;
            }
        }
        if !sent {
            let _ = sock.send_to(&query, to);
        }
    };
    send();
    let start = Instant::now();
    let mut again = Some(start + ASK_AGAIN);
    let deadline = start + wait;
    let mut browser = Browser::new(kinds);
    let mut buf = [0u8; 9000];
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        if again.is_some_and(|t| now >= t) {
            again = None;
            send();
        }
        let until = again.unwrap_or(deadline).min(deadline);
        let ms = until.saturating_duration_since(now).as_millis() as u16 + 1;
        let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, PollTimeout::from(ms));
        while let Ok((n, _)) = sock.recv_from(&mut buf) {
            browser.feed(&buf[..n]);
        }
    }
    Ok(browser.found())
}

/// Send the socket's multicast out of the interface that has `ip` (IP_MULTICAST_IF, which
/// nix does not wrap).
fn multicast_if(sock: &UdpSocket, ip: Ipv4Addr) -> io::Result<()> {
    let addr = libc::in_addr {
        s_addr: u32::from_ne_bytes(ip.octets()),
    };
    // SAFETY: a valid socket descriptor and a pointer to an in_addr of the size given.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MULTICAST_IF,
            (&addr as *const libc::in_addr).cast(),
            std::mem::size_of::<libc::in_addr>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The IPv4 addresses of the interfaces a query can leave by.
fn multicast_addrs() -> Vec<Ipv4Addr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for a in addrs {
        let ok = a.flags.contains(InterfaceFlags::IFF_UP)
            && a.flags.contains(InterfaceFlags::IFF_MULTICAST)
            && !a.flags.contains(InterfaceFlags::IFF_LOOPBACK);
        if let (true, Some(ip)) = (
            ok,
            a.address.and_then(|s| s.as_sockaddr_in().map(|s| s.ip())),
        ) {
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
    }
    out
}

/// Every serialhub portal on the network.
pub(crate) fn portals() -> Result<Vec<Portal>, ClientError> {
    let found = browse(&[PORTALS], BROWSE_FOR).map_err(browse_failed)?;
    Ok(found.iter().filter_map(portal_of).collect())
}

fn portal_of(f: &Found) -> Option<Portal> {
    let ip = f.addrs.first()?;
    // Whoever answered the browse: never sent the token.
    Some(Portal::browsed(format!("{ip}:{}", f.port)))
}

fn browse_failed(e: io::Error) -> ClientError {
    ClientError::Unreachable(format!("cannot browse the network (mDNS): {e}"))
}

/// Every board of every serialhub on the network, each with its `host` (and its portal, when
/// it has one), sorted by host; an error when nothing answered.
pub(crate) fn devices() -> Result<Vec<Device>, ClientError> {
    let found = browse(&[PORTALS, PORTS], BROWSE_FOR).map_err(browse_failed)?;
    let mut out: Vec<Device> = Vec::new();
    let mut hosts_with_portal: Vec<String> = Vec::new();
    for f in found.iter().filter(|f| f.kind == PORTALS) {
        let Some(portal) = portal_of(f) else { continue };
        match portal.discover() {
            Ok((_, devices)) => {
                hosts_with_portal.push(f.target.clone());
                out.extend(devices.into_iter().map(|mut d| {
                    d.host = portal.authority.clone();
                    d.portal = Some(portal.authority.clone());
                    d
                }));
            }
            Err(e) => eprintln!("serialhub: skipping {}: {e}", portal.authority),
        }
    }
    // Ports of a serialhub that has no portal (or whose portal did not answer).
    for f in found.iter().filter(|f| f.kind == PORTS) {
        let txt = |k: &str| {
            f.txt
                .iter()
                .find(|(key, _)| key == k)
                .map_or(String::new(), |(_, v)| v.clone())
        };
        if txt("provider") != "serialhub" || hosts_with_portal.contains(&f.target) {
            continue;
        }
        let Some(ip) = f.addrs.first() else { continue };
        let url = format!("rfc2217://{ip}:{}", f.port);
        out.push(Device {
            url_ign_set_control: format!("{url}?ign_set_control"),
            socket_url: if txt("protocol") == "rfc2217" {
                String::new()
            } else {
                format!("socket://{ip}:{}", f.port)
            },
            url,
            port: u64::from(f.port),
            product: txt("product"),
            serial: txt("serial"),
            tty: String::new(),
            name: txt("name"),
            key: txt("key"),
            state: "running".into(),
            host: ip.to_string(),
            portal: None,
        });
    }
    if out.is_empty() {
        return Err(ClientError::Select(format!(
            "no serialhub answered on the network within {:.1} s (mDNS); give a HOST, or set SERIALHUB_HOST \
             (mDNS does not cross a Docker bridge network: in a container set SERIALHUB_HOST=pi, or run it with --network host)",
            BROWSE_FOR.as_secs_f32()
        )));
    }
    out.sort_by(|a, b| a.host.cmp(&b.host));
    Ok(out)
}
