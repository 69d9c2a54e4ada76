//! The portal: the discovery API, Prometheus metrics and a small web page, over HTTP.
//!
//! Compatible with the old Python portal (`/api/info`, `/api/devices`, `/api/discover`,
//! `/api/start`, `/api/stop`, `/api/start-all`, `/api/stop-all`: same fields, same meanings,
//! more fields added, none renamed), plus per-device endpoints (`/api/devices/{key}`, its
//! `reset`, `disconnect` and `log`) and `/metrics`.
//!
//! It never blocks a bridge: it reads [`Registry::snapshot`] (one short lock) and sends
//! commands to the supervisor, which passes them to the bridges through their wake fds.
//! The bounded server in [`crate::daemon::http`] carries the requests; the routing
//! ([`Portal::handle`]) takes a plain [`HttpRequest`] so it is tested without sockets.
//!
//! Why one file of ~1,500 lines: routes, JSON, the page and the metrics render the same device
//! view; issue 21 splits it into a route table and one typed view (not done yet).

use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use log::{info, warn};
use serde_json::{json, Map, Value};

use crate::daemon::access::Refusal;
use crate::daemon::config::Access;
use crate::daemon::control::{Handle, Reply, Request, RequestError};
use crate::daemon::http::{self, Handler, HttpRequest, HttpResponse, Limits};
use crate::daemon::lease::{self, Lease, LeaseError, Leases, Policy as LeasePolicy};
use crate::daemon::peerlog::{suppressed_note, PeerLog, Verdict};
use crate::daemon::registry::{ClientInfo, DeviceEntry, DeviceState, Registry, Role, Stats};
use crate::protocol::reset::ResetTo;
use crate::protocol::Protocol;

/// Request bodies larger than this are refused with 413 (at most this + 1 bytes are read).
pub(crate) const MAX_BODY: usize = 64 * 1024;

/// The baud rate in the suggested flash commands: esptool's usual fast rate, which the
/// server switches the UART to on ESP devices.
const FLASH_BAUD: u32 = 921_600;

/// Where the suggested esptool command writes `app.bin`: ESP-IDF's default offset of the
/// factory app partition.
const APP_OFFSET: u32 = 0x10000;

const PAGE: &str = include_str!("portal/index.html");

/// What the portal asks of the daemon; the supervisor in production, a fake in tests.
pub(crate) trait Commands: Send + Sync + 'static {
    fn request(&self, req: Request) -> Reply;
}

impl Commands for Handle {
    fn request(&self, req: Request) -> Reply {
        Handle::request(self, req)
    }
}

/// Bind the portal's address (done before any device is started, so a busy port stops the
/// daemon at once).
pub(crate) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr)
}

/// Serve the portal on `listener` until the process exits. `device_ip` is the address the
/// device ports listen on (the `bind` key): the URLs' host when it is a specific one.
pub(crate) fn spawn(
    listener: TcpListener,
    device_ip: IpAddr,
    registry: Arc<Registry>,
    commands: impl Commands,
    connections: usize,
    access: Access,
    leases: Arc<Leases>,
) -> io::Result<JoinHandle<()>> {
    let addr = listener.local_addr()?;
    let mut portal = Portal::new(registry, Box::new(commands), device_ip)
        .guarded(access)
        .leasing(leases);
    portal.port = addr.port();
    info!("portal listening on http://{addr}");
    let limits = Limits {
        connections,
        ..Limits::portal(MAX_BODY)
    };
    http::spawn(listener, portal, limits)
}

impl Handler for Portal {
    fn handle(&self, req: &HttpRequest) -> HttpResponse {
        Portal::handle(self, req)
    }

    fn refuse(&self, status: u16, why: &str) -> HttpResponse {
        match status {
            413 => HttpResponse::error(
                413,
                format!("request body larger than {} KiB", MAX_BODY / 1024),
            ),
            _ => HttpResponse::error(status, why),
        }
    }
}

impl HttpResponse {
    fn json(status: u16, v: &Value) -> HttpResponse {
        let mut body = serde_json::to_vec(v).unwrap_or_default();
        body.push(b'\n');
        HttpResponse {
            status,
            content_type: "application/json",
            body,
            allow: None,
        }
    }

