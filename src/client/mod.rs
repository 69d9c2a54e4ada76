//! The client side, for containers and CI runners: `discover`, `url`, `monitor`, `pty`,
//! `lease` (a board reserved for one command), and `labgrid` (an exporter configuration for a
//! lab).
//!
//! `discover` and `url` read the portal's `/api/discover` (serialhub's, or the old Python
//! portal's smaller shape); `monitor` and `pty` speak RFC 2217 with the project's own codecs,
//! so the codec is exercised from both sides.
//!
//! Exit codes: 0 ok, 1 no such device / several match / runtime failure, 2 usage error or
//! host unreachable.

pub(crate) mod http;
pub(crate) mod labgrid;
pub(crate) mod lan;
pub(crate) mod lease;
pub(crate) mod monitor;
pub(crate) mod pty;
pub(crate) mod rfc;

use lexopt::ValueExt;
use serde_json::Value;

/// The portal's default port (the old portal's too).
pub(crate) const PORTAL_PORT: u16 = 8080;

pub(crate) const HELP: &str = "\
serialhub client commands — use a serialhub (or the old portal) from another machine

USAGE:
    serialhub discover [HOST[:PORT]] [--json]
    serialhub url [HOST[:PORT]] [SELECTOR] [--socket | --ign-set-control]
    serialhub monitor [TARGET] [SELECTOR] [--baud B] [--raw] [--timestamps]
    serialhub pty [TARGET] [SELECTOR] --link PATH [--baud B] [--format 8N1]
    serialhub labgrid [HOST[:PORT]]...
    serialhub lease [HOST[:PORT]] [SELECTOR] [--for 30m] [--token-file F] [-- COMMAND...]

HOST defaults to $SERIALHUB_HOST, then $PI_HOST; without any, every serialhub on the network is
found by mDNS (about 1.5 s) and `discover` lists their boards with a HOST column. The portal's
port defaults to 8080. A portal that wants
its API token (`[access] token_file`) gets it from $SERIALHUB_TOKEN.
TARGET is an rfc2217://HOST:PORT URL, or a HOST whose portal picks the device; without one,
$ESP32_PORT (a URL), else the default HOST.

SELECTOR (at most one; without one, $ESP32_SERIAL, then $ESP32_INDEX; without those the host
must serve exactly one device):
    --serial S, -s S     the device with USB serial number S
    --name N             the device named N (or with node N, e.g. /dev/ttyUSB0)
    --key K              the device with key K (serial:0123, path:…, name:ttyAMA0)
    --index I, -i I      the I-th device of `discover` (from 0)

discover             list the served devices: name, product, serial, port, state, URL;
                     --json prints the portal's JSON
url                  print exactly one device URL (for ESPPORT=$(serialhub url …));
                     --socket prints the socket:// URL, esptool's fastest path (the
                     server resets the chip and changes the baud for it): use it
                     with `--before no-reset` (esptool 3.x/4.x: `no_reset`);
                     --ign-set-control adds ?ign_set_control (never needed with serialhub)
monitor              a serial monitor over RFC 2217; DTR/RTS stay released, so opening it
                     resets nothing. --baud (default 115200), --raw passes bytes through
                     (default: complete lines), --timestamps prefixes lines with the time.
                     Keys: Ctrl-T Ctrl-R reset into the application, Ctrl-T Ctrl-P into the
                     bootloader, Ctrl-T Ctrl-T sends Ctrl-T, Ctrl-T Ctrl-H help, Ctrl-] quits.
                     Reconnects (0.5 s doubling to 5 s) when the server or device goes away.
pty                  a local pseudo-terminal, symlinked at PATH, bridged to the remote port:
                     data both ways; the baud and stop bits a program sets on it are
                     forwarded as RFC 2217 settings (--baud: the rate until one does). Linux's
                     pty driver forces 8 data bits and no parity, so those are fixed with
                     --format (default 8N1). A pty has no DTR/RTS either, so programs
                     cannot reset the board through it: use `--before no-reset` with esptool
                     and reset with `serialhub monitor` (Ctrl-T Ctrl-P) or the portal:
                     curl -X POST -H 'Content-Type: application/json' http://HOST:8080/api/devices/KEY/reset -d '{\"to\":\"bootloader\"}'
