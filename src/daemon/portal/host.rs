//! The host the devices' URLs point at, and the little the portal tells about this machine.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use super::Portal;
use crate::daemon::http::HttpRequest;

impl Portal {
    /// The host to put in device URLs: what the HTTP client used to reach us, unless that is
    /// a loopback name while the client came from elsewhere (then it would point at the
    /// client itself); else the devices' bind address, else this machine's first address.
    pub(crate) fn url_host(&self, host_header: Option<&str>, remote: Option<SocketAddr>) -> String {
        let remote_is_local = remote.is_none_or(|r| r.ip().is_loopback());
        if let Some(h) = host_header.and_then(host_of) {
            if remote_is_local || !is_loopback_name(&h) {
                return h;
            }
        }
        if !self.device_ip.is_unspecified() && (remote_is_local || !self.device_ip.is_loopback()) {
            return url_ip(self.device_ip);
        }
        url_ip(IpAddr::V4(local_ipv4().unwrap_or(Ipv4Addr::LOCALHOST)))
    }

    /// [`Portal::url_host`] for this request.
    pub(super) fn host_for(&self, req: &HttpRequest) -> String {
        self.url_host(req.host, req.remote)
    }
}

/// The host part of a `Host` header (`name`, `1.2.3.4`, `[::1]`), if it is one we may
/// echo into URLs and the page.
pub(super) fn host_of(header: &str) -> Option<String> {
    let h = header.trim();
    let host = if h.starts_with('[') {
        &h[..=h.find(']')?]
    } else {
        match h.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|c| c.is_ascii_digit()) => name,
            _ => h,
        }
    };
    let ok = !host.is_empty()
        && host
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b".-_:[]".contains(&c));
    ok.then(|| host.to_string())
}

/// `:PORT` from a `Host` header, or nothing.
pub(super) fn portal_port(header: Option<&str>) -> String {
    header
        .and_then(|h| h.trim().rsplit_once(':'))
        .filter(|(h, p)| {
            !h.ends_with(':') && !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit())
        })
        .map_or_else(String::new, |(_, p)| format!(":{p}"))
}

fn is_loopback_name(host: &str) -> bool {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    if h == "localhost" || h.ends_with(".localhost") {
        return true;
    }
    h.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified())
}

fn url_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// This machine's first non-loopback IPv4 address on an interface that is up (the old
/// portal's `hostname -I`).
pub(super) fn local_ipv4() -> Option<Ipv4Addr> {
    use nix::net::if_::InterfaceFlags;
    nix::ifaddrs::getifaddrs()
        .ok()?
        .filter(|a| {
            a.flags.contains(InterfaceFlags::IFF_UP)
                && !a.flags.contains(InterfaceFlags::IFF_LOOPBACK)
        })
        .filter_map(|a| a.address?.as_sockaddr_in().map(|s| s.ip()))
        .find(|ip| !ip.is_loopback() && !ip.is_unspecified())
}

pub(super) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
