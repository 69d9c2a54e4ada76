//! The session's tests: a rig performs effects the moment they are asked for. One file past 700
//! lines: every negotiation, COM-PORT and data-path case shares the one rig.

use super::*;
use crate::protocol::line::{DataBits, Parity};
use crate::protocol::rfc2217::Command;
use crate::protocol::telnet::IAC;

/// Performs effects the moment they are asked for, as a bridge with an idle device
/// does, and records them.
#[derive(Default)]
struct Rig {
    device: Vec<u8>,
    client: Vec<u8>,
    /// How much data had been written when each setting was applied.
    applied_at: Vec<usize>,
    applied: Vec<LineSettings>,
    lines: Vec<Lines>,
    breaks: Vec<bool>,
    purges: Vec<Purge>,
    resets: Vec<ResetTo>,
    refuse_baud_above: Option<u32>,
    /// Effects performed, in order.
    effects: Vec<Effect>,
}

impl Rig {
    fn perform(&mut self, e: Effect) -> Result<(), Failure> {
        self.effects.push(e);
        match e {
            Effect::Apply(s) => {
                if self.refuse_baud_above.is_some_and(|max| s.baud > max) {
                    return Err(Failure::Device(std::io::Error::other("unsupported baud")));
                }
                self.applied.push(s);
                self.applied_at.push(self.device.len());
            }
            Effect::Lines(l) => self.lines.push(l),
            Effect::Break(on) => self.breaks.push(on),
            Effect::Purge(p) => self.purges.push(p),
            Effect::Reset(to) => self.resets.push(to),
        }
        Ok(())
    }

    /// Perform `effect` and whatever follows from it.
    fn settle(&mut self, s: &mut Session, mut effect: Option<Effect>) {
        while let Some(e) = effect {
            let outcome = self.perform(e);
            let mut out = Out {
                device: &mut self.device,
                client: &mut self.client,
            };
            effect = s.done(outcome, Instant::now(), &mut out);
        }
    }

    fn feed_all(&mut self, s: &mut Session, input: &[u8]) -> Result<(), SessionError> {
        let mut input = input.to_vec();
        let mut rest = &mut input[..];
        loop {
            let mut out = Out {
                device: &mut self.device,
                client: &mut self.client,
            };
            let step = s.on_client_bytes(rest, Instant::now(), &mut out)?;
            rest = &mut rest[step.consumed..];
            self.settle(s, step.effect);
            if rest.is_empty() {
                return Ok(());
            }
            assert!(
                step.consumed > 0 || step.effect.is_some(),
                "the session made no progress"
            );
        }
    }

    /// Feed client bytes; returns (device bytes, client bytes) produced by them.
    fn feed(&mut self, s: &mut Session, input: &[u8]) -> (Vec<u8>, Vec<u8>) {
        self.device.clear();
        self.client.clear();
        self.feed_all(s, input).unwrap();
        (
            std::mem::take(&mut self.device),
            std::mem::take(&mut self.client),
        )
    }

    fn device_bytes(&mut self, s: &mut Session, data: &[u8]) {
        let mut out = Out {
            device: &mut self.device,
            client: &mut self.client,
        };
        let effect = s.on_device_bytes(data, Instant::now(), &mut out);
        self.settle(s, effect);
    }

    fn timer(&mut self, s: &mut Session, now: Instant) {
        let mut out = Out {
            device: &mut self.device,
            client: &mut self.client,
        };
        let effect = s.on_timer(now, &mut out);
        self.settle(s, effect);
    }
}

fn sb(cmd: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    telnet::subnegotiation(44, cmd, &mut v);
    v
}

fn session() -> Session {
    Session::new("serialhub test".into(), LineSettings::default())
}

/// pyserial's opening: DO ECHO, WILL SGA, DO SGA, DO COM-PORT, WILL COM-PORT.
const PYSERIAL_OPEN: [u8; 15] = [
    IAC, 0xFD, 1, IAC, 0xFB, 3, IAC, 0xFD, 3, IAC, 0xFD, 44, IAC, 0xFB, 44,
];

