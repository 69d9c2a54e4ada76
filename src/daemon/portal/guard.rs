//! The checks every request passes before it is routed (see [`Portal::handle`]): the
//! address, the `Host`, the media type of a POST, the token. A check on the request as a
//! whole belongs here, in front of every route.
//!
//! The `Host` rule is against DNS rebinding: a page on `evil.example` whose name the
//! attacker re-points at this machine is, to the browser, same-origin with it, and could send
//! JSON POSTs and read what the portal answers — but its requests still say
//! `Host: evil.example`. So only the names this machine is known by pass ([`HostNames`]);
//! others get 421 Misdirected Request.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use log::warn;
use serde_json::json;

use super::Portal;
use crate::daemon::access::Refusal;
use crate::daemon::http::{HttpRequest, HttpResponse};
use crate::daemon::peerlog::{suppressed_note, Verdict};

impl Portal {
    /// The checks every request passes before it is routed: the address, the media type of a
    /// POST (browsers send cross-site forms as form data or text, never as JSON without
    /// asking first), and the token for what needs one. `None`: it may go on.
    pub(super) fn guard(&self, req: &HttpRequest) -> Option<HttpResponse> {
        let post = req.method == "POST";
        let mutating = !matches!(req.method, "GET" | "HEAD");
        if let Some(ip) = req.remote.map(|r| r.ip()) {
            if !self.access.allow.permits(ip) {
                return Some(self.refuse_access(Refusal::NotAllowed, ip));
            }
        }
        if !self.names.permits(req.host, &self.access.hosts) {
            return Some(self.refuse_host(req));
        }
        if post {
            let json = req.content_type.is_some_and(|t| {
                t.split(';')
                    .next()
                    .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
            });
            if !json {
                return Some(HttpResponse::json(
                    415,
                    &json!({
                        "error": "POST bodies must be JSON: send Content-Type: application/json (cross-site forms are refused)",
                        "rule": "content-type",
                    }),
                ));
            }
        }
        if let Some(token) = &self.access.token {
            if (mutating || self.access.private) && !token.accepts(req.authorization) {
                let ip = req
                    .remote
                    .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |r| r.ip());
                return Some(self.refuse_access(Refusal::Token, ip));
            }
        }
        None
    }

    /// 421 for a `Host` this machine is not known by, with what to do if it is.
    fn refuse_host(&self, req: &HttpRequest) -> HttpResponse {
        // Only a header made of host characters is echoed, in the log and the answer.
        let name = req
            .host
            .and_then(super::host::host_of)
            .filter(|h| h.len() <= 64)
            .unwrap_or_else(|| "?".into());
        let ip = req
            .remote
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |r| r.ip());
        if let Verdict::Log { suppressed } = self.refusals.borrow_mut().check(ip, Instant::now()) {
            warn!(
                "refused {ip} on port {}: Host {name} is not one of this machine's names (access.hosts){}",
                self.port,
                suppressed_note(ip, suppressed)
            );
        }
        HttpResponse::json(
            421,
            &json!({
                "error": format!(
                    "this portal does not answer to the name {name} (a guard against DNS rebinding): \
                     use its address, its host name or HOSTNAME.local, or add {name} to `hosts` \
                     in [access] of serialhub.toml if it is a name of this machine"
                ),
                "rule": "host",
            }),
        )
    }

    fn refuse_access(&self, why: Refusal, ip: IpAddr) -> HttpResponse {
        let port = self.port;
        let what = match why {
            Refusal::NotAllowed => "not in allow",
            Refusal::Token => "no valid token",
        };
        if let Verdict::Log { suppressed } = self.refusals.borrow_mut().check(ip, Instant::now()) {
            warn!(
                "refused {ip} on port {port}: {what}{}",
                suppressed_note(ip, suppressed)
            );
        }
        let (status, error) = match why {
            Refusal::NotAllowed => (403, format!("{ip} may not use this portal (access.allow)")),
            Refusal::Token => (
                401,
                "an API token is needed: send Authorization: Bearer TOKEN (access.token_file)"
                    .to_string(),
            ),
        };
        HttpResponse::json(status, &json!({ "error": error, "rule": why.rule() }))
    }
}

