"""Issue 13: the loader-protocol follower on every device and every client path.

A board whose tty the daemon does not recognise (here a PTY running `serialhub sim --pty …
--bootloader`, served as a plain tty: `reset = "auto"` picks `passthrough`) still gets
esptool's CHANGE_BAUDRATE followed, so `socket://` at 921600 works; with `reset = "none"` the
lines never move but the baud still follows. RFC 2217 sessions get the same follower: esptool
`--before no-reset` over `rfc2217://` from a running application makes the server enter the
bootloader, and the chip is back in its application after the session.
"""

from __future__ import annotations

import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import SimPty, wait_for
from test_esptool import assert_flash_holds, sim  # noqa: F401 (sim: a fixture)
from test_socket import DOWNLOAD_BOOT, app_boot_after, boots, esptool_socket, running_app_boot


@pytest.fixture
def sim_pty(tmp_path):
    """The simulated ESP32 in its ROM loader on a PTY: yields (link, flash file)."""
    chip = SimPty(tmp_path / "ttySIM", tmp_path / "flash.bin", tmp_path / "sim.log")
    try:
        yield chip.link, chip.flash
    finally:
        chip.stop()


def serve_plain_tty(serialhub, tmp_path: Path, link: Path, extra: str = ""):
    cfg = tmp_path / "serialhub.toml"
    cfg.write_text(f'[[device]]\npath = "{link}"\nport = 0\n{extra}')
    d = serialhub(extra=("--config", str(cfg)))
    port = d.port(str(link))
    d.wait_opened(str(link))
    return d, port


def flash(port: int, tmp_path: Path, flash: Path, seed: int) -> str:
    """One esptool run at 921600: write-flash, which verifies the written data's hash. (One
    run: nothing can reset this chip, so its stub stays at 921600 after the session.)"""
    image = random.Random(seed).randbytes(256 * 1024)
    img = tmp_path / "img.bin"
    img.write_bytes(image)
    out = esptool_socket(port, "-b", "921600", "write-flash", "0x10000", str(img))
    assert "hash of data verified" in out.lower(), out
    assert_flash_holds(flash, 0x10000, image)
    return out


def test_socket_at_921600_on_an_unrecognised_tty(serialhub, sim_pty, tmp_path):
    link, flash_file = sim_pty
    d, port = serve_plain_tty(serialhub, tmp_path, link)
    assert d.device(str(link))["reset"] == "passthrough"
    flash(port, tmp_path, flash_file, 13)
    d.wait_client(str(link), present=False)
    # The UART followed the chip to 921600 (the PTY's termios is what the simulated chip
    # paces and garbles by: without the switch nothing would pass). The API shows no baud:
    # that it switched once, and the once-said PTY note, are in the log.
    assert len(re.findall(r"baud 115200 -> 921600", d.log)) == 1, d.log
    # The classic DTR/RTS entry was tried; a PTY has no modem lines, which is said once.
    assert len(re.findall(r"cannot set DTR/RTS", d.log)) <= 1, d.log


def test_reset_none_never_moves_lines_but_the_baud_follows(serialhub, sim_pty, tmp_path):
    link, flash_file = sim_pty
    d, port = serve_plain_tty(serialhub, tmp_path, link, 'reset = "none"\n')
    flash(port, tmp_path, flash_file, 14)
    d.wait_client(str(link), present=False)
    assert d.device(str(link))["resets"] == 0  # neither an entry nor a reset into the app
    assert len(re.findall(r"baud 115200 -> 921600", d.log)) == 1, d.log  # no baud in the API


def test_no_reset_over_rfc2217_from_a_running_app(sim, tmp_path):
    """esptool `--before no-reset --after no-reset` over rfc2217:// (what people use when
    their own reset would disturb a rig): the server enters the bootloader on the SYNC and
    resets the chip into its application when the session ends."""
    d, port, flash = sim
    first = running_app_boot(port)
    image = random.Random(15).randbytes(64 * 1024)
    img = tmp_path / "img.bin"
    img.write_bytes(image)
    cmd = [
        sys.executable, "-m", "esptool", "--port", f"rfc2217://127.0.0.1:{port}",
        "--before", "no-reset", "--after", "no-reset", "-b", "921600",
        "write-flash", "0x10000", str(img),
    ]
    t0 = time.monotonic()
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"exit {r.returncode} after {time.monotonic() - t0:.1f} s:\n{r.stdout}{r.stderr}"
    assert_flash_holds(flash, 0x10000, image)
    # The server's entry on the SYNC and its reset into the app at the session's end.
    d.wait_device("sim", lambda v: v["resets"] == 2, why="2 resets")
    assert re.search(r"the client speaks rfc2217, esp-aware", d.log), d.log  # the kind: log only
    # (`--after no-reset` with the stub running returns the chip to its ROM loader: a second
    # boot into download mode, by esptool's hand.) Back in the application at the end,
    # without anyone asking.
    n = app_boot_after(d, first)
    assert running_app_boot(port) == n


def test_default_reset_over_rfc2217_is_not_doubled(sim, tmp_path):
    """esptool's own reset over rfc2217:// (the server plays it): the follower sees the chip
    in its loader and does not reset it again; esptool's hard reset at the end is its own."""
    d, port, flash = sim
    image = random.Random(16).randbytes(16 * 1024)
    img = tmp_path / "img.bin"
    img.write_bytes(image)
    cmd = [
        sys.executable, "-m", "esptool", "--port", f"rfc2217://127.0.0.1:{port}",
        "write-flash", "0x10000", str(img),
    ]
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert_flash_holds(flash, 0x10000, image)
    # esptool's hard reset at the end (its EN pulse passes through as line changes) boots the
    # application; its entry was played by the server at its word: one reset counted.
    assert running_app_boot(port) == 3  # #1 at power-on, #2 the download boot, #3 the app again
    assert d.device("sim")["resets"] == 1
    assert len(boots(d, DOWNLOAD_BOOT)) == 1, d.log  # the chip's trace: one download boot
    # Who started them is in the log alone: the client, never the server.
    assert "entering the bootloader" not in d.log, d.log
    assert "requested by the server" not in d.log, d.log