    fn error(status: u16, msg: impl Into<String>) -> HttpResponse {
        HttpResponse::json(status, &json!({ "error": msg.into() }))
    }

    /// The old portal's command answers: `success` plus `message`, and `error` on failure.
    fn command(reply: Reply) -> HttpResponse {
        match reply {
            Ok(msg) => HttpResponse::json(200, &json!({ "success": true, "message": msg })),
            Err(e) => {
                let status = match e {
                    RequestError::NotFound(_) => 404,
                    RequestError::Failed(_) => 409,
                };
                let msg = e.to_string();
                HttpResponse::json(
                    status,
                    &json!({ "success": false, "error": msg, "message": msg }),
                )
            }
        }
    }

    fn method_not_allowed(allow: &'static str) -> HttpResponse {
        let mut r = HttpResponse::error(405, format!("method not allowed; use {allow}"));
        r.allow = Some(allow);
        r
    }
}

pub(crate) struct Portal {
    registry: Arc<Registry>,
    commands: Box<dyn Commands>,
    device_ip: IpAddr,
    access: Access,
    /// The port the portal listens on, for the refusal log line (never the client's `Host`).
    port: u16,
    /// Refusals each address may cause in the log (one a minute).
    refusals: std::cell::RefCell<PeerLog>,
    /// Who holds which device; the portal grants and releases.
    leases: Arc<Leases>,
}

impl Portal {
    pub(crate) fn new(
        registry: Arc<Registry>,
        commands: Box<dyn Commands>,
        device_ip: IpAddr,
    ) -> Portal {
        Portal {
            registry,
            commands,
            device_ip,
            access: Access::default(),
            port: 0,
            refusals: std::cell::RefCell::new(PeerLog::with_burst(1)),
            leases: Arc::default(),
        }
    }

    /// The lease book it grants from (`[access] lease`).
    pub(crate) fn leasing(mut self, leases: Arc<Leases>) -> Portal {
        self.leases = leases;
        self
    }

    /// Who may use the portal (`[access]`).
    pub(crate) fn guarded(mut self, access: Access) -> Portal {
        self.access = access;
        self
    }

