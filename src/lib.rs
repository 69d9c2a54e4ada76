//! serialhub: share a small Linux box's serial ports over RFC 2217 and raw TCP, ESP32-aware.
//!
//! Pure cores turn bytes, events and times into bytes and effects; thin loops move them.
//! Layers, bottom up (each uses only those below it; `docs/architecture.md` has the map):
//!
//! ```text
//!  cli ─▶ daemon: serve (signals, wiring) ─▶ supervisor ─▶ bridge (one thread per device)
//!         │        portal (HTTP) ─control─▶ supervisor;  both ─▶ registry (shared view)
//!         │        portal ─grant/release─▶ leases ◀─who may connect─ bridges
//!         │        supervisor ─serve/withdraw─▶ mdns (responder thread)
//!         client: discover, url, monitor, pty, lease, labgrid
//!  device: tty | GPIO-wired | simulated ESP32 (in-process, or on a pty)
//!  sim:    the simulated chip and board (pure)
//!  protocol (pure, sans-IO): telnet ─▶ rfc2217 ─▶ session ─▶ effects;  esp (loader follower);
//!                            reset (policies, line driver);  line (settings, modem lines);
//!                            mdns (wire, records, the responder's machine, browser)
//!
//!  client TCP ─▶ bridge ─▶ session ─bytes─▶ device      bridge performs the effects of the
//!  device ─▶ bridge ─▶ session (escape | raw | esp) ─▶ client, observers, log ring
//!                                                       session in control; observers' go nowhere
//! ```

pub mod cli; // command line: `serve`, `sim`, client commands, `--help`, `--version`
pub(crate) mod client; // the other side: `discover`, `url`, `monitor`, `pty`, `lease`, `labgrid`, mDNS browse
pub(crate) mod daemon; // `serve`: composition root, supervisor, bridges, portal, registry
pub(crate) mod device; // device backends behind one trait: tty, GPIO-wired, the simulator
pub(crate) mod protocol; // the sans-IO cores: telnet, rfc2217, session, esp, reset, line
pub(crate) mod sim; // the simulated ESP32 and its boards, pure: bytes and times in and out

// The map above, checked on the source (the layer rule, no import circle): `cargo test layers`.
#[cfg(test)]
#[path = "layers_test.rs"]
mod layers;
