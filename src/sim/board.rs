//! Which board the simulator is: what the host's DTR/RTS (or GPIO lines) are wired to, and
//! which chip sits on it. Plus the record of what the inputs did (line and pin changes,
//! boots), which tests read to check a reset policy against the board it serves.
//!
//! ```text
//!  DevKit   DTR/RTS ─▶ two transistors (crate::protocol::reset::levels) ─▶ EN (RC, ~1 ms) / IO0   ESP32
//!  UsbJtag  DTR/RTS ─▶ USB-Serial/JTAG logic: entering (released, asserted) resets   ESP32-C3
//!  Gpio     DTR/RTS ─▶ nothing;  GPIO lines ─▶ EN (RC) / IO0 (`SimHandle::set_pins`)  ESP32
//!  Esp8266DevKit  DTR/RTS ─▶ the same two transistors ─▶ RST (RC) / GPIO0   ESP8266
//!  S3UsbJtag DTR/RTS ─▶ USB-Serial/JTAG logic (as UsbJtag)   ESP32-S3
//!  S3Otg     DTR/RTS ─▶ the ROM's USB-OTG CDC (modelled with the same reset pattern)   ESP32-S3
//! ```

use std::time::Duration;

use crate::protocol::line::Lines;

/// The board variant, selected by the device path (`sim`, `sim-usb`, `sim-gpio`,
/// `sim-esp8266`, `sim-s3-usb`, `sim-otg`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) enum SimBoard {
    /// ESP32 DevKit: a USB-UART bridge whose DTR/RTS drive EN/IO0 through the two-transistor
    /// auto-reset circuit, with the RC delay on EN.
    #[default]
    DevKit,
    /// ESP32-C3 on its native USB-Serial/JTAG: DTR/RTS go to the peripheral's own reset
    /// logic, the line's baud rate means nothing (USB CDC).
    UsbJtag,
    /// ESP32 whose EN and IO0 are wired to GPIOs (a Pi UART): the UART's DTR/RTS are not
    /// connected; the pins are set directly.
    Gpio,
    /// ESP8266 board of the NodeMCU kind: a USB-UART bridge with the same two-transistor
    /// auto-reset circuit as `DevKit`, on the ESP8266's RST and GPIO0.
    Esp8266DevKit,
    /// ESP32-S3 on its native USB-Serial/JTAG: like `UsbJtag`, on the S3.
    S3UsbJtag,
    /// ESP32-S3 on its USB-OTG peripheral, the ROM's CDC-ACM: small receive buffer
    /// (`USB_OTG_MAX_BLOCK`, the ROM loader only), no RTC watchdog left running.
    S3Otg,
}

/// Which native USB peripheral the host talks to (what esptool 4.x reads from the ROM's
/// `UARTDEV_BUF_NO`, and 5.x from the port's VID/PID).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum UsbPort {
    /// USB-Serial/JTAG (VID:PID 303A:1001).
    SerialJtag,
    /// USB-OTG with the ROM's CDC-ACM (PID = the chip's IMAGE_CHIP_ID).
    Otg,
}

/// The largest *_DATA block the ROM's USB-OTG CDC path takes: esptool's
/// `USB_RAM_BLOCK = 0x800  # Max block size USB-OTG is used` (`targets/esp32s2.py`,
/// `esp32s3.py`; 4.x sets it as ESP_RAM_BLOCK and FLASH_WRITE_SIZE when it reads USB-OTG;
/// 5.6 as `USB_OTG_BLOCK_SIZE` for the ROM only, also when the port has no VID/PID).
pub(crate) const USB_OTG_MAX_BLOCK: usize = 0x800;

impl SimBoard {
    pub(crate) const ALL: [SimBoard; 6] = [
        SimBoard::DevKit,
        SimBoard::UsbJtag,
        SimBoard::Gpio,
        SimBoard::Esp8266DevKit,
        SimBoard::S3UsbJtag,
        SimBoard::S3Otg,
    ];

    /// The device path naming this board (before an optional `:FLASHFILE`).
    pub(crate) fn path_name(self) -> &'static str {
        match self {
            SimBoard::DevKit => "sim",
            SimBoard::UsbJtag => "sim-usb",
            SimBoard::Gpio => "sim-gpio",
            SimBoard::Esp8266DevKit => "sim-esp8266",
            SimBoard::S3UsbJtag => "sim-s3-usb",
            SimBoard::S3Otg => "sim-otg",
        }
    }

    pub(crate) fn from_path_name(s: &str) -> Option<SimBoard> {
        SimBoard::ALL.into_iter().find(|b| b.path_name() == s)
    }

    /// The chip on the board.
    pub(crate) fn target(self) -> Target {
        match self {
            SimBoard::DevKit | SimBoard::Gpio => Target::Esp32,
            SimBoard::UsbJtag => Target::Esp32c3,
            SimBoard::Esp8266DevKit => Target::Esp8266,
            SimBoard::S3UsbJtag | SimBoard::S3Otg => Target::Esp32s3,
        }
    }

    /// The chip's own USB peripheral the host talks to, if any.
    pub(crate) fn usb_port(self) -> Option<UsbPort> {
        match self {
            SimBoard::UsbJtag | SimBoard::S3UsbJtag => Some(UsbPort::SerialJtag),
            SimBoard::S3Otg => Some(UsbPort::Otg),
            SimBoard::DevKit | SimBoard::Gpio | SimBoard::Esp8266DevKit => None,
        }
    }

    /// The host talks to the chip over USB CDC: no baud rate, no garbling.
    pub(crate) fn usb_cdc(self) -> bool {
        self.usb_port().is_some()
    }
}

