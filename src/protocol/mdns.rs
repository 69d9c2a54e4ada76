//! Multicast DNS and DNS-SD (RFC 6762, RFC 6763), the part a responder for a few services and
//! a one-shot browser need, sans-IO: packets in, packets out.
//!
//! The responder answers PTR questions for its service types (and for the service-type
//! enumeration), SRV/TXT/ANY questions for its instances and A/ANY questions for its host
//! name, with the related records as additional answers, as avahi and python-zeroconf do. A
//! query from a port other than 5353 (a one-shot querier, RFC 6762 §6.7) is answered by
//! unicast, with its ID and question. Announcements and goodbyes are the same records sent
//! unsolicited (goodbyes with TTL 0). Names are kept as labels, so an instance label may hold
//! dots and spaces; compression is read, never written.
//!
//! Parsing is bounded: every read is checked against the packet, a name has at most 128
//! labels of at most 63 bytes and follows at most 16 compression pointers, and a packet's
//! counts cannot make it loop; a malformed packet is ignored, never an error.

use std::net::Ipv4Addr;

pub(crate) const PORT: u16 = 5353;
pub(crate) const GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 251);

const A: u16 = 1;
const PTR: u16 = 12;
const TXT: u16 = 16;
const SRV: u16 = 33;
const ANY: u16 = 255;
const IN: u16 = 1;
/// The top bit of a record's class: this record replaces what caches hold for its name.
const CACHE_FLUSH: u16 = 0x8000;
/// The top bit of a question's class: the asker prefers a unicast answer.
const UNICAST: u16 = 0x8000;
/// The flags of an authoritative response.
const RESPONSE: u16 = 0x8400;

/// How long caches keep records naming a host (RFC 6762 §10: 120 s) and other records
/// (75 minutes).
const HOST_TTL: u32 = 120;
const OTHER_TTL: u32 = 4500;

/// The service-type enumeration name (RFC 6763 §9).
const SERVICES: &str = "_services._dns-sd._udp";

/// Packets stay under a typical MTU; a responder with more records than fit sends several.
pub(crate) const MAX_PACKET: usize = 1400;

/// A DNS name as labels, without the root. Compared without regard to ASCII case.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Name(pub(crate) Vec<String>);

impl Name {
    /// `_iostream._tcp` + `local`: dot-separated labels (for names that have no dots inside
    /// a label).
    pub(crate) fn parse(dotted: &str) -> Name {
        Name(
            dotted
                .trim_end_matches('.')
                .split('.')
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect(),
        )
    }

    /// `label` + `rest`: an instance name (its label may hold dots).
    pub(crate) fn under(label: &str, rest: &Name) -> Name {
        let mut v = vec![label.to_owned()];
        v.extend(rest.0.iter().cloned());
        Name(v)
    }

    fn local(dotted: &str) -> Name {
        let mut n = Name::parse(dotted);
        n.0.push("local".into());
        n
    }

    pub(crate) fn same(&self, other: &Name) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(&other.0)
                .all(|(a, b)| a.eq_ignore_ascii_case(b))
    }

    /// The first label (an instance's own name).
    pub(crate) fn first(&self) -> &str {
        self.0.first().map_or("", String::as_str)
    }

    /// The name without its first label.
    pub(crate) fn parent(&self) -> Name {
        Name(self.0.iter().skip(1).cloned().collect())
    }

    fn write(&self, out: &mut Vec<u8>) {
        for l in &self.0 {
            let b = &l.as_bytes()[..l.len().min(63)];
            out.push(b.len() as u8);
            out.extend_from_slice(b);
        }
        out.push(0);
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for l in &self.0 {
            write!(f, "{l}.")?;
        }
        Ok(())
    }
}

/// One advertised service instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Service {
    /// The instance's own label, e.g. `esp32-devkit@pi`.
    pub(crate) instance: String,
    /// The service type, e.g. `_iostream._tcp`.
    pub(crate) kind: String,
    pub(crate) port: u16,
    /// TXT `key=value` pairs.
    pub(crate) txt: Vec<(String, String)>,
}

impl Service {
    fn kind_name(&self) -> Name {
        Name::local(&self.kind)
    }

    fn name(&self) -> Name {
        Name::under(&self.instance, &self.kind_name())
    }
}