#[test]
fn opening_offers_com_port_and_never_answers_answers() {
    let mut s = session();
    let mut rig = Rig::default();
    let mut out = Vec::new();
    s.start(&mut out);
    assert!(
        out.windows(3).any(|w| w == [IAC, 0xFB, 44]),
        "WILL COM-PORT"
    );
    assert!(out.windows(3).any(|w| w == [IAC, 0xFD, 44]), "DO COM-PORT");
    let (_, out) = rig.feed(&mut s, &PYSERIAL_OPEN);
    // All of pyserial's requests cross our offers: the only output is the one
    // NOTIFY-MODEMSTATE that pyserial needs before it can read modem lines.
    assert_eq!(out, sb(&[107, 0]));
    // A repeated WILL is not answered again.
    let (_, out) = rig.feed(&mut s, &[IAC, 0xFB, 44]);
    assert!(out.is_empty());
    // Switched off and on again by the client: confirmed both times.
    let (_, out) = rig.feed(&mut s, &[IAC, 0xFC, 3, IAC, 0xFB, 3]);
    assert_eq!(out, [IAC, 0xFE, 3, IAC, 0xFD, 3]);
}

#[test]
fn unknown_options_are_refused() {
    let mut s = session();
    let mut rig = Rig::default();
    let (_, out) = rig.feed(&mut s, &[IAC, 0xFD, 24, IAC, 0xFB, 31]);
    assert_eq!(out, [IAC, 0xFC, 24, IAC, 0xFE, 31]);
}

#[test]
fn baud_is_applied_once_and_answered_with_the_value_in_force() {
    let mut s = session();
    let mut rig = Rig::default();
    let (_, out) = rig.feed(&mut s, &sb(&[1, 0, 0x0E, 0x10, 0x00]));
    assert_eq!(out, sb(&[101, 0, 0x0E, 0x10, 0x00]));
    assert_eq!(rig.applied.len(), 1);
    assert_eq!(rig.applied[0].baud, 921_600);
    // The same value again (esptool re-sends everything): answered, UART untouched.
    let (_, out) = rig.feed(&mut s, &sb(&[1, 0, 0x0E, 0x10, 0x00]));
    assert_eq!(out, sb(&[101, 0, 0x0E, 0x10, 0x00]));
    assert_eq!(rig.applied.len(), 1);
    // Query.
    let (_, out) = rig.feed(&mut s, &sb(&[1, 0, 0, 0, 0]));
    assert_eq!(out, sb(&[101, 0, 0x0E, 0x10, 0x00]));
}

#[test]
fn a_session_says_what_happened_in_notes_and_a_flood_of_them_costs_a_count() {
    let mut s = session();
    let mut rig = Rig::default();
    rig.feed(&mut s, &sb(&[1, 0, 0x0E, 0x10, 0x00]));
    let mut said = Vec::new();
    let lost = s.take_notes(&mut |w, n| said.push((w, n.to_string())));
    assert_eq!(
        (said, lost),
        (vec![(Weight::Told, "baud 115200 -> 921600".to_owned())], 0)
    );
    assert!(s.quiet());
    // Every unknown Telnet command is a note; only the first few are kept.
    rig.feed(&mut s, &[IAC, 0xF1].repeat(100));
    let mut kept = 0;
    let lost = s.take_notes(&mut |w, n| {
        assert_eq!(
            (w, n.to_string()),
            (Weight::Trace, "ignoring Telnet command 0xf1".into())
        );
        kept += 1;
    });
    assert_eq!((kept, lost), (16, 84));
    assert!(s.quiet());
}

#[test]
fn refused_baud_answers_the_old_one() {
    let mut s = session();
    let mut rig = Rig {
        refuse_baud_above: Some(1_000_000),
        ..Default::default()
    };
    let (_, out) = rig.feed(&mut s, &sb(&[1, 0, 0x1E, 0x84, 0x80]));
    assert_eq!(out, sb(&[101, 0, 1, 0xC2, 0]));
    assert_eq!(s.settings().baud, 115_200);
}

#[test]
fn a_setting_waits_for_its_effect_and_the_rest_of_the_input_waits_for_it() {
    let mut s = session();
    let wire = [&b"ab"[..], &sb(&[1, 0, 0x0E, 0x10, 0x00]), b"cd"].concat();
    let mut dev = Vec::new();
    let mut cli = Vec::new();
    let mut out = Out {
        device: &mut dev,
        client: &mut cli,
    };
    let step = s
        .on_client_bytes(&mut wire.clone(), Instant::now(), &mut out)
        .unwrap();
    let want = LineSettings {
        baud: 921_600,
        ..LineSettings::default()
    };
    assert_eq!(step.effect, Some(Effect::Apply(want)));
    assert_eq!(
        step.consumed,
        wire.len() - 2,
        "stops right after the request"
    );
    assert!(Effect::Apply(want).after_data());
    assert_eq!((out.device.as_slice(), out.client.len()), (&b"ab"[..], 0));
    assert!(s.client_paused());
    // Until the effect is done, nothing more is taken.
    let again = s
        .on_client_bytes(&mut b"cd".to_vec(), Instant::now(), &mut out)
        .unwrap();
    assert_eq!(
        again,
        Step {
            consumed: 0,
            effect: None
        }
    );
    assert_eq!(s.done(Ok(()), Instant::now(), &mut out), None);
    assert_eq!(*out.client, sb(&[101, 0, 0x0E, 0x10, 0x00]));
    assert!(!s.client_paused());
}