    /// The checks every request passes before it is routed: the address, the media type of a
    /// POST (browsers send cross-site forms as form data or text, never as JSON without
    /// asking first), and the token for what needs one.
    fn guard(&self, req: &HttpRequest) -> Option<HttpResponse> {
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
        if let Verdict::Log { suppressed } = self
            .refusals
            .borrow_mut()
            .check(ip, std::time::Instant::now())
        {
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

    /// Route one request.
    pub(crate) fn handle(&self, req: &HttpRequest) -> HttpResponse {
        if let Some(refused) = self.guard(req) {
            return refused;
        }
        let (path, query) = req.url.split_once('?').unwrap_or((req.url, ""));
        let path = match path.strip_suffix('/') {
            Some(p) if !p.is_empty() => p,
            _ => path,
        };
        let get = matches!(req.method, "GET" | "HEAD");
        let post = req.method == "POST";
        let host = || self.url_host(req.host, req.remote);
        match path {
            "/" | "/index.html" => {
                if !get {
                    return HttpResponse::method_not_allowed("GET, HEAD");
                }
                return HttpResponse {
                    status: 200,
                    content_type: "text/html; charset=utf-8",
                    body: self.page(&host(), req.host).into_bytes(),
                    allow: None,
                };
            }
            "/metrics" => {
                if !get {
                    return HttpResponse::method_not_allowed("GET, HEAD");
                }
                return HttpResponse {
                    status: 200,
                    content_type: "text/plain; version=0.0.4; charset=utf-8",
                    body: self.metrics().into_bytes(),
                    allow: None,
                };
            }
            "/api/info" | "/api/devices" | "/api/discover" => {
                if !get {
                    return HttpResponse::method_not_allowed("GET, HEAD");
                }
                let v = match path {
                    "/api/info" => self.info(&host()),
                    "/api/devices" => self.devices(&host(), false),
                    _ => self.devices(&host(), true),
                };
                return HttpResponse::json(200, &v);
            }
            "/api/start" | "/api/stop" => {
                if !post {
                    return HttpResponse::method_not_allowed("POST");
                }
                let tty = match json_body(req.body) {
                    Ok(v) => v.get("tty").and_then(Value::as_str).map(str::to_string),
                    Err(e) => return e,
                };
                let Some(tty) = tty.filter(|t| !t.is_empty()) else {
                    return HttpResponse::json(
                        400,
                        &json!({ "success": false, "error": "Missing tty" }),
                    );
                };
                let req = if path == "/api/start" {
                    Request::Start(tty)
                } else {
                    Request::Stop(tty)
                };
                return HttpResponse::command(self.commands.request(req));
            }
            "/api/start-all" | "/api/stop-all" => {
                if !post {
                    return HttpResponse::method_not_allowed("POST");
                }
                let req = if path == "/api/start-all" {
                    Request::StartAll
                } else {
                    Request::StopAll
                };
                return match self.commands.request(req) {
                    Ok(msgs) => {
                        let messages: Vec<&str> = msgs.lines().filter(|l| !l.is_empty()).collect();
                        HttpResponse::json(200, &json!({ "success": true, "messages": messages }))
                    }
                    Err(e) => HttpResponse::command(Err(e)),
                };
            }
            _ => {}
        }
        let Some(rest) = path.strip_prefix("/api/devices/") else {
            return HttpResponse::error(404, "Not found");
        };
        let (raw_key, action) = match rest.split_once('/') {
            Some((k, a)) => (k, Some(a)),
            None => (rest, None),
        };
        let allow = match action {
            None | Some("log") => "GET, HEAD",
            Some("reset" | "disconnect") => "POST",
            Some("lease") => "GET, HEAD, POST",
            Some(a) if a.starts_with("lease/") => "DELETE",
            Some(_) => return HttpResponse::error(404, "Not found"),
        };
        if !allow.split(", ").any(|m| m == req.method) {
            return HttpResponse::method_not_allowed(allow);
        }
        let Some(key) = percent_decode(raw_key) else {
            return HttpResponse::error(400, "bad percent-encoding in the device key");
        };
        let Some(entry) = self.find(&key) else {
            return HttpResponse::error(404, format!("no device {key}"));
        };
        match action {
            None => HttpResponse::json(200, &self.device_json(&entry, &host())),
            Some("log") => match query_u64(query, "since") {
                Ok(since) => HttpResponse::json(200, &log_json(&entry, since.unwrap_or(0))),
                Err(e) => HttpResponse::error(400, e),
            },
            Some("reset") => {
                let v = match json_body(req.body) {
                    Ok(v) => v,
                    Err(e) => return e,
                };
                let to = match v.get("to").and_then(Value::as_str) {
                    Some("app") => ResetTo::App,
                    Some("bootloader") => ResetTo::Bootloader,
                    Some(other) => {
                        return HttpResponse::error(
                            400,
                            format!("`to` must be \"app\" or \"bootloader\", not {other:?}"),
                        )
                    }
                    None => {
                        return HttpResponse::error(
                            400,
                            "missing field `to` (\"app\" or \"bootloader\")",
                        )
                    }
                };
                HttpResponse::command(self.commands.request(Request::Reset(entry.key, to)))
            }
            Some("disconnect") => {
                HttpResponse::command(self.commands.request(Request::Disconnect(entry.key)))
            }
            Some(lease) => self.lease(req, &entry, lease.strip_prefix("lease/"), &host()),
        }
    }

    /// A device as the API shows it, with its leases (who holds it, until when; the ids
    /// are in `GET …/lease`).
    fn device_json(&self, e: &DeviceEntry, host: &str) -> Value {
        let mut d = device_json(e, host);
        let now = lease::unix_now();
        let key = e.key.to_string();
        let leases: Vec<Value> = (self.leases.book().on(&key, now))
            .map(|l| json!({ "address": l.address.to_string(), "expires": l.expires, "seconds": l.left(now) }))
            .collect();
        d["leases"] = Value::from(leases);
        d
    }

    /// `GET …/lease` lists the device's leases, `POST …/lease` grants one, `DELETE
    /// …/lease/{id}` ends one; the device's bridge then closes whom they no longer admit.
    fn lease(
        &self,
        req: &HttpRequest,
        entry: &DeviceEntry,
        id: Option<&str>,
        host: &str,
    ) -> HttpResponse {
        let now = lease::unix_now();
        let device = entry.key.to_string();
        let mut book = self.leases.book();
        if book.policy == LeasePolicy::Off {
            return HttpResponse::error(404, "leases are off on this server (access.lease)");
        }
        let changed = match (req.method, id) {
            ("GET" | "HEAD", _) => {
                let leases: Vec<Value> =
                    book.on(&device, now).map(|l| lease_json(l, now)).collect();
                return HttpResponse::json(200, &json!({ "leases": leases }));
            }
            ("DELETE", Some(id)) => book.release(&device, id, now),
            _ => {
                let v = match json_body(req.body) {
                    Ok(v) => v,
                    Err(e) => return e,
                };
                let seconds = match v.get("seconds") {
                    None => lease::DEFAULT_SECONDS,
                    Some(s) => match s.as_u64() {
                        Some(s) => s,
                        None => {
                            return HttpResponse::error(400, "`seconds` must be a whole number")
                        }
                    },
                };
                let address = match v
                    .get("address")
                    .map(|a| a.as_str().map(str::parse::<IpAddr>))
                {
                    None => req.remote.map(|r| r.ip().to_canonical()),
                    Some(Some(Ok(ip))) => Some(ip),
                    Some(_) => {
                        return HttpResponse::error(
                            400,
                            "`address` must be an IP address, like \"10.0.0.7\"",
                        )
                    }
                };
                let Some(address) = address else {
                    return HttpResponse::error(400, "missing field `address`");
                };
                book.grant(&device, address, seconds, now, lease_id)
            }
        };
        let lease = match changed {
            Ok(l) => l,
            Err(e @ LeaseError::NotFound(_)) => return HttpResponse::error(404, e.to_string()),
            Err(e @ LeaseError::Held { .. }) => return HttpResponse::error(409, e.to_string()),
            Err(e @ LeaseError::Length(_)) => return HttpResponse::error(400, e.to_string()),
        };
        if let Err(e) = book.save() {
            warn!("cannot write the leases: {e}; they will not survive a restart");
        }
        drop(book);
        // The bridge closes whom the change excludes (not served now: nothing to close).
        let _ = self.commands.request(Request::Leased(entry.key.clone()));
        if req.method == "DELETE" {
            info!("{device}: lease {} of {} ended", lease.id, lease.address);
            return HttpResponse::json(
                200,
                &json!({ "success": true, "lease": lease_json(&lease, now) }),
            );
        }
        info!(
            "{device}: leased to {} for {} s (lease {})",
            lease.address,
            lease.left(now),
            lease.id
        );
        let d = device_json(entry, host);
        HttpResponse::json(
            200,
            &json!({
                "success": true,
                "lease": lease_json(&lease, now),
                "url": d["url"],
                "socket_url": d["socket_url"],
            }),
        )
    }

    /// A device by its key (`serial:0123`), its node (`/dev/ttyUSB0`) or its name.
    fn find(&self, what: &str) -> Option<DeviceEntry> {
        let all = self.registry.snapshot();
        let pos = all
            .iter()
            .position(|e| e.key.to_string() == what)
            .or_else(|| all.iter().position(|e| e.tty == what))
            .or_else(|| all.iter().position(|e| e.name == what))?;
        all.into_iter().nth(pos)
    }

    /// The host to put in device URLs: what the HTTP client used to reach us, unless that is
    /// a loopback name while the client came from elsewhere (then it would point at the
    /// client itself); else the devices' bind address, else this machine's first address.
    pub(crate) fn url_host(&self, host_header: Option<&str>, remote: Option<SocketAddr>) -> String {
        let remote_is_local = remote.is_none_or(|r| r.ip().is_loopback());
        if let Some(h) = host_header.and_then(host_of) {
            if remote_is_local || !is_loopback_name(&h) {
                return h;
            }
        }
        if !self.device_ip.is_unspecified() && (remote_is_local || !self.device_ip.is_loopback()) {
            return url_ip(self.device_ip);
        }
        url_ip(IpAddr::V4(local_ipv4().unwrap_or(Ipv4Addr::LOCALHOST)))
    }

    fn info(&self, host: &str) -> Value {
        let all = self.registry.snapshot();
        let count = |f: &dyn Fn(&DeviceEntry) -> bool| all.iter().filter(|e| f(e)).count();
        json!({
            "ip": local_ipv4().unwrap_or(Ipv4Addr::LOCALHOST).to_string(),
            "host": host,
            "hostname": hostname(),
            "version": env!("CARGO_PKG_VERSION"),
            "uptime": self.registry.uptime().as_secs(),
            "devices": all.len(),
            "running": count(&|e| running(&e.state)),
            "connected": count(&|e| !e.clients.is_empty()),
        })
    }

    fn devices(&self, host: &str, served_only: bool) -> Value {
        let devices: Vec<Value> = self
            .registry
            .snapshot()
            .iter()
            .filter(|e| !served_only || running(&e.state))
            .map(|e| self.device_json(e, host))
            .collect();
        json!({ "devices": devices })
    }

    fn metrics(&self) -> String {
        let all = self.registry.snapshot();
        let mut out = String::new();
        let mut family =
            |name: &str, kind: &str, help: &str, rows: &mut dyn Iterator<Item = String>| {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
                for r in rows {
                    let _ = writeln!(out, "{name}{r}");
                }
            };
        let labels = |e: &DeviceEntry| {
            format!(
                "key=\"{}\",name=\"{}\",tty=\"{}\",port=\"{}\"",
                label(&e.key.to_string()),
                label(&e.name),
                label(&e.tty),
                e.port
            )
        };
        family(
            "serialhub_uptime_seconds",
            "gauge",
            "Seconds since the daemon started.",
            &mut std::iter::once(format!(" {}", self.registry.uptime().as_secs_f64())),
        );
        family(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory of the daemon (VmRSS).",
            &mut rss_bytes().map(|b| format!(" {b}")).into_iter(),
        );
        family(
            "serialhub_devices",
            "gauge",
            "Devices the daemon knows.",
            &mut std::iter::once(format!(" {}", all.len())),
        );
        type Counter = fn(&Stats) -> u64;
        let counters: [(&str, &str, Counter); 7] = [
            (
                "serialhub_device_bytes_to_device_total",
                "Bytes from clients written to the device.",
                |s| Stats::get(&s.bytes_to_device),
            ),
            (
                "serialhub_device_bytes_to_client_total",
                "Bytes from the device sent to clients.",
                |s| Stats::get(&s.bytes_to_client),
            ),
            (
                "serialhub_device_connects_total",
                "Client connections accepted.",
                |s| Stats::get(&s.connects),
            ),
            (
                "serialhub_device_resets_total",
                "Resets played (client-started and requested).",
                |s| Stats::get(&s.resets),
            ),
            (
                "serialhub_device_observer_bytes_dropped_total",
                "Bytes observers wrote, dropped (only the client in control reaches the device).",
                |s| Stats::get(&s.observer_bytes_dropped),
            ),
            (
                "serialhub_device_observer_output_missed_total",
                "Device output observers missed by not reading fast enough.",
                |s| Stats::get(&s.observer_output_missed),
            ),
            (
                "serialhub_device_lease_refusals_total",
                "Connections refused for want of a lease.",
                |s| Stats::get(&s.lease_refusals),
            ),
        ];
        for (name, help, get) in counters {
            family(
                name,
                "counter",
                help,
                &mut all
                    .iter()
                    .map(|e| format!("{{{}}} {}", labels(e), get(&e.stats))),
            );
        }
        family(
            "serialhub_device_client_connected",
            "gauge",
            "1 while a client is connected.",
            &mut all
                .iter()
                .map(|e| format!("{{{}}} {}", labels(e), u8::from(!e.clients.is_empty()))),
        );
        family(
            "serialhub_device_clients",
            "gauge",
            "Connected clients by role: the one in control, and observers.",
            &mut all.iter().flat_map(|e| {
                let l = labels(e);
                [Role::Control, Role::Observe].into_iter().map(move |r| {
                    let n = e.clients.iter().filter(|c| c.role == r).count();
                    format!("{{{l},role=\"{}\"}} {n}", r.as_str())
                })
            }),
        );
        let now = lease::unix_now();
        let book = self.leases.book();
        family(
            "serialhub_device_leased",
            "gauge",
            "1 while the device is leased to an address.",
            &mut all.iter().map(|e| {
                let leased = book.on(&e.key.to_string(), now).next().is_some();
                format!("{{{}}} {}", labels(e), u8::from(leased))
            }),
        );
        drop(book);
        const STATES: [&str; 7] = [
            "absent",
            "starting",
            "idle",
            "connected",
            "flapping",
            "disabled",
            "error",
        ];
        family(
            "serialhub_device_state",
            "gauge",
            "The device's state (1 for the current one).",
            &mut all.iter().flat_map(|e| {
                let l = labels(e);
                let now = e.state.as_str();
                STATES
                    .iter()
                    .map(move |s| format!("{{{l},state=\"{s}\"}} {}", u8::from(*s == now)))
            }),
        );
        out
    }

    /// The web page, with the device table already filled in (it works without JavaScript;
    /// the script then keeps it up to date and adds the buttons).
    fn page(&self, host: &str, host_header: Option<&str>) -> String {
        let mut rows = String::new();
        let all = self.registry.snapshot();
        for e in &all {
            let d = self.device_json(e, host);
            let s = |k: &str| html(d[k].as_str().unwrap_or(""));
            let leased = match d["leases"][0]["address"].as_str() {
                Some(a) => format!(" <small>(leased to {})</small>", html(a)),
                None => String::new(),
            };
            let client = match e.clients.split_first() {
                None => "—".to_string(),
                Some((c, [])) => html(&c.addr.to_string()),
                Some((c, observers)) => format!(
                    "{} <small>(+{} observing)</small>",
                    html(&c.addr.to_string()),
                    observers.len()
                ),
            };
            let _ = writeln!(
                rows,
                "<tr><td data-l=\"Name\">{}</td><td data-l=\"Product\">{}</td><td data-l=\"Serial\">{}</td>\
                 <td data-l=\"Key\"><code>{}</code></td><td data-l=\"Port\">{}</td>\
                 <td data-l=\"State\"><span class=\"st st-{}\">{}</span></td><td data-l=\"Client\">{}</td>\
                 <td data-l=\"URL\"><code>{}</code></td></tr>",
                s("name"),
                s("product"),
                s("serial"),
                s("key"),
                e.port,
                e.state.as_str(),
                e.state.as_str(),
                client + &leased,
                s("url"),
            );
        }
        if all.is_empty() {
            rows.push_str("<tr><td colspan=\"8\">No devices yet.</td></tr>\n");
        }
        PAGE.replace("{{ROWS}}", &rows)
            .replace("{{HOST}}", &html(host))
            .replace("{{HOSTNAME}}", &html(&hostname()))
            .replace("{{PORTAL_PORT}}", &portal_port(host_header))
            .replace("{{VERSION}}", env!("CARGO_PKG_VERSION"))
    }
}

fn json_body(body: &[u8]) -> Result<Value, HttpResponse> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Map::new()));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(HttpResponse::error(400, "the body must be a JSON object")),
        Err(e) => Err(HttpResponse::error(400, format!("invalid JSON: {e}"))),
    }
}

