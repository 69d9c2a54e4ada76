//! What the simulated ESP32-C3 says about itself: an ESP32-C3 (QFN32) revision v0.4 with
//! external flash, its MAC in eFuse block 1, and the GET_SECURITY_INFO answer esptool 5 uses
//! to identify it (`targets/esp32c3.py`: chip id 5, no secure boot or encryption).

/// eFuse controller; block 1 (MAC, package, revision) starts at +0x44.
pub(crate) const EFUSE_BASE: u32 = 0x6000_8800;
pub(crate) const EFUSE_BLOCK1: u32 = EFUSE_BASE + 0x044;
/// Everything of the eFuse block esptool may read (keys, purposes, security flags).
const EFUSE_LEN: u32 = 0x200;

/// SPI1 (the flash controller) register block, C3 layout (see `spi::ESP32C3_LAYOUT`).
pub(crate) const SPI_BASE: u32 = 0x6000_2000;
pub(crate) const SPI_BLOCK_LEN: u32 = 0x100;

/// UART0 clock divider and date registers.
pub(crate) const UART_CLKDIV: u32 = 0x6000_0014;
pub(crate) const UART_DATE: u32 = 0x6000_007C;
/// Latched strapping pins (`boot:0x..` in the ROM banner).
pub(crate) const GPIO_STRAP: u32 = 0x6000_4038;
/// The first word of the ROM (`CHIP_DETECT_MAGIC_REG_ADDR`): esptool only reads it when
/// GET_SECURITY_INFO fails; this is one of the C3 values it knows.
pub(crate) const CHIP_DETECT_MAGIC_REG: u32 = 0x4000_1000;
pub(crate) const ESP32C3_MAGIC: u32 = 0x1B31_506F;

/// The ROM `.bss` variable holding the console in use, which esptool 4.x reads to detect
/// USB-Serial/JTAG (4.8.1 `targets/esp32c3.py`: `UARTDEV_BUF_NO = 0x3FCDF07C`,
/// `UARTDEV_BUF_NO_USB_JTAG_SERIAL = 3`; 5.2 computes it from the revision: 0x3FCDF064 + 24
/// below v1.1, which is this v0.4's); 0 would be UART0.
pub(crate) const UARTDEV_BUF_NO: u32 = 0x3FCD_F07C;
pub(crate) const UARTDEV_BUF_NO_USB_JTAG_SERIAL: u32 = 3;

/// `IMAGE_CHIP_ID` of the ESP32-C3: what GET_SECURITY_INFO reports as the chip id.
pub(crate) const CHIP_ID: u32 = 5;
/// The ROM API version GET_SECURITY_INFO reports (ECO3 and later).
pub(crate) const API_VERSION: u32 = 3;

/// The base MAC, Espressif OUI 34:85:18.
pub(crate) const MAC: [u8; 6] = [0x34, 0x85, 0x18, 0x0C, 0x3A, 0x5E];

/// Strapping values as the ROM banner prints them.
pub(crate) const STRAP_DOWNLOAD: u32 = 0x07;
pub(crate) const STRAP_SPI_BOOT: u32 = 0x0C;

/// The ROM's first lines, before `rst:`.
pub(crate) const ROM_BANNER: &str = "ESP-ROM:esp32c3-api1-20210207\r\nBuild:Feb  7 2021\r\n";
/// The rest of the ROM's boot log when it boots the application from flash.
pub(crate) const BOOT_LOG_APP: &str = ",boot:0xc (SPI_FAST_FLASH_BOOT)\r\n\
     Saved PC:0x40380dd2\r\n\
     SPIWP:0xee\r\n\
     mode:DIO, clock div:1\r\n\
     entry 0x403cc710\r\n";
/// The rest of the ROM's boot log when it enters the download mode.
pub(crate) const BOOT_LOG_DOWNLOAD: &str = ",boot:0x7 (DOWNLOAD(USB/UART0/1))\r\n\
     Saved PC:0x40048b82\r\n\
     waiting for download\r\n";

/// APB clock under the ROM and the stub (the UART divider follows it).
pub(crate) const APB_HZ: u32 = 40_000_000;