lease                reserve the board for this machine (`[access] lease` on the server) for
                     --for (30m; s, m, h, d), run COMMAND with {url} and {socket_url} replaced
                     by its URLs and ESPPORT set, release the lease when it ends (also on
                     Ctrl-C), and exit with its status:
                     serialhub lease pi --serial X --for 30m -- esptool --port {socket_url} --before no-reset -b 921600 write-flash 0x10000 app.bin
                     Without COMMAND: print the URL and the lease id. The token comes from
                     --token-file or $SERIALHUB_TOKEN.
labgrid              a labgrid exporter configuration (YAML, on stdout) with one group per
                     board of every HOST given (default: $SERIALHUB_HOST, else every
                     serialhub found on the network): a NetworkSerialPort
                     with host, port, speed and protocol, for `labgrid-exporter`

Exit status: 0 ok; 1 no device matches, several do, or the connection failed; 2 bad command
line, or the host is unreachable.
";

/// Why a client command failed; each maps to an exit code.
#[derive(Debug)]
pub(crate) enum ClientError {
    Usage(String),
    /// No device or several devices match (exit 1).
    Select(String),
    /// The portal cannot be reached (exit 2).
    Unreachable(String),
    Runtime(String),
}

impl ClientError {
    pub(crate) fn exit_code(&self) -> i32 {
        match self {
            ClientError::Usage(_) | ClientError::Unreachable(_) => 2,
            ClientError::Select(_) | ClientError::Runtime(_) => 1,
        }
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Usage(m)
            | ClientError::Select(m)
            | ClientError::Unreachable(m)
            | ClientError::Runtime(m) => write!(f, "{m}"),
        }
    }
}

impl From<lexopt::Error> for ClientError {
    fn from(e: lexopt::Error) -> Self {
        ClientError::Usage(e.to_string())
    }
}

/// Run one client command; returns the exit code (messages already printed).
pub(crate) fn main(cmd: &str, parser: lexopt::Parser) -> i32 {
    let r = match cmd {
        "discover" => discover(parser),
        "url" => url(parser),
        "monitor" => monitor::main(parser),
        "pty" => pty::main(parser),
        "labgrid" => labgrid::main(parser),
        "lease" => lease::main(parser),
        _ => Err(ClientError::Usage(format!("unknown command `{cmd}`"))),
    };
    match r {
        Ok(()) => 0,
        Err(e) => {
            match &e {
                ClientError::Usage(m) => eprintln!("serialhub: {m}\nTry `serialhub {cmd} --help`."),
                other => eprintln!("serialhub: {other}"),
            }
            e.exit_code()
        }
    }
}

/// A portal's address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Portal {
    /// `host:port`, as connected to and sent in `Host`.
    pub(crate) authority: String,
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
    /// given (then the network is browsed: [`lan`]).
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

    fn get_json(&self, path: &str) -> Result<Value, ClientError> {
        let r = http::request(&self.authority, "GET", path, None).map_err(|e| {
            ClientError::Unreachable(format!(
                "cannot reach the portal at http://{}: {e}",
                self.authority
            ))
        })?;
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
        let body = serde_json::json!({ "to": to }).to_string();
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
}

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
    /// The portal that serves it, when known.
    pub(crate) portal: Option<Portal>,
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

    /// The listing's JSON for a device found on the network.
    fn to_json(&self) -> Value {
        serde_json::json!({
            "host": self.host,
            "name": self.name,
            "product": self.product,
            "serial": self.serial,
            "key": self.key,
            "port": self.port,
            "state": self.state,
            "url": self.url,
            "socket_url": self.socket_url,
            "portal": self.portal.as_ref().map(|p| format!("http://{}", p.authority)),
        })
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

fn help_requested(arg: &lexopt::Arg) -> bool {
    matches!(arg, lexopt::Arg::Long("help") | lexopt::Arg::Short('h'))
}

fn discover(mut parser: lexopt::Parser) -> Result<(), ClientError> {
    use lexopt::Arg::{Long, Value};
    let mut host = None;
    let mut json = false;
    while let Some(arg) = parser.next()? {
        match arg {
            Long("json") | lexopt::Arg::Short('j') => json = true,
            Value(v) if host.is_none() => host = Some(v.string()?),
            a if help_requested(&a) => {
                print!("{HELP}");
                return Ok(());
            }
            a => return Err(a.unexpected().into()),
        }
    }
    let Some(portal) = Portal::given(host.as_deref())? else {
        let devices = lan::devices()?;
        if json {
            let list: Vec<serde_json::Value> = devices.iter().map(Device::to_json).collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({ "devices": list }))
                    .unwrap_or_default()
            );
        } else {
            print!("{}", table(&devices));
        }
        return Ok(());
    };
    let (raw, devices) = portal.discover()?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&raw).unwrap_or_else(|_| raw.to_string())
        );
    } else if devices.is_empty() {
        eprintln!("{} serves no devices", portal.authority);
    } else {
        print!("{}", table(&devices));
    }
    Ok(())
}

