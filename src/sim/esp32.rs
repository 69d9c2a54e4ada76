//! What the simulated chip says about itself when esptool reads its registers: an
//! ESP32-D0WD-V3 (revision v3.0), dual core 240 MHz, 40 MHz crystal, a fixed MAC.
//!
//! The values are chosen against esptool's decoding (`targets/esp32.py`), so that
//! `chip-id` prints a plausible description and, importantly, the ROM baud-rate workaround
//! (which scales the requested rate by the ROM's crystal calibration) computes the exact
//! requested rate.

/// `CHIP_DETECT_MAGIC_REG_ADDR`: the first word of the ROM; esptool identifies chips by it.
pub(crate) const CHIP_DETECT_MAGIC_REG: u32 = 0x4000_1000;
/// What an ESP32 has there.
pub(crate) const ESP32_MAGIC: u32 = 0x00F0_1D83;

/// eFuse block 0 read registers.
pub(crate) const EFUSE_RD_BASE: u32 = 0x3FF5_A000;
/// APB_CTL_DATE: bit 31 is the third chip-revision bit.
pub(crate) const APB_CTL_DATE: u32 = 0x3FF6_607C;
/// RTC calibration result the ROM leaves behind; esptool derives the crystal from it.
pub(crate) const RTCCALICFG1: u32 = 0x3FF5_F06C;
/// UART0 clock divider: esptool multiplies it by the line baud to guess the crystal.
pub(crate) const UART_CLKDIV: u32 = 0x3FF4_0014;
/// Latched strapping pins (`boot:0x..` in the ROM banner).
pub(crate) const GPIO_STRAP: u32 = 0x3FF4_4038;

/// SPI1 (the flash controller) register block, as esptool addresses it on an ESP32.
pub(crate) const SPI_BASE: u32 = 0x3FF4_2000;
pub(crate) const SPI_BLOCK_LEN: u32 = 0x100;

/// The base MAC, Espressif OUI 24:0A:C4.
pub(crate) const MAC: [u8; 6] = [0x24, 0x0A, 0xC4, 0x5E, 0x1A, 0x70];

/// CK8M frequency eFuse (word 4, bits 0..8) and RTC calibration value, picked so that
/// `cali * 15625 * ck8m / 40` is exactly 40 MHz.
const CK8M_FREQ: u32 = 50;
const RTC_CALI_VALUE: u32 = 2048;
const XTAL_HZ: u32 = 40_000_000;

/// Strapping values as the ROM banner prints them.
pub(crate) const STRAP_DOWNLOAD: u32 = 0x03;
pub(crate) const STRAP_SPI_BOOT: u32 = 0x13;

/// The ROM's first line, before `rst:`.
pub(crate) const ROM_BANNER: &str = "ets Jun  8 2016 00:22:57\r\n\r\n";
/// The rest of the ROM's boot log when it boots the application from flash.
pub(crate) const BOOT_LOG_APP: &str = ",boot:0x13 (SPI_FAST_FLASH_BOOT)\r\n\
     configsip: 0, SPIWP:0xee\r\n\
     clk_drv:0x00,q_drv:0x00,d_drv:0x00,cs0_drv:0x00,hd_drv:0x00,wp_drv:0x00\r\n\
     mode:DIO, clock div:2\r\n\
     entry 0x400806a8\r\n";
/// The rest of the ROM's boot log when it enters the download mode.
pub(crate) const BOOT_LOG_DOWNLOAD: &str =
    ",boot:0x3 (DOWNLOAD_BOOT(UART0/UART1/SDIO_REI_REO_V2))\r\n\
     waiting for download\r\n";

/// The CRC-8 the MAC eFuse word carries (polynomial 0x07 reflected, as ESP-IDF's
/// `esp_crc8`), so tools that check it (espefuse) see a consistent MAC.
fn mac_crc8(mac: &[u8; 6]) -> u8 {
    let mut crc: u8 = 0;
    for &byte in mac {
        let mut b = byte;
        for _ in 0..8 {
            let mix = (crc ^ b) & 1;
            crc >>= 1;
            if mix != 0 {
                crc ^= 0x8C;
            }
            b >>= 1;
        }
    }
    crc
}

