//! The reset policies' tests: the line changes each policy plays, and when, for the sequences
//! esptool, pyserial, idf.py and the IDEs send.

use super::*;

const ESP: Policy = Policy::Esp { esp32r0: false };

#[test]
fn names_are_the_config_spelling() {
    assert_eq!(ESP.name(), "esp");
    assert_eq!(Policy::Esp { esp32r0: true }.name(), "esp");
    assert_eq!(Policy::UsbJtag.name(), "usb-jtag");
    assert_eq!(Policy::Passthrough.name(), "passthrough");
    assert_eq!(Policy::None.name(), "none");
}

/// Feed client line states at given ms offsets and run the timers in 1 ms steps; returns
/// every line change the device saw, with its offset in ms.
fn run(policy: Policy, client: &[(u64, Lines)], until_ms: u64) -> Vec<(u64, Lines)> {
    let t0 = Instant::now();
    let mut r = Resetter::new(policy);
    let mut seen = Vec::new();
    let mut client = client.iter().peekable();
    for ms in 0..=until_ms {
        let now = t0 + Duration::from_millis(ms);
        while let Some(l) = r.due(now) {
            seen.push((ms, l));
        }
        while let Some(&&(at, lines)) = client.peek() {
            if at != ms {
                break;
            }
            client.next();
            if let Some(l) = r.client_lines(lines, now) {
                seen.push((ms, l));
            }
            while let Some(l) = r.due(now) {
                seen.push((ms, l));
            }
        }
    }
    seen
}

/// esptool's ClassicReset as the server sees it, one-way latency `lat` ms and the client's
/// own sleeps (0.1 s, then `d`), each SET-CONTROL after a round trip (`rt` ms) when the
/// client waits for acknowledgements.
fn classic_reset(start: u64, rt: u64, d: u64) -> Vec<(u64, Lines)> {
    let mut t = start;
    let mut v = Vec::new();
    let mut mirror = BOTH; // after pyserial's open: DTR, RTS asserted
    let mut push = |t: u64, dtr: Option<bool>, rts: Option<bool>, v: &mut Vec<(u64, Lines)>| {
        if let Some(d) = dtr {
            mirror.dtr = d;
        }
        if let Some(r) = rts {
            mirror.rts = r;
        }
        v.push((t, mirror));
    };
    push(t, Some(false), None, &mut v);
    t += rt;
    push(t, None, Some(true), &mut v);
    t += rt;
    push(t, Some(false), None, &mut v);
    t += rt + 100;
    push(t, Some(true), None, &mut v);
    t += rt;
    push(t, None, Some(false), &mut v);
    t += rt;
    push(t, Some(true), None, &mut v);
    t += rt + d;
    push(t, Some(false), None, &mut v);
    v
}

fn pyserial_open() -> Vec<(u64, Lines)> {
    vec![
        (
            0,
            Lines {
                dtr: true,
                rts: false,
            },
        ),
        (1, BOTH),
    ]
}

fn assert_bootloader_entry(seen: &[(u64, Lines)], r0: bool) {
    // EN low, held ≥ 100 ms, then IO0 low with EN high, held 50 (550) ms, then released.
    let en = seen.iter().position(|&(_, l)| l == EN_LOW).expect("EN low");
    let io0 = seen
        .iter()
        .position(|&(_, l)| l == IO0_LOW)
        .expect("IO0 low");
    assert_eq!(io0, en + 1, "{seen:?}");
    let (t_en, t_io0, t_rel) = (seen[en].0, seen[io0].0, seen[io0 + 1].0);
    assert_eq!(seen[io0 + 1].1, RELEASED, "{seen:?}");
    assert!(
        t_io0 - t_en >= 100,
        "EN low only {} ms: {seen:?}",
        t_io0 - t_en
    );
    let hold = if r0 { 550 } else { 50 };
    assert_eq!(t_rel - t_io0, hold, "{seen:?}");
    assert_eq!(seen.len(), io0 + 2, "nothing after the entry: {seen:?}");
}

#[test]
fn opening_resets_nothing() {
    for policy in [ESP, Policy::UsbJtag] {
        let mut client = pyserial_open();
        // A monitor then releases both lines (idf-monitor --no-reset, miniterm).
        client.push((2, IO0_LOW));
        client.push((3, RELEASED));
        assert_eq!(run(policy, &client, 50), vec![], "{policy:?}");
        // ...or DTR first: EN low for a round trip (or ign_set_control's 100 ms).
        for gap in [1, 100, 250, 450] {
            let mut client = pyserial_open();
            client.push((10, EN_LOW));
            client.push((10 + gap, RELEASED));
            assert_eq!(run(policy, &client, 1000), vec![], "{policy:?} gap {gap}");
        }
    }
}

#[test]
fn holding_en_low_after_open_resets_after_the_defer_window() {
    let mut client = pyserial_open();
    client.push((10, EN_LOW));
    client.push((1200, RELEASED));
    let seen = run(ESP, &client, 1500);
    assert_eq!(seen, vec![(510, EN_LOW), (1200, RELEASED)]);
}

#[test]
fn classic_reset_enters_bootloader_at_any_latency() {
    for rt in [0, 1, 40, 200] {
        let mut client = pyserial_open();
        client.extend(classic_reset(10, rt, 50));
        let seen = run(ESP, &client, 2000);
        assert_bootloader_entry(&seen, false);
    }
}

