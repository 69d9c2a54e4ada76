//! Stable TCP ports: a device's key (serial number, else physical USB path, else device name)
//! gets the lowest free port once and keeps it forever, across replugs and reboots. The
//! assignments live in one JSON file, written atomically (temp file, fsync, rename), so a crash
//! or power cut mid-write leaves the old file or the new one, never a torn one.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use log::{info, warn};
use serde::{Deserialize, Serialize};

use crate::daemon::identity::UsbInfo;

/// Which identity a device's port is keyed on, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum KeyKind {
    /// The USB serial number, unique among the devices present.
    Serial,
    /// The physical USB path (the socket it is plugged into).
    UsbPath,
    /// The device node's name (a Pi UART, or USB without sysfs information).
    DeviceName,
}

/// A device's key, e.g. `serial:0123ABC`, `path:platform-3f980000.usb-usb-0:1.2:1.0`,
/// `name:ttyAMA0`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct DeviceKey {
    pub(crate) kind: KeyKind,
    pub(crate) value: String,
}

impl fmt::Display for DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix = match self.kind {
            KeyKind::Serial => "serial",
            KeyKind::UsbPath => "path",
            KeyKind::DeviceName => "name",
        };
        write!(f, "{prefix}:{}", self.value)
    }
}

impl DeviceKey {
    pub(crate) fn serial(s: &str) -> DeviceKey {
        // The old portal stored serials with ':' and spaces as '_'; so do we, so its
        // assignments carry over.
        let value = s
            .chars()
            .map(|c| {
                if c == ':' || c.is_whitespace() {
                    '_'
                } else {
                    c
                }
            })
            .collect();
        DeviceKey {
            kind: KeyKind::Serial,
            value,
        }
    }

    pub(crate) fn name(n: &str) -> DeviceKey {
        DeviceKey {
            kind: KeyKind::DeviceName,
            value: n.to_string(),
        }
    }

    /// The key for a device: its serial number if no other present device reports the same
    /// one (`serial_count` = how many present devices report it), else its USB path, else its
    /// node name.
    pub(crate) fn choose(dev_name: &str, usb: Option<&UsbInfo>, serial_count: usize) -> DeviceKey {
        if let Some(usb) = usb {
            if let Some(s) = &usb.serial {
                if serial_count <= 1 {
                    return DeviceKey::serial(s);
                }
            }
            if let Some(p) = &usb.path {
                return DeviceKey {
                    kind: KeyKind::UsbPath,
                    value: p.clone(),
                };
            }
        }
        DeviceKey::name(dev_name)
    }

    fn parse(s: &str) -> Option<DeviceKey> {
        let (kind, value) = s.split_once(':')?;
        let kind = match kind {
            "serial" => KeyKind::Serial,
            "path" => KeyKind::UsbPath,
            "name" => KeyKind::DeviceName,
            _ => return None,
        };
        Some(DeviceKey {
            kind,
            value: value.to_string(),
        })
    }
}

#[derive(Serialize, Deserialize)]
struct StateFile {
    version: u32,
    ports: BTreeMap<String, u16>,
}

/// The persisted key → port map.
#[derive(Debug)]
pub(crate) struct Assignments {
    file: PathBuf,
    base: u16,
    ports: BTreeMap<DeviceKey, u16>,
}

impl Assignments {
    /// Load `file`. Missing: start empty (importing the old portal's `legacy` devices.conf if
    /// it exists). Unreadable or corrupt: moved aside to `<file>.corrupt`, with a log line, and
    /// rebuilt — never a reason not to serve.
    pub(crate) fn load(file: &Path, base: u16, legacy: Option<&Path>) -> Assignments {
        let mut a = Assignments {
            file: file.to_path_buf(),
            base,
            ports: BTreeMap::new(),
        };
        match std::fs::read(file) {
            Ok(bytes) => match serde_json::from_slice::<StateFile>(&bytes) {
                Ok(state) => {
                    for (k, port) in state.ports {
                        match DeviceKey::parse(&k) {
                            Some(key) if port != 0 => {
                                a.ports.insert(key, port);
                            }
                            _ => warn!("{}: ignoring entry {k:?}", file.display()),
                        }
                    }
                }
                Err(e) => a.move_aside(&format!("not valid JSON ({e})")),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if let Some(legacy) = legacy.filter(|p| p.exists()) {
                    a.import_legacy(legacy);
                }
            }
            Err(e) => a.move_aside(&format!("unreadable ({e})")),
        }
        a
    }

    fn move_aside(&mut self, why: &str) {
        match move_aside(&self.file) {
            Ok(aside) => warn!(
                "state file {} is {why}: moved it to {} and starting with fresh port assignments (devices get the lowest free ports again; pin them in the config to be sure)",
                self.file.display(),
                aside.display()
            ),
            Err(e) => warn!(
                "state file {} is {why} and cannot be moved aside ({e}); it will be overwritten",
                self.file.display()
            ),
        }
    }

