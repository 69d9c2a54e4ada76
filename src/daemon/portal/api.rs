//! The JSON API's handlers: the old portal's endpoints (`/api/info`, `/api/devices`,
//! `/api/discover`, `/api/start`, `/api/stop`, `/api/start-all`, `/api/stop-all`) and a
//! device's own (`/api/devices/{key}`, its `log`, `reset` and `disconnect`). The leases are in
//! `leases.rs`.

use std::net::Ipv4Addr;

use serde_json::{json, Value};

use super::host::{hostname, local_ipv4};
use super::reply::{json_body, query_u64};
use super::routes::Call;
use super::Portal;
use crate::daemon::control::Request;
use crate::daemon::http::HttpResponse;
use crate::daemon::registry::DeviceEntry;
use crate::protocol::reset::ResetTo;

/// `GET /api/info`: this machine and how many devices it serves.
pub(super) fn info(p: &Portal, c: &Call) -> HttpResponse {
    let host = p.host_for(c.req);
    let all = p.views(&host);
    let count = |f: &dyn Fn(&super::view::DeviceView) -> bool| all.iter().filter(|d| f(d)).count();
    let v = json!({
        "ip": local_ipv4().unwrap_or(Ipv4Addr::LOCALHOST).to_string(),
        "host": host,
        "hostname": hostname(),
        "version": env!("CARGO_PKG_VERSION"),
        "uptime": p.registry.uptime().as_secs(),
        "devices": all.len(),
        "running": count(&|d| d.running()),
        "connected": count(&|d| !d.clients.is_empty()),
    });
    HttpResponse::json(200, &v)
}

/// `GET /api/devices`: every device the daemon knows.
pub(super) fn devices(p: &Portal, c: &Call) -> HttpResponse {
    listed(p, c, false)
}

/// `GET /api/discover`: the devices being served (the same shape as `/api/devices`).
pub(super) fn discover(p: &Portal, c: &Call) -> HttpResponse {
    listed(p, c, true)
}

fn listed(p: &Portal, c: &Call, served_only: bool) -> HttpResponse {
    let devices: Vec<Value> = (p.views(&p.host_for(c.req)).iter())
        .filter(|d| !served_only || d.running())
        .map(|d| d.json())
        .collect();
    HttpResponse::json(200, &json!({ "devices": devices }))
}

/// `POST /api/start {"tty": …}`: serve a device again.
pub(super) fn start(p: &Portal, c: &Call) -> HttpResponse {
    on_tty(p, c, Request::Start)
}

/// `POST /api/stop {"tty": …}`: stop serving a device.
pub(super) fn stop(p: &Portal, c: &Call) -> HttpResponse {
    on_tty(p, c, Request::Stop)
}

fn on_tty(p: &Portal, c: &Call, request: fn(String) -> Request) -> HttpResponse {
    let tty = match json_body(c.req.body) {
        Ok(v) => v.get("tty").and_then(Value::as_str).map(str::to_string),
        Err(e) => return e,
    };
    let Some(tty) = tty.filter(|t| !t.is_empty()) else {
        return HttpResponse::json(400, &json!({ "success": false, "error": "Missing tty" }));
    };
    HttpResponse::command(p.commands.request(request(tty)))
}

/// `POST /api/start-all`.
pub(super) fn start_all(p: &Portal, _: &Call) -> HttpResponse {
    on_all(p, Request::StartAll)
}

/// `POST /api/stop-all`.
pub(super) fn stop_all(p: &Portal, _: &Call) -> HttpResponse {
    on_all(p, Request::StopAll)
}

/// The old portal's answer: one message per device.
fn on_all(p: &Portal, request: Request) -> HttpResponse {
    match p.commands.request(request) {
        Ok(msgs) => {
            let messages: Vec<&str> = msgs.lines().filter(|l| !l.is_empty()).collect();
            HttpResponse::json(200, &json!({ "success": true, "messages": messages }))
        }
        Err(e) => HttpResponse::command(Err(e)),
    }
}

/// `GET /api/devices/{key}`: one device, with its leases.
pub(super) fn device(p: &Portal, c: &Call, e: &DeviceEntry) -> HttpResponse {
    HttpResponse::json(200, &p.view(e, &p.host_for(c.req)).json())
}

/// `GET /api/devices/{key}/log?since=N`: the device's recent output.
pub(super) fn log(_: &Portal, c: &Call, e: &DeviceEntry) -> HttpResponse {
    match query_u64(c.query, "since") {
        Ok(since) => HttpResponse::json(200, &log_json(e, since.unwrap_or(0))),
        Err(e) => HttpResponse::error(400, e),
    }
}

/// `POST /api/devices/{key}/reset {"to": "app" | "bootloader"}`.
pub(super) fn reset(p: &Portal, c: &Call, e: &DeviceEntry) -> HttpResponse {
    let v = match json_body(c.req.body) {
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
        None => return HttpResponse::error(400, "missing field `to` (\"app\" or \"bootloader\")"),
    };
    HttpResponse::command(p.commands.request(Request::Reset(e.key.clone(), to)))
}

/// `POST /api/devices/{key}/disconnect`: close its clients.
pub(super) fn disconnect(p: &Portal, _: &Call, e: &DeviceEntry) -> HttpResponse {
    HttpResponse::command(p.commands.request(Request::Disconnect(e.key.clone())))
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
pub(super) fn complete_utf8_len(b: &[u8]) -> usize {
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
