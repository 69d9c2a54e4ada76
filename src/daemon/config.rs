//! `serialhub.toml` and `--device` flags. Every key is documented in `conf/serialhub.toml`.
//! A mistake names the file, the line and the key, and the daemon exits 2 rather than
//! serving something the user did not ask for.
//!
//! One piece past 700 lines because every table of the file is parsed and validated here, so
//! each error can name its file, line and key the same way; most of the length is tests.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::daemon::access::{Allow, Token};
pub(crate) use crate::device::DevicePath;
use crate::device::Wiring;
use crate::protocol::reset::Policy;
use crate::protocol::Protocol;

pub(crate) use crate::sim::SimBoard;

/// The first TCP port handed out when a device has none configured (the old portal's too).
pub(crate) const DEFAULT_BASE_PORT: u16 = 4001;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Config {
    /// Address the device ports listen on.
    pub(crate) bind: IpAddr,
    /// Devices without a `port` get the lowest free port from here up.
    pub(crate) base_port: u16,
    /// Fixed devices (`[[device]]` with a `path`).
    #[serde(rename = "device")]
    pub(crate) devices: Vec<DeviceSpec>,
    /// Settings for hotplugged devices (`[[device]]` with `serial` or `usb_path`); split
    /// from `devices` when the file is parsed.
    #[serde(skip)]
    pub(crate) rules: Vec<DeviceSpec>,
    /// Where port assignments persist (JSON, written atomically).
    pub(crate) state_file: PathBuf,
    pub(crate) hotplug: Hotplug,
    /// Where the portal (HTTP API and web page) listens; `None` (`"off"`) disables it.
    #[serde(deserialize_with = "http_addr")]
    pub(crate) http: Option<std::net::SocketAddr>,
    /// Connections the portal holds at once; when they are all taken, the address holding the
    /// most gives one up (`http::room`).
    #[serde(deserialize_with = "http_connections")]
    pub(crate) http_connections: usize,
    /// Who may connect (`[access]`).
    pub(crate) access: Access,
    /// Advertising devices and the portal on the network (`[mdns]`).
    pub(crate) mdns: MdnsConfig,
}

/// The `[access]` table.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Access {
    /// Addresses and networks that may use device ports and the portal; absent: everyone.
    #[serde(deserialize_with = "allow_list")]
    pub(crate) allow: Allow,
    /// A file holding the portal's API token: every mutating request must carry it.
    pub(crate) token_file: Option<PathBuf>,
    /// Reads need the token too.
    pub(crate) private: bool,
    /// Who may connect to a device with or without a lease.
    pub(crate) lease: crate::daemon::lease::Policy,
    /// What happens to a leaseholder's connections when its lease runs out.
    pub(crate) lease_expiry: crate::daemon::lease::Expiry,
    /// Names the portal may be reached by besides IP literals, `localhost` and this machine's
    /// own (its hostname, `HOSTNAME.local`, the mDNS host label): any other `Host` is
    /// refused with 421 (DNS rebinding). Lower case, without a trailing dot.
    #[serde(deserialize_with = "host_names")]
    pub(crate) hosts: Vec<String>,
    /// The token read from `token_file` when the config was loaded.
    #[serde(skip)]
    pub(crate) token: Option<Token>,
}

fn allow_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Allow, D::Error> {
    let list = Vec::<String>::deserialize(d)?;
    Allow::parse(&list).map_err(serde::de::Error::custom)
}

fn host_names<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let list = Vec::<String>::deserialize(d)?;
    list.iter()
        .map(|h| {
            let name = h.trim_end_matches('.').to_ascii_lowercase();
            let label_ok = |l: &str| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            };
            if name.len() > 253 || !name.split('.').all(label_ok) {
                return Err(serde::de::Error::custom(format!(
                    "`{h}` is not a host name like \"pi.lab.example\" (no port, no scheme, no wildcard)"
                )));
            }
            Ok(name)
        })
        .collect()
}

fn device_allow<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Allow>, D::Error> {
    allow_list(d).map(Some)
}

/// The portal's default connection cap: a few browsers and scripts, with room to spare.
pub(crate) const DEFAULT_HTTP_CONNECTIONS: usize = 32;
/// More would only serve a flood.
const MAX_HTTP_CONNECTIONS: usize = 1024;

