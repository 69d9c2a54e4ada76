//! A device as the portal shows it: [`DeviceView`], read once per request from the registry's
//! entry, the lease book and the request's host. The API's JSON (here), the page (`page.rs`)
//! and the metrics (`metrics.rs`) all render from it, so they cannot tell different stories.

use std::net::{IpAddr, SocketAddr};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::Portal;
use crate::daemon::assign::KeyKind;
use crate::daemon::lease::{self, Book};
use crate::daemon::registry::{ClientInfo, DeviceEntry, DeviceState, Role, Stats};
use crate::protocol::Protocol;

/// The baud rate in the suggested flash commands: esptool's usual fast rate, which the
/// server switches the UART to on ESP devices.
const FLASH_BAUD: u32 = 921_600;

/// Where the suggested esptool command writes `app.bin`: ESP-IDF's default offset of the
/// factory app partition.
const APP_OFFSET: u32 = 0x10000;

/// One device, as this request shows it.
pub(super) struct DeviceView {
    /// `serial:0123`, `path:…`, `name:ttyAMA0`.
    pub(super) key: String,
    pub(super) key_kind: KeyKind,
    pub(super) name: String,
    /// The device node (the last one it had, when absent).
    pub(super) tty: String,
    pub(super) port: u16,
    /// The USB product, else the device's name (the old portal's `product`).
    pub(super) product: String,
    /// The USB serial number, else empty.
    pub(super) serial: String,
    pub(super) vid: Option<u16>,
    pub(super) pid: Option<u16>,
    pub(super) manufacturer: Option<String>,
    pub(super) usb_path: Option<String>,
    pub(super) interface: Option<u8>,
    pub(super) state: DeviceState,
    /// The reset policy's config spelling (`esp`, `usb-jtag`, …).
    pub(super) reset: &'static str,
    pub(super) protocol: Protocol,
    pub(super) urls: Urls,
    /// Connected clients, the one in control first.
    pub(super) clients: Vec<ClientView>,
    /// Who holds it, until when (the leases' ids are only in `GET …/lease`).
    pub(super) leases: Vec<Held>,
    pub(super) counts: Counts,
}

/// Where clients reach a device, and the commands that use it.
pub(super) struct Urls {
    /// What works for every tool on this port.
    pub(super) url: String,
    pub(super) url_ign_set_control: String,
    /// The fast path for esptool (the server resets and changes baud for it on ESP
    /// devices), where the port speaks raw.
    pub(super) socket_url: Option<String>,
    pub(super) esptool: String,
    pub(super) idf: String,
    pub(super) platformio: String,
    pub(super) arduino_cli: String,
}

/// One connected client.
pub(super) struct ClientView {
    pub(super) addr: SocketAddr,
    /// When it connected, in Unix seconds (whole).
    pub(super) since: f64,
    /// How long it has been connected.
    pub(super) seconds: u64,
    pub(super) role: Role,
    /// Bytes it wrote while observing, dropped.
    pub(super) dropped_in: u64,
    /// Device output it missed by not reading fast enough.
    pub(super) dropped_out: u64,
}

/// One lease on the device.
pub(super) struct Held {
    pub(super) address: IpAddr,
    pub(super) expires: u64,
    /// Seconds left.
    pub(super) seconds: u64,
}

/// The device's counters, read once.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Counts {
    pub(super) bytes_to_device: u64,
    pub(super) bytes_to_client: u64,
    pub(super) connects: u64,
    pub(super) resets: u64,
    pub(super) observer_bytes_dropped: u64,
    pub(super) observer_output_missed: u64,
    pub(super) lease_refusals: u64,
}

impl Portal {
    /// Every device as this request shows it: one registry snapshot, one look at the leases.
    pub(super) fn views(&self, host: &str) -> Vec<DeviceView> {
        let all = self.registry.snapshot();
        let now = lease::unix_now();
        let book = self.leases.book();
        all.iter()
            .map(|e| DeviceView::new(e, host, &book, now))
            .collect()
    }

    /// One device as this request shows it.
    pub(super) fn view(&self, e: &DeviceEntry, host: &str) -> DeviceView {
        DeviceView::new(e, host, &self.leases.book(), lease::unix_now())
    }
}

