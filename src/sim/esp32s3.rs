//! What the simulated ESP32-S3 says about itself: an ESP32-S3 (QFN56) revision v0.2 with
//! external flash, its MAC in eFuse block 1, the GET_SECURITY_INFO answer esptool 5 uses to
//! identify it, and the ROM's `UARTDEV_BUF_NO` esptool 4.x reads to tell USB-Serial/JTAG from
//! USB-OTG. Addresses and decodings from esptool's `targets/esp32s3.py` (4.8.1 for
//! `UARTDEV_BUF_NO`).

use super::board::UsbPort;

/// eFuse controller; block 1 (MAC, package, revision) at +0x44, block 2 at +0x5C.
pub(crate) const EFUSE_BASE: u32 = 0x6000_7000;
pub(crate) const EFUSE_BLOCK1: u32 = EFUSE_BASE + 0x044;
/// Everything of the eFuse block esptool may read (keys, purposes, security flags).
const EFUSE_LEN: u32 = 0x200;

/// SPI1 (the flash controller): the C3's register layout (`SPI_USR_OFFS` 0x18 ... `SPI_W0_OFFS`
/// 0x58, the same in `targets/esp32s3.py`).
pub(crate) const SPI_BASE: u32 = 0x6000_2000;
pub(crate) const SPI_BLOCK_LEN: u32 = 0x100;

/// UART0 clock divider and date registers (`UART_DATE_REG_ADDR = 0x60000080`).
pub(crate) const UART_CLKDIV: u32 = 0x6000_0014;
pub(crate) const UART_DATE: u32 = 0x6000_0080;
/// Latched strapping pins; bit 3 set = SPI boot (`GPIO_STRAP_SPI_BOOT_MASK`).
pub(crate) const GPIO_STRAP: u32 = 0x6000_4038;
/// `RTC_CNTL_OPTION1_REG`: bit 0 forces download boot over USB (esptool reads it before a
/// USB-OTG hard reset); 0 here.
pub(crate) const RTC_CNTL_OPTION1: u32 = 0x6000_812C;
/// The first word of the ROM (`CHIP_DETECT_MAGIC_REG_ADDR`); the S3's value is 0x9.
pub(crate) const CHIP_DETECT_MAGIC_REG: u32 = 0x4000_1000;
pub(crate) const ESP32S3_MAGIC: u32 = 0x9;
/// The ROM `.bss` variable holding the console in use (esptool 4.8.1 `UARTDEV_BUF_NO`):
/// 3 = USB-OTG, 4 = USB-Serial/JTAG (`UARTDEV_BUF_NO_USB_OTG`, `..._USB_JTAG_SERIAL`).
pub(crate) const UARTDEV_BUF_NO: u32 = 0x3FCE_F14C;
pub(crate) const UARTDEV_BUF_NO_USB_OTG: u32 = 3;
pub(crate) const UARTDEV_BUF_NO_USB_JTAG_SERIAL: u32 = 4;

/// `IMAGE_CHIP_ID` of the ESP32-S3: GET_SECURITY_INFO's chip id, and the USB-OTG PID.
pub(crate) const CHIP_ID: u32 = 9;

/// The base MAC, an Espressif OUI (F4:12:FA).
pub(crate) const MAC: [u8; 6] = [0xF4, 0x12, 0xFA, 0x4B, 0x2C, 0x10];

/// Strapping values as the ROM banner prints them.
pub(crate) const STRAP_DOWNLOAD: u32 = 0x23;
pub(crate) const STRAP_SPI_BOOT: u32 = 0x08;

/// The ROM's first lines, before `rst:`.
pub(crate) const ROM_BANNER: &str = "ESP-ROM:esp32s3-20210327\r\nBuild:Mar 27 2021\r\n";
/// The rest of the ROM's boot log when it boots the application from flash.
pub(crate) const BOOT_LOG_APP: &str = ",boot:0x8 (SPI_FAST_FLASH_BOOT)\r\n\
     SPIWP:0xee\r\n\
     mode:DIO, clock div:1\r\n\
     entry 0x403c98d0\r\n";
/// The rest of the ROM's boot log when it enters the download mode.
pub(crate) const BOOT_LOG_DOWNLOAD: &str = ",boot:0x23 (DOWNLOAD(USB/UART0))\r\n\
     waiting for download\r\n";

/// The UART's clock under the ROM (XTAL, 40 MHz; esptool: "ESP32S3 XTAL is fixed to 40MHz").
pub(crate) const APB_HZ: u32 = 40_000_000;

