//! The HTTP client of a portal's API: where the portal is ([`Portal::parse`],
//! [`Portal::given`]), its device list (`GET /api/discover`), a reset, and a lease taken and
//! given back. One request per connection ([`super::http`]).

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
        Ok(Portal { authority })
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

    /// The portal that serves `device`, when it is known.
    pub(crate) fn serving(device: &Device) -> Option<Portal> {
        device.portal.clone().map(|authority| Portal { authority })
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
        let r = http::request(&self.authority, "POST", &path, Some(body.as_bytes()))
            .map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        if r.status == 200 && v.get("success").and_then(Value::as_bool) != Some(false) {
            Ok(text("message").unwrap_or_default())
        } else {
            Err(text("error")
                .or_else(|| text("message"))
                .unwrap_or_else(|| format!("HTTP {}", r.status)))
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

    /// One request; a portal that does not answer is unreachable.
    fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<http::Response, ClientError> {
        http::request(&self.authority, method, path, body).map_err(|e| {
            ClientError::Unreachable(format!(
                "cannot reach the portal at http://{}: {e}",
                self.authority
            ))
        })
    }

    /// A `GET` that must answer JSON (else this is no portal), with status 200.
    fn get_json(&self, path: &str) -> Result<Value, ClientError> {
        let r = self.send("GET", path, None)?;
        let v: Value = serde_json::from_slice(&r.body).map_err(|e| {
            ClientError::Unreachable(format!(
                "http://{}{path} did not answer JSON (HTTP {}): {e}",
                self.authority, r.status
            ))
        })?;
        if r.status != 200 {
            let msg = v.get("error").and_then(Value::as_str).unwrap_or("");
            return Err(ClientError::Runtime(format!(
                "http://{}{path}: HTTP {} {msg}",
                self.authority, r.status
            )));
        }
        Ok(v)
    }

    /// A request that changes something; a refusal says which rule refused it (the portal's
    /// `error`).
    fn call(&self, method: &str, path: &str, body: Option<&[u8]>) -> Result<Value, ClientError> {
        let r = self.send(method, path, body)?;
        let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        if r.status == 200 {
            return Ok(v);
        }
        let why = v["error"].as_str().unwrap_or("").to_string();
        Err(ClientError::Runtime(format!(
            "{method} http://{}{path}: HTTP {} {why}",
            self.authority, r.status
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
    fn the_serving_portal() {
        let mut d = Device::default();
        assert_eq!(Portal::serving(&d), None);
        d.portal = Some("pi:8080".into());
        assert_eq!(Portal::serving(&d).unwrap().authority, "pi:8080");
    }
}