#[test]
fn a_stalled_device_keeps_the_old_setting() {
    let mut s = session();
    let (mut dev, mut cli) = (Vec::new(), Vec::new());
    let mut out = Out {
        device: &mut dev,
        client: &mut cli,
    };
    let step = s
        .on_client_bytes(&mut sb(&[1, 0, 0, 0x25, 0x80]), Instant::now(), &mut out)
        .unwrap();
    assert!(step.effect.is_some());
    s.done(Err(Failure::Stalled), Instant::now(), &mut out);
    assert_eq!(*out.client, sb(&[101, 0, 1, 0xC2, 0]));
    assert_eq!(s.settings().baud, 115_200);
}

#[test]
fn baud_with_iac_bytes_in_value() {
    // 0x0001_FFFF = 131071: the 0xFF bytes are doubled on the wire both ways.
    let mut s = session();
    let mut rig = Rig::default();
    let wire = sb(&[1, 0, 1, 0xFF, 0xFF]);
    assert_eq!(wire.len(), 12);
    let (_, out) = rig.feed(&mut s, &wire);
    assert_eq!(out, sb(&[101, 0, 1, 0xFF, 0xFF]));
    assert_eq!(rig.applied[0].baud, 131_071);
}

#[test]
fn format_settings_and_bad_values() {
    let mut s = session();
    let mut rig = Rig::default();
    let (_, out) = rig.feed(&mut s, &sb(&[2, 7]));
    assert_eq!(out, sb(&[102, 7]));
    let (_, out) = rig.feed(&mut s, &sb(&[3, 3]));
    assert_eq!(out, sb(&[103, 3]));
    let (_, out) = rig.feed(&mut s, &sb(&[4, 2]));
    assert_eq!(out, sb(&[104, 2]));
    assert_eq!(s.settings().data_bits, DataBits::Seven);
    assert_eq!(s.settings().parity, Parity::Even);
    // Data size 9 does not exist: answered with the size in force.
    let (_, out) = rig.feed(&mut s, &sb(&[2, 9]));
    assert_eq!(out, sb(&[102, 7]));
}

#[test]
fn control_is_acknowledged_once_done() {
    let mut s = session();
    let mut rig = Rig::default();
    let (_, out) = rig.feed(&mut s, &[sb(&[5, 8]), sb(&[5, 11])].concat());
    assert_eq!(out, [sb(&[105, 8]), sb(&[105, 11])].concat());
    assert_eq!(
        rig.lines,
        [
            Lines {
                dtr: true,
                rts: false
            },
            Lines {
                dtr: true,
                rts: true
            }
        ]
    );
    let (_, out) = rig.feed(&mut s, &[sb(&[5, 7]), sb(&[5, 10])].concat());
    assert_eq!(out, [sb(&[105, 8]), sb(&[105, 11])].concat());
    let (_, out) = rig.feed(&mut s, &[sb(&[5, 5]), sb(&[5, 4])].concat());
    assert_eq!(out, [sb(&[105, 5]), sb(&[105, 5])].concat());
    assert_eq!(rig.breaks, [true]);
    let (_, out) = rig.feed(&mut s, &[sb(&[5, 3]), sb(&[5, 0])].concat());
    assert_eq!(out, [sb(&[105, 3]), sb(&[105, 3])].concat());
}

#[test]
fn purge_and_masks_and_signature() {
    let mut s = session();
    let mut rig = Rig::default();
    let (_, out) = rig.feed(&mut s, &sb(&[12, 3]));
    assert_eq!(out, sb(&[112, 3]));
    assert_eq!(rig.purges, [Purge::Both]);
    let (_, out) = rig.feed(&mut s, &sb(&[11, 0x30]));
    assert_eq!(out, sb(&[111, 0x30]));
    let (_, out) = rig.feed(&mut s, &sb(&[0]));
    let mut want = vec![100];
    want.extend_from_slice(b"serialhub test");
    assert_eq!(out, sb(&want));
    // Flow suspend/resume get no answer (108/109 would mean the opposite).
    let (_, out) = rig.feed(&mut s, &sb(&[8]));
    assert!(out.is_empty() && s.suspended());
    let (_, out) = rig.feed(&mut s, &sb(&[9]));
    assert!(out.is_empty() && !s.suspended());
    // The client's own signature is not answered.
    let (_, out) = rig.feed(&mut s, &sb(b"\x00pyserial\x1b[31m"));
    assert!(out.is_empty());
}