/// eFuse block 1 word `n` (esptool reads `EFUSE_BLOCK1_ADDR + 4 * n`).
pub(crate) fn block1_word(n: u32) -> u32 {
    match n {
        // MAC bytes 2..6, big-endian, as `read_mac` reassembles them ...
        0 => u32::from_be_bytes([MAC[2], MAC[3], MAC[4], MAC[5]]),
        // ... and bytes 0..2 in the low half of the next word.
        1 => u32::from(MAC[0]) << 8 | u32::from(MAC[1]),
        // Minor revision low bits (18..21) = 4; package 0 (QFN32, bits 21..24); no
        // embedded flash (bits 27..30).
        3 => 4 << 18,
        // Major revision 0 (bits 24..26), minor revision high bit (23) clear.
        _ => 0,
    }
}

/// Registers that describe the chip; `None` for everything else. `usb_jtag`: the ROM's
/// console is the USB-Serial/JTAG (what `UARTDEV_BUF_NO` says).
pub(crate) fn identity_reg(
    addr: u32,
    uart_baud: u32,
    download: bool,
    usb_jtag: bool,
) -> Option<u32> {
    Some(match addr {
        UARTDEV_BUF_NO => {
            if usb_jtag {
                UARTDEV_BUF_NO_USB_JTAG_SERIAL
            } else {
                0
            }
        }
        CHIP_DETECT_MAGIC_REG => ESP32C3_MAGIC,
        UART_CLKDIV => (APB_HZ / uart_baud.max(1)) & 0xF_FFFF,
        UART_DATE => 0x2000_0000,
        GPIO_STRAP => {
            if download {
                STRAP_DOWNLOAD
            } else {
                STRAP_SPI_BOOT
            }
        }
        a if (EFUSE_BLOCK1..EFUSE_BLOCK1 + 0x18).contains(&a) && a % 4 == 0 => {
            block1_word((a - EFUSE_BLOCK1) / 4)
        }
        // Security flags, key purposes, crypt counters: all zero (an open chip).
        a if (EFUSE_BASE..EFUSE_BASE + EFUSE_LEN).contains(&a) && a % 4 == 0 => 0,
        _ => return None,
    })
}

/// The GET_SECURITY_INFO answer: flags, flash_crypt_cnt, 7 key purposes, chip id, API
/// version (`<IBBBBBBBBII`).
pub(crate) fn security_info() -> [u8; 20] {
    let mut out = [0u8; 20];
    out[12..16].copy_from_slice(&CHIP_ID.to_le_bytes());
    out[16..20].copy_from_slice(&API_VERSION.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_like_esptool_does() {
        let reg = |a: u32| identity_reg(a, 115_200, true, true).unwrap();
        assert_eq!(
            reg(UARTDEV_BUF_NO) & 0xFF,
            3,
            "esptool 4.x: USB-Serial/JTAG"
        );
        let w3 = reg(EFUSE_BLOCK1 + 12);
        let w5 = reg(EFUSE_BLOCK1 + 20);
        assert_eq!((w3 >> 21) & 7, 0, "pkg: ESP32-C3 (QFN32)");
        let minor = (((w5 >> 23) & 1) << 3) + ((w3 >> 18) & 7);
        assert_eq!(((w5 >> 24) & 3, minor), (0, 4), "revision v0.4");
        assert_eq!((w3 >> 27) & 7, 0, "no embedded flash");
        // read_mac: pack(">II", mac1, mac0)[2:]
        let mut bits = [0u8; 8];
        bits[..4].copy_from_slice(&reg(EFUSE_BLOCK1 + 4).to_be_bytes());
        bits[4..].copy_from_slice(&reg(EFUSE_BLOCK1).to_be_bytes());
        assert_eq!(bits[2..8], MAC);
        // Secure boot off (EFUSE_BASE + 0x38 bit 20), encryption counter 0.
        assert_eq!(reg(EFUSE_BASE + 0x38), 0);
        assert_eq!(reg(EFUSE_BASE + 0x34), 0);
        let si = security_info();
        assert_eq!(u32::from_le_bytes(si[12..16].try_into().unwrap()), 5);
        assert_eq!(u32::from_le_bytes(si[0..4].try_into().unwrap()) & 1 << 2, 0);
    }
}