impl std::fmt::Display for SimBoard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.path_name())
    }
}

/// The chip model: what esptool reads when it identifies the chip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// ESP32-D0WD-V3 (see `esp32`).
    Esp32,
    /// ESP32-C3 revision v0.4 (see `esp32c3`).
    Esp32c3,
    /// ESP8266EX with a 26 MHz crystal (see `esp8266`).
    Esp8266,
    /// ESP32-S3 (QFN56) revision v0.2 (see `esp32s3`).
    Esp32s3,
}

impl Target {
    /// The chip's name as esptool prints it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Target::Esp32 => "ESP32",
            Target::Esp32c3 => "ESP32-C3",
            Target::Esp8266 => "ESP8266",
            Target::Esp32s3 => "ESP32-S3",
        }
    }
}

/// Lines after which the USB-Serial/JTAG peripheral resets the chip: DTR released, RTS
/// asserted (pyserial sense).
pub(crate) const USB_RESET_LINES: Lines = Lines {
    dtr: false,
    rts: true,
};

/// The USB-Serial/JTAG peripheral's reset logic: entering (DTR released, RTS asserted)
/// resets the chip, into the ROM download mode iff the lines were (asserted, asserted) just
/// before (which is why esptool's USBJTAGSerialReset goes through (1,1), not (0,0)).
/// `Some(download)` when `prev` → `new` resets.
pub(crate) fn usb_jtag_reset(prev: Lines, new: Lines) -> Option<bool> {
    (new == USB_RESET_LINES && prev != USB_RESET_LINES).then_some(prev.dtr && prev.rts)
}

/// The RC on a dev board's EN: its rising edge reaches the chip this long after the line
/// (transistor or GPIO) lets go, and IO0 is sampled then. A falling edge acts at once.
pub(crate) const EN_RC_DELAY: Duration = Duration::from_millis(1);

/// Levels of the two strapping-relevant pins; `true` = high.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Pins {
    pub(crate) en: bool,
    pub(crate) io0: bool,
}

impl Pins {
    /// Both pulled up: the chip runs, and boots its application on the next reset.
    pub(crate) const HIGH: Pins = Pins {
        en: true,
        io0: true,
    };
}

/// Something that reached the chip's reset inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Input {
    /// The host's DTR/RTS (pyserial sense: true = asserted), on every board (on `Gpio` they
    /// go nowhere).
    Lines(Lines),
    /// EN/IO0 levels set directly (GPIO wiring).
    Pins(Pins),
    /// The EN button, with BOOT held if `download`.
    #[cfg(test)]
    Button { download: bool },
}

/// One input change; `at` is the simulator's time (since the device was created).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct InputRecord {
    pub(crate) at: Duration,
    pub(crate) input: Input,
}

/// Where a boot went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BootMode {
    App,
    Download,
}

impl BootMode {
    /// `app` / `download`, as in the debug log line.
    pub(crate) fn short(self) -> &'static str {
        match self {
            BootMode::App => "app",
            BootMode::Download => "download",
        }
    }
}

/// What reset the chip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ResetCause {
    /// The simulator was created.
    PowerOn,
    /// EN rose (after its RC delay).
    EnPin,
    /// The USB-Serial/JTAG peripheral (DTR/RTS pattern).
    UsbJtag,
    /// A software reset (loader FLASH_END asking for a reboot): keeps the latched straps.
    Software,
    /// The RTC watchdog's RTC reset (`sim::rtc`): samples the straps again.
    RtcWatchdog,
    /// The EN button.
    #[cfg(test)]
    Button,
}

/// One boot; `n` is the boot number (power-on is 1), `at` the simulator's time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BootRecord {
    pub(crate) n: u32,
    pub(crate) at: Duration,
    pub(crate) mode: BootMode,
    pub(crate) cause: ResetCause,
}

/// How many input changes and boots the chip remembers (the oldest go first).
pub(crate) const RECORD_LEN: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;

    const fn l(dtr: bool, rts: bool) -> Lines {
        Lines { dtr, rts }
    }

    #[test]
    fn usb_jtag_truth_table() {
        let all = [
            l(false, false),
            l(true, false),
            l(true, true),
            l(false, true),
        ];
        for prev in all {
            for new in all {
                let got = usb_jtag_reset(prev, new);
                let want = if new == l(false, true) && prev != new {
                    Some(prev == l(true, true))
                } else {
                    None
                };
                assert_eq!(got, want, "{prev:?} -> {new:?}");
            }
        }
        // esptool's USBJTAGSerialReset: (0,0) (1,0) (1,1) (0,1) (0,0): one reset, to download.
        let seq = [
            l(false, false),
            l(true, false),
            l(true, true),
            l(false, true),
            l(false, false),
        ];
        let resets: Vec<bool> = seq
            .windows(2)
            .filter_map(|w| usb_jtag_reset(w[0], w[1]))
            .collect();
        assert_eq!(resets, vec![true]);
        // esptool's HardReset (RTS pulse): a reset into the application.
        assert_eq!(usb_jtag_reset(l(false, false), l(false, true)), Some(false));
    }

    #[test]
    fn path_names_round_trip() {
        for b in SimBoard::ALL {
            assert_eq!(SimBoard::from_path_name(b.path_name()), Some(b));
        }
        assert_eq!(SimBoard::from_path_name("sim-uart"), None);
        assert_eq!(SimBoard::UsbJtag.target(), Target::Esp32c3);
        assert_eq!(
            SimBoard::from_path_name("sim-esp8266").map(SimBoard::target),
            Some(Target::Esp8266)
        );
    }
}
