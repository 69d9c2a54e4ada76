//! The portal: the discovery API, Prometheus metrics and a small web page, over HTTP.
//!
//! Compatible with the old Python portal (`/api/info`, `/api/devices`, `/api/discover`,
//! `/api/start`, `/api/stop`, `/api/start-all`, `/api/stop-all`: same fields, same meanings,
//! more fields added, none renamed), plus per-device endpoints (`/api/devices/{key}`, its
//! `reset`, `disconnect`, `log` and `lease`) and `/metrics`.
//!
//! It never blocks a bridge: it reads [`Registry::snapshot`] (one short lock) and sends
//! commands to the supervisor, which passes them to the bridges through their wake fds.
//! The bounded server in [`crate::daemon::http`] carries the requests; [`Portal::handle`]
//! takes a plain [`HttpRequest`] so it is tested without sockets.
//!
//! The way of a request, one file each:
//! - [`Portal::handle`]: every request passes it, first through the `guard` (who may ask,
//!   with what), then to the route table.
//! - `routes`: every endpoint on one screen — method, path, handler; the table answers 404
//!   and 405 and finds the device a `{key}` names.
//! - `view`: a device as the portal shows it ([`view::DeviceView`]), read once per request;
//!   the API's JSON (`api`), the page (`page`) and the metrics (`metrics`) render from it.
//! - `api`, `leases`: the handlers; `reply`: the answers' shapes and the request's
//!   body and query; `host`: the host the devices' URLs point at.

mod api;
mod guard;
mod host;
mod leases;
mod metrics;
mod page;
mod reply;
mod routes;
mod view;

#[cfg(test)]
mod tests;

use std::cell::RefCell;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;

use log::info;

use crate::daemon::config::Access;
use crate::daemon::control::{Handle, Reply, Request};
use crate::daemon::http::{self, Handler, HttpRequest, HttpResponse, Limits};
use crate::daemon::lease::Leases;
use crate::daemon::peerlog::{Budget, PeerLog};
use crate::daemon::registry::Registry;

/// Request bodies larger than this are refused with 413 (at most this + 1 bytes are read).
pub(crate) const MAX_BODY: usize = 64 * 1024;

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

pub(crate) struct Portal {
    registry: Arc<Registry>,
    commands: Box<dyn Commands>,
    device_ip: IpAddr,
    access: Access,
    /// The port the portal listens on, for the refusal log line (never the client's `Host`).
    port: u16,
    /// Refusals each address may cause in the log (one a minute).
    refusals: RefCell<PeerLog>,
    /// Who holds which device; the portal grants and releases.
    leases: Arc<Leases>,
    /// Lease changes each address may ask for (each is an fsync and a log line).
    lease_changes: RefCell<Budget>,
    /// The names this machine answers to in `Host` (with `access.hosts`).
    names: guard::HostNames,
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
            refusals: RefCell::new(PeerLog::with_burst(1)),
            leases: Arc::default(),
            lease_changes: RefCell::new(leases::budget()),
            names: guard::HostNames::of_this_machine(),
        }
    }

    /// The machine's names as `HostNames::new` takes them, instead of this machine's.
    #[cfg(test)]
    pub(crate) fn known_as(mut self, host: &str, label: &str) -> Portal {
        self.names = guard::HostNames::new(host, label);
        self
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

    /// Answer one request. Every request passes here, and only here, on its way to a
    /// handler: first the guard (`guard.rs`: the address, the `Host`, the media type of a
    /// POST, the token — and the place for any other check on a request as a whole), then
    /// the route table (`routes.rs`), which answers unknown paths and
    /// wrong methods itself.
    pub(crate) fn handle(&self, req: &HttpRequest) -> HttpResponse {
        if let Some(refused) = self.guard(req) {
            return refused;
        }
        routes::dispatch(self, req)
    }
}