#[test]
fn modem_changes_are_notified_masked() {
    let mut s = session();
    let mut rig = Rig::default();
    rig.feed(&mut s, &PYSERIAL_OPEN);
    let mut out = Vec::new();
    let mut st = ModemStatus::default();
    s.modem_status(st, &mut out);
    assert!(out.is_empty(), "no change, no notification");
    st.cts = true;
    s.modem_status(st, &mut out);
    assert_eq!(out, sb(&[107, 0x11]));
    out.clear();
    rig.feed(&mut s, &sb(&[11, 0x20]));
    st.cts = false;
    s.modem_status(st, &mut out);
    assert!(out.is_empty(), "CTS masked out");
}

#[test]
fn data_passes_with_iac_unescaped() {
    let mut s = session();
    let mut rig = Rig::default();
    let (dev, _) = rig.feed(&mut s, &[1, IAC, IAC, 2]);
    assert_eq!(dev, [1, 0xFF, 2]);
}

#[test]
fn data_before_a_baud_change_is_written_before_it() {
    let mut s = session();
    let mut rig = Rig::default();
    let wire = [&b"ab"[..], &sb(&[1, 0, 0x0E, 0x10, 0x00]), b"cd"].concat();
    let (dev, _) = rig.feed(&mut s, &wire);
    assert_eq!(dev, b"abcd");
    assert_eq!(rig.applied_at, [2]);
}

#[test]
fn raw_sessions_pass_bytes_untouched() {
    let mut s = Session::raw(LineSettings::default());
    let mut rig = Rig::default();
    let mut out = Vec::new();
    s.start(&mut out);
    assert!(out.is_empty());
    let (dev, cli) = rig.feed(&mut s, &[IAC, 0xFD, 44, IAC, IAC]);
    assert_eq!(dev, [IAC, 0xFD, 44, IAC, IAC]);
    assert!(cli.is_empty() && rig.effects.is_empty());
    rig.device_bytes(&mut s, &[IAC, 1]);
    assert_eq!(rig.client, [IAC, 1]);
}

fn detecting() -> Session {
    let window = Duration::from_millis(300);
    Session::detect("sig".into(), LineSettings::default(), window)
}

#[test]
fn detection_iac_first_is_rfc2217_and_held_output_comes_escaped_after_the_offers() {
    let mut s = detecting();
    let mut rig = Rig::default();
    let mut out = Vec::new();
    s.start(&mut out);
    assert!(out.is_empty(), "no offers before the client shows itself");
    rig.device_bytes(&mut s, &[b'a', IAC]);
    assert!(rig.client.is_empty() && s.protocol().is_none());
    let (_, cli) = rig.feed(&mut s, &PYSERIAL_OPEN);
    assert_eq!(s.protocol(), Some(Protocol::Rfc2217));
    let mut offers = Vec::new();
    session().start(&mut offers);
    assert!(cli.starts_with(&offers), "{cli:02x?}");
    assert!(cli.windows(3).any(|w| w == [b'a', IAC, IAC]));
}

#[test]
fn detection_other_first_byte_is_raw_and_nothing_is_reordered() {
    let mut s = detecting();
    let mut rig = Rig::default();
    rig.device_bytes(&mut s, b"boot ");
    let (dev, cli) = rig.feed(&mut s, b"hi\xff");
    assert_eq!(
        (dev.as_slice(), cli.as_slice()),
        (&b"hi\xff"[..], &b"boot "[..])
    );
    rig.device_bytes(&mut s, b"more");
    assert_eq!(rig.client, b"more");
    assert_eq!(s.protocol(), Some(Protocol::Raw));
}

#[test]
fn detection_silent_client_turns_raw_after_the_window_only_if_output_waits() {
    let mut s = detecting();
    let mut rig = Rig::default();
    assert_eq!(s.deadline(), None, "no output waiting, no hurry");
    let t0 = Instant::now();
    let mut out = Out {
        device: &mut rig.device,
        client: &mut rig.client,
    };
    assert_eq!(s.on_device_bytes(b"log line\r\n", t0, &mut out), None);
    let at = s.deadline().unwrap();
    assert_eq!(at, t0 + Duration::from_millis(300));
    rig.timer(&mut s, at - Duration::from_millis(1));
    assert!(rig.client.is_empty() && s.protocol().is_none());
    rig.timer(&mut s, at);
    assert_eq!(rig.client, b"log line\r\n");
    assert_eq!(s.protocol(), Some(Protocol::Raw));
}