/// The readable listing: one row per device, columns padded to fit; a HOST column when the
/// devices come from several hosts (the network was browsed).
pub(crate) fn table(devices: &[Device]) -> String {
    let hosts = devices.iter().any(|d| !d.host.is_empty());
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_string()
        } else {
            s.to_string()
        }
    };
    let mut head = vec!["#", "NAME", "PRODUCT", "SERIAL", "PORT", "STATE", "URL"];
    if hosts {
        head.insert(1, "HOST");
    }
    let rows: Vec<Vec<String>> = devices
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let mut r = vec![
                i.to_string(),
                dash(&d.name),
                dash(&d.product),
                dash(&d.serial),
                d.port.to_string(),
                dash(&d.state),
                dash(&d.url),
            ];
            if hosts {
                r.insert(1, dash(&d.host));
            }
            r
        })
        .collect();
    let mut width: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<w$}  ", w = width[i]));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&head);
    for r in &rows {
        let cells: Vec<&str> = r.iter().map(String::as_str).collect();
        line(&cells);
    }
    out
}

fn url(mut parser: lexopt::Parser) -> Result<(), ClientError> {
    use lexopt::Arg::{Long, Value};
    let mut host = None;
    let mut sel = Selector::default();
    let mut ign = false;
    let mut socket = false;
    while let Some(arg) = parser.next()? {
        if let Some(field) = Selector::flag(&arg) {
            sel.set(field, &mut parser)?;
            continue;
        }
        match arg {
            Long("ign-set-control") => ign = true,
            Long("socket") => socket = true,
            Value(v) if host.is_none() => host = Some(v.string()?),
            a if help_requested(&a) => {
                print!("{HELP}");
                return Ok(());
            }
            a => return Err(a.unexpected().into()),
        }
    }
    let sel = sel.or_env()?;
    let (devices, from) = devices_of(host.as_deref())?;
    let d = sel.pick(&devices, &from)?;
    if socket {
        if d.socket_url.is_empty() {
            return Err(ClientError::Select(format!(
                "{} on {} serves RFC 2217 only (its protocol setting); use {}",
                d.name, from, d.url
            )));
        }
        println!("{}", d.socket_url);
        return Ok(());
    }
    println!("{}", if ign { &d.url_ign_set_control } else { &d.url });
    Ok(())
}

/// The devices of the given host (or `$SERIALHUB_HOST`, `$PI_HOST`), else of every serialhub
/// on the network; and where they came from, for messages.
pub(crate) fn devices_of(host: Option<&str>) -> Result<(Vec<Device>, String), ClientError> {
    match Portal::given(host)? {
        Some(p) => {
            let (_, devices) = p.discover()?;
            let devices = devices
                .into_iter()
                .map(|d| Device {
                    portal: Some(p.clone()),
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
                    portal: d.portal.clone().map(|p| (p, d.api_key())),
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
    use serde_json::json;

    fn devs() -> Vec<Device> {
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

    #[test]
    fn hosts_and_urls() {
        let a = |s: &str| Portal::parse(s).map(|p| p.authority);
        assert_eq!(a("pi").unwrap(), "pi:8080");
        assert_eq!(a("pi:81").unwrap(), "pi:81");
        assert_eq!(a("http://pi:81/").unwrap(), "pi:81");
        assert_eq!(a("::1").unwrap(), "[::1]:8080");
        assert_eq!(a("[::1]:9").unwrap(), "[::1]:9");
        assert!(a("pi:x").is_err());
        assert_eq!(
            url_authority("rfc2217://pi:4001?ign_set_control").unwrap(),
            "pi:4001"
        );
        assert!(url_authority("rfc2217://pi").is_err());
    }

    #[test]
    fn table_aligns() {
        let t = table(&devs());
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4);
        let col = lines[0].find("URL").unwrap();
        assert!(lines[1][col..].starts_with("rfc2217://h:4001"), "{t}");
        assert!(
            lines[2].contains("ttyUSB1") && lines[2].contains("running"),
            "{t}"
        );
    }
}
