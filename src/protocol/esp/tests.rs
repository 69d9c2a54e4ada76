//! The follower's tests: bytes in, in chunks of every size, bytes and actions out.
//!
//! One file past 700 lines: every case (entry, baud, the server's own commands, native USB)
//! drives the same framing helpers in chunks of every size.

use super::frame::{snap_rom_rate, ESC, ESC_END, ESC_ESC};
use super::*;

/// A loader packet (checksum/value 0), SLIP-encoded.
fn packet(dir: u8, op: u8, data: &[u8]) -> Vec<u8> {
    let mut raw = vec![dir, op];
    raw.extend_from_slice(&(data.len() as u16).to_le_bytes());
    raw.extend_from_slice(&[0; 4]);
    raw.extend_from_slice(data);
    slip(&raw)
}

fn request(op: u8, data: &[u8]) -> Vec<u8> {
    packet(REQUEST, op, data)
}

fn response(op: u8, data: &[u8]) -> Vec<u8> {
    packet(RESPONSE, op, data)
}

fn slip(raw: &[u8]) -> Vec<u8> {
    let mut f = vec![END];
    for &b in raw {
        match b {
            END => f.extend_from_slice(&[ESC, ESC_END]),
            ESC => f.extend_from_slice(&[ESC, ESC_ESC]),
            b => f.push(b),
        }
    }
    f.push(END);
    f
}

fn sync() -> Vec<u8> {
    let mut data = vec![0x07, 0x07, 0x12, 0x20];
    data.extend_from_slice(&[0x55; 32]);
    request(0x08, &data)
}

fn baud(new: u32, old: u32) -> Vec<u8> {
    let mut d = new.to_le_bytes().to_vec();
    d.extend_from_slice(&old.to_le_bytes());
    request(0x0F, &d)
}

/// Feed `input` in chunks of `chunk` bytes; returns what reached the chip and the actions.
fn up(w: &mut EspWatch, input: &[u8], chunk: usize) -> (Vec<u8>, Vec<Action>) {
    let now = Instant::now();
    let mut out = Vec::new();
    let mut actions = Vec::new();
    for c in input.chunks(chunk) {
        actions.extend(w.on_client(c, now, &mut |b| out.extend_from_slice(b)));
    }
    (out, actions)
}

fn down(w: &mut EspWatch, input: &[u8], chunk: usize) -> (Vec<u8>, Vec<Action>) {
    let mut out = Vec::new();
    let mut actions = Vec::new();
    for c in input.chunks(chunk) {
        actions.extend(w.on_device(c, Instant::now(), &mut out, None));
    }
    (out, actions)
}

#[test]
fn sync_frame_constant_is_esptools_request() {
    assert_eq!(SYNC_FRAME.to_vec(), sync());
}

#[test]
fn first_sync_enters_the_bootloader_once_and_is_replayed_when_ready() {
    for chunk in 1..=sync().len() + 1 {
        let mut w = EspWatch::new(false, Entry::Reset);
        let twice = [sync(), sync()].concat();
        let (out, actions) = up(&mut w, &twice, chunk);
        assert_eq!(actions, vec![Action::EnterBootloader], "chunk {chunk}");
        assert_eq!(w.notes.drain(), [Note::SyncToApp]);
        // Only the frame delimiters reach the chip while it resets.
        assert!(out.iter().all(|&b| b == END), "chunk {chunk}: {out:02x?}");
        let mut replay = Vec::new();
        w.bootloader_entered(Instant::now(), &mut |b| replay.extend_from_slice(b));
        assert_eq!(replay, SYNC_FRAME.to_vec());
        assert!(w.entered() && w.in_loader());
        // Later SYNCs pass untouched.
        let (out, actions) = up(&mut w, &sync(), chunk);
        assert_eq!((out, actions), (sync(), vec![]));
    }
}