impl DeviceView {
    fn new(e: &DeviceEntry, host: &str, book: &Book, now: u64) -> DeviceView {
        let usb = e.usb.as_ref();
        let key = e.key.to_string();
        let leases = (book.on(&key, now))
            .map(|l| Held {
                address: l.address,
                expires: l.expires,
                seconds: l.left(now),
            })
            .collect();
        DeviceView {
            key_kind: e.key.kind,
            name: e.name.clone(),
            tty: e.tty.clone(),
            port: e.port,
            product: usb
                .and_then(|u| u.product.clone())
                .unwrap_or_else(|| e.name.clone()),
            serial: usb.and_then(|u| u.serial.clone()).unwrap_or_default(),
            vid: usb.and_then(|u| u.id).map(|id| id.vid),
            pid: usb.and_then(|u| u.id).map(|id| id.pid),
            manufacturer: usb.and_then(|u| u.manufacturer.clone()),
            usb_path: usb.and_then(|u| u.path.clone()),
            interface: usb.and_then(|u| u.interface),
            state: e.state.clone(),
            reset: e.reset.name(),
            protocol: e.protocol,
            urls: Urls::new(host, e.port, e.protocol),
            clients: e.clients.iter().map(ClientView::new).collect(),
            leases,
            counts: Counts::read(&e.stats),
            key,
        }
    }

    /// Served: the device's port is listening (`running` in the old portal's terms).
    pub(super) fn running(&self) -> bool {
        matches!(
            self.state,
            DeviceState::Starting | DeviceState::Idle | DeviceState::Connected
        )
    }

    /// The device as the API shows it: the old portal's fields, then ours.
    pub(super) fn json(&self) -> Value {
        let u = &self.urls;
        let clients: Vec<Value> = self.clients.iter().map(ClientView::json).collect();
        let problem = match &self.state {
            DeviceState::Error(m) => Some(m.as_str()),
            _ => None,
        };
        let leases: Vec<Value> = (self.leases.iter())
            .map(|l| json!({ "address": l.address.to_string(), "expires": l.expires, "seconds": l.seconds }))
            .collect();
        json!({
            "tty": self.tty,
            "product": self.product,
            "serial": self.serial,
            "port": self.port,
            "running": self.running(),
            "url": u.url,
            "url_ign_set_control": u.url_ign_set_control,
            "socket_url": u.socket_url,
            "key": self.key,
            "key_kind": serde_json::to_value(self.key_kind).unwrap_or(Value::Null),
            "name": self.name,
            "vid": self.vid.map(|id| format!("{id:04x}")),
            "pid": self.pid.map(|id| format!("{id:04x}")),
            "manufacturer": self.manufacturer,
            "usb_path": self.usb_path,
            "interface": self.interface,
            "reset": self.reset,
            "protocol": self.protocol.as_str(),
            "state": self.state.as_str(),
            "problem": problem,
            "client": clients.first().cloned(),
            "clients": clients,
            "leases": leases,
            "bytes_to_device": self.counts.bytes_to_device,
            "bytes_to_client": self.counts.bytes_to_client,
            "connects": self.counts.connects,
            "resets": self.counts.resets,
            "esptool": u.esptool,
            "idf": u.idf,
            "platformio": u.platformio,
            "arduino_cli": u.arduino_cli,
        })
    }
}