/// `name=N` from a query string; `Ok(None)` when absent.
fn query_u64(query: &str, name: &str) -> Result<Option<u64>, String> {
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == name {
            return v
                .parse()
                .map(Some)
                .map_err(|_| format!("`{name}` must be a byte offset (an integer), not {v:?}"));
        }
    }
    Ok(None)
}

/// Decode `%XX` escapes; `None` for malformed ones or text that is not UTF-8.
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Served: the device's port is listening (`running` in the old portal's terms).
fn running(s: &DeviceState) -> bool {
    matches!(
        s,
        DeviceState::Starting | DeviceState::Idle | DeviceState::Connected
    )
}

/// One lease as the API shows it.
fn lease_json(l: &Lease, now: u64) -> Value {
    json!({
        "id": l.id,
        "device": l.device,
        "address": l.address.to_string(),
        "granted": l.granted,
        "expires": l.expires,
        "seconds": l.left(now),
    })
}

/// A lease's id: random, so no one ends another's lease by guessing.
fn lease_id() -> String {
    crate::daemon::access::new_token().map_or_else(
        |_| format!("{:x}", lease::unix_now() ^ u64::from(std::process::id())),
        |t| t[..16].to_string(),
    )
}

/// One connected client: who, since when, its role, what it lost while observing.
fn client_json(c: &ClientInfo) -> Value {
    // `seconds` from the monotonic clock, so a wall-clock step cannot change it; `since`
    // (Unix seconds) is the wall clock now minus that, so it follows the step instead.
    let connected_for = c.since.elapsed();
    let since = SystemTime::now()
        .checked_sub(connected_for)
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0.0, |d| d.as_secs_f64());
    json!({
        "addr": c.addr.to_string(),
        "since": since.floor(),
        "seconds": connected_for.as_secs(),
        "role": c.role.as_str(),
        "dropped_in": Stats::get(&c.dropped.from_client),
        "dropped_out": Stats::get(&c.dropped.to_client),
    })
}