#[test]
fn a_sync_esptool_no_longer_waits_on_is_not_replayed() {
    let mut w = EspWatch::new(false, Entry::Reset);
    let t0 = Instant::now();
    w.on_client(&sync(), t0, &mut |_| {});
    let mut out = Vec::new();
    w.bootloader_entered(t0 + SYNC_ANSWER_WAIT, &mut |b| out.extend_from_slice(b));
    assert!(out.is_empty() && w.in_loader());
}

#[test]
fn a_chip_known_in_its_loader_is_not_reset() {
    let mut w = EspWatch::new(true, Entry::Reset);
    let (out, actions) = up(&mut w, &sync(), 7);
    assert_eq!((out, actions), (sync(), vec![]));
    assert!(!w.entered());
}

#[test]
fn a_loader_that_never_answers_is_reset_after_a_few_syncs() {
    let mut w = EspWatch::new(true, Entry::Reset);
    let n = UNANSWERED_SYNCS as usize;
    let (out, actions) = up(&mut w, &sync().repeat(n), 64);
    assert_eq!((out, actions), (sync().repeat(n), vec![]));
    let (_, actions) = up(&mut w, &sync(), 64);
    assert_eq!(actions, vec![Action::EnterBootloader]);

    // An answer in between resets the count.
    let mut w = EspWatch::new(true, Entry::Reset);
    for _ in 0..2 * n {
        let (out, actions) = up(&mut w, &sync(), 64);
        assert_eq!((out, actions), (sync(), vec![]));
        down(&mut w, &response(0x08, &[0, 0]), 64);
    }
}

#[test]
fn boot_output_is_dropped_until_the_chips_first_frame() {
    let mut w = EspWatch::new(false, Entry::Reset);
    up(&mut w, &sync(), 64);
    let answer = response(0x08, &[0, 0]);
    let stream = [
        b"rst:0x1 (POWERON_RESET)\r\nwaiting for download\r\n".to_vec(),
        answer.clone(),
    ]
    .concat();
    let (out, _) = down(&mut w, &stream, 5);
    assert_eq!(out, answer);
    // After that, everything passes (app text included).
    let (out, _) = down(&mut w, b"hello", 5);
    assert_eq!(out, b"hello");
}

#[test]
fn stub_baud_change_parks_the_client_until_the_answer() {
    for chunk in [1, 3, 8, 200] {
        let mut w = EspWatch::new(true, Entry::Reset);
        let req = baud(921_600, 115_200);
        let later = request(0x02, &[1, 2, 3]);
        let (out, actions) = up(&mut w, &[req.clone(), later.clone()].concat(), chunk);
        assert_eq!((out, actions), (req.clone(), vec![]), "chunk {chunk}");
        assert!(w.parked());
        let (out, actions) = down(&mut w, &response(0x0F, &[0, 0]), chunk);
        assert_eq!(out, response(0x0F, &[0, 0]));
        assert_eq!(actions, vec![Action::BaudAnswered(Some(921_600))]);
        let mut released = Vec::new();
        w.resume(Instant::now(), &mut |b| released.extend_from_slice(b));
        assert_eq!(released, later, "chunk {chunk}");
        assert!(!w.parked());
    }
}

#[test]
fn rom_baud_change_goes_to_the_standard_rate_meant() {
    let mut w = EspWatch::new(true, Entry::Reset);
    // esptool scaled 460800 by a ROM crystal estimate of 39.2 MHz / 40 MHz.
    up(&mut w, &baud(451_584, 0), 64);
    let (_, actions) = down(&mut w, &response(0x0F, &[0, 0, 0, 0]), 64);
    assert_eq!(actions, vec![Action::BaudAnswered(Some(460_800))]);
    assert_eq!(snap_rom_rate(921_600), 921_600);
    assert_eq!(snap_rom_rate(940_000), 921_600);
    assert_eq!(snap_rom_rate(123_456), 123_456);
    assert_eq!(snap_rom_rate(0), 0);
}

