//! The hotplug plan's rules, one test per rule: events and times in, decisions out.

use super::*;
use crate::daemon::assign::Assignments;
use crate::daemon::identity::UsbId;

const JTAG: UsbId = UsbId {
    vid: 0x303a,
    pid: 0x1001,
};
const CP210X: UsbId = UsbId {
    vid: 0x10c4,
    pid: 0xea60,
};

fn s(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn usb(id: UsbId, serial: &str, path: &str) -> Identity {
    Identity {
        usb: Some(UsbInfo {
            id: Some(id),
            serial: Some(serial.to_string()),
            path: Some(path.to_string()),
            ..UsbInfo::default()
        }),
        canonical: None,
    }
}

/// A board that answers for every node: the same identity wherever it is plugged in.
fn board(id: Identity) -> impl Fn(&Path) -> Identity {
    move |_| id.clone()
}

fn nobody(_: &Path) -> Identity {
    Identity::default()
}

fn plan() -> Plan {
    Plan::new(Hotplug::default(), Vec::new())
}

fn serves(ds: &[Decision]) -> Vec<&Serve> {
    (ds.iter())
        .filter_map(|d| match d {
            Decision::Serve(s) => Some(s),
            _ => None,
        })
        .collect()
}

fn stops(ds: &[Decision]) -> Vec<String> {
    (ds.iter())
        .filter_map(|d| match d {
            Decision::Stop { key, .. } => Some(key.to_string()),
            _ => None,
        })
        .collect()
}

/// Decisions without their log lines.
fn acts(ds: Vec<Decision>) -> Vec<Decision> {
    ds.into_iter()
        .filter(|d| !matches!(d, Decision::Log(..)))
        .collect()
}

fn key(s: &str) -> DeviceKey {
    DeviceKey::serial(s)
}

fn tty(name: &str) -> DeviceSpec {
    DeviceSpec::new(DevicePath::Tty(PathBuf::from("/dev").join(name)))
}

#[test]
fn a_node_is_served_at_once_and_opened_after_its_settle_time() {
    let mut p = plan();
    let t0 = Instant::now();
    let acm = p.appeared(t0, "ttyACM0", &board(usb(CP210X, "A", "1.1")));
    let [serve] = serves(&acm)[..] else {
        panic!("one serve: {acm:?}")
    };
    assert_eq!(serve.key, key("A"));
    assert_eq!(serve.port, PortChoice::Stable);
    assert_eq!(serve.node.as_deref(), Some("ttyACM0"));
    assert_eq!(serve.spec.path, DevicePath::Tty("/dev/ttyACM0".into()));
    // cdc_acm asserts DTR/RTS on open: ttyACM* settles 1 s; ttyUSB* not at all.
    assert_eq!(serve.open_after, t0 + s(1));
    let usb0 = p.appeared(t0, "ttyUSB0", &board(usb(CP210X, "B", "1.2")));
    assert_eq!(serves(&usb0)[0].open_after, t0);
    assert_eq!(serves(&usb0)[0].grace, Duration::ZERO);
    // Its group set by udev (ATTRIB): the bridge tries to open it now.
    assert_eq!(
        p.appeared(t0 + ms(5), "ttyACM0", &nobody),
        [Decision::Retry { key: key("A") }]
    );
    // Nodes outside the patterns are not devices.
    assert!(p.watches("ttyUSB7") && p.watches("ttyACM0") && !p.watches("tty0"));
}

#[test]
fn a_rule_pins_a_port_and_a_fixed_device_is_not_served_twice() {
    let rule = DeviceSpec {
        serial: Some("A".into()),
        port: Some(4100),
        ..tty("rule")
    };
    let mut p = Plan::new(Hotplug::default(), vec![rule]);
    let t0 = Instant::now();
    let fixed = Identity {
        canonical: Some("/dev/ttyUSB9".into()),
        ..Identity::default()
    };
    let ds = p.fixed(t0, vec![tty("serial0")], &board(fixed.clone()));
    assert_eq!(serves(&ds)[0].key, DeviceKey::name("serial0"));
    assert!(serves(&p.appeared(t0, "ttyUSB9", &board(fixed))).is_empty());
    let ds = p.appeared(t0, "ttyUSB0", &board(usb(CP210X, "A", "1.1")));
    assert_eq!(serves(&ds)[0].port, PortChoice::Pinned(4100));
    assert_eq!(serves(&ds)[0].spec.name.as_deref(), Some("ttyUSB0"));
}

#[test]
fn a_native_usb_chip_back_within_its_grace_goes_to_the_same_bridge() {
    let mut p = plan();
    let t0 = Instant::now();
    let chip = board(usb(JTAG, "C3", "1.3"));
    let ds = p.appeared(t0, "ttyACM0", &chip);
    assert_eq!(serves(&ds)[0].policy, Policy::UsbJtag);
    assert_eq!(serves(&ds)[0].grace, s(3));
    // It resets: the node goes, the bridge is parked with its client.
    let t1 = t0 + s(10);
    assert_eq!(
        acts(p.removed(t1, "ttyACM0")),
        [Decision::Park { key: key("C3") }]
    );
    assert_eq!(p.deadline(), Some(t1 + s(3)));
    assert_eq!(p.due(t1 + ms(2999)), []);
    // Back under another node: handed to the parked bridge, nothing started or stopped.
    let back = acts(p.appeared(t1 + s(1), "ttyACM1", &chip));
    assert_eq!(
        back,
        [Decision::Hand {
            key: key("C3"),
            path: DevicePath::Tty("/dev/ttyACM1".into()),
        }]
    );
    assert_eq!(p.deadline(), None);
    // The new node is the one it is known by now.
    assert_eq!(acts(p.removed(t1 + s(2), "ttyACM0")), []);
    assert_eq!(
        acts(p.removed(t1 + s(2), "ttyACM1")),
        [Decision::Park { key: key("C3") }]
    );
}

#[test]
fn a_parked_chip_that_does_not_come_back_is_stopped_when_its_grace_ends() {
    let mut p = plan();
    let t0 = Instant::now();
    let chip = board(usb(JTAG, "C3", "1.3"));
    p.appeared(t0, "ttyACM0", &chip);
    p.removed(t0 + s(1), "ttyACM0");
    let gone = p.due(t0 + s(4));
    assert_eq!(
        gone,
        [
            info("serial:C3: did not come back; stopped".into()),
            Decision::Stop {
                key: key("C3"),
                why: "the device did not come back"
            },
            show(&key("C3"), Shown::Absent),
        ]
    );
    assert_eq!(p.deadline(), None);
    // Plugged in again later: served afresh, under the same key.
    let again = p.appeared(t0 + s(20), "ttyACM0", &chip);
    assert_eq!(serves(&again)[0].key, key("C3"));
}

#[test]
fn an_unplugged_uart_bridge_is_stopped_at_once() {
    let mut p = plan();
    let t0 = Instant::now();
    p.appeared(t0, "ttyUSB0", &board(usb(CP210X, "A", "1.1")));
    assert_eq!(
        p.removed(t0 + s(1), "ttyUSB0"),
        [
            info("ttyUSB0: unplugged; stopping serial:A".into()),
            Decision::Stop {
                key: key("A"),
                why: "the device was unplugged"
            },
            show(&key("A"), Shown::Absent),
        ]
    );
    assert_eq!(p.removed(t0 + s(1), "ttyUSB0"), []);
}

#[test]
fn keys_and_ports_stay_with_the_board_across_replugs() {
    let dir = std::env::temp_dir().join(format!("serialhub-plan-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut ports = Assignments::load(&dir.join("ports.json"), 4001, None);
    let none = BTreeSet::new();
    let mut port_of = |ds: &[Decision]| {
        let serve = serves(ds)[0];
        assert_eq!(serve.port, PortChoice::Stable);
        (serve.key.clone(), ports.assign(&serve.key, &none).unwrap())
    };
    let mut p = plan();
    let t0 = Instant::now();
    let a = board(usb(CP210X, "A", "1.1"));
    let first = port_of(&p.appeared(t0, "ttyUSB0", &a));
    let other = port_of(&p.appeared(t0, "ttyUSB1", &board(usb(CP210X, "B", "1.2"))));
    p.removed(t0 + s(1), "ttyUSB0");
    p.removed(t0 + s(1), "ttyUSB1");
    // Back in the other order, on other nodes: each board its own key and port.
    let b_again = port_of(&p.appeared(t0 + s(2), "ttyUSB0", &board(usb(CP210X, "B", "1.2"))));
    let a_again = port_of(&p.appeared(t0 + s(2), "ttyUSB5", &a));
    assert_eq!((first.clone(), other.clone()), (a_again, b_again));
    assert_eq!((first.1, other.1), (4001, 4002));
    // Two present boards report one serial number: the second is keyed by its USB path.
    let dupe = p.appeared(t0 + s(3), "ttyUSB6", &board(usb(CP210X, "A", "1.4")));
    assert_eq!(serves(&dupe)[0].key.to_string(), "path:1.4");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_node_that_keeps_coming_and_going_is_left_alone_for_its_cool_down() {
    let mut p = plan();
    let t0 = Instant::now();
    let a = board(usb(CP210X, "A", "1.1"));
    // flap_count = 6 appearances in 30 s are fine...
    for i in 0..6 {
        let ds = p.appeared(t0 + s(i), "ttyUSB0", &a);
        assert_eq!(serves(&ds).len(), 1, "appearance {i}");
        p.removed(t0 + s(i) + ms(500), "ttyUSB0");
    }
    // ...the seventh is one too many.
    let t7 = t0 + s(6);
    let ds = p.appeared(t7, "ttyUSB0", &a);
    assert!(
        matches!(&ds[0], Decision::Log(Level::Warn, m) if m.contains("appeared 7 times in 30 s; leaving it alone for 60 s"))
    );
    assert_eq!(acts(ds), [show(&key("A"), Shown::Flapping)]);
    assert_eq!(p.deadline(), Some(t7 + s(60)));
    assert_eq!(acts(p.appeared(t7 + s(1), "ttyUSB0", &a)), []);
    assert_eq!(acts(p.due(t7 + s(59))), []);
    assert_eq!(
        acts(p.due(t7 + s(60))),
        [show(&key("A"), Shown::Cooled), Decision::Rescan]
    );
    // The rescan finds it: served again, the count started over.
    let back = p.scanned(t7 + s(60), vec!["ttyUSB0".into(), "tty0".into()], &a);
    assert_eq!(serves(&back).len(), 1);
}

#[test]
fn a_served_node_that_flaps_is_stopped() {
    let mut p = plan();
    let t0 = Instant::now();
    let chip = board(usb(JTAG, "C3", "1.3"));
    for i in 0..6 {
        p.appeared(t0 + s(i), &format!("ttyACM{i}"), &chip);
        p.removed(t0 + s(i) + ms(10), &format!("ttyACM{i}"));
    }
    // Parked (grace) when it appears a seventh time: the bridge is stopped.
    let ds = p.appeared(t0 + s(6), "ttyACM6", &chip);
    assert_eq!(stops(&ds), ["serial:C3"]);
    assert_eq!(ds.last(), Some(&show(&key("C3"), Shown::Flapping)));
}

#[test]
fn appearances_further_apart_than_the_window_never_flap() {
    let mut p = plan();
    let t0 = Instant::now();
    let a = board(usb(CP210X, "A", "1.1"));
    for i in 0..20 {
        let ds = p.appeared(t0 + s(10 * i), "ttyUSB0", &a);
        assert_eq!(serves(&ds).len(), 1, "appearance {i}");
        p.removed(t0 + s(10 * i + 1), "ttyUSB0");
    }
}

#[test]
fn a_reload_stops_starts_and_restarts_exactly_the_diff() {
    let (a, b, c) = (tty("ttyS0"), tty("ttyS1"), tty("ttyS2"));
    let mut p = plan();
    let t0 = Instant::now();
    let ds = p.fixed(t0, vec![a.clone(), b.clone(), c.clone()], &nobody);
    assert_eq!(serves(&ds).len(), 3);
    p.appeared(t0, "ttyUSB0", &board(usb(CP210X, "S", "1.1")));
    p.appeared(t0, "ttyUSB1", &board(usb(CP210X, "T", "1.2")));
    let b2 = DeviceSpec { baud: 9600, ..b };
    let d = tty("ttyS3");
    let rule = DeviceSpec {
        serial: Some("T".into()),
        baud: 9600,
        ..tty("rule")
    };
    let ids = |p: &Path| match p.to_str() {
        Some("/dev/ttyUSB1") => usb(CP210X, "T", "1.2"),
        _ => Identity::default(),
    };
    let ds = p.reloaded(t0 + s(1), vec![a, b2.clone(), d.clone()], vec![rule], &ids);
    assert_eq!(stops(&ds), ["name:ttyS1", "name:ttyS2", "serial:T"]);
    let started: Vec<(String, u32)> = (serves(&ds).iter())
        .map(|s| (s.key.to_string(), s.spec.baud))
        .collect();
    assert_eq!(
        started,
        [
            ("name:ttyS1".into(), 9600),
            ("name:ttyS3".into(), 115200),
            ("serial:T".into(), 9600)
        ]
    );
    // Every stop before anything else, so the bridges end together.
    let last_stop = ds.iter().rposition(|d| matches!(d, Decision::Stop { .. }));
    let first_other = ds
        .iter()
        .position(|d| !matches!(d, Decision::Stop { .. } | Decision::Log(..)));
    assert!(last_stop < first_other, "{ds:?}");
    // Reloading the same configuration again changes nothing.
    let same = p.reloaded(t0 + s(2), vec![tty("ttyS0"), b2, d], p.rules.clone(), &ids);
    assert_eq!(same, []);
}

#[test]
fn stop_all_signals_every_bridge_before_marking_any_and_start_undoes_it() {
    let mut p = plan();
    let t0 = Instant::now();
    p.fixed(t0, vec![tty("ttyS0"), tty("ttyS1"), tty("ttyS2")], &nobody);
    let (msg, ds) = p.stop_all();
    assert_eq!(
        msg,
        "name:ttyS0: stopped\nname:ttyS1: stopped\nname:ttyS2: stopped"
    );
    let kinds: Vec<&str> = (ds.iter())
        .map(|d| match d {
            Decision::Stop { .. } => "stop",
            Decision::Show { shown, .. } => {
                assert_eq!(*shown, Shown::Stopped);
                "show"
            }
            _ => "log",
        })
        .collect();
    assert_eq!(
        kinds,
        ["stop", "stop", "stop", "show", "log", "show", "log", "show", "log"]
    );
    let k = DeviceKey::name("ttyS1");
    assert_eq!(p.stop(&k).0, "name:ttyS1: already stopped");
    let t1 = t0 + s(5);
    let Start::Serve(serve) = p.start(t1, &k) else {
        panic!("stopped devices start")
    };
    assert_eq!((serve.key.clone(), serve.open_after), (k.clone(), t1));
    assert_eq!(p.start(t1, &k), Start::AlreadyRunning);
    assert_eq!(p.start(t1, &DeviceKey::name("nope")), Start::NotPresent);
    // Its port was taken meanwhile: it stays stopped, and can be started again.
    p.serve_failed(&k);
    assert!(p.stopped().contains(&k));
    assert!(matches!(p.start(t1, &k), Start::Serve(_)));
}

#[test]
fn disabled_devices_are_shown_not_served_and_a_stopped_node_waits() {
    let off = DeviceSpec {
        enabled: false,
        ..tty("ttyS0")
    };
    let mut p = plan();
    let t0 = Instant::now();
    let ds = acts(p.fixed(t0, vec![off.clone()], &nobody));
    assert!(matches!(&ds[..], [Decision::Disable { key, .. }] if key == &DeviceKey::name("ttyS0")));
    // A hotplugged device stopped on request is not served when its node comes back.
    let a = board(usb(CP210X, "A", "1.1"));
    p.appeared(t0, "ttyUSB0", &a);
    p.stop(&key("A"));
    p.removed(t0 + s(1), "ttyUSB0");
    assert_eq!(acts(p.appeared(t0 + s(2), "ttyUSB3", &a)), []);
    let Start::Serve(serve) = p.start(t0 + s(3), &key("A")) else {
        panic!("stopped devices start")
    };
    assert_eq!(serve.spec.path, DevicePath::Tty("/dev/ttyUSB3".into()));
}

#[test]
fn two_fixed_devices_of_one_name_get_two_keys_and_sims_count() {
    let sim = DeviceSpec::demo();
    let mut p = plan();
    let ds = p.fixed(
        Instant::now(),
        vec![tty("ttyS0"), tty("ttyS0"), sim.clone(), sim],
        &nobody,
    );
    let keys: Vec<String> = serves(&ds).iter().map(|s| s.key.to_string()).collect();
    assert_eq!(
        keys,
        ["name:ttyS0", "name:ttyS0#2", "name:sim", "name:sim-2"]
    );
    assert_eq!(serves(&ds)[2].port, PortChoice::Free);
}
