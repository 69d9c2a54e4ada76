//! Where a command's board is. `url` and `lease` take a HOST whose portal lists its boards, or
//! else every serialhub on the network ([`devices_of`]); `monitor` and `pty` take a TARGET,
//! which may also be a fixed `rfc2217://HOST:PORT` URL ([`Target`], resolved again on every
//! reconnect).

use super::device::{Device, Selector};
use super::error::ClientError;
use super::lan;
use super::portal::Portal;

/// The devices of the given host (or `$SERIALHUB_HOST`, `$PI_HOST`), else of every serialhub
/// on the network; and where they came from, for messages.
pub(crate) fn devices_of(host: Option<&str>) -> Result<(Vec<Device>, String), ClientError> {
    match Portal::given(host)? {
        Some(p) => {
            let (_, devices) = p.discover()?;
            let devices = devices
                .into_iter()
                .map(|d| Device {
                    portal: Some(p.authority.clone()),
                    ..d
                })
                .collect();
            Ok((devices, p.authority))
        }
        None => Ok((lan::devices()?, "the network (mDNS)".into())),
    }
}

/// Where `monitor` and `pty` connect: a fixed URL, or a device a portal picks, or one found
/// on the network (re-resolved on every reconnect, and the way to reset the board).
#[derive(Clone, Debug)]
pub(crate) enum Target {
    Url(String),
    Portal(Portal, Selector),
    Lan(Selector),
}

/// A resolved target: the RFC 2217 server and, if known, the portal and the device's key.
pub(crate) struct Resolved {
    pub(crate) authority: String,
    pub(crate) url: String,
    pub(crate) portal: Option<(Portal, String)>,
}

impl Target {
    /// From TARGET (URL or HOST) and selectors; without TARGET, `$ESP32_PORT`, then the
    /// default host.
    pub(crate) fn from_args(target: Option<&str>, sel: Selector) -> Result<Target, ClientError> {
        let env_url = std::env::var("ESP32_PORT")
            .ok()
            .filter(|v| !v.trim().is_empty());
        match target {
            Some(t) if t.starts_with("rfc2217://") => {
                if !sel.is_empty() {
                    return Err(ClientError::Usage(
                        "a selector needs a HOST, not an rfc2217:// URL".into(),
                    ));
                }
                url_authority(t)?;
                Ok(Target::Url(t.to_string()))
            }
            Some(t) if t.contains("://") && !t.starts_with("http://") => Err(ClientError::Usage(
                format!("`{t}`: only rfc2217:// URLs (or a HOST) are supported"),
            )),
            Some(h) => Ok(Target::Portal(Portal::parse(h)?, sel.or_env()?)),
            None if sel.is_empty() && env_url.is_some() => {
                let u = env_url.unwrap_or_default();
                url_authority(&u)?;
                Ok(Target::Url(u))
            }
            None => Ok(match Portal::given(None)? {
                Some(p) => Target::Portal(p, sel.or_env()?),
                None => Target::Lan(sel.or_env()?),
            }),
        }
    }

    pub(crate) fn resolve(&self) -> Result<Resolved, ClientError> {
        match self {
            Target::Url(u) => Ok(Resolved {
                authority: url_authority(u)?,
                url: u.clone(),
                portal: None,
            }),
            Target::Portal(p, sel) => {
                let (_, devices) = p.discover()?;
                let d = sel.pick(&devices, &p.authority)?;
                Ok(Resolved {
                    authority: url_authority(&d.url)?,
                    url: d.url.clone(),
                    portal: Some((p.clone(), d.api_key())),
                })
            }
            Target::Lan(sel) => {
                let devices = lan::devices()?;
                let d = sel.pick(&devices, "the network (mDNS)")?;
                Ok(Resolved {
                    authority: url_authority(&d.url)?,
                    url: d.url.clone(),
                    portal: Portal::serving(d, None).map(|p| (p, d.api_key())),
                })
            }
        }
    }
}

/// `rfc2217://host:port[/][?options]` to `host:port`.
pub(crate) fn url_authority(url: &str) -> Result<String, ClientError> {
    let rest = url
        .strip_prefix("rfc2217://")
        .ok_or_else(|| ClientError::Usage(format!("`{url}` is not an rfc2217:// URL")))?;
    let auth = rest.split(['/', '?']).next().unwrap_or("");
    match auth.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => Ok(auth.to_string()),
        _ => Err(ClientError::Usage(format!(
            "`{url}`: expected rfc2217://HOST:PORT"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc2217_urls() {
        assert_eq!(
            url_authority("rfc2217://pi:4001?ign_set_control").unwrap(),
            "pi:4001"
        );
        assert_eq!(
            url_authority("rfc2217://[::1]:4001/").unwrap(),
            "[::1]:4001"
        );
        assert!(url_authority("rfc2217://pi").is_err());
        assert!(url_authority("socket://pi:4001").is_err());
    }

    #[test]
    fn targets() {
        let t = Target::from_args(Some("rfc2217://pi:4001"), Selector::default()).unwrap();
        assert!(matches!(t, Target::Url(u) if u == "rfc2217://pi:4001"));
        let key = Selector {
            key: Some("serial:1".into()),
            ..Selector::default()
        };
        let e = Target::from_args(Some("rfc2217://pi:4001"), key.clone()).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(Target::from_args(Some("socket://pi:4001"), Selector::default()).is_err());
        let t = Target::from_args(Some("pi"), key.clone()).unwrap();
        assert!(matches!(t, Target::Portal(p, s) if p.authority == "pi:8080" && s == key));
    }
}