#[test]
fn a_refused_baud_change_stays_and_releases() {
    let mut w = EspWatch::new(true, Entry::Reset);
    up(&mut w, &baud(921_600, 115_200), 64);
    let (_, actions) = down(&mut w, &response(0x0F, &[1, 5]), 64);
    assert_eq!(actions, vec![Action::BaudAnswered(None)]);
}

#[test]
fn an_unanswered_baud_change_releases_after_the_wait() {
    let mut w = EspWatch::new(true, Entry::Reset);
    up(&mut w, &baud(921_600, 115_200), 64);
    up(&mut w, b"after", 64);
    let at = w.deadline().expect("a deadline while parked");
    let mut out = Vec::new();
    let mut seen = Vec::new();
    w.on_timer(
        at - Duration::from_millis(1),
        &mut |b| out.extend_from_slice(b),
        &mut seen,
    );
    assert!(out.is_empty() && w.parked());
    w.on_timer(at, &mut |b| out.extend_from_slice(b), &mut seen);
    assert!(seen.is_empty());
    assert_eq!(out, b"after");
    assert!(!w.parked());
}

#[test]
fn an_unfinished_bootloader_entry_lets_syncs_through_after_a_while() {
    let mut w = EspWatch::new(false, Entry::Reset);
    up(&mut w, &sync(), 64);
    let at = w.deadline().unwrap();
    let mut out = Vec::new();
    w.on_timer(at, &mut |b| out.extend_from_slice(b), &mut Vec::new());
    assert!(out.is_empty(), "that SYNC is long stale");
    assert!(w.deadline().is_none() && w.in_loader());
    let (out, actions) = up(&mut w, &sync(), 64);
    assert_eq!((out, actions), (sync(), vec![]));
}

#[test]
fn anything_else_passes_unchanged_both_ways() {
    // Text, truncated frames, bad escapes, lone ENDs, frames with escaped bytes.
    let mut garbage = b"hello\xc0\xdb\xc0\x00\x08\xdb\x01\xc0\xc0\xc0\x00".to_vec();
    garbage.extend(request(0x02, &[END, ESC, 1, 2]));
    garbage.extend(request(0x0F, &[1, 2, 3])); // too short to be a baud change
    garbage.extend(&sync()[..20]); // a SYNC cut short...
    garbage.push(END);
    let mut longer = sync();
    longer.insert(45, 0x55); // ...and one byte too long
    garbage.extend(longer);
    garbage.extend_from_slice(&[ESC, ESC, END, 0x01, 0x0F, END]);
    garbage.extend((0..=255u8).cycle().take(3000));
    for chunk in [1, 2, 5, 17, 4096] {
        let mut w = EspWatch::new(true, Entry::Reset);
        let (out, actions) = up(&mut w, &garbage, chunk);
        assert_eq!(out, garbage, "chunk {chunk}");
        assert!(actions.is_empty() && !w.parked());
        let (out, _) = down(&mut w, &garbage, chunk);
        assert_eq!(out, garbage, "chunk {chunk}");
    }
}

#[test]
fn a_sync_with_escaped_bytes_in_its_header_is_still_seen() {
    // A SYNC whose frame starts with a stray escape pair still decodes to 00 08 ...:
    // the decoder is what decides, not byte patterns.
    let mut w = EspWatch::new(false, Entry::Reset);
    let (out, actions) = up(&mut w, &[b"noise".to_vec(), sync()].concat(), 1);
    assert_eq!(actions, vec![Action::EnterBootloader]);
    assert_eq!(out, [b"noise".to_vec(), vec![END, END]].concat());
}

