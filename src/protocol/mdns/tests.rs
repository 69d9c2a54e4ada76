//! The records, the wire and the browser on made-up packets; the machine driven with made-up
//! times and interfaces, no sockets and no clock but one `Instant` to count from.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use super::browse::{browse_query, Browser};
use super::machine::{
    IfAddr, Iface, Machine, Note, To, Transmit, ANNOUNCE_AGAIN, ANSWERS_PER_SECOND,
    PACKETS_PER_SECOND, PROBES, PROBE_EVERY,
};
use super::responder::{probe, Dest, Responder, Service};
use super::wire::{
    parse, Data, Message, Name, Writer, A, ANY, MAX_PACKET, MAX_QUESTIONS, MAX_REPLY, PORT, PTR,
    SRV, UNICAST,
};

fn responder() -> Responder {
    Responder {
        host: "pi-1a2b".into(),
        services: vec![
            Service {
                instance: "esp32.devkit@pi".into(),
                kind: "_iostream._tcp".into(),
                port: 4001,
                txt: vec![
                    ("provider".into(), "serialhub".into()),
                    ("serial".into(), "0123".into()),
                ],
            },
            Service {
                instance: "serialhub@pi".into(),
                kind: "_serialhub._tcp".into(),
                port: 8080,
                txt: vec![("path".into(), "/api".into())],
            },
        ],
    }
}

const ADDR: [Ipv4Addr; 1] = [Ipv4Addr::new(10, 0, 0, 2)];

#[test]
fn a_browse_finds_every_instance_with_its_txt_and_address() {
    let r = responder();
    let q = parse(&browse_query(7, &["_iostream._tcp", "_serialhub._tcp"])).unwrap();
    assert_eq!(q.questions.len(), 2);
    // From an ephemeral port: a unicast answer with the query's id and question.
    let (reply, dest) = r.answer(&q, 0, 40000, &ADDR).unwrap();
    assert_eq!(dest, Dest::Asker);
    let m = parse(&reply).unwrap();
    assert!(m.response && m.id == 7 && m.questions.len() == 2);
    let mut b = Browser::new(&["_iostream._tcp", "_serialhub._tcp"]);
    b.feed(&reply);
    let found = b.found();
    assert_eq!(found.len(), 2, "{found:?}");
    let dev = &found[0];
    assert_eq!(
        dev.instance, "esp32.devkit@pi",
        "a label with a dot stays one label"
    );
    assert_eq!((dev.kind.as_str(), dev.port), ("_iostream._tcp", 4001));
    assert_eq!(dev.target, "pi-1a2b.local");
    assert_eq!(dev.addrs, ADDR);
    assert!(dev.txt.contains(&("serial".into(), "0123".into())));
    assert_eq!(found[1].port, 8080);
}

#[test]
fn questions_about_instances_hosts_and_types() {
    let r = responder();
    let ask = |name: Name, kind: u16| {
        let mut w = Writer::new(0, 0);
        w.question(&name, kind);
        let q = parse(&w.finish()).unwrap();
        r.answer(&q, 0, PORT, &ADDR).map(|(p, d)| {
            assert_eq!(d, Dest::Group);
            parse(&p).unwrap()
        })
    };
    let inst = Name::under("esp32.devkit@pi", &Name::parse("_iostream._tcp.local"));
    let m = ask(inst.clone(), SRV).unwrap();
    assert!(matches!(m.records[0].data, Data::Srv { port: 4001, .. }));
    let m = ask(Name::parse("PI-1A2B.local"), A).unwrap();
    assert_eq!(m.records[0].data, Data::A(ADDR[0]), "case does not matter");
    let m = ask(Name::parse("_services._dns-sd._udp.local"), PTR).unwrap();
    assert_eq!(m.records.len(), 2);
    assert!(ask(Name::parse("other.local"), A).is_none());
    assert!(ask(Name::parse("_http._tcp.local"), PTR).is_none());
}