/// One device as JSON: the old portal's fields first, then ours.
pub(crate) fn device_json(e: &DeviceEntry, host: &str) -> Value {
    let usb = e.usb.as_ref();
    let rfc2217 = format!("rfc2217://{host}:{}", e.port);
    let socket = format!("socket://{host}:{}", e.port);
    // `url` is what works for every tool on this port; `socket_url` the fast path for
    // esptool (the server resets and changes baud for it on ESP devices).
    let (url, socket_url) = match e.protocol {
        Protocol::Auto => (rfc2217.as_str(), Some(socket.as_str())),
        Protocol::Rfc2217 => (rfc2217.as_str(), None),
        Protocol::Raw => (socket.as_str(), Some(socket.as_str())),
    };
    // The server follows esptool's loader protocol on every device, so `socket://` is the
    // flash path wherever the port speaks raw. esptool cannot reset over a socket (4.5.1,
    // which PlatformIO bundles, even crashes trying): the recipes say `--before no-reset` in
    // the form each tool takes, and the server enters the bootloader for it.
    let flash_url = socket_url.unwrap_or(url);
    let on_socket = socket_url.is_some();
    let before = if on_socket { " --before no-reset" } else { "" };
    let pio_before = if on_socket {
        "\nboard_upload.before_reset = no_reset"
    } else {
        ""
    };
    let clients: Vec<Value> = e.clients.iter().map(client_json).collect();
    let client = clients.first().cloned();
    let problem = match &e.state {
        DeviceState::Error(m) => Some(m.as_str()),
        _ => None,
    };
    json!({
        "tty": e.tty,
        "product": usb.and_then(|u| u.product.clone()).unwrap_or_else(|| e.name.clone()),
        "serial": usb.and_then(|u| u.serial.clone()).unwrap_or_default(),
        "port": e.port,
        "running": running(&e.state),
        "url": url,
        "url_ign_set_control": format!("{rfc2217}?ign_set_control"),
        "socket_url": socket_url,
        "key": e.key.to_string(),
        "key_kind": serde_json::to_value(e.key.kind).unwrap_or(Value::Null),
        "name": e.name,
        "vid": usb.and_then(|u| u.id).map(|id| format!("{:04x}", id.vid)),
        "pid": usb.and_then(|u| u.id).map(|id| format!("{:04x}", id.pid)),
        "manufacturer": usb.and_then(|u| u.manufacturer.clone()),
        "usb_path": usb.and_then(|u| u.path.clone()),
        "interface": usb.and_then(|u| u.interface),
        "reset": e.reset.name(),
        "protocol": e.protocol.as_str(),
        "state": e.state.as_str(),
        "problem": problem,
        "client": client,
        "clients": clients,
        "bytes_to_device": Stats::get(&e.stats.bytes_to_device),
        "bytes_to_client": Stats::get(&e.stats.bytes_to_client),
        "connects": Stats::get(&e.stats.connects),
        "resets": Stats::get(&e.stats.resets),
        "esptool": format!("esptool --port {flash_url}{before} -b {FLASH_BAUD} write-flash {APP_OFFSET:#x} app.bin"),
        "idf": if flash_url == url {
            format!("idf.py -p {url} flash monitor")
        } else {
            format!("idf.py -p {flash_url} -b {FLASH_BAUD} flash && idf.py -p {url} monitor")
        },
        "platformio": format!("upload_port = {flash_url}\nupload_speed = {FLASH_BAUD}{pio_before}\nmonitor_port = {url}"),
    })
}

