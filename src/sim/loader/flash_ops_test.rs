//! The flash operations through the chip's UART: a ROM write (FLASH_BEGIN / DATA / END, a
//! corrupted block refused, the ROM's hex MD5, running the application), and the stub's
//! compressed write, binary MD5, READ_FLASH stream with its acks, ERASE_REGION, and the
//! reboot FLASH_END asks for.

use super::Loader;
use crate::protocol::slip;
use crate::sim::chip::{Mode, ROM_BAUD};
use crate::sim::md5;
use crate::sim::testkit::{
    block_request, command, download_chip, frames, parse, request, text, upload_stub, words, T0,
};

#[test]
fn rom_flash_begin_data_end_writes_flash() {
    let mut chip = download_chip();
    chip.flash_mut().program(0x10000, &[0u8; 0x1000]).unwrap(); // old contents
    let image: Vec<u8> = (0..0x900u32).map(|i| (i * 31 + 7) as u8).collect();
    let (value, _, st) = command(&mut chip, 0x02, &words(&[0x900, 3, 0x400, 0x10000]), 4);
    assert_eq!((value, st), (0, vec![0, 0, 0, 0]));
    for (seq, chunk) in image.chunks(0x400).enumerate() {
        let mut block = chunk.to_vec();
        block.resize(0x400, 0xFF); // esptool pads the last block
        chip.receive(&block_request(0x03, seq as u32, &block), T0);
        let f = frames(&mut chip);
        assert_eq!(parse(&f[0], 4).3, [0, 0, 0, 0], "block {seq}");
    }
    // A corrupted block is refused with the ROM's checksum error and not written.
    let mut bad = block_request(0x03, 0, &[0u8; 0x400]);
    let last = bad.len() - 2;
    bad[last] ^= 1;
    chip.receive(&bad, T0);
    let f = frames(&mut chip);
    assert_eq!(parse(&f[0], 4).3, [1, 7, 0, 0]);

    let got = chip.flash().read(0x10000, 0x1000).unwrap();
    assert_eq!(&got[..0x900], &image[..]);
    assert!(
        got[0x900..].iter().all(|&b| b == 0xFF),
        "rest of the sector erased"
    );
    // MD5 in ROM dialect: 32 hex characters.
    let (_, hex, st) = command(&mut chip, 0x13, &words(&[0x10000, 0x900, 0, 0]), 4);
    assert_eq!(st, [0, 0, 0, 0]);
    assert_eq!(hex, md5::to_hex(&md5::digest(&image)));
    // FLASH_END(run) leaves the loader for the application, after the reply.
    let (_, _, st) = command(&mut chip, 0x04, &words(&[1]), 4);
    assert_eq!(st, [0, 0, 0, 0]);
    assert_eq!(chip.mode(), Mode::App);
    assert_eq!(chip.boot_count(), 1, "running the app is not a reset");
}

#[test]
fn stub_deflate_write_read_and_baud_change() {
    let mut chip = download_chip();
    upload_stub(&mut chip);
    // CHANGE_BAUDRATE: reply at the old rate, then switch.
    chip.receive(&request(0x0F, &words(&[921_600, 115_200]), 0), T0);
    assert_eq!(chip.expected_baud(), ROM_BAUD);
    let f = frames(&mut chip);
    assert_eq!(parse(&f[0], 2).3, [0, 0]);
    assert_eq!(chip.expected_baud(), 921_600);

    let image: Vec<u8> = (0..100_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let z = miniz_oxide::deflate::compress_to_vec_zlib(&image, 6);
    let blocks = z.len().div_ceil(0x4000) as u32;
    let (_, _, st) = command(
        &mut chip,
        0x10,
        &words(&[image.len() as u32, blocks, 0x4000, 0x20000, 0]),
        2,
    );
    assert_eq!(st, [0, 0]);
    for (seq, chunk) in z.chunks(0x4000).enumerate() {
        chip.receive(&block_request(0x11, seq as u32, chunk), T0);
        let f = frames(&mut chip);
        assert_eq!(parse(&f[0], 2).3, [0, 0], "block {seq}");
    }
    let (_, _, st) = command(&mut chip, 0x12, &words(&[1]), 2);
    assert_eq!(st, [0, 0]);
    assert_eq!(chip.mode(), Mode::Download, "stay in the stub");
    assert_eq!(
        chip.flash().read(0x20000, image.len() as u32).unwrap(),
        &image[..]
    );
    let (_, digest, _) = command(
        &mut chip,
        0x13,
        &words(&[0x20000, image.len() as u32, 0, 0]),
        2,
    );
    assert_eq!(digest, md5::digest(&image));

    // READ_FLASH: packets, acked by byte count, then the raw MD5.
    chip.receive(&request(0xD2, &words(&[0x20000, 10_000, 0x1000, 2]), 0), T0);
    let mut dec = slip::Decoder::new(1 << 16);
    let mut got = Vec::new();
    let mut digest = None;
    let mut buf = [0u8; 512];
    for _ in 0..1000 {
        let n = chip.take_tx(&mut buf, T0);
        let mut acks = Vec::new();
        dec.push(&buf[..n], |f| {
            if f[0] == 0x01 && f.len() == 10 {
                assert_eq!(&f[8..], [0, 0]);
            } else if got.len() < 10_000 {
                got.extend_from_slice(f);
                acks.push(got.len() as u32);
            } else {
                digest = Some(f.to_vec());
            }
        });
        for a in acks {
            let mut frame = Vec::new();
            slip::encode_into(&a.to_le_bytes(), &mut frame);
            chip.receive(&frame, T0);
        }
        if digest.is_some() {
            break;
        }
    }
    assert_eq!(got, &image[..10_000]);
    assert_eq!(digest.unwrap(), md5::digest(&image[..10_000]));

    // Erase region must be sector aligned.
    let (_, _, st) = command(&mut chip, 0xD1, &words(&[0x20000, 0x800]), 2);
    assert_eq!(st, [0xC0, 0]);
    let (_, _, st) = command(&mut chip, 0xD1, &words(&[0x20000, 0x1000]), 2);
    assert_eq!(st, [0, 0]);
    assert!(chip
        .flash()
        .read(0x20000, 0x1000)
        .unwrap()
        .iter()
        .all(|&b| b == 0xFF));

    // FLASH_END asking for a reboot: reply, then a software reset at 115200.
    command(&mut chip, 0x02, &words(&[0, 0, 0x4000, 0, 0]), 2);
    chip.receive(&request(0x04, &words(&[0]), 0), T0);
    let mut buf = vec![0u8; 4096];
    let n = chip.take_tx(&mut buf, T0);
    assert!(n > 0);
    assert_eq!(chip.boot_count(), 2);
    assert_eq!(
        (chip.loader(), chip.expected_baud()),
        (Loader::Rom, ROM_BAUD)
    );
    assert!(text(&mut chip, T0).contains("rst:0x3 (SW_RESET),boot:0x3"));
}
