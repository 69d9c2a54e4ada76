//! Multicast DNS and DNS-SD (RFC 6762, RFC 6763), the part a responder for a few services and
//! a one-shot browser need, sans-IO: packets, interfaces and times in; packets out, each for
//! an interface, and the time to be woken.
//!
//! - `wire`: names, records and packets; the bounded parser and the writer.
//! - `responder`: what answers what — this host's records, answers, announcements, goodbyes,
//!   the probe, and what a peer's response means for our names.
//! - `machine`: the responder's policy over time and interfaces — probing, announcing,
//!   conflicts and renames, goodbyes, the answer budget ([`Machine`]); the daemon's mDNS
//!   thread moves its packets.
//! - `browse`: the one-shot browser of the client's `discover`.

mod browse;
mod machine;
mod responder;
mod wire;

pub(crate) use browse::{browse_query, Browser, Found};
pub(crate) use machine::{IfAddr, Iface, Machine, Note, Peer, To};
pub(crate) use responder::Service;
pub(crate) use wire::{GROUP, PORT};

#[cfg(test)]
mod tests;
