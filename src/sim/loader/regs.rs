//! The registers READ_REG / WRITE_REG reach: each chip's identity registers (chip model,
//! eFuses, UART divider, strapping pins: `esp32`, `esp32c3`, `esp8266`), the SPI flash
//! controller (`spi`, which esptool drives to read the flash id), and whatever else a host
//! writes, kept as written (bounded).

use std::collections::BTreeMap;

use super::{Hw, Loader};
use crate::sim::board::Target;
use crate::sim::board::UsbPort;
use crate::sim::spi::{self, SpiController};
use crate::sim::{esp32, esp32c3, esp32s3, esp8266};

/// Bound on distinct registers a host may write (WRITE_REG to random addresses).
const MAX_SCRATCH_REGS: usize = 1024;

/// The register file, in its reset state after every boot.
pub(super) struct Regs {
    spi: SpiController,
    /// Registers written by the host that have no model (read back as written).
    scratch: BTreeMap<u32, u32>,
}

impl Regs {
    pub(super) fn new(target: Target) -> Regs {
        Regs {
            spi: SpiController::new(spi_layout(target)),
            scratch: BTreeMap::new(),
        }
    }

    pub(super) fn read(&self, hw: &Hw<'_>, loader: Loader, addr: u32) -> u32 {
        if let Some(v) = identity_reg(hw, loader, addr) {
            return v;
        }
        if let Some(v) = hw.watchdogs.as_ref().and_then(|w| w.read(addr)) {
            return v;
        }
        if let Some(off) = spi_offset(hw.target, addr) {
            return self.spi.read(off);
        }
        self.scratch.get(&addr).copied().unwrap_or(0)
    }

    pub(super) fn write(&mut self, hw: &mut Hw<'_>, loader: Loader, addr: u32, value: u32) {
        let now = hw.now;
        if let Some(w) = hw.watchdogs.as_deref_mut() {
            if w.write(addr, value, now) {
                return; // the RTC watchdogs act on it (`sim::rtc`)
            }
        }
        if let Some(off) = spi_offset(hw.target, addr) {
            self.spi.write(off, value, hw.flash);
        } else if identity_reg(hw, loader, addr).is_none()
            && (self.scratch.len() < MAX_SCRATCH_REGS || self.scratch.contains_key(&addr))
        {
            self.scratch.insert(addr, value);
        }
    }
}

fn spi_layout(target: Target) -> spi::SpiLayout {
    match target {
        Target::Esp32 => spi::ESP32_LAYOUT,
        // The S3's SPI1 has the C3's register offsets (esptool `targets/esp32s3.py`).
        Target::Esp32c3 | Target::Esp32s3 => spi::ESP32C3_LAYOUT,
        Target::Esp8266 => spi::ESP8266_LAYOUT,
    }
}

/// The APB clock the UART divider is counted in: the ESP32's stub runs the PLL.
fn apb_hz(target: Target, loader: Loader) -> u32 {
    match (target, loader) {
        (Target::Esp32, Loader::Rom) => esp32::APB_ROM_HZ,
        (Target::Esp32, Loader::Stub) => esp32::APB_STUB_HZ,
        (Target::Esp32c3, _) => esp32c3::APB_HZ,
        (Target::Esp32s3, _) => esp32s3::APB_HZ,
        (Target::Esp8266, _) => esp8266::UART_CLK_HZ,
    }
}

/// The identity register at `addr` (chip model, eFuses, straps), if it is one.
fn identity_reg(hw: &Hw<'_>, loader: Loader, addr: u32) -> Option<u32> {
    let (baud, strap) = (hw.baud, hw.strapped_download);
    match hw.target {
        Target::Esp32 => esp32::identity_reg(addr, baud, apb_hz(hw.target, loader), strap),
        Target::Esp32c3 => {
            esp32c3::identity_reg(addr, baud, strap, hw.usb == Some(UsbPort::SerialJtag))
        }
        Target::Esp32s3 => esp32s3::identity_reg(addr, baud, strap, hw.usb),
        Target::Esp8266 => esp8266::identity_reg(addr, baud),
    }
}

/// The offset into the flash controller's block, if `addr` is in it.
fn spi_offset(target: Target, addr: u32) -> Option<u32> {
    let (base, len) = match target {
        Target::Esp32 => (esp32::SPI_BASE, esp32::SPI_BLOCK_LEN),
        Target::Esp32c3 => (esp32c3::SPI_BASE, esp32c3::SPI_BLOCK_LEN),
        Target::Esp32s3 => (esp32s3::SPI_BASE, esp32s3::SPI_BLOCK_LEN),
        Target::Esp8266 => (esp8266::SPI_BASE, esp8266::SPI_BLOCK_LEN),
    };
    (base..base + len).contains(&addr).then(|| addr - base)
}