/// A record's data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Data {
    A(Ipv4Addr),
    Ptr(Name),
    Srv { port: u16, target: Name },
    Txt(Vec<(String, String)>),
    Other,
}

/// One resource record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) name: Name,
    pub(crate) ttl: u32,
    pub(crate) data: Data,
}

/// One question.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Question {
    pub(crate) name: Name,
    pub(crate) kind: u16,
    pub(crate) unicast: bool,
}

/// A parsed packet.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Message {
    pub(crate) id: u16,
    pub(crate) response: bool,
    pub(crate) questions: Vec<Question>,
    /// Answers and additional records together.
    pub(crate) records: Vec<Record>,
}

/// Parse a packet; `None` if it is malformed.
pub(crate) fn parse(p: &[u8]) -> Option<Message> {
    let mut r = Reader { p, at: 0 };
    let id = r.u16()?;
    let flags = r.u16()?;
    let (qd, an, ns, ar) = (r.u16()?, r.u16()?, r.u16()?, r.u16()?);
    let mut m = Message {
        id,
        response: flags & 0x8000 != 0,
        ..Message::default()
    };
    for _ in 0..qd {
        let name = r.name()?;
        let kind = r.u16()?;
        let class = r.u16()?;
        m.questions.push(Question {
            name,
            kind,
            unicast: class & UNICAST != 0,
        });
    }
    for _ in 0..(u32::from(an) + u32::from(ns) + u32::from(ar)) {
        let name = r.name()?;
        let kind = r.u16()?;
        let _class = r.u16()?;
        let ttl = r.u32()?;
        let len = usize::from(r.u16()?);
        let end = r.at.checked_add(len).filter(|&e| e <= p.len())?;
        let data = match kind {
            A if len == 4 => Data::A(Ipv4Addr::new(
                p[r.at],
                p[r.at + 1],
                p[r.at + 2],
                p[r.at + 3],
            )),
            PTR => Data::Ptr(r.clone_at(r.at).name()?),
            SRV if len >= 7 => {
                let mut s = r.clone_at(r.at);
                let (_prio, _weight, port) = (s.u16()?, s.u16()?, s.u16()?);
                Data::Srv {
                    port,
                    target: s.name()?,
                }
            }
            TXT => Data::Txt(txt_pairs(&p[r.at..end])),
            _ => Data::Other,
        };
        r.at = end;
        m.records.push(Record { name, ttl, data });
    }
    Some(m)
}

fn txt_pairs(mut d: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    while let Some((&n, rest)) = d.split_first() {
        let n = usize::from(n).min(rest.len());
        let s = String::from_utf8_lossy(&rest[..n]);
        if !s.is_empty() {
            let (k, v) = s.split_once('=').unwrap_or((&s, ""));
            out.push((k.to_owned(), v.to_owned()));
        }
        d = &rest[n..];
    }
    out
}

