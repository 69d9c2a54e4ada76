//! The shapes of the portal's answers, and what a handler reads from a request besides its
//! path: the JSON body, a number from the query string.

use serde_json::{json, Map, Value};

use crate::daemon::control::{Reply, RequestError};
use crate::daemon::http::HttpResponse;

impl HttpResponse {
    pub(super) fn json(status: u16, v: &Value) -> HttpResponse {
        let mut body = serde_json::to_vec(v).unwrap_or_default();
        body.push(b'\n');
        HttpResponse {
            status,
            content_type: "application/json",
            body,
            allow: None,
            retry_after: None,
        }
    }

    pub(super) fn error(status: u16, msg: impl Into<String>) -> HttpResponse {
        HttpResponse::json(status, &json!({ "error": msg.into() }))
    }

    /// The old portal's command answers: `success` plus `message`, and `error` on failure.
    pub(super) fn command(reply: Reply) -> HttpResponse {
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

    /// A 405 with its `Allow` header (`GET, HEAD`, `POST`, …).
    pub(super) fn method_not_allowed(allow: String) -> HttpResponse {
        let mut r = HttpResponse::error(405, format!("method not allowed; use {allow}"));
        r.allow = Some(allow);
        r
    }
}

/// The request's body as a JSON object; an empty (or blank) body is an empty object.
pub(super) fn json_body(body: &[u8]) -> Result<Value, HttpResponse> {
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
pub(super) fn query_u64(query: &str, name: &str) -> Result<Option<u64>, String> {
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
pub(super) fn percent_decode(s: &str) -> Option<String> {
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
