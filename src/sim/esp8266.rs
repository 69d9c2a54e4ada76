//! What the simulated ESP8266 says about itself, and the quirks of its ROM that esptool works
//! around: an ESP8266EX with a 26 MHz crystal, its MAC in the OTP words, the ROM's boot log
//! at 74880 baud, and the erase bug of the ROM's FLASH_BEGIN.
//!
//! The values are chosen against esptool's decoding (`targets/esp8266.py`, the same in 3.3
//! to 5.x): `get_chip_description` reads the four OTP words as one 128-bit eFuse value,
//! `read_mac` and `chip_id` pick bytes out of them, `get_crystal_freq` multiplies the UART
//! divider by the line's baud and halves it.

/// The first word of the ROM (`CHIP_DETECT_MAGIC_REG_ADDR`): how esptool tells the ESP8266
/// from the others, since its ROM has no GET_SECURITY_INFO.
pub(crate) const CHIP_DETECT_MAGIC_REG: u32 = 0x4000_1000;
pub(crate) const ESP8266_MAGIC: u32 = 0xFFF0_C101;

/// The OTP words (`ESP_OTP_MAC0`, `ESP_OTP_MAC1`, the third one esptool only reads as part of
/// the eFuses, `ESP_OTP_MAC3`).
pub(crate) const OTP_MAC0: u32 = 0x3FF0_0050;
pub(crate) const OTP_MAC1: u32 = 0x3FF0_0054;
pub(crate) const OTP_WORD2: u32 = 0x3FF0_0058;
pub(crate) const OTP_MAC3: u32 = 0x3FF0_005C;

/// UART0 clock divider (`UART_CLKDIV_REG`).
pub(crate) const UART_CLKDIV: u32 = 0x6000_0014;

/// SPI0, the flash controller (`SPI_REG_BASE`; layout `spi::ESP8266_LAYOUT`).
pub(crate) const SPI_BASE: u32 = 0x6000_0200;
pub(crate) const SPI_BLOCK_LEN: u32 = 0x100;

/// The MAC: Espressif's OUI 5C:CF:7F, given explicitly in the third MAC word (a zero word
/// would make esptool guess 18:FE:34 or AC:D0:74 from another field).
pub(crate) const MAC: [u8; 6] = [0x5C, 0xCF, 0x7F, 0xA1, 0xB2, 0xC3];

/// What the UART divider divides: the ROM runs its PLL as if the crystal were 40 MHz, which
/// with the usual 26 MHz crystal makes 52 MHz (esptool's `XTAL_CLK_DIVIDER` of 2 undoes it).
/// The stub leaves the clock alone.
pub(crate) const UART_CLK_HZ: u32 = 52_000_000;

/// The rate the ROM's boot log comes out at: it programs the UART for 115200 assuming a
/// 40 MHz crystal, so on a 26 MHz one the line runs at 115200 × 26 / 40.
pub(crate) const ROM_LOG_BAUD: u32 = 74_880;

/// The ROM's first line (after a blank one), before `rst cause:` and `boot mode:`.
pub(crate) const ROM_BANNER: &str = "\r\n ets Jan  8 2013,";

/// `boot mode:(STRAPS,7)`, STRAPS being GPIO15, GPIO0, GPIO2 read as a 3-bit number: 3 boots
/// from flash (GPIO0 high), 1 is the UART download mode (GPIO0 low).
pub(crate) const BOOT_MODE_FLASH: &str = " boot mode:(3,7)\r\n\r\n";
pub(crate) const BOOT_MODE_DOWNLOAD: &str = " boot mode:(1,7)\r\n\r\n";

/// What the ROM prints while it loads the application's segments from flash into IRAM and
/// DRAM, before jumping to it (the checksum lines of a typical image).
pub(crate) const ROM_LOAD_LOG: &str = "load 0x40100000, len 27728, room 16 \r\n\
     tail 0\r\n\
     chksum 0x2a\r\n\
     load 0x3ffe8000, len 2124, room 0 \r\n\
     tail 12\r\n\
     chksum 0x0b\r\n\
     load 0x3ffe8850, len 9088, room 8 \r\n\
     tail 8\r\n\
     chksum 0x3f\r\n\
     csum 0x3f\r\n";

/// OTP word `n` (0..4, at `OTP_MAC0 + 4 * n`).
fn otp_word(n: u32) -> u32 {
    match n {
        // MAC byte 5 in the top byte; bit 4 clear (no embedded flash: not an ESP8285).
        0 => u32::from(MAC[5]) << 24,
        // MAC bytes 3 and 4 in the low half.
        1 => u32::from(MAC[3]) << 8 | u32::from(MAC[4]),
        // Bit 16 (eFuse bit 80) clear: not an ESP8285 either.
        2 => 0,
        // The OUI, bytes 0..3, in the low three bytes.
        3 => u32::from(MAC[0]) << 16 | u32::from(MAC[1]) << 8 | u32::from(MAC[2]),
        _ => 0,
    }
}