fn http_connections<'de, D: serde::Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let n = i64::deserialize(d)?;
    if !(1..=MAX_HTTP_CONNECTIONS as i64).contains(&n) {
        return Err(serde::de::Error::custom(format!(
            "{n} is not a number of connections from 1 to {MAX_HTTP_CONNECTIONS}"
        )));
    }
    Ok(n as usize)
}

/// The portal's default address (the old portal's port).
pub(crate) const DEFAULT_HTTP: &str = "0.0.0.0:8080";

/// `"ADDR:PORT"` or `"off"`, as in the config's `http` key and `--http`.
pub(crate) fn parse_http(s: &str) -> Result<Option<std::net::SocketAddr>, String> {
    if s == "off" {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|_| {
        format!("`{s}` is not an address like \"0.0.0.0:8080\" or \"[::]:8080\", or \"off\"")
    })
}

fn http_addr<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<std::net::SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    parse_http(&s).map_err(serde::de::Error::custom)
}

/// The `[hotplug]` table: which device nodes appear and vanish by themselves.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Hotplug {
    /// Watch `dir` for devices at all.
    pub(crate) enabled: bool,
    /// The device directory to watch (inotify).
    pub(crate) dir: PathBuf,
    /// Where USB identities are read from.
    pub(crate) sysfs: PathBuf,
    /// Node names to serve, `*` matching any run of characters.
    pub(crate) patterns: Vec<String>,
    /// How long to wait after a node appears before opening it, by pattern (0 to 60 s).
    /// `ttyACM*` waits 1 s: cdc_acm asserts DTR/RTS on open, and native-USB chips need a
    /// moment after reset.
    #[serde(deserialize_with = "settle")]
    pub(crate) settle: BTreeMap<String, Duration>,
    /// How long a client outlives its native-USB device while it re-enumerates (a USB-JTAG
    /// chip vanishes and comes back when it resets); 0 to 60 s.
    #[serde(deserialize_with = "seconds::<0, 60, _>")]
    pub(crate) grace: Duration,
    /// A device that appears more than `flap_count` times in `flap_window` (1 s to 1 h) is
    /// left alone for `flap_cooldown` (0 s to 1 day).
    pub(crate) flap_count: usize,
    #[serde(deserialize_with = "seconds::<1, 3600, _>")]
    pub(crate) flap_window: Duration,
    #[serde(deserialize_with = "seconds::<0, 86400, _>")]
    pub(crate) flap_cooldown: Duration,
    /// The old portal's port assignments, imported on first start.
    pub(crate) legacy_devices_conf: PathBuf,
}

impl Default for Hotplug {
    fn default() -> Self {
        Hotplug {
            enabled: true,
            dir: "/dev".into(),
            sysfs: "/sys".into(),
            patterns: vec!["ttyUSB*".into(), "ttyACM*".into()],
            settle: [
                ("ttyUSB*".to_string(), Duration::ZERO),
                ("ttyACM*".to_string(), Duration::from_secs(1)),
            ]
            .into(),
            grace: Duration::from_secs(3),
            flap_count: 6,
            flap_window: Duration::from_secs(30),
            flap_cooldown: Duration::from_secs(60),
            legacy_devices_conf: "/etc/rfc2217/devices.conf".into(),
        }
    }
}