/// The names this machine answers to in a `Host` header, besides IP literals and
/// `localhost` (and `*.localhost`, which browsers keep on loopback): its host name and its
/// mDNS host label, each also with `.local`. Read when the portal starts; the host name is
/// read again before a name is refused (it may have been changed since).
#[derive(Clone, Debug, Default)]
pub(crate) struct HostNames {
    /// Lower case: the host name (and its first label, if it has dots), the mDNS label.
    own: Vec<String>,
    /// The mDNS label: a clash renames it `LABEL-N` (see `protocol::mdns::machine`).
    label: String,
    /// These are this machine's: read the host name again before refusing one.
    live: bool,
}

impl HostNames {
    /// This machine's names: `host` as the kernel has it, `label` as mDNS announces it.
    pub(crate) fn new(host: &str, label: &str) -> HostNames {
        let mut own = Vec::new();
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if let Some((first, _)) = host.split_once('.') {
            own.push(first.to_owned());
        }
        own.push(host);
        let label = label.trim_end_matches('.').to_ascii_lowercase();
        own.push(label.clone());
        own.retain(|n| !n.is_empty());
        own.dedup();
        HostNames {
            own,
            label,
            live: false,
        }
    }

    /// The names of the machine it runs on.
    pub(crate) fn of_this_machine() -> HostNames {
        let (host, label) = crate::daemon::mdns::host_names();
        HostNames {
            live: true,
            ..HostNames::new(&host, &label)
        }
    }

    /// May a request with this `Host` header be answered? `configured`: `[access] hosts`.
    /// No header (HTTP/1.0) passes: a browser always sends one.
    pub(crate) fn permits(&self, header: Option<&str>, configured: &[String]) -> bool {
        let Some(header) = header else {
            return true;
        };
        match parse_host(header) {
            None => false,
            Some(HostPart::Ip) => true,
            Some(HostPart::Name(name)) => {
                self.is_own(&name)
                    || configured.contains(&name)
                    || (self.live && HostNames::new(&super::host::hostname(), "").is_own(&name))
            }
        }
    }

    fn is_own(&self, name: &str) -> bool {
        if name == "localhost" || name.ends_with(".localhost") {
            return true;
        }
        let bare = name.strip_suffix(".local").unwrap_or(name);
        if self.own.iter().any(|n| n == bare) {
            return true;
        }
        // `LABEL-N`: the label after a clash on the network.
        !self.label.is_empty()
            && bare
                .strip_prefix(self.label.as_str())
                .and_then(|r| r.strip_prefix('-'))
                .is_some_and(|n| {
                    (1..=3).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_digit())
                })
    }
}

enum HostPart {
    /// An IPv4 literal or a bracketed IPv6 one.
    Ip,
    /// A name, lower case, without a trailing dot.
    Name(String),
}

/// The host of a `Host` header (`name`, `name:port`, `1.2.3.4:80`, `[::1]:80`); `None` for
/// anything else (a bare IPv6 address, an empty or non-numeric port, an empty name).
fn parse_host(header: &str) -> Option<HostPart> {
    let h = header.trim();
    let port_ok = |p: &str| {
        p.is_empty()
            || p.strip_prefix(':').is_some_and(|d| {
                (1..=5).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit())
            })
    };
    if let Some(rest) = h.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        // A zone (`%25eth0`) names an interface, not a host.
        let addr = inside.split('%').next().unwrap_or(inside);
        return (port_ok(after) && addr.parse::<Ipv6Addr>().is_ok()).then_some(HostPart::Ip);
    }
    let (name, port) = match h.find(':') {
        Some(i) => h.split_at(i),
        None => (h, ""),
    };
    if !port_ok(port) {
        return None;
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return None;
    }
    if name.parse::<Ipv4Addr>().is_ok() {
        return Some(HostPart::Ip);
    }
    Some(HostPart::Name(name.to_ascii_lowercase()))
}