    /// Import `/etc/rfc2217/devices.conf` (`key=port` lines, key a tty path or a serial).
    fn import_legacy(&mut self, legacy: &Path) {
        let Ok(text) = std::fs::read_to_string(legacy) else {
            return warn!("cannot read {}; not importing it", legacy.display());
        };
        let mut n = 0;
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((k, port)) = line.split_once('=') else {
                continue;
            };
            let Ok(port) = port.trim().parse::<u16>() else {
                continue;
            };
            let k = k.trim();
            let key = match k.strip_prefix("/dev/") {
                Some(name) => DeviceKey::name(name),
                None => DeviceKey::serial(k),
            };
            self.ports.insert(key, port);
            n += 1;
        }
        info!(
            "imported {n} port assignments from the old portal's {}",
            legacy.display()
        );
        if let Err(e) = self.save() {
            warn!("cannot write {}: {e}", self.file.display());
        }
    }

    pub(crate) fn get(&self, key: &DeviceKey) -> Option<u16> {
        self.ports.get(key).copied()
    }

    /// The port for `key`: the one it has, else the lowest free port from the base (skipping
    /// every assigned port and `reserved` ones, e.g. ports pinned in the config), which is
    /// then persisted.
    pub(crate) fn assign(&mut self, key: &DeviceKey, reserved: &BTreeSet<u16>) -> io::Result<u16> {
        if let Some(p) = self.get(key) {
            return Ok(p);
        }
        let used: BTreeSet<u16> = self.ports.values().copied().collect();
        let port = (self.base..=u16::MAX)
            .find(|p| !used.contains(p) && !reserved.contains(p))
            .ok_or_else(|| io::Error::other(format!("no free TCP port from {}", self.base)))?;
        self.ports.insert(key.clone(), port);
        info!("{key}: assigned port {port}");
        if let Err(e) = self.save() {
            // Serving matters more than remembering: keep the assignment in memory.
            warn!(
                "cannot write {}: {e}; the assignment of port {port} to {key} will not survive a restart (check the directory's permissions, or pass --state FILE)",
                self.file.display()
            );
        }
        Ok(port)
    }

    /// Write the file atomically ([`write_atomically`]).
    pub(crate) fn save(&self) -> io::Result<()> {
        let state = StateFile {
            version: 1,
            ports: self
                .ports
                .iter()
                .map(|(k, &p)| (k.to_string(), p))
                .collect(),
        };
        let mut json = serde_json::to_vec_pretty(&state).map_err(io::Error::other)?;
        json.push(b'\n');
        write_atomically(&self.file, &json)
    }
}

/// Move a state file that cannot be read as it should aside, to `<file>.corrupt` (replacing
/// an older one), so the daemon starts without it and the file is still there to look at;
/// where it went. Shared by every state file (`ports.json`, `leases.json`).
pub(crate) fn move_aside(file: &Path) -> io::Result<PathBuf> {
    let aside = file.with_extension("json.corrupt");
    std::fs::rename(file, &aside)?;
    Ok(aside)
}

/// Replace `file` with `bytes` so that a crash leaves the old or the new content, never a
/// mix: a temp file in the same directory, fsync, rename, fsync the directory.
pub(crate) fn write_atomically(file: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = file.with_extension(format!("json.tmp{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, file)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("serialhub-assign-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn usb(serial: Option<&str>, path: &str) -> UsbInfo {
        UsbInfo {
            serial: serial.map(str::to_string),
            path: Some(path.to_string()),
            ..Default::default()
        }
    }

    #[test]
    fn key_choice() {
        let u = usb(Some("0001"), "p1");
        assert_eq!(
            DeviceKey::choose("ttyUSB0", Some(&u), 1).to_string(),
            "serial:0001"
        );
        assert_eq!(
            DeviceKey::choose("ttyUSB0", Some(&u), 2).to_string(),
            "path:p1"
        );
        let u = usb(None, "p2");
        assert_eq!(
            DeviceKey::choose("ttyUSB1", Some(&u), 0).to_string(),
            "path:p2"
        );
        assert_eq!(
            DeviceKey::choose("ttyAMA0", None, 0).to_string(),
            "name:ttyAMA0"
        );
        assert_eq!(DeviceKey::serial("F4:12 FA").value, "F4_12_FA");
    }

    #[test]
    fn ports_are_stable_across_restarts() {
        let d = tmp("stable");
        let f = d.join("ports.json");
        let mut a = Assignments::load(&f, 4001, None);
        let none = BTreeSet::new();
        let k1 = DeviceKey::serial("A");
        let k2 = DeviceKey::name("ttyAMA0");
        let reserved: BTreeSet<u16> = [4002].into();
        assert_eq!(a.assign(&k1, &none).unwrap(), 4001);
        assert_eq!(a.assign(&k2, &reserved).unwrap(), 4003);
        let mut b = Assignments::load(&f, 4001, None);
        assert_eq!(b.assign(&k2, &none).unwrap(), 4003);
        assert_eq!(b.assign(&k1, &none).unwrap(), 4001);
        assert_eq!(b.assign(&DeviceKey::name("x"), &none).unwrap(), 4002);
    }

    #[test]
    fn corrupt_file_is_moved_aside() {
        let d = tmp("corrupt");
        let f = d.join("ports.json");
        std::fs::write(&f, b"{\"version\":1,\"ports\":{\"serial:A\":40").unwrap();
        let mut a = Assignments::load(&f, 4001, None);
        assert!(d.join("ports.json.corrupt").exists());
        assert_eq!(
            a.assign(&DeviceKey::serial("B"), &BTreeSet::new()).unwrap(),
            4001
        );
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(text.contains("serial:B"), "{text}");
    }

    #[test]
    fn legacy_devices_conf_is_imported_once() {
        let d = tmp("legacy");
        let legacy = d.join("devices.conf");
        std::fs::write(
            &legacy,
            "# RFC2217 device-port assignments\n/dev/ttyUSB0=4001\n0123_AB=4007\nbroken\n",
        )
        .unwrap();
        let f = d.join("ports.json");
        let a = Assignments::load(&f, 4001, Some(&legacy));
        assert_eq!(a.get(&DeviceKey::name("ttyUSB0")), Some(4001));
        assert_eq!(a.get(&DeviceKey::serial("0123 AB")), Some(4007));
        assert!(f.exists());
    }
}