/// The device's output from byte offset `since`: as text (invalid UTF-8 shown as U+FFFD), a
/// character cut at the end is left for the next read. `from` is where `data` starts (later
/// than `since` when older bytes were dropped), `next` the offset to ask for next.
fn log_json(e: &DeviceEntry, since: u64) -> Value {
    let (bytes, total) = match e.log.lock() {
        Ok(l) => l.read_since(since),
        Err(p) => p.into_inner().read_since(since),
    };
    let from = total - bytes.len() as u64;
    let keep = complete_utf8_len(&bytes);
    json!({
        "data": String::from_utf8_lossy(&bytes[..keep]),
        "from": from,
        "next": from + keep as u64,
        "total": total,
    })
}

/// The length of `b` without a UTF-8 sequence cut off at its end.
fn complete_utf8_len(b: &[u8]) -> usize {
    for back in 1..=3.min(b.len()) {
        let i = b.len() - back;
        let c = b[i];
        if c & 0xC0 == 0x80 {
            continue; // a continuation byte: look further back for the lead
        }
        let need = match c {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => 1,
        };
        return if need > back { i } else { b.len() };
    }
    b.len()
}

/// The host part of a `Host` header (`name`, `1.2.3.4`, `[::1]`), if it is one we may
/// echo into URLs and the page.
fn host_of(header: &str) -> Option<String> {
    let h = header.trim();
    let host = if h.starts_with('[') {
        &h[..=h.find(']')?]
    } else {
        match h.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|c| c.is_ascii_digit()) => name,
            _ => h,
        }
    };
    let ok = !host.is_empty()
        && host
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b".-_:[]".contains(&c));
    ok.then(|| host.to_string())
}