/// Registers that describe the chip; `None` for everything else. `uart_baud` is the rate the
/// UART is programmed for (the divider follows it).
pub(crate) fn identity_reg(addr: u32, uart_baud: u32) -> Option<u32> {
    Some(match addr {
        CHIP_DETECT_MAGIC_REG => ESP8266_MAGIC,
        UART_CLKDIV => {
            let baud = uart_baud.max(1);
            ((UART_CLK_HZ + baud / 2) / baud) & 0xF_FFFF
        }
        OTP_MAC0 | OTP_MAC1 | OTP_WORD2 | OTP_MAC3 => otp_word((addr - OTP_MAC0) / 4),
        _ => return None,
    })
}

/// Flash sectors per 64 KiB block, as the ROM's erase routine counts them.
const SECTORS_PER_BLOCK: u32 = 16;

/// The sectors the ROM's FLASH_BEGIN erases when asked for `size` bytes at `offset`, as
/// `(first sector, count)`. Its `SPIEraseArea` erases the sectors up to the next 64 KiB
/// boundary ("head") one by one and then, mistakenly, as many sectors again as it was asked
/// for in all: it erases `n + min(head, n)` sectors for `n` asked. esptool asks for less to
/// compensate (`ESP8266ROM.get_erase_size`); modelling the bug is what makes its
/// workaround come out right, and a sim that erased what it was asked would leave the end
/// of a re-flashed image unerased.
pub(crate) fn rom_erase_sectors(offset: u32, size: u32, sector_size: u32) -> (u32, u32) {
    let first = offset / sector_size;
    let asked = size.div_ceil(sector_size);
    let head = SECTORS_PER_BLOCK - first % SECTORS_PER_BLOCK;
    (first, asked + head.min(asked))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_like_esptool_does() {
        let reg = |a: u32| identity_reg(a, 115_200).unwrap();
        assert_eq!(reg(CHIP_DETECT_MAGIC_REG), 0xFFF0_C101);
        // get_efuses: the four words as one 128-bit value; ESP8285 iff bit 4 or bit 80.
        let efuses = u128::from(reg(OTP_MAC3)) << 96
            | u128::from(reg(OTP_WORD2)) << 64
            | u128::from(reg(OTP_MAC1)) << 32
            | u128::from(reg(OTP_MAC0));
        assert_eq!(efuses & (1 << 4 | 1 << 80), 0, "ESP8266EX");
        // read_mac: OUI from MAC3 (non-zero), then MAC1's two low bytes and MAC0's top byte.
        let (m0, m1, m3) = (reg(OTP_MAC0), reg(OTP_MAC1), reg(OTP_MAC3));
        assert_ne!(m3, 0);
        let mac = [
            (m3 >> 16) as u8,
            (m3 >> 8) as u8,
            m3 as u8,
            (m1 >> 8) as u8,
            m1 as u8,
            (m0 >> 24) as u8,
        ];
        assert_eq!(mac, MAC);
        // chip_id: (id0 >> 24) | ((id1 & 0xFFFFFF) << 8).
        assert_eq!((m0 >> 24) | (m1 & 0xFF_FFFF) << 8, 0x00A1_B2C3);
        // get_crystal_freq: divider × 115200 / 1e6 / 2 ≈ 26 MHz.
        let est = f64::from(reg(UART_CLKDIV)) * 115_200.0 / 1e6 / 2.0;
        assert!((est - 26.0).abs() < 0.5, "{est}");
    }

    /// esptool's `ESP8266ROM.get_erase_size`, in sectors.
    fn esptool_erase_size(offset: u32, size: u32) -> u32 {
        let num = size.div_ceil(4096);
        let start = offset / 4096;
        let head = (16 - start % 16).min(num);
        if num < 2 * head {
            num.div_ceil(2)
        } else {
            num - head
        }
    }

    #[test]
    fn the_rom_erase_bug_undoes_esptools_workaround() {
        for start in 0..40u32 {
            for sectors in 0..70u32 {
                let (offset, size) = (start * 4096, sectors * 4096);
                let asked = esptool_erase_size(offset, size) * 4096;
                let (first, count) = rom_erase_sectors(offset, asked, 4096);
                assert_eq!(first, start);
                // Everything the image covers, and at most one sector more.
                assert!(
                    count == sectors || count == sectors + 1,
                    "{sectors} sectors at {start}: the ROM erased {count}"
                );
            }
        }
        // Asked exactly, the ROM erases too much: the head twice over.
        assert_eq!(rom_erase_sectors(0x20000, 0x10000, 4096), (0x20, 32));
    }
}
