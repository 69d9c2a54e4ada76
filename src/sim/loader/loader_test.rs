//! The loader protocol through the chip's UART: SYNC and its eight answers, the frame checks
//! (length, unknown and unsupported commands), the registers esptool identifies a chip by,
//! the SPI flash controller, and arbitrary or malformed input in both dialects.

use super::commands::{ROM_SYNC_VALUE, SYNC_PREFIX, SYNC_REPLIES};
use super::Command;
use crate::sim::chip::Chip;
use crate::sim::esp32;
use crate::sim::flash::Flash;
use crate::sim::testkit::{
    command, download_chip, frames, parse, request, text, upload_stub, words, T0,
};

fn sync_payload() -> Vec<u8> {
    let mut d = SYNC_PREFIX.to_vec();
    d.extend_from_slice(&[0x55; 32]);
    d
}

#[test]
fn sync_gets_eight_responses_and_app_ignores_it() {
    let mut chip = download_chip();
    chip.receive(&request(Command::Sync as u8, &sync_payload(), 0), T0);
    let f = frames(&mut chip);
    assert_eq!(f.len(), SYNC_REPLIES);
    for frame in &f {
        let (op, value, data, status) = parse(frame, 4);
        assert_eq!((op, value), (0x08, ROM_SYNC_VALUE));
        assert!(data.is_empty());
        assert_eq!(status, [0, 0, 0, 0]);
    }
    let mut app = Chip::new(Flash::new(), false, T0);
    text(&mut app, T0);
    app.receive(&request(Command::Sync as u8, &sync_payload(), 0), T0);
    assert!(frames(&mut app).is_empty());
}

#[test]
fn registers_identify_an_esp32() {
    let mut chip = download_chip();
    let (v, _, st) = command(&mut chip, 0x0A, &words(&[esp32::CHIP_DETECT_MAGIC_REG]), 4);
    assert_eq!((v, st), (esp32::ESP32_MAGIC, vec![0, 0, 0, 0]));
    let (v, _, _) = command(&mut chip, 0x0A, &words(&[0x1234_5678]), 4);
    assert_eq!(v, 0);
    // Unsupported on the ESP32 ROM: error status, which esptool tolerates.
    let (_, _, st) = command(&mut chip, 0x14, &[], 4);
    assert_eq!(st, [1, 5, 0, 0]);
}

#[test]
fn flash_id_through_spi_registers() {
    let mut chip = download_chip();
    let base = esp32::SPI_BASE;
    let write = |chip: &mut Chip, addr: u32, value: u32| {
        command(chip, 0x09, &words(&[addr, value, 0xFFFF_FFFF, 0]), 4);
    };
    write(&mut chip, base + 0x2C, 23); // MISO 24 bits
    write(&mut chip, base + 0x1C, 1 << 31 | 1 << 28);
    write(&mut chip, base + 0x24, 7 << 28 | 0x9F);
    write(&mut chip, base + 0x80, 0);
    write(&mut chip, base, 1 << 18);
    let (cmd, _, _) = command(&mut chip, 0x0A, &words(&[base]), 4);
    assert_eq!(cmd & (1 << 18), 0);
    let (id, _, _) = command(&mut chip, 0x0A, &words(&[base + 0x80]), 4);
    assert_eq!(id, 0x0016_40EF);
}

proptest::proptest! {
    /// Arbitrary (partly well-framed) input in both dialects: no panic, and every
    /// response that comes out is a well-formed response frame.
    #[test]
    fn arbitrary_requests_are_answered_or_ignored(
        reqs in proptest::collection::vec(
            (proptest::prelude::any::<u8>(),
             proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
             proptest::prelude::any::<bool>()),
            0..40),
        stub in proptest::prelude::any::<bool>(),
    ) {
        let mut chip = download_chip();
        if stub {
            upload_stub(&mut chip);
        }
        for (op, data, raw) in reqs {
            if raw {
                chip.receive(&data, T0);
            } else {
                chip.receive(&request(op, &data, 0), T0);
            }
            for f in frames(&mut chip) {
                if f.len() >= 8 && f[0] == 0x01 {
                    let len = u16::from_le_bytes([f[2], f[3]]) as usize;
                    proptest::prop_assert_eq!(len, f.len() - 8);
                }
            }
        }
    }
}

#[test]
fn malformed_input_never_panics() {
    let mut chip = download_chip();
    upload_stub(&mut chip);
    let mut seed = 0x1234_5678u32;
    let mut junk = vec![0u8; 64 * 1024];
    for b in junk.iter_mut() {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        *b = match seed % 7 {
            0 => 0xC0,
            1 => 0x00,
            _ => (seed >> 8) as u8,
        };
    }
    chip.receive(&junk, T0);
    // Short and lying requests of every command get an error or nothing at all.
    for op in 0..=255u8 {
        chip.receive(&request(op, &[1, 2, 3], 0), T0);
        chip.receive(&[0xC0, 0x00, op, 0xFF, 0xFF, 0xC0], T0);
    }
    frames(&mut chip);
}
