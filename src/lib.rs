//! serialhub: share a small Linux box's serial ports over RFC 2217 and raw TCP, ESP32-aware.
//!
//! Pure cores turn bytes, events and times into bytes and effects; thin loops move them.
//! Layers, bottom up (each uses only those below it; `docs/architecture.md` has the map):
//!
//! ```text
//!  cli ─▶ daemon: serve (signals, wiring) ─▶ supervisor (plan: hotplug → serve/stop/park;
//!         │        stopping: many stops ≈ one wait) ─▶ bridge (one thread per device:
//!         │        sockets and poll) ─▶ hub (pure: clients, line-up, effects, leases)
//!         │        portal (HTTP: guard, route table, one device view) ─control─▶ supervisor
//!         │        supervisor, bridges ─▶ registry (shared view) ◀─ portal
//!         │        portal ─grant/release─▶ leases ◀─who may connect─ hubs
//!         │        supervisor ─serve/withdraw─▶ mdns loop ─▶ protocol::mdns machine
//!         client: discover, url, monitor, pty, lease, labgrid
//!  device: tty | GPIO-wired | simulated ESP32 (in-process, or on a pty)
//!  sim:    the simulated chip and board (pure)
//!  protocol (pure, sans-IO): telnet ─▶ session (negotiation, comport, data path) ─▶ effects;
//!                            esp (loader follower; the server's own commands, injected);
//!                            slip (the one SLIP codec);  reset (policies, line driver);
//!                            line;  http;  notes;
//!                            mdns (wire, records, the responder's machine, browser)
//!
//!  client TCP ─▶ bridge ─▶ hub ─▶ session ─bytes─▶ device     the hub performs the effects of
//!  device ─▶ bridge ─▶ hub ─▶ session (escape | raw | esp) ─▶ client, observers, log ring
//!                                                 the session in control; observers' go nowhere;
//!                                                 the cores' notes are logged by the hub
//! ```

pub mod cli; // command line: `serve`, `sim`, client commands, `--help`, `--version`
pub(crate) mod client; // the other side: `discover`, `url`, `monitor`, `pty`, `lease`, `labgrid`, mDNS browse
pub(crate) mod daemon; // `serve`: composition root, supervisor, bridges, portal, registry
pub(crate) mod device; // device backends behind one trait: tty, GPIO-wired, the simulator
pub(crate) mod protocol; // the sans-IO cores: telnet, rfc2217, session, esp, reset, line, http, mdns
pub(crate) mod sim; // the simulated ESP32 and its boards, pure: bytes and times in and out

// The map above, checked on the source (the layer rule, no import circle): `cargo test layers`.
#[cfg(test)]
#[path = "layers_test.rs"]
mod layers;