struct Reader<'a> {
    p: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn clone_at(&self, at: usize) -> Reader<'_> {
        Reader { p: self.p, at }
    }

    fn u16(&mut self) -> Option<u16> {
        let b = self.p.get(self.at..self.at + 2)?;
        self.at += 2;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Option<u32> {
        let b = self.p.get(self.at..self.at + 4)?;
        self.at += 4;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A name, following compression pointers (at most 16) without moving past the first.
    fn name(&mut self) -> Option<Name> {
        let mut labels = Vec::new();
        let mut at = self.at;
        let mut jumps = 0;
        let mut resume = None;
        loop {
            let len = *self.p.get(at)?;
            match len {
                0 => {
                    at += 1;
                    break;
                }
                l if l & 0xC0 == 0xC0 => {
                    let lo = *self.p.get(at + 1)?;
                    resume.get_or_insert(at + 2);
                    jumps += 1;
                    if jumps > 16 {
                        return None;
                    }
                    at = (usize::from(l & 0x3F) << 8) | usize::from(lo);
                }
                l if l <= 63 => {
                    let b = self.p.get(at + 1..at + 1 + usize::from(l))?;
                    labels.push(String::from_utf8_lossy(b).into_owned());
                    if labels.len() > 128 {
                        return None;
                    }
                    at += 1 + usize::from(l);
                }
                _ => return None,
            }
        }
        self.at = resume.unwrap_or(at);
        Some(Name(labels))
    }
}

/// Builds one packet.
struct Writer {
    out: Vec<u8>,
    counts: [u16; 4],
}

impl Writer {
    fn new(id: u16, flags: u16) -> Writer {
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&flags.to_be_bytes());
        out.extend_from_slice(&[0; 8]);
        Writer {
            out,
            counts: [0; 4],
        }
    }

    fn question(&mut self, name: &Name, kind: u16) {
        name.write(&mut self.out);
        self.out.extend_from_slice(&kind.to_be_bytes());
        self.out.extend_from_slice(&IN.to_be_bytes());
        self.counts[0] += 1;
    }

    /// Add `rec` to section 1 (answers) or 3 (additional).
    fn record(&mut self, section: usize, rec: &Record, flush: bool) {
        rec.name.write(&mut self.out);
        let kind = match rec.data {
            Data::A(_) => A,
            Data::Ptr(_) => PTR,
            Data::Srv { .. } => SRV,
            Data::Txt(_) => TXT,
            Data::Other => return,
        };
        self.out.extend_from_slice(&kind.to_be_bytes());
        let class = if flush { IN | CACHE_FLUSH } else { IN };
        self.out.extend_from_slice(&class.to_be_bytes());
        self.out.extend_from_slice(&rec.ttl.to_be_bytes());
        let len_at = self.out.len();
        self.out.extend_from_slice(&[0, 0]);
        match &rec.data {
            Data::A(ip) => self.out.extend_from_slice(&ip.octets()),
            Data::Ptr(n) => n.write(&mut self.out),
            Data::Srv { port, target } => {
                self.out.extend_from_slice(&[0, 0, 0, 0]);
                self.out.extend_from_slice(&port.to_be_bytes());
                target.write(&mut self.out);
            }
            Data::Txt(pairs) => {
                if pairs.is_empty() {
                    self.out.push(0);
                }
                for (k, v) in pairs {
                    let s = format!("{k}={v}");
                    let b = &s.as_bytes()[..s.len().min(255)];
                    self.out.push(b.len() as u8);
                    self.out.extend_from_slice(b);
                }
            }
            Data::Other => {}
        }
        let len = (self.out.len() - len_at - 2) as u16;
        self.out[len_at..len_at + 2].copy_from_slice(&len.to_be_bytes());
        self.counts[section] += 1;
    }

    fn finish(mut self) -> Vec<u8> {
        for (i, c) in self.counts.iter().enumerate() {
            self.out[4 + 2 * i..6 + 2 * i].copy_from_slice(&c.to_be_bytes());
        }
        self.out
    }
}

/// A query for `kinds` (PTR questions), as a one-shot querier sends it: answered by unicast
/// to the port it comes from.
pub(crate) fn browse_query(id: u16, kinds: &[&str]) -> Vec<u8> {
    let mut w = Writer::new(id, 0);
    for k in kinds {
        w.question(&Name::local(k), PTR);
    }
    w.finish()
}

/// A probe for `host.local` (RFC 6762 §8.1): an ANY question, unicast preferred, that any
/// responder already using the name answers.
pub(crate) fn probe(host: &str) -> Vec<u8> {
    let mut w = Writer::new(0, 0);
    w.question(&Name::local(host), ANY);
    let mut p = w.finish();
    // The question's class, with the unicast-response bit.
    let at = p.len() - 2;
    p[at..].copy_from_slice(&(IN | UNICAST).to_be_bytes());
    p
}

/// Where a reply goes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Dest {
    /// To the group (the asker listens on 5353).
    Group,
    /// Back to the asker only (a one-shot querier).
    Asker,
}

/// What this host advertises: its host label and services.
#[derive(Clone, Debug, Default)]
pub(crate) struct Responder {
    /// The host label: `pi-1a2b` answers for `pi-1a2b.local`.
    pub(crate) host: String,
    pub(crate) services: Vec<Service>,
}

impl Responder {
    fn host_name(&self) -> Name {
        Name::local(&self.host)
    }

