//! Who may connect: address allow-lists (CIDR, IPv4 and IPv6) for device ports and the portal,
//! and the portal's API token. Stock clients (pyserial's `rfc2217://` and `socket://`) cannot
//! authenticate in-band, so device ports are guarded by what the server can see — the peer's
//! address; the HTTP API also by a bearer token. Pure: addresses and header values in, a
//! verdict with the rule that refused out.

use std::net::IpAddr;

/// One network: an address and how many leading bits must match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Net {
    addr: IpAddr,
    bits: u8,
}

impl Net {
    /// `192.168.1.0/24`, `10.0.0.7`, `::1`, `fd00::/8`.
    pub(crate) fn parse(s: &str) -> Result<Net, String> {
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not an address or network like \"192.168.1.0/24\""))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(b) => b
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|&b| b <= max)
                .ok_or_else(|| format!("`{s}`: the prefix length must be 0 to {max}"))?,
        };
        Ok(Net { addr, bits })
    }

    /// Whether `ip` is in this network. An IPv4 address and its IPv4-mapped form
    /// (`::ffff:a.b.c.d`, what a dual-stack listener reports) are one address, both ways: a
    /// rule written `::ffff:10.0.0.0/104` is `10.0.0.0/8` (its prefix counts on the IPv6
    /// form), so a rule copied from a dual-stack log line matches what it says.
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_eq(&net.octets(), &ip.octets(), self.bits),
            (IpAddr::V6(net), IpAddr::V6(ip)) => prefix_eq(&net.octets(), &ip.octets(), self.bits),
            // A v6 rule and a v4 peer: compare on the peer's mapped form.
            (IpAddr::V6(net), IpAddr::V4(ip)) => {
                prefix_eq(&net.octets(), &ip.to_ipv6_mapped().octets(), self.bits)
            }
            (IpAddr::V4(_), IpAddr::V6(_)) => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let full = usize::from(bits / 8);
    let rest = bits % 8;
    if a[..full] != b[..full] {
        return false;
    }
    rest == 0 || (a[full] ^ b[full]) >> (8 - rest) == 0
}

/// An allow-list; `Everyone` when none is configured (the behaviour without `[access]`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) enum Allow {
    #[default]
    Everyone,
    Only(Vec<Net>),
}

impl Allow {
    pub(crate) fn parse(list: &[String]) -> Result<Allow, String> {
        list.iter()
            .map(|s| Net::parse(s))
            .collect::<Result<Vec<_>, _>>()
            .map(Allow::Only)
    }

    pub(crate) fn permits(&self, ip: IpAddr) -> bool {
        match self {
            Allow::Everyone => true,
            Allow::Only(nets) => nets.iter().any(|n| n.contains(ip)),
        }
    }
}

/// Why a request or connection was refused: the rule, as the error says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The address is not in `allow`.
    NotAllowed,
    /// The API token is missing or wrong.
    Token,
}

impl Refusal {
    /// The config key that refused.
    pub(crate) fn rule(self) -> &'static str {
        match self {
            Refusal::NotAllowed => "allow",
            Refusal::Token => "token",
        }
    }
}

/// The portal's API token.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(…)")
    }
}

/// A token shorter than this is refused at load: it would be guessable.
pub(crate) const TOKEN_MIN_LEN: usize = 16;

impl Token {
    pub(crate) fn new(text: &str) -> Result<Token, String> {
        let t = text.trim();
        if t.len() < TOKEN_MIN_LEN || !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "the token must be at least {TOKEN_MIN_LEN} printable characters without spaces (`serialhub token` makes one)"
            ));
        }
        Ok(Token(t.to_owned()))
    }

    /// Does an `Authorization` header carry this token (`Bearer TOKEN`)? Compared in
    /// constant time, so the answer's timing tells nothing about how much of a guess was right.
    pub(crate) fn accepts(&self, authorization: Option<&str>) -> bool {
        let Some(given) = authorization.and_then(|h| {
            let (scheme, rest) = h.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        }) else {
            return false;
        };
        let (a, b) = (self.0.as_bytes(), given.as_bytes());
        let mut diff = a.len() ^ b.len();
        for (i, x) in a.iter().enumerate() {
            diff |= usize::from(x ^ b.get(i).copied().unwrap_or(0));
        }
        diff == 0
    }
}

