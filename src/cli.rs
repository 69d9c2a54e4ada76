//! Command line: `serialhub serve …`, `serialhub sim …`, `--help`, `--version`.
//!
//! Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error.

use std::path::PathBuf;

use lexopt::prelude::*;

use crate::daemon::config::{Config, DeviceSpec};
use crate::sim::{SimBoard, SimOptions};

const VERSION: &str = env!("CARGO_PKG_VERSION");

const HELP: &str = "\
serialhub — share serial ports over RFC 2217, ESP32-aware

USAGE:
    serialhub serve [--config FILE] [--device PATH[=PORT]]... [--bind ADDR] [--demo]
                    [--dev-dir DIR] [--sysfs DIR] [--state FILE] [--no-hotplug]
                    [--http ADDR:PORT|off] [--ready-fd N]
    serialhub sim --pty LINK [--flash FILE] [--bootloader] [--board BOARD]
    serialhub token [--write FILE]
    serialhub discover|url|monitor|pty|lease|labgrid …   the client side: `serialhub discover --help`
    serialhub --help | --version

SERVE:
    --config FILE        TOML configuration (default /etc/serialhub/serialhub.toml if it exists)
    --device PATH[=PORT] serve this device (repeatable); PORT 0 lets the OS pick one.
                         PATH `sim` (or `sim:FLASHFILE`) is the built-in simulated ESP32;
                         `sim-usb` (ESP32-C3, USB-Serial/JTAG), `sim-s3-usb` (ESP32-S3,
                         USB-Serial/JTAG), `sim-otg` (ESP32-S3, USB-OTG), `sim-gpio`,
                         `sim-esp8266` the other simulated boards.
    --bind ADDR          address to listen on (default 0.0.0.0)
    --demo               also serve a simulated ESP32 on the first free port from base_port
    --dev-dir DIR        watch DIR for hotplugged devices (default /dev; [hotplug] dir)
    --sysfs DIR          read USB identities from DIR (default /sys; [hotplug] sysfs)
    --state FILE         persisted port assignments (default /var/lib/serialhub/ports.json)
    --no-hotplug         serve only the configured devices
    --http ADDR:PORT|off the portal: discovery API, metrics and web page (default 0.0.0.0:8080;
                         `off` disables it; port 0 lets the OS pick, the log line says which)
    --ready-fd N         once every port listens, write one JSON line to descriptor N and close
                         it: {\"portal\": ADDR:PORT|null, \"devices\": [{key, name, tty, port, state}]}
                         (for a supervisor script or test; like s6's notification-fd)

TOKEN:
    a new random API token for `[access] token_file`, on stdout; --write FILE puts it in FILE
    instead (created with mode 0600; an existing file is not replaced)

SIM:
    --pty LINK           create a pseudo-terminal and symlink its device at LINK
    --flash FILE         keep the simulated 4 MiB flash in FILE
    --bootloader         start in the ROM download mode (a PTY has no DTR/RTS to reset it)
    --board BOARD        which simulated board: sim (default), sim-usb, sim-s3-usb, sim-otg,
                         sim-gpio, sim-esp8266

Logging goes to stderr; set RUST_LOG=debug for more.
";

const DEFAULT_CONFIG: &str = "/etc/serialhub/serialhub.toml";

pub fn main() -> i32 {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run() {
        Ok(()) => 0,
        Err(CliError::Usage(msg)) => {
            eprintln!("serialhub: {msg}\nTry `serialhub --help`.");
            2
        }
        Err(CliError::Config(e)) => {
            eprintln!("serialhub: {e}");
            2
        }
        Err(CliError::Runtime(msg)) => {
            eprintln!("serialhub: {msg}");
            1
        }
        Err(CliError::Exit(code)) => code,
    }
}

enum CliError {
    Usage(String),
    Config(crate::daemon::config::ConfigError),
    Runtime(String),
    /// A client command's exit code, its message already printed.
    Exit(i32),
}

impl From<lexopt::Error> for CliError {
    fn from(e: lexopt::Error) -> Self {
        CliError::Usage(e.to_string())
    }
}

fn run() -> Result<(), CliError> {
    let mut parser = lexopt::Parser::from_env();
    match parser.next()? {
        Some(Long("help") | Short('h')) | None => {
            print!("{HELP}");
            Ok(())
        }
        Some(Long("version") | Short('V')) => {
            println!("serialhub {VERSION}");
            Ok(())
        }
        Some(Value(cmd)) if cmd == "serve" => serve(parser),
        Some(Value(cmd)) if cmd == "sim" => sim(parser),
        Some(Value(cmd)) if cmd == "token" => token(parser),
        Some(Value(cmd))
            if ["discover", "url", "monitor", "pty", "lease", "labgrid"]
                .iter()
                .any(|c| cmd == *c) =>
        {
            match crate::client::main(&cmd.to_string_lossy(), parser) {
                0 => Ok(()),
                code => Err(CliError::Exit(code)),
            }
        }
        Some(Value(cmd)) => Err(CliError::Usage(format!(
            "unknown command `{}`",
            cmd.to_string_lossy()
        ))),
        Some(arg) => Err(arg.unexpected().into()),
    }
}

/// `serialhub token [--write FILE]`.
fn token(mut parser: lexopt::Parser) -> Result<(), CliError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let mut write: Option<std::path::PathBuf> = None;
    while let Some(arg) = parser.next()? {
        match arg {
            Long("write") => write = Some(parser.value()?.into()),
            other => return Err(other.unexpected().into()),
        }
    }
    let token = crate::daemon::access::new_token()
        .map_err(|e| CliError::Runtime(format!("cannot read random bytes: {e}")))?;
    match write {
        None => println!("{token}"),
        Some(path) => {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| CliError::Runtime(format!("cannot create {}: {e}", path.display())))?;
            writeln!(f, "{token}")
                .map_err(|e| CliError::Runtime(format!("cannot write {}: {e}", path.display())))?;
            eprintln!(
                "serialhub: a new token is in {} (mode 0600)",
                path.display()
            );
        }
    }
    Ok(())
}