/// `*`-glob match of a node name.
pub(crate) fn glob_match(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, rest)) => {
            let Some(tail) = name.strip_prefix(head) else {
                return false;
            };
            (0..=tail.len()).any(|i| tail.is_char_boundary(i) && glob_match(rest, &tail[i..]))
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: IpAddr::from([0, 0, 0, 0]),
            base_port: DEFAULT_BASE_PORT,
            devices: Vec::new(),
            rules: Vec::new(),
            state_file: "/var/lib/serialhub/ports.json".into(),
            hotplug: Hotplug::default(),
            http: parse_http(DEFAULT_HTTP).expect("the default parses"),
            http_connections: DEFAULT_HTTP_CONNECTIONS,
            access: Access::default(),
            mdns: Default::default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeviceSpec {
    /// The device node (a fixed device). Absent in a rule that matches hotplugged devices by
    /// `serial` or `usb_path`; the matched node is filled in when one appears.
    #[serde(default = "DevicePath::unset")]
    pub(crate) path: DevicePath,
    /// Match a hotplugged device by its USB serial number (instead of `path`).
    #[serde(default)]
    pub(crate) serial: Option<String>,
    /// Match a hotplugged device by the USB socket it is plugged into, as in the registry's
    /// `usb_path` (instead of `path`).
    #[serde(default)]
    pub(crate) usb_path: Option<String>,
    /// `false`: known but not served.
    #[serde(default = "yes")]
    pub(crate) enabled: bool,
    /// TCP port; absent = next free from `base_port`; 0 = let the OS pick (tests).
    pub(crate) port: Option<u16>,
    /// A name for logs and the signature; defaults to the path's file name.
    pub(crate) name: Option<String>,
    /// The baud rate the device starts at and returns to when a client leaves.
    #[serde(default = "default_baud")]
    pub(crate) baud: u32,
    /// What the device's DTR/RTS are wired to (see [`ResetKind`]).
    #[serde(default)]
    pub(crate) reset: ResetKind,
    /// An ESP32 revision 0 needs IO0 held 550 ms instead of 50 ms after EN rises.
    #[serde(default)]
    pub(crate) esp32r0: bool,
    /// GPIO lines wired to EN and IO0, for `reset = "gpio"`.
    pub(crate) gpio: Option<crate::device::gpio::GpioConfig>,
    /// How clients talk to this device's port.
    #[serde(default)]
    pub(crate) protocol: Protocol,
    /// `protocol = "auto"`: seconds a silent client may wait, while device output is
    /// pending, before it is served raw.
    #[serde(
        default = "default_detect_window",
        deserialize_with = "seconds::<0, 10, _>"
    )]
    pub(crate) detect_window: Duration,
    /// Where an ESP raw session that entered the bootloader leaves the chip.
    #[serde(default)]
    pub(crate) after: After,
    /// What a second client gets while one is connected.
    #[serde(default)]
    pub(crate) busy: Busy,
    /// `busy = "share"`: clients connected at once, the one in control included.
    #[serde(default = "default_max_clients", deserialize_with = "max_clients")]
    pub(crate) max_clients: usize,
    /// Who may connect to this device's port, instead of `[access] allow`.
    #[serde(default, deserialize_with = "device_allow")]
    pub(crate) allow: Option<Allow>,
}

/// The `after` key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum After {
    /// Reset the chip into its application (esptool's default `--after hard-reset`).
    #[default]
    Reset,
    /// Leave it in its loader (esptool's `--after no-reset`).
    Stay,
}

/// The `busy` key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Busy {
    /// Up to `max_clients` share the device: one in control, the others observe (see
    /// `daemon::bridge`).
    #[default]
    Share,
    /// The newcomer gets `Port already in use` and is closed.
    Reject,
    /// The newcomer replaces the connected client, which gets `kicked off, new user is coming`.
    Kick,
}

/// The `reset` key: how the client's DTR/RTS reach the board.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum ResetKind {
    /// `usb-jtag` for Espressif's native USB (303a:1001), `esp` for USB-UART bridges and the
    /// simulator, `passthrough` otherwise.
    #[default]
    Auto,
    Esp,
    UsbJtag,
    /// A Pi UART with GPIO lines on EN and IO0 (`[device.gpio]`), driven like `esp`.
    Gpio,
    Passthrough,
    None,
}

fn yes() -> bool {
    true
}

fn default_baud() -> u32 {
    115_200
}

/// A monitor, a flasher, and room for a second look.
pub(crate) const DEFAULT_MAX_CLIENTS: usize = 4;
/// Each client costs a socket, its buffers (about 100 KiB at most) and a slot in the
/// bridge's poll set; more than this on one serial port is a mistake.
pub(crate) const MAX_CLIENTS: usize = 16;

fn default_max_clients() -> usize {
    DEFAULT_MAX_CLIENTS
}

fn max_clients<'de, D: serde::Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let n = i64::deserialize(d)?;
    if !(1..=MAX_CLIENTS as i64).contains(&n) {
        return Err(serde::de::Error::custom(format!(
            "{n} is not a number of clients from 1 to {MAX_CLIENTS}"
        )));
    }
    Ok(n as usize)
}

fn default_detect_window() -> Duration {
    Duration::from_millis(300)
}

/// A duration key, written in seconds, that must lie in `MIN..=MAX` seconds. Checked when
/// the file is read, so a negative, NaN or infinite value is a config error rather than a
/// silent zero, and an absurd one cannot overflow `Instant + Duration` (a panic) later.
struct Seconds<const MIN: u64, const MAX: u64>(Duration);

