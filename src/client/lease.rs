//! `serialhub lease`: reserve a board for this machine, run a command against it, give it
//! back.
//!
//! The lease is taken for the address the portal sees this machine at (what the device port
//! will see too); the command's `{url}` and `{socket_url}` are replaced by the board's URLs
//! and `ESPPORT` is set, so `idf.py` and esptool find it. The lease is released when the
//! command ends, also when it is interrupted (Ctrl-C reaches the command; this process waits
//! for it, releases, and exits with its status).

use std::time::Duration;

use lexopt::ValueExt;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use super::device::Selector;
use super::error::ClientError;
use super::http;
use super::monitor::{install_signal_handlers, stopped};
use super::portal::{Granted, Portal};
use super::target::devices_of;
use super::{help_requested, HELP};

/// A lease's length when `--for` is not given (the server's default too).
const DEFAULT_FOR: Duration = Duration::from_secs(1800);

pub(crate) fn main(mut parser: lexopt::Parser) -> Result<(), ClientError> {
    use lexopt::Arg::{Long, Value};
    let mut host = None;
    let mut sel = Selector::default();
    let mut length = DEFAULT_FOR;
    let mut command: Vec<String> = Vec::new();
    loop {
        // `--`: the rest is the command, as given.
        if let Ok(mut raw) = parser.raw_args() {
            if raw.peek().is_some_and(|a| a == "--") {
                raw.next();
                command = raw.map(|a| a.to_string_lossy().into_owned()).collect();
                break;
            }
        }
        let Some(arg) = parser.next()? else { break };
        if let Some(field) = Selector::flag(&arg) {
            sel.set(field, &mut parser)?;
            continue;
        }
        match arg {
            Long("for") => length = parse_duration(&parser.value()?.string()?)?,
            Long("token-file") => {
                let file = parser.value()?.string()?;
                let token = std::fs::read_to_string(&file).map_err(|e| {
                    ClientError::Usage(format!("cannot read the token from {file}: {e}"))
                })?;
                // Read by every request this process makes; no thread runs yet.
                std::env::set_var(http::TOKEN_ENV, token.trim());
            }
            Value(v) if host.is_none() => host = Some(v.string()?),
            Value(v) => {
                return Err(ClientError::Usage(format!(
                    "unexpected `{}`: the command goes after `--`",
                    v.string()?
                )))
            }
            a if help_requested(&a) => {
                print!("{HELP}");
                return Ok(());
            }
            a => return Err(a.unexpected().into()),
        }
    }
    let sel = sel.or_env()?;
    let (devices, from) = devices_of(host.as_deref())?;
    let device = sel.pick(&devices, &from)?;
    // The named portal gets the token; one found on the network does not.
    let named = Portal::given(host.as_deref())?;
    let Some(portal) = Portal::serving(device, named.as_ref()) else {
        return Err(ClientError::Select(format!(
            "{} on {} has no portal to lease it from",
            device.name, device.host
        )));
    };
    let key = device.api_key();
    let lease = portal.lease(&key, length.as_secs())?;
    if command.is_empty() {
        println!("{}", lease.url);
        println!("lease {} for {} s", lease.id, lease.seconds);
        return Ok(());
    }
    eprintln!(
        "serialhub: {} leased to this machine for {} s (lease {})",
        device.name, lease.seconds, lease.id
    );
    let status = run(&command, &lease);
    match portal.release(&key, &lease.id) {
        Ok(()) => eprintln!("serialhub: lease {} released", lease.id),
        Err(e) => eprintln!(
            "serialhub: could not release lease {}: {e} (it ends by itself in {} s)",
            lease.id, lease.seconds
        ),
    }
    match status? {
        0 => Ok(()),
        code => std::process::exit(code),
    }
}

/// `30m`, `1h`, `90s`, `2d`, or plain seconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, ClientError> {
    let s = s.trim();
    let (n, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, ""), |i| s.split_at(i));
    let n: u64 = n
        .parse()
        .map_err(|_| ClientError::Usage(format!("`{s}` is not a duration like 30m, 1h or 90s")))?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(ClientError::Usage(format!(
                "`{s}`: unknown unit `{unit}` (s, m, h or d)"
            )))
        }
    };
    Ok(Duration::from_secs(n.saturating_mul(scale)))
}

/// Run `command` with the board's URLs in it and `ESPPORT` set; its exit status (128 + the
/// signal that ended it, as a shell reports it).
fn run(command: &[String], lease: &Granted) -> Result<i32, ClientError> {
    let args: Vec<String> = command
        .iter()
        .map(|a| {
            a.replace("{url}", &lease.url)
                .replace("{socket_url}", &lease.socket_url)
        })
        .collect();
    install_signal_handlers();
    let child = std::process::Command::new(&args[0])
        .args(&args[1..])
        .env("ESPPORT", &lease.url)
        .spawn()
        .map_err(|e| ClientError::Runtime(format!("cannot run `{}`: {e}", args[0])))?;
    let pid = Pid::from_raw(child.id() as i32);
    let mut forwarded = false;
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => {
                // A signal for us (SIGTERM from a CI runner, SIGINT to this process alone):
                // the command gets it too, once, and we wait for it to end.
                if stopped() && !forwarded {
                    forwarded = true;
                    let _ = kill(pid, Signal::SIGTERM);
                }
            }
            Err(e) => {
                return Err(ClientError::Runtime(format!(
                    "waiting for the command: {e}"
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5w").is_err());
    }
}
