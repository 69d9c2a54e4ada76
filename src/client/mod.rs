//! The client side, for containers and CI runners: `discover`, `url`, `monitor`, `pty`,
//! `lease` (a board reserved for one command), and `labgrid` (an exporter configuration for a
//! lab).
//!
//! `discover` and `url` read the portal's `/api/discover` (serialhub's, or the old Python
//! portal's smaller shape); `monitor` and `pty` speak RFC 2217 with the project's own codecs,
//! so the codec is exercised from both sides.
//!
//! Exit codes: 0 ok, 1 no such device / several match / runtime failure, 2 usage error or
//! host unreachable.

// The commands, one room each.
pub(crate) mod discover; // list the boards of a portal, or of the network
pub(crate) mod labgrid; // a labgrid exporter configuration
pub(crate) mod lease; // reserve a board, run a command, give it back
pub(crate) mod monitor; // a serial monitor over RFC 2217
pub(crate) mod pty; // a local pseudo-terminal bridged to a remote port
pub(crate) mod url; // one board's URL

// What the commands share.
pub(crate) mod device; // the board model (both portals' shapes) and the choice of one
pub(crate) mod error; // why a command failed, and its exit code
pub(crate) mod http; // one HTTP request per connection (framing: `protocol::http`)
pub(crate) mod lan; // portals and boards found on the network by mDNS
pub(crate) mod portal; // the HTTP client of a portal's API
pub(crate) mod rfc; // the client side of RFC 2217
pub(crate) mod target; // where a command's board is: a host, the network, or a URL

use error::ClientError;

pub(crate) const HELP: &str = "\
serialhub client commands — use a serialhub (or the old portal) from another machine

USAGE:
    serialhub discover [HOST[:PORT]] [--json]
    serialhub url [HOST[:PORT]] [SELECTOR] [--socket | --ign-set-control]
    serialhub monitor [TARGET] [SELECTOR] [--baud B] [--raw] [--timestamps]
    serialhub pty [TARGET] [SELECTOR] --link PATH [--baud B] [--format 8N1]
    serialhub labgrid [HOST[:PORT]]...
    serialhub lease [HOST[:PORT]] [SELECTOR] [--for 30m] [--token-file F] [-- COMMAND...]

HOST defaults to $SERIALHUB_HOST, then $PI_HOST; without any, every serialhub on the network is
found by mDNS (about 1.5 s) and `discover` lists their boards with a HOST column. The portal's
port defaults to 8080. A portal that wants
its API token (`[access] token_file`) gets it from $SERIALHUB_TOKEN, but only a HOST you name
(never one found by mDNS), and only on changes or a read it refused with 401.
TARGET is an rfc2217://HOST:PORT URL, or a HOST whose portal picks the device; without one,
$ESP32_PORT (a URL), else the default HOST.

SELECTOR (at most one; without one, $ESP32_SERIAL, then $ESP32_INDEX; without those the host
must serve exactly one device):
    --serial S, -s S     the device with USB serial number S
    --name N             the device named N (or with node N, e.g. /dev/ttyUSB0)
    --key K              the device with key K (serial:0123, path:…, name:ttyAMA0)
    --index I, -i I      the I-th device of `discover` (from 0)

discover             list the served devices: name, product, serial, port, state, URL;
                     --json prints the portal's JSON
url                  print exactly one device URL (for ESPPORT=$(serialhub url …));
                     --socket prints the socket:// URL, esptool's fastest path (the
                     server resets the chip and changes the baud for it). esptool 4.8
                     and newer turn their reset off there by themselves; older ones
                     crash trying unless told `--before no_reset`:
                       esptool --port URL --before no-reset …       (esptool 5.x; 3.x/4.x: no_reset)
                       idf.py -p URL flash                          (IDF's esptool < 4.8:
                                                                     CONFIG_ESPTOOLPY_BEFORE_NORESET=y)
                       PlatformIO: upload_port = URL and board_upload.before_reset = no_reset
                       (espressif32 <= 6.11 bundles esptool 4.5.1); monitor_port = the
                       rfc2217:// URL with monitor_speed = 115200 (its default is 9600)
                       arduino-cli upload -p URL                    (arduino-esp32 3.x whose
                                                                     esptool_py >= 4.8)
                     --ign-set-control adds ?ign_set_control (never needed with serialhub;
                     never in PlatformIO's upload_port, which takes a `?` as a pattern)
monitor              a serial monitor over RFC 2217; DTR/RTS stay released, so opening it
                     resets nothing. --baud (default 115200), --raw passes bytes through
                     (default: complete lines), --timestamps prefixes lines with the time.
                     Keys: Ctrl-T Ctrl-R reset into the application, Ctrl-T Ctrl-P into the
                     bootloader, Ctrl-T Ctrl-T sends Ctrl-T, Ctrl-T Ctrl-H help, Ctrl-] quits.
                     Reconnects (0.5 s doubling to 5 s) when the server or device goes away.
pty                  a local pseudo-terminal, symlinked at PATH, bridged to the remote port:
                     data both ways; the baud and stop bits a program sets on it are
                     forwarded as RFC 2217 settings (--baud: the rate until one does). Linux's
                     pty driver forces 8 data bits and no parity, so those are fixed with
                     --format (default 8N1). A pty has no DTR/RTS either, so programs
                     cannot reset the board through it: use `--before no-reset` with esptool
                     and reset with `serialhub monitor` (Ctrl-T Ctrl-P) or the portal:
                     curl -X POST -H 'Content-Type: application/json' http://HOST:8080/api/devices/KEY/reset -d '{\"to\":\"bootloader\"}'
lease                reserve the board for this machine (`[access] lease` on the server) for
                     --for (30m; s, m, h, d), run COMMAND with {url} and {socket_url} replaced
                     by its URLs and ESPPORT set, release the lease when it ends (also on
                     Ctrl-C), and exit with its status:
                     serialhub lease pi --serial X --for 30m -- esptool --port {socket_url} --before no-reset -b 921600 write-flash 0x10000 app.bin
                     Without COMMAND: print the URL and the lease id. The token comes from
                     --token-file or $SERIALHUB_TOKEN.
labgrid              a labgrid exporter configuration (YAML, on stdout) with one group per
                     board of every HOST given (default: $SERIALHUB_HOST, else every
                     serialhub found on the network): a NetworkSerialPort
                     with host, port, speed and protocol, for `labgrid-exporter`

Exit status: 0 ok; 1 no device matches, several do, or the connection failed; 2 bad command
line, or the host is unreachable.
";

/// Run one client command; returns the exit code (messages already printed).
pub(crate) fn main(cmd: &str, parser: lexopt::Parser) -> i32 {
    let r = match cmd {
        "discover" => discover::main(parser),
        "url" => url::main(parser),
        "monitor" => monitor::main(parser),
        "pty" => pty::main(parser),
        "labgrid" => labgrid::main(parser),
        "lease" => lease::main(parser),
        _ => Err(ClientError::Usage(format!("unknown command `{cmd}`"))),
    };
    match r {
        Ok(()) => 0,
        Err(e) => {
            match &e {
                ClientError::Usage(m) => eprintln!("serialhub: {m}\nTry `serialhub {cmd} --help`."),
                other => eprintln!("serialhub: {other}"),
            }
            e.exit_code()
        }
    }
}

/// `--help` or `-h`, which every command answers with [`HELP`].
pub(crate) fn help_requested(arg: &lexopt::Arg) -> bool {
    matches!(arg, lexopt::Arg::Long("help") | lexopt::Arg::Short('h'))
}
