//! A device's leases over the API: `GET …/lease` lists them, `POST …/lease` grants one,
//! `DELETE …/lease/{id}` ends one; the device's bridge then closes whom they no longer admit.
//! With `lease = "off"` there are none of these endpoints (404).

use std::net::IpAddr;
use std::sync::MutexGuard;

use log::{info, warn};
use serde_json::{json, Value};

use super::reply::json_body;
use super::routes::Call;
use super::view::Urls;
use super::Portal;
use crate::daemon::control::Request;
use crate::daemon::http::HttpResponse;
use crate::daemon::lease::{self, Book, Lease, LeaseError, Policy};
use crate::daemon::registry::DeviceEntry;

/// `GET /api/devices/{key}/lease`: the device's leases, with their ids.
pub(super) fn list(p: &Portal, _: &Call, e: &DeviceEntry) -> HttpResponse {
    let book = match open(p) {
        Ok(b) => b,
        Err(off) => return off,
    };
    let now = lease::unix_now();
    let leases: Vec<Value> = (book.on(&e.key.to_string(), now))
        .map(|l| lease_json(l, now))
        .collect();
    HttpResponse::json(200, &json!({ "leases": leases }))
}

/// `POST /api/devices/{key}/lease {"seconds": N, "address": "10.0.0.7"}`: lease the device
/// (to the caller's own address unless another is named); the answer has the device's URLs.
pub(super) fn grant(p: &Portal, c: &Call, e: &DeviceEntry) -> HttpResponse {
    let mut book = match open(p) {
        Ok(b) => b,
        Err(off) => return off,
    };
    let now = lease::unix_now();
    let v = match json_body(c.req.body) {
        Ok(v) => v,
        Err(e) => return e,
    };
    let seconds = match v.get("seconds") {
        None => lease::DEFAULT_SECONDS,
        Some(s) => match s.as_u64() {
            Some(s) => s,
            None => return HttpResponse::error(400, "`seconds` must be a whole number"),
        },
    };
    let address = match v
        .get("address")
        .map(|a| a.as_str().map(str::parse::<IpAddr>))
    {
        None => c.req.remote.map(|r| r.ip().to_canonical()),
        Some(Some(Ok(ip))) => Some(ip),
        Some(_) => {
            return HttpResponse::error(400, "`address` must be an IP address, like \"10.0.0.7\"")
        }
    };
    let Some(address) = address else {
        return HttpResponse::error(400, "missing field `address`");
    };
    let device = e.key.to_string();
    let granted = book.grant(&device, address, seconds, now, lease_id);
    let lease = match changed(p, e, book, granted) {
        Ok(l) => l,
        Err(refused) => return refused,
    };
    info!(
        "{device}: leased to {} for {} s (lease {})",
        lease.address,
        lease.left(now),
        lease.id
    );
    let urls = Urls::new(&p.host_for(c.req), e.port, e.protocol);
    HttpResponse::json(
        200,
        &json!({
            "success": true,
            "lease": lease_json(&lease, now),
            "url": urls.url,
            "socket_url": urls.socket_url,
        }),
    )
}

/// `DELETE /api/devices/{key}/lease/{id}`: end a lease early.
pub(super) fn release(p: &Portal, c: &Call, e: &DeviceEntry) -> HttpResponse {
    let mut book = match open(p) {
        Ok(b) => b,
        Err(off) => return off,
    };
    let now = lease::unix_now();
    let device = e.key.to_string();
    let released = book.release(&device, c.id.unwrap_or_default(), now);
    let lease = match changed(p, e, book, released) {
        Ok(l) => l,
        Err(refused) => return refused,
    };
    info!("{device}: lease {} of {} ended", lease.id, lease.address);
    HttpResponse::json(
        200,
        &json!({ "success": true, "lease": lease_json(&lease, now) }),
    )
}

/// The lease book, unless leases are off.
fn open(p: &Portal) -> Result<MutexGuard<'_, Book>, HttpResponse> {
    let book = p.leases.book();
    if book.policy == Policy::Off {
        return Err(HttpResponse::error(
            404,
            "leases are off on this server (access.lease)",
        ));
    }
    Ok(book)
}

/// After a grant or a release: the refusal, or the book saved and the device's bridge told
/// (it closes whom the change excludes; not served now: nothing to close).
fn changed(
    p: &Portal,
    e: &DeviceEntry,
    book: MutexGuard<'_, Book>,
    change: Result<Lease, LeaseError>,
) -> Result<Lease, HttpResponse> {
    let lease = match change {
        Ok(l) => l,
        Err(e @ LeaseError::NotFound(_)) => return Err(HttpResponse::error(404, e.to_string())),
        Err(e @ LeaseError::Held { .. }) => return Err(HttpResponse::error(409, e.to_string())),
        Err(e @ LeaseError::Length(_)) => return Err(HttpResponse::error(400, e.to_string())),
    };
    if let Err(e) = book.save() {
        warn!("cannot write the leases: {e}; they will not survive a restart");
    }
    drop(book);
    let _ = p.commands.request(Request::Leased(e.key.clone()));
    Ok(lease)
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
