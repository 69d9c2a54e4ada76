//! serialhub: share a small Linux box's serial ports over RFC 2217 and raw TCP, ESP32-aware.
//!
//! The pure cores turn bytes and events into bytes and actions; the thin loops move them.
//!
//! ```text
//!  inotify(/dev) ─▶ supervisor ─identity(sysfs)─▶ assign(port) ─▶ registry ◀─ portal (HTTP)
//!                      │ spawn / stop / replace                       ▲
//!                      ▼                                              │ state, counters, log
//!  client TCP ─▶ bridge (one thread per device: poll over listener, client, device, wake fd)
//!                 ├─ session: first byte IAC? ─▶ telnet (codec) ─▶ rfc2217 (typed verbs)
//!                 │           otherwise raw ─▶ esp (loader protocol: SYNC, CHANGE_BAUDRATE)
//!                 ├─ reset (policy: client DTR/RTS ─▶ timed line changes) ─▶ lines (GPIO)
//!                 └─ device (tty | simulated ESP32)
//! ```

pub mod cli; // command line: `serve`, `sim`, client commands, `--help`, `--version`
pub(crate) mod client; // the other side: `discover`, `url`, `monitor`, `pty`
pub(crate) mod daemon; // `serve`: supervisor, bridges, portal, registry, config
pub(crate) mod device; // device backends behind one trait: tty, GPIO-wired, (the simulator)
pub(crate) mod protocol; // the sans-IO cores: telnet, rfc2217, session, esp, reset
pub(crate) mod sim; // simulated ESP32: ROM loader, stub, flash, UART timing
