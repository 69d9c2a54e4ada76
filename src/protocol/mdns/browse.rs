//! The one-shot browser the client's `discover` uses: a PTR query for some service types,
//! then every answer that comes, collected into the instances found.

use std::net::Ipv4Addr;

use super::wire::{parse, Data, Name, Record, Writer, PTR};

/// A query for `kinds` (PTR questions), as a one-shot querier sends it: answered by unicast
/// to the port it comes from.
pub(crate) fn browse_query(id: u16, kinds: &[&str]) -> Vec<u8> {
    let mut w = Writer::new(id, 0);
    for k in kinds {
        w.question(&Name::local(k), PTR);
    }
    w.finish()
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
