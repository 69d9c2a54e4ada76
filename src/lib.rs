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

pub mod assign; // stable TCP port per device key, persisted atomically
pub mod bridge; // the per-device thread: poll loop, one controlling client
pub mod cli; // command line: `serve`, `sim`, `--help`, `--version`
pub mod client; // the client side: `discover`, `url`, `monitor`, `pty` (portal API, RFC 2217)
pub mod config; // serialhub.toml and `--device` flags, with errors that name file/line/key
pub mod device;
pub mod esp; // the ESP loader protocol as it passes a raw session: SYNC, CHANGE_BAUDRATE (pure) // device backends behind one trait: real tty, simulated ESP32
pub mod identity; // USB identity of a tty from sysfs: ids, serial, physical path
pub mod lines; // DTR/RTS to GPIO lines (EN, IO0) for GPIO-wired boards
pub mod portal; // HTTP: discovery API (old portal's shapes), metrics, web page
pub mod registry; // the shared view of devices, ports, clients and counters
pub mod reset; // reset policies: client DTR/RTS patterns to timed line changes (pure)
pub mod rfc2217; // COM-PORT-OPTION (44) requests and replies as typed values (pure)
pub mod session; // one client's negotiation state and what to apply/answer (pure)
pub mod sim; // simulated ESP32: ROM loader, stub, flash, UART timing
pub mod supervisor; // hotplug (inotify), stable ports, bridge lifecycle, signals
pub mod telnet; // Telnet byte codec: IAC framing, option verbs, 0xFF doubling (pure)