#[test]
fn esp_raw_session_resets_on_sync_and_switches_baud_after_the_answer() {
    let mut s = detecting().watch_esp(false, Entry::Reset);
    let mut rig = Rig::default();
    let mut sync = vec![0xC0, 0, 0x08, 0x24, 0, 0, 0, 0, 0, 7, 7, 0x12, 0x20];
    sync.extend_from_slice(&[0x55; 32]);
    sync.push(0xC0);
    let (dev, _) = rig.feed(&mut s, &sync);
    assert_eq!(rig.resets, [ResetTo::Bootloader]);
    assert_eq!(dev, [0xC0, 0xC0]);
    assert_eq!(s.esp_end(), Some(EspEnd::Entered));
    let mut out = Out {
        device: &mut rig.device,
        client: &mut rig.client,
    };
    s.reset_done(ResetTo::Bootloader, Instant::now(), &mut out);
    assert_eq!(rig.device, sync, "the swallowed SYNC is replayed");
    rig.device.clear();

    // Stub form: (921600, 115200); bytes after it wait for the chip's answer.
    let mut req = vec![0xC0, 0, 0x0F, 8, 0, 0, 0, 0, 0];
    req.extend_from_slice(&921_600u32.to_le_bytes());
    req.extend_from_slice(&115_200u32.to_le_bytes());
    req.push(0xC0);
    let (dev, _) = rig.feed(&mut s, &[&req[..], b"\xc0next\xc0"].concat());
    assert_eq!(dev, req);
    assert!(s.client_paused() && rig.applied.is_empty());
    let answer = [0xC0, 1, 0x0F, 2, 0, 0, 0, 0, 0, 0, 0, 0xC0];
    rig.device_bytes(&mut s, &answer);
    assert_eq!(rig.client, answer);
    assert_eq!(
        rig.applied.iter().map(|a| a.baud).collect::<Vec<_>>(),
        [921_600]
    );
    assert_eq!(
        rig.applied_at,
        [0],
        "switched before the parked bytes went out"
    );
    assert_eq!(rig.device, b"\xc0next\xc0");
    assert_eq!(s.settings().baud, 921_600);
    assert!(!s.client_paused());
}

#[test]
fn a_baud_change_of_the_servers_moves_the_uart_and_the_client_never_sees_its_answer() {
    let mut s = Session::raw(LineSettings::default()).watch_esp(true, Entry::Reset);
    let mut rig = Rig::default();
    let (dev, _) = rig.feed(&mut s, &sync_frame());
    assert_eq!(dev, sync_frame());
    let sync_answer = [0xC0, 1, 0x08, 2, 0, 0, 0, 0, 0, 0, 0, 0xC0];
    rig.device_bytes(&mut s, &sync_answer);
    assert_eq!(rig.client, sync_answer);
    rig.device.clear();
    rig.client.clear();

    let cmd = LoaderCommand::change_baudrate(2_000_000, 115_200);
    let mut out = Out {
        device: &mut rig.device,
        client: &mut rig.client,
    };
    s.inject(cmd, Instant::now(), &mut out).unwrap();
    let mut ours = vec![0xC0, 0, 0x0F, 8, 0, 0, 0, 0, 0];
    ours.extend_from_slice(&2_000_000u32.to_le_bytes());
    ours.extend_from_slice(&115_200u32.to_le_bytes());
    ours.push(0xC0);
    assert_eq!(rig.device, ours, "between two commands: at once");
    rig.device.clear();
    let (dev, _) = rig.feed(&mut s, b"\xc0next\xc0");
    assert!(dev.is_empty() && s.client_paused());
    rig.device_bytes(&mut s, &[0xC0, 1, 0x0F, 2, 0, 0, 0, 0, 0, 0, 0, 0xC0]);
    assert!(
        rig.client.is_empty(),
        "our answer is ours: {:02x?}",
        rig.client
    );
    assert_eq!(
        rig.applied.iter().map(|a| a.baud).collect::<Vec<_>>(),
        [2_000_000]
    );
    assert_eq!(
        rig.applied_at,
        [0],
        "switched before the client's bytes went"
    );
    assert_eq!(rig.device, b"\xc0next\xc0");
    assert!(!s.client_paused());

    // A session that does not follow the loader protocol cannot.
    let mut plain = Session::raw(LineSettings::default());
    let mut out = Out {
        device: &mut rig.device,
        client: &mut rig.client,
    };
    assert_eq!(
        plain.inject(cmd, Instant::now(), &mut out),
        Err(InjectError::NotFollowing)
    );
}

