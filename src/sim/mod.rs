//! Simulated ESP32 (and ESP8266): something real esptool can flash, for tests, `serve --demo` and
//! measuring servers on the same chip (`serialhub sim --pty LINK`).
//!
//! ```text
//!  host bytes ─▶ uart (pacing at the sender's baud, garbling on mismatch; USB: neither) ─▶ chip
//!  DTR/RTS ───▶ board (transistors + RC on EN | USB-Serial/JTAG logic | nothing) ─▶ reset
//!  GPIOs ─────▶ EN / IO0 (sim-gpio: device::sim's SimHandle::set_pins or SimGpioWired)
//!  chip (board model: reset, boot ROM banner, application, UART queue)
//!    └ protocol::slip ─▶ loader (commands: ROM / stub dialects; flash_ops; regs)
//!                         ─▶ flash (NOR), md5, spi, esp32 / esp32c3 / esp8266 registers
//! ```
//!
//! Six boards (`board::SimBoard`, device paths `sim`, `sim-usb`, `sim-gpio`, `sim-esp8266`,
//! `sim-s3-usb`, `sim-otg`): an ESP32 DevKit, an ESP32-C3 on its native USB-Serial/JTAG, an
//! ESP32 with EN/IO0 on GPIOs, an ESP8266 board with the DevKit's auto-reset circuit, an
//! ESP32-S3 on its USB-Serial/JTAG and one on its USB-OTG. The native-USB boards are as
//! strict as the chips (issue 22): on USB-Serial/JTAG the RTC watchdog resets the chip 9 s
//! into download mode unless the host disabled it (`rtc`), on USB-OTG the ROM's CDC takes
//! no data block past 0x800 (`board::USB_OTG_MAX_BLOCK`).
//!
//! Everything here is pure: bytes, line changes and a time in, bytes out — the chip
//! (`chip`, `board`, `loader`, `flash`, `md5`, `spi`, `esp32`, `esp32c3`, `esp32s3`, `esp8266`,
//! `rtc`; SLIP is
//! `protocol::slip`) and `uart`, which paces the wire (its `step` is pure; its
//! `io_before_step` / `io_after_step` move bytes to and from a host endpoint without the
//! chip). The thin I/O around it lives with the other devices: `device::sim` (the in-process
//! `Device`, with the flash file) and `device::sim_pty` (`serialhub sim --pty`).

pub(crate) mod board;
#[cfg(test)]
mod boards_test;
pub(crate) mod chip;
#[cfg(test)]
mod chip_test;
pub(crate) mod esp32;
pub(crate) mod esp32c3;
pub(crate) mod esp32s3;
pub(crate) mod esp8266;
#[cfg(test)]
mod esp8266_test;
pub(crate) mod flash;
pub(crate) mod loader;
pub(crate) mod md5;
pub(crate) mod rtc;
pub(crate) mod spi;
#[cfg(test)]
mod testkit;
pub(crate) mod uart;
#[cfg(test)]
mod usb_test;

use std::path::PathBuf;

pub(crate) use board::SimBoard;

/// How the standalone `serialhub sim` and the in-process device are set up.
#[derive(Clone, Debug, Default)]
pub(crate) struct SimOptions {
    /// Keep the 4 MiB flash image in this file (created if missing), so tests can read it.
    pub(crate) flash_file: Option<PathBuf>,
    /// Start in the ROM download mode instead of running the application.
    pub(crate) start_in_bootloader: bool,
    /// Which board (and chip) to simulate.
    pub(crate) board: SimBoard,
    /// The device's name, prefixed to the simulator's log lines (`NAME: sim: boot #N ...`).
    pub(crate) name: Option<String>,
}