/// eFuse block 0 word `n` (esptool's `read_efuse(n)`).
pub(crate) fn efuse_word(n: u32) -> u32 {
    match n {
        // MAC bytes 2..6, big-endian, as esptool's `read_mac` reassembles them.
        1 => u32::from_be_bytes([MAC[2], MAC[3], MAC[4], MAC[5]]),
        // CRC in bits 16..24, MAC bytes 0..2 in the low half.
        2 => u32::from(mac_crc8(&MAC)) << 16 | u32::from(MAC[0]) << 8 | u32::from(MAC[1]),
        // pkg 1 (D0WD) in bits 9..12, rev bit 0 (bit 15), CPU frequency rated (bit 13,
        // bit 12 clear = 240 MHz); BT and the app CPU enabled (bits 0, 1 clear).
        3 => 1 << 9 | 1 << 15 | 1 << 13,
        // ADC Vref calibration present (bits 8..13) and the CK8M frequency.
        4 => 0x11 << 8 | CK8M_FREQ,
        // rev bit 1 (bit 20); minor revision 0 (bits 24..26); default SPI pads.
        5 => 1 << 20,
        _ => 0,
    }
}

/// Registers that describe the chip; `None` for everything else.
/// `uart_baud` is the rate the UART is programmed for (the divider follows it) and
/// `apb_hz` the bus clock (40 MHz under the ROM, 80 MHz under the stub).
pub(crate) fn identity_reg(addr: u32, uart_baud: u32, apb_hz: u32, download: bool) -> Option<u32> {
    Some(match addr {
        CHIP_DETECT_MAGIC_REG => ESP32_MAGIC,
        APB_CTL_DATE => 1 << 31 | 0x1604_2000,
        RTCCALICFG1 => RTC_CALI_VALUE << 7,
        UART_CLKDIV => (apb_hz / uart_baud.max(1)) & 0xF_FFFF,
        GPIO_STRAP => {
            if download {
                STRAP_DOWNLOAD
            } else {
                STRAP_SPI_BOOT
            }
        }
        a if (EFUSE_RD_BASE..EFUSE_RD_BASE + 0x80).contains(&a) && a % 4 == 0 => {
            efuse_word((a - EFUSE_RD_BASE) / 4)
        }
        _ => return None,
    })
}

/// APB clock under the ROM loader (the crystal).
pub(crate) const APB_ROM_HZ: u32 = XTAL_HZ;
/// APB clock once the stub has switched to the PLL.
pub(crate) const APB_STUB_HZ: u32 = 80_000_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_like_esptool_does() {
        let w3 = efuse_word(3);
        let w5 = efuse_word(5);
        let pkg = ((w3 >> 9) & 7) + (((w3 >> 2) & 1) << 3);
        assert_eq!(pkg, 1, "ESP32-D0WD");
        let date = identity_reg(APB_CTL_DATE, 115_200, APB_ROM_HZ, true).unwrap();
        let rev_bits = (date >> 31) << 2 | ((w5 >> 20) & 1) << 1 | (w3 >> 15) & 1;
        assert_eq!(rev_bits, 7, "major revision 3");
        assert_eq!((w5 >> 24) & 3, 0, "minor revision 0");
        // ROM crystal calibration: exactly 40 MHz, so CHANGE_BAUDRATE is not skewed.
        let cali =
            (identity_reg(RTCCALICFG1, 115_200, APB_ROM_HZ, true).unwrap() >> 7) & 0x1FF_FFFF;
        let ck8m = efuse_word(4) & 0xFF;
        assert_eq!(u64::from(cali) * 15625 * u64::from(ck8m) / 40, 40_000_000);
        // MAC reassembly: pack(">II", w2, w1)[2:8].
        let mut bits = [0u8; 8];
        bits[..4].copy_from_slice(&efuse_word(2).to_be_bytes());
        bits[4..].copy_from_slice(&efuse_word(1).to_be_bytes());
        assert_eq!(bits[2..8], MAC);
        // Crystal estimate from the UART divider at 115200: ~40 MHz.
        let div = identity_reg(UART_CLKDIV, 115_200, APB_ROM_HZ, true).unwrap();
        let est = f64::from(div) * 115_200.0 / 1e6;
        assert!((est - 40.0).abs() < 1.0, "{est}");
    }

    #[test]
    fn crc8_matches_known_value() {
        // esp_crc8 of 00..00 is 0; any change alters it.
        assert_eq!(mac_crc8(&[0; 6]), 0);
        assert_ne!(
            mac_crc8(&MAC),
            mac_crc8(&[0x24, 0x0A, 0xC4, 0x5E, 0x1A, 0x71])
        );
    }
}