#[test]
fn a_failed_bootloader_entry_lets_the_sync_through() {
    let mut s = Session::raw(LineSettings::default()).watch_esp(false, Entry::Reset);
    let mut sync = vec![0xC0, 0, 0x08, 0x24, 0, 0, 0, 0, 0, 7, 7, 0x12, 0x20];
    sync.extend_from_slice(&[0x55; 32]);
    sync.push(0xC0);
    let (mut dev, mut cli) = (Vec::new(), Vec::new());
    let mut out = Out {
        device: &mut dev,
        client: &mut cli,
    };
    let now = Instant::now();
    let step = s.on_client_bytes(&mut sync.clone(), now, &mut out).unwrap();
    assert_eq!(step.effect, Some(Effect::Reset(ResetTo::Bootloader)));
    let failure = Failure::Reset(ResetError::LinesDisabled);
    assert_eq!(s.done(Err(failure), now, &mut out), None);
    assert!(out.device.ends_with(&sync), "replayed at once");
}

#[test]
fn oversized_subnegotiation_ends_the_session() {
    let mut s = session();
    let mut rig = Rig::default();
    let mut wire = vec![IAC, 0xFA, 44];
    wire.resize(2000, 1);
    assert!(matches!(
        rig.feed_all(&mut s, &wire),
        Err(SessionError::Garbage(_))
    ));
}

#[test]
fn thousands_of_line_changes_are_one_effect_at_a_time() {
    let mut s = session();
    let mut rig = Rig::default();
    let wire: Vec<u8> = (0..2000)
        .flat_map(|i| sb(&[5, if i % 2 == 0 { 8 } else { 9 }]))
        .collect();
    let (_, cli) = rig.feed(&mut s, &wire);
    assert_eq!(rig.lines.len(), 2000);
    assert_eq!(cli.len(), wire.len(), "every request answered, same size");
}

fn sync_frame() -> Vec<u8> {
    let mut sync = vec![0xC0, 0, 0x08, 0x24, 0, 0, 0, 0, 0, 7, 7, 0x12, 0x20];
    sync.extend_from_slice(&[0x55; 32]);
    sync.push(0xC0);
    sync
}

#[test]
fn rfc2217_session_enters_the_loader_on_sync_and_follows_change_baudrate() {
    // esptool --before no-reset over rfc2217://: no line changes, just a SYNC.
    let mut s = session().watch_esp(false, Entry::Reset);
    let mut rig = Rig::default();
    rig.feed(&mut s, &PYSERIAL_OPEN);
    assert_eq!(s.protocol(), Some(Protocol::Rfc2217));
    assert!(s.esp.is_some());
    let sync = sync_frame();
    // A setting right behind the SYNC waits until the entry has been asked for.
    let wire = [sync.clone(), sb(&[1, 0, 1, 0xC2, 0])].concat();
    let (dev, cli) = rig.feed(&mut s, &wire);
    assert_eq!(rig.resets, [ResetTo::Bootloader]);
    assert_eq!(dev, [0xC0, 0xC0], "the SYNC is held while the chip resets");
    assert_eq!(
        cli,
        sb(&[101, 0, 1, 0xC2, 0]),
        "the unchanged baud is answered"
    );
    let mut out = Out {
        device: &mut rig.device,
        client: &mut rig.client,
    };
    s.reset_done(ResetTo::Bootloader, Instant::now(), &mut out);
    assert_eq!(rig.device, sync, "replayed");
    // The chip's answer reaches the client Telnet-escaped.
    rig.client.clear();
    let answer = [0xC0, 1, 8, 2, 0, 0xFF, 0, 0, 0, 0, 0, 0xC0];
    rig.device_bytes(&mut s, &answer);
    assert_eq!(
        rig.client,
        [&answer[..5], &[0xFF, 0xFF], &answer[6..]].concat()
    );
    // CHANGE_BAUDRATE in the data: the UART follows the chip's answer, and the
    // client's own SET-BAUD to that rate afterwards changes nothing.
    let mut req = vec![0xC0, 0, 0x0F, 8, 0, 0, 0, 0, 0];
    req.extend_from_slice(&921_600u32.to_le_bytes());
    req.extend_from_slice(&115_200u32.to_le_bytes());
    req.push(0xC0);
    rig.feed(&mut s, &req);
    rig.device_bytes(&mut s, &[0xC0, 1, 0x0F, 2, 0, 0, 0, 0, 0, 0, 0, 0xC0]);
    assert_eq!(s.settings().baud, 921_600);
    let applied = rig.applied.len();
    // pyserial re-sends the old rate while esptool waits: answered as asked, no change.
    let (_, cli) = rig.feed(&mut s, &sb(&[1, 0, 1, 0xC2, 0]));
    assert_eq!(cli, sb(&[101, 0, 1, 0xC2, 0]));
    assert_eq!(s.settings().baud, 921_600);
    let (_, cli) = rig.feed(&mut s, &sb(&[1, 0, 0x0E, 0x10, 0x00]));
    assert_eq!(cli, sb(&[101, 0, 0x0E, 0x10, 0x00]));
    assert_eq!(rig.applied.len(), applied, "UART untouched");
    // No reset of its own at the end: the chip is owed one.
    assert_eq!(s.esp_end(), Some(EspEnd::Entered));
}