#[test]
fn without_an_entry_syncs_pass_and_the_baud_follows_once_the_chip_answers() {
    let mut w = EspWatch::new(false, Entry::Never);
    let (out, actions) = up(&mut w, &sync().repeat(5), 64);
    assert_eq!((out, actions), (sync().repeat(5), vec![]));
    assert!(!w.entered());
    down(&mut w, &response(0x08, &[0, 0]), 64);
    let (_, actions) = up(&mut w, &baud(921_600, 115_200), 64);
    assert!(actions.is_empty() && w.parked());
    let (_, actions) = down(&mut w, &response(0x0F, &[0, 0]), 64);
    assert_eq!(actions, vec![Action::BaudAnswered(Some(921_600))]);
}

#[test]
fn a_client_that_resets_the_chip_itself_is_trusted_and_owed_nothing() {
    let mut w = EspWatch::new(false, Entry::Reset);
    w.client_resets(ResetTo::Bootloader);
    assert!(
        w.loading(),
        "a bootloader entry by the client's lines starts a loader session"
    );
    let (out, actions) = up(&mut w, &sync(), 64);
    assert_eq!((out, actions), (sync(), vec![]));
    assert!(!w.entered());
    // A reset into the application by anyone: the next SYNC needs an entry again.
    w.app_started();
    assert!(
        !w.loading(),
        "the application runs: the loader session is over"
    );
    let (_, actions) = up(&mut w, &sync(), 64);
    assert_eq!(actions, vec![Action::EnterBootloader]);
    assert!(w.loading(), "a SYNC starts a loader session");
    // An entry the client's own lines completed counts as done.
    let mut replay = Vec::new();
    w.bootloader_entered(Instant::now(), &mut |b| replay.extend_from_slice(b));
    assert!(w.in_loader() && w.entered());
    w.client_resets(ResetTo::App);
    assert!(
        w.loading(),
        "a flasher's hard reset does not end its loader session"
    );
    assert!(
        !w.entered(),
        "the client's own reset at the end: nothing owed"
    );
}

/// A response carrying `value`, SLIP-encoded.
fn answer(op: u8, value: u32, data: &[u8]) -> Vec<u8> {
    let mut raw = vec![RESPONSE, op];
    raw.extend_from_slice(&(data.len() as u16).to_le_bytes());
    raw.extend_from_slice(&value.to_le_bytes());
    raw.extend_from_slice(data);
    slip(&raw)
}

/// The wire form of a command of ours.
fn wire(cmd: Command) -> Vec<u8> {
    let mut v = Vec::new();
    cmd.encode(&mut |b| v.extend_from_slice(b));
    v
}

/// Device bytes in chunks, with the chip able to take bytes: what reached the client, what
/// went to the chip, the actions.
fn down_to(
    w: &mut EspWatch,
    input: &[u8],
    chunk: usize,
    now: Instant,
) -> (Vec<u8>, Vec<u8>, Vec<Action>) {
    let (mut client, mut chip, mut actions) = (Vec::new(), Vec::new(), Vec::new());
    for c in input.chunks(chunk) {
        let mut sink = |b: &[u8]| chip.extend_from_slice(b);
        actions.extend(w.on_device(c, now, &mut client, Some(&mut sink)));
    }
    (client, chip, actions)
}

/// A watch whose client has synced with a chip in its loader, with nothing outstanding.
fn synced() -> EspWatch {
    let mut w = EspWatch::new(true, Entry::Reset);
    up(&mut w, &sync(), 64);
    down_to(&mut w, &response(0x08, &[0, 0]), 64, Instant::now());
    w
}

fn inject_now(w: &mut EspWatch, cmd: Command, now: Instant) -> Vec<u8> {
    let mut chip = Vec::new();
    let mut sink = |b: &[u8]| chip.extend_from_slice(b);
    w.inject(cmd, now, Some(&mut sink)).unwrap();
    chip
}

const REG: u32 = 0x6000_8000;

