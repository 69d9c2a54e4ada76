//! The `sim-esp8266` board as esptool meets it: the ROM's boot log at 74880 baud (garbage to
//! a 115200 monitor, then the application's clean lines), detection by the magic word with
//! GET_SECURITY_INFO refused, the ESP8266's 2 status bytes, the flash id through SPI0's
//! USR1 lengths, a ROM write with esptool's erase-size workaround, and the stub's compressed
//! write, MD5 and baud change.

use std::time::{Duration, Instant};

use super::board::{BootMode, SimBoard};
use super::chip::{Chip, Mode, ROM_BAUD};
use super::esp8266;
use super::flash::Flash;
use super::loader::{Command, Loader};
use super::md5;
use super::testkit::{self, words, Host};
use super::uart::Uart;
use crate::protocol::line::LineSettings;
use crate::protocol::reset::{EN_LOW, IO0_LOW, RELEASED};
use crate::protocol::slip;

const T0: Duration = Duration::ZERO;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A request frame as esptool builds it; `chk` is the *_DATA checksum.
fn request(cmd: Command, data: &[u8], chk: u32) -> Vec<u8> {
    testkit::request(cmd as u8, data, chk)
}

/// A *_DATA request: the 16-byte header, the payload and its checksum.
fn block(cmd: Command, seq: u32, payload: &[u8]) -> Vec<u8> {
    testkit::block_request(cmd as u8, seq, payload)
}