#[test]
fn rfc2217_client_that_resets_the_chip_itself_is_not_reset_again() {
    let mut s = session().watch_esp(false, Entry::Reset);
    let mut rig = Rig::default();
    rig.feed(&mut s, &PYSERIAL_OPEN);
    // pyserial's open (DTR, then RTS asserted), then esptool's ClassicReset: DTR
    // released (EN low), RTS asserted, DTR asserted, RTS released (IO0 low), DTR released.
    let open = [sb(&[5, 8]), sb(&[5, 11])].concat();
    let classic = [5, 9, 5, 11, 5, 8, 5, 12, 5, 9]
        .chunks(2)
        .map(sb)
        .collect::<Vec<_>>();
    let reset = [open, classic.concat()].concat();
    rig.feed(&mut s, &reset);
    let (dev, _) = rig.feed(&mut s, &sync_frame());
    assert_eq!(dev, sync_frame(), "passes at once");
    assert!(rig.resets.is_empty());
    assert_eq!(s.esp_end(), Some(EspEnd::Unknown));
    // A monitor letting go (DTR released, then RTS) is not a reset by the client.
    let mut s = session().watch_esp(false, Entry::Reset);
    rig.feed(
        &mut s,
        &[sb(&[5, 8]), sb(&[5, 11]), sb(&[5, 9]), sb(&[5, 12])].concat(),
    );
    rig.feed(&mut s, &sync_frame());
    assert_eq!(rig.resets, [ResetTo::Bootloader]);
}

#[test]
fn a_loader_session_starts_with_a_sync_or_the_clients_bootloader_entry_and_ends_in_the_app() {
    let mut rig = Rig::default();
    // A monitor: opening with both lines released, a hard reset with RTS (EN low,
    // then released): no loader session.
    let mut s = session().watch_esp(false, Entry::Reset);
    rig.feed(&mut s, &PYSERIAL_OPEN);
    let hard_reset = [5, 9, 5, 12, 5, 11, 5, 12]
        .chunks(2)
        .map(sb)
        .collect::<Vec<_>>();
    rig.feed(&mut s, &hard_reset.concat());
    assert!(!s.loading());
    // esptool over RFC 2217: its own bootloader entry starts one (the chip's banner
    // that follows is the flasher's alone).
    let classic = [5, 9, 5, 11, 5, 8, 5, 12, 5, 9]
        .chunks(2)
        .map(sb)
        .collect::<Vec<_>>();
    rig.feed(&mut s, &classic.concat());
    assert!(s.loading());
    // The server resets the chip into its application: over.
    let mut out = Out {
        device: &mut rig.device,
        client: &mut rig.client,
    };
    s.reset_done(ResetTo::App, Instant::now(), &mut out);
    assert!(!s.loading());
    // esptool over socket://: its SYNC starts one.
    let mut s = Session::raw(LineSettings::default()).watch_esp(false, Entry::Reset);
    rig.feed(&mut s, &sync_frame());
    assert!(s.loading());
    // Regaining control starts the follower over.
    s.take_control(true);
    assert!(!s.loading());
    let (dev, _) = rig.feed(&mut s, &sync_frame());
    assert_eq!(
        dev,
        sync_frame(),
        "a chip known in its loader is not reset again"
    );
}