#[test]
fn commands_of_ours_encode_as_esptool_would() {
    let cmd = Command::write_reg(REG, 0x50D8_3AA1, 0xFFFF_FFFF, 0);
    let mut data = REG.to_le_bytes().to_vec();
    data.extend_from_slice(&0x50D8_3AA1u32.to_le_bytes());
    data.extend_from_slice(&[0xFF; 4]);
    data.extend_from_slice(&[0; 4]);
    assert_eq!(wire(cmd), request(0x09, &data));
    // Bytes that need escaping are escaped.
    let cmd = Command::read_reg(0xC0DB_00C0);
    assert_eq!(wire(cmd), request(0x0A, &0xC0DB_00C0u32.to_le_bytes()));
    assert_eq!(
        Command::change_baudrate(2_000_000, 115_200).baud(),
        Some(2_000_000)
    );
    assert_eq!(Command::change_baudrate(451_584, 0).baud(), Some(460_800));
    assert_eq!(cmd.baud(), None);
}

#[test]
fn a_command_of_ours_goes_between_two_of_the_clients_and_its_answer_is_taken_out() {
    let cmd = Command::read_reg(REG);
    let stray = response(0x08, &[0, 0]);
    let ours = answer(0x0A, 0x1234_5678, &[0, 0]);
    let next = request(0x02, &[1, 2, 3]);
    for chunk in 1..=ours.len() + stray.len() + 1 {
        let t0 = Instant::now();
        let mut w = EspWatch::new(true, Entry::Reset);
        // Before the chip has answered anything: it waits.
        up(&mut w, &sync(), 64);
        assert!(inject_now(&mut w, cmd, t0).is_empty(), "chunk {chunk}");
        // The chip answers the client's SYNC: ours goes out right after that answer.
        let (client, chip, actions) = down_to(&mut w, &stray, chunk, t0);
        assert_eq!(client, stray, "chunk {chunk}");
        assert_eq!(chip, wire(cmd), "chunk {chunk}");
        assert!(actions.is_empty() && w.parked());
        // The client's next command waits for our answer.
        let (out, actions) = up(&mut w, &next, chunk);
        assert!(
            out.is_empty() && actions.is_empty(),
            "chunk {chunk}: {out:02x?}"
        );
        // Another of the chip's frames passes; ours never reaches the client.
        let (client, chip, actions) =
            down_to(&mut w, &[stray.clone(), ours.clone()].concat(), chunk, t0);
        assert_eq!(client, stray, "chunk {chunk}");
        assert!(chip.is_empty());
        let reply = Reply::Answered {
            value: 0x1234_5678,
            status: 0,
            error: 0,
        };
        assert_eq!(actions, vec![Action::Injected(cmd, reply)], "chunk {chunk}");
        assert!(reply.ok());
        // Then the client's command goes, and what follows passes as before.
        let mut out = Vec::new();
        assert_eq!(w.resume(t0, &mut |b| out.extend_from_slice(b)), None);
        assert_eq!(out, next, "chunk {chunk}");
        assert!(!w.parked());
        let (client, _, _) = down_to(&mut w, &stray, chunk, t0);
        assert_eq!(client, stray);
    }
}

#[test]
fn a_command_of_ours_waits_while_the_client_is_inside_a_request() {
    let cmd = Command::read_reg(REG);
    let t0 = Instant::now();
    let mut w = synced();
    // Half a request has come: not now.
    let req = request(0x0A, &REG.to_le_bytes());
    up(&mut w, &req[..5], 64);
    assert!(inject_now(&mut w, cmd, t0).is_empty());
    up(&mut w, &req[5..], 64);
    let (_, chip, _) = down_to(&mut w, &answer(0x0A, 7, &[0, 0]), 64, t0);
    assert_eq!(chip, wire(cmd), "after the client's answer");

    // A lone END that opens the next request: not now either.
    let mut w = synced();
    up(&mut w, &[END], 64);
    assert!(inject_now(&mut w, cmd, t0).is_empty());
    // Nor while the client's request is unanswered.
    let mut w = synced();
    up(&mut w, &req, 64);
    assert!(inject_now(&mut w, cmd, t0).is_empty());
    let (_, chip, _) = down_to(&mut w, &answer(0x0A, 7, &[0, 0]), 64, t0);
    assert_eq!(chip, wire(cmd));
    // Between two requests, it goes at once.
    let mut w = synced();
    assert_eq!(inject_now(&mut w, cmd, t0), wire(cmd));
}

