//! A serial device's identity, read from sysfs (no libudev): what it is (vendor, product,
//! serial number) and where it is plugged in (the physical USB path, like udev's `ID_PATH`).
//! The supervisor keys stable ports on it; `reset = "auto"` picks a policy from it.

use std::path::{Path, PathBuf};

/// USB vendor and product id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct UsbId {
    pub(crate) vid: u16,
    pub(crate) pid: u16,
}

impl UsbId {
    /// Espressif's native USB-Serial/JTAG peripheral (ESP32-C3/C6/H2/S3…).
    pub(crate) fn is_esp_usb_jtag(self) -> bool {
        self == UsbId {
            vid: 0x303a,
            pid: 0x1001,
        }
    }

    /// USB-UART bridges found on ESP dev boards, with the two-transistor auto-reset circuit:
    /// Silicon Labs CP210x, WCH CH34x, FTDI, Prolific.
    pub(crate) fn is_uart_bridge(self) -> bool {
        matches!(self.vid, 0x10c4 | 0x1a86 | 0x0403 | 0x067b)
    }
}

/// What sysfs tells about a USB serial device.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct UsbInfo {
    pub(crate) id: Option<UsbId>,
    /// `None` when the device has none (CH340) — then it cannot be told apart by itself.
    pub(crate) serial: Option<String>,
    pub(crate) manufacturer: Option<String>,
    pub(crate) product: Option<String>,
    /// The USB interface the tty belongs to (multi-port adapters, ESP-Prog's two UARTs).
    pub(crate) interface: Option<u8>,
    /// Where it is plugged in: controller plus port chain and interface, in the form of
    /// udev's `ID_PATH`, e.g. `platform-3f980000.usb-usb-0:1.2:1.0`. Stable across replugs
    /// into the same socket.
    pub(crate) path: Option<String>,
}

/// Read the USB identity of the device node `dev` (symlinks such as /dev/serial/by-id/… are
/// followed) from the sysfs tree at `sysfs` (normally `/sys`). `None` for non-USB devices
/// (a Pi UART, a PTY).
pub(crate) fn usb_info(dev: &Path, sysfs: &Path) -> Option<UsbInfo> {
    // The node's own name first (/dev/ttyUSB0 is ttyUSB0 in sysfs); for a symlink such as
    // /dev/serial/by-id/…, the name of what it points to.
    let real = std::fs::canonicalize(dev).ok();
    let start = [Some(dev), real.as_deref()]
        .into_iter()
        .flatten()
        .filter_map(|p| p.file_name())
        .find_map(|name| {
            std::fs::canonicalize(sysfs.join("class/tty").join(name).join("device")).ok()
        })?;
    let mut info = UsbInfo::default();
    let mut dir: PathBuf = start;
    // Walk up from the tty's device: first the USB interface (bInterfaceNumber), then the USB
    // device (idVendor…), then the controller.
    let mut usb_device: Option<PathBuf> = None;
    loop {
        if info.interface.is_none() && usb_device.is_none() {
            info.interface =
                read(&dir.join("bInterfaceNumber")).and_then(|s| u8::from_str_radix(&s, 16).ok());
        }
        if usb_device.is_none() {
            if let (Some(vid), Some(pid)) =
                (hex(&dir.join("idVendor")), hex(&dir.join("idProduct")))
            {
                info.id = Some(UsbId { vid, pid });
                info.serial = read(&dir.join("serial")).filter(|s| !s.is_empty());
                info.manufacturer = read(&dir.join("manufacturer"));
                info.product = read(&dir.join("product"));
                usb_device = Some(dir.clone());
            }
        } else if let Some(ctrl) = controller_name(&dir) {
            info.path = usb_device
                .as_deref()
                .and_then(|d| d.file_name())
                .and_then(|d| d.to_str())
                .map(|d| id_path(&ctrl, d, info.interface));
            break;
        }
        if !dir.pop() || dir.as_os_str().len() <= sysfs.as_os_str().len() {
            break;
        }
    }
    if info.path.is_none() {
        // No recognisable controller above (an unusual tree): the USB device name alone
        // (bus-port chain) is still stable per socket.
        info.path = usb_device
            .as_deref()
            .and_then(|d| d.file_name())
            .and_then(|d| d.to_str())
            .map(|d| format!("usb-{d}"));
    }
    usb_device.map(|_| info)
}

/// The USB vendor/product of `dev`, if it is a USB device.
#[cfg(test)]
pub(crate) fn usb_id(dev: &Path, sysfs: &Path) -> Option<UsbId> {
    usb_info(dev, sysfs).and_then(|i| i.id)
}

/// `pci-0000:00:14.0` or `platform-3f980000.usb` for a sysfs directory that is a USB host
/// controller's parent device, as udev's path_id names them.
fn controller_name(dir: &Path) -> Option<String> {
    let name = dir.file_name()?.to_str()?;
    let parent = dir.parent()?.file_name()?.to_str()?;
    let is_pci = name.len() == 12
        && name.as_bytes()[4] == b':'
        && name.as_bytes()[7] == b':'
        && name.as_bytes()[10] == b'.';
    if is_pci {
        Some(format!("pci-{name}"))
    } else if parent == "platform" || parent.starts_with("soc") {
        Some(format!("platform-{name}"))
    } else {
        None
    }
}

