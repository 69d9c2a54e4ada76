//! The native-USB boards as strict as the chips: the RTC watchdog that resets a
//! USB-Serial/JTAG chip part-way through a flash unless the host disabled it (esptool's
//! `disable_watchdogs`, through WRITE_REG frames), the USB-OTG CDC's block limit, and the
//! registers esptool 4.x and 5.x identify the boards by.

use std::time::Duration;

use crate::sim::board::{BootMode, ResetCause, SimBoard, USB_OTG_MAX_BLOCK};
use crate::sim::chip::{Chip, Mode};
use crate::sim::flash::Flash;
use crate::sim::loader::Command;
use crate::sim::rtc::{RtcLayout, BOOTLOADER_WDT_TIME, SWD_AUTO_FEED_EN, SWD_WKEY, WDT_WKEY};
use crate::sim::testkit::{block_request, command, frames, parse, text, words, T0};
use crate::sim::{esp32c3, esp32s3};

const MS: Duration = Duration::from_millis(1);

/// `board` started in download mode the way esptool gets there (see `Chip::labelled`),
/// its banner read.
fn in_download(board: SimBoard) -> Chip {
    let mut chip = Chip::for_board(board, Flash::new(), true, T0);
    let banner = text(&mut chip, T0);
    assert!(banner.contains("waiting for download"), "{board}: {banner}");
    chip
}

fn write_reg(chip: &mut Chip, addr: u32, value: u32) {
    let (_, _, st) = command(
        chip,
        Command::WriteReg as u8,
        &words(&[addr, value, 0xFFFF_FFFF, 0]),
        4,
    );
    assert_eq!(st, [0, 0, 0, 0]);
}

fn read_reg(chip: &mut Chip, addr: u32) -> u32 {
    command(chip, Command::ReadReg as u8, &words(&[addr]), 4).0
}

/// esptool's `disable_watchdogs` (`targets/esp32c3.py`, `esp32s3.py`), register by register.
fn disable_watchdogs(chip: &mut Chip, l: RtcLayout) {
    write_reg(chip, l.wdt_wprotect, WDT_WKEY);
    write_reg(chip, l.wdt_config0, 0);
    write_reg(chip, l.wdt_wprotect, 0);
    write_reg(chip, l.swd_wprotect, SWD_WKEY);
    let swd = read_reg(chip, l.swd_conf);
    write_reg(chip, l.swd_conf, swd | SWD_AUTO_FEED_EN);
    write_reg(chip, l.swd_wprotect, 0);
}

const USB_JTAG: [(SimBoard, RtcLayout); 2] = [
    (SimBoard::UsbJtag, crate::sim::rtc::ESP32C3_RTC),
    (SimBoard::S3UsbJtag, crate::sim::rtc::ESP32S3_RTC),
];

#[test]
fn the_rtc_watchdog_resets_a_usb_jtag_chip_in_download_mode() {
    for (board, _) in USB_JTAG {
        let mut chip = in_download(board);
        let entered = chip.boots().back().unwrap().at;
        chip.advance(T0 + BOOTLOADER_WDT_TIME - MS);
        assert_eq!(chip.mode(), Mode::Download, "{board}: not yet");
        assert_eq!(chip.usb_resets(), 0);
        chip.advance(entered + BOOTLOADER_WDT_TIME + MS);
        assert_eq!(
            chip.mode(),
            Mode::App,
            "{board}: reset into the application"
        );
        let last = *chip.boots().back().unwrap();
        assert_eq!(
            (last.cause, last.mode),
            (ResetCause::RtcWatchdog, BootMode::App)
        );
        assert_eq!(last.at, entered + BOOTLOADER_WDT_TIME);
        assert_eq!(chip.usb_resets(), 1, "{board}: the port re-enumerates");
        let out = text(&mut chip, T0 + BOOTLOADER_WDT_TIME + MS);
        assert!(out.contains("rst:0x10 (RTCWDT_RTC_RST)"), "{board}: {out}");
        // The deadline is announced, so a device thread wakes up for it.
        let mut chip = in_download(board);
        assert_eq!(chip.next_deadline(), Some(entered + BOOTLOADER_WDT_TIME));
        // A request mid-way does not feed it (the ROM never does).
        chip.advance(T0 + Duration::from_secs(5));
        read_reg(&mut chip, 0x6000_0000);
        chip.advance(entered + BOOTLOADER_WDT_TIME + MS);
        assert_eq!(chip.mode(), Mode::App, "{board}");
    }
}

#[test]
fn disabling_the_watchdogs_like_esptool_keeps_the_chip_in_the_loader() {
    for (board, layout) in USB_JTAG {
        let mut chip = in_download(board);
        disable_watchdogs(&mut chip, layout);
        assert_eq!(read_reg(&mut chip, layout.wdt_config0), 0);
        assert_ne!(read_reg(&mut chip, layout.swd_conf) & SWD_AUTO_FEED_EN, 0);
        chip.advance(T0 + Duration::from_secs(600));
        assert_eq!(chip.mode(), Mode::Download, "{board}");
        assert_eq!((chip.boot_count(), chip.usb_resets()), (2, 0), "{board}");
        assert_eq!(chip.next_deadline(), None);
    }
}