#[test]
fn nothing_of_ours_goes_inside_a_read_flash_stream() {
    let cmd = Command::read_reg(REG);
    let t0 = Instant::now();
    let mut w = synced();
    up(&mut w, &request(0xD2, &[0; 16]), 64);
    let (_, chip, _) = down_to(&mut w, &response(0xD2, &[0, 0]), 64, t0);
    assert!(chip.is_empty());
    assert!(inject_now(&mut w, cmd, t0).is_empty());
    // Data frames and the client's acknowledgements: still the stream.
    let data = slip(&[0x01; 64]);
    let (client, chip, _) = down_to(&mut w, &data, 7, t0);
    assert_eq!(client, data);
    assert!(chip.is_empty());
    up(&mut w, &slip(&64u32.to_le_bytes()), 64);
    let (_, chip, _) = down_to(&mut w, &slip(&[0xAA; 16]), 64, t0);
    assert!(chip.is_empty(), "the digest frame is still the stream");
    // The client's next request ends it; ours goes after its answer.
    up(&mut w, &request(0x0A, &REG.to_le_bytes()), 64);
    let (_, chip, _) = down_to(&mut w, &answer(0x0A, 1, &[0, 0]), 64, t0);
    assert_eq!(chip, wire(cmd));
}

#[test]
fn an_unanswered_command_of_ours_releases_the_client_and_what_was_held() {
    let cmd = Command::write_reg(REG, 1, 1, 0);
    let t0 = Instant::now();
    let mut w = synced();
    assert_eq!(inject_now(&mut w, cmd, t0), wire(cmd));
    up(&mut w, b"after", 64);
    // The start of a frame that might be the answer is held...
    let (client, _, _) = down_to(&mut w, &[END, 0x01, 0x09], 64, t0);
    assert!(client.is_empty());
    let at = w.deadline().expect("a deadline while ours waits");
    assert_eq!(at, t0 + INJECT_WAIT);
    let (mut chip, mut client) = (Vec::new(), Vec::new());
    assert_eq!(
        w.on_timer(
            at - Duration::from_millis(1),
            &mut |b| chip.extend_from_slice(b),
            &mut client
        ),
        None
    );
    let action = w.on_timer(at, &mut |b| chip.extend_from_slice(b), &mut client);
    assert_eq!(action, Some(Action::Injected(cmd, Reply::TimedOut)));
    // ...and goes to the client once we stop waiting.
    assert_eq!(client, [END, 0x01, 0x09]);
    w.resume(at, &mut |b| chip.extend_from_slice(b));
    assert_eq!(chip, b"after");
}

#[test]
fn a_reset_while_ours_waits_ends_the_wait_at_once() {
    let cmd = Command::write_reg(REG, 1, 1, 0);
    let t0 = Instant::now();
    let mut w = synced();
    inject_now(&mut w, cmd, t0);
    w.client_resets(ResetTo::Bootloader);
    let at = w.deadline().unwrap();
    assert_eq!(at, t0);
    let action = w.on_timer(at, &mut |_| {}, &mut Vec::new());
    assert_eq!(action, Some(Action::Injected(cmd, Reply::TimedOut)));
    // The reset chip takes nothing of ours until it has answered the client again.
    w.resume(at, &mut |_| {});
    assert!(inject_now(&mut w, cmd, t0).is_empty());
}

