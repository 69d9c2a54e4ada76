//! Where DTR/RTS go when a board is wired to GPIOs instead of a USB-UART's modem lines: a Pi
//! UART with two GPIO lines on the chip's EN and IO0 (Linux GPIO character device, v2 uAPI).
//!
//! The reset policy keeps speaking DTR/RTS; this module turns them into EN/IO0 levels with the
//! same truth table as a dev board's two transistors, so both-asserted at pyserial's open holds
//! nothing in reset (direct wiring would hold EN low for as long as a monitor is open).

use std::io;
use std::os::fd::BorrowedFd;
use std::path::PathBuf;

use gpiocdev::line::{Drive, Value, Values};
use gpiocdev::request::{Builder, Request};
use serde::Deserialize;

use crate::device::Device;
use crate::protocol::line::{LineSettings, Lines, ModemStatus, Purge};
use crate::protocol::reset::levels;

/// The `[device.gpio]` table.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct GpioConfig {
    /// GPIO chip: a path, or a name under /dev such as "gpiochip0".
    pub(crate) chip: String,
    /// Line offset wired to the chip's EN (CHIP_PU). Default: BCM 22 (header pin 15).
    pub(crate) en: u32,
    /// Line offset wired to the chip's IO0 (strapping pin). Default: BCM 10 (header pin 19).
    pub(crate) io0: u32,
    /// Set when the wiring inverts (e.g. through a transistor): line active = signal low.
    pub(crate) active_low: bool,
    pub(crate) drive: GpioDrive,
}

impl Default for GpioConfig {
    fn default() -> Self {
        GpioConfig {
            chip: "/dev/gpiochip0".into(),
            en: 22,
            io0: 10,
            active_low: false,
            drive: GpioDrive::OpenDrain,
        }
    }
}

/// How the lines are driven. Open-drain (the default) only ever pulls low, so it never
/// fights the board's EN/BOOT buttons or pull-ups.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum GpioDrive {
    #[default]
    OpenDrain,
    PushPull,
}

impl GpioConfig {
    fn chip_path(&self) -> PathBuf {
        if self.chip.contains('/') {
            PathBuf::from(&self.chip)
        } else {
            PathBuf::from("/dev").join(&self.chip)
        }
    }

    /// The line request: both lines outputs, released (high) from the first instant.
    pub(crate) fn builder(&self, consumer: &str) -> Builder {
        let mut b = Request::builder();
        b.on_chip(self.chip_path())
            .with_consumer(consumer)
            .with_lines(&[self.en, self.io0])
            .as_output(Value::Active)
            .with_drive(match self.drive {
                GpioDrive::OpenDrain => Drive::OpenDrain,
                GpioDrive::PushPull => Drive::PushPull,
            });
        if self.active_low {
            b.as_active_low();
        }
        b
    }

    /// EN and IO0 levels (Active = high) for mirrored DTR/RTS, per the transistor table.
    pub(crate) fn values(&self, lines: Lines) -> Values {
        let level = |high: bool| if high { Value::Active } else { Value::Inactive };
        let (en, io0) = levels(lines);
        let mut v = Values::default();
        v.set(self.en, level(en)).set(self.io0, level(io0));
        v
    }
}

/// A device whose DTR/RTS are GPIO lines; everything else goes to the inner device.
pub(crate) struct GpioWired {
    inner: Box<dyn Device>,
    config: GpioConfig,
    request: Request,
}

impl GpioWired {
    /// Request the lines (held until drop, released on exit). A missing chip or a line in use
    /// by another program is an error naming both.
    pub(crate) fn new(
        inner: Box<dyn Device>,
        config: GpioConfig,
        consumer: &str,
    ) -> io::Result<GpioWired> {
        let request = config.builder(consumer).request().map_err(|e| {
            io::Error::other(format!(
                "cannot request GPIO lines EN={} IO0={} on {}: {e} (is the chip there, are the lines free, is this user in the `gpio` group?)",
                config.en,
                config.io0,
                config.chip_path().display()
            ))
        })?;
        Ok(GpioWired {
            inner,
            config,
            request,
        })
    }
}

impl Device for GpioWired {
    fn fd(&self) -> BorrowedFd<'_> {
        self.inner.fd()
    }
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn apply(&mut self, settings: &LineSettings) -> io::Result<()> {
        self.inner.apply(settings)
    }
    /// Both lines in one SET_VALUES ioctl: no intermediate state reaches the chip.
    fn set_lines(&mut self, lines: Lines) -> io::Result<()> {
        self.request
            .set_values(&self.config.values(lines))
            .map_err(io::Error::other)
    }
    fn modem_status(&mut self) -> io::Result<ModemStatus> {
        self.inner.modem_status()
    }
    fn set_break(&mut self, on: bool) -> io::Result<()> {
        self.inner.set_break(on)
    }
    fn purge(&mut self, which: Purge) -> io::Result<()> {
        self.inner.purge(which)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::reset::{BOTH, EN_LOW, IO0_LOW, RELEASED};
    use gpiocdev::line::Direction;

    #[test]
    fn request_is_two_released_outputs() {
        let cfg = GpioConfig::default();
        let c = cfg.builder("serialhub test").config();
        assert_eq!(c.chip(), std::path::Path::new("/dev/gpiochip0"));
        assert_eq!(c.lines(), &vec![22, 10]);
        for off in [22, 10] {
            let lc = c.line_config(off).unwrap();
            assert_eq!(lc.direction, Some(Direction::Output));
            assert_eq!(lc.value, Some(Value::Active), "released = high");
            assert_eq!(lc.drive, Some(Drive::OpenDrain));
            assert!(!lc.active_low);
        }
        let cfg = GpioConfig {
            chip: "gpiochip4".into(),
            active_low: true,
            drive: GpioDrive::PushPull,
            en: 5,
            io0: 6,
        };
        let c = cfg.builder("t").config();
        assert_eq!(c.chip(), std::path::Path::new("/dev/gpiochip4"));
        let lc = c.line_config(5).unwrap();
        assert!(lc.active_low);
        assert_eq!(lc.drive, Some(Drive::PushPull));
    }

    #[test]
    fn transistor_table() {
        let cfg = GpioConfig::default();
        let get = |l: Lines| {
            let v = cfg.values(l);
            (v.get(22), v.get(10))
        };
        let (hi, lo) = (Some(Value::Active), Some(Value::Inactive));
        assert_eq!(get(RELEASED), (hi, hi));
        assert_eq!(get(BOTH), (hi, hi), "pyserial's open holds nothing");
        assert_eq!(get(EN_LOW), (lo, hi));
        assert_eq!(get(IO0_LOW), (hi, lo));
    }

    #[test]
    fn missing_chip_is_a_clear_error() {
        let cfg = GpioConfig {
            chip: "/nonexistent/gpiochip9".into(),
            ..Default::default()
        };
        let err = cfg.builder("t").request().unwrap_err().to_string();
        assert!(!err.is_empty());
    }
}
