//! The wire format: names, records, questions and packets; a bounded parser and a writer.
//!
//! Parsing is bounded: every read is checked against the packet, a name has at most 128
//! labels of at most 63 bytes and follows at most 16 compression pointers, and a packet's
//! counts cannot make it loop; a malformed packet is ignored, never an error. Names are kept
//! as labels, so an instance label may hold dots and spaces; compression is read, never
//! written.

use std::net::Ipv4Addr;

pub(crate) const PORT: u16 = 5353;
pub(crate) const GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 251);

/// Record types and the one class.
pub(super) const A: u16 = 1;
pub(super) const PTR: u16 = 12;
pub(super) const TXT: u16 = 16;
pub(super) const SRV: u16 = 33;
pub(super) const ANY: u16 = 255;
pub(super) const IN: u16 = 1;
/// The top bit of a record's class: this record replaces what caches hold for its name.
const CACHE_FLUSH: u16 = 0x8000;
/// The top bit of a question's class: the asker prefers a unicast answer.
pub(super) const UNICAST: u16 = 0x8000;
/// The flags of an authoritative response.
pub(super) const RESPONSE: u16 = 0x8400;

/// Packets stay under a typical MTU; a responder with more records than fit sends several.
pub(crate) const MAX_PACKET: usize = 1400;
/// No reply is longer than this (RFC 6762 §17: the most an mDNS packet may be).
pub(crate) const MAX_REPLY: usize = 9000;
/// At most this many questions of a query are read; the rest are ignored. A real browser
/// asks a few; thousands of repeated ones are only there to multiply the work and the reply.
pub(crate) const MAX_QUESTIONS: usize = 16;
/// The truncated bit of a reply's flags: not every answer fitted.
pub(super) const TRUNCATED: u16 = 0x0200;

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

    /// `dotted` + `local`.
    pub(super) fn local(dotted: &str) -> Name {
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

    pub(super) fn write(&self, out: &mut Vec<u8>) {
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
///
/// A query's first [`MAX_QUESTIONS`] questions are read and nothing after them (its known
/// answers are not used: every question is answered in full); a response with more
/// questions than that is refused, since responses carry none but a legacy echo.
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
    if m.response && usize::from(qd) > MAX_QUESTIONS {
        return None;
    }
    for _ in 0..usize::from(qd).min(MAX_QUESTIONS) {
        let name = r.name()?;
        let kind = r.u16()?;
        let class = r.u16()?;
        m.questions.push(Question {
            name,
            kind,
            unicast: class & UNICAST != 0,
        });
    }
    if !m.response {
        return Some(m);
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
pub(super) struct Writer {
    pub(super) out: Vec<u8>,
    counts: [u16; 4],
}

impl Writer {
    pub(super) fn new(id: u16, flags: u16) -> Writer {
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&flags.to_be_bytes());
        out.extend_from_slice(&[0; 8]);
        Writer {
            out,
            counts: [0; 4],
        }
    }

    pub(super) fn question(&mut self, name: &Name, kind: u16) {
        name.write(&mut self.out);
        self.out.extend_from_slice(&kind.to_be_bytes());
        self.out.extend_from_slice(&IN.to_be_bytes());
        self.counts[0] += 1;
    }

    /// Add `rec` to section 1 (answers) or 3 (additional).
    pub(super) fn record(&mut self, section: usize, rec: &Record, flush: bool) {
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

    /// Add `rec` as [`Writer::record`] does if the packet stays within `limit` bytes; false
    /// (and nothing added) if it would not.
    pub(super) fn record_within(
        &mut self,
        section: usize,
        rec: &Record,
        flush: bool,
        limit: usize,
    ) -> bool {
        let (len, count) = (self.out.len(), self.counts[section]);
        self.record(section, rec, flush);
        if self.out.len() > limit {
            self.out.truncate(len);
            self.counts[section] = count;
            return false;
        }
        true
    }

    /// Set `bits` in the header's flags.
    pub(super) fn flag(&mut self, bits: u16) {
        let f = u16::from_be_bytes([self.out[2], self.out[3]]) | bits;
        self.out[2..4].copy_from_slice(&f.to_be_bytes());
    }

    pub(super) fn finish(mut self) -> Vec<u8> {
        for (i, c) in self.counts.iter().enumerate() {
            self.out[4 + 2 * i..6 + 2 * i].copy_from_slice(&c.to_be_bytes());
        }
        self.out
    }
}
