//! The chip on its board: the auto-reset circuit's truth table, esptool's reset into the
//! download mode and back (boot count, banners, the software reset keeping the latched
//! straps, EN's RC delay, the tick lines' catch-up), and the reset button.

use std::time::Duration;

use super::chip::{auto_reset_circuit, Chip, Mode, Pins};
use super::flash::Flash;
use crate::protocol::line::Lines;
use crate::sim::testkit::{request, text, words, T0};

#[test]
fn reset_circuit_truth_table() {
    let l = |dtr, rts| auto_reset_circuit(Lines { dtr, rts });
    assert_eq!(
        l(false, false),
        Pins {
            en: true,
            io0: true
        }
    );
    assert_eq!(
        l(true, true),
        Pins {
            en: true,
            io0: true
        }
    );
    assert_eq!(
        l(false, true),
        Pins {
            en: false,
            io0: true
        }
    );
    assert_eq!(
        l(true, false),
        Pins {
            en: true,
            io0: false
        }
    );
}

#[test]
fn reset_sequence_enters_download_and_counts_boots() {
    let mut chip = Chip::new(Flash::new(), false, T0);
    assert_eq!(chip.mode(), Mode::App);
    assert!(text(&mut chip, T0).contains("boot:0x13 (SPI_FAST_FLASH_BOOT)"));
    // esptool's UnixTightReset: EN low, then EN high with IO0 low, then release.
    chip.set_lines(
        Lines {
            dtr: false,
            rts: true,
        },
        Duration::from_millis(10),
    );
    assert_eq!(chip.mode(), Mode::Reset);
    assert_eq!(text(&mut chip, Duration::from_millis(50)), "");
    chip.set_lines(
        Lines {
            dtr: true,
            rts: false,
        },
        Duration::from_millis(110),
    );
    chip.set_lines(
        Lines {
            dtr: false,
            rts: false,
        },
        Duration::from_millis(160),
    );
    assert_eq!(chip.mode(), Mode::Download);
    assert_eq!(chip.boot_count(), 2);
    assert_eq!(
        text(&mut chip, Duration::from_millis(200)),
        "ets Jun  8 2016 00:22:57\r\n\r\nrst:0x1 (POWERON_RESET),boot:0x3 \
         (DOWNLOAD_BOOT(UART0/UART1/SDIO_REI_REO_V2))\r\nwaiting for download\r\n"
    );
    // A software reset (ROM FLASH_END asking for a reboot) keeps the latched straps:
    // back into download mode although IO0 has been released since.
    chip.receive(&request(0x04, &words(&[0]), 0), Duration::from_millis(200));
    let mut reply = [0u8; 64];
    let n = chip.take_tx(&mut reply, Duration::from_millis(201)); // stops at the reboot
    assert_eq!((n, reply[1], reply[2]), (14, 0x01, 0x04));
    let out = text(&mut chip, Duration::from_millis(210));
    assert!(out.contains("rst:0x3 (SW_RESET),boot:0x3"), "{out}");
    assert_eq!((chip.mode(), chip.boot_count()), (Mode::Download, 3));
    // Hard reset (RTS pulse) boots the application again.
    chip.set_lines(
        Lines {
            dtr: false,
            rts: true,
        },
        Duration::from_millis(300),
    );
    chip.set_lines(
        Lines {
            dtr: false,
            rts: false,
        },
        Duration::from_millis(400),
    );
    assert_eq!(chip.mode(), Mode::Reset, "EN's RC: not up yet");
    chip.advance(Duration::from_millis(401));
    assert_eq!(chip.mode(), Mode::App);
    assert_eq!(chip.boot_count(), 4);
    let out = text(&mut chip, Duration::from_millis(401));
    assert!(out.ends_with("sim: app start, boot #4\r\n"), "{out}");
    // Two seconds without a look: only the latest tick line, its number shows the gap.
    let out = text(&mut chip, Duration::from_millis(2450));
    assert_eq!(out, "sim: app tick 19, boot #4\r\n");
    // Opening the port (pyserial asserts both lines) does not reset.
    chip.set_lines(
        Lines {
            dtr: true,
            rts: true,
        },
        Duration::from_millis(2500),
    );
    assert_eq!((chip.mode(), chip.boot_count()), (Mode::App, 4));
}

#[test]
fn reset_button_with_and_without_boot() {
    let mut chip = Chip::new(Flash::new(), false, T0);
    chip.press_reset(true, T0);
    assert_eq!((chip.mode(), chip.boot_count()), (Mode::Download, 2));
    chip.press_reset(false, T0);
    assert_eq!((chip.mode(), chip.boot_count()), (Mode::App, 3));
    // While the host holds EN low, the button cannot bring the chip up.
    let hold = Lines {
        dtr: false,
        rts: true,
    };
    chip.set_lines(hold, T0);
    chip.press_reset(false, T0);
    assert_eq!(chip.mode(), Mode::Reset);
}
