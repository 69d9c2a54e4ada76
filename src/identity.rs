//! A serial device's USB identity, read from sysfs (no libudev).

use std::path::{Path, PathBuf};

/// USB vendor and product id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsbId {
    pub vid: u16,
    pub pid: u16,
}

impl UsbId {
    /// Espressif's native USB-Serial/JTAG peripheral (ESP32-C3/C6/H2/S3…).
    pub fn is_esp_usb_jtag(self) -> bool {
        self == UsbId {
            vid: 0x303a,
            pid: 0x1001,
        }
    }

    /// USB-UART bridges found on ESP dev boards, with the two-transistor auto-reset circuit:
    /// Silicon Labs CP210x, WCH CH34x, FTDI, Prolific.
    pub fn is_uart_bridge(self) -> bool {
        matches!(self.vid, 0x10c4 | 0x1a86 | 0x0403 | 0x067b)
    }
}

/// The USB vendor/product of the device node `dev` (symlinks such as /dev/serial/by-id/…
/// are followed), looked up under `sysfs` (normally `/sys`). `None` for non-USB devices.
pub fn usb_id(dev: &Path, sysfs: &Path) -> Option<UsbId> {
    let real = std::fs::canonicalize(dev).unwrap_or_else(|_| dev.to_path_buf());
    let name = real.file_name()?;
    let mut dir: PathBuf =
        std::fs::canonicalize(sysfs.join("class/tty").join(name).join("device")).ok()?;
    // The tty's device is a USB interface; idVendor/idProduct live on the USB device above it.
    loop {
        if let (Some(vid), Some(pid)) = (
            hex_file(&dir.join("idVendor")),
            hex_file(&dir.join("idProduct")),
        ) {
            return Some(UsbId { vid, pid });
        }
        if !dir.pop() || dir == sysfs {
            return None;
        }
    }
}

fn hex_file(p: &Path) -> Option<u16> {
    let s = std::fs::read_to_string(p).ok()?;
    u16::from_str_radix(s.trim(), 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_ids_above_the_interface() {
        let root = std::env::temp_dir().join(format!("serialhub-sysfs-{}", std::process::id()));
        let usb = root.join("devices/usb1/1-1");
        let intf = usb.join("1-1:1.0");
        std::fs::create_dir_all(&intf).unwrap();
        std::fs::write(usb.join("idVendor"), "303a\n").unwrap();
        std::fs::write(usb.join("idProduct"), "1001\n").unwrap();
        let class = root.join("class/tty/ttyACM7");
        std::fs::create_dir_all(&class).unwrap();
        std::os::unix::fs::symlink(&intf, class.join("device")).unwrap();
        let id = usb_id(Path::new("/dev/ttyACM7"), &root).unwrap();
        assert!(id.is_esp_usb_jtag());
        assert_eq!(usb_id(Path::new("/dev/ttyS9"), &root), None);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