#[test]
fn goodbyes_and_conflicts() {
    let r = responder();
    let bye = parse(&r.goodbye(&r.services[..1])[0]).unwrap();
    assert!(bye.records.iter().all(|x| x.ttl == 0));
    let mut b = Browser::new(&["_iostream._tcp"]);
    b.feed(&r.goodbye(&r.services[..1])[0]);
    assert!(b.found().is_empty(), "a goodbye is not a find");
    // Another host answers for our instance name.
    let mut other = responder();
    other.host = "pi-9999".into();
    let claim = parse(&other.announce(&ADDR)[0]).unwrap();
    assert_eq!(r.conflict(&claim), Some("esp32.devkit@pi".into()));
    let ours = parse(&r.announce(&ADDR)[0]).unwrap();
    assert_eq!(r.conflict(&ours), None);
    // A probe for our host name is answered; another host's answer means it is taken.
    let q = parse(&probe("pi-1a2b")).unwrap();
    assert!(q.questions[0].unicast);
    let (answer, _) = r.answer(&q, 0, PORT, &ADDR).unwrap();
    let answer = parse(&answer).unwrap();
    assert!(!r.host_taken(&answer, &ADDR), "our own answer");
    assert!(r.host_taken(&answer, &[Ipv4Addr::new(10, 0, 0, 3)]));
}

#[test]
fn malformed_packets_are_ignored() {
    // A pointer loop, a truncated record, a label past the end.
    assert!(parse(&[0, 0, 0x84, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xC0, 12, 0, 1, 0, 1]).is_none());
    assert!(parse(&[0, 0, 0x84, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1]).is_none());
    assert!(parse(&[0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 9, b'a']).is_none());
    let mut b = Browser::new(&["_iostream._tcp"]);
    b.feed(&[1, 2, 3]);
    assert!(b.found().is_empty());
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_bytes_parse_or_not_without_panicking(p in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse(&p);
            let r = responder();
            if let Some(m) = parse(&p) {
                let _ = r.answer(&m, p.len(), PORT, &ADDR);
                let _ = r.conflict(&m);
            }
            let mut b = Browser::new(&["_iostream._tcp"]);
            b.feed(&p);
            let _ = b.found();
        }
    }
}

// The machine.

const ETH0: u32 = 2;
const WLAN0: u32 = 3;
const ETH0_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const WLAN0_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 7);
/// Another host on eth0's network, asking from the mDNS port (answered to the group).
const PEER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 50), PORT);
/// Another host on wlan0's network.
const WLAN_PEER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 50), PORT);

