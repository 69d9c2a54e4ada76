//! The checks every request passes before it is routed (see [`Portal::handle`]): the
//! address, the media type of a POST, the token. A check on the request as a whole — its
//! `Host`, its `Origin` — belongs here, in front of every route.

use std::net::{IpAddr, Ipv4Addr};
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