#[test]
fn the_queue_is_bounded_and_a_command_that_never_finds_its_moment_is_reported() {
    let cmd = Command::read_reg(REG);
    let t0 = Instant::now();
    let mut w = EspWatch::new(false, Entry::Reset);
    for _ in 0..INJECT_QUEUE {
        w.inject(cmd, t0, None).unwrap();
    }
    assert_eq!(w.inject(cmd, t0, None), Err(InjectError::QueueFull));
    assert_eq!(w.deadline(), Some(t0 + INJECT_WAIT));
    let action = w.on_timer(t0 + INJECT_WAIT, &mut |_| {}, &mut Vec::new());
    assert_eq!(action, Some(Action::Injected(cmd, Reply::NotSent)));
    assert!(w.inject(cmd, t0, None).is_ok(), "room again");
}

#[test]
fn an_answer_of_ours_among_any_output_takes_out_that_frame_alone() {
    let cmd = Command::read_reg(REG);
    let ours = answer(0x0A, 9, &[0, 0]);
    let mut before = b"text\xc0\xc0".to_vec();
    before.extend(response(0x0A, &[0; 200])); // too long to be ours: passes
    before.extend(response(0x09, &[0, 0])); // another op
    before.extend(slip(&[0x01])); // too short
    let after = [response(0x08, &[0, 0]), b"tail".to_vec()].concat();
    for chunk in [1, 2, 3, 7, 64, 4096] {
        let t0 = Instant::now();
        let mut w = synced();
        inject_now(&mut w, cmd, t0);
        let stream = [before.clone(), ours.clone(), after.clone()].concat();
        let (client, _, actions) = down_to(&mut w, &stream, chunk, t0);
        assert_eq!(
            client,
            [before.clone(), after.clone()].concat(),
            "chunk {chunk}"
        );
        assert!(matches!(
            actions[..],
            [Action::Injected(_, Reply::Answered { value: 9, .. })]
        ));
    }
}

#[test]
fn an_accepted_baud_change_of_ours_says_the_rate() {
    let cmd = Command::change_baudrate(2_000_000, 115_200);
    let t0 = Instant::now();
    let mut w = synced();
    inject_now(&mut w, cmd, t0);
    let (_, _, actions) = down_to(&mut w, &response(0x0F, &[0, 0]), 64, t0);
    let [Action::Injected(c, reply)] = actions[..] else {
        panic!("{actions:?}")
    };
    assert_eq!((c.baud(), reply.ok()), (Some(2_000_000), true));
    let mut w = synced();
    inject_now(&mut w, cmd, t0);
    let (_, _, actions) = down_to(&mut w, &response(0x0F, &[1, 5]), 64, t0);
    assert_eq!(
        actions,
        vec![Action::Injected(
            cmd,
            Reply::Answered {
                value: 0,
                status: 1,
                error: 5
            }
        )]
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            prop_oneof![
                Just(END),
                Just(ESC),
                Just(ESC_END),
                Just(RESPONSE),
                any::<u8>()
            ],
            0..2048,
        )
    }

    proptest! {
        /// Device output passes unchanged (nothing is dropped unless this session just
        /// reset the chip), however it is split; no input makes the watch panic.
        #[test]
        fn device_output_passes_unchanged(data in bytes(), chunk in 1usize..300) {
            let mut w = EspWatch::new(true, Entry::Reset);
            let (out, _) = down(&mut w, &data, chunk);
            prop_assert_eq!(out, data);
        }

        /// Client bytes to a chip without an entry to make reach it unchanged and in
        /// order, however they are split (unless a CHANGE_BAUDRATE the chip has answered
        /// before parks what follows).
        #[test]
        fn client_bytes_pass_unchanged(data in bytes(), chunk in 1usize..300) {
            let mut w = EspWatch::new(false, Entry::Never);
            let (out, actions) = up(&mut w, &data, chunk);
            prop_assert!(actions.is_empty());
            prop_assert_eq!(out, data);
        }
    }
}

/// The ROM's answer to a SYNC (its value word is non-zero; a stub's is 0).
fn rom_sync_answer() -> Vec<u8> {
    answer(0x08, 0x2012_0707, &[0, 0])
}