fn net(ip: Ipv4Addr, prefix: u8) -> IfAddr {
    IfAddr { ip, prefix }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn eth0() -> Iface {
    Iface {
        index: ETH0,
        addrs: vec![net(ETH0_ADDR, 24)],
    }
}

fn wlan0() -> Iface {
    Iface {
        index: WLAN0,
        addrs: vec![net(WLAN0_ADDR, 24)],
    }
}

fn board(instance: &str) -> Service {
    Service {
        instance: instance.into(),
        kind: "_iostream._tcp".into(),
        port: 4001,
        txt: vec![("key".into(), "name:sim".into())],
    }
}

fn sent(m: &mut Machine) -> Vec<Transmit> {
    std::iter::from_fn(|| m.poll_transmit()).collect()
}

fn notes(m: &mut Machine) -> Vec<Note> {
    std::iter::from_fn(|| m.poll_note()).collect()
}

fn parsed(t: &Transmit) -> Message {
    parse(&t.bytes).expect("the machine sends well-formed packets")
}

/// A probe for `host.local`: a query with one ANY question for it, unicast preferred.
fn is_probe(t: &Transmit, host: &str) -> bool {
    let m = parsed(t);
    !m.response
        && t.to == To::Group
        && m.questions.len() == 1
        && m.questions[0].kind == ANY
        && m.questions[0].unicast
        && m.questions[0]
            .name
            .same(&Name::parse(&format!("{host}.local")))
}

/// The SRV records in `t`: (instance, TTL).
fn srvs(t: &Transmit) -> Vec<(String, u32)> {
    (parsed(t).records.iter())
        .filter(|r| matches!(r.data, Data::Srv { .. }))
        .map(|r| (r.name.first().to_owned(), r.ttl))
        .collect()
}

/// The addresses `t` gives for `host.local`.
fn a_records(t: &Transmit, host: &str) -> Vec<Ipv4Addr> {
    (parsed(t).records.iter())
        .filter(|r| r.name.same(&Name::parse(&format!("{host}.local"))))
        .filter_map(|r| match r.data {
            Data::A(ip) => Some(ip),
            _ => None,
        })
        .collect()
}

/// Another host's answer for `host.local`, at 10.0.0.9.
fn claim(host: &str) -> Vec<u8> {
    let other = Responder {
        host: host.into(),
        services: Vec::new(),
    };
    let q = parse(&probe(host)).unwrap();
    let (p, _) = other
        .answer(&q, 0, PORT, &[Ipv4Addr::new(10, 0, 0, 9)])
        .unwrap();
    p
}

fn question(id: u16, name: &str, kind: u16) -> Vec<u8> {
    let mut w = Writer::new(id, 0);
    w.question(&Name::parse(name), kind);
    w.finish()
}

/// Run the timers until there are none: each wakeup's time since `t0` and what it sent.
fn run(m: &mut Machine, t0: Instant) -> Vec<(Duration, Vec<Transmit>)> {
    let mut out = Vec::new();
    while let Some(t) = m.poll_timeout() {
        assert!(out.len() < 20, "the timers never stop: {out:?}");
        // Not a moment early: nothing is due yet.
        m.handle_timeout(t - ms(1));
        assert!(sent(m).is_empty(), "sent before its time");
        m.handle_timeout(t);
        out.push((t - t0, sent(m)));
    }
    out
}

/// Probed, announced, quiet: on eth0 and wlan0, with one board (key `a`); at `t0` + 2 s.
fn steady(t0: Instant) -> Machine {
    let mut m = Machine::new("pi-1a2b".into(), t0);
    m.iface_up(eth0());
    m.iface_up(wlan0());
    m.serve("a", board("sim@pi"), t0);
    run(&mut m, t0);
    notes(&mut m);
    m
}

#[test]
fn three_probes_250_ms_apart_then_two_announcements_1_s_apart_then_no_timer() {
    let t0 = Instant::now();
    let mut m = Machine::new("pi-1a2b".into(), t0);
    assert!(m.iface_up(eth0()) && m.iface_up(wlan0()));
    assert!(sent(&mut m).is_empty(), "nothing to announce yet");
    // Served while probing: kept for the announcement.
    m.serve("a", board("sim@pi"), t0);
    assert!(
        sent(&mut m).is_empty(),
        "nothing is announced before the name is probed"
    );
    let wakeups = run(&mut m, t0);
    let times: Vec<Duration> = wakeups.iter().map(|(t, _)| *t).collect();
    assert_eq!(times, [ms(0), ms(250), ms(500), ms(750), ms(1750)]);
    assert_eq!(PROBES, 3);
    assert_eq!((PROBE_EVERY, ANNOUNCE_AGAIN), (ms(250), ms(1000)));
    for (_, probes) in &wakeups[..3] {
        // One probe on each interface, out of that interface.
        assert_eq!(
            probes.iter().map(|t| t.iface).collect::<Vec<_>>(),
            [ETH0, WLAN0]
        );
        assert!(probes.iter().all(|t| is_probe(t, "pi-1a2b")), "{probes:?}");
    }
    for (_, announced) in &wakeups[3..] {
        assert_eq!(announced.len(), 2, "the board, on each interface");
        for (t, addr) in announced.iter().zip([ETH0_ADDR, WLAN0_ADDR]) {
            assert!(parsed(t).response && t.to == To::Group);
            assert_eq!(srvs(t), [("sim@pi".to_owned(), 120)]);
            assert_eq!(
                a_records(t, "pi-1a2b"),
                [addr],
                "each interface's own address"
            );
        }
    }
    let n = notes(&mut m);
    assert_eq!(
        n,
        [
            Note::Serving {
                instance: "sim@pi".into(),
                kind: "_iostream._tcp".into()
            },
            Note::Named("pi-1a2b".into())
        ]
    );
    // Idle: no timer, and a late wakeup sends nothing.
    assert_eq!(m.poll_timeout(), None);
    m.handle_timeout(t0 + Duration::from_secs(3600));
    assert!(sent(&mut m).is_empty());
}

#[test]
fn idle_means_no_wakeups_and_a_new_board_is_announced_at_once_and_a_second_later() {
    let t0 = Instant::now();
    let mut m = steady(t0);
    assert_eq!(m.poll_timeout(), None);
    // Questions, answers and a peer's unrelated response start no timer.
    m.handle(t0 + ms(3000), ETH0, PEER, &question(0, "pi-1a2b.local", A));
    let other = Responder {
        host: "other".into(),
        services: vec![board("other@x")],
    };
    m.handle(
        t0 + ms(3001),
        ETH0,
        PEER,
        &other.announce(&[PEER.ip().to_owned()])[0],
    );
    assert_eq!(sent(&mut m).len(), 1, "the answer");
    assert_eq!(m.poll_timeout(), None);
    // A board added now: announced by itself at once, then everything a second later.
    let t = t0 + ms(5000);
    m.serve("b", board("other-board@pi"), t);
    let now: Vec<_> = sent(&mut m).iter().flat_map(srvs).collect();
    assert_eq!(now, vec![("other-board@pi".to_owned(), 120); 2]);
    assert_eq!(m.poll_timeout(), Some(t + ANNOUNCE_AGAIN));
    let wakeups = run(&mut m, t);
    assert_eq!(wakeups.len(), 1);
    assert_eq!(wakeups[0].1.len(), 4, "both boards on both interfaces");
    assert_eq!(m.poll_timeout(), None);
}

#[test]
fn a_conflicting_answer_while_probing_renames_the_host_and_probes_again() {
    let t0 = Instant::now();
    let mut m = Machine::new("pi-1a2b".into(), t0);
    m.iface_up(eth0());
    m.handle_timeout(t0);
    assert!(is_probe(&sent(&mut m)[0], "pi-1a2b"));
    // Another Pi, cloned from the same image, answers for pi-1a2b.local.
    let taken = claim("pi-1a2b");
    let t = t0 + ms(100);
    m.handle(t, ETH0, PEER, &taken);
    // The suffix is this host's own address's last byte (10.0.0.2): pi-1a2b-2, probed at once.
    assert_eq!(m.host(), "pi-1a2b-2");
    let new = notes(&mut m);
    assert_eq!(
        new,
        [Note::HostRenamed {
            old: "pi-1a2b".into(),
            new: "pi-1a2b-2".into()
        }]
    );
    assert!(is_probe(&sent(&mut m)[0], "pi-1a2b-2"));
    assert_eq!(m.poll_timeout(), Some(t + PROBE_EVERY));
    // The probing starts over: two more probes, then the new name is announced.
    let wakeups = run(&mut m, t);
    let times: Vec<Duration> = wakeups.iter().map(|(t, _)| *t).collect();
    assert_eq!(times, [ms(250), ms(500), ms(750), ms(1750)]);
    assert!(wakeups[..2]
        .iter()
        .all(|(_, p)| is_probe(&p[0], "pi-1a2b-2")));
    assert_eq!(notes(&mut m), [Note::Named("pi-1a2b-2".into())]);
    // A peer claiming the new name too changes nothing more (the name and the log stay
    // bounded), nor does our own answer coming back.
    let spoof = claim("pi-1a2b-2");
    for k in 0..20 {
        m.handle(t0 + ms(3000 + k), ETH0, PEER, &spoof);
    }
    assert_eq!(m.host(), "pi-1a2b-2");
    assert_eq!(notes(&mut m), vec![Note::HostKept("pi-1a2b-2".into()); 20]);
    assert!(!m.probing() && m.poll_timeout().is_none() && sent(&mut m).is_empty());
    m.handle(
        t0 + ms(4000),
        ETH0,
        PEER,
        &question(0, "pi-1a2b-2.local", A),
    );
    let ours = sent(&mut m);
    m.handle(t0 + ms(4001), ETH0, PEER, &ours[0].bytes);
    assert!(notes(&mut m).is_empty(), "our own answer is no conflict");
}

#[test]
fn another_host_advertising_our_instance_renames_ours_once() {
    let t0 = Instant::now();
    let mut m = steady(t0);
    let other = Responder {
        host: "pi-9999".into(),
        services: vec![board("sim@pi")],
    };
    let claim = &other.announce(&[Ipv4Addr::new(10, 0, 0, 9)])[0];
    m.handle(t0 + ms(3000), ETH0, PEER, claim);
    let renamed = "sim@pi (pi-1a2b)";
    assert_eq!(
        notes(&mut m),
        [Note::InstanceRenamed {
            old: "sim@pi".into(),
            new: renamed.into()
        }]
    );
    assert_eq!(m.services()[0].instance, renamed);
    let again = sent(&mut m);
    assert_eq!(
        again.iter().map(|t| t.iface).collect::<Vec<_>>(),
        [ETH0, WLAN0]
    );
    assert!(again.iter().all(|t| srvs(t) == [(renamed.to_owned(), 120)]));
    // Claimed again (a peer that claims every name): it stays.
    let other = Responder {
        host: "pi-9999".into(),
        services: vec![board(renamed)],
    };
    m.handle(
        t0 + ms(3100),
        ETH0,
        PEER,
        &other.announce(&[PEER.ip().to_owned()])[0],
    );
    assert!(notes(&mut m).is_empty() && sent(&mut m).is_empty());
    assert_eq!(m.services()[0].instance, renamed);
    // The key follows the new name: its withdrawal says goodbye to it.
    m.withdraw("a");
    let bye = sent(&mut m);
    assert!(
        bye.iter().all(|t| srvs(t) == [(renamed.to_owned(), 0)]),
        "{bye:?}"
    );
}

#[test]
fn a_question_is_answered_on_its_interface_with_that_interfaces_address() {
    let t0 = Instant::now();
    let mut m = steady(t0);
    let t = t0 + ms(3000);
    for (iface, addr, peer) in [(ETH0, ETH0_ADDR, PEER), (WLAN0, WLAN0_ADDR, WLAN_PEER)] {
        m.handle(t, iface, peer, &question(0, "pi-1a2b.local", A));
        let answer = sent(&mut m);
        assert_eq!(answer.len(), 1);
        assert_eq!((answer[0].iface, answer[0].to), (iface, To::Group));
        assert_eq!(
            a_records(&answer[0], "pi-1a2b"),
            [addr],
            "never another network's"
        );
    }
    // A one-shot querier (not from 5353): by unicast, back to it, with its id.
    let asker = SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 20), 40000);
    m.handle(t, WLAN0, asker, &browse_query(7, &["_iostream._tcp"]));
    let answer = sent(&mut m);
    assert_eq!((answer[0].iface, answer[0].to), (WLAN0, To::Asker(asker)));
    assert_eq!(parsed(&answer[0]).id, 7);
    assert_eq!(srvs(&answer[0]), [("sim@pi".to_owned(), 120)]);
    assert_eq!(a_records(&answer[0], "pi-1a2b"), [WLAN0_ADDR]);
    // Not ours, not an interface in use, not well-formed: no answer.
    m.handle(t, ETH0, PEER, &question(0, "other.local", A));
    m.handle(t, 99, PEER, &question(0, "pi-1a2b.local", A));
    m.handle(t, ETH0, PEER, &[0, 0, 0, 0, 0, 1]);
    assert!(sent(&mut m).is_empty());
    // Gone: its questions are not answered any more.
    m.iface_down(WLAN0);
    m.handle(t, WLAN0, WLAN_PEER, &question(0, "pi-1a2b.local", A));
    assert!(sent(&mut m).is_empty());
}

