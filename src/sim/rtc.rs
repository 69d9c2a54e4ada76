//! The RTC watchdog (RWDT) and the super watchdog (SWD) of the ESP32-C3 and ESP32-S3: what
//! resets a chip on its native USB-Serial/JTAG part-way through a flash unless the host turned
//! them off first.
//!
//! Why they run in download mode at all (esptool commit 32e8014, `targets/esp32c3.py`
//! `disable_watchdogs`: "When USB-JTAG/Serial is used, the RTC WDT and SWD watchdog are not
//! reset and can then reset the board during flashing"; espflash PR #169: "When the chip is
//! reset via the USB-SERIAL-JTAG not everything is fully reset, the RTC domain stays active"):
//! the second-stage bootloader arms the RWDT (ESP-IDF `CONFIG_BOOTLOADER_WDT_ENABLE`, default
//! on, `CONFIG_BOOTLOADER_WDT_TIME_MS` = 9000), the application keeps it fed, and the
//! peripheral's chip reset into download mode leaves the RTC domain — and the RWDT — running.
//! The ROM loader does not feed it. So the chip resets [`BOOTLOADER_WDT_TIME`] after entering
//! download mode unless the host disables it the way esptool 4.x does (and 5.x only when it
//! sees the USB-Serial/JTAG VID/PID of a local port):
//!
//! ```text
//!  WRITE_REG WDTWPROTECT = 0x50D83AA1   unlock (RTC_CNTL_WDT_WKEY)
//!  WRITE_REG WDTCONFIG0  = 0            RWDT off
//!  WRITE_REG WDTWPROTECT = 0            lock
//!  WRITE_REG SWD_WPROTECT = 0x8F1D312A  unlock (RTC_CNTL_SWD_WKEY)
//!  WRITE_REG SWD_CONF |= 1 << 31        SWD_AUTO_FEED_EN
//!  WRITE_REG SWD_WPROTECT = 0           lock
//! ```
//!
//! Writes to a protected register while the wrong key is in its protect register are ignored,
//! as on the chip. The SWD is modelled as auto-fed (the IDF bootloader sets SWD_AUTO_FEED_EN,
//! `bootloader_super_wdt_auto_feed`, and it lives in the same RTC domain), so only the RWDT
//! fires; its registers are kept so esptool's read-modify-write sees what it wrote.
//! esptool's `watchdog_reset` (unlock, WDTCONFIG1 = 2000 slow-clock ticks, WDTCONFIG0 =
//! EN | stage 0 RESET_RTC, lock) arms it the other way and resets the chip ~15 ms later.

use std::time::Duration;

use super::board::{BootMode, ResetCause, Target};

/// RTC_CNTL_WDT_WKEY: what unlocks the RWDT's registers (esptool `targets/esp32c3.py`,
/// `esp32s3.py`).
pub(crate) const WDT_WKEY: u32 = 0x50D8_3AA1;
/// RTC_CNTL_SWD_WKEY: what unlocks the super watchdog's configuration.
pub(crate) const SWD_WKEY: u32 = 0x8F1D_312A;
/// RTC_CNTL_WDT_EN (WDTCONFIG0 bit 31).
pub(crate) const WDT_EN: u32 = 1 << 31;
/// RTC_CNTL_WDT_STG0 (WDTCONFIG0 bits 28..31): 0 = off, 1 interrupt, 2 CPU, 3 system, 4 RTC
/// reset (esptool's `watchdog_reset` writes 5 << 28: its reset, too).
const WDT_STG0_SHIFT: u32 = 28;
/// SWD_AUTO_FEED_EN (SWD_CONF bit 31).
pub(crate) const SWD_AUTO_FEED_EN: u32 = 1 << 31;
/// The RTC slow clock the RWDT counts (the internal ~136 kHz RC of the C3 and S3, the IDF
/// default `RTC_SLOW_FREQ_RTC`).
pub(crate) const SLOW_CLK_HZ: u64 = 136_000;
/// ESP-IDF's default `CONFIG_BOOTLOADER_WDT_TIME_MS`: the RWDT stage-0 timeout the
/// bootloader arms.
pub(crate) const BOOTLOADER_WDT_TIME: Duration = Duration::from_millis(9000);

/// Where the watchdogs' registers are (esptool's RTCCNTL_BASE_REG 0x6000_8000 plus offsets).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RtcLayout {
    pub(crate) wdt_config0: u32,
    pub(crate) wdt_config1: u32,
    pub(crate) wdt_wprotect: u32,
    pub(crate) swd_conf: u32,
    pub(crate) swd_wprotect: u32,
}

