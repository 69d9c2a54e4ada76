//! A device's leases over the API: `GET …/lease` lists them, `POST …/lease` grants one,
//! `DELETE …/lease/{id}` ends one; the device's bridge then closes whom they no longer admit.
//! With `lease = "off"` there are none of these endpoints (404).
//!
//! Who may do what (a lease drops every other client of the device, so it is not for anyone
//! to hand out): a peer leases for its own address only; naming another `address` needs the
//! API token (`access.token_file`; with a token every change needs it anyway). A lease's id,
//! which ends it, is shown only to its holder and to the token's bearer; ending another
//! address's lease needs the token. Every change is an fsync of `leases.json` and a log
//! line, so each peer (an IPv6 /64 counting as one) has a budget of [`CHANGES`] a minute,
//! charged before the work; beyond it, 429 with `Retry-After`.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::MutexGuard;
use std::time::{Duration, Instant};

use log::{info, warn};
use serde_json::{json, Value};

use super::reply::json_body;
use super::routes::Call;
use super::view::Urls;
use super::Portal;
use crate::daemon::control::Request;
use crate::daemon::http::HttpResponse;
use crate::daemon::lease::{self, Asker, Book, Lease, LeaseError, Policy};
use crate::daemon::peerlog::{Budget, PeerKey, Spend};
use crate::daemon::registry::DeviceEntry;

/// Lease changes (grants and releases, refused ones included) one peer may ask for per
/// [`CHANGES_WINDOW`]: plenty for `serialhub lease` in a CI loop (two a job), few enough
/// that a flood costs at most this many fsyncs and log lines a minute per peer (and
/// [`crate::daemon::peerlog::Budget`] tracks a bounded number of peers).
pub(super) const CHANGES: u32 = 12;
pub(super) const CHANGES_WINDOW: Duration = Duration::from_secs(60);

/// The budget the portal keeps for lease changes.
pub(super) fn budget() -> Budget {
    Budget::new(CHANGES, CHANGES_WINDOW)
}

/// `GET /api/devices/{key}/lease`: the device's leases; the id only on those the asker
/// holds (or to the token's bearer).
pub(super) fn list(p: &Portal, c: &Call, e: &DeviceEntry) -> HttpResponse {
    let book = match open(p) {
        Ok(b) => b,
        Err(off) => return off,
    };
    let now = lease::unix_now();
    let asker = asker(p, c);
    let leases: Vec<Value> = (book.on(&e.key.to_string(), now))
        .map(|l| shown(l, asker, now))
        .collect();
    HttpResponse::json(200, &json!({ "leases": leases }))
}

/// `POST /api/devices/{key}/lease {"seconds": N, "address": "10.0.0.7"}`: lease the device
/// to the caller's own address (another only with the token); the answer has the device's
/// URLs.
pub(super) fn grant(p: &Portal, c: &Call, e: &DeviceEntry) -> HttpResponse {
    if let Some(busy) = charge(p, c) {
        return busy;
    }
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
        Some(Some(Ok(ip))) => Some(ip.to_canonical()),
        Some(_) => {
            return HttpResponse::error(400, "`address` must be an IP address, like \"10.0.0.7\"")
        }
    };
    let Some(address) = address else {
        return HttpResponse::error(400, "missing field `address`");
    };
    if let Asker::Peer(me) = asker(p, c) {
        if me.to_canonical() != address.to_canonical() {
            return refused(format!(
                "a lease for another address ({address}) needs the API token: set access.token_file on the server and send Authorization: Bearer TOKEN; without it you may lease only for yourself ({})",
                me.to_canonical()
            ));
        }
    }
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

/// `DELETE /api/devices/{key}/lease/{id}`: end a lease early (its holder, or with the token).
pub(super) fn release(p: &Portal, c: &Call, e: &DeviceEntry) -> HttpResponse {
    if let Some(busy) = charge(p, c) {
        return busy;
    }
    let mut book = match open(p) {
        Ok(b) => b,
        Err(off) => return off,
    };
    let now = lease::unix_now();
    let device = e.key.to_string();
    let released = book.release(&device, c.id.unwrap_or_default(), asker(p, c), now);
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

/// Who asks: the token's bearer (when a token is configured and the request carries it),
/// else its address.
fn asker(p: &Portal, c: &Call) -> Asker {
    match &p.access.token {
        Some(t) if t.accepts(c.req.authorization) => Asker::Bearer,
        _ => Asker::Peer(peer(c)),
    }
}

/// The request's address (the unspecified one when the server does not say, as in tests).
fn peer(c: &Call) -> IpAddr {
    c.req
        .remote
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |r| r.ip().to_canonical())
}

