"""Issue 13: espflash — the Rust world's flasher, which has no network port support — reaches
a remote board through `serialhub pty`, with only its "no reset" options: the server enters
the bootloader on its SYNC, follows its CHANGE_BAUDRATE to 921600, and when espflash closes
the link the chip goes back to its application, which a monitor on the link then sees boot.

espflash (crates.io, built by `make espflash` into target/espflash) only opens ports it finds
in /sys/class/tty, and a pty never is one (espflash issue #823, open; it fails with "The
serial port … could not be found" before sending a byte). So the test runs it in a private
mount namespace in which the pty link is a serial port: what espflash then does on the wire
is exactly what it does on a real port. Root only, as in CI.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import wait_for
from test_client import finish, spawn

ESPFLASH = Path(__file__).resolve().parents[2] / "target" / "espflash" / "bin" / "espflash"

# Inside `unshare -m`: a /sys/class/tty in which NAME is a PCI serial port, and /dev/NAME bound
# to the pty; then espflash.
AS_SERIAL_PORT = r"""
set -e
name="$1"; pts="$2"; shift 2
fake=$(mktemp -d)
mkdir -p "$fake/$name/device" "$fake/pci"
ln -s "$fake/pci" "$fake/$name/device/subsystem"
mount --bind "$fake" /sys/class/tty
mount --bind "$pts" "/dev/$name"
exec "$@"
"""


def espflash(link: Path, *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    if os.geteuid() != 0:
        pytest.skip("espflash on a pty needs a mount namespace (root; CI is root)")
    if not ESPFLASH.exists():
        pytest.skip("espflash is not installed: run `make espflash`")
    name = f"ttySH{os.getpid()}"
    placeholder = Path("/dev") / name
    placeholder.touch()  # the bind mount's target (visible outside the namespace: removed below)
    try:
        cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c", AS_SERIAL_PORT, "sh", name,
               os.path.realpath(link), str(ESPFLASH), *[a.replace("PORT", f"/dev/{name}") for a in args]]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                              env={**os.environ, "HOME": str(cwd)}, stdin=subprocess.DEVNULL)
    finally:
        placeholder.unlink(missing_ok=True)


def test_espflash_writes_and_verifies_through_the_pty_link_then_a_monitor_sees_the_app(serialhub, tmp_path):
    import serial

    flash = tmp_path / "flash.bin"
    d = serialhub(f"sim:{flash}=0")
    port = d.port("sim")
    d.wait_opened("sim")
    cursor = d.output("sim")["next"]
    link = tmp_path / "ttyESP32"
    p, _, _, err = spawn("pty", f"rfc2217://127.0.0.1:{port}", "--link", str(link))
    image = tmp_path / "app.bin"
    data = os.urandom(256 * 1024)
    image.write_bytes(data)
    try:
        err.wait(rb"bridged to")
        t0 = time.monotonic()
        r = espflash(link, "write-bin", "--skip-update-check", "--port", "PORT", "--before", "no-reset",
                     "--after", "no-reset", "--chip", "esp32", "--baud", "921600", "0x10000", str(image),
                     cwd=tmp_path)
        took = time.monotonic() - t0
        assert r.returncode == 0, r.stdout + r.stderr
        assert flash.read_bytes()[0x10000 : 0x10000 + len(data)] == data
        # espflash closed the link: the session ends, the chip runs its application again.
        err.wait(rb"closed it; new session")
        # The server's two resets: the bootloader entry for it, the application at the end
        # (under way: the monitor opened now sees that boot from its first line).
        d.wait_device("sim", lambda v: v["resets"] == 2, why="2 resets")
        ser = serial.Serial(str(link), 115200, timeout=5)
        try:
            got = b""
            deadline = time.monotonic() + 10
            while not re.search(rb"app start, boot #\d+", got) and time.monotonic() < deadline:
                got += ser.read(4096)
            m = re.search(rb"app start, boot #(\d+)", got)
            assert m, got[-300:]
            latest = max(int(b) for b in re.findall(r"app start, boot #(\d+)", d.output("sim", cursor)["data"]))
            assert int(m.group(1)) == latest > 1, (got[-300:], latest)
            # It followed espflash's baud change: the API shows no baud, the log does.
            assert "baud 115200 -> 921600" in d.log, d.log
        finally:
            ser.close()
        # Unchanged data is skipped by espflash (its MD5 check against the chip's).
        r = espflash(link, "write-bin", "--skip-update-check", "--port", "PORT", "--before", "no-reset",
                     "--after", "no-reset", "--chip", "esp32", "0x10000", str(image), cwd=tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr
        print(f"espflash write-bin 256 KiB at 921600 through the pty link: {took:.1f} s")
    finally:
        assert finish(p) == 0