/// `serve`'s flags: kept, so a SIGHUP reload re-reads the file and applies them again.
#[derive(Clone, Default)]
struct ServeFlags {
    config_path: Option<PathBuf>,
    devices: Vec<DeviceSpec>,
    bind: Option<String>,
    demo: bool,
    dev_dir: Option<PathBuf>,
    sysfs: Option<PathBuf>,
    state: Option<PathBuf>,
    no_hotplug: bool,
    http: Option<String>,
}

/// `--ready-fd N`: the descriptor, checked to be open, taken over (written once, then closed).
fn ready_fd(n: &str) -> Result<std::fs::File, CliError> {
    use std::os::fd::FromRawFd as _;
    let fd: std::os::fd::RawFd =
        n.parse().ok().filter(|&fd| fd > 2).ok_or_else(|| {
            CliError::Usage(format!("--ready-fd: `{n}` is not a descriptor above 2"))
        })?;
    if nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).is_err() {
        return Err(CliError::Usage(format!(
            "--ready-fd: descriptor {fd} is not open (e.g. `serialhub serve --ready-fd 3 3>ready.json`)"
        )));
    }
    // SAFETY: `fd` is open (checked above), was handed to us for this purpose, and nothing
    // else in the process uses it: the File becomes its only owner.
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}

