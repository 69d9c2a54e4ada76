//! The route table: every endpoint of the portal on one screen. The table decides what is
//! not found (404) and what is asked with the wrong method (405, with an `Allow` header that
//! lists the methods the path has); a `{key}` in the path is decoded and its device found
//! here, once, before the handler runs.

use super::reply::percent_decode;
use super::{api, leases, metrics, page, Portal};
use crate::daemon::http::{HttpRequest, HttpResponse};
use crate::daemon::registry::DeviceEntry;

use Answer::{Device, Plain};
use Method::{Delete, Get, Post};

/// Every endpoint: method, path, handler. In a path, `{key}` is one segment, a device's key
/// (`serial:0123`), node (`/dev/ttyUSB0`, percent-encoded) or name; `{id...}` is the rest of
/// the path. `Get` answers HEAD too. A path may appear once per method; the first match wins.
#[rustfmt::skip]
pub(super) static ROUTES: &[Route] = &[
    route(Get,    "/",                                Plain(page::page)),
    route(Get,    "/index.html",                      Plain(page::page)),
    route(Get,    "/metrics",                         Plain(metrics::metrics)),
    route(Get,    "/api/info",                        Plain(api::info)),
    route(Get,    "/api/devices",                     Plain(api::devices)),
    route(Get,    "/api/discover",                    Plain(api::discover)),
    route(Post,   "/api/start",                       Plain(api::start)),
    route(Post,   "/api/stop",                        Plain(api::stop)),
    route(Post,   "/api/start-all",                   Plain(api::start_all)),
    route(Post,   "/api/stop-all",                    Plain(api::stop_all)),
    route(Get,    "/api/devices/{key}",               Device(api::device)),
    route(Get,    "/api/devices/{key}/log",           Device(api::log)),
    route(Post,   "/api/devices/{key}/reset",         Device(api::reset)),
    route(Post,   "/api/devices/{key}/disconnect",    Device(api::disconnect)),
    route(Get,    "/api/devices/{key}/lease",         Device(leases::list)),
    route(Post,   "/api/devices/{key}/lease",         Device(leases::grant)),
    route(Delete, "/api/devices/{key}/lease/{id...}", Device(leases::release)),
];

pub(super) struct Route {
    pub(super) method: Method,
    pub(super) path: &'static str,
    pub(super) answer: Answer,
}

const fn route(method: Method, path: &'static str, answer: Answer) -> Route {
    Route {
        method,
        path,
        answer,
    }
}

/// Who answers: a handler of the whole portal, or one of the device the path's `{key}` names.
#[derive(Clone, Copy)]
pub(super) enum Answer {
    Plain(fn(&Portal, &Call) -> HttpResponse),
    Device(fn(&Portal, &Call, &DeviceEntry) -> HttpResponse),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Method {
    /// GET, and HEAD with it (the server leaves the body out).
    Get,
    Post,
    Delete,
}

impl Method {
    /// The request methods it answers, as the `Allow` header lists them.
    pub(super) fn names(self) -> &'static str {
        match self {
            Get => "GET, HEAD",
            Post => "POST",
            Delete => "DELETE",
        }
    }

    fn admits(self, method: &str) -> bool {
        self.names().split(", ").any(|m| m == method)
    }
}

/// One request as a handler sees it.
pub(super) struct Call<'a> {
    pub(super) req: &'a HttpRequest<'a>,
    /// What follows the `?` (empty when nothing does).
    pub(super) query: &'a str,
    /// The path's `{id...}`, when the route has one.
    pub(super) id: Option<&'a str>,
}

/// What a path pattern took from a path.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Params<'a> {
    pub(super) key: Option<&'a str>,
    pub(super) id: Option<&'a str>,
}

/// Where the table sends a request: the index of its route and what its path holds, or the
/// methods of the routes that have the path (none: not found).
pub(super) fn lookup<'a>(method: &str, path: &'a str) -> Result<(usize, Params<'a>), Vec<Method>> {
    let mut allowed = Vec::new();
    for (i, r) in ROUTES.iter().enumerate() {
        let Some(params) = capture(r.path, path) else {
            continue;
        };
        if r.method.admits(method) {
            return Ok((i, params));
        }
        allowed.push(r.method);
    }
    Err(allowed)
}