impl Urls {
    pub(super) fn new(host: &str, port: u16, protocol: Protocol) -> Urls {
        let rfc2217 = format!("rfc2217://{host}:{port}");
        let socket = format!("socket://{host}:{port}");
        let (url, socket_url) = match protocol {
            Protocol::Auto => (rfc2217.clone(), Some(socket)),
            Protocol::Rfc2217 => (rfc2217.clone(), None),
            Protocol::Raw => (socket.clone(), Some(socket)),
        };
        // The server follows esptool's loader protocol on every device, so `socket://` is the
        // flash path wherever the port speaks raw. Each recipe is the one
        // tests/e2e/test_recipes.py runs the way its tool runs esptool, with the versions it
        // holds for: esptool >= 4.8 turns its reset off on a socket by itself, older releases
        // (PlatformIO's espressif32 <= 6.11 bundles 4.5.1) crash trying unless told
        // `no_reset`; arduino-esp32 hardcodes `--before default_reset`.
        let flash_url = socket_url.as_deref().unwrap_or(&url);
        let on_socket = socket_url.is_some();
        let lines = |l: &[String]| l.join("\n");
        let esptool = if on_socket {
            format!("esptool --port {flash_url} --before no-reset -b {FLASH_BAUD} write-flash {APP_OFFSET:#x} app.bin   # esptool 5.x; 3.x/4.x: --before no_reset write_flash")
        } else {
            format!("esptool --port {url} -b {FLASH_BAUD} write-flash {APP_OFFSET:#x} app.bin   # esptool 5.x; 3.x/4.x: write_flash")
        };
        let idf = if on_socket {
            lines(&[
                "# ESP-IDF 5.x; with esptool < 4.8 in its environment set CONFIG_ESPTOOLPY_BEFORE_NORESET=y".into(),
                format!("idf.py -p {flash_url} -b {FLASH_BAUD} flash && idf.py -p {url} monitor   # monitor resets the board on open; --no-reset does not"),
            ])
        } else {
            format!("idf.py -p {url} flash monitor   # monitor resets the board on open; --no-reset does not")
        };
        let mut pio = vec![
            "; platformio.ini: espressif32 6.x (esptool 4.5.1 until 6.11), pioarduino".to_string(),
            format!("upload_port = {flash_url}"),
            format!("upload_speed = {FLASH_BAUD}"),
        ];
        if on_socket {
            pio.push("board_upload.before_reset = no_reset".into());
        }
        pio.extend([
            format!("monitor_port = {url}"),
            "monitor_speed = 115200".into(),
            "; boards whose manifest waits for a new USB port (native-USB S2/S3: lolin_s2_mini, ...) also need:".into(),
            "; board_upload.wait_for_upload_port = no".into(),
            "; board_upload.use_1200bps_touch = no".into(),
        ]);
        let platformio = lines(&pio);
        let arduino_cli = if on_socket {
            lines(&[
                format!("# arduino-esp32 3.x whose esptool_py is 4.8 or newer (since Nov 2024); with 4.6: -p {url}"),
                format!("arduino-cli upload -p {flash_url} --fqbn esp32:esp32:esp32"),
            ])
        } else {
            format!("arduino-cli upload -p {url} --fqbn esp32:esp32:esp32   # arduino-esp32 3.x")
        };
        Urls {
            url_ign_set_control: format!("{rfc2217}?ign_set_control"),
            esptool,
            idf,
            platformio,
            arduino_cli,
            url,
            socket_url,
        }
    }
}

impl ClientView {
    fn new(c: &ClientInfo) -> ClientView {
        // `seconds` from the monotonic clock, so a wall-clock step cannot change it; `since`
        // (Unix seconds) is the wall clock now minus that, so it follows the step instead.
        let connected_for = c.since.elapsed();
        let since = SystemTime::now()
            .checked_sub(connected_for)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0.0, |d| d.as_secs_f64());
        ClientView {
            addr: c.addr,
            since: since.floor(),
            seconds: connected_for.as_secs(),
            role: c.role,
            dropped_in: Stats::get(&c.dropped.from_client),
            dropped_out: Stats::get(&c.dropped.to_client),
        }
    }

    /// Who, since when, its role, what it lost while observing.
    fn json(&self) -> Value {
        json!({
            "addr": self.addr.to_string(),
            "since": self.since,
            "seconds": self.seconds,
            "role": self.role.as_str(),
            "dropped_in": self.dropped_in,
            "dropped_out": self.dropped_out,
        })
    }
}

impl Counts {
    fn read(s: &Stats) -> Counts {
        Counts {
            bytes_to_device: Stats::get(&s.bytes_to_device),
            bytes_to_client: Stats::get(&s.bytes_to_client),
            connects: Stats::get(&s.connects),
            resets: Stats::get(&s.resets),
            observer_bytes_dropped: Stats::get(&s.observer_bytes_dropped),
            observer_output_missed: Stats::get(&s.observer_output_missed),
            lease_refusals: Stats::get(&s.lease_refusals),
        }
    }
}