/// ESP32-C3 (`targets/esp32c3.py`: +0x90, +0x94, +0xA8, +0xAC, +0xB0).
pub(crate) const ESP32C3_RTC: RtcLayout = RtcLayout {
    wdt_config0: 0x6000_8090,
    wdt_config1: 0x6000_8094,
    wdt_wprotect: 0x6000_80A8,
    swd_conf: 0x6000_80AC,
    swd_wprotect: 0x6000_80B0,
};

/// ESP32-S3 (`targets/esp32s3.py`: +0x98, +0x9C, +0xB0, +0xB4, +0xB8).
pub(crate) const ESP32S3_RTC: RtcLayout = RtcLayout {
    wdt_config0: 0x6000_8098,
    wdt_config1: 0x6000_809C,
    wdt_wprotect: 0x6000_80B0,
    swd_conf: 0x6000_80B4,
    swd_wprotect: 0x6000_80B8,
};

impl RtcLayout {
    pub(crate) fn for_target(target: Target) -> Option<RtcLayout> {
        match target {
            Target::Esp32c3 => Some(ESP32C3_RTC),
            Target::Esp32s3 => Some(ESP32S3_RTC),
            Target::Esp32 | Target::Esp8266 => None,
        }
    }
}

/// Whether the RWDT counts towards a reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rwdt {
    /// Off (power-on state, or the host disabled it).
    Off,
    /// Fed by the running application: it never fires.
    Fed,
    /// Counting since `since`: fires `timeout` later.
    Running { since: Duration },
}

/// The RTC domain's watchdogs of one chip; survives the resets that keep the RTC domain.
#[derive(Clone, Debug)]
pub(crate) struct Watchdogs {
    layout: RtcLayout,
    /// Whether a USB-Serial/JTAG chip reset keeps the RTC domain (and the RWDT) running
    /// into download mode: true on the USB-Serial/JTAG boards.
    survives_usb_reset: bool,
    config0: u32,
    config1: u32,
    wprotect: u32,
    swd_conf: u32,
    swd_wprotect: u32,
    rwdt: Rwdt,
}

impl Watchdogs {
    /// Power-on state: both protect registers locked, RWDT off, SWD not auto-fed.
    pub(crate) fn new(layout: RtcLayout, survives_usb_reset: bool) -> Watchdogs {
        Watchdogs {
            layout,
            survives_usb_reset,
            config0: 0,
            config1: 0,
            wprotect: 0,
            swd_conf: 0,
            swd_wprotect: 0,
            rwdt: Rwdt::Off,
        }
    }

    /// The chip booted at `now`, after `cause`, into `mode`.
    pub(crate) fn on_boot(&mut self, cause: ResetCause, mode: BootMode, now: Duration) {
        let keeps_rtc = match cause {
            // EN (CHIP_PU), power-on and the RWDT's own RTC reset clear the RTC domain.
            ResetCause::PowerOn | ResetCause::EnPin | ResetCause::RtcWatchdog => false,
            #[cfg(test)]
            ResetCause::Button => false,
            ResetCause::UsbJtag => self.survives_usb_reset,
            ResetCause::Software => true,
        };
        if !keeps_rtc {
            *self = Watchdogs::new(self.layout, self.survives_usb_reset);
        }
        match mode {
            BootMode::App => {
                // The bootloader arms the RWDT (9 s, RTC reset) and the SWD's auto-feed; the
                // application feeds the RWDT.
                self.config0 = WDT_EN | 4 << WDT_STG0_SHIFT;
                self.config1 = ticks(BOOTLOADER_WDT_TIME);
                self.swd_conf |= SWD_AUTO_FEED_EN;
                self.rwdt = Rwdt::Fed;
            }
            BootMode::Download => {
                // The ROM does not feed it: whatever runs counts from the reset on.
                if let Rwdt::Fed = self.rwdt {
                    self.rwdt = Rwdt::Running { since: now };
                }
            }
        }
    }

    /// The stage-0 timeout WDTCONFIG1 holds.
    fn timeout(&self) -> Duration {
        Duration::from_nanos(u64::from(self.config1).saturating_mul(1_000_000_000) / SLOW_CLK_HZ)
    }

    /// When the RWDT resets the chip, if it will.
    pub(crate) fn deadline(&self) -> Option<Duration> {
        match self.rwdt {
            Rwdt::Running { since } => Some(since + self.timeout()),
            Rwdt::Off | Rwdt::Fed => None,
        }
    }

    /// Whether the RWDT has fired by `now`.
    #[cfg(test)]
    pub(crate) fn fired(&self, now: Duration) -> bool {
        self.deadline().is_some_and(|d| d <= now)
    }