/// Route one request that passed the guard.
pub(super) fn dispatch(portal: &Portal, req: &HttpRequest) -> HttpResponse {
    let (path, query) = req.url.split_once('?').unwrap_or((req.url, ""));
    let path = match path.strip_suffix('/') {
        Some(p) if !p.is_empty() => p,
        _ => path,
    };
    let (i, params) = match lookup(req.method, path) {
        Ok(found) => found,
        Err(allowed) if allowed.is_empty() => return HttpResponse::error(404, "Not found"),
        Err(allowed) => {
            let names: Vec<&str> = allowed.iter().map(|m| m.names()).collect();
            return HttpResponse::method_not_allowed(names.join(", "));
        }
    };
    let call = Call {
        req,
        query,
        id: params.id,
    };
    match ROUTES[i].answer {
        Answer::Plain(handler) => handler(portal, &call),
        Answer::Device(handler) => {
            let Some(key) = params.key.and_then(percent_decode) else {
                return HttpResponse::error(400, "bad percent-encoding in the device key");
            };
            let Some(entry) = portal.find(&key) else {
                return HttpResponse::error(404, format!("no device {key}"));
            };
            handler(portal, &call, &entry)
        }
    }
}

/// Match `path` against a route's pattern segment by segment.
fn capture<'a>(pattern: &str, path: &'a str) -> Option<Params<'a>> {
    let mut params = Params::default();
    let mut rest = Some(path);
    for want in pattern.split('/') {
        let left = rest?;
        if want == "{id...}" {
            params.id = Some(left);
            rest = None;
            continue;
        }
        let (segment, next) = match left.split_once('/') {
            Some((s, n)) => (s, Some(n)),
            None => (left, None),
        };
        match want {
            "{key}" => params.key = Some(segment),
            _ if want == segment => {}
            _ => return None,
        }
        rest = next;
    }
    rest.is_none().then_some(params)
}

impl Portal {
    /// A device by its key (`serial:0123`), its node (`/dev/ttyUSB0`) or its name.
    pub(super) fn find(&self, what: &str) -> Option<DeviceEntry> {
        let all = self.registry.snapshot();
        let pos = all
            .iter()
            .position(|e| e.key.to_string() == what)
            .or_else(|| all.iter().position(|e| e.tty == what))
            .or_else(|| all.iter().position(|e| e.name == what))?;
        all.into_iter().nth(pos)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::setup;
    use super::*;

    /// Status, `Allow` header and body of one request from an allowed address.
    fn ask(p: &Portal, method: &str, url: &str) -> (u16, Option<String>, serde_json::Value) {
        let r = p.handle(&HttpRequest {
            method,
            url,
            host: Some("pi.local:8080"),
            remote: Some("192.168.1.9:40000".parse().unwrap()),
            authorization: None,
            content_type: Some("application/json"),
            body: b"{}",
        });
        let v = serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null);
        (r.status, r.allow, v)
    }

    /// A path the pattern matches, naming the fixture's first device.
    fn example(pattern: &str) -> String {
        pattern
            .replace("{key}", "serial%3A0001")
            .replace("{id...}", "0123456789abcdef")
    }

    #[test]
    fn every_route_is_reachable() {
        let (p, fake, _) = setup();
        for (i, r) in ROUTES.iter().enumerate() {
            let path = example(r.path);
            for method in r.method.names().split(", ") {
                let (at, params) = lookup(method, &path).unwrap_or_else(|_| panic!("{path}"));
                assert_eq!(at, i, "{method} {path} is taken by an earlier route");
                assert_eq!(params.key.is_some(), r.path.contains("{key}"), "{path}");
                assert_eq!(params.id.is_some(), r.path.contains("{id...}"), "{path}");
                // Answered by its handler, not by the table.
                let (status, allow, v) = ask(&p, method, &path);
                assert_ne!(status, 405, "{method} {path}: {v}");
                assert_eq!(allow, None, "{method} {path}");
                assert_ne!(v["error"], "Not found", "{method} {path}");
                assert!(!v.to_string().contains("no device"), "{method} {path}: {v}");
            }
        }
        // The commands among them reached the (fake) supervisor.
        assert!(fake.seen.lock().unwrap().len() >= 4);
    }

    #[test]
    fn the_table_has_each_method_and_path_once() {
        for (i, a) in ROUTES.iter().enumerate() {
            assert!(a.path.starts_with('/'), "{}", a.path);
            for b in &ROUTES[i + 1..] {
                assert!((a.method, a.path) != (b.method, b.path), "{}", a.path);
            }
        }
    }