#[test]
fn nothing_is_answered_while_the_name_is_probed() {
    let t0 = Instant::now();
    let mut m = Machine::new("pi-1a2b".into(), t0);
    m.iface_up(eth0());
    m.serve("a", board("sim@pi"), t0);
    m.handle_timeout(t0);
    sent(&mut m);
    m.handle(
        t0 + ms(10),
        ETH0,
        PEER,
        &question(0, "_iostream._tcp.local", PTR),
    );
    m.handle(t0 + ms(10), ETH0, PEER, &question(0, "pi-1a2b.local", A));
    assert!(sent(&mut m).is_empty());
    run(&mut m, t0);
    m.handle(
        t0 + ms(3000),
        ETH0,
        PEER,
        &question(0, "_iostream._tcp.local", PTR),
    );
    assert_eq!(srvs(&sent(&mut m)[0]), [("sim@pi".to_owned(), 120)]);
}

#[test]
fn the_budget_caps_answers_per_second_and_refills() {
    let t0 = Instant::now();
    let mut m = steady(t0);
    let ask = |m: &mut Machine, at: u64, n: u32| {
        for _ in 0..n {
            m.handle(t0 + ms(at), ETH0, PEER, &question(0, "pi-1a2b.local", A));
        }
        sent(m).len() as u32
    };
    assert_eq!(ANSWERS_PER_SECOND, 50);
    // A flood: 50 answers in the second that starts with the first, on all interfaces
    // together.
    assert_eq!(ask(&mut m, 3000, 40), 40);
    m.handle(
        t0 + ms(3100),
        WLAN0,
        WLAN_PEER,
        &question(0, "pi-1a2b.local", A),
    );
    assert_eq!(sent(&mut m).len(), 1);
    assert_eq!(ask(&mut m, 3500, 100), 9);
    assert_eq!(ask(&mut m, 3999, 10), 0);
    // The next second: the budget is full again.
    assert_eq!(ask(&mut m, 4000, 100), 50);
    assert_eq!(ask(&mut m, 6000, 1), 1);
}

