//! The HTTP client of a portal's API: where the portal is ([`Portal::parse`],
//! [`Portal::given`]), its device list (`GET /api/discover`), a reset, and a lease taken and
//! given back. One request per connection ([`super::http`]).
//!
//! The API token (`$SERIALHUB_TOKEN`, `--token-file`) goes only to a portal the user named
//! ([`Trust::Named`]: a HOST argument, `$SERIALHUB_HOST`, `$PI_HOST`), and only on requests
//! that need it: changes (POST, DELETE), and a read a private portal refused with 401. A
//! portal found by mDNS is whoever answered on the LAN: it never gets the token.

use serde_json::{json, Value};

use super::device::Device;
use super::error::ClientError;
use super::http;

/// The portal's default port (the old portal's too).
const PORTAL_PORT: u16 = 8080;

/// A portal's address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Portal {
    /// `host:port`, as connected to and sent in `Host`.
    pub(crate) authority: String,
    /// Whether it may be sent the token.
    pub(crate) trust: Trust,
}

/// Where a portal's address came from, which decides whether it is sent the API token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Trust {
    /// The user named it (HOST, `$SERIALHUB_HOST`, `$PI_HOST`): it gets the token where a
    /// request needs one.
    Named,
    /// Found on the network (mDNS), so anyone's: never sent the token.
    Browsed,
}

/// Whether a request carries the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Auth {
    Without,
    WithToken,
}

/// What the portal granted.
#[derive(Debug)]
pub(crate) struct Granted {
    pub(crate) id: String,
    pub(crate) seconds: u64,
    pub(crate) url: String,
    pub(crate) socket_url: String,
}

impl Portal {
    /// `HOST`, `HOST:PORT`, `[v6]:PORT` or `http://HOST[:PORT][/]`.
    pub(crate) fn parse(s: &str) -> Result<Portal, ClientError> {
        let s = s.trim();
        let s = s.strip_prefix("http://").unwrap_or(s);
        let s = s.trim_end_matches('/');
        if s.is_empty() || s.contains('/') {
            return Err(ClientError::Usage(format!("`{s}` is not a HOST[:PORT]")));
        }
        let has_port = if let Some(rest) = s.strip_prefix('[') {
            rest.contains("]:")
        } else {
            s.matches(':').count() == 1
        };
        let authority = if has_port {
            let (_, port) = s.rsplit_once(':').unwrap_or_default();
            port.parse::<u16>()
                .map_err(|_| ClientError::Usage(format!("`{s}`: bad port `{port}`")))?;
            s.to_string()
        } else if s.contains(':') && !s.starts_with('[') {
            format!("[{s}]:{PORTAL_PORT}") // a bare IPv6 address
        } else {
            format!("{s}:{PORTAL_PORT}")
        };
        Ok(Portal {
            authority,
            trust: Trust::Named,
        })
    }

    /// A portal found on the network (mDNS) at `authority`.
    pub(crate) fn browsed(authority: String) -> Portal {
        Portal {
            authority,
            trust: Trust::Browsed,
        }
    }

    /// From the command line, else `$SERIALHUB_HOST`, else `$PI_HOST`; `None` when none is
    /// given (then the network is browsed by mDNS instead).
    pub(crate) fn given(arg: Option<&str>) -> Result<Option<Portal>, ClientError> {
        if let Some(a) = arg {
            return Portal::parse(a).map(Some);
        }
        for var in ["SERIALHUB_HOST", "PI_HOST"] {
            if let Some(v) = std::env::var(var).ok().filter(|v| !v.trim().is_empty()) {
                return Portal::parse(&v).map(Some);
            }
        }
        Ok(None)
    }

    /// The portal that serves `device`, when it is known: the one named, if `device` came
    /// from it, else one found on the network (no token for it).
    pub(crate) fn serving(device: &Device, named: Option<&Portal>) -> Option<Portal> {
        let authority = device.portal.clone()?;
        Some(match named {
            Some(p) if p.authority == authority => p.clone(),
            _ => Portal::browsed(authority),
        })
    }

    /// The served devices and the whole answer.
    pub(crate) fn discover(&self) -> Result<(Value, Vec<Device>), ClientError> {
        let v = self.get_json("/api/discover")?;
        let devices = v
            .get("devices")
            .and_then(Value::as_array)
            .ok_or_else(|| {
                ClientError::Unreachable(format!(
                    "http://{}/api/discover has no `devices` list: is this a serialhub portal?",
                    self.authority
                ))
            })?
            .iter()
            .map(Device::from_json)
            .collect();
        Ok((v, devices))
    }

    /// `POST /api/devices/{key}/reset` with `{"to": to}`; Ok(message) on success.
    pub(crate) fn reset(&self, key: &str, to: &str) -> Result<String, String> {
        let path = format!("/api/devices/{}/reset", http::encode_segment(key));
        let body = json!({ "to": to }).to_string();
        let r = (self.send("POST", &path, Some(body.as_bytes()), Auth::WithToken))
            .map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        if r.status == 200 && v.get("success").and_then(Value::as_bool) != Some(false) {
            Ok(text("message").unwrap_or_default())
        } else {
            Err(text("error")
                .or_else(|| text("message"))
                .unwrap_or_else(|| format!("HTTP {}", r.status))
                + self.no_token_note(r.status))
        }
    }

