//! What a hostile or careless peer can make the responder do: a query of many repeated
//! questions (issue 26: 3.6 KB once got ~60 KB back per device), a flood, a source that is
//! not on the link. Every reply is bounded by the query's size or the mDNS maximum, every
//! record is in it once, and the work is charged before it is done.

use super::*;
use crate::protocol::mdns::Peer;

/// A query of `n` questions, cycling through `names` (PTR, class IN with the QU bit), from
/// a one-shot querier or a browser.
fn many_questions(id: u16, names: &[&str], n: usize) -> Vec<u8> {
    let mut w = Writer::new(id, 0);
    for i in 0..n {
        w.question(&Name::parse(names[i % names.len()]), PTR);
    }
    let mut p = w.finish();
    // Set the QU bit on every question's class: walk the questions.
    let mut at = 12;
    for _ in 0..n {
        while p[at] != 0 {
            at += 1 + usize::from(p[at]);
        }
        at += 3; // the root label, the type
        p[at] |= (UNICAST >> 8) as u8;
        at += 2;
    }
    p
}

/// A host with `boards` boards and a portal.
fn busy(boards: usize) -> Responder {
    let mut r = responder();
    r.services.truncate(1);
    for i in 0..boards {
        let mut s = r.services[0].clone();
        s.instance = format!("board-{i:02}@pi");
        s.port = 4000 + i as u16;
        r.services.push(s);
    }
    r.services.remove(0);
    r.services.push(responder().services[1].clone());
    r
}

const KINDS: [&str; 2] = ["_serialhub._tcp.local", "_iostream._tcp.local"];

/// Every record of `m` is there once.
fn each_once(m: &Message) {
    for (i, r) in m.records.iter().enumerate() {
        assert!(!m.records[..i].contains(r), "twice: {r:?}");
    }
}

#[test]
fn a_large_query_of_repeated_questions_gets_no_more_than_its_own_size_back() {
    // 136 questions, 3.6 KB: the query.
    let q = many_questions(9, &KINDS, 136);
    assert!((3500..3700).contains(&q.len()), "{}", q.len());
    let m = parse(&q).unwrap();
    assert_eq!(m.questions.len(), MAX_QUESTIONS, "the rest are not read");
    assert!(m.questions.iter().all(|x| x.unicast));
    for boards in [1, 4] {
        let r = busy(boards);
        // A one-shot querier: a unicast answer, at most the query's size, each question
        // echoed once, each record once.
        let (reply, dest) = r.answer(&m, q.len(), 40000, &ADDR).unwrap();
        assert_eq!(dest, Dest::Asker);
        assert!(reply.len() <= q.len(), "{} > {}", reply.len(), q.len());
        let back = parse(&reply).unwrap();
        assert_eq!((back.id, back.questions.len()), (9, 2), "{back:?}");
        each_once(&back);
        let ptrs = (back.records.iter())
            .filter(|x| matches!(x.data, Data::Ptr(_)))
            .count();
        assert_eq!(ptrs, boards + 1, "every instance, once");
        // From 5353: to the group, within the mDNS maximum, each record once.
        let (reply, dest) = r.answer(&m, q.len(), PORT, &ADDR).unwrap();
        assert_eq!(dest, Dest::Group);
        assert!(reply.len() <= MAX_REPLY);
        let back = parse(&reply).unwrap();
        assert!(back.questions.is_empty());
        each_once(&back);
    }
}

#[test]
fn a_small_query_for_many_boards_is_answered_in_full_and_no_reply_exceeds_the_maximum() {
    // A normal browse (`serialhub discover`) of a host with 40 boards: every PTR fits in the
    // unicast reply (the query is small: the mDNS maximum applies, not its size).
    let r = busy(40);
    let q = browse_query(3, &["_iostream._tcp", "_serialhub._tcp"]);
    let m = parse(&q).unwrap();
    let (reply, _) = r.answer(&m, q.len(), 40000, &ADDR).unwrap();
    assert!(reply.len() > MAX_PACKET && reply.len() <= MAX_REPLY);
    let back = parse(&reply).unwrap();
    let ptrs = (back.records.iter())
        .filter(|x| matches!(x.data, Data::Ptr(_)))
        .count();
    assert_eq!(ptrs, 41);
    assert_eq!(
        u16::from_be_bytes([reply[2], reply[3]]) & 0x0200,
        0,
        "not TC"
    );
    // 200 boards do not fit: the reply stops at the maximum and says it is truncated.
    let r = busy(200);
    let (reply, _) = r.answer(&m, q.len(), 40000, &ADDR).unwrap();
    assert!(reply.len() <= MAX_REPLY, "{}", reply.len());
    assert_ne!(u16::from_be_bytes([reply[2], reply[3]]) & 0x0200, 0, "TC");
    each_once(&parse(&reply).unwrap());
    let (reply, _) = r.answer(&m, q.len(), PORT, &ADDR).unwrap();
    assert!(reply.len() <= MAX_REPLY, "{}", reply.len());
}

