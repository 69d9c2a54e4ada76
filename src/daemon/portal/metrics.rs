//! `GET /metrics`: the daemon and every device in Prometheus' text format, rendered from the
//! devices' views.

use std::fmt::Write as _;
use std::time::Duration;

use super::routes::Call;
use super::view::{Counts, DeviceView};
use super::Portal;
use crate::daemon::http::HttpResponse;
use crate::daemon::registry::Role;

/// Every state a device can be in, each a series of `serialhub_device_state`.
const STATES: [&str; 7] = [
    "absent",
    "starting",
    "idle",
    "connected",
    "flapping",
    "disabled",
    "error",
];

type Counter = fn(&Counts) -> u64;

/// The counter families: name, help, which count.
const COUNTERS: [(&str, &str, Counter); 7] = [
    (
        "serialhub_device_bytes_to_device_total",
        "Bytes from clients written to the device.",
        |c| c.bytes_to_device,
    ),
    (
        "serialhub_device_bytes_to_client_total",
        "Bytes from the device sent to clients.",
        |c| c.bytes_to_client,
    ),
    (
        "serialhub_device_connects_total",
        "Client connections accepted.",
        |c| c.connects,
    ),
    (
        "serialhub_device_resets_total",
        "Resets played (client-started and requested).",
        |c| c.resets,
    ),
    (
        "serialhub_device_observer_bytes_dropped_total",
        "Bytes observers wrote, dropped (only the client in control reaches the device).",
        |c| c.observer_bytes_dropped,
    ),
    (
        "serialhub_device_observer_output_missed_total",
        "Device output observers missed by not reading fast enough.",
        |c| c.observer_output_missed,
    ),
    (
        "serialhub_device_lease_refusals_total",
        "Connections refused for want of a lease.",
        |c| c.lease_refusals,
    ),
];

pub(super) fn metrics(p: &Portal, c: &Call) -> HttpResponse {
    let views = p.views(&p.host_for(c.req));
    HttpResponse {
        status: 200,
        content_type: "text/plain; version=0.0.4; charset=utf-8",
        body: render(p.registry.uptime(), rss_bytes(), &views).into_bytes(),
        allow: None,
        retry_after: None,
    }
}

/// The text: the daemon's gauges, then each family over every device.
fn render(uptime: Duration, rss: Option<u64>, all: &[DeviceView]) -> String {
    let mut out = String::new();
    let mut family =
        |name: &str, kind: &str, help: &str, rows: &mut dyn Iterator<Item = String>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for r in rows {
                let _ = writeln!(out, "{name}{r}");
            }
        };
    family(
        "serialhub_uptime_seconds",
        "gauge",
        "Seconds since the daemon started.",
        &mut std::iter::once(format!(" {}", uptime.as_secs_f64())),
    );
    family(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory of the daemon (VmRSS).",
        &mut rss.map(|b| format!(" {b}")).into_iter(),
    );
    family(
        "serialhub_devices",
        "gauge",
        "Devices the daemon knows.",
        &mut std::iter::once(format!(" {}", all.len())),
    );
    for (name, help, get) in COUNTERS {
        family(
            name,
            "counter",
            help,
            &mut all
                .iter()
                .map(|d| format!("{{{}}} {}", labels(d), get(&d.counts))),
        );
    }
    family(
        "serialhub_device_client_connected",
        "gauge",
        "1 while a client is connected.",
        &mut all
            .iter()
            .map(|d| format!("{{{}}} {}", labels(d), u8::from(!d.clients.is_empty()))),
    );
    family(
        "serialhub_device_clients",
        "gauge",
        "Connected clients by role: the one in control, and observers.",
        &mut all.iter().flat_map(|d| {
            let l = labels(d);
            [Role::Control, Role::Observe].into_iter().map(move |r| {
                let n = d.clients.iter().filter(|c| c.role == r).count();
                format!("{{{l},role=\"{}\"}} {n}", r.as_str())
            })
        }),
    );
    family(
        "serialhub_device_leased",
        "gauge",
        "1 while the device is leased to an address.",
        &mut all
            .iter()
            .map(|d| format!("{{{}}} {}", labels(d), u8::from(!d.leases.is_empty()))),
    );
    family(
        "serialhub_device_state",
        "gauge",
        "The device's state (1 for the current one).",
        &mut all.iter().flat_map(|d| {
            let l = labels(d);
            let now = d.state.as_str();
            STATES
                .iter()
                .map(move |s| format!("{{{l},state=\"{s}\"}} {}", u8::from(*s == now)))
        }),
    );
    out
}

/// The labels that name a device's series.
fn labels(d: &DeviceView) -> String {
    format!(
        "key=\"{}\",name=\"{}\",tty=\"{}\",port=\"{}\"",
        label(&d.key),
        label(&d.name),
        label(&d.tty),
        d.port
    )
}

/// A Prometheus label value.
fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// VmRSS from /proc/self/status, in bytes.
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