#[test]
fn watchdog_writes_with_the_wrong_key_are_ignored() {
    for (board, layout) in USB_JTAG {
        let mut chip = in_download(board);
        write_reg(&mut chip, layout.wdt_wprotect, 0x1234_5678);
        write_reg(&mut chip, layout.wdt_config0, 0);
        assert_ne!(read_reg(&mut chip, layout.wdt_config0), 0, "{board}");
        // The other block's register layout (C3 on S3 and back) is not the watchdog.
        chip.advance(T0 + BOOTLOADER_WDT_TIME + Duration::from_secs(1));
        assert_eq!(chip.mode(), Mode::App, "{board}: still fired");
    }
}

#[test]
fn otg_has_no_watchdog_left_running_but_a_small_cdc_buffer() {
    let mut chip = in_download(SimBoard::S3Otg);
    assert_eq!(chip.next_deadline(), None);
    // MEM_BEGIN at esptool's UART size (ESP_RAM_BLOCK 0x1800) is fine; the block is not.
    let (_, _, st) = command(
        &mut chip,
        Command::MemBegin as u8,
        &words(&[0x1800, 1, 0x1800, 0x4037_0000]),
        4,
    );
    assert_eq!(st, [0, 0, 0, 0]);
    chip.receive(
        &block_request(Command::MemData as u8, 0, &[0x11; 0x1800]),
        T0,
    );
    assert!(
        frames(&mut chip).is_empty(),
        "no answer: the host times out"
    );
    chip.receive(
        &block_request(Command::MemData as u8, 0, &[0x11; USB_OTG_MAX_BLOCK]),
        T0,
    );
    let f = frames(&mut chip);
    assert_eq!(f.len(), 1);
    assert_eq!(parse(&f[0], 4).3, [0, 0, 0, 0]);

    // FLASH_DATA: a 0x800 block is written, a bigger one never arrives.
    let begin = |chip: &mut Chip, block: u32| {
        let (_, _, st) = command(
            chip,
            Command::FlashBegin as u8,
            &words(&[block, 1, block, 0x1_0000]),
            4,
        );
        assert_eq!(st, [0, 0, 0, 0]);
    };
    begin(&mut chip, USB_OTG_MAX_BLOCK as u32);
    let payload: Vec<u8> = (0..USB_OTG_MAX_BLOCK).map(|i| i as u8).collect();
    chip.receive(&block_request(Command::FlashData as u8, 0, &payload), T0);
    assert_eq!(parse(&frames(&mut chip)[0], 4).3, [0, 0, 0, 0]);
    assert_eq!(chip.flash().read(0x1_0000, 0x800).unwrap(), &payload[..]);
    begin(&mut chip, 0x1000);
    chip.receive(
        &block_request(Command::FlashData as u8, 0, &[0xA5; 0x1000]),
        T0,
    );
    assert!(frames(&mut chip).is_empty());
    assert!(chip
        .flash()
        .read(0x1_0000, 0x1000)
        .unwrap()
        .iter()
        .all(|&b| b == 0xFF));
    // The stub brings its own USB driver: it takes the big block.
    let mut stub = in_download(SimBoard::S3Otg);
    crate::sim::testkit::upload_stub(&mut stub);
    let (_, _, st) = command(
        &mut stub,
        Command::FlashBegin as u8,
        &words(&[0x4000, 1, 0x4000, 0x1_0000]),
        2,
    );
    assert_eq!(st, [0, 0]);
    stub.receive(
        &block_request(Command::FlashData as u8, 0, &[0x5A; 0x4000]),
        T0,
    );
    assert_eq!(parse(&frames(&mut stub)[0], 2).3, [0, 0]);
    assert!(stub
        .flash()
        .read(0x1_0000, 0x4000)
        .unwrap()
        .iter()
        .all(|&b| b == 0x5A));
    // A USB-Serial/JTAG board's ROM takes the big block.
    let mut usj = in_download(SimBoard::S3UsbJtag);
    begin(&mut usj, 0x1000);
    usj.receive(
        &block_request(Command::FlashData as u8, 0, &[0xA5; 0x1000]),
        T0,
    );
    assert_eq!(parse(&frames(&mut usj)[0], 4).3, [0, 0, 0, 0]);
    assert!(usj
        .flash()
        .read(0x1_0000, 0x1000)
        .unwrap()
        .iter()
        .all(|&b| b == 0xA5));
}

#[test]
fn boards_identify_as_esptool_reads_them() {
    // (board, UARTDEV_BUF_NO address, its value, GET_SECURITY_INFO chip id)
    let cases = [
        (SimBoard::UsbJtag, esp32c3::UARTDEV_BUF_NO, 3, 5),
        (SimBoard::S3UsbJtag, esp32s3::UARTDEV_BUF_NO, 4, 9),
        (SimBoard::S3Otg, esp32s3::UARTDEV_BUF_NO, 3, 9),
    ];
    for (board, addr, no, chip_id) in cases {
        let mut chip = in_download(board);
        assert_eq!(read_reg(&mut chip, addr) & 0xFF, no, "{board}");
        let (_, data, st) = command(&mut chip, Command::GetSecurityInfo as u8, &[], 4);
        assert_eq!(st, [0, 0, 0, 0]);
        assert_eq!(
            u32::from_le_bytes(data[12..16].try_into().unwrap()),
            chip_id
        );
    }
    let mut s3 = in_download(SimBoard::S3Otg);
    assert_eq!(read_reg(&mut s3, esp32s3::CHIP_DETECT_MAGIC_REG), 9);
    assert_eq!(read_reg(&mut s3, esp32s3::GPIO_STRAP) & 1 << 3, 0);
}
