"""Issue 8: one port, both protocols, and esptool's `socket://` path with the server doing the
resets and baud changes esptool cannot do over a socket.

The simulated chip starts running its application; over `socket://` serialhub must enter the
bootloader by itself on esptool's first SYNC, switch the UART on CHANGE_BAUDRATE (stub and ROM
forms), and reset the chip into its application when the session ends. Raw clients that are
not esptool (netcat, a silent reader) see the device's bytes exactly, and an RFC 2217 client on
the same port is served as before (the rest of the suite runs on this default `auto` port too).
"""

from __future__ import annotations

import json
import random
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import serial

from conftest import SERIALHUB_BIN, wait_for
from test_esptool import SIM_MAC, assert_flash_holds, sim  # noqa: F401 (sim: a fixture)

TICK_RE = re.compile(rb"sim: app tick (\d+), boot #(\d+)")
DOWNLOAD_BOOT = r"sim: boot #(\d+) into download mode"
APP_BOOT = r"sim: boot #(\d+) into the application"


def esptool_socket(port: int, *args: str, timeout: float = 120) -> str:
    cmd = [sys.executable, "-m", "esptool", "--port", f"socket://127.0.0.1:{port}", *args]
    t0 = time.monotonic()
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"{' '.join(cmd[3:])} exited {r.returncode} after {time.monotonic() - t0:.1f} s:\n{out}"
    return out


def running_app_boot(port: int, timeout: float = 5) -> int:
    """Connect as a silent raw reader (a netcat that only listens) and return the boot number
    of the application ticking on the chip: proves the app runs, and which boot it is."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        buf = bytearray()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = s.recv(4096)
            except socket.timeout:
                break
            if not chunk:
                break
            buf += chunk
            ticks = TICK_RE.findall(buf)
            if len(ticks) >= 2:
                assert b"\xff" not in buf, "a raw reader got Telnet negotiation"
                return int(ticks[-1][1])
    raise AssertionError(f"no application ticks within {timeout} s; got {bytes(buf[-300:])!r}")


def recv_exactly(s: socket.socket, n: int, timeout: float = 5) -> bytes:
    got = bytearray()
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    return bytes(got)


def boots(d, pattern: str) -> list[int]:
    """Boot numbers from the simulated chip's own trace (`sim: boot #N into ...`): it runs in
    the daemon, so it writes to the daemon's log; it is the hardware's view (which boots went
    into download mode), not the daemon's wording. Assert on it after an API wait."""
    return [int(m) for m in re.findall(pattern, d.log)]


def app_boot_after(d, n: int, what: str = "sim", timeout: float = 10) -> int:
    """Wait until the chip's output (the API's device log) shows its application starting on
    a boot numbered above `n`; that boot's number."""
    def later():
        got = [int(b) for b in re.findall(r"app start, boot #(\d+)", d.output(what)["data"])]
        return max(got, default=0) > n and max(got)

    return wait_for(later, timeout, interval=0.05, what=f"the application on a boot after #{n}")


@pytest.mark.parametrize("stub", [True, False], ids=["stub", "rom"])
def test_esptool_over_socket_from_a_running_app(sim, tmp_path, stub):
    d, port, flash = sim
    assert running_app_boot(port) == 1
    no_stub = () if stub else ("--no-stub",)
    image = random.Random(8 + stub).randbytes((256 if stub else 64) * 1024)
    img = tmp_path / "img.bin"
    img.write_bytes(image)

    out = esptool_socket(port, *no_stub, "-b", "921600", "chip-id")
    assert SIM_MAC in out.lower(), out
    out = esptool_socket(port, *no_stub, "-b", "921600", "flash-id")
    assert re.search(r"flash size: 4MB", out, re.I), out
    out = esptool_socket(port, *no_stub, "-b", "921600", "write-flash", "0x10000", str(img))
    assert ("running stub" in out.lower()) == stub, out
    assert_flash_holds(flash, 0x10000, image)
    out = esptool_socket(port, *no_stub, "-b", "921600", "verify-flash", "0x10000", str(img))
    assert "verification successful" in out.lower(), out

    # Each esptool run: the server entered the bootloader once, switched the UART to 921600
    # after the chip's answer (the ROM form too, which esptool scales by the crystal
    # estimate), and reset the chip into its application at the end, back at 115200.
    # Two resets a run (the entry and the app), then the app's 9th boot on the chip's output.
    d.wait_device("sim", lambda v: v["resets"] == 8, why="8 resets")
    d.wait_output("sim", r"app start, boot #9\b")
    # The simulated chip's own trace (it runs in the daemon, so it writes to its log) tells
    # which boots went into download mode; what the server did per session (the baud change,
    # the session's kind) is in the log alone.
    assert len(boots(d, DOWNLOAD_BOOT)) == 4, d.log
    assert len(re.findall(r"baud 115200 -> 921600", d.log)) == 4, d.log
    assert len(re.findall(r"the client speaks raw, esp-aware", d.log)) >= 4, d.log
    assert running_app_boot(port) == max(boots(d, APP_BOOT)) == 9