    /// The records of `s` (PTR, SRV, TXT) and of the host (A), with `ttl` (0: goodbye).
    fn service_records(&self, s: &Service, addrs: &[Ipv4Addr], ttl: Option<u32>) -> Vec<Record> {
        let name = s.name();
        let mut v = vec![
            Record {
                name: s.kind_name(),
                ttl: ttl.unwrap_or(OTHER_TTL),
                data: Data::Ptr(name.clone()),
            },
            Record {
                name: name.clone(),
                ttl: ttl.unwrap_or(HOST_TTL),
                data: Data::Srv {
                    port: s.port,
                    target: self.host_name(),
                },
            },
            Record {
                name,
                ttl: ttl.unwrap_or(OTHER_TTL),
                data: Data::Txt(s.txt.clone()),
            },
        ];
        if ttl != Some(0) {
            v.extend(self.host_records(addrs));
        }
        v
    }

    fn host_records(&self, addrs: &[Ipv4Addr]) -> Vec<Record> {
        addrs
            .iter()
            .map(|&ip| Record {
                name: self.host_name(),
                ttl: HOST_TTL,
                data: Data::A(ip),
            })
            .collect()
    }

    /// The answer to `query` (received from port `from_port` on an interface whose addresses
    /// are `addrs`), if it asks about anything of ours.
    pub(crate) fn answer(
        &self,
        query: &Message,
        from_port: u16,
        addrs: &[Ipv4Addr],
    ) -> Option<(Vec<u8>, Dest)> {
        if query.response {
            return None;
        }
        let mut answers: Vec<Record> = Vec::new();
        let mut extra: Vec<Record> = Vec::new();
        for q in &query.questions {
            let any = q.kind == ANY;
            if (q.kind == PTR || any) && q.name.same(&Name::local(SERVICES)) {
                let mut kinds: Vec<Name> = Vec::new();
                for s in &self.services {
                    if !kinds.iter().any(|k| k.same(&s.kind_name())) {
                        kinds.push(s.kind_name());
                    }
                }
                for k in kinds {
                    answers.push(Record {
                        name: Name::local(SERVICES),
                        ttl: OTHER_TTL,
                        data: Data::Ptr(k),
                    });
                }
            }
            for s in &self.services {
                if (q.kind == PTR || any) && q.name.same(&s.kind_name()) {
                    let mut recs = self.service_records(s, addrs, None).into_iter();
                    answers.extend(recs.next());
                    extra.extend(recs);
                } else if q.name.same(&s.name()) && matches!(q.kind, SRV | TXT | ANY) {
                    for r in self.service_records(s, addrs, None).into_iter().skip(1) {
                        let wanted = any
                            || matches!(
                                (&r.data, q.kind),
                                (Data::Srv { .. }, SRV) | (Data::Txt(_), TXT)
                            );
                        if wanted {
                            answers.push(r);
                        } else {
                            extra.push(r);
                        }
                    }
                }
            }
            if matches!(q.kind, A | ANY) && q.name.same(&self.host_name()) {
                answers.extend(self.host_records(addrs));
            }
        }
        if answers.is_empty() {
            return None;
        }
        extra.retain(|e| !answers.contains(e));
        let mut seen: Vec<Record> = Vec::new();
        extra.retain(|e| {
            let new = !seen.contains(e);
            seen.push(e.clone());
            new
        });
        let legacy = from_port != PORT;
        let mut w = Writer::new(if legacy { query.id } else { 0 }, RESPONSE);
        if legacy {
            for q in &query.questions {
                w.question(&q.name, q.kind);
            }
        }
        for a in &answers {
            // Shared records (PTR) never flush caches; unique ones do, except to a one-shot
            // querier (RFC 6762 §6.7).
            let flush = !legacy && !matches!(a.data, Data::Ptr(_));
            w.record(1, a, flush);
        }
        for e in &extra {
            if w.out.len() > MAX_PACKET {
                break;
            }
            let flush = !legacy && !matches!(e.data, Data::Ptr(_));
            w.record(3, e, flush);
        }
        let dest = if legacy { Dest::Asker } else { Dest::Group };
        Some((w.finish(), dest))
    }

    /// Unsolicited announcements of every service (one packet each), or goodbyes for
    /// `services` with TTL 0.
    pub(crate) fn announce(&self, addrs: &[Ipv4Addr]) -> Vec<Vec<u8>> {
        self.services
            .iter()
            .map(|s| self.packet(&self.service_records(s, addrs, None)))
            .collect()
    }

    /// Goodbye packets (TTL 0) for `services`.
    pub(crate) fn goodbye(&self, services: &[Service]) -> Vec<Vec<u8>> {
        services
            .iter()
            .map(|s| self.packet(&self.service_records(s, &[], Some(0))))
            .collect()
    }

