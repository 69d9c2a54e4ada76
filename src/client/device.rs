//! The boards as a portal (or the network) describes them, and the choice of one: a
//! [`Device`] parsed from `/api/discover` — serialhub's shape, or the old Python portal's
//! smaller one, completed — and a [`Selector`] (`--serial`, `--name`, `--key`, `--index`, or
//! `$ESP32_SERIAL`, `$ESP32_INDEX`) that picks exactly one of them or says why it cannot.

use lexopt::ValueExt;
use serde_json::Value;

use super::error::ClientError;

/// One device as the portal describes it (old portal: only url, port, product, serial, tty).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Device {
    pub(crate) url: String,
    pub(crate) url_ign_set_control: String,
    /// `socket://` (raw) URL, when the port serves raw clients (empty from the old portal).
    pub(crate) socket_url: String,
    pub(crate) port: u64,
    pub(crate) product: String,
    pub(crate) serial: String,
    pub(crate) tty: String,
    pub(crate) name: String,
    pub(crate) key: String,
    pub(crate) state: String,
    /// Where it was found, when the network was browsed (`HOST` in the listing).
    pub(crate) host: String,
    /// The authority (`host:port`) of the portal that serves it, when known (`Portal::serving`
    /// makes the portal of it: the model does not depend on the HTTP client).
    pub(crate) portal: Option<String>,
}

impl Device {
    pub(crate) fn from_json(v: &Value) -> Device {
        let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let url = s("url");
        let mut d = Device {
            url_ign_set_control: match s("url_ign_set_control") {
                u if u.is_empty() && !url.is_empty() => format!("{url}?ign_set_control"),
                u => u,
            },
            socket_url: s("socket_url"),
            url,
            port: v.get("port").and_then(Value::as_u64).unwrap_or(0),
            product: s("product"),
            serial: s("serial"),
            tty: s("tty"),
            name: s("name"),
            key: s("key"),
            state: s("state"),
            host: String::new(),
            portal: None,
        };
        if d.name.is_empty() {
            d.name = d.tty.rsplit('/').next().unwrap_or("").to_string();
        }
        if d.state.is_empty() {
            d.state = match v.get("running").and_then(Value::as_bool) {
                Some(false) => "stopped".into(),
                _ => "running".into(),
            };
        }
        d
    }

    /// How the portal's API names it (its key; the old portal's: its node).
    pub(crate) fn api_key(&self) -> String {
        if self.key.is_empty() {
            self.tty.clone()
        } else {
            self.key.clone()
        }
    }

    /// One line naming the device, for messages.
    pub(crate) fn describe(&self) -> String {
        let mut s = self.name.clone();
        if !self.product.is_empty() && self.product != self.name {
            s.push_str(&format!(" ({})", self.product));
        }
        if !self.serial.is_empty() {
            s.push_str(&format!(" serial {}", self.serial));
        }
        s.push_str(&format!(" {}", self.url));
        s
    }
}

/// Which device: at most one selector.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Selector {
    pub(crate) serial: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) key: Option<String>,
    pub(crate) index: Option<usize>,
}

