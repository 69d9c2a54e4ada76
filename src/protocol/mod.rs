//! The protocol cores, sans-IO: bytes, events and times in; bytes and effects out. Nothing
//! here opens a file or a socket, reads a clock, starts a thread or logs text a client chose,
//! which is what makes every part testable (and fuzzable) without sockets or hardware.
//! `tests::purity` checks the imports.

pub(crate) mod esp; // the ESP loader protocol as it passes a session: SYNC, CHANGE_BAUDRATE
pub(crate) mod line; // the vocabulary of a serial line: format, modem lines, purge
pub(crate) mod reset; // reset policies: client DTR/RTS patterns to timed line changes
pub(crate) mod rfc2217; // COM-PORT-OPTION (44) requests and replies as typed values
pub(crate) mod session; // one client's negotiation state: bytes in, ordered effects out
pub(crate) mod telnet; // Telnet byte codec: IAC framing, option verbs, 0xFF doubling