    fn packet(&self, records: &[Record]) -> Vec<u8> {
        let mut w = Writer::new(0, RESPONSE);
        for r in records {
            w.record(1, r, !matches!(r.data, Data::Ptr(_)));
        }
        w.finish()
    }

    /// Another responder answers for our host name with an address that is not one of
    /// `ours`: the name is taken.
    pub(crate) fn host_taken(&self, response: &Message, ours: &[Ipv4Addr]) -> bool {
        response.response
            && response.records.iter().any(|r| {
                matches!(r.data, Data::A(ip) if r.ttl > 0 && !ours.contains(&ip))
                    && r.name.same(&self.host_name())
            })
    }

    /// Another responder claims one of our instance names (an SRV for it whose target is not
    /// our host): the instance it names.
    pub(crate) fn conflict(&self, response: &Message) -> Option<String> {
        if !response.response {
            return None;
        }
        response.records.iter().find_map(|r| match &r.data {
            Data::Srv { target, .. } if !target.same(&self.host_name()) && r.ttl > 0 => self
                .services
                .iter()
                .find(|s| r.name.same(&s.name()))
                .map(|s| s.instance.clone()),
            _ => None,
        })
    }
}

/// One service instance a browser found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Found {
    pub(crate) instance: String,
    pub(crate) kind: String,
    pub(crate) target: String,
    pub(crate) port: u16,
    pub(crate) txt: Vec<(String, String)>,
    pub(crate) addrs: Vec<Ipv4Addr>,
}

/// Collects the answers to [`browse_query`].
#[derive(Debug, Default)]
pub(crate) struct Browser {
    kinds: Vec<Name>,
    instances: Vec<Name>,
    records: Vec<Record>,
}

/// At most this many records are kept from all answers together.
const BROWSE_RECORDS_MAX: usize = 4096;

impl Browser {
    pub(crate) fn new(kinds: &[&str]) -> Browser {
        Browser {
            kinds: kinds.iter().map(|k| Name::local(k)).collect(),
            ..Browser::default()
        }
    }

    pub(crate) fn feed(&mut self, packet: &[u8]) {
        let Some(m) = parse(packet) else { return };
        if !m.response {
            return;
        }
        for r in m.records {
            if self.records.len() >= BROWSE_RECORDS_MAX {
                return;
            }
            if let Data::Ptr(target) = &r.data {
                if r.ttl > 0
                    && self.kinds.iter().any(|k| k.same(&r.name))
                    && !self.instances.iter().any(|i| i.same(target))
                {
                    self.instances.push(target.clone());
                }
            }
            if !self.records.contains(&r) {
                self.records.push(r);
            }
        }
    }

    /// Every instance whose SRV came, with its TXT and addresses.
    pub(crate) fn found(&self) -> Vec<Found> {
        let mut out = Vec::new();
        for inst in &self.instances {
            let srv = self.records.iter().find_map(|r| match &r.data {
                Data::Srv { port, target } if r.name.same(inst) => Some((*port, target.clone())),
                _ => None,
            });
            let Some((port, target)) = srv else { continue };
            let txt = self
                .records
                .iter()
                .find_map(|r| match &r.data {
                    Data::Txt(t) if r.name.same(inst) => Some(t.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            let addrs = self
                .records
                .iter()
                .filter_map(|r| match r.data {
                    Data::A(ip) if r.name.same(&target) => Some(ip),
                    _ => None,
                })
                .collect();
            let kind = inst.parent();
            out.push(Found {
                instance: inst.first().to_owned(),
                kind: kind.0[..kind.0.len().saturating_sub(1)].join("."),
                target: target.0.join("."),
                port,
                txt,
                addrs,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let (reply, dest) = r.answer(&q, 40000, &ADDR).unwrap();
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
            r.answer(&q, PORT, &ADDR).map(|(p, d)| {
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
        let (answer, _) = r.answer(&q, PORT, &ADDR).unwrap();
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
                    let _ = r.answer(&m, PORT, &ADDR);
                    let _ = r.conflict(&m);
                }
                let mut b = Browser::new(&["_iostream._tcp"]);
                b.feed(&p);
                let _ = b.found();
            }
        }
    }
}