impl Selector {
    /// The field a selector flag sets (`--serial`/`-s`, `--name`, `--key`, `--index`/`-i`),
    /// if `arg` is one: the commands that pick a device share these flags.
    pub(crate) fn flag(arg: &lexopt::Arg) -> Option<&'static str> {
        use lexopt::Arg::{Long, Short};
        match arg {
            Long("serial") | Short('s') => Some("serial"),
            Long("name") => Some("name"),
            Long("key") => Some("key"),
            Long("index") | Short('i') => Some("index"),
            _ => None,
        }
    }

    /// Take the value of selector flag `flag` (`serial`, `name`, `key`, `index`).
    pub(crate) fn set(
        &mut self,
        flag: &str,
        parser: &mut lexopt::Parser,
    ) -> Result<(), ClientError> {
        let v = parser.value()?.string()?;
        match flag {
            "serial" => self.serial = Some(v),
            "name" => self.name = Some(v),
            "key" => self.key = Some(v),
            _ => {
                self.index =
                    Some(v.trim().parse().map_err(|_| {
                        ClientError::Usage(format!("--index: `{v}` is not a number"))
                    })?);
            }
        }
        let given = [
            self.serial.is_some(),
            self.name.is_some(),
            self.key.is_some(),
            self.index.is_some(),
        ];
        if given.iter().filter(|&&g| g).count() > 1 {
            return Err(ClientError::Usage(
                "give at most one of --serial, --name, --key, --index".into(),
            ));
        }
        Ok(())
    }

    pub(crate) fn is_empty(&self) -> bool {
        *self == Selector::default()
    }

    /// With no selector given: `$ESP32_SERIAL`, then `$ESP32_INDEX` (the old helpers').
    pub(crate) fn or_env(self) -> Result<Selector, ClientError> {
        if !self.is_empty() {
            return Ok(self);
        }
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        if let Some(s) = var("ESP32_SERIAL") {
            return Ok(Selector {
                serial: Some(s.trim().to_string()),
                ..Selector::default()
            });
        }
        if let Some(i) = var("ESP32_INDEX") {
            let index = i
                .trim()
                .parse()
                .map_err(|_| ClientError::Usage(format!("ESP32_INDEX=`{i}` is not a number")))?;
            return Ok(Selector {
                index: Some(index),
                ..Selector::default()
            });
        }
        Ok(self)
    }

    fn what(&self) -> String {
        match self {
            Selector {
                serial: Some(s), ..
            } => format!("with serial {s}"),
            Selector { name: Some(n), .. } => format!("named {n}"),
            Selector { key: Some(k), .. } => format!("with key {k}"),
            Selector { index: Some(i), .. } => format!("at index {i}"),
            _ => "at all".into(),
        }
    }

    /// The one device this selects.
    pub(crate) fn pick<'a>(
        &self,
        devices: &'a [Device],
        host: &str,
    ) -> Result<&'a Device, ClientError> {
        let matches: Vec<&Device> = match self {
            Selector {
                serial: Some(s), ..
            } => {
                let exact: Vec<&Device> = devices.iter().filter(|d| &d.serial == s).collect();
                if exact.is_empty() {
                    devices
                        .iter()
                        .filter(|d| !d.serial.is_empty() && d.serial.eq_ignore_ascii_case(s))
                        .collect()
                } else {
                    exact
                }
            }
            Selector { name: Some(n), .. } => devices
                .iter()
                .filter(|d| &d.name == n || &d.tty == n)
                .collect(),
            Selector { key: Some(k), .. } => devices.iter().filter(|d| &d.key == k).collect(),
            Selector { index: Some(i), .. } => devices.get(*i).into_iter().collect(),
            _ => devices.iter().collect(),
        };
        let list = |ds: &[&Device]| {
            ds.iter()
                .enumerate()
                .map(|(i, d)| format!("\n  [{i}] {}", d.describe()))
                .collect::<String>()
        };
        match matches.as_slice() {
            [one] => Ok(one),
            [] if devices.is_empty() => {
                Err(ClientError::Select(format!("{host} serves no devices")))
            }
            [] => {
                let all: Vec<&Device> = devices.iter().collect();
                Err(ClientError::Select(format!(
                    "no device {} on {host}; it serves:{}",
                    self.what(),
                    list(&all)
                )))
            }
            several => {
                let hint = if self.is_empty() {
                    " (pick one with --serial, --name, --key or --index)"
                } else {
                    ""
                };
                // Show indexes as `discover` numbers them.
                let text: String = several
                    .iter()
                    .map(|d| {
                        let i = devices
                            .iter()
                            .position(|x| std::ptr::eq(x, *d))
                            .unwrap_or(0);
                        format!("\n  [{i}] {}", d.describe())
                    })
                    .collect();
                Err(ClientError::Select(format!(
                    "{} devices {} on {host}{hint}:{text}",
                    several.len(),
                    if self.is_empty() {
                        "are served"
                    } else {
                        "match"
                    },
                )))
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// Three devices of one host: serialhub's shape, the old portal's, and a second `a`.
    pub(crate) fn devs() -> Vec<Device> {
        let v = json!({"devices": [
            {"url": "rfc2217://h:4001", "port": 4001, "product": "CP2102", "serial": "0001",
             "tty": "/dev/ttyUSB0", "name": "a", "key": "serial:0001", "state": "idle"},
            {"url": "rfc2217://h:4002", "port": 4002, "product": "CP2102", "serial": "0002",
             "tty": "/dev/ttyUSB1"},
            {"url": "rfc2217://h:4003", "port": 4003, "product": "X", "serial": "",
             "tty": "/dev/ttyACM0", "name": "a"},
        ]});
        v["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(Device::from_json)
            .collect()
    }

    fn sel(f: impl FnOnce(&mut Selector)) -> Selector {
        let mut s = Selector::default();
        f(&mut s);
        s
    }

    #[test]
    fn old_portal_shape_is_completed() {
        let d = &devs()[1];
        assert_eq!(d.name, "ttyUSB1");
        assert_eq!(d.state, "running");
        assert_eq!(d.url_ign_set_control, "rfc2217://h:4002?ign_set_control");
    }

    #[test]
    fn selection_rules() {
        let ds = devs();
        let port = |s: Selector| s.pick(&ds, "h").map(|d| d.port);
        assert_eq!(port(sel(|s| s.serial = Some("0002".into()))).unwrap(), 4002);
        assert_eq!(
            port(sel(|s| s.key = Some("serial:0001".into()))).unwrap(),
            4001
        );
        assert_eq!(
            port(sel(|s| s.name = Some("ttyUSB1".into()))).unwrap(),
            4002
        );
        assert_eq!(
            port(sel(|s| s.name = Some("/dev/ttyACM0".into()))).unwrap(),
            4003
        );
        assert_eq!(port(sel(|s| s.index = Some(2))).unwrap(), 4003);
        let e = port(sel(|s| s.name = Some("a".into()))).unwrap_err();
        assert!(e.to_string().contains("2 devices match"), "{e}");
        assert_eq!(e.exit_code(), 1);
        let e = port(sel(|s| s.serial = Some("9".into()))).unwrap_err();
        assert!(e.to_string().contains("[2] a (X) rfc2217://h:4003"), "{e}");
        let e = port(Selector::default()).unwrap_err();
        assert!(e.to_string().contains("3 devices are served"), "{e}");
        assert_eq!(port(sel(|s| s.index = Some(0))).unwrap(), 4001);
        assert!(port(sel(|s| s.index = Some(3))).is_err());
    }
}
