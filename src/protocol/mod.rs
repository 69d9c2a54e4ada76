//! The protocol cores, sans-IO: bytes, events and times in; bytes and effects out. Nothing
//! here opens a file or a socket, reads a clock, starts a thread or logs text a client chose,
//! which is what makes every part testable (and fuzzable) without sockets or hardware.
//! `tests::purity` checks the imports.

pub(crate) mod esp; // the ESP loader protocol as it passes a session: SYNC, CHANGE_BAUDRATE
pub(crate) mod http; // HTTP/1.1 framing: request heads (httparse), responses, chunked bodies
pub(crate) mod line; // the vocabulary of a serial line: format, modem lines, purge
pub(crate) mod mdns; // multicast DNS / DNS-SD: wire, records, the responder's machine, a browser
pub(crate) mod notes; // what the cores have to say, as values the daemon logs
pub(crate) mod reset; // reset policies: client DTR/RTS patterns to timed line changes
pub(crate) mod rfc2217; // COM-PORT-OPTION (44) requests and replies as typed values
pub(crate) mod session; // one client's negotiation state: bytes in, ordered effects out
pub(crate) mod slip; // SLIP framing (RFC 1055) of the ESP loader: the one encoder and decoder
pub(crate) mod telnet; // Telnet byte codec: IAC framing, option verbs, 0xFF doubling

/// What a port speaks (its `protocol` key), and what a session turned out to speak (never
/// `Auto` then). One type for both: the config, the sessions, the portal and mDNS name it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Protocol {
    /// The client's first byte decides: IAC is RFC 2217, anything else (or silence while
    /// device output waits) raw.
    #[default]
    Auto,
    /// RFC 2217 (Telnet COM-PORT-OPTION): pyserial's `rfc2217://`, esptool, idf.py.
    Rfc2217,
    /// A plain TCP byte stream at the configured baud: `socket://`, netcat.
    Raw,
}

impl Protocol {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Protocol::Auto => "auto",
            Protocol::Rfc2217 => "rfc2217",
            Protocol::Raw => "raw",
        }
    }
}

/// How loudly a session speaks in the log. The bridge gives each connection a budget of log
/// lines per remote address; a peer past it has its sessions logged at debug, so no client
/// can flood the log through the protocol cores.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Voice {
    #[default]
    Normal,
    Quiet,
}

impl Voice {
    /// The level of what is worth telling (a protocol decided, a baud changed).
    pub(crate) fn info(self) -> log::Level {
        match self {
            Voice::Normal => log::Level::Info,
            Voice::Quiet => log::Level::Debug,
        }
    }

    /// The level of what went wrong (a setting refused).
    pub(crate) fn warn(self) -> log::Level {
        match self {
            Voice::Normal => log::Level::Warn,
            Voice::Quiet => log::Level::Debug,
        }
    }
}

#[cfg(test)]
mod tests {
    /// The layer's rule, checked on its source (every file, `mdns/` too): outside tests, no
    /// module here touches the network, files, threads, processes or the clock, nor the
    /// crates that would.
    #[test]
    fn purity() {
        // Addresses are values (`Ipv4Addr`); sockets are I/O.
        const FORBIDDEN: [&str; 15] = [
            "TcpStream",
            "TcpListener",
            "UdpSocket",
            "std::fs",
            "std::thread",
            "std::process",
            "std::env",
            "nix::",
            "libc::",
            "Instant::now",
            "SystemTime",
            "crate::daemon",
            "crate::device",
            "crate::client",
            "crate::sim",
        ];
        fn check(dir: &std::path::Path, checked: &mut usize) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                let name = path.file_stem().unwrap().to_string_lossy().into_owned();
                if path.is_dir() {
                    check(&path, checked);
                    continue;
                }
                if crate::layers::test_file(&name) {
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                let code = crate::layers::code_outside_tests(&text);
                for word in FORBIDDEN {
                    assert!(
                        !code.contains(word),
                        "{} uses {word}: the protocol layer is sans-IO",
                        path.display()
                    );
                }
                *checked += 1;
            }
        }
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/protocol");
        let mut checked = 0;
        check(&dir, &mut checked);
        assert!(
            checked >= 12,
            "found only {checked} files in {}",
            dir.display()
        );
    }
}