    /// `POST /api/devices/{key}/lease`.
    pub(crate) fn lease(&self, key: &str, seconds: u64) -> Result<Granted, ClientError> {
        let path = format!("/api/devices/{}/lease", http::encode_segment(key));
        let body = json!({ "seconds": seconds }).to_string();
        let v = self.call("POST", &path, Some(body.as_bytes()))?;
        let s = |v: &Value| v.as_str().unwrap_or("").to_string();
        Ok(Granted {
            id: s(&v["lease"]["id"]),
            seconds: v["lease"]["seconds"].as_u64().unwrap_or(seconds),
            url: s(&v["url"]),
            socket_url: s(&v["socket_url"]),
        })
    }

    /// `DELETE /api/devices/{key}/lease/{id}`.
    pub(crate) fn release(&self, key: &str, id: &str) -> Result<(), ClientError> {
        let path = format!(
            "/api/devices/{}/lease/{}",
            http::encode_segment(key),
            http::encode_segment(id)
        );
        self.call("DELETE", &path, None).map(|_| ())
    }

    /// The token this request may carry: only to a named portal, only when it is asked for.
    fn token(&self, auth: Auth) -> Option<String> {
        match (self.trust, auth) {
            (Trust::Named, Auth::WithToken) => http::token(),
            _ => None,
        }
    }

    /// What a refusal adds when the token was held back from a portal found on the network.
    fn no_token_note(&self, status: u16) -> &'static str {
        match (status, self.trust, http::token()) {
            (401, Trust::Browsed, Some(_)) => {
                " (this portal was found on the network, so it was not sent $SERIALHUB_TOKEN: name it as HOST or in $SERIALHUB_HOST to send it)"
            }
            _ => "",
        }
    }

    /// One request; a portal that does not answer is unreachable.
    fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        auth: Auth,
    ) -> Result<http::Response, ClientError> {
        let token = self.token(auth);
        http::request(&self.authority, method, path, body, token.as_deref()).map_err(|e| {
            ClientError::Unreachable(format!(
                "cannot reach the portal at http://{}: {e}",
                self.authority
            ))
        })
    }

    /// A `GET` that must answer JSON (else this is no portal), with status 200. Sent without
    /// the token; again with it only when a named portal answers 401 (it is private).
    fn get_json(&self, path: &str) -> Result<Value, ClientError> {
        let mut r = self.send("GET", path, None, Auth::Without)?;
        if r.status == 401 && self.token(Auth::WithToken).is_some() {
            r = self.send("GET", path, None, Auth::WithToken)?;
        }
        let v: Value = serde_json::from_slice(&r.body).map_err(|e| {
            ClientError::Unreachable(format!(
                "http://{}{path} did not answer JSON (HTTP {}): {e}",
                self.authority, r.status
            ))
        })?;
        if r.status != 200 {
            let msg = v.get("error").and_then(Value::as_str).unwrap_or("");
            return Err(ClientError::Runtime(format!(
                "http://{}{path}: HTTP {} {msg}{}",
                self.authority,
                r.status,
                self.no_token_note(r.status)
            )));
        }
        Ok(v)
    }

    /// A request that changes something; a refusal says which rule refused it (the portal's
    /// `error`).
    fn call(&self, method: &str, path: &str, body: Option<&[u8]>) -> Result<Value, ClientError> {
        let r = self.send(method, path, body, Auth::WithToken)?;
        let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        if r.status == 200 {
            return Ok(v);
        }
        let why = v["error"].as_str().unwrap_or("").to_string();
        Err(ClientError::Runtime(format!(
            "{method} http://{}{path}: HTTP {} {why}{}",
            self.authority,
            r.status,
            self.no_token_note(r.status)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        let a = |s: &str| Portal::parse(s).map(|p| p.authority);
        assert_eq!(a("pi").unwrap(), "pi:8080");
        assert_eq!(a("pi:81").unwrap(), "pi:81");
        assert_eq!(a("http://pi:81/").unwrap(), "pi:81");
        assert_eq!(a("::1").unwrap(), "[::1]:8080");
        assert_eq!(a("[::1]:9").unwrap(), "[::1]:9");
        assert!(a("pi:x").is_err());
    }

    #[test]
    fn the_serving_portal_is_trusted_only_when_named() {
        let mut d = Device::default();
        assert_eq!(Portal::serving(&d, None), None);
        d.portal = Some("pi:8080".into());
        let p = Portal::serving(&d, None).unwrap();
        assert_eq!((p.authority.as_str(), p.trust), ("pi:8080", Trust::Browsed));
        let named = Portal::parse("pi").unwrap();
        assert_eq!(named.trust, Trust::Named);
        assert_eq!(
            Portal::serving(&d, Some(&named)).unwrap().trust,
            Trust::Named
        );
        let other = Portal::parse("lab").unwrap();
        assert_eq!(
            Portal::serving(&d, Some(&other)).unwrap().trust,
            Trust::Browsed
        );
    }

    #[test]
    fn the_token_goes_to_a_named_portal_on_requests_that_need_it() {
        // Without the variable, nobody gets one; which requests would is decided here.
        let named = Portal::parse("pi").unwrap();
        let browsed = Portal::browsed("pi:8080".into());
        assert_eq!(browsed.token(Auth::WithToken), None);
        assert_eq!(browsed.token(Auth::Without), None);
        assert_eq!(named.token(Auth::Without), None);
        assert_eq!(named.token(Auth::WithToken), http::token());
    }
}