fn serve(mut parser: lexopt::Parser) -> Result<(), CliError> {
    let mut f = ServeFlags::default();
    let mut ready = None;
    while let Some(arg) = parser.next()? {
        match arg {
            Long("ready-fd") => ready = Some(ready_fd(&parser.value()?.string()?)?),
            Long("dev-dir") => f.dev_dir = Some(parser.value()?.into()),
            Long("sysfs") => f.sysfs = Some(parser.value()?.into()),
            Long("state") => f.state = Some(parser.value()?.into()),
            Long("no-hotplug") => f.no_hotplug = true,
            Long("http") => f.http = Some(parser.value()?.string()?),
            Long("config") => f.config_path = Some(parser.value()?.into()),
            Long("device") => {
                let v = parser.value()?.string()?;
                f.devices
                    .push(DeviceSpec::parse_flag(&v).map_err(CliError::Usage)?);
            }
            Long("bind") => f.bind = Some(parser.value()?.string()?),
            Long("demo") => f.demo = true,
            Long("help") | Short('h') => {
                print!("{HELP}");
                return Ok(());
            }
            _ => return Err(arg.unexpected().into()),
        }
    }
    let config = build_config(&f)?;
    if config.devices.is_empty() && !config.hotplug.enabled {
        return Err(CliError::Usage(
            "no devices to serve: give --device PATH, --demo, [[device]] entries in the config, or enable hotplug"
                .into(),
        ));
    }
    let reload = move || build_config(&f).map_err(|e| e.to_string());
    crate::daemon::serve(config, Box::new(reload), ready).map_err(CliError::Runtime)
}

/// The config file (or the defaults) with the command line's flags applied on top.
fn build_config(f: &ServeFlags) -> Result<Config, CliError> {
    let mut config = match &f.config_path {
        Some(p) => Config::load(p).map_err(CliError::Config)?,
        None if std::path::Path::new(DEFAULT_CONFIG).exists() => {
            Config::load(std::path::Path::new(DEFAULT_CONFIG)).map_err(CliError::Config)?
        }
        None => Config::default(),
    };
    config.devices.extend(f.devices.iter().cloned());
    if f.demo {
        config.devices.push(DeviceSpec::demo());
    }
    if let Some(b) = &f.bind {
        config.bind = b
            .parse()
            .map_err(|_| CliError::Usage(format!("--bind: `{b}` is not an IP address")))?;
    }
    if let Some(d) = &f.dev_dir {
        config.hotplug.dir = d.clone();
    }
    if let Some(d) = &f.sysfs {
        config.hotplug.sysfs = d.clone();
    }
    if let Some(s) = &f.state {
        config.state_file = s.clone();
    }
    if f.no_hotplug {
        config.hotplug.enabled = false;
    }
    if let Some(h) = &f.http {
        config.http = crate::daemon::config::parse_http(h)
            .map_err(|e| CliError::Usage(format!("--http: {e}")))?;
    }
    Ok(config)
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Usage(m) | CliError::Runtime(m) => write!(f, "{m}"),
            CliError::Exit(code) => write!(f, "exit status {code}"),
            CliError::Config(e) => write!(f, "{e}"),
        }
    }
}

fn sim(mut parser: lexopt::Parser) -> Result<(), CliError> {
    let mut link: Option<PathBuf> = None;
    let mut opts = SimOptions::default();
    while let Some(arg) = parser.next()? {
        match arg {
            Long("pty") => link = Some(parser.value()?.into()),
            Long("flash") => opts.flash_file = Some(parser.value()?.into()),
            Long("bootloader") => opts.start_in_bootloader = true,
            Long("board") => {
                let name = parser.value()?.string()?;
                opts.board = SimBoard::from_path_name(&name)
                    .ok_or_else(|| CliError::Usage(format!("sim: no simulated board `{name}`")))?;
            }
            Long("help") | Short('h') => {
                print!("{HELP}");
                return Ok(());
            }
            _ => return Err(arg.unexpected().into()),
        }
    }
    let link = link.ok_or_else(|| CliError::Usage("sim needs --pty LINK".into()))?;
    crate::device::sim_pty::run(&link, opts).map_err(|e| CliError::Runtime(format!("sim: {e}")))
}