/// eFuse block 1 word `n` (esptool reads `EFUSE_BLOCK1_ADDR + 4 * n`).
pub(crate) fn block1_word(n: u32) -> u32 {
    match n {
        // MAC bytes 2..6, big-endian, as `read_mac` reassembles them ...
        0 => u32::from_be_bytes([MAC[2], MAC[3], MAC[4], MAC[5]]),
        // ... and bytes 0..2 in the low half of the next word.
        1 => u32::from(MAC[0]) << 8 | u32::from(MAC[1]),
        // Minor revision low bits (18..21) = 2; package 0 (QFN56, bits 21..24); block
        // version minor 0 (bits 24..27: not the v0.0 "eco0" quirk); no embedded flash
        // (bits 27..30).
        3 => 2 << 18,
        // Major revision 0 (bits 24..26), minor high bit (23) clear, no PSRAM (bit 19).
        _ => 0,
    }
}

/// Registers that describe the chip; `None` for everything else. `usb`: the console the
/// ROM runs on (what `UARTDEV_BUF_NO` says).
pub(crate) fn identity_reg(
    addr: u32,
    uart_baud: u32,
    download: bool,
    usb: Option<UsbPort>,
) -> Option<u32> {
    Some(match addr {
        CHIP_DETECT_MAGIC_REG => ESP32S3_MAGIC,
        UART_CLKDIV => (APB_HZ / uart_baud.max(1)) & 0xF_FFFF,
        UART_DATE => 0x2010_0000,
        GPIO_STRAP => {
            if download {
                STRAP_DOWNLOAD
            } else {
                STRAP_SPI_BOOT
            }
        }
        RTC_CNTL_OPTION1 => 0,
        UARTDEV_BUF_NO => match usb {
            Some(UsbPort::Otg) => UARTDEV_BUF_NO_USB_OTG,
            Some(UsbPort::SerialJtag) => UARTDEV_BUF_NO_USB_JTAG_SERIAL,
            None => 0,
        },
        a if (EFUSE_BLOCK1..EFUSE_BLOCK1 + 0x18).contains(&a) && a % 4 == 0 => {
            block1_word((a - EFUSE_BLOCK1) / 4)
        }
        // Security flags, key purposes, block 2 (block version major 0): all zero.
        a if (EFUSE_BASE..EFUSE_BASE + EFUSE_LEN).contains(&a) && a % 4 == 0 => 0,
        _ => return None,
    })
}

/// The GET_SECURITY_INFO answer: flags, flash_crypt_cnt, 7 key purposes, chip id, API
/// version (`<IBBBBBBBBII`).
pub(crate) fn security_info() -> [u8; 20] {
    let mut out = [0u8; 20];
    out[12..16].copy_from_slice(&CHIP_ID.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_like_esptool_does() {
        let reg = |a: u32| identity_reg(a, 115_200, true, Some(UsbPort::Otg)).unwrap();
        let w3 = reg(EFUSE_BLOCK1 + 12);
        let w5 = reg(EFUSE_BLOCK1 + 20);
        assert_eq!((w3 >> 21) & 7, 0, "pkg: ESP32-S3 (QFN56)");
        let minor = (((w5 >> 23) & 1) << 3) + ((w3 >> 18) & 7);
        assert_eq!(((w5 >> 24) & 3, minor), (0, 2), "revision v0.2");
        assert_ne!(minor & 7, 0, "not the eco0 block-version quirk");
        assert_eq!((w3 >> 27) & 7, 0, "no embedded flash");
        let mut bits = [0u8; 8];
        bits[..4].copy_from_slice(&reg(EFUSE_BLOCK1 + 4).to_be_bytes());
        bits[4..].copy_from_slice(&reg(EFUSE_BLOCK1).to_be_bytes());
        assert_eq!(bits[2..8], MAC);
        assert_eq!(reg(CHIP_DETECT_MAGIC_REG), 9);
        assert_eq!(reg(GPIO_STRAP) & 1 << 3, 0, "download: GPIO0 low");
        let si = security_info();
        assert_eq!(u32::from_le_bytes(si[12..16].try_into().unwrap()), 9);
    }

    #[test]
    fn uartdev_buf_no_tells_the_console() {
        let no = |usb| identity_reg(UARTDEV_BUF_NO, 115_200, true, usb).unwrap() & 0xFF;
        assert_eq!(no(Some(UsbPort::Otg)), 3);
        assert_eq!(no(Some(UsbPort::SerialJtag)), 4);
        assert_eq!(no(None), 0);
    }
}