def test_after_stay_keeps_the_loader_and_never_resets_twice(serialhub, tmp_path):
    """`after = "stay"`: the chip stays in its loader after the session, so the next esptool
    run (as with `--before no-reset` on a local port) finds it there: no second reset."""
    flash = tmp_path / "flash.bin"
    cfg = tmp_path / "serialhub.toml"
    cfg.write_text(f'[[device]]\npath = "sim:{flash}"\nport = 0\nafter = "stay"\n')
    d = serialhub(extra=("--config", str(cfg)))
    port = d.port("sim")
    d.wait_opened("sim")
    for _ in range(2):
        out = esptool_socket(port, "--no-stub", "chip-id")
        assert SIM_MAC in out.lower(), out
    assert d.device("sim")["resets"] == 1  # the entry, and no reset after it
    assert len(boots(d, DOWNLOAD_BOOT)) == 1, d.log
    assert boots(d, APP_BOOT) == [1], d.log


@pytest.mark.parametrize("board", ["sim-usb", "sim-gpio"])
def test_other_esp_boards_over_socket(serialhub, tmp_path, board):
    """ESP32-C3 on its USB-Serial/JTAG port (the entry re-enumerates the device) and a
    GPIO-wired ESP32: the server enters the bootloader through each board's own policy."""
    flash = tmp_path / "flash.bin"
    d = serialhub(f"{board}:{flash}=0")
    port = d.port(board)
    d.wait_opened(board)
    image = random.Random(3).randbytes(32 * 1024)
    img = tmp_path / "img.bin"
    img.write_bytes(image)
    out = esptool_socket(port, "write-flash", "0x10000", str(img))
    assert "hash of data verified" in out.lower(), out
    assert_flash_holds(flash, 0x10000, image)
    d.wait_device(board, lambda v: v["resets"] >= 2, why="the bootloader entry, then the app's reset")
    app_boot_after(d, 1, board)  # the app again, after the download boot
    assert boots(d, DOWNLOAD_BOOT), d.log  # the chip's own trace: that boot was into download mode


# ---------------------------------------------------------------------------------------------
# Not esptool: raw bytes, silent readers, RFC 2217 on the same port, malformed SLIP


def test_raw_client_bytes_are_exact_both_ways(pty_server):
    d, pty, port = pty_server
    every_byte = bytes(range(256)) * 8
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"hello \xff\xc0\xdb" + every_byte)  # first byte not IAC: raw
        assert pty.read_exactly(9 + len(every_byte), 5) == b"hello \xff\xc0\xdb" + every_byte
        pty.write_all(every_byte, 5)
        assert recv_exactly(s, len(every_byte)) == every_byte
    d.wait_client(pty.path, present=False)
    # The session's kind is in the log only (the exact bytes above are the behaviour).
    assert "the client speaks raw" in d.log, d.log


def test_silent_client_gets_held_output_raw_after_the_window(pty_server):
    """A reader that never sends: device output waits 300 ms (the detection window), then
    arrives exactly, without Telnet negotiation, and in order with what follows."""
    d, pty, port = pty_server
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        d.wait_client(pty.path, f"127.0.0.1:{s.getsockname()[1]}")
        t0 = time.monotonic()
        pty.write_all(b"\xff\xfb\x2c boot log \xc0", 5)
        s.settimeout(5)
        first = s.recv(65536)
        waited = time.monotonic() - t0
        pty.write_all(b" and more", 5)
        expected = b"\xff\xfb\x2c boot log \xc0 and more"
        assert first + recv_exactly(s, len(expected) - len(first)) == expected
        assert waited >= 0.25, f"output came {waited:.3f} s after it was written: before the window"
    d.wait_client(pty.path, present=False)
    # Why the session was taken as raw is told in the log only.
    assert "client sent nothing for 300 ms while device output waited: raw session" in d.log, d.log