/// A new random token: 32 bytes from the kernel, hex.
pub(crate) fn new_token() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_match_by_prefix_in_both_families() {
        let lan = Net::parse("192.168.1.0/24").unwrap();
        assert!(lan.contains(ip("192.168.1.77")) && !lan.contains(ip("192.168.2.1")));
        assert!(
            lan.contains(ip("::ffff:192.168.1.5")),
            "IPv4-mapped from a dual-stack socket"
        );
        let host = Net::parse("10.0.0.7").unwrap();
        assert!(host.contains(ip("10.0.0.7")) && !host.contains(ip("10.0.0.8")));
        let odd = Net::parse("10.0.0.0/13").unwrap();
        assert!(odd.contains(ip("10.7.255.255")) && !odd.contains(ip("10.8.0.0")));
        let v6 = Net::parse("fd00::/8").unwrap();
        assert!(
            v6.contains(ip("fd12::1"))
                && !v6.contains(ip("fe80::1"))
                && !v6.contains(ip("10.0.0.1"))
        );
        assert!(Net::parse("::1").unwrap().contains(ip("::1")));
        assert!(Net::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(Net::parse("10.0.0.0/33").is_err() && Net::parse("pi.local").is_err());
    }

    #[test]
    fn ipv4_mapped_rules_match_their_ipv4_peers_both_ways() {
        let mapped = Net::parse("::ffff:10.0.0.0/104").unwrap();
        for peer in ["10.1.2.3", "::ffff:10.255.0.1"] {
            assert!(mapped.contains(ip(peer)), "{peer}");
        }
        for peer in ["11.0.0.1", "::ffff:11.0.0.1", "::a00:1", "fd00::1"] {
            assert!(!mapped.contains(ip(peer)), "{peer}");
        }
        let host = Net::parse("::ffff:192.168.1.5").unwrap();
        assert!(host.contains(ip("192.168.1.5")) && !host.contains(ip("192.168.1.6")));
        // The other way: a v4 rule, a mapped peer (as before), and a v4 rule never matches a
        // v6 peer that is not mapped.
        let v4 = Net::parse("10.0.0.0/8").unwrap();
        assert!(v4.contains(ip("::ffff:10.9.9.9")) && !v4.contains(ip("::a09:909")));
        // A short v6 prefix that covers the mapped range covers IPv4 peers too.
        assert!(Net::parse("::ffff:0.0.0.0/96")
            .unwrap()
            .contains(ip("8.8.8.8")));
        assert!(Net::parse("::/0").unwrap().contains(ip("8.8.8.8")));
        let a = Allow::parse(&["::ffff:192.168.1.0/120".into()]).unwrap();
        assert!(a.permits(ip("192.168.1.77")) && !a.permits(ip("192.168.2.1")));
    }

    #[test]
    fn allow_lists() {
        assert!(Allow::Everyone.permits(ip("203.0.113.9")));
        let a = Allow::parse(&["192.168.1.0/24".into(), "::1".into()]).unwrap();
        assert!(
            a.permits(ip("192.168.1.3")) && a.permits(ip("::1")) && !a.permits(ip("127.0.0.1"))
        );
        assert!(Allow::parse(&["nonsense".into()]).is_err());
    }

    #[test]
    fn tokens_are_checked_whole_and_as_bearer() {
        let t = Token::new("0123456789abcdef0123\n").unwrap();
        assert!(t.accepts(Some("Bearer 0123456789abcdef0123")));
        assert!(t.accepts(Some("bearer  0123456789abcdef0123 ")));
        assert!(!t.accepts(Some("Bearer 0123456789abcdef012")));
        assert!(!t.accepts(Some("Bearer 0123456789abcdef01234")));
        assert!(!t.accepts(Some("Basic 0123456789abcdef0123")));
        assert!(!t.accepts(None));
        assert!(Token::new("short").is_err() && Token::new("has a space in it, long").is_err());
        let made = new_token().unwrap();
        assert!(made.len() == 64 && Token::new(&made).is_ok());
        assert_eq!(format!("{t:?}"), "Token(…)");
    }
}