#[test]
fn a_withdrawn_board_gets_a_goodbye_with_ttl_0_on_every_interface() {
    let t0 = Instant::now();
    let mut m = steady(t0);
    let t = t0 + ms(3000);
    m.serve("portal", board("serialhub@pi"), t);
    sent(&mut m);
    run(&mut m, t);
    notes(&mut m);
    m.withdraw("a");
    let bye = sent(&mut m);
    assert_eq!(
        bye.iter().map(|t| t.iface).collect::<Vec<_>>(),
        [ETH0, WLAN0]
    );
    for t in &bye {
        let p = parsed(t);
        assert!(p.response && t.to == To::Group && !p.records.is_empty());
        assert!(p.records.iter().all(|r| r.ttl == 0), "{p:?}");
        assert_eq!(srvs(t), [("sim@pi".to_owned(), 0)]);
    }
    assert_eq!(notes(&mut m), [Note::Goodbye("sim@pi".into())]);
    assert_eq!(m.poll_timeout(), None, "a goodbye starts no timer");
    // It is not answered for any more; the other board is; an unknown key is nothing.
    m.handle(
        t + ms(4000),
        ETH0,
        PEER,
        &question(0, "_iostream._tcp.local", PTR),
    );
    let answer = sent(&mut m);
    assert_eq!(srvs(&answer[0]), [("serialhub@pi".to_owned(), 120)]);
    m.withdraw("a");
    m.withdraw("nope");
    assert!(sent(&mut m).is_empty() && notes(&mut m).is_empty());
    // The daemon stops: goodbyes for the rest, then nothing.
    m.close();
    let bye = sent(&mut m);
    assert_eq!(bye.len(), 2);
    assert!(bye
        .iter()
        .all(|t| srvs(t) == [("serialhub@pi".to_owned(), 0)]));
    assert!(m.services().is_empty() && m.poll_timeout().is_none());
}