#[test]
fn esp32r0_holds_io0_longer() {
    let mut client = pyserial_open();
    client.extend(classic_reset(10, 5, 550));
    let seen = run(Policy::Esp { esp32r0: true }, &client, 3000);
    assert_bootloader_entry(&seen, true);
}

#[test]
fn hard_reset_pulses_en_with_io0_high() {
    // esptool's HardReset: RTS on (+DTR off), 0.1 s, RTS off (+DTR off).
    let client = vec![(0, EN_LOW), (1, EN_LOW), (101, RELEASED), (102, RELEASED)];
    let seen = run(ESP, &client, 300);
    assert_eq!(seen, vec![(0, EN_LOW), (101, RELEASED)]);
    let seen = run(Policy::UsbJtag, &client, 300);
    assert_eq!(seen, vec![(101, EN_LOW), (201, RELEASED)]);
}

#[test]
fn passthrough_follows_and_none_never_moves() {
    let client = vec![(0, IO0_LOW), (5, BOTH), (9, RELEASED)];
    assert_eq!(run(Policy::Passthrough, &client, 20), client);
    assert_eq!(run(Policy::None, &client, 20), vec![]);
}

#[test]
fn usb_jtag_plays_the_peripheral_sequence() {
    let mut client = pyserial_open();
    client.extend(classic_reset(10, 20, 50));
    let seen = run(Policy::UsbJtag, &client, 2000);
    let lines: Vec<Lines> = seen.iter().map(|&(_, l)| l).collect();
    // (released was already applied, so the first step changes nothing)
    assert_eq!(lines, vec![IO0_LOW, BOTH, EN_LOW, RELEASED], "{seen:?}");
    assert_eq!(seen[1].0 - seen[0].0, 100);
    assert_eq!(seen[2].0, seen[1].0, "(1,1) then (0,1) back to back");
    assert_eq!(seen[3].0 - seen[2].0, 100);
}

#[test]
fn server_reset_commands() {
    let t0 = Instant::now();
    let mut r = Resetter::new(ESP);
    assert_eq!(r.reset(ResetTo::App, t0), Ok(Some(EN_LOW)));
    assert_eq!(r.deadline(), Some(t0 + EN_LOW_HOLD));
    assert_eq!(r.due(t0 + EN_LOW_HOLD), Some(RELEASED));
    assert_eq!(r.busy(), None);
    let mut r = Resetter::new(Policy::None);
    assert_eq!(r.reset(ResetTo::App, t0), Err(ResetError::LinesDisabled));
}

#[test]
fn a_late_step_does_not_shorten_the_next_hold() {
    let t0 = Instant::now();
    let mut r = Resetter::new(ESP);
    assert_eq!(r.reset(ResetTo::Bootloader, t0), Ok(Some(EN_LOW)));
    let late = t0 + EN_LOW_HOLD + Duration::from_millis(7);
    assert_eq!(r.due(late), Some(IO0_LOW));
    assert_eq!(r.due(late + IO0_HOLD - Duration::from_millis(1)), None);
    assert_eq!(r.due(late + IO0_HOLD), Some(RELEASED));
}

#[test]
fn a_step_applied_late_moves_the_rest_back() {
    let t0 = Instant::now();
    let mut r = Resetter::new(ESP);
    assert_eq!(r.reset(ResetTo::Bootloader, t0), Ok(Some(EN_LOW)));
    // The device got EN low 3 ms after the sequence was planned.
    r.applied(t0 + Duration::from_millis(3));
    assert_eq!(
        r.deadline(),
        Some(t0 + EN_LOW_HOLD + Duration::from_millis(3))
    );
}

#[test]
fn client_changes_during_a_sequence_are_absorbed() {
    let t0 = Instant::now();
    let mut r = Resetter::new(ESP);
    r.reset(ResetTo::Bootloader, t0).unwrap();
    assert_eq!(r.client_lines(EN_LOW, t0), None);
    assert_eq!(r.client_lines(RELEASED, t0), None);
    assert_eq!(r.busy(), Some(ResetTo::Bootloader));
}

#[test]
fn driver_traces_a_server_reset_and_knows_the_chip_is_in_its_loader() {
    let t0 = Instant::now();
    let mut d = LineDriver::new(Policy::Esp { esp32r0: false });
    let mut at = t0;
    let mut lines = d.reset(ResetTo::Bootloader, at).unwrap();
    let mut played = None;
    for _ in 0..10 {
        if let Some(l) = lines {
            played = d.applied(l, at).or(played);
        }
        match d.deadline() {
            Some(next) => at = next,
            None => break,
        }
        lines = d.due(at);
    }
    let played = played.expect("the sequence finished");
    assert_eq!(played.to, ResetTo::Bootloader);
    assert!(played.steps.starts_with(" dR@0.0ms"), "{}", played.steps);
    assert!(d.in_loader());
    // Any later line change means the chip may have left it.
    let (change, started) = d.client_lines(BOTH, at);
    assert_eq!(started, None);
    if let Some(l) = change {
        d.applied(l, at);
        assert!(!d.in_loader());
    }
}
