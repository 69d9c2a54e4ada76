//! The portal's endpoints, driven through [`Portal::handle`] with a fake supervisor and a
//! registry of two devices. The route table's own tests are in `routes.rs`.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::api::complete_utf8_len;
use super::host::host_of;
use super::reply::percent_decode;
use super::{Commands, Portal};
use crate::daemon::assign::DeviceKey;
use crate::daemon::config::Access;
use crate::daemon::control::{Reply, Request, RequestError};
use crate::daemon::http::HttpRequest;
use crate::daemon::identity::{UsbId, UsbInfo};
use crate::daemon::lease::{Leases, Policy as LeasePolicy};
use crate::daemon::registry::{
    ClientInfo, DeviceEntry, DeviceState, Dropped, LogRing, Registry, Role, Stats,
};
use crate::protocol::reset::Policy;
use crate::protocol::Protocol;

/// Records requests and answers them from a script.
#[derive(Default)]
pub(super) struct Fake {
    pub(super) seen: Mutex<Vec<String>>,
}

impl Commands for Arc<Fake> {
    fn request(&self, req: Request) -> Reply {
        let text = format!("{req:?}");
        self.seen.lock().unwrap().push(text.clone());
        match req {
            Request::Start(t) | Request::Stop(t) if t == "/dev/nope" => {
                Err(RequestError::NotFound(t))
            }
            Request::StartAll => Ok("a: started\nb: started".into()),
            Request::StopAll => Ok(String::new()),
            _ => Ok(text),
        }
    }
}

pub(super) fn setup() -> (Portal, Arc<Fake>, Arc<Registry>) {
    let reg = Registry::new();
    let usb = UsbInfo {
        id: Some(UsbId {
            vid: 0x10c4,
            pid: 0xea60,
        }),
        serial: Some("0001".into()),
        manufacturer: Some("Silicon Labs".into()),
        product: Some("CP2102 USB to UART".into()),
        interface: Some(0),
        path: Some("pci-0000:00:14.0-usb-0:1:1.0".into()),
    };
    let log = Arc::new(Mutex::new(LogRing::new(64 * 1024)));
    log.lock().unwrap().push("boot #1\r\nh\u{e9}".as_bytes());
    reg.upsert(DeviceEntry {
        key: DeviceKey::serial("0001"),
        name: "ttyUSB0".into(),
        tty: "/dev/ttyUSB0".into(),
        usb: Some(usb),
        port: 4001,
        state: DeviceState::Connected,
        clients: vec![
            ClientInfo {
                addr: "192.168.1.9:50000".parse().unwrap(),
                since: Instant::now() - Duration::from_secs(90),
                role: Role::Control,
                dropped: Arc::default(),
            },
            ClientInfo {
                addr: "192.168.1.7:50001".parse().unwrap(),
                since: Instant::now() - Duration::from_secs(30),
                role: Role::Observe,
                dropped: Arc::new(Dropped {
                    from_client: 3.into(),
                    to_client: 4096.into(),
                }),
            },
        ],
        reset: Policy::Esp { esp32r0: true },
        protocol: Protocol::Auto,
        stats: Arc::default(),
        log,
    });
    reg.upsert(DeviceEntry {
        key: DeviceKey::name("sim#2"),
        name: "sim".into(),
        tty: "sim".into(),
        usb: None,
        port: 4002,
        state: DeviceState::Disabled,
        clients: Vec::new(),
        reset: Policy::UsbJtag,
        protocol: Protocol::Rfc2217,
        stats: Arc::default(),
        log: Arc::new(Mutex::new(LogRing::new(16))),
    });
    let fake = Arc::new(Fake::default());
    // The machine is `pi` (mDNS: `pi-1a2b.local`); the requests below say `Host: pi.local`.
    let p = Portal::new(
        reg.clone(),
        Box::new(fake.clone()),
        IpAddr::from([0, 0, 0, 0]),
    )
    .known_as("pi", "pi-1a2b");
    (p, fake, reg)
}

pub(super) fn call(p: &Portal, method: &str, url: &str, body: &str) -> (u16, Value) {
    let r = p.handle(&HttpRequest {
        method,
        url,
        host: Some("pi.local:8080"),
        remote: Some("192.168.1.9:40000".parse().unwrap()),
        authorization: None,
        content_type: Some("application/json"),
        body: body.as_bytes(),
    });
    let v = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    (r.status, v)
}

