//! The daemon: everything `serialhub serve` runs. This module is the composition root.

pub(crate) mod assign; // stable TCP port per device key, persisted atomically
pub(crate) mod bridge; // the per-device thread: poll loop, one controlling client
pub(crate) mod config; // serialhub.toml and `--device` flags, with errors that name file/line/key
pub(crate) mod identity; // USB identity of a tty from sysfs: ids, serial, physical path
pub(crate) mod portal; // HTTP: discovery API (old portal's shapes), metrics, web page
pub(crate) mod registry; // the shared view of devices, ports, clients and counters
pub(crate) mod supervisor; // hotplug (inotify), stable ports, bridge lifecycle, signals