impl<'de, const MIN: u64, const MAX: u64> Deserialize<'de> for Seconds<MIN, MAX> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = f64::deserialize(d)?;
        // `contains` is false for NaN and the infinities too.
        if !(MIN as f64..=MAX as f64).contains(&s) {
            return Err(serde::de::Error::custom(format!(
                "{s:?} is not a number of seconds from {MIN} to {MAX}"
            )));
        }
        Ok(Seconds(Duration::from_secs_f64(s)))
    }
}

/// `deserialize_with` for a [`Seconds`] key stored as a plain `Duration`.
fn seconds<'de, const MIN: u64, const MAX: u64, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Duration, D::Error> {
    Seconds::<MIN, MAX>::deserialize(d).map(|s| s.0)
}

/// `[hotplug.settle]`: pattern = seconds, each 0 to 60.
fn settle<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, Duration>, D::Error> {
    let table = BTreeMap::<String, Seconds<0, 60>>::deserialize(d)?;
    Ok(table.into_iter().map(|(p, s)| (p, s.0)).collect())
}

impl DeviceSpec {
    /// `--device PATH[=PORT]`.
    pub(crate) fn parse_flag(s: &str) -> Result<DeviceSpec, String> {
        let (path, port) = match s.rsplit_once('=') {
            Some((p, port)) => {
                let port = port
                    .parse::<u16>()
                    .map_err(|_| format!("--device {s}: `{port}` is not a TCP port number"))?;
                (p, Some(port))
            }
            None => (s, None),
        };
        if path.is_empty() {
            return Err(format!("--device {s}: missing device path"));
        }
        Ok(DeviceSpec {
            port,
            ..DeviceSpec::new(DevicePath::parse(path))
        })
    }

    /// A device at `path` with every setting at its default.
    pub(crate) fn new(path: DevicePath) -> DeviceSpec {
        DeviceSpec {
            path,
            port: None,
            name: None,
            baud: default_baud(),
            reset: ResetKind::Auto,
            esp32r0: false,
            gpio: None,
            protocol: Protocol::default(),
            detect_window: default_detect_window(),
            after: After::default(),
            busy: Busy::default(),
            max_clients: DEFAULT_MAX_CLIENTS,
            allow: None,
            serial: None,
            usb_path: None,
            enabled: true,
        }
    }

    /// The device `--demo` adds: a simulated ESP32 on the next free port.
    pub(crate) fn demo() -> DeviceSpec {
        DeviceSpec {
            name: Some("demo-esp32".into()),
            ..DeviceSpec::new(DevicePath::Sim {
                board: SimBoard::DevKit,
                flash_file: None,
            })
        }
    }

    /// The reset policy this device gets: its `reset` key, or for `auto` a guess from its USB
    /// ids.
    pub(crate) fn policy(&self, usb: Option<crate::daemon::identity::UsbId>) -> Policy {
        let esp = Policy::Esp {
            esp32r0: self.esp32r0,
        };
        match self.reset {
            ResetKind::Esp | ResetKind::Gpio => esp,
            ResetKind::UsbJtag => Policy::UsbJtag,
            ResetKind::Passthrough => Policy::Passthrough,
            ResetKind::None => Policy::None,
            ResetKind::Auto => match &self.path {
                // sim-gpio's GPIO wiring is the simulator's own (`sim::SimGpioWired`).
                DevicePath::Sim { board, .. } => match board {
                    // The S3's USB-OTG CDC is modelled with the same reset pattern.
                    SimBoard::UsbJtag | SimBoard::S3UsbJtag | SimBoard::S3Otg => Policy::UsbJtag,
                    SimBoard::DevKit | SimBoard::Gpio | SimBoard::Esp8266DevKit => esp,
                },
                DevicePath::Tty(_) => match usb {
                    Some(id) if id.is_esp_usb_jtag() => Policy::UsbJtag,
                    Some(id) if id.is_uart_bridge() => esp,
                    _ => Policy::Passthrough,
                },
            },
        }
    }

    /// What the device's DTR/RTS reach.
    pub(crate) fn wiring(&self) -> Wiring {
        match self.reset {
            ResetKind::Gpio => Wiring::Gpio(self.gpio.clone().unwrap_or_default()),
            _ => Wiring::ModemLines,
        }
    }