def test_rfc2217_client_on_the_same_port_is_unaffected(sim):
    """pyserial's rfc2217:// on the auto port: negotiation, settings, and no reset on open."""
    d, port, _ = sim
    with serial.serial_for_url(f"rfc2217://127.0.0.1:{port}", baudrate=115200, timeout=0.5) as ser:
        buf = bytearray()
        deadline = time.monotonic() + 5
        while len(TICK_RE.findall(buf)) < 2 and time.monotonic() < deadline:
            buf += ser.read(ser.in_waiting or 1)
        ticks = TICK_RE.findall(buf)
        assert len(ticks) >= 2 and int(ticks[-1][1]) == 1, bytes(buf[-200:])
    d.wait_client("sim", present=False)
    assert d.device("sim")["resets"] == 0  # no reset on open (nor on close)
    assert "the client speaks rfc2217" in d.log, d.log  # the session's kind: in the log only
    assert boots(d, APP_BOOT) == [1] and not boots(d, DOWNLOAD_BOOT)


def test_malformed_slip_passes_unchanged_on_an_esp_device(serialhub, pty_device, tmp_path):
    """An ESP-aware raw session on a PTY (reset = "esp"): frames that do not parse as loader
    requests or answers, bad escapes, truncated frames and noise pass untouched both ways."""
    pty = pty_device()
    cfg = tmp_path / "serialhub.toml"
    cfg.write_text(f'[[device]]\npath = "{pty.path}"\nport = 0\nreset = "esp"\n')
    d = serialhub(extra=("--config", str(cfg)))
    port = d.port(pty.path)
    assert d.wait_opened(pty.path)["reset"] == "esp"
    garbage = (
        b"noise\xc0\xdb\xc0\x00\x08\xdb\x01\xc0\xc0"       # bad escape inside a SYNC-like start
        + b"\xc0\x00\x02\x03\x00\x00\x00\x00\x00\xdb\xdc\xdb\xdd\x07\xc0"  # another opcode, escapes
        + b"\xc0\x00\x0f\x03\x00\x00\x00\x00\x00\x01\x02\x03\xc0"         # CHANGE_BAUDRATE too short
        + b"\xc0\x01\x08\x02\x00\x00\x00\x00\x00\x00\x00\xc0"             # an answer, from the client
        + b"\xdb\xdb\xc0\xc0\xc0" + bytes(range(256)) * 4
    )
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(garbage)
        assert pty.read_exactly(len(garbage), 5) == garbage
        pty.write_all(garbage, 5)
        assert recv_exactly(s, len(garbage)) == garbage
    d.wait_client(pty.path, present=False)
    assert d.device(pty.path)["resets"] == 0  # no bootloader entry for frames that are not SYNC
    assert "the client speaks raw, esp-aware" in d.log, d.log  # the session's kind: in the log only


def test_socket_url_from_the_portal_and_the_cli(serialhub):
    d = serialhub("sim=0", extra=("--http", "127.0.0.1:0"))
    host = d.portal
    port = d.port("sim")
    with urllib.request.urlopen(f"http://{host}/api/discover", timeout=5) as r:
        dev = json.load(r)["devices"][0]
    assert dev["protocol"] == "auto"
    assert dev["url"] == f"rfc2217://127.0.0.1:{port}"
    assert dev["socket_url"] == f"socket://127.0.0.1:{port}"
    assert dev["esptool"].startswith(f"esptool --port socket://127.0.0.1:{port} --before no-reset -b 921600 write-flash")
    r = subprocess.run([SERIALHUB_BIN, "url", host, "--socket"], capture_output=True, text=True, timeout=20)
    assert (r.returncode, r.stdout) == (0, f"socket://127.0.0.1:{port}\n"), r.stderr