    #[test]
    fn unknown_paths_are_404() {
        let (p, _, _) = setup();
        for url in [
            "",
            "/nope",
            "/api",
            "/api/",
            "/api/info/x",
            "/API/info",
            "/index.htm",
            "/api/devicesx",
            "/api/devices/serial:0001/frob",
            "/api/devices/serial:0001/log/x",
            "/api/devices/serial:0001/reset/x",
        ] {
            for method in ["GET", "POST", "DELETE"] {
                let (status, allow, v) = ask(&p, method, url);
                assert_eq!((status, allow), (404, None), "{method} {url:?}");
                assert_eq!(v, serde_json::json!({ "error": "Not found" }), "{url:?}");
            }
        }
    }

    #[test]
    fn wrong_methods_are_405_with_the_paths_methods() {
        let (p, _, _) = setup();
        for (method, url, allow) in [
            ("POST", "/", "GET, HEAD"),
            ("PUT", "/index.html", "GET, HEAD"),
            ("POST", "/metrics", "GET, HEAD"),
            ("DELETE", "/api/info", "GET, HEAD"),
            ("POST", "/api/devices", "GET, HEAD"),
            ("OPTIONS", "/api/discover", "GET, HEAD"),
            ("GET", "/api/start", "POST"),
            ("HEAD", "/api/stop", "POST"),
            ("GET", "/api/start-all", "POST"),
            ("DELETE", "/api/stop-all", "POST"),
            ("POST", "/api/devices/serial:0001", "GET, HEAD"),
            ("POST", "/api/devices/serial:0001/log", "GET, HEAD"),
            ("GET", "/api/devices/serial:0001/reset", "POST"),
            ("GET", "/api/devices/serial:0001/disconnect", "POST"),
            ("PUT", "/api/devices/serial:0001/lease", "GET, HEAD, POST"),
            (
                "DELETE",
                "/api/devices/serial:0001/lease",
                "GET, HEAD, POST",
            ),
            ("GET", "/api/devices/serial:0001/lease/x", "DELETE"),
            ("POST", "/api/devices/serial:0001/lease/a/b", "DELETE"),
            // The method is checked before the key is decoded or looked up.
            ("GET", "/api/devices/%zz/reset", "POST"),
            ("GET", "/api/devices/nope/disconnect", "POST"),
            // Methods are case-sensitive.
            ("get", "/api/info", "GET, HEAD"),
        ] {
            let (status, got, v) = ask(&p, method, url);
            assert_eq!(status, 405, "{method} {url}: {v}");
            assert_eq!(got.as_deref(), Some(allow), "{method} {url}");
            assert_eq!(v["error"], format!("method not allowed; use {allow}"));
        }
        // Then the key: malformed, or no such device.
        assert_eq!(ask(&p, "POST", "/api/devices/%zz/reset").0, 400);
        let (status, _, v) = ask(&p, "POST", "/api/devices/nope/reset");
        assert_eq!((status, v["error"].as_str()), (404, Some("no device nope")));
        // One trailing slash is the same path.
        assert_eq!(ask(&p, "GET", "/api/info/").0, 200);
        assert_eq!(ask(&p, "GET", "/api/devices/serial:0001/log/").0, 200);
    }

    #[test]
    fn patterns_take_a_segment_or_the_rest() {
        let lease = "/api/devices/{key}/lease/{id...}";
        let got = capture(lease, "/api/devices/k/lease/a/b").unwrap();
        assert_eq!((got.key, got.id), (Some("k"), Some("a/b")));
        assert_eq!(capture(lease, "/api/devices/k/lease"), None);
        let got = capture(lease, "/api/devices/k/lease/").unwrap();
        assert_eq!(got.id, Some(""));
        let device = "/api/devices/{key}";
        assert_eq!(capture(device, "/api/devices/").unwrap().key, Some(""));
        assert_eq!(capture(device, "/api/devices/k/log"), None);
        assert_eq!(capture(device, "/api/devices"), None);
        assert_eq!(capture("/", "/"), Some(Params::default()));
        assert_eq!(capture("/", ""), None);
        assert_eq!(capture("/metrics", "/metrics/"), None);
    }
}