/// Charge one change to the asker's budget: `None` if it may go on, else the 429.
fn charge(p: &Portal, c: &Call) -> Option<HttpResponse> {
    let ip = peer(c);
    let Spend::Exhausted { retry_after } = p.lease_changes.borrow_mut().spend(ip, Instant::now())
    else {
        return None;
    };
    // Whole seconds, rounded up: a client that waits as told is not refused again.
    let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    let secs = secs.max(1);
    let mut r = HttpResponse::json(
        429,
        &json!({
            "error": format!(
                "too many lease changes from {}: at most {CHANGES} a minute; try again in {secs} s",
                PeerKey::of(ip)
            ),
            "rule": "lease",
        }),
    );
    r.retry_after = Some(secs);
    Some(r)
}

/// A 403 of the lease rules.
fn refused(error: String) -> HttpResponse {
    HttpResponse::json(403, &json!({ "error": error, "rule": "lease" }))
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
        Err(e @ LeaseError::NotHolder { .. }) => return Err(refused(e.to_string())),
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

/// One lease as `asker` may see it: without its id unless it holds the lease (the id is
/// what ends it).
fn shown(l: &Lease, asker: Asker, now: u64) -> Value {
    let mut v = lease_json(l, now);
    if !asker.holds(l) {
        if let Some(o) = v.as_object_mut() {
            o.remove("id");
        }
    }
    v
}

/// A lease's id: random, so no one ends another's lease by guessing.
fn lease_id() -> String {
    crate::daemon::access::new_token().map_or_else(
        |_| format!("{:x}", lease::unix_now() ^ u64::from(std::process::id())),
        |t| t[..16].to_string(),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::tests::setup;
    use super::*;
    use crate::daemon::access::Token;
    use crate::daemon::config::Access;
    use crate::daemon::http::HttpRequest;
    use crate::daemon::lease::{Expiry, Leases};

    const DEV: &str = "/api/devices/serial%3A0001/lease";
    const TOKEN: &str = "0123456789abcdef0123";

    fn portal(token: bool) -> (Portal, Arc<super::super::tests::Fake>) {
        let (p, fake, _) = setup();
        let mut book = Book::default();
        book.set_rules(Policy::Optional, Expiry::Finish);
        let access = Access {
            token: token.then(|| Token::new(TOKEN).unwrap()),
            ..Access::default()
        };
        (p.guarded(access).leasing(Arc::new(Leases::new(book))), fake)
    }

    /// One request from `from` (`ip:port`), with the token or not: status, body, Retry-After.
    fn ask(
        p: &Portal,
        from: &str,
        bearer: bool,
        method: &str,
        url: &str,
        body: &str,
    ) -> (u16, Value, Option<u64>) {
        let auth = format!("Bearer {TOKEN}");
        let r = p.handle(&HttpRequest {
            method,
            url,
            host: Some("pi.local:8080"),
            remote: Some(from.parse().unwrap()),
            authorization: bearer.then_some(auth.as_str()),
            content_type: Some("application/json"),
            body: body.as_bytes(),
        });
        let v = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        (r.status, v, r.retry_after)
    }

    fn leased(fake: &super::super::tests::Fake) -> usize {
        let seen = fake.seen.lock().unwrap();
        seen.iter().filter(|r| r.starts_with("Leased")).count()
    }

    #[test]
    fn without_a_token_a_peer_leases_only_for_itself_and_ends_only_its_own() {
        let (p, fake) = portal(false);
        let a = "10.0.0.7:40000";
        let b = "10.0.0.9:40000";
        // For another address: refused, nothing granted, nobody's clients dropped.
        let (st, v, _) = ask(&p, a, false, "POST", DEV, r#"{"address": "10.0.0.9"}"#);
        assert_eq!((st, v["rule"].as_str()), (403, Some("lease")), "{v}");
        let msg = v["error"].as_str().unwrap();
        assert!(
            msg.contains("access.token_file") && msg.contains("10.0.0.9"),
            "{msg}"
        );
        assert_eq!(leased(&fake), 0);
        assert_eq!(ask(&p, a, false, "GET", DEV, "").1["leases"], json!([]));
        // Naming itself (even as the IPv6-mapped form) is the same as naming none.
        let (st, v, _) = ask(
            &p,
            a,
            false,
            "POST",
            DEV,
            r#"{"address": "::ffff:10.0.0.7"}"#,
        );
        assert_eq!(st, 200, "{v}");
        let id = v["lease"]["id"].as_str().unwrap().to_string();
        assert_eq!(leased(&fake), 1);
        // Another peer is told who holds it, sees the lease but not its id, cannot end it.
        let (st, v, _) = ask(&p, b, false, "POST", DEV, "{}");
        assert_eq!(st, 409, "{v}");
        assert!(v["error"].as_str().unwrap().contains("10.0.0.7"), "{v}");
        let (_, v, _) = ask(&p, b, false, "GET", DEV, "");
        assert_eq!(v["leases"][0]["address"], "10.0.0.7");
        assert!(v["leases"][0].get("id").is_none(), "{v}");
        assert!(!v.to_string().contains(&id), "{v}");
        let (st, v, _) = ask(&p, b, false, "DELETE", &format!("{DEV}/{id}"), "");
        assert_eq!((st, v["rule"].as_str()), (403, Some("lease")), "{v}");
        assert!(v["error"]
            .as_str()
            .unwrap()
            .contains("only its holder (10.0.0.7)"));
        // Its holder sees the id and ends it.
        let (_, v, _) = ask(&p, "[::ffff:10.0.0.7]:1", false, "GET", DEV, "");
        assert_eq!(v["leases"][0]["id"], id.as_str());
        assert_eq!(
            ask(&p, a, false, "DELETE", &format!("{DEV}/{id}"), "").0,
            200
        );
        assert_eq!(leased(&fake), 2);
    }

    #[test]
    fn with_a_token_its_bearer_leases_for_anyone_sees_every_id_and_ends_any_lease() {
        let (p, _) = portal(true);
        let a = "10.0.0.7:40000";
        // Without the token: the guard refuses every change (401), as before.
        assert_eq!(ask(&p, a, false, "POST", DEV, "{}").0, 401);
        let (st, v, _) = ask(&p, a, true, "POST", DEV, r#"{"address": "10.0.0.9"}"#);
        assert_eq!(
            (st, v["lease"]["address"].as_str()),
            (200, Some("10.0.0.9")),
            "{v}"
        );
        let id = v["lease"]["id"].as_str().unwrap().to_string();
        // Reads are public (not `private`): the holder's address sees its id, others not,
        // the bearer all.
        let list = |from, bearer| ask(&p, from, bearer, "GET", DEV, "").1["leases"][0].clone();
        assert_eq!(list("10.0.0.9:1", false)["id"], id.as_str());
        assert!(list("10.0.0.7:1", false).get("id").is_none());
        assert_eq!(list("10.0.0.7:1", true)["id"], id.as_str());
        assert_eq!(
            ask(&p, a, true, "DELETE", &format!("{DEV}/{id}"), "").0,
            200
        );
    }

    #[test]
    fn lease_changes_are_bounded_per_peer_with_a_retry_after() {
        let (p, fake) = portal(false);
        let a = "10.0.0.7:40000";
        for i in 0..CHANGES {
            // Grant (or extend) and refused ones alike are charged.
            let body = if i % 2 == 0 {
                "{}"
            } else {
                r#"{"seconds": 1}"#
            };
            let (st, v, ra) = ask(&p, a, false, "POST", DEV, body);
            assert!(st == 200 || st == 400, "{i}: {st} {v}");
            assert_eq!(ra, None);
        }
        let before = leased(&fake);
        let (st, v, ra) = ask(&p, a, false, "POST", DEV, "{}");
        assert_eq!((st, v["rule"].as_str()), (429, Some("lease")), "{v}");
        assert!(ra.is_some_and(|s| (1..=60).contains(&s)), "{ra:?}");
        assert!(
            v["error"].as_str().unwrap().contains("at most 12 a minute"),
            "{v}"
        );
        assert_eq!(ask(&p, a, false, "DELETE", &format!("{DEV}/x"), "").0, 429);
        // Nothing was done: no change told to the bridges (so no fsync, no log line).
        assert_eq!(leased(&fake), before);
        // Reads are not charged; another peer has its own budget.
        assert_eq!(ask(&p, a, false, "GET", DEV, "").0, 200);
        assert_eq!(ask(&p, "10.0.0.9:1", false, "POST", DEV, "{}").0, 409);
        // Any address of one IPv6 /64 is one peer.
        for i in 0..CHANGES {
            let from = format!("[fd00:1:2:3::{:x}]:1", i + 1);
            let (st, _, _) = ask(&p, &from, false, "POST", "/api/devices/sim/lease", "{}");
            assert!(st == 200 || st == 409, "{i}: {st}");
        }
        let (st, v, _) = ask(&p, "[fd00:1:2:3::ff]:1", false, "POST", DEV, "{}");
        assert_eq!(st, 429, "{v}");
        assert!(
            v["error"].as_str().unwrap().contains("fd00:1:2:3::/64"),
            "{v}"
        );
    }
}
