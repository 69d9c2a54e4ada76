//! The daemon: everything `serialhub serve` runs. This module is the composition root: it
//! owns the signals and systemd's notifications and wires the threads together —
//!
//! ```text
//!  main thread: signals (SIGHUP reload, SIGINT/SIGTERM stop) ──control──▶ supervisor thread
//!  portal thread (bounded HTTP) ──control (requests)──▶ supervisor ──commands──▶ bridges
//!  supervisor, bridges ──write──▶ registry ◀──read── portal
//!  portal ──grant/release──▶ leases ◀──read── bridges (who may connect)
//!  supervisor ──serve/withdraw──▶ mdns thread (advertisements)
//! ```
//!
//! No module below depends on this one, and none depends on a module it does not name here
//! as its inputs: the graph is a tree.

use std::path::Path;
use std::sync::Arc;

use log::{error, info, warn};

use crate::daemon::config::Config;
use crate::daemon::lease::{Book, Leases};
use crate::daemon::registry::Registry;
use crate::daemon::supervisor::Supervisor;

pub(crate) mod access; // who may connect: allow-lists, the API token (pure)
pub(crate) mod assign; // stable TCP port per device key, persisted atomically
pub(crate) mod backoff; // when a listener that cannot accept tries again (pure)
pub(crate) mod bridge; // the per-device thread: descriptors, poll and syscalls for its hub
pub(crate) mod config; // serialhub.toml and `--device` flags, with errors that name file/line/key
pub(crate) mod control; // the requests the portal and signals send the supervisor
pub(crate) mod http; // a small bounded HTTP/1.1 server: connection cap, limits, deadlines
pub(crate) mod hub; // one device and its clients without sockets: admission, sessions, control, effects
pub(crate) mod identity; // USB identity of a tty from sysfs: ids, serial, physical path
pub(crate) mod lease; // devices reserved for one address for a while: the book, its file, who may connect
pub(crate) mod lineup; // who holds a device: control, observers, the waiting; who may join (pure)
pub(crate) mod mailbox; // a bounded queue plus the eventfd that wakes a poll loop for it
pub(crate) mod mdns; // the mDNS responder thread: devices and the portal advertised, goodbyes
pub(crate) mod peerlog; // how many log lines a remote address may cause (pure)
pub(crate) mod plan; // hotplug decisions: serve/stop/park, keying, flap damping, reload diff (pure)
pub(crate) mod portal; // HTTP: discovery API (old portal's shapes), metrics, web page
pub(crate) mod registry; // the shared view of devices, ports, clients and counters
pub(crate) mod reopen; // when to try opening a device again (pure)
pub(crate) mod stopping; // stopping several bridges with one shared deadline
pub(crate) mod supervisor; // hotplug (inotify), stable ports, the bridges' lifecycle
pub(crate) mod wait; // how a thread sleeps: poll until ready or its deadline, one way

/// Re-reads the configuration (file plus command line) on SIGHUP.
pub(crate) type Reload = Box<dyn Fn() -> Result<Config, String>>;

