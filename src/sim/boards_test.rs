//! The boards against the reset policies that serve them, in simulated time: truth
//! tables, EN's RC delay, the USB-Serial/JTAG sequence, the application's tick lines, and
//! the input/boot record.

use std::time::{Duration, Instant};

use super::board::{BootMode, Input, Pins, ResetCause, SimBoard, EN_RC_DELAY, RECORD_LEN};
use super::chip::{Chip, Mode, APP_TICK};
use super::esp32c3;
use super::flash::Flash;
use super::testkit::split_frames;
use crate::protocol::line::Lines;
use crate::protocol::reset::{Policy, Resetter, BOTH, EN_LOW, IO0_LOW, RELEASED};
use crate::protocol::slip;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

const fn l(dtr: bool, rts: bool) -> Lines {
    Lines { dtr, rts }
}

fn chip(board: SimBoard) -> Chip {
    let mut c = Chip::for_board(board, Flash::new(), false, Duration::ZERO);
    drain(&mut c, Duration::ZERO);
    c
}

fn drain(chip: &mut Chip, now: Duration) -> String {
    let mut buf = vec![0u8; 1 << 16];
    let mut out = Vec::new();
    loop {
        let n = chip.take_tx(&mut buf, now);
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What the bridge does with lines for `board`: the UART's DTR/RTS, or (sim-gpio) the
/// GPIO wiring through the transistor table.
fn wire(board: SimBoard, chip: &mut Chip, lines: Lines, at: Duration) {
    match board {
        SimBoard::Gpio => {
            let (en, io0) = crate::protocol::reset::levels(lines);
            chip.set_pins(Pins { en, io0 }, at);
        }
        _ => chip.set_lines(lines, at),
    }
}

/// The policy `reset = "auto"` gives each board.
fn policy(board: SimBoard) -> Policy {
    match board {
        SimBoard::UsbJtag | SimBoard::S3UsbJtag | SimBoard::S3Otg => Policy::UsbJtag,
        _ => Policy::Esp { esp32r0: false },
    }
}

/// Client line changes at ms offsets through the board's reset policy onto the chip, in
/// 1 ms steps until `until` ms.
fn through_policy(board: SimBoard, chip: &mut Chip, client: &[(u64, Lines)], until: u64) {
    let t0 = Instant::now();
    let mut r = Resetter::new(policy(board));
    let mut client = client.iter().peekable();
    for t in 0..=until {
        let now = t0 + ms(t);
        while let Some(lines) = r.due(now) {
            wire(board, chip, lines, ms(t));
        }
        while let Some(&&(at, lines)) = client.peek() {
            if at != t {
                break;
            }
            client.next();
            if let Some(lines) = r.client_lines(lines, now) {
                wire(board, chip, lines, ms(t));
            }
            while let Some(lines) = r.due(now) {
                wire(board, chip, lines, ms(t));
            }
        }
        chip.advance(ms(t));
    }
}

/// pyserial's open: DTR asserted, then RTS asserted.
fn pyserial_open(at: u64) -> Vec<(u64, Lines)> {
    vec![(at, l(true, false)), (at + 1, BOTH)]
}

/// esptool's ClassicReset as the server receives it (each SET-CONTROL on its own), after
/// pyserial's open; `_setRTS` re-sends DTR, which changes nothing.
fn classic_reset(at: u64) -> Vec<(u64, Lines)> {
    vec![
        (at, EN_LOW),
        (at + 1, EN_LOW),
        (at + 101, BOTH),
        (at + 102, IO0_LOW),
        (at + 152, RELEASED),
    ]
}

/// esptool's HardReset: RTS pulse of 100 ms with DTR released.
fn hard_reset(at: u64) -> Vec<(u64, Lines)> {
    vec![(at, EN_LOW), (at + 100, RELEASED)]
}

#[test]
fn devkit_truth_table_through_the_transistors() {
    // From running: which lines hold the chip in reset, and where it boots when they let go.
    for (lines, held) in [
        (RELEASED, false),
        (BOTH, false),
        (IO0_LOW, false),
        (EN_LOW, true),
    ] {
        let mut c = chip(SimBoard::DevKit);
        c.set_lines(lines, ms(10));
        c.advance(ms(20));
        let want = if held { Mode::Reset } else { Mode::App };
        assert_eq!((c.mode(), c.boot_count()), (want, 1), "{lines:?}");
    }
    // Out of EN-low into each state, atomically: only IO0 low boots the loader.
    for (lines, mode) in [
        (RELEASED, Mode::App),
        (BOTH, Mode::App),
        (IO0_LOW, Mode::Download),
    ] {
        let mut c = chip(SimBoard::DevKit);
        c.set_lines(EN_LOW, ms(10));
        c.set_lines(lines, ms(20));
        c.advance(ms(30));
        assert_eq!((c.mode(), c.boot_count()), (mode, 2), "{lines:?}");
    }
}

#[test]
fn gpio_board_ignores_the_uart_lines_and_follows_its_pins() {
    let mut c = chip(SimBoard::Gpio);
    for (i, lines) in [EN_LOW, IO0_LOW, RELEASED, BOTH, EN_LOW]
        .into_iter()
        .enumerate()
    {
        c.set_lines(lines, ms(10 * i as u64));
    }
    c.advance(ms(100));
    assert_eq!((c.mode(), c.boot_count()), (Mode::App, 1));
    assert_eq!(c.pins(), Pins::HIGH);
    // EN low, then EN high with IO0 low in one change: the loader.
    c.set_pins(
        Pins {
            en: false,
            io0: true,
        },
        ms(200),
    );
    assert_eq!(c.mode(), Mode::Reset);
    c.set_pins(
        Pins {
            en: true,
            io0: false,
        },
        ms(300),
    );
    c.set_pins(Pins::HIGH, ms(350));
    assert_eq!((c.mode(), c.boot_count()), (Mode::Download, 2));
}

#[test]
fn en_rc_delay_decides_what_io0_low_means() {
    for board in [SimBoard::DevKit, SimBoard::Gpio] {
        // Atomic EN-low -> IO0-low: IO0 is low when EN actually rises.
        let mut c = chip(board);
        wire(board, &mut c, EN_LOW, ms(10));
        wire(board, &mut c, IO0_LOW, ms(110));
        assert_eq!(c.mode(), Mode::Reset, "{board}: EN still charging");
        c.advance(ms(110) + EN_RC_DELAY - Duration::from_micros(1));
        assert_eq!(c.mode(), Mode::Reset, "{board}");
        c.advance(ms(110) + EN_RC_DELAY);
        assert_eq!(c.mode(), Mode::Download, "{board}");
        let boot = *c.boots().back().unwrap();
        assert_eq!(boot.at, ms(110) + EN_RC_DELAY);
        assert_eq!(boot.cause, ResetCause::EnPin);

        // EN-low -> both asserted -> IO0-low, >= 1 ms apart: EN rose with IO0 high.
        let mut c = chip(board);
        wire(board, &mut c, EN_LOW, ms(10));
        wire(board, &mut c, BOTH, ms(110));
        wire(board, &mut c, IO0_LOW, ms(110) + EN_RC_DELAY);
        wire(board, &mut c, RELEASED, ms(160));
        assert_eq!((c.mode(), c.boot_count()), (Mode::App, 2), "{board}");

        // The same, IO0 just inside the RC delay: the loader.
        let mut c = chip(board);
        wire(board, &mut c, EN_LOW, ms(10));
        wire(board, &mut c, BOTH, ms(110));
        wire(board, &mut c, IO0_LOW, ms(110) + Duration::from_micros(500));
        wire(board, &mut c, RELEASED, ms(160));
        assert_eq!((c.mode(), c.boot_count()), (Mode::Download, 2), "{board}");

        // EN dropping again inside the RC delay: no boot at all.
        let mut c = chip(board);
        wire(board, &mut c, EN_LOW, ms(10));
        wire(board, &mut c, RELEASED, ms(20));
        wire(board, &mut c, EN_LOW, ms(20) + Duration::from_micros(300));
        c.advance(ms(50));
        assert_eq!((c.mode(), c.boot_count()), (Mode::Reset, 1), "{board}");
    }
}

#[test]
fn usb_jtag_resets_on_its_own_pattern() {
    // esptool's USBJTAGSerialReset: (0,0) (1,0) (1,1) (0,1) (0,0), 100 ms apart.
    let mut c = chip(SimBoard::UsbJtag);
    for (t, lines) in [(0, RELEASED), (100, IO0_LOW), (200, BOTH), (200, EN_LOW)] {
        c.set_lines(lines, ms(t));
    }
    assert_eq!((c.mode(), c.boot_count()), (Mode::Download, 2));
    let banner = drain(&mut c, ms(200));
    assert!(
        banner.contains("rst:0x15 (USB_UART_CHIP_RESET),boot:0x7 (DOWNLOAD(USB/UART0/1))")
            && banner.ends_with("waiting for download\r\n"),
        "{banner}"
    );
    c.set_lines(RELEASED, ms(300));
    assert_eq!(
        (c.mode(), c.boot_count()),
        (Mode::Download, 2),
        "release: no reset"
    );
    // HardReset's RTS pulse: a reset into the application, at once (no RC).
    c.set_lines(EN_LOW, ms(400));
    assert_eq!((c.mode(), c.boot_count()), (Mode::App, 3));
    c.set_lines(RELEASED, ms(500));
    assert_eq!(c.boot_count(), 3);
    // A two-transistor entry (EN low, then IO0 low) means nothing to the peripheral
    // beyond the reset it starts with.
    c.set_lines(EN_LOW, ms(600));
    c.set_lines(IO0_LOW, ms(700));
    c.set_lines(RELEASED, ms(750));
    c.advance(ms(800));
    assert_eq!((c.mode(), c.boot_count()), (Mode::App, 4));
    let boots: Vec<_> = c.boots().iter().map(|b| (b.n, b.mode, b.cause)).collect();
    assert_eq!(
        boots,
        vec![
            (1, BootMode::App, ResetCause::PowerOn),
            (2, BootMode::Download, ResetCause::UsbJtag),
            (3, BootMode::App, ResetCause::UsbJtag),
            (4, BootMode::App, ResetCause::UsbJtag),
        ]
    );
}

#[test]
fn usb_jtag_ignores_the_baud_rate() {
    use super::uart::Uart;
    use crate::protocol::line::LineSettings;
    use crate::sim::testkit::Host;

    let t0 = Instant::now();
    let mut c = Chip::for_board(SimBoard::UsbJtag, Flash::new(), true, Duration::ZERO);
    let mut uart = Uart::new(t0);
    let mut host = Host::default();
    // A rate the ROM would never understand on a UART.
    let line = LineSettings {
        baud: 9600,
        ..LineSettings::default()
    };
    let mut sync = vec![0x00, 0x08, 36, 0, 0, 0, 0, 0, 0x07, 0x07, 0x12, 0x20];
    sync.extend_from_slice(&[0x55; 32]);
    slip::encode_into(&sync, &mut host.to_chip);
    for i in 0..=20 {
        uart.run(&mut host, &mut c, &line, true, t0 + ms(i), t0)
            .unwrap();
    }
    let out = String::from_utf8_lossy(&host.from_chip).into_owned();
    assert!(out.contains("waiting for download"), "{out}");
    let frames = host.from_chip.iter().filter(|&&b| b == 0xC0).count();
    assert_eq!(frames, 16, "eight SYNC responses within 20 ms at 9600 baud");
}

#[test]
fn every_board_enters_the_loader_through_its_policy_and_hard_resets_into_the_app() {
    for board in SimBoard::ALL {
        let mut c = chip(board);
        let mut client = pyserial_open(0);
        client.extend(classic_reset(10));
        client.extend(hard_reset(1000));
        through_policy(board, &mut c, &client[..7], 900);
        assert_eq!((c.mode(), c.boot_count()), (Mode::Download, 2), "{board}");
        assert_eq!(c.boots()[1].mode, BootMode::Download);
        through_policy(board, &mut c, &client[7..], 1500);
        assert_eq!((c.mode(), c.boot_count()), (Mode::App, 3), "{board}");
        let out = drain(&mut c, ms(1500));
        assert!(
            out.contains("sim: app start, boot #3\r\n"),
            "{board}: {out}"
        );
    }
}

#[test]
fn pyserial_open_resets_no_board() {
    for board in SimBoard::ALL {
        // Straight onto the lines (a passthrough server) ...
        let mut c = chip(board);
        for (t, lines) in pyserial_open(5) {
            wire(board, &mut c, lines, ms(t));
        }
        // ... a monitor releasing both lines afterwards ...
        wire(board, &mut c, IO0_LOW, ms(10));
        wire(board, &mut c, RELEASED, ms(11));
        c.advance(ms(50));
        assert_eq!((c.mode(), c.boot_count()), (Mode::App, 1), "{board}");
        // ... and through the board's policy.
        let mut c = chip(board);
        through_policy(board, &mut c, &pyserial_open(5), 300);
        assert_eq!((c.mode(), c.boot_count()), (Mode::App, 1), "{board}");
    }
}

#[test]
fn the_application_ticks_every_100_ms() {
    let mut c = chip(SimBoard::DevKit);
    let mut seen = Vec::new();
    for t in 0..=1000 {
        let out = drain(&mut c, ms(t));
        for line in out.lines() {
            seen.push((t, line.to_string()));
        }
    }
    let ticks: Vec<(u64, String)> = seen
        .iter()
        .filter(|(_, l)| l.starts_with("sim: app tick"))
        .cloned()
        .collect();
    assert_eq!(ticks.len(), 10, "{ticks:?}");
    for (i, (t, line)) in ticks.iter().enumerate() {
        assert_eq!(*t, 100 * (i as u64 + 1), "{line}");
        assert_eq!(line, &format!("sim: app tick {i}, boot #1"));
    }
    assert_eq!(c.next_deadline(), Some(ms(1100)));
    // A reset starts over: new banner, new boot number, ticks from 0 after 100 ms.
    c.set_lines(EN_LOW, ms(1010));
    c.set_lines(RELEASED, ms(1050));
    let out = drain(&mut c, ms(1051));
    assert!(out.ends_with("sim: app start, boot #2\r\n"), "{out}");
    assert_eq!(c.next_deadline(), Some(ms(1051) + APP_TICK));
    assert_eq!(drain(&mut c, ms(1150)), "");
    assert_eq!(drain(&mut c, ms(1151)), "sim: app tick 0, boot #2\r\n");
    // Nothing is printed in reset or in the loader.
    c.set_lines(EN_LOW, ms(1200));
    assert_eq!(c.next_deadline(), None);
    assert_eq!(drain(&mut c, ms(2000)), "");
}

#[test]
fn inputs_and_boots_are_recorded_and_bounded() {
    let mut c = chip(SimBoard::DevKit);
    c.set_lines(EN_LOW, ms(1));
    c.set_lines(IO0_LOW, ms(2));
    c.press_reset(false, ms(10));
    let inputs: Vec<_> = c.inputs().iter().map(|r| (r.at, r.input)).collect();
    assert_eq!(
        inputs,
        vec![
            (ms(1), Input::Lines(EN_LOW)),
            (ms(2), Input::Lines(IO0_LOW)),
            (ms(10), Input::Button { download: false }),
        ]
    );
    let boots: Vec<_> = c
        .boots()
        .iter()
        .map(|b| (b.n, b.at, b.mode, b.cause))
        .collect();
    assert_eq!(
        boots,
        vec![
            (1, ms(0), BootMode::App, ResetCause::PowerOn),
            (2, ms(3), BootMode::Download, ResetCause::EnPin),
            (3, ms(10), BootMode::App, ResetCause::Button),
        ]
    );
    for i in 0..1000u64 {
        c.set_lines(if i % 2 == 0 { BOTH } else { RELEASED }, ms(20 + i));
    }
    assert_eq!(c.inputs().len(), RECORD_LEN);
    assert_eq!(c.inputs().back().unwrap().at, ms(1019));
    for i in 0..300u64 {
        c.press_reset(false, ms(2000 + i));
    }
    assert_eq!(c.boots().len(), RECORD_LEN);
    assert_eq!(c.boots().back().unwrap().n, 303);
}

#[test]
fn c3_answers_get_security_info_in_both_dialects() {
    let mut c = Chip::for_board(SimBoard::UsbJtag, Flash::new(), true, Duration::ZERO);
    drain(&mut c, Duration::ZERO);
    let request = |op: u8, data: &[u8]| {
        let mut body = vec![0x00, op];
        body.extend_from_slice(&(data.len() as u16).to_le_bytes());
        body.extend_from_slice(&[0; 4]);
        body.extend_from_slice(data);
        let mut out = Vec::new();
        slip::encode_into(&body, &mut out);
        out
    };
    let frames = |c: &mut Chip| {
        let mut buf = vec![0u8; 1 << 16];
        let n = c.take_tx(&mut buf, Duration::ZERO);
        split_frames(&buf[..n])
    };
    c.receive(&request(0x14, &[]), Duration::ZERO);
    let f = frames(&mut c);
    assert_eq!(f.len(), 1);
    assert_eq!(&f[0][8..28], &esp32c3::security_info());
    assert_eq!(&f[0][28..], &[0, 0, 0, 0], "ROM: 4 status bytes");
    // Identify as esptool's fallback would (never needed with the command working).
    let mut read = 0x4000_1000u32.to_le_bytes().to_vec();
    c.receive(&request(0x0A, &read), Duration::ZERO);
    let f = frames(&mut c);
    assert_eq!(&f[0][4..8], &esp32c3::ESP32C3_MAGIC.to_le_bytes());
    // The stub answers it too, with 2 status bytes.
    let mut words = Vec::new();
    for w in [8u32, 1, 0x1800, 0x4038_0000] {
        words.extend_from_slice(&w.to_le_bytes());
    }
    c.receive(&request(0x05, &words), Duration::ZERO);
    let mut block = Vec::new();
    for w in [8u32, 0, 0, 0] {
        block.extend_from_slice(&w.to_le_bytes());
    }
    block.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
    let chk = u32::from([1u8, 2, 3, 4, 5, 6, 7, 8].iter().fold(0xEF, |a, &b| a ^ b));
    let mut body = vec![0x00, 0x07];
    body.extend_from_slice(&(block.len() as u16).to_le_bytes());
    body.extend_from_slice(&chk.to_le_bytes());
    body.extend_from_slice(&block);
    let mut frame = Vec::new();
    slip::encode_into(&body, &mut frame);
    c.receive(&frame, Duration::ZERO);
    read.clear();
    for w in [0u32, 0x4038_0000] {
        read.extend_from_slice(&w.to_le_bytes());
    }
    c.receive(&request(0x06, &read), Duration::ZERO);
    let f = frames(&mut c);
    assert_eq!(f.last().unwrap(), b"OHAI");
    c.receive(&request(0x14, &[]), Duration::ZERO);
    let f = frames(&mut c);
    assert_eq!(&f[0][8..28], &esp32c3::security_info());
    assert_eq!(&f[0][28..], &[0, 0], "stub: 2 status bytes");
}