    pub(crate) fn display_name(&self) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        match &self.path {
            DevicePath::Tty(p) => p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| p.display().to_string()),
            DevicePath::Sim { board, .. } => board.path_name().into(),
        }
    }
}

#[derive(Debug)]
pub(crate) enum ConfigError {
    Read {
        file: PathBuf,
        err: std::io::Error,
    },
    Parse {
        file: PathBuf,
        line: usize,
        message: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { file, err } => {
                write!(f, "cannot read config {}: {err}", file.display())
            }
            ConfigError::Parse {
                file,
                line,
                message,
            } => write!(
                f,
                "config error in {} line {line}: {message} (see conf/serialhub.toml for every key)",
                file.display()
            ),
        }
    }
}

impl Config {
    pub(crate) fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|err| ConfigError::Read {
            file: file.to_owned(),
            err,
        })?;
        let parse_error = |line, message| ConfigError::Parse {
            file: file.to_owned(),
            line,
            message,
        };
        let mut config = Config::parse(&text).map_err(|(line, m)| parse_error(line, m))?;
        if let Some(path) = &config.access.token_file {
            let line = text
                .lines()
                .position(|l| l.trim_start().starts_with("token_file"))
                .map_or(1, |i| i + 1);
            let token = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))
                .and_then(|t| Token::new(&t));
            match token {
                Ok(t) => config.access.token = Some(t),
                Err(e) => return Err(parse_error(line, format!("`token_file`: {e}"))),
            }
        }
        Ok(config)
    }

    /// Parse TOML text; on error, the 1-based line and a one-line message naming the key.
    pub(crate) fn parse(text: &str) -> Result<Config, (usize, String)> {
        let mut config: Config = toml::from_str(text).map_err(|e: toml::de::Error| {
            let start = e.span().map_or(0, |s| s.start.min(text.len()));
            let line = text[..start].matches('\n').count() + 1;
            let message = e.message().trim();
            // toml names the key for unknown keys but not for a wrong value ("invalid type:
            // string, expected u16"): take it from the `key = value` line the error points at.
            let line_text = text.lines().nth(line - 1).unwrap_or("");
            let key = line_text
                .split_once('=')
                .map(|(k, _)| k.trim().trim_matches('"'))
                .filter(|k| !k.is_empty() && !message.contains(&format!("`{k}`")));
            let message = match key {
                Some(k) => format!("`{k}`: {message}"),
                None => message.to_string(),
            };
            (line, message)
        })?;
        // Each [[device]] is a fixed device (path) or a rule for hotplugged ones (serial or
        // usb_path), never both.
        let line_of = |i: usize| {
            text.match_indices("[[device]]")
                .nth(i)
                .map_or(1, |(at, _)| text[..at].matches('\n').count() + 1)
        };
        for (i, d) in std::mem::take(&mut config.devices).into_iter().enumerate() {
            let matchers = usize::from(d.serial.is_some()) + usize::from(d.usb_path.is_some());
            match (d.path.is_unset(), matchers) {
                (false, 0) => config.devices.push(d),
                (true, 1) => config.rules.push(d),
                _ => {
                    return Err((
                        line_of(i),
                        "[[device]] needs exactly one of `path` (a fixed device), `serial` or `usb_path` (settings for a hotplugged one)".into(),
                    ))
                }
            }
        }
        // `private` makes reads need the token; without a token there is nothing to check
        // them against, and the portal would serve everyone while the config says otherwise.
        if config.access.private && config.access.token_file.is_none() {
            let line = text
                .lines()
                .position(|l| l.trim_start().starts_with("private"))
                .map_or(1, |i| i + 1);
            return Err((
                line,
                "`private = true` needs `token_file` in [access] (the token every request must then carry; `serialhub token` makes one), or remove `private`".into(),
            ));
        }
        Ok(config)
    }
}

/// The `[mdns]` table.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct MdnsConfig {
    pub(crate) enabled: bool,
    /// Interface names to advertise on; empty: every up, multicast, non-loopback one.
    pub(crate) interfaces: Vec<String>,
}