    /// The register at `addr`, if it is one of the watchdogs'.
    pub(crate) fn read(&self, addr: u32) -> Option<u32> {
        let l = &self.layout;
        Some(match addr {
            a if a == l.wdt_config0 => self.config0,
            a if a == l.wdt_config1 => self.config1,
            // The protect registers read 0 while locked, 1 once unlocked (the TRM's
            // WDT_WKEY read-back is not relied on by esptool; this is enough for a test).
            a if a == l.wdt_wprotect => u32::from(self.wprotect == WDT_WKEY),
            a if a == l.swd_conf => self.swd_conf,
            a if a == l.swd_wprotect => u32::from(self.swd_wprotect == SWD_WKEY),
            _ => return None,
        })
    }

    /// A WRITE_REG to `addr` at `now`; `false` if it is not a watchdog register. Writes to
    /// a locked register are ignored, as on the chip.
    pub(crate) fn write(&mut self, addr: u32, value: u32, now: Duration) -> bool {
        let l = self.layout;
        match addr {
            a if a == l.wdt_wprotect => self.wprotect = value,
            a if a == l.swd_wprotect => self.swd_wprotect = value,
            a if a == l.wdt_config0 || a == l.wdt_config1 => {
                if self.wprotect != WDT_WKEY {
                    return true;
                }
                if a == l.wdt_config0 {
                    self.config0 = value;
                } else {
                    self.config1 = value;
                }
                // Reconfiguring restarts the count; EN with a stage-0 action arms it.
                let armed = self.config0 & WDT_EN != 0 && (self.config0 >> WDT_STG0_SHIFT) & 7 != 0;
                self.rwdt = if armed {
                    Rwdt::Running { since: now }
                } else {
                    Rwdt::Off
                };
            }
            a if a == l.swd_conf => {
                if self.swd_wprotect == SWD_WKEY {
                    self.swd_conf = value;
                }
            }
            _ => return false,
        }
        true
    }
}