#[test]
fn a_response_with_many_questions_is_refused_and_a_querys_records_are_not_read() {
    let mut p = many_questions(0, &KINDS, MAX_QUESTIONS + 1);
    p[2] = 0x84; // a response
    assert!(parse(&p).is_none());
    let p = many_questions(0, &KINDS, MAX_QUESTIONS);
    let mut r = p.clone();
    r[2] = 0x84;
    assert_eq!(parse(&r).unwrap().questions.len(), MAX_QUESTIONS);
    // A query's known answers (here: garbage after the questions) are not parsed.
    let mut q = p;
    q[7] = 1; // one answer record, never written
    assert_eq!(parse(&q).unwrap().questions.len(), MAX_QUESTIONS);
}

#[test]
fn sources_off_the_link_are_not_heard() {
    let t0 = Instant::now();
    let mut m = steady(t0);
    let t = t0 + ms(3000);
    let ask = question(5, "pi-1a2b.local", A);
    // Another network's address on eth0 (routed here, or forged), from 5353 or not.
    for from in [
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 1, 50), PORT),
        SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 9), 40000),
        SocketAddrV4::new(WLAN0_ADDR, PORT),
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, PORT),
    ] {
        m.handle(t, ETH0, from, &ask);
        assert!(sent(&mut m).is_empty(), "{from} answered");
    }
    // A claim for our name from off the link changes nothing either.
    m.handle(
        t,
        ETH0,
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 1, 9), PORT),
        &claim("pi-1a2b"),
    );
    assert!(notes(&mut m).is_empty() && !m.probing());
    // On the link, and IPv4 link-local: answered.
    let ll = SocketAddrV4::new(Ipv4Addr::new(169, 254, 3, 4), 40000);
    for from in [PEER, ll] {
        m.handle(t, ETH0, from, &ask);
        assert_eq!(sent(&mut m).len(), 1, "{from}");
    }
}

#[test]
fn the_packet_budget_is_charged_before_parsing_and_the_answer_budget_before_building() {
    let t0 = Instant::now();
    let mut m = steady(t0);
    let t = t0 + ms(3000);
    // Questions about others' names cost a packet each, not an answer.
    for _ in 0..ANSWERS_PER_SECOND * 2 {
        m.handle(t, ETH0, PEER, &question(0, "other.local", A));
    }
    m.handle(t, ETH0, PEER, &question(0, "pi-1a2b.local", A));
    assert_eq!(sent(&mut m).len(), 1, "the answer budget is untouched");
    // A flood of malformed packets spends this second's packet budget: nothing more is
    // read, not even a good question, until the next second.
    for _ in 0..PACKETS_PER_SECOND {
        m.handle(t, ETH0, PEER, &[0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 63]);
    }
    m.handle(t, ETH0, PEER, &question(0, "pi-1a2b.local", A));
    assert!(sent(&mut m).is_empty());
    // The loop stops reading until the budget refills.
    assert_eq!(m.deaf_until(t + ms(999)), Some(t + ms(1000)));
    assert_eq!(m.deaf_until(t + ms(1000)), None);
    m.handle(t + ms(1000), ETH0, PEER, &question(0, "pi-1a2b.local", A));
    assert_eq!(sent(&mut m).len(), 1);
    assert_eq!(m.deaf_until(t + ms(1000)), None);
    // A source outside `allow` costs a packet and is not answered.
    for _ in 0..PACKETS_PER_SECOND {
        m.handle_from(
            t + ms(1000),
            ETH0,
            PEER,
            Peer::Refused,
            &question(0, "pi-1a2b.local", A),
        );
    }
    assert!(sent(&mut m).is_empty());
    assert!(m.deaf_until(t + ms(1000)).is_some());
    // 3.6 KB queries from a one-shot querier, as fast as they come: at most the answer
    // budget is answered, each reply within the query's size.
    let big = many_questions(1, &KINDS, 136);
    let asker = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 51), 40000);
    let t = t + ms(2000);
    for _ in 0..1000 {
        m.handle(t, ETH0, asker, &big);
    }
    let replies = sent(&mut m);
    assert_eq!(replies.len(), ANSWERS_PER_SECOND as usize);
    assert!(replies.iter().all(|r| r.bytes.len() <= big.len()));
}