/// udev's `ID_PATH` for a USB interface: `<controller>-usb-0:<port chain>:<config>.<intf>`.
/// The device directory name is `<bus>-<port chain>` (e.g. `1-1.2`).
fn id_path(controller: &str, usb_device: &str, interface: Option<u8>) -> String {
    let chain = usb_device.split_once('-').map_or(usb_device, |(_, c)| c);
    match interface {
        Some(i) => format!("{controller}-usb-0:{chain}:1.{i}"),
        None => format!("{controller}-usb-0:{chain}"),
    }
}

fn read(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

fn hex(p: &Path) -> Option<u16> {
    u16::from_str_radix(&read(p)?, 16).ok()
}

/// Builds fake sysfs trees for tests (here and in the supervisor's).
#[cfg(test)]
pub(crate) mod fake {
    use std::path::{Path, PathBuf};

    pub(crate) struct FakeUsb<'a> {
        pub(crate) tty: &'a str,
        /// USB device directory name: bus-port chain, e.g. "1-1.2".
        pub(crate) port: &'a str,
        pub(crate) vid: &'a str,
        pub(crate) pid: &'a str,
        pub(crate) serial: Option<&'a str>,
        pub(crate) product: &'a str,
    }

    /// Add a USB serial device under `root` (a fake /sys): a Pi-style platform controller.
    pub(crate) fn add(root: &Path, d: &FakeUsb) -> PathBuf {
        let usb = root.join("devices/platform/3f980000.usb/usb1").join(d.port);
        let intf = usb.join(format!("{}:1.0", d.port));
        let tty_dev = intf.join(d.tty);
        std::fs::create_dir_all(&tty_dev).unwrap();
        std::fs::write(intf.join("bInterfaceNumber"), "00\n").unwrap();
        std::fs::write(usb.join("idVendor"), format!("{}\n", d.vid)).unwrap();
        std::fs::write(usb.join("idProduct"), format!("{}\n", d.pid)).unwrap();
        std::fs::write(usb.join("product"), format!("{}\n", d.product)).unwrap();
        std::fs::write(usb.join("manufacturer"), "Maker\n").unwrap();
        if let Some(s) = d.serial {
            std::fs::write(usb.join("serial"), format!("{s}\n")).unwrap();
        }
        let class = root.join("class/tty").join(d.tty);
        std::fs::create_dir_all(&class).unwrap();
        let link = class.join("device");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&intf, link).unwrap();
        intf
    }
}

#[cfg(test)]
mod tests {
    use super::fake::{add, FakeUsb};
    use super::*;

    fn tree() -> PathBuf {
        let root = std::env::temp_dir().join(format!(
            "serialhub-sysfs-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&root);
        root
    }

    #[test]
    fn reads_identity_and_physical_path() {
        let root = tree();
        add(
            &root,
            &FakeUsb {
                tty: "ttyUSB0",
                port: "1-1.2",
                vid: "10c4",
                pid: "ea60",
                serial: Some("0123ABC"),
                product: "CP2102 USB to UART Bridge Controller",
            },
        );
        add(
            &root,
            &FakeUsb {
                tty: "ttyUSB1",
                port: "1-1.3",
                vid: "1a86",
                pid: "7523",
                serial: None,
                product: "USB Serial",
            },
        );
        let i = usb_info(Path::new("/dev/ttyUSB0"), &root).unwrap();
        assert_eq!(
            i.id,
            Some(UsbId {
                vid: 0x10c4,
                pid: 0xea60
            })
        );
        assert_eq!(i.serial.as_deref(), Some("0123ABC"));
        assert_eq!(
            i.product.as_deref(),
            Some("CP2102 USB to UART Bridge Controller")
        );
        assert_eq!(i.manufacturer.as_deref(), Some("Maker"));
        assert_eq!(i.interface, Some(0));
        assert_eq!(
            i.path.as_deref(),
            Some("platform-3f980000.usb-usb-0:1.2:1.0")
        );
        assert!(i.id.unwrap().is_uart_bridge());
        let j = usb_info(Path::new("/dev/ttyUSB1"), &root).unwrap();
        assert_eq!(j.serial, None, "CH340 has no serial number");
        assert_eq!(
            j.path.as_deref(),
            Some("platform-3f980000.usb-usb-0:1.3:1.0")
        );
        assert_eq!(usb_info(Path::new("/dev/ttyAMA0"), &root), None);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn native_usb_jtag_is_recognised() {
        let root = tree();
        add(
            &root,
            &FakeUsb {
                tty: "ttyACM0",
                port: "1-1.4",
                vid: "303a",
                pid: "1001",
                serial: Some("F4:12:FA:00:11:22"),
                product: "USB JTAG/serial debug unit",
            },
        );
        assert!(usb_id(Path::new("/dev/ttyACM0"), &root)
            .unwrap()
            .is_esp_usb_jtag());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn pci_controller_path() {
        let dir = Path::new("/sys/devices/pci0000:00/0000:00:14.0");
        let c = controller_name(dir).unwrap();
        assert_eq!(c, "pci-0000:00:14.0");
        assert_eq!(id_path(&c, "3-2", Some(0)), "pci-0000:00:14.0-usb-0:2:1.0");
    }
}