/// Run the daemon until SIGINT or SIGTERM: start the supervisor, report readiness to
/// systemd (and to `ready`, `--ready-fd`), then restore every device and exit.
pub(crate) fn serve(
    config: Config,
    reload: Reload,
    ready: Option<std::fs::File>,
) -> Result<(), String> {
    use nix::sys::signal::{SigSet, Signal};
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGINT);
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGHUP);
    // Block before spawning, so every thread inherits the mask and only the main thread
    // ever sees the signals (in `wait`).
    mask.thread_block()
        .map_err(|e| format!("cannot block signals: {e}"))?;

    // The portal's port first: a busy one stops the daemon before any device is touched.
    let http = match config.http {
        Some(addr) => Some(portal::bind(addr).map_err(|e| {
            format!("cannot listen for HTTP on {addr}: {e} (is another portal running? set `http` or --http to another address, or \"off\")")
        })?),
        None => None,
    };
    let device_ip = config.bind;
    let http_connections = config.http_connections;
    let access = config.access.clone();
    let devices = config.devices.clone();
    let registry = Registry::new();
    let mut book = Book::load(
        &config.state_file.with_file_name("leases.json"),
        lease::unix_now(),
    );
    book.set_rules(config.access.lease, config.access.lease_expiry);
    let leases = Arc::new(Leases::new(book));
    let portal_addr = http.as_ref().and_then(|l| l.local_addr().ok());
    let adverts = advertise(&config, portal_addr);
    let mut sup = Supervisor::new(config, registry.clone(), leases.clone(), adverts);
    // Fixed devices are bound up front: a port conflict stops the daemon at start with a
    // message instead of leaving a device unserved.
    let errors = sup.start_fixed(devices);
    if !errors.is_empty() {
        return Err(errors.join("\n"));
    }
    sup.start_hotplug();
    let (handle, inbox) = control::channel().map_err(|e| format!("eventfd: {e}"))?;
    if let Some(listener) = http {
        portal::spawn(
            listener,
            device_ip,
            registry.clone(),
            handle.clone(),
            http_connections,
            access,
            leases,
        )
        .map_err(|e| format!("cannot start the portal: {e}"))?;
    }
    let thread = std::thread::Builder::new()
        .name("supervisor".into())
        .spawn(move || sup.run(inbox))
        .map_err(|e| format!("cannot start the supervisor: {e}"))?;
    notify_systemd("READY=1");
    if let Some(f) = ready {
        notify_ready(f, portal_addr, &registry);
    }
    loop {
        match mask.wait() {
            Ok(Signal::SIGHUP) => match reload() {
                Ok(config) => {
                    info!("SIGHUP: configuration re-read; applying changes");
                    handle.reload(config);
                }
                Err(e) => error!("SIGHUP: {e}; keeping the running configuration"),
            },
            Ok(sig) => {
                info!("{sig:?}: restoring devices and exiting");
                break;
            }
            Err(e) => return Err(format!("waiting for signals: {e}")),
        }
    }
    notify_systemd("STOPPING=1");
    handle.shutdown();
    let _ = thread.join();
    Ok(())
}

/// Start the mDNS responder unless it is off (`[mdns] enabled = false`) or the devices listen
/// on loopback only (nothing elsewhere could reach what it advertises); the portal, when it
/// runs, is advertised at once.
fn advertise(config: &Config, portal: Option<std::net::SocketAddr>) -> Option<mdns::Adverts> {
    if !config.mdns.enabled {
        return None;
    }
    if !mdns::reachable(config.bind) {
        info!(
            "mDNS off: devices listen on {} only (set bind to advertise them)",
            config.bind
        );
        return None;
    }
    let only = match config.bind {
        std::net::IpAddr::V4(v4) if !v4.is_unspecified() => Some(v4),
        _ => None,
    };
    let (host, label) = mdns::host_names();
    let publish = mdns::Publish::for_private(config.access.private);
    if publish == mdns::Publish::PortalOnly {
        info!("mDNS: private: advertising the portal only, not the device ports");
    }
    match mdns::spawn(
        &config.mdns,
        only,
        label,
        config.access.allow.clone(),
        publish,
    ) {
        Ok(a) => {
            if let Some(p) = portal {
                a.serve_portal(mdns::portal_service(p.port(), &host));
            }
            Some(a)
        }
        Err(e) => {
            warn!("mDNS off: cannot use UDP port 5353: {e}");
            None
        }
    }
}

/// `--ready-fd`: one JSON line, then the descriptor is closed — the portal's address and
/// every device served at start with its port — for a supervisor script or a test that
/// needs the ports without parsing the log (s6's notification-fd also waits for the newline).
/// Later hotplugged devices are in the portal's `/api/devices`.
fn notify_ready(mut f: std::fs::File, portal: Option<std::net::SocketAddr>, registry: &Registry) {
    use std::io::Write as _;
    let devices: Vec<serde_json::Value> = registry
        .snapshot()
        .iter()
        .map(|e| {
            serde_json::json!({
                "key": e.key.to_string(),
                "name": e.name,
                "tty": e.tty,
                "port": e.port,
                "state": e.state.as_str(),
            })
        })
        .collect();
    let line = serde_json::json!({
        "portal": portal.map(|a| a.to_string()),
        "devices": devices,
    });
    if let Err(e) = writeln!(f, "{line}") {
        warn!("--ready-fd: cannot write the ready line: {e}");
    }
}

/// Tell systemd (`Type=notify`) that every port is listening, so `systemctl start` returns
/// only once clients can connect. A no-op outside systemd.
fn notify_systemd(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => return warn!("cannot notify systemd: {e}"),
    };
    let bytes = path.as_encoded_bytes();
    let result = if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)
            .and_then(|addr| sock.send_to_addr(state.as_bytes(), &addr))
    } else {
        sock.send_to(state.as_bytes(), Path::new(&path))
    };
    if let Err(e) = result {
        warn!("cannot notify systemd: {e}");
    }
}