#[test]
fn an_interface_that_comes_up_or_changes_address_hears_every_board() {
    let t0 = Instant::now();
    let mut m = Machine::new("pi-1a2b".into(), t0);
    m.iface_up(eth0());
    m.serve("a", board("sim@pi"), t0);
    m.serve("b", board("other@pi"), t0);
    run(&mut m, t0);
    let usb0 = Iface {
        index: 4,
        addrs: vec![net(Ipv4Addr::new(172, 16, 0, 1), 16)],
    };
    assert!(m.iface_up(usb0.clone()));
    let hello = sent(&mut m);
    assert_eq!(hello.len(), 2, "both boards, there only");
    assert!(hello.iter().all(|t| t.iface == 4 && t.to == To::Group));
    assert!(hello
        .iter()
        .all(|t| a_records(t, "pi-1a2b") == [usb0.addrs[0].ip]));
    // Read again, unchanged: nothing.
    assert!(!m.iface_up(usb0) && sent(&mut m).is_empty());
    // A new address on eth0 (DHCP): eth0 hears everything again, with it.
    let moved = Iface {
        index: ETH0,
        addrs: vec![net(Ipv4Addr::new(10, 0, 0, 77), 24)],
    };
    assert!(m.iface_up(moved.clone()));
    let hello = sent(&mut m);
    assert_eq!(hello.len(), 2);
    assert!(hello
        .iter()
        .all(|t| t.iface == ETH0 && a_records(t, "pi-1a2b") == [moved.addrs[0].ip]));
    assert_eq!(m.ifaces().len(), 2);
    assert_eq!(m.poll_timeout(), None);
}

/// Hostile queries: amplification, floods, off-link sources.
#[path = "tests/hostile_test.rs"]
mod hostile;