/// Everything the chip sends by `now`, as raw bytes.
fn drain(chip: &mut Chip, now: Duration) -> Vec<u8> {
    let mut buf = vec![0u8; 1 << 16];
    let mut out = Vec::new();
    loop {
        let n = chip.take_tx(&mut buf, now);
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}

/// One response: `(value, data before the status, status)`; the ESP8266's ROM and stub
/// both end it with 2 status bytes.
#[derive(Debug)]
struct Response {
    value: u32,
    data: Vec<u8>,
    status: [u8; 2],
}

fn responses(chip: &mut Chip, op: Command) -> Vec<Response> {
    testkit::split_frames(&drain(chip, T0))
        .into_iter()
        .filter(|f| f.len() >= 10 && f[0] == 0x01)
        .map(|f| {
            assert_eq!(f[1], op as u8, "answer to {op:?}");
            let len = usize::from(u16::from_le_bytes([f[2], f[3]]));
            assert_eq!(len, f.len() - 8, "length field");
            let value = u32::from_le_bytes(f[4..8].try_into().unwrap());
            let (data, status) = f[8..].split_at(len - 2);
            Response {
                value,
                data: data.to_vec(),
                status: status.try_into().unwrap(),
            }
        })
        .collect()
}

fn command(chip: &mut Chip, cmd: Command, data: &[u8]) -> Response {
    chip.receive(&request(cmd, data, 0), T0);
    let mut r = responses(chip, cmd);
    assert_eq!(r.len(), 1, "one answer to {cmd:?}: {r:?}");
    r.remove(0)
}

/// A powered ESP8266 board in its ROM loader, boot log taken.
fn loader() -> Chip {
    let mut chip = Chip::for_board(SimBoard::Esp8266DevKit, Flash::new(), true, T0);
    drain(&mut chip, T0);
    assert_eq!(chip.expected_baud(), ROM_BAUD);
    chip
}

fn read_reg(chip: &mut Chip, addr: u32) -> u32 {
    let r = command(chip, Command::ReadReg, &words(&[addr]));
    assert_eq!(r.status, [0, 0]);
    r.value
}

fn write_reg(chip: &mut Chip, addr: u32, value: u32) {
    let r = command(
        chip,
        Command::WriteReg,
        &words(&[addr, value, 0xFFFF_FFFF, 0]),
    );
    assert_eq!(r.status, [0, 0]);
}

/// esptool's stub upload: MEM_BEGIN, MEM_DATA, MEM_END with an entry point, then "OHAI".
fn upload_stub(chip: &mut Chip) {
    let r = command(
        chip,
        Command::MemBegin,
        &words(&[8, 1, 0x1800, 0x4010_E000]),
    );
    assert_eq!(r.status, [0, 0]);
    chip.receive(&block(Command::MemData, 0, &[1, 2, 3, 4, 5, 6, 7, 8]), T0);
    assert_eq!(responses(chip, Command::MemData)[0].status, [0, 0]);
    chip.receive(&request(Command::MemEnd, &words(&[0, 0x4010_E004]), 0), T0);
    let frames = testkit::split_frames(&drain(chip, T0));
    assert_eq!(frames.last().map(Vec::as_slice), Some(&b"OHAI"[..]));
    assert_eq!(chip.loader(), Loader::Stub);
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A freshly powered board behind the paced UART, the host's line at `baud`, for `until` ms.
fn powered_on_through_the_uart(download: bool, baud: u32, until: u64) -> Vec<u8> {
    let t0 = Instant::now();
    let mut chip = Chip::for_board(SimBoard::Esp8266DevKit, Flash::new(), download, T0);
    let mut uart = Uart::new(t0);
    let mut host = Host::default();
    let line = LineSettings {
        baud,
        ..LineSettings::default()
    };
    for i in 0..=until {
        uart.run(&mut host, &mut chip, &line, true, t0 + ms(i), t0)
            .unwrap();
    }
    host.from_chip
}

#[test]
fn the_rom_log_runs_at_74880_and_the_application_at_115200() {
    let mut chip = Chip::for_board(SimBoard::Esp8266DevKit, Flash::new(), false, T0);
    assert_eq!(chip.expected_baud(), esp8266::ROM_LOG_BAUD);
    let log = String::from_utf8(drain(&mut chip, T0)).unwrap();
    assert!(
        log.starts_with(
            "\r\n ets Jan  8 2013,rst cause:1, boot mode:(3,7)\r\n\r\nload 0x40100000, len "
        ),
        "{log}"
    );
    assert!(log.ends_with("sim: app start, boot #1\r\n"), "{log}");
    assert_eq!(chip.expected_baud(), ROM_BAUD, "the application's rate");

    // A 74880 reader sees the ROM's log and then garbage; a 115200 one the other way round.
    let slow = powered_on_through_the_uart(false, 74_880, 150);
    assert!(contains(
        &slow,
        b"ets Jan  8 2013,rst cause:1, boot mode:(3,7)"
    ));
    assert!(!contains(&slow, b"sim: app start"));
    let fast = powered_on_through_the_uart(false, 115_200, 150);
    assert!(
        !contains(&fast, b"ets Jan"),
        "{:?}",
        String::from_utf8_lossy(&fast)
    );
    assert!(contains(
        &fast,
        b"sim: app start, boot #1\r\nsim: app tick 0, boot #1\r\n"
    ));
    // The garbage holds no SLIP END: a loader client's frame reader is not fooled by it.
    let garbage =
        &fast[..fast.len() - b"sim: app start, boot #1\r\nsim: app tick 0, boot #1\r\n".len()];
    assert!(!garbage.is_empty() && !garbage.contains(&slip::END));
}

#[test]
fn the_auto_reset_circuit_enters_the_download_mode() {
    let mut chip = Chip::for_board(SimBoard::Esp8266DevKit, Flash::new(), false, T0);
    drain(&mut chip, T0);
    // esptool's ClassicReset: RST low, then RST released with GPIO0 low, then both released.
    chip.set_lines(EN_LOW, ms(10));
    assert_eq!(chip.mode(), Mode::Reset);
    chip.set_lines(IO0_LOW, ms(110));
    chip.set_lines(RELEASED, ms(160));
    assert_eq!((chip.mode(), chip.boot_count()), (Mode::Download, 2));
    assert_eq!(chip.boots().back().unwrap().mode, BootMode::Download);
    let log = String::from_utf8(drain(&mut chip, ms(160))).unwrap();
    assert_eq!(
        log,
        "\r\n ets Jan  8 2013,rst cause:2, boot mode:(1,7)\r\n\r\n"
    );
    assert_eq!(chip.expected_baud(), ROM_BAUD);
    // The download banner, at 74880, is garbage at 115200 too.
    let fast = powered_on_through_the_uart(true, 115_200, 50);
    assert!(!fast.is_empty() && !contains(&fast, b"boot mode"));
    let slow = powered_on_through_the_uart(true, 74_880, 50);
    assert!(contains(&slow, b"boot mode:(1,7)"));
}

#[test]
fn esptool_detects_an_esp8266() {
    let mut chip = loader();
    // SYNC: eight answers, the ROM's value, 2 status bytes.
    let mut sync = vec![0x07, 0x07, 0x12, 0x20];
    sync.extend_from_slice(&[0x55; 32]);
    chip.receive(&request(Command::Sync, &sync, 0), T0);
    let r = responses(&mut chip, Command::Sync);
    assert_eq!(r.len(), 8);
    assert!(r
        .iter()
        .all(|r| r.value == 0x2012_0707 && r.status == [0, 0]));
    // GET_SECURITY_INFO: the ROM does not know it (esptool then reads the magic word).
    let r = command(&mut chip, Command::GetSecurityInfo, &[]);
    assert_eq!((r.data.len(), r.status), (0, [1, 5]));
    assert_eq!(read_reg(&mut chip, 0x4000_1000), 0xFFF0_C101);
    // Crystal: the divider at 115200 times 115200, halved: 26 MHz.
    let div = read_reg(&mut chip, 0x6000_0014);
    assert_eq!((u64::from(div) * 115_200 / 2 + 500_000) / 1_000_000, 26);
    let mac3 = read_reg(&mut chip, 0x3FF0_005C);
    let mac1 = read_reg(&mut chip, 0x3FF0_0054);
    let mac0 = read_reg(&mut chip, 0x3FF0_0050);
    assert_eq!(mac3, 0x005C_CF7F);
    assert_eq!(
        ((mac1 >> 8) as u8, mac1 as u8, (mac0 >> 24) as u8),
        (0xA1, 0xB2, 0xC3)
    );
    // Nothing the ESP32 ROM added: no SPI_ATTACH, no CHANGE_BAUDRATE, no MD5, no
    // compressed writes. The rate stays.
    for (cmd, data) in [
        (Command::SpiAttach, words(&[0, 0])),
        (
            Command::SpiSetParams,
            words(&[0, 0x40_0000, 0x1_0000, 0x1000, 0x100, 0xFFFF]),
        ),
        (Command::ChangeBaudrate, words(&[921_600, 0])),
        (Command::SpiFlashMd5, words(&[0, 0x1000, 0, 0])),
        (Command::FlashDeflBegin, words(&[0x1000, 1, 0x4000, 0])),
        (Command::ReadFlashSlow, words(&[0, 16])),
    ] {
        let r = command(&mut chip, cmd, &data);
        assert_eq!(r.status, [1, 5], "{cmd:?}");
    }
    drain(&mut chip, ms(10));
    assert_eq!(chip.expected_baud(), ROM_BAUD);
}

#[test]
fn flash_id_through_spi0_with_lengths_in_usr1() {
    let mut chip = loader();
    let base = esp8266::SPI_BASE;
    // run_spiflash_command(0x9F, read_bits=24) on the ESP8266: no DLEN registers, the MISO
    // bit count (minus one) in USR1 bits 8.., W0 at +0x40.
    write_reg(&mut chip, base + 0x20, 23 << 8);
    write_reg(&mut chip, base + 0x1C, 1 << 31 | 1 << 28);
    write_reg(&mut chip, base + 0x24, 7 << 28 | 0x9F);
    write_reg(&mut chip, base + 0x40, 0);
    write_reg(&mut chip, base, 1 << 18);
    assert_eq!(read_reg(&mut chip, base) & 1 << 18, 0, "done at once");
    assert_eq!(read_reg(&mut chip, base + 0x40), 0x0016_40EF);
    // A status register write: the MOSI bit count in USR1 bits 17.., the data in W0.
    write_reg(&mut chip, base + 0x20, 7 << 17);
    write_reg(&mut chip, base + 0x1C, 1 << 31 | 1 << 27);
    write_reg(&mut chip, base + 0x24, 7 << 28 | 0x31); // WRSR2
    write_reg(&mut chip, base + 0x40, 0x00);
    write_reg(&mut chip, base, 1 << 18);
    write_reg(&mut chip, base + 0x20, 7 << 8);
    write_reg(&mut chip, base + 0x1C, 1 << 31 | 1 << 28);
    write_reg(&mut chip, base + 0x24, 7 << 28 | 0x35); // RDSR2
    write_reg(&mut chip, base, 1 << 18);
    assert_eq!(read_reg(&mut chip, base + 0x40), 0x00, "QE cleared");
}

/// esptool's `ESP8266ROM.get_erase_size`.
fn esptool_erase_size(offset: u32, size: u32) -> u32 {
    let num = size.div_ceil(4096);
    let head = (16 - offset / 4096 % 16).min(num);
    4096 * if num < 2 * head {
        num.div_ceil(2)
    } else {
        num - head
    }
}

#[test]
fn rom_write_with_esptools_erase_workaround_over_old_contents() {
    let mut chip = loader();
    // A previous image everywhere the new one goes, and beyond.
    chip.flash_mut().program(0x20000, &[0x00; 0x12000]).unwrap();
    // flash_spi_attach on the ESP8266 ROM: FLASH_BEGIN(0, 0), which erases nothing.
    let r = command(&mut chip, Command::FlashBegin, &words(&[0, 0, 0x400, 0]));
    assert_eq!(r.status, [0, 0]);
    let image: Vec<u8> = (0..0x10000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let erase = esptool_erase_size(0x20000, image.len() as u32);
    assert_eq!(erase, 0x8000, "esptool asks for half");
    let blocks = image.len().div_ceil(0x400) as u32;
    let r = command(
        &mut chip,
        Command::FlashBegin,
        &words(&[erase, blocks, 0x400, 0x20000]),
    );
    assert_eq!(r.status, [0, 0]);
    for (seq, chunk) in image.chunks(0x400).enumerate() {
        chip.receive(&block(Command::FlashData, seq as u32, chunk), T0);
        let r = responses(&mut chip, Command::FlashData);
        assert_eq!(r[0].status, [0, 0], "block {seq}");
    }
    assert_eq!(chip.flash().read(0x20000, 0x10000).unwrap(), &image[..]);
    // The ROM's erase stopped where the image did: the old contents after it are intact.
    assert!(chip
        .flash()
        .read(0x30000, 0x2000)
        .unwrap()
        .iter()
        .all(|&b| b == 0));
    // esptool's soft reset from the ROM: FLASH_BEGIN(0, 0), FLASH_END(run): the application.
    command(&mut chip, Command::FlashBegin, &words(&[0, 0, 0x400, 0]));
    let r = command(&mut chip, Command::FlashEnd, &words(&[1]));
    assert_eq!(r.status, [0, 0]);
    assert_eq!((chip.mode(), chip.boot_count()), (Mode::App, 1));
}

#[test]
fn stub_compressed_write_md5_and_baud_change() {
    let mut chip = loader();
    upload_stub(&mut chip);
    // The stub changes the rate (reply at the old one) and does SPI_ATTACH and
    // SPI_SET_PARAMS, but still has no GET_SECURITY_INFO.
    chip.receive(
        &request(Command::ChangeBaudrate, &words(&[921_600, 115_200]), 0),
        T0,
    );
    assert_eq!(chip.expected_baud(), ROM_BAUD);
    assert_eq!(
        responses(&mut chip, Command::ChangeBaudrate)[0].status,
        [0, 0]
    );
    assert_eq!(chip.expected_baud(), 921_600);
    assert_eq!(
        command(&mut chip, Command::SpiAttach, &words(&[0])).status,
        [0, 0]
    );
    let params = words(&[0, 0x40_0000, 0x1_0000, 0x1000, 0x100, 0xFFFF]);
    assert_eq!(
        command(&mut chip, Command::SpiSetParams, &params).status,
        [0, 0]
    );
    assert_eq!(
        command(&mut chip, Command::GetSecurityInfo, &[]).status,
        [0xC3, 0]
    );

    let image: Vec<u8> = (0..0x10000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let z = miniz_oxide::deflate::compress_to_vec_zlib(&image, 9);
    let blocks = z.len().div_ceil(0x4000) as u32;
    let begin = words(&[image.len() as u32, blocks, 0x4000, 0x40000]);
    assert_eq!(
        command(&mut chip, Command::FlashDeflBegin, &begin).status,
        [0, 0]
    );
    for (seq, chunk) in z.chunks(0x4000).enumerate() {
        chip.receive(&block(Command::FlashDeflData, seq as u32, chunk), T0);
        assert_eq!(
            responses(&mut chip, Command::FlashDeflData)[0].status,
            [0, 0]
        );
    }
    assert_eq!(
        command(&mut chip, Command::FlashDeflEnd, &words(&[1])).status,
        [0, 0]
    );
    let r = command(
        &mut chip,
        Command::SpiFlashMd5,
        &words(&[0x40000, image.len() as u32, 0, 0]),
    );
    assert_eq!((r.data, r.status), (md5::digest(&image).to_vec(), [0, 0]));

    // esptool's hard reset afterwards: the application, and the ROM's log at 74880 again.
    chip.set_lines(EN_LOW, ms(100));
    chip.set_lines(RELEASED, ms(200));
    chip.advance(ms(202));
    assert_eq!((chip.mode(), chip.boot_count()), (Mode::App, 2));
    assert_eq!(chip.expected_baud(), esp8266::ROM_LOG_BAUD);
    let log = String::from_utf8(drain(&mut chip, ms(202))).unwrap();
    assert!(
        log.contains("rst cause:2, boot mode:(3,7)")
            && log.ends_with("sim: app start, boot #2\r\n")
    );
}