/// The body of `GET url`, as text.
fn get_text(p: &Portal, url: &str) -> String {
    let r = p.handle(&HttpRequest {
        method: "GET",
        url,
        host: Some("pi.local:8080"),
        remote: None,
        authorization: None,
        content_type: None,
        body: b"",
    });
    String::from_utf8(r.body).unwrap()
}

#[test]
fn leases_are_granted_listed_shown_and_ended_over_the_api() {
    use crate::daemon::lease::{Book, Expiry};
    let (p, fake, _) = setup();
    let mut book = Book::default();
    book.set_rules(LeasePolicy::Optional, Expiry::Finish);
    let p = p.leasing(Arc::new(Leases::new(book)));
    let dev = "/api/devices/serial%3A0001/lease";
    // The caller's own address by default; the device's URLs come with it.
    let (st, v) = call(&p, "POST", dev, r#"{"seconds": 600}"#);
    assert_eq!(st, 200, "{v}");
    let id = v["lease"]["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 16);
    assert_eq!(v["lease"]["address"], "192.168.1.9");
    assert_eq!(v["lease"]["seconds"], 600);
    assert_eq!(v["url"], "rfc2217://pi.local:4001");
    assert!(fake
        .seen
        .lock()
        .unwrap()
        .iter()
        .any(|r| r.starts_with("Leased")));
    // Another address needs the token (see `leases::tests`).
    let (st, v) = call(&p, "POST", dev, r#"{"address": "10.0.0.9"}"#);
    assert_eq!((st, v["rule"].as_str()), (403, Some("lease")), "{v}");
    for bad in [
        r#"{"seconds": 1}"#,
        r#"{"seconds": "x"}"#,
        r#"{"address": "pi"}"#,
    ] {
        assert_eq!(call(&p, "POST", dev, bad).0, 400, "{bad}");
    }
    // Listed, and shown on the device.
    let (_, v) = call(&p, "GET", dev, "");
    assert_eq!(v["leases"][0]["id"], id.as_str());
    let (_, d) = call(&p, "GET", "/api/devices/serial%3A0001", "");
    assert_eq!(d["leases"][0]["address"], "192.168.1.9");
    assert!(
        d["leases"][0].get("id").is_none(),
        "ids only in the lease list"
    );
    assert!(get_text(&p, "/metrics").contains(
        "serialhub_device_leased{key=\"serial:0001\",name=\"ttyUSB0\",tty=\"/dev/ttyUSB0\",port=\"4001\"} 1\n"
    ));
    // Ended early; a wrong id is a 404; the method is checked.
    assert_eq!(call(&p, "DELETE", &format!("{dev}/nope"), "").0, 404);
    assert_eq!(call(&p, "DELETE", &format!("{dev}/{id}"), "").0, 200);
    assert_eq!(call(&p, "GET", dev, "").1["leases"], json!([]));
    assert_eq!(call(&p, "PUT", dev, "").0, 405);
    // `lease = "off"`: no such endpoint.
    let (p, _, _) = setup();
    let mut book = Book::default();
    book.set_rules(LeasePolicy::Off, Expiry::Finish);
    let p = p.leasing(Arc::new(Leases::new(book)));
    assert_eq!(call(&p, "POST", dev, "{}").0, 404);
}

#[test]
fn access_address_media_type_and_token() {
    use crate::daemon::access::{Allow, Token};
    let (p, fake, _) = setup();
    let p = p.guarded(Access {
        allow: Allow::parse(&["192.168.1.0/24".into()]).unwrap(),
        token: Some(Token::new("0123456789abcdef0123").unwrap()),
        ..Access::default()
    });
    let ask = |remote: &str, method: &str, ctype: Option<&str>, auth: Option<&str>| {
        let r = p.handle(&HttpRequest {
            method,
            url: "/api/start-all",
            host: Some("pi.local:8080"),
            remote: Some(remote.parse().unwrap()),
            authorization: auth,
            content_type: ctype,
            body: b"{}",
        });
        let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        (r.status, v["rule"].as_str().unwrap_or("").to_string())
    };
    let json = Some("application/json; charset=utf-8");
    let good = Some("Bearer 0123456789abcdef0123");
    assert_eq!(ask("10.0.0.9:1", "POST", json, good), (403, "allow".into()));
    assert_eq!(
        ask("192.168.1.9:1", "POST", Some("text/plain"), good),
        (415, "content-type".into())
    );
    assert_eq!(
        ask("192.168.1.9:1", "POST", None, good),
        (415, "content-type".into())
    );
    assert_eq!(
        ask("192.168.1.9:1", "POST", json, None),
        (401, "token".into())
    );
    assert_eq!(
        ask("192.168.1.9:1", "POST", json, Some("Bearer wrong")),
        (401, "token".into())
    );
    assert!(
        fake.seen.lock().unwrap().is_empty(),
        "nothing refused got through"
    );
    assert_eq!(ask("192.168.1.9:1", "POST", json, good).0, 200);
    // Reads stay open to allowed addresses unless `private`.
    assert_eq!(
        ask("192.168.1.9:1", "GET", None, None).0,
        405,
        "routed (start-all is POST)"
    );
    assert_eq!(ask("10.0.0.9:1", "GET", None, None).0, 403);
}

/// DNS rebinding (issue 26): a page whose name was re-pointed at this machine sends its own
/// name as `Host`; it is refused before any route runs, reads and commands alike.
#[test]
fn a_foreign_host_is_refused_with_421_before_any_route() {
    let (p, fake, _) = setup();
    let ask = |p: &Portal, method: &str, url: &str, host: Option<&str>| {
        let r = p.handle(&HttpRequest {
            method,
            url,
            host,
            remote: Some("192.168.1.9:40000".parse().unwrap()),
            authorization: None,
            content_type: Some("application/json"),
            body: b"{}",
        });
        let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        (r.status, v)
    };
    for host in [
        "evil.example:8080",
        "evil.example",
        "pi.evil.example",
        "pi.local.evil.example",
        "evil.example.:8080",
        "pi-1a2b-x.local",
        "notlocalhost",
        "",
        ":8080",
        "pi:",
        "pi:80a",
        "::1",
        "[::1",
        "[evil]:80",
        "127.0.0.1:8080:1",
        "0x7f.1",
    ] {
        for (method, url) in [
            ("POST", "/api/stop-all"),
            ("GET", "/api/devices/serial:0001/log"),
            ("GET", "/api/devices"),
            ("GET", "/"),
        ] {
            let (st, v) = ask(&p, method, url, Some(host));
            assert_eq!(st, 421, "{method} {url} with Host {host:?}: {v}");
            assert_eq!(v["rule"], "host");
        }
    }
    let (_, v) = ask(&p, "POST", "/api/stop-all", Some("Evil.Example:8080"));
    let msg = v["error"].as_str().unwrap();
    assert!(
        msg.contains("evil.example") || msg.contains("Evil.Example"),
        "{msg}"
    );
    assert!(msg.contains("hosts") && msg.contains("[access]"), "{msg}");
    // A Host with markup in it is not echoed.
    let (_, v) = ask(&p, "GET", "/", Some("x\"><script>"));
    assert!(!v["error"].as_str().unwrap().contains("<script>"), "{v}");
    assert!(fake.seen.lock().unwrap().is_empty(), "nothing got through");
    // The machine's own names, IP literals and localhost, in any case, with a trailing dot,
    // with or without a port; no Host at all (HTTP/1.0).
    for host in [
        Some("pi"),
        Some("PI.local:8080"),
        Some("pi.local."),
        Some("pi-1a2b.local"),
        Some("pi-1a2b-7.local:8080"),
        Some("pi-1a2b"),
        Some("localhost:8080"),
        Some("LOCALHOST."),
        Some("app.localhost"),
        Some("127.0.0.1:8080"),
        Some("192.168.1.2"),
        Some("[::1]:8080"),
        Some("[fe80::1%25eth0]"),
        Some("[2001:db8::1]"),
        None,
    ] {
        assert_eq!(
            ask(&p, "POST", "/api/stop-all", host).0,
            200,
            "Host {host:?}"
        );
    }
    // A name of the lab's DNS, once it is configured.
    assert_eq!(
        ask(&p, "GET", "/api/info", Some("pi.lab.example:8080")).0,
        421
    );
    let p = p.guarded(Access {
        hosts: vec!["pi.lab.example".into()],
        ..Access::default()
    });
    for host in ["pi.lab.example:8080", "PI.LAB.EXAMPLE.", "pi.lab.example"] {
        assert_eq!(ask(&p, "GET", "/api/info", Some(host)).0, 200, "{host}");
    }
    assert_eq!(ask(&p, "GET", "/api/info", Some("lab.example")).0, 421);
    // A machine whose host name has dots answers to its first label too.
    let (p, _, _) = setup();
    let p = p.known_as("bench.lab.example", "bench.lab.example-1a2b");
    for host in ["bench", "bench.local", "bench.lab.example"] {
        assert_eq!(ask(&p, "GET", "/api/info", Some(host)).0, 200, "{host}");
    }
    assert_eq!(ask(&p, "GET", "/api/info", Some("pi.local")).0, 421);
}

#[test]
fn device_fields() {
    let (p, _, _) = setup();
    let (s, v) = call(&p, "GET", "/api/devices", "");
    assert_eq!(s, 200);
    let d = &v["devices"][0];
    for k in ["tty", "product", "serial", "port", "running"] {
        assert!(!d[k].is_null(), "{k}");
    }
    assert_eq!(d["url"], "rfc2217://pi.local:4001");
    assert_eq!(
        d["url_ign_set_control"],
        "rfc2217://pi.local:4001?ign_set_control"
    );
    assert_eq!(d["key"], "serial:0001");
    assert_eq!(d["key_kind"], "serial");
    assert_eq!(
        (d["vid"].as_str(), d["pid"].as_str()),
        (Some("10c4"), Some("ea60"))
    );
    assert_eq!(d["reset"], "esp");
    assert_eq!(d["state"], "connected");
    assert_eq!(d["client"]["addr"], "192.168.1.9:50000");
    // Connected 90 s ago (the monotonic clock); `since` is that moment in Unix seconds.
    assert_eq!(d["client"]["seconds"], 90);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let since = d["client"]["since"].as_f64().unwrap();
    assert!((now.as_secs_f64() - 90.0 - since).abs() < 2.0, "{since}");
    assert_eq!(d["protocol"], "auto");
    assert_eq!(d["socket_url"], "socket://pi.local:4001");
    // The recipes tests/e2e/test_recipes.py runs, with the versions they hold for.
    assert_eq!(
        d["platformio"],
        "; platformio.ini: espressif32 6.x (esptool 4.5.1 until 6.11), pioarduino\n\
         upload_port = socket://pi.local:4001\n\
         upload_speed = 921600\n\
         board_upload.before_reset = no_reset\n\
         monitor_port = rfc2217://pi.local:4001\n\
         monitor_speed = 115200\n\
         ; boards whose manifest waits for a new USB port (native-USB S2/S3: lolin_s2_mini, ...) also need:\n\
         ; board_upload.wait_for_upload_port = no\n\
         ; board_upload.use_1200bps_touch = no"
    );
    assert_eq!(
        d["esptool"],
        "esptool --port socket://pi.local:4001 --before no-reset -b 921600 write-flash 0x10000 app.bin   \
         # esptool 5.x; 3.x/4.x: --before no_reset write_flash"
    );
    assert_eq!(
        d["idf"],
        "# ESP-IDF 5.x; with esptool < 4.8 in its environment set CONFIG_ESPTOOLPY_BEFORE_NORESET=y\n\
         idf.py -p socket://pi.local:4001 -b 921600 flash && idf.py -p rfc2217://pi.local:4001 monitor   \
         # monitor resets the board on open; --no-reset does not"
    );
    assert_eq!(
        d["arduino_cli"],
        "# arduino-esp32 3.x whose esptool_py is 4.8 or newer (since Nov 2024); with 4.6: -p rfc2217://pi.local:4001\n\
         arduino-cli upload -p socket://pi.local:4001 --fqbn esp32:esp32:esp32"
    );
    // An RFC 2217-only port: esptool's own resets, no before_reset.
    let only = &v["devices"][1];
    assert_eq!(
        only["arduino_cli"],
        format!(
            "arduino-cli upload -p {} --fqbn esp32:esp32:esp32   # arduino-esp32 3.x",
            only["url"].as_str().unwrap()
        )
    );
    assert!(
        !only["platformio"]
            .as_str()
            .unwrap()
            .contains("before_reset"),
        "{}",
        only["platformio"]
    );
    assert_eq!(v["devices"][1]["reset"], "usb-jtag");
    assert_eq!(v["devices"][1]["protocol"], "rfc2217");
    assert_eq!(v["devices"][1]["socket_url"], Value::Null);
    assert_eq!(v["devices"][1]["running"], false);
    let (_, v) = call(&p, "GET", "/api/discover", "");
    assert_eq!(v["devices"].as_array().unwrap().len(), 1);
}

#[test]
fn per_device_endpoints_and_errors() {
    let (p, fake, _) = setup();
    assert_eq!(call(&p, "GET", "/api/devices/serial%3A0001", "").0, 200);
    assert_eq!(
        call(&p, "GET", "/api/devices/name:sim%232/", "").1["port"],
        4002
    );
    assert_eq!(call(&p, "GET", "/api/devices/%2Fdev%2FttyUSB0", "").0, 200);
    assert_eq!(call(&p, "GET", "/api/devices/nope", "").0, 404);
    assert_eq!(call(&p, "GET", "/api/devices/%zz", "").0, 400);
    assert_eq!(call(&p, "GET", "/api/devices/serial:0001/frob", "").0, 404);
    assert_eq!(call(&p, "GET", "/api/devices/serial:0001/reset", "").0, 405);
    let (s, v) = call(
        &p,
        "POST",
        "/api/devices/serial:0001/reset",
        "{\"to\":\"bootloader\"}",
    );
    assert_eq!((s, v["success"].as_bool()), (200, Some(true)));
    assert_eq!(
        call(&p, "POST", "/api/devices/serial:0001/reset", "{}").0,
        400
    );
    assert_eq!(
        call(&p, "POST", "/api/devices/serial:0001/reset", "{\"to\":1}").0,
        400
    );
    assert_eq!(
        call(&p, "POST", "/api/devices/serial:0001/reset", "{").0,
        400
    );
    assert_eq!(
        call(&p, "POST", "/api/devices/serial:0001/disconnect", "").0,
        200
    );
    let seen = fake.seen.lock().unwrap().clone();
    assert!(
        seen[0].starts_with("Reset(") && seen[0].contains("Bootloader"),
        "{seen:?}"
    );
    assert!(seen[1].starts_with("Disconnect("), "{seen:?}");
    assert_eq!(call(&p, "GET", "/nope", "").1["error"], "Not found");
    assert_eq!(call(&p, "DELETE", "/api/info", "").0, 405);
    assert_eq!(call(&p, "POST", "/metrics", "").0, 405);
}

#[test]
fn compatible_commands() {
    let (p, fake, _) = setup();
    let (s, v) = call(&p, "POST", "/api/start", "{\"tty\":\"/dev/ttyUSB0\"}");
    assert_eq!((s, v["success"].as_bool()), (200, Some(true)));
    assert!(v["message"].is_string());
    let (s, v) = call(&p, "POST", "/api/stop", "{\"tty\":\"/dev/nope\"}");
    assert_eq!((s, v["success"].as_bool()), (404, Some(false)));
    let (s, v) = call(&p, "POST", "/api/start", "{}");
    assert_eq!((s, v["error"].as_str()), (400, Some("Missing tty")));
    assert_eq!(call(&p, "POST", "/api/start", "[1]").0, 400);
    let (s, v) = call(&p, "POST", "/api/start-all", "");
    assert_eq!((s, v["messages"].as_array().unwrap().len()), (200, 2));
    let (_, v) = call(&p, "POST", "/api/stop-all", "");
    assert_eq!(v["messages"], json!([]));
    assert_eq!(fake.seen.lock().unwrap().len(), 4);
    assert_eq!(call(&p, "GET", "/api/start", "").0, 405);
}

#[test]
fn log_follows_a_cursor_and_keeps_characters_whole() {
    let (p, _, reg) = setup();
    let (_, v) = call(&p, "GET", "/api/devices/serial:0001/log", "");
    // "boot #1\r\nh" + é (2 bytes): all whole.
    assert_eq!(v["data"], "boot #1\r\nh\u{e9}");
    assert_eq!(v["next"], 12);
    let e = reg.get(&DeviceKey::serial("0001")).unwrap();
    e.log.lock().unwrap().push(&[b'x', 0xE2, 0x82]); // "x" and 2 of €'s 3 bytes
    let (_, v) = call(&p, "GET", "/api/devices/serial:0001/log?since=12", "");
    assert_eq!(
        (v["data"].as_str(), v["next"].as_u64()),
        (Some("x"), Some(13))
    );
    e.log.lock().unwrap().push(&[0xAC]);
    let (_, v) = call(&p, "GET", "/api/devices/serial:0001/log?since=13", "");
    assert_eq!(
        (v["data"].as_str(), v["next"].as_u64()),
        (Some("€"), Some(16))
    );
    assert_eq!(
        call(&p, "GET", "/api/devices/serial:0001/log?since=x", "").0,
        400
    );
    assert_eq!(complete_utf8_len(&[0xFF]), 1);
    assert_eq!(complete_utf8_len(&[b'a', 0xF0, 0x9F, 0x98]), 1);
    assert_eq!(complete_utf8_len(&[0xF0, 0x9F, 0x98, 0x80]), 4);
}

#[test]
fn url_host_rules() {
    let (p, _, _) = setup();
    let lan: SocketAddr = "192.168.1.9:1".parse().unwrap();
    let lo: SocketAddr = "127.0.0.1:1".parse().unwrap();
    assert_eq!(p.url_host(Some("pi.local:8080"), Some(lan)), "pi.local");
    assert_eq!(p.url_host(Some("[::1]:8080"), Some(lo)), "[::1]");
    assert_eq!(p.url_host(Some("localhost:8080"), Some(lo)), "localhost");
    // A loopback name from elsewhere (an SSH tunnel, a proxy) is not used.
    let h = p.url_host(Some("localhost:8080"), Some(lan));
    assert_ne!(h, "localhost");
    assert!(h.parse::<IpAddr>().is_ok(), "{h}");
    // Anything odd in the header is not echoed.
    assert_ne!(p.url_host(Some("x\"><script>"), Some(lan)), "x\"><script>");
    let pinned = Portal::new(
        Registry::new(),
        Box::new(Arc::new(Fake::default())),
        IpAddr::from([10, 0, 0, 5]),
    );
    assert_eq!(pinned.url_host(None, Some(lan)), "10.0.0.5");
}

#[test]
fn metrics_and_page() {
    let (p, _, reg) = setup();
    let e = reg.get(&DeviceKey::serial("0001")).unwrap();
    Stats::add(&e.stats.bytes_to_client, 42);
    let r = p.handle(&HttpRequest {
        method: "GET",
        url: "/metrics",
        host: None,
        remote: None,
        authorization: None,
        content_type: Some("application/json"),
        body: b"",
    });
    let text = String::from_utf8(r.body).unwrap();
    assert!(text.contains("serialhub_device_bytes_to_client_total{key=\"serial:0001\",name=\"ttyUSB0\",tty=\"/dev/ttyUSB0\",port=\"4001\"} 42\n"), "{text}");
    assert!(text.contains("state=\"connected\"} 1\n"), "{text}");
    assert!(
        text.contains("serialhub_device_client_connected{"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE serialhub_uptime_seconds gauge"),
        "{text}"
    );
    let r = p.handle(&HttpRequest {
        method: "GET",
        url: "/",
        host: Some("pi.local:8080"),
        remote: None,
        authorization: None,
        content_type: Some("application/json"),
        body: b"",
    });
    let page = String::from_utf8(r.body).unwrap();
    assert!(page.contains("<code>rfc2217://pi.local:4001</code>"));
    assert!(page.contains("<code>name:sim#2</code>"));
    assert!(!page.contains("{{"));
}

#[test]
fn decoding() {
    assert_eq!(percent_decode("a%2Fb%3a"), Some("a/b:".into()));
    assert_eq!(percent_decode("%4"), None);
    assert_eq!(host_of("[fe80::1]:80").as_deref(), Some("[fe80::1]"));
    assert_eq!(host_of("pi"), Some("pi".into()));
}