#[test]
fn on_native_usb_the_server_turns_the_watchdogs_off_before_the_clients_next_command() {
    let t0 = Instant::now();
    let c3 = 0x1B31_506F;
    // What the sequence is (its registers are watchdogs.rs's tests'); here: that it all goes
    // out, in order, each after the last answer, before the client's next command, unseen.
    let mut expected = Vec::new();
    let mut d = watchdogs::Disarm::default();
    let mut next = d.start();
    while let Some(cmd) = next {
        let value = if expected.is_empty() { c3 } else { 0 };
        expected.push((cmd, value));
        next = d.answered(Reply::Answered {
            value,
            status: 0,
            error: 0,
        });
    }
    assert_eq!(expected.len(), 8);

    let mut w = EspWatch::new(true, Entry::Reset).on_native_usb();
    up(&mut w, &sync(), 64);
    let (client, chip, _) = down_to(&mut w, &rom_sync_answer(), 64, t0);
    assert_eq!(
        client,
        rom_sync_answer(),
        "the client sees its SYNC answered"
    );
    assert_eq!(chip, wire(expected[0].0), "ours goes out at once");
    // The ROM's seven more SYNC answers pass; the client's next command is parked.
    let more: Vec<u8> = (0..7).flat_map(|_| rom_sync_answer()).collect();
    let (client, chip, _) = down_to(&mut w, &more, 64, t0);
    // (The last END is held while ours waits: it may open our answer's frame.)
    assert_eq!(client, more[..more.len() - 1]);
    assert!(chip.is_empty());
    let clients_next = request(0x14, &[]); // GET_SECURITY_INFO, esptool 5's next
    let (out, _) = up(&mut w, &clients_next, 64);
    assert!(out.is_empty(), "parked while ours run");
    for (i, &(cmd, value)) in expected.iter().enumerate() {
        let (client, chip, actions) =
            down_to(&mut w, &answer(cmd.op() as u8, value, &[0, 0]), 64, t0);
        // Taken out: at most the frame delimiters around it reach the client.
        assert!(
            client.iter().all(|&b| b == END),
            "answer {i}: {client:02x?}"
        );
        assert!(chip.is_empty());
        let reply = Reply::Answered {
            value,
            status: 0,
            error: 0,
        };
        assert_eq!(actions, vec![Action::Injected(cmd, reply)], "answer {i}");
        let mut out = Vec::new();
        assert_eq!(w.resume(t0, &mut |b| out.extend_from_slice(b)), None);
        match expected.get(i + 1) {
            Some(&(next, _)) => assert_eq!(out, wire(next), "command {} follows", i + 1),
            None => assert_eq!(out, clients_next, "then the client's command goes"),
        }
    }
    let said = w.notes.drain();
    assert!(
        said.contains(&Note::Watchdogs(watchdogs::Outcome::Disarmed("ESP32-C3"))),
        "{said:?}"
    );
    // Never twice in one loader run: another SYNC answer sends nothing.
    up(&mut w, &sync(), 64);
    let (_, chip, _) = down_to(&mut w, &rom_sync_answer(), 64, t0);
    assert!(chip.is_empty());
}

#[test]
fn a_running_stub_or_a_uart_bridge_gets_nothing_of_ours() {
    let t0 = Instant::now();
    // A stub already running answers a SYNC with 0: a host handled the watchdogs before.
    let mut w = EspWatch::new(true, Entry::Reset).on_native_usb();
    up(&mut w, &sync(), 64);
    let (_, chip, _) = down_to(&mut w, &response(0x08, &[0, 0]), 64, t0);
    assert!(chip.is_empty());
    // A UART bridge board: the ROM's answer changes nothing.
    let mut w = EspWatch::new(true, Entry::Reset);
    up(&mut w, &sync(), 64);
    let (_, chip, _) = down_to(&mut w, &rom_sync_answer(), 64, t0);
    assert!(chip.is_empty());
}
