//! What answers what: this host's records (PTR, SRV, TXT for each service, A for the host),
//! the answer to a question, announcements, goodbyes, the probe, and what a peer's response
//! means for our names.
//!
//! The responder answers PTR questions for its service types (and for the service-type
//! enumeration), SRV/TXT/ANY questions for its instances and A/ANY questions for its host
//! name, with the related records as additional answers, as avahi and python-zeroconf do. A
//! query from a port other than 5353 (a one-shot querier, RFC 6762 §6.7) is answered by
//! unicast, with its ID and question. Announcements and goodbyes are the same records sent
//! unsolicited (goodbyes with TTL 0).

use std::net::Ipv4Addr;

use super::wire::{
    Data, Message, Name, Question, Record, Writer, A, ANY, IN, MAX_PACKET, MAX_REPLY, PORT, PTR,
    RESPONSE, SRV, TRUNCATED, TXT, UNICAST,
};

/// How long caches keep records naming a host (RFC 6762 §10: 120 s) and other records
/// (75 minutes).
const HOST_TTL: u32 = 120;
const OTHER_TTL: u32 = 4500;

/// The service-type enumeration name (RFC 6763 §9).
const SERVICES: &str = "_services._dns-sd._udp";

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

    /// Whether any of `query`'s questions is about a name of ours: cheap (a few name
    /// comparisons per question), so the answer budget is charged before any answer is built.
    pub(crate) fn concerns(&self, query: &Message) -> bool {
        !query.response
            && query.questions.iter().any(|q| {
                q.name.same(&Name::local(SERVICES))
                    || q.name.same(&self.host_name())
                    || (self.services.iter())
                        .any(|s| q.name.same(&s.kind_name()) || q.name.same(&s.name()))
            })
    }

    /// The answer to `query` (`query_len` bytes, received from port `from_port` on an
    /// interface whose addresses are `addrs`), if it asks about anything of ours.
    ///
    /// Bounded whatever the query: a question asked twice is answered once, a record is in
    /// the reply once, and the reply is at most [`MAX_REPLY`] bytes — for a one-shot querier
    /// (a unicast reply, which a spoofed source would aim at someone else) at most the
    /// query's own size if that is over [`MAX_PACKET`], so a large query never gets more
    /// back than it sent; answers that do not fit are left out (and the TC bit says so to
    /// a one-shot querier). A one-shot querier gets back only the questions that were
    /// answered, once each.
    pub(crate) fn answer(
        &self,
        query: &Message,
        query_len: usize,
        from_port: u16,
        addrs: &[Ipv4Addr],
    ) -> Option<(Vec<u8>, Dest)> {
        if query.response {
            return None;
        }
        let mut answers: Vec<Record> = Vec::new();
        let mut extra: Vec<Record> = Vec::new();
        let mut asked: Vec<&Question> = Vec::new();
        for q in &query.questions {
            if asked
                .iter()
                .any(|a| a.kind == q.kind && a.name.same(&q.name))
            {
                continue;
            }
            let before = answers.len();
            self.answer_one(q, addrs, &mut answers, &mut extra);
            if answers.len() > before {
                asked.push(q);
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
        let limit = if legacy && query_len > MAX_PACKET {
            query_len.min(MAX_REPLY)
        } else {
            MAX_REPLY
        };
        let mut w = Writer::new(if legacy { query.id } else { 0 }, RESPONSE);
        if legacy {
            for q in &asked {
                w.question(&q.name, q.kind);
            }
        }
        let mut all = true;
        for a in &answers {
            // Shared records (PTR) never flush caches; unique ones do, except to a one-shot
            // querier (RFC 6762 §6.7).
            let flush = !legacy && !matches!(a.data, Data::Ptr(_));
            all &= w.record_within(1, a, flush, limit);
        }
        if !all && legacy {
            w.flag(TRUNCATED);
        }
        if w.out.len() > limit {
            return None; // the echoed questions alone do not fit
        }
        for e in &extra {
            let flush = !legacy && !matches!(e.data, Data::Ptr(_));
            if !w.record_within(3, e, flush, limit.min(MAX_PACKET)) {
                break;
            }
        }
        let dest = if legacy { Dest::Asker } else { Dest::Group };
        Some((w.finish(), dest))
    }

    /// Add what answers `q` to `answers` (each record once) and the related records to
    /// `extra`.
    fn answer_one(
        &self,
        q: &Question,
        addrs: &[Ipv4Addr],
        answers: &mut Vec<Record>,
        extra: &mut Vec<Record>,
    ) {
        let add = |to: &mut Vec<Record>, r: Record| {
            if !to.contains(&r) {
                to.push(r);
            }
        };
        let any = q.kind == ANY;
        if (q.kind == PTR || any) && q.name.same(&Name::local(SERVICES)) {
            for s in &self.services {
                add(
                    answers,
                    Record {
                        name: Name::local(SERVICES),
                        ttl: OTHER_TTL,
                        data: Data::Ptr(s.kind_name()),
                    },
                );
            }
        }
        for s in &self.services {
            if (q.kind == PTR || any) && q.name.same(&s.kind_name()) {
                let mut recs = self.service_records(s, addrs, None).into_iter();
                if let Some(ptr) = recs.next() {
                    add(answers, ptr);
                }
                extra.extend(recs);
            } else if q.name.same(&s.name()) && matches!(q.kind, SRV | TXT | ANY) {
                for r in self.service_records(s, addrs, None).into_iter().skip(1) {
                    let wanted = any
                        || matches!(
                            (&r.data, q.kind),
                            (Data::Srv { .. }, SRV) | (Data::Txt(_), TXT)
                        );
                    if wanted {
                        add(answers, r);
                    } else {
                        extra.push(r);
                    }
                }
            }
        }
        if matches!(q.kind, A | ANY) && q.name.same(&self.host_name()) {
            for r in self.host_records(addrs) {
                add(answers, r);
            }
        }
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
