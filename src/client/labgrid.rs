//! `serialhub labgrid [HOST…]`: a labgrid exporter configuration for every board the given
//! serialhubs serve — one group per board with a `NetworkSerialPort` (host, port, speed,
//! protocol), so `labgrid-exporter` publishes them from any machine of the lab and labgrid's
//! coordinator, places and reservations do the sharing. serialhub grows no scheduler.

use lexopt::ValueExt;

use super::device::Device;
use super::error::ClientError;
use super::lan;
use super::portal::Portal;
use super::{help_requested, HELP};

/// The rate labgrid's `SerialDriver` opens the port at unless the place says otherwise.
const SPEED: u32 = 115_200;

pub(crate) fn main(mut parser: lexopt::Parser) -> Result<(), ClientError> {
    let mut hosts = Vec::new();
    while let Some(arg) = parser.next()? {
        match arg {
            lexopt::Arg::Value(v) => hosts.push(v.string()?),
            a if help_requested(&a) => {
                print!("{HELP}");
                return Ok(());
            }
            a => return Err(a.unexpected().into()),
        }
    }
    let portals = if hosts.is_empty() {
        match Portal::given(None)? {
            Some(p) => vec![p],
            // Every serialhub on the network.
            None => lan::portals()?,
        }
    } else {
        hosts
            .iter()
            .map(|h| Portal::parse(h))
            .collect::<Result<Vec<_>, _>>()?
    };
    let mut found = Vec::new();
    for p in &portals {
        let (_, devices) = p.discover()?;
        found.extend(devices);
    }
    if found.is_empty() {
        return Err(ClientError::Runtime(
            "no boards are served there (or no serialhub answered on the network)".into(),
        ));
    }
    print!("{}", exporter_yaml(&found));
    Ok(())
}

/// A labgrid group name: letters, digits, `-` and `_` (YAML- and labgrid-safe).
fn group_name(d: &Device) -> String {
    let base = if d.serial.is_empty() {
        d.name.as_str()
    } else {
        d.serial.as_str()
    };
    let clean: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    match clean.trim_matches('-') {
        "" => "board".to_string(),
        s if s.starts_with(|c: char| c.is_ascii_digit()) => format!("board-{s}"),
        s => s.to_string(),
    }
}

/// `host` and `port` of an `rfc2217://` or `socket://` URL.
fn host_port(url: &str) -> Option<(&str, u16)> {
    let rest = url.split_once("://")?.1;
    let rest = rest.split(['/', '?']).next()?;
    let (host, port) = rest.rsplit_once(':')?;
    Some((
        host.trim_start_matches('[').trim_end_matches(']'),
        port.parse().ok()?,
    ))
}

/// The exporter configuration for `devices`, in the order given; group names made unique.
/// labgrid reads it as a Jinja2 template whose line statements start with `#`: comments are
/// `##`.
pub(crate) fn exporter_yaml(devices: &[Device]) -> String {
    let mut out = format!(
        "## labgrid exporter configuration, from `serialhub labgrid` ({} {})\n## run: labgrid-exporter -c COORDINATOR:20408 THIS_FILE\n",
        env!("CARGO_PKG_NAME"),
        env!("CARGO_PKG_VERSION")
    );
    let mut used: Vec<String> = Vec::new();
    for d in devices {
        let (url, protocol) = if d.url.starts_with("rfc2217://") {
            (d.url.as_str(), "rfc2217")
        } else {
            (d.socket_url.as_str(), "raw")
        };
        let Some((host, port)) = host_port(url) else {
            continue;
        };
        let mut name = group_name(d);
        if used.contains(&name) {
            let mut i = 2;
            while used.contains(&format!("{name}-{i}")) {
                i += 1;
            }
            name = format!("{name}-{i}");
        }
        used.push(name.clone());
        out.push_str(&format!(
            "\n{name}:\n  ## {} on {host}{}\n  NetworkSerialPort:\n    host: \"{host}\"\n    port: {port}\n    speed: {SPEED}\n    protocol: {protocol}\n",
            if d.product.is_empty() { &d.name } else { &d.product },
            if d.serial.is_empty() {
                String::new()
            } else {
                format!(", serial {}", d.serial)
            },
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(name: &str, serial: &str, url: &str) -> Device {
        Device {
            name: name.into(),
            serial: serial.into(),
            product: "CP2102 USB to UART".into(),
            url: url.into(),
            socket_url: url.replace("rfc2217://", "socket://"),
            ..Device::default()
        }
    }

    #[test]
    fn one_group_per_board_named_by_serial_unique_across_hosts() {
        let yaml = exporter_yaml(&[
            dev("ttyUSB0", "58DD029450", "rfc2217://pi1:4001"),
            dev("ttyUSB1", "", "rfc2217://pi1:4002"),
            dev("ttyUSB0", "58DD029450", "rfc2217://[fd00::2]:4001"),
            dev("sim", "", "socket://pi2:4003"),
        ]);
        assert!(yaml.contains("\nboard-58DD029450:\n  ## CP2102 USB to UART on pi1, serial 58DD029450\n  NetworkSerialPort:\n    host: \"pi1\"\n    port: 4001\n    speed: 115200\n    protocol: rfc2217\n"), "{yaml}");
        assert!(yaml.contains("\nttyUSB1:\n"), "{yaml}");
        assert!(
            yaml.contains("\nboard-58DD029450-2:\n") && yaml.contains("host: \"fd00::2\""),
            "{yaml}"
        );
        assert!(
            yaml.contains("\nsim:\n") && yaml.contains("protocol: raw"),
            "{yaml}"
        );
        assert_eq!(group_name(&dev("/dev/ttyACM0", "", "")), "dev-ttyACM0");
        assert_eq!(group_name(&dev("x", "0123", "")), "board-0123");
    }
}