/// `d` in RTC slow-clock ticks.
fn ticks(d: Duration) -> u32 {
    u32::try_from(d.as_nanos() * u128::from(SLOW_CLK_HZ) / 1_000_000_000).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    /// A C3 that ran its application and was reset into download mode by its USB-Serial/JTAG
    /// peripheral at 10 s.
    fn in_download() -> Watchdogs {
        let mut w = Watchdogs::new(ESP32C3_RTC, true);
        w.on_boot(ResetCause::PowerOn, BootMode::App, Duration::ZERO);
        w.on_boot(ResetCause::UsbJtag, BootMode::Download, 10 * S);
        w
    }

    #[test]
    fn fires_after_the_bootloader_timeout_in_download_mode() {
        let w = in_download();
        assert_eq!(w.deadline(), Some(10 * S + BOOTLOADER_WDT_TIME));
        assert!(!w.fired(18 * S));
        assert!(w.fired(19 * S + Duration::from_millis(1)));
    }

    #[test]
    fn the_application_feeds_it_and_power_on_download_has_it_off() {
        let mut w = Watchdogs::new(ESP32C3_RTC, true);
        w.on_boot(ResetCause::PowerOn, BootMode::App, Duration::ZERO);
        assert!(!w.fired(3600 * S));
        let mut w = Watchdogs::new(ESP32C3_RTC, true);
        w.on_boot(ResetCause::PowerOn, BootMode::Download, Duration::ZERO);
        assert_eq!(w.deadline(), None);
        // A board whose USB reset clears the RTC domain (USB-OTG) has it off too.
        let mut w = Watchdogs::new(ESP32S3_RTC, false);
        w.on_boot(ResetCause::PowerOn, BootMode::App, Duration::ZERO);
        w.on_boot(ResetCause::UsbJtag, BootMode::Download, S);
        assert_eq!(w.deadline(), None);
    }

    #[test]
    fn esptools_disable_watchdogs_turns_it_off() {
        for layout in [ESP32C3_RTC, ESP32S3_RTC] {
            let mut w = Watchdogs::new(layout, true);
            w.on_boot(ResetCause::PowerOn, BootMode::App, Duration::ZERO);
            w.on_boot(ResetCause::UsbJtag, BootMode::Download, S);
            let t = 2 * S;
            assert!(w.write(layout.wdt_wprotect, WDT_WKEY, t));
            assert!(w.write(layout.wdt_config0, 0, t));
            assert!(w.write(layout.wdt_wprotect, 0, t));
            assert!(w.write(layout.swd_wprotect, SWD_WKEY, t));
            let swd = w.read(layout.swd_conf).unwrap();
            assert!(w.write(layout.swd_conf, swd | SWD_AUTO_FEED_EN, t));
            assert!(w.write(layout.swd_wprotect, 0, t));
            assert_eq!(w.deadline(), None, "{layout:?}");
            assert!(!w.fired(3600 * S));
            assert_eq!(w.read(layout.wdt_config0), Some(0));
        }
    }

    /// The sequence the server sends for a client that cannot (protocol/esp/watchdogs.rs),
    /// played against this model: the server's side and the sim agree on every register.
    #[test]
    fn the_servers_disarm_sequence_turns_it_off() {
        use crate::protocol::esp::watchdogs::{Disarm, Outcome, CHIP_DETECT_MAGIC_REG};
        use crate::protocol::esp::{Op, Reply};
        use crate::sim::{esp32c3::ESP32C3_MAGIC, esp32s3::ESP32S3_MAGIC};
        for (layout, magic, chip) in [
            (ESP32C3_RTC, ESP32C3_MAGIC, "ESP32-C3"),
            (ESP32S3_RTC, ESP32S3_MAGIC, "ESP32-S3"),
        ] {
            let mut w = Watchdogs::new(layout, true);
            w.on_boot(ResetCause::PowerOn, BootMode::App, Duration::ZERO);
            w.on_boot(ResetCause::UsbJtag, BootMode::Download, S);
            assert!(w.deadline().is_some(), "armed in download mode");
            let mut d = Disarm::default();
            let mut next = d.start();
            for _ in 0..16 {
                let Some(cmd) = next.take() else { break };
                let words = cmd.words();
                let value = match cmd.op() {
                    Op::ReadReg if words[0] == CHIP_DETECT_MAGIC_REG => magic,
                    Op::ReadReg => w.read(words[0]).expect("a watchdog register"),
                    _ => {
                        assert!(w.write(words[0], words[1], 2 * S), "{words:x?}");
                        0
                    }
                };
                next = d.answered(Reply::Answered {
                    value,
                    status: 0,
                    error: 0,
                });
            }
            assert_eq!(d.outcome(), Some(Outcome::Disarmed(chip)));
            assert_eq!(w.deadline(), None, "{chip}: the RWDT is off");
            assert!(!w.fired(3600 * S));
            assert_ne!(
                w.read(layout.swd_conf).unwrap() & SWD_AUTO_FEED_EN,
                0,
                "{chip}: SWD auto-fed"
            );
        }
    }

    #[test]
    fn writes_with_the_wrong_key_are_ignored() {
        let mut w = in_download();
        let l = ESP32C3_RTC;
        w.write(l.wdt_wprotect, WDT_WKEY ^ 1, 11 * S);
        w.write(l.wdt_config0, 0, 11 * S);
        assert!(w.fired(19 * S + Duration::from_millis(1)), "still armed");
        // The SWD key does not open the RWDT, nor the other way round.
        w.write(l.wdt_wprotect, SWD_WKEY, 11 * S);
        w.write(l.wdt_config0, 0, 11 * S);
        w.write(l.swd_wprotect, WDT_WKEY, 11 * S);
        w.write(l.swd_conf, 0, 11 * S);
        assert_ne!(w.read(l.wdt_config0), Some(0));
        assert_eq!(
            w.read(l.swd_conf).unwrap() & SWD_AUTO_FEED_EN,
            SWD_AUTO_FEED_EN
        );
        // Locked again after a 0: a later write without the key changes nothing.
        w.write(l.wdt_wprotect, WDT_WKEY, 12 * S);
        w.write(l.wdt_wprotect, 0, 12 * S);
        w.write(l.wdt_config0, 0, 12 * S);
        assert!(w.deadline().is_some());
        assert!(!w.write(0x6000_8000, 1, 12 * S), "not a watchdog register");
    }

    #[test]
    fn esptools_watchdog_reset_fires_within_milliseconds() {
        let mut w = Watchdogs::new(ESP32S3_RTC, false);
        w.on_boot(ResetCause::PowerOn, BootMode::Download, Duration::ZERO);
        let l = ESP32S3_RTC;
        w.write(l.wdt_wprotect, WDT_WKEY, S);
        w.write(l.wdt_config1, 2000, S);
        w.write(l.wdt_config0, (1 << 31) | (5 << 28) | (1 << 8) | 2, S);
        w.write(l.wdt_wprotect, 0, S);
        let d = w.deadline().unwrap() - S;
        assert!(
            d > Duration::from_millis(10) && d < Duration::from_millis(20),
            "{d:?}"
        );
    }
}