/// `:PORT` from a `Host` header, or nothing.
fn portal_port(header: Option<&str>) -> String {
    header
        .and_then(|h| h.trim().rsplit_once(':'))
        .filter(|(h, p)| {
            !h.ends_with(':') && !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit())
        })
        .map_or_else(String::new, |(_, p)| format!(":{p}"))
}

fn is_loopback_name(host: &str) -> bool {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    if h == "localhost" || h.ends_with(".localhost") {
        return true;
    }
    h.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified())
}

fn url_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// This machine's first non-loopback IPv4 address on an interface that is up (the old
/// portal's `hostname -I`).
pub(crate) fn local_ipv4() -> Option<Ipv4Addr> {
    use nix::net::if_::InterfaceFlags;
    nix::ifaddrs::getifaddrs()
        .ok()?
        .filter(|a| {
            a.flags.contains(InterfaceFlags::IFF_UP)
                && !a.flags.contains(InterfaceFlags::IFF_LOOPBACK)
        })
        .filter_map(|a| a.address?.as_sockaddr_in().map(|s| s.ip()))
        .find(|ip| !ip.is_loopback() && !ip.is_unspecified())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// VmRSS from /proc/self/status, in bytes.
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A Prometheus label value.
fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::assign::DeviceKey;
    use crate::daemon::identity::{UsbId, UsbInfo};
    use crate::daemon::registry::{Dropped, LogRing};
    use crate::protocol::reset::Policy;
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    /// Records requests and answers them from a script.
    #[derive(Default)]
    struct Fake {
        seen: Mutex<Vec<String>>,
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

    fn setup() -> (Portal, Arc<Fake>, Arc<Registry>) {
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
        let p = Portal::new(
            reg.clone(),
            Box::new(fake.clone()),
            IpAddr::from([0, 0, 0, 0]),
        );
        (p, fake, reg)
    }

    fn call(p: &Portal, method: &str, url: &str, body: &str) -> (u16, Value) {
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
        // Another address is told who holds it.
        let (st, v) = call(&p, "POST", dev, r#"{"address": "10.0.0.9"}"#);
        assert_eq!(st, 409, "{v}");
        assert!(v["error"].as_str().unwrap().contains("192.168.1.9"), "{v}");
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
        assert!(p
            .metrics()
            .contains("serialhub_device_leased{key=\"serial:0001\""));
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
        assert_eq!(
            d["platformio"],
            "upload_port = socket://pi.local:4001\nupload_speed = 921600\nboard_upload.before_reset = no_reset\nmonitor_port = rfc2217://pi.local:4001"
        );
        assert_eq!(
            d["esptool"],
            "esptool --port socket://pi.local:4001 --before no-reset -b 921600 write-flash 0x10000 app.bin"
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
}