impl Default for MdnsConfig {
    fn default() -> Self {
        MdnsConfig {
            enabled: true,
            interfaces: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_without_a_token_is_refused_with_the_line() {
        let (line, msg) =
            Config::parse("bind = \"0.0.0.0\"\n[access]\nprivate = true\n").unwrap_err();
        assert_eq!(line, 3, "{msg}");
        assert!(msg.contains("`private = true` needs `token_file`"), "{msg}");
        let c = Config::parse("[access]\nprivate = true\ntoken_file = \"/x\"\n").unwrap();
        assert!(c.access.private);
        assert!(Config::parse("[access]\nprivate = false\n").is_ok());
    }

    #[test]
    fn full_config_parses() {
        let c = Config::parse(
            "bind = \"127.0.0.1\"\nbase_port = 5000\n[[device]]\npath = \"/dev/ttyUSB0\"\nport = 4100\nname = \"bench\"\nbaud = 921600\n[[device]]\npath = \"sim\"\n",
        )
        .unwrap();
        assert_eq!(c.base_port, 5000);
        assert_eq!(c.devices.len(), 2);
        assert_eq!(c.devices[0].port, Some(4100));
        assert_eq!(c.devices[0].baud, 921_600);
        assert_eq!(
            c.devices[1].path,
            DevicePath::Sim {
                board: SimBoard::DevKit,
                flash_file: None
            }
        );
        assert_eq!(c.devices[1].reset, ResetKind::Auto);
        let c = Config::parse(
            "[[device]]\npath = \"/dev/ttyACM0\"\nreset = \"usb-jtag\"\nesp32r0 = true\n",
        )
        .unwrap();
        assert_eq!(c.devices[0].reset, ResetKind::UsbJtag);
        assert!(c.devices[0].esp32r0);
        let (line, msg) =
            Config::parse("[[device]]\npath = \"x\"\nreset = \"magic\"\n").unwrap_err();
        assert_eq!(line, 3, "{msg}");
        assert!(msg.contains("usb-jtag"), "lists the choices: {msg}");
    }

    #[test]
    fn shipped_config_parses() {
        let c = Config::parse(include_str!("../../conf/serialhub.toml")).unwrap();
        assert_eq!(c.base_port, DEFAULT_BASE_PORT);
        assert!(c.devices.is_empty());
        assert_eq!(
            c.hotplug,
            Hotplug::default(),
            "the file documents the defaults"
        );
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let (line, msg) =
            Config::parse("base_port = 4001\n\n[[device]]\npath = \"/dev/x\"\nbaudrate = 9600\n")
                .unwrap_err();
        assert_eq!(line, 5, "{msg}");
        assert!(msg.contains("baudrate"), "{msg}");
    }

    #[test]
    fn wrong_type_names_line() {
        let (line, msg) = Config::parse("bind = \"127.0.0.1\"\nbase_port = \"x\"\n").unwrap_err();
        assert_eq!(line, 2, "{msg}");
        assert!(msg.contains("`base_port`"), "{msg}");
        let (line, msg) = Config::parse("bind = \"localhost:80\"\n").unwrap_err();
        assert_eq!(line, 1, "{msg}");
        assert!(msg.contains("`bind`"), "{msg}");
    }

    #[test]
    fn http_key() {
        assert_eq!(
            Config::default().http,
            Some("0.0.0.0:8080".parse().unwrap())
        );
        let c = Config::parse("http = \"127.0.0.1:9000\"\n").unwrap();
        assert_eq!(c.http, Some("127.0.0.1:9000".parse().unwrap()));
        assert_eq!(Config::parse("http = \"off\"\n").unwrap().http, None);
        let (line, msg) = Config::parse("bind = \"0.0.0.0\"\nhttp = \"8080\"\n").unwrap_err();
        assert_eq!(line, 2, "{msg}");
        assert!(msg.contains("`http`") && msg.contains("off"), "{msg}");
    }

    #[test]
    fn rules_for_hotplugged_devices() {
        let c = Config::parse(
            "[[device]]\npath = \"/dev/ttyAMA0\"\n[[device]]\nserial = \"0123\"\nname = \"bench\"\nport = 4100\n[[device]]\nusb_path = \"platform-x-usb-0:1.2:1.0\"\nenabled = false\n",
        )
        .unwrap();
        assert_eq!(c.devices.len(), 1);
        assert_eq!(c.rules.len(), 2);
        assert_eq!(c.rules[0].serial.as_deref(), Some("0123"));
        assert!(!c.rules[1].enabled);
        let (line, msg) = Config::parse(
            "bind = \"127.0.0.1\"\n[[device]]\npath = \"/dev/x\"\n\n[[device]]\nname = \"y\"\n",
        )
        .unwrap_err();
        assert_eq!(line, 5, "{msg}");
        assert!(msg.contains("exactly one"), "{msg}");
    }

    #[test]
    fn globs() {
        assert!(glob_match("ttyUSB*", "ttyUSB0"));
        assert!(glob_match("ttyUSB*", "ttyUSB"));
        assert!(!glob_match("ttyUSB*", "ttyACM0"));
        assert!(glob_match("tty*0", "ttyAMA0"));
        assert!(glob_match("ttyAMA0", "ttyAMA0"));
        assert!(!glob_match("ttyAMA0", "ttyAMA01"));
    }

    #[test]
    fn hotplug_table() {
        let c = Config::parse("state_file = \"/tmp/p.json\"\n[hotplug]\ndir = \"/tmp/dev\"\ngrace = 0.5\n[hotplug.settle]\n\"ttyACM*\" = 2.0\n").unwrap();
        assert_eq!(c.hotplug.dir, PathBuf::from("/tmp/dev"));
        assert_eq!(c.hotplug.grace, Duration::from_millis(500));
        let d = Config::parse("[[device]]\npath = \"sim\"\nprotocol = \"auto\"\ndetect_window = 0.05\nafter = \"stay\"\n").unwrap();
        assert_eq!(d.devices[0].detect_window, Duration::from_millis(50));
        assert_eq!(d.devices[0].after, After::Stay);
        let (line, msg) =
            Config::parse("[[device]]\npath = \"sim\"\ndetect_window = -1\n").unwrap_err();
        assert_eq!(line, 3);
        assert!(
            msg.contains("detect_window") && msg.contains("0 to 10"),
            "{msg}"
        );
        assert_eq!(c.hotplug.settle["ttyACM*"], Duration::from_secs(2));
        assert_eq!(c.hotplug.patterns, ["ttyUSB*", "ttyACM*"]);
    }

    #[test]
    fn durations_out_of_range_name_key_and_range() {
        let cases = [
            ("[hotplug]\ngrace = -1\n", "grace", "0 to 60"),
            ("[hotplug]\ngrace = nan\n", "grace", "0 to 60"),
            ("[hotplug]\ngrace = inf\n", "grace", "0 to 60"),
            ("[hotplug]\nflap_window = 0.5\n", "flap_window", "1 to 3600"),
            (
                "[hotplug]\nflap_window = 1e300\n",
                "flap_window",
                "1 to 3600",
            ),
            (
                "[hotplug]\nflap_cooldown = -0.1\n",
                "flap_cooldown",
                "0 to 86400",
            ),
            (
                "[hotplug]\nflap_cooldown = 1e20\n",
                "flap_cooldown",
                "0 to 86400",
            ),
            ("[hotplug.settle]\n\"ttyACM*\" = 61\n", "ttyACM*", "0 to 60"),
            (
                "[hotplug.settle]\n\"ttyUSB*\" = -inf\n",
                "ttyUSB*",
                "0 to 60",
            ),
            (
                "[[device]]\npath = \"sim\"\ndetect_window = nan\n",
                "detect_window",
                "0 to 10",
            ),
        ];
        for (text, key, range) in cases {
            let (line, msg) = Config::parse(text).unwrap_err();
            assert_eq!(line, text.lines().count(), "{text}: {msg}");
            assert!(msg.contains(&format!("`{key}`")), "{text}: {msg}");
            assert!(msg.contains(range), "{text}: {msg}");
        }
        let c = Config::parse("[hotplug]\ngrace = 0\nflap_window = 3600\nflap_cooldown = 86400\n[hotplug.settle]\n\"tty*\" = 60\n").unwrap();
        assert_eq!(c.hotplug.grace, Duration::ZERO);
        assert_eq!(c.hotplug.flap_window, Duration::from_secs(3600));
        assert_eq!(c.hotplug.flap_cooldown, Duration::from_secs(86400));
        assert_eq!(c.hotplug.settle["tty*"], Duration::from_secs(60));
    }

    #[test]
    fn device_flag() {
        let d = DeviceSpec::parse_flag("/dev/ttyUSB0=4002").unwrap();
        assert_eq!(d.path, DevicePath::Tty("/dev/ttyUSB0".into()));
        assert_eq!(d.port, Some(4002));
        let d = DeviceSpec::parse_flag("sim:/tmp/f.bin").unwrap();
        assert_eq!(
            d.path,
            DevicePath::Sim {
                board: SimBoard::DevKit,
                flash_file: Some("/tmp/f.bin".into())
            }
        );
        let d = DeviceSpec::parse_flag("sim-usb:/tmp/f2.bin=0").unwrap();
        assert_eq!(
            d.path,
            DevicePath::Sim {
                board: SimBoard::UsbJtag,
                flash_file: Some("/tmp/f2.bin".into())
            }
        );
        assert_eq!((d.port, d.display_name()), (Some(0), "sim-usb".into()));
        let d = DeviceSpec::parse_flag("sim-gpio").unwrap();
        assert_eq!(
            d.path,
            DevicePath::Sim {
                board: SimBoard::Gpio,
                flash_file: None
            }
        );
        assert_eq!(d.path.to_string(), "sim-gpio");
        let p = "/dev/serial/by-path/pci-0000:00:14.0-usb-0:1:1.0-port0";
        assert_eq!(DevicePath::parse(p), DevicePath::Tty(p.into()));
        assert_eq!(
            DevicePath::parse("sim-uart"),
            DevicePath::Tty("sim-uart".into())
        );
        assert!(DeviceSpec::parse_flag("/dev/x=abc").is_err());
    }

    #[test]
    fn clients_share_a_device_by_default_and_their_number_is_bounded() {
        let d = &Config::parse("[[device]]\npath = \"sim\"\n")
            .unwrap()
            .devices[0];
        assert_eq!((d.busy, d.max_clients), (Busy::Share, DEFAULT_MAX_CLIENTS));
        let d = &Config::parse("[[device]]\npath = \"sim\"\nbusy = \"reject\"\nmax_clients = 2\n")
            .unwrap()
            .devices[0];
        assert_eq!((d.busy, d.max_clients), (Busy::Reject, 2));
        for bad in ["0", "17", "-1"] {
            let (_, msg) = Config::parse(&format!(
                "[[device]]\npath = \"sim\"\nmax_clients = {bad}\n"
            ))
            .unwrap_err();
            assert!(
                msg.contains("max_clients") && msg.contains("1 to 16"),
                "{msg}"
            );
        }
    }

    #[test]
    fn http_connections_is_bounded() {
        assert_eq!(Config::default().http_connections, DEFAULT_HTTP_CONNECTIONS);
        assert_eq!(
            Config::parse("http_connections = 4\n")
                .unwrap()
                .http_connections,
            4
        );
        for bad in ["0", "-1", "5000"] {
            let (_, msg) = Config::parse(&format!("http_connections = {bad}\n")).unwrap_err();
            assert!(
                msg.contains("http_connections") && msg.contains("1 to 1024"),
                "{msg}"
            );
        }
    }

    #[test]
    fn access_allow_lists_for_the_daemon_and_per_device() {
        let c = Config::parse(
            "[access]\nallow = [\"192.168.1.0/24\", \"::1\"]\n[[device]]\npath = \"sim\"\nallow = [\"10.0.0.7\"]\n",
        )
        .unwrap();
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert!(
            c.access.allow.permits(ip("192.168.1.9")) && !c.access.allow.permits(ip("10.0.0.7"))
        );
        let dev = c.devices[0].allow.as_ref().unwrap();
        assert!(dev.permits(ip("10.0.0.7")) && !dev.permits(ip("192.168.1.9")));
        assert_eq!(Config::default().access.allow, Allow::Everyone);
        let (_, msg) = Config::parse("[access]\nallow = [\"192.168.1.0/99\"]\n").unwrap_err();
        assert!(
            msg.contains("allow") && msg.contains("prefix length"),
            "{msg}"
        );
    }

    #[test]
    fn access_hosts_are_names_kept_in_lower_case() {
        let c = Config::parse("[access]\nhosts = [\"Pi.Lab.Example.\", \"bench_1\"]\n").unwrap();
        assert_eq!(c.access.hosts, ["pi.lab.example", "bench_1"]);
        assert!(Config::default().access.hosts.is_empty());
        for bad in ["pi:8080", "http://pi", "*.lab", "", "a..b", "pi lab"] {
            let (_, msg) = Config::parse(&format!("[access]\nhosts = [\"{bad}\"]\n")).unwrap_err();
            assert!(
                msg.contains("hosts") && msg.contains("host name"),
                "{bad}: {msg}"
            );
        }
    }
}
