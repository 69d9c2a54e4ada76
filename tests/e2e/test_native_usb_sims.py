"""Issue 22, part 1: the simulated native-USB chips are as strict as the real ones, shown
with esptool on `serialhub sim --board BOARD --pty LINK` — a port whose USB VID/PID the
host cannot read, like `rfc2217://` or `socket://`.

esptool 4.x tells USB-Serial/JTAG and USB-OTG apart by reading the ROM's `UARTDEV_BUF_NO`,
so it disables the RTC watchdog (USB-Serial/JTAG) and keeps its blocks at 0x800 (USB-OTG)
on any port; esptool 5.3+ decides from the local port's VID/PID (`uses_usb_jtag_serial`,
`uses_usb_otg` in `loader.py`) and so does neither here:

- sim-usb (ESP32-C3) and sim-s3-usb (ESP32-S3): the RTC watchdog the bootloader armed (9 s,
  ESP-IDF's `CONFIG_BOOTLOADER_WDT_TIME_MS`) survives the USB-Serial/JTAG reset into
  download mode and resets the chip part-way through a long write (every 5.x); the PTY
  goes away and comes back (a ttyACM re-enumerating). The sim models no flash
  erase/program time, so the write is long enough (3.9 MiB) to outlast 9 s even at the USB
  CDC's full byte rate (400 kB/s: 10 s).
- sim-otg (ESP32-S3 on USB-OTG): the ROM's CDC takes no data block past 0x800 (esptool's
  `USB_RAM_BLOCK`), so 5.3.1's 0x1800-byte stub upload (ESP_RAM_BLOCK) gets no answer.
  5.6 caps the ROM's blocks at 0x800 also when the port has no VID/PID
  (`use_usb_otg_block`: "because USB-OTG can't be ruled out then"), and the stub takes big
  blocks, so 5.6 passes there.

5.3.1 lives in `.venv-esptool/5.3.1` (`make esptools`), the newest 5.x in `.venv`. The
esptools run against sims of their own at once (independent PTYs and flash files).
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import SimPty
from test_esptool import assert_flash_holds, flash_region

ROOT = Path(__file__).resolve().parents[2]
OFFSET = 0x10000
# Up to 64 KiB short of the 4 MiB flash's end.
SIZE = 0x3F0000 - OFFSET


def python_for(version: str) -> str:
    if version == "5":
        return sys.executable
    py = ROOT / ".venv-esptool" / version / "bin" / "python"
    if not py.exists():
        pytest.skip(f"esptool {version} is not installed: run `make esptools`")
    return str(py)


def is_5(version: str) -> bool:
    return version == "5" or version.startswith("5.")


def esptool(version: str, port: Path, *args: str, timeout: float = 150) -> subprocess.CompletedProcess:
    # Staying in the stub: 4.8.1's `--after no_reset` soft-resets the stub back to the ROM
    # and then trips over the ROM's banner (on every sim board, `sim` too).
    if is_5(version):
        args = ("--before", "no-reset", "--after", "no-reset-stub", *args)
    else:
        args = ("--before", "no_reset", "--after", "no_reset_stub",
                *(a.replace("-", "_") if a == "write-flash" else a for a in args))
    cmd = [python_for(version), "-m", "esptool", "--port", str(port), "--baud", "115200", *args]
    return subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)


def esptool_version() -> tuple[int, ...]:
    from importlib.metadata import version

    return tuple(int(p) for p in version("esptool").split(".")[:2])


def run_case(tmp: Path, board: str, version: str, image: Path):
    d = tmp / f"{board}-{version}"
    d.mkdir()
    sim = SimPty(d / "link", d / "flash.bin", d / "sim.log", board=board)
    try:
        t0 = time.monotonic()
        r = esptool(version, d / "link", "write-flash", hex(OFFSET), str(image))
        return sim, r, time.monotonic() - t0
    finally:
        sim.stop()


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> tuple[Path, bytes]:
    data = random.Random(22).randbytes(SIZE)  # incompressible: the write takes its time
    path = tmp_path_factory.mktemp("img") / "img.bin"
    path.write_bytes(data)
    return path, data


def assert_passed(case, board: str, version: str, data: bytes):
    sim, r, took = case
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"esptool {version} on {board} exited {r.returncode} after {took:.1f} s:\n{out}"
    assert "Hash of data verified" in out, out
    assert_flash_holds(sim.flash, OFFSET, data)
    log = sim.log_path.read_text(errors="replace")
    assert "re-enumerated" not in log, log


def assert_failed(case, board: str, version: str, data: bytes):
    sim, r, took = case
    out = r.stdout + r.stderr
    log = sim.log_path.read_text(errors="replace")
    assert r.returncode != 0, f"esptool {version} on {board} passed in {took:.1f} s:\n{out}\nsim:\n{log}"
    assert "Hash of data verified" not in out
    got = flash_region(sim.flash, OFFSET, SIZE) if sim.flash.exists() else b""
    assert got != data, "the image must not have been written whole"
    if board == "sim-otg":
        # The stub upload's first 0x1800-byte block never got an answer: no flash written.
        assert "re-enumerated" not in log, log
        assert "stub" in out.lower(), out
        assert set(got) <= {0xFF}, "nothing written"
    else:
        # The RTC watchdog reset the chip part-way: the port went away and came back.
        assert "RTC watchdog reset" in log, log
        written = next((i for i, (a, b) in enumerate(zip(got, data)) if a != b), 0)
        assert 0 < written < SIZE, f"{written:#x} bytes written before the reset"
        assert 8 <= took, f"failed after {took:.1f} s, before the 9 s watchdog"


# (board, esptool versions that must fail there, versions that must pass)
CASES = [
    ("sim-usb", ["5", "5.3.1"], ["4.8.1"]),
    ("sim-s3-usb", ["5", "5.3.1"], ["4.8.1"]),
    ("sim-otg", ["5.3.1"], ["4.8.1", "5"]),
]


@pytest.mark.parametrize("board,fail,pass_", CASES, ids=[c[0] for c in CASES])
def test_which_esptools_flash_a_native_usb_sim_over_a_pty(board, fail, pass_, tmp_path, image):
    assert esptool_version() >= (5, 3), "the negative control needs esptool >= 5.3 (VID/PID detection)"
    path, data = image
    # 5.3.1 is new in `make esptools`: without it the other esptools still run.
    missing = [v for v in fail + pass_ if v != "5" and not (ROOT / ".venv-esptool" / v).exists()]
    if missing:
        warnings.warn(f"esptool {', '.join(missing)} not installed (make esptools): not run on {board}")
    fail = [v for v in fail if v not in missing]
    pass_ = [v for v in pass_ if v not in missing]
    versions = [*fail, *pass_]
    if not versions:
        pytest.skip(f"none of the esptools for {board} is installed (make esptools)")
    with ThreadPoolExecutor(len(versions)) as pool:
        cases = dict(zip(versions, pool.map(lambda v: run_case(tmp_path, board, v, path), versions)))
    for v in pass_:
        assert_passed(cases[v], board, v, data)
    for v in fail:
        assert_failed(cases[v], board, v, data)


def test_in_daemon_the_server_turns_the_watchdog_off_for_esptool_5(serialhub, tmp_path, image):
    """The same long write over `rfc2217://` onto the in-daemon `sim-usb` (issue 22): esptool
    5.x cannot see the port's VID/PID, but the server knows the port is USB-Serial/JTAG and
    turns the RTC watchdog off itself once the ROM answers the SYNC, between two of esptool's
    commands — so the write that a PTY cuts short above completes and verifies, and the chip
    is never reset by its watchdog."""
    assert esptool_version() >= (5, 3)
    path, data = image
    flash = tmp_path / "flash.bin"
    d = serialhub(f"sim-usb:{flash}=0", env={"RUST_LOG": "debug"})
    port = d.port("sim-usb")
    d.wait_opened("sim-usb")
    url = f"rfc2217://127.0.0.1:{port}"
    cmd = [python_for("5"), "-m", "esptool", "--port", url, "--after", "no-reset-stub",
           "write-flash", hex(OFFSET), str(path)]
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=150)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Hash of data verified" in r.stdout, r.stdout
    assert_flash_holds(flash, OFFSET, data)
    # What the server did, said at debug; the chip never reset by its watchdog.
    assert "turned off the ESP32-C3's RTC watchdog" in d.log, d.log[-3000:]
    assert "RTC watchdog reset" not in d.log, d.log[-3000:]
