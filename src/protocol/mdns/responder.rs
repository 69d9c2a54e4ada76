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
    Data, Message, Name, Record, Writer, A, ANY, IN, MAX_PACKET, PORT, PTR, RESPONSE, SRV, TXT,
    UNICAST,
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
