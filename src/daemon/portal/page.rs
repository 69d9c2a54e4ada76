//! `GET /`: the web page, with the device table already filled in from the devices' views (it
//! works without JavaScript; the script then keeps it up to date and adds the buttons).

use std::fmt::Write as _;

use super::host::{hostname, portal_port};
use super::routes::Call;
use super::view::DeviceView;
use super::Portal;
use crate::daemon::http::HttpResponse;

const PAGE: &str = include_str!("index.html");

pub(super) fn page(p: &Portal, c: &Call) -> HttpResponse {
    let host = p.host_for(c.req);
    let views = p.views(&host);
    HttpResponse {
        status: 200,
        content_type: "text/html; charset=utf-8",
        body: render(&views, &host, c.req.host).into_bytes(),
        allow: None,
        retry_after: None,
    }
}

fn render(all: &[DeviceView], host: &str, host_header: Option<&str>) -> String {
    let mut rows = String::new();
    for d in all {
        row(&mut rows, d);
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

/// One device's row of the table.
fn row(out: &mut String, d: &DeviceView) {
    let leased = match d.leases.first() {
        Some(l) => format!(
            " <small>(leased to {})</small>",
            html(&l.address.to_string())
        ),
        None => String::new(),
    };
    let client = match d.clients.split_first() {
        None => "—".to_string(),
        Some((c, [])) => html(&c.addr.to_string()),
        Some((c, observers)) => format!(
            "{} <small>(+{} observing)</small>",
            html(&c.addr.to_string()),
            observers.len()
        ),
    };
    let _ = writeln!(
        out,
        "<tr><td data-l=\"Name\">{}</td><td data-l=\"Product\">{}</td><td data-l=\"Serial\">{}</td>\
         <td data-l=\"Key\"><code>{}</code></td><td data-l=\"Port\">{}</td>\
         <td data-l=\"State\"><span class=\"st st-{}\">{}</span></td><td data-l=\"Client\">{}</td>\
         <td data-l=\"URL\"><code>{}</code></td></tr>",
        html(&d.name),
        html(&d.product),
        html(&d.serial),
        html(&d.key),
        d.port,
        d.state.as_str(),
        d.state.as_str(),
        client + &leased,
        html(&d.urls.url),
    );
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