#[test]
fn news_reach_an_rfc2217_client_as_a_signature_once_it_agreed_to_com_port() {
    let mut rig = Rig::default();
    let mut s = session();
    let mut out = Vec::new();
    s.start(&mut out);
    out.clear();
    s.tell("serialhub: observing", &mut out);
    assert!(out.is_empty(), "not before COM-PORT is agreed");
    let (_, answer) = rig.feed(&mut s, &PYSERIAL_OPEN);
    let mut news = Vec::new();
    reply(
        Command::Signature(b"serialhub: observing".to_vec()),
        &mut news,
    );
    assert_eq!(answer, [sb(&[107, 0]), news.clone()].concat());
    let mut out = Vec::new();
    s.tell("serialhub: observing", &mut out);
    assert_eq!(out, news, "at once afterwards");
    // A raw client hears nothing: its stream is the device's alone.
    let mut raw = Session::raw(LineSettings::default());
    let mut out = Vec::new();
    raw.tell("serialhub: observing", &mut out);
    assert!(out.is_empty());
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn chunks(data: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
        cuts.sort_unstable();
        let mut out = Vec::new();
        let mut last = 0;
        for c in cuts.into_iter().chain([data.len()]) {
            out.push(data[last..c].to_vec());
            last = c;
        }
        out
    }

    /// Client bytes rich in what the session reacts to: IAC and its verbs, COM-PORT
    /// subnegotiations, SLIP framing and a whole SYNC.
    fn hostile() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(vec![IAC]),
            Just(vec![IAC, 0xFA, 44]),
            Just(vec![IAC, 0xF0]),
            Just(vec![IAC, 0xFD, 44]),
            Just(vec![0xC0]),
            Just(sync_frame()),
            Just(vec![
                0xC0, 0, 0x0F, 8, 0, 0, 0, 0, 0, 0, 0x10, 0x0E, 0, 0, 0, 0, 0, 0xC0
            ]),
            proptest::collection::vec(0u8..=12, 1..4),
            proptest::collection::vec(any::<u8>(), 1..64),
        ];
        proptest::collection::vec(piece, 0..64).prop_map(|v| v.concat())
    }

    proptest! {
        /// Whatever a client sends, however it is split, in any mode: no panic, every byte
        /// is eventually taken, and what the session writes stays in proportion to it.
        #[test]
        fn any_client_input_is_taken_and_bounded(
            wire in hostile(),
            cuts in proptest::collection::vec(0usize..4096, 0..6),
            mode in 0u8..3,
            device in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let s = match mode {
                0 => session(),
                1 => Session::raw(LineSettings::default()),
                _ => detecting(),
            };
            let mut s = s.watch_esp(false, Entry::Reset);
            let mut rig = Rig::default();
            for chunk in chunks(&wire, &cuts) {
                if rig.feed_all(&mut s, &chunk).is_err() {
                    break;
                }
                rig.device_bytes(&mut s, &device);
            }
            // A SYNC can be replayed once per entry; everything else is at most the input.
            let replays = rig.resets.len() + 1;
            prop_assert!(rig.device.len() <= wire.len() + replays * sync_frame().len());
            // Answers: a fixed size per request, plus the device bytes (escaped: doubled).
            prop_assert!(rig.client.len() <= 64 * wire.len() + 2 * device.len() * (cuts.len() + 1) + 64);
        }

        /// A raw session on a device whose policy never resets: what reaches the device
        /// is exactly what the client sent, except that SYNCs are never held.
        #[test]
        fn raw_data_reaches_the_device_unchanged(
            wire in hostile(),
            cuts in proptest::collection::vec(0usize..4096, 0..6),
        ) {
            let mut s = Session::raw(LineSettings::default()).watch_esp(false, Entry::Never);
            let mut rig = Rig::default();
            for chunk in chunks(&wire, &cuts) {
                rig.feed_all(&mut s, &chunk).unwrap();
            }
            // Without a chip answering, CHANGE_BAUDRATE is not followed: nothing parks.
            prop_assert_eq!(&rig.device, &wire);
        }

        /// RFC 2217: escaped data arrives unescaped, whatever the split.
        #[test]
        fn telnet_data_roundtrips(
            data in proptest::collection::vec(prop_oneof![Just(IAC), any::<u8>()], 0..1024),
            cuts in proptest::collection::vec(0usize..4096, 0..6),
        ) {
            let mut s = session();
            let mut rig = Rig::default();
            let mut wire = Vec::new();
            telnet::escape_into(&data, &mut wire);
            for chunk in chunks(&wire, &cuts) {
                rig.feed_all(&mut s, &chunk).unwrap();
            }
            prop_assert_eq!(&rig.device, &data);
        }
    }
}
