//! `serialhub discover [HOST[:PORT]] [--json]`: the boards a portal serves (or, without a
//! host, every serialhub's on the network), as a table or as JSON.

use lexopt::{Arg, ValueExt};
use serde_json::Value;

use super::device::Device;
use super::error::ClientError;
use super::lan;
use super::portal::Portal;
use super::{help_requested, HELP};

pub(crate) fn main(mut parser: lexopt::Parser) -> Result<(), ClientError> {
    let mut host = None;
    let mut json = false;
    while let Some(arg) = parser.next()? {
        match arg {
            Arg::Long("json") | Arg::Short('j') => json = true,
            Arg::Value(v) if host.is_none() => host = Some(v.string()?),
            a if help_requested(&a) => {
                print!("{HELP}");
                return Ok(());
            }
            a => return Err(a.unexpected().into()),
        }
    }
    let Some(portal) = Portal::given(host.as_deref())? else {
        let devices = lan::devices()?;
        if json {
            let list: Vec<Value> = devices.iter().map(listed).collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({ "devices": list }))
                    .unwrap_or_default()
            );
        } else {
            print!("{}", table(&devices));
        }
        return Ok(());
    };
    let (raw, devices) = portal.discover()?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&raw).unwrap_or_else(|_| raw.to_string())
        );
    } else if devices.is_empty() {
        eprintln!("{} serves no devices", portal.authority);
    } else {
        print!("{}", table(&devices));
    }
    Ok(())
}

/// The readable listing: one row per device, columns padded to fit; a HOST column when the
/// devices come from several hosts (the network was browsed).
fn table(devices: &[Device]) -> String {
    let hosts = devices.iter().any(|d| !d.host.is_empty());
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_string()
        } else {
            s.to_string()
        }
    };
    let mut head = vec!["#", "NAME", "PRODUCT", "SERIAL", "PORT", "STATE", "URL"];
    if hosts {
        head.insert(1, "HOST");
    }
    let rows: Vec<Vec<String>> = devices
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let mut r = vec![
                i.to_string(),
                dash(&d.name),
                dash(&d.product),
                dash(&d.serial),
                d.port.to_string(),
                dash(&d.state),
                dash(&d.url),
            ];
            if hosts {
                r.insert(1, dash(&d.host));
            }
            r
        })
        .collect();
    let mut width: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<w$}  ", w = width[i]));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&head);
    for r in &rows {
        let cells: Vec<&str> = r.iter().map(String::as_str).collect();
        line(&cells);
    }
    out
}

/// The listing's JSON for a device found on the network.
fn listed(d: &Device) -> Value {
    serde_json::json!({
        "host": d.host,
        "name": d.name,
        "product": d.product,
        "serial": d.serial,
        "key": d.key,
        "port": d.port,
        "state": d.state,
        "url": d.url,
        "socket_url": d.socket_url,
        "portal": d.portal.as_ref().map(|a| format!("http://{a}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::device::tests::devs;

    #[test]
    fn table_aligns() {
        let t = table(&devs());
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4);
        let col = lines[0].find("URL").unwrap();
        assert!(lines[1][col..].starts_with("rfc2217://h:4001"), "{t}");
        assert!(
            lines[2].contains("ttyUSB1") && lines[2].contains("running"),
            "{t}"
        );
    }

    #[test]
    fn a_host_column_for_the_network() {
        let mut ds = devs();
        ds[0].host = "10.0.0.2:8080".into();
        ds[0].portal = Some("10.0.0.2:8080".into());
        let t = table(&ds);
        assert!(t.starts_with("#  HOST "), "{t}");
        assert!(t.lines().nth(2).unwrap().contains("  -  "), "{t}");
        let j = listed(&ds[0]);
        assert_eq!(j["portal"], "http://10.0.0.2:8080");
        assert_eq!(j["host"], "10.0.0.2:8080");
        assert_eq!(listed(&ds[1])["portal"], Value::Null);
    }
}
