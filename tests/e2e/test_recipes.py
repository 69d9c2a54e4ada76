"""Issue 25: every printed recipe, run as the tool that reads it runs esptool.

Each row of RECIPES is one tool's esptool command line, its shape copied from the tool's own
source (the order, the `--before`/`--after` spellings, `write_flash -z`, the flash options, the
images and their offsets, `@flash_args` files), run with the esptool release that tool bundles,
against `socket://` or `rfc2217://` on a simulated ESP32 of its own:

- PlatformIO's espressif32 6.0-6.11 (`builder/main.py`, `upload_protocol = esptool`, the Arduino
  framework's FLASH_EXTRA_IMAGES; tool-esptoolpy 1.40501.0 = esptool 4.5.1), `--before` from
  `board_upload.before_reset` (default `default_reset`); 6.12/6.13 bundle 4.9/4.11, which
  behave as 4.8.1 here (esptool >= 4.8.0's loader turns a `socket:` port's reset off).
- pioarduino: the same list before June 2025 (esptool 4.8.x), with dashes since (esptool 5.x).
- `idf.py flash` (ESP-IDF 5.x: `project_include.cmake` and `run_serial_tool.cmake`):
  `esptool --chip esp32 -p PORT -b BAUD --before=CONFIG_ESPTOOLPY_BEFORE --after=hard_reset
  write_flash @flash_args`, run in the build directory; esptool 4.5.1 stands for the IDF 5.0-5.2
  environments (esptool older than 4.8), 4.8.1 for the later ones.
- arduino-esp32 3.x's `tools.esptool_py.upload.pattern_args` as arduino-cli runs it with
  `-p socket://…` (an address its discovery does not know is passed through as the serial
  port): with dashes where the core bundles esptool 5.x, underscores before (esptool 4.9.dev,
  4.8.1 here; the first 3.0 releases bundled 4.6, 4.5.1 here: the same reset code, both older
  than 4.8).

Where a combination cannot work (esptool older than 4.8 with `default_reset` on a socket: its
Unix reset ioctls the socket) the row expects that failure, and README names the fix. The rows
run in parallel (each has its own daemon); every test then checks its row: exit status, what
esptool said, every image in the flash file, the application booting again afterwards.

PlatformIO's own monitor (`pio device monitor`, platformio from PyPI in .venv-platformio: `make
platformio`) runs under a pseudo-terminal: it shows the application at 115200 and opening it
resets nothing; without `-b` (monitor_speed's default) it opens at 9600.
"""

from __future__ import annotations

import os
import pty
import random
import re
import select
import signal
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import SERIALHUB_BIN, Daemon
from test_esptool import assert_flash_holds, flash_region
from test_esptool_versions import python_for

ROOT = Path(__file__).resolve().parents[2]
PIO = ROOT / ".venv-platformio" / "bin" / "pio"
APP_START = re.compile(r"sim: app start, boot #(\d+)")

# The images a build leaves, at their offsets (ESP32): random bytes whose first byte is not an
# image header's magic (0xE9), so esptool writes them as they are.
IMAGES = {
    "bootloader": (0x1000, 16 * 1024),
    "partitions": (0x8000, 3 * 1024),
    "boot_app0": (0xE000, 8 * 1024),
    "app": (0x10000, 96 * 1024),
}


# The boards: the chip esptool is told, where its bootloader goes, the flash frequency.
BOARDS = {"sim": ("esp32", 0x1000, "40m"), "sim-usb": ("esp32c3", 0x0, "80m")}


def make_images(dir: Path, seed: int, names: list[str], board: str = "sim") -> dict[str, tuple[int, Path, bytes]]:
    rng = random.Random(seed)
    out = {}
    for name in names:
        offset, size = IMAGES[name]
        if name == "bootloader":
            offset = BOARDS[board][1]
        data = bytes([0]) + rng.randbytes(size - 1)
        path = dir / f"{name}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        out[name] = (offset, path, data)
    return out


# --- the argument lists, as each tool builds them ---------------------------------------------


def platformio(url: str, work: Path, before: str, dashes: bool, board: str) -> tuple[list[str], dict]:
    """platform-espressif32 6.x / pioarduino builder/main.py: UPLOADERFLAGS, the Arduino
    framework's FLASH_EXTRA_IMAGES appended to them, then $ESP32_APP_OFFSET $SOURCE; upload_speed
    460800 (esp32dev's and esp32-c3-devkitm-1's manifests), flash mode dio (qio is passed as
    dio) and the board's frequency."""
    chip, _, freq = BOARDS[board]
    imgs = make_images(work, 25, ["bootloader", "partitions", "boot_app0", "app"], board)
    d = (lambda s: s.replace("_", "-")) if dashes else (lambda s: s)
    argv = ["--chip", chip, "--port", url, "--baud", "460800",
            "--before", before, "--after", d("hard_reset"),
            d("write_flash"), "-z", d("--flash_mode"), "dio", d("--flash_freq"), freq,
            d("--flash_size"), "detect"]
    for name in ("bootloader", "partitions", "boot_app0"):
        argv += [hex(imgs[name][0]), str(imgs[name][1])]
    argv += ["0x10000", str(imgs["app"][1])]
    return argv, imgs


def idf_flash(url: str, work: Path, before: str, dashes: bool, board: str) -> tuple[list[str], dict]:
    """idf.py flash (ESP-IDF 5.x): SERIAL_TOOL (`esptool --chip esp32`) -p $ESPPORT -b $ESPBAUD,
    then SERIAL_TOOL_ARGS (`--before=…;--after=hard_reset;write_flash;@flash_args`), in the
    build directory; flash_args: the flash options, then one "offset file" line per image."""
    build = work / "build"
    names = {"bootloader": "bootloader/bootloader", "app": "hello_world",
             "partitions": "partition_table/partition-table"}
    imgs = {}
    for name, rel in names.items():
        offset, size = IMAGES[name]
        data = bytes([0]) + random.Random(f"idf-{name}").randbytes(size - 1)
        path = build / f"{rel}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        imgs[name] = (offset, path, data)
    (build / "flash_args").write_text(
        "--flash_mode dio --flash_freq 40m --flash_size 2MB\n"
        "0x1000 bootloader/bootloader.bin\n"
        "0x10000 hello_world.bin\n"
        "0x8000 partition_table/partition-table.bin\n"
    )
    argv = ["--chip", "esp32", "-p", url, "-b", "460800",
            f"--before={before}", "--after=hard_reset", "write_flash", "@flash_args"]
    return argv, imgs


def arduino(url: str, work: Path, before: str, dashes: bool, board: str) -> tuple[list[str], dict]:
    """arduino-esp32 3.x platform.txt, tools.esptool_py.upload.pattern_args (no placeholder
    for the reset: `{upload.flags}` and `{upload.erase_cmd}` are empty by default): upload.speed
    921600, flash settings `keep`, bootloader at build.bootloader_addr (0x1000 on the ESP32)."""
    imgs = make_images(work, 3, ["bootloader", "partitions", "boot_app0", "app"])
    d = (lambda s: s.replace("_", "-")) if dashes else (lambda s: s)
    argv = ["--chip", "esp32", "--port", url, "--baud", "921600",
            "--before", before, "--after", d("hard_reset"), d("write_flash"), "-z",
            d("--flash_mode"), "keep", d("--flash_freq"), "keep", d("--flash_size"), "keep"]
    for name in ("bootloader", "partitions", "boot_app0", "app"):
        argv += [hex(imgs[name][0]), str(imgs[name][1])]
    return argv, imgs


@dataclass(frozen=True)
class Recipe:
    id: str
    tool: str
    esptool: str  # the release the tool bundles ("5": the newest 5.x, in .venv)
    shape: object  # one of the functions above
    before: str  # as the tool passes it
    dashes: bool
    url: str  # "socket" or "rfc2217"
    expect: str  # "ok", or "ioctl": esptool's Unix reset fails on the socket before a byte
    board: str = "sim"  # sim: ESP32 with the DTR/RTS circuit; sim-usb: ESP32-C3, USB-Serial/JTAG


RECIPES = [
    Recipe("pio6-socket-default", "espressif32 6.0-6.11", "4.5.1", platformio, "default_reset", False, "socket", "ioctl"),
    Recipe("pio6-socket-no_reset", "espressif32 6.0-6.11 + board_upload.before_reset = no_reset", "4.5.1", platformio, "no_reset", False, "socket", "ok"),
    Recipe("pio6-rfc2217", "espressif32 6.0-6.11", "4.5.1", platformio, "default_reset", False, "rfc2217", "ok"),
    Recipe("pio-4.8-socket", "espressif32 6.12+ / pioarduino (esptool 4.8.x)", "4.8.1", platformio, "default_reset", False, "socket", "ok"),
    Recipe("pio-4.8-rfc2217", "espressif32 6.12+ / pioarduino (esptool 4.8.x)", "4.8.1", platformio, "default_reset", False, "rfc2217", "ok"),
    Recipe("pioarduino-socket", "pioarduino (esptool 5.x)", "5", platformio, "default-reset", True, "socket", "ok"),
    Recipe("pioarduino-socket-no_reset", "pioarduino (esptool 5.x) + board_upload.before_reset = no_reset", "5", platformio, "no_reset", True, "socket", "ok"),
    Recipe("pioarduino-c3-usb-socket", "pioarduino (esptool 5.x), ESP32-C3 on USB-Serial/JTAG", "5", platformio, "default-reset", True, "socket", "ok", "sim-usb"),
    Recipe("pioarduino-c3-usb-rfc2217", "pioarduino (esptool 5.x), ESP32-C3 on USB-Serial/JTAG", "5", platformio, "default-reset", True, "rfc2217", "ok", "sim-usb"),
    Recipe("pioarduino-rfc2217", "pioarduino (esptool 5.x)", "5", platformio, "default-reset", True, "rfc2217", "ok"),
    Recipe("idf5-old-socket-default", "idf.py 5.0-5.2 (esptool < 4.8)", "4.5.1", idf_flash, "default_reset", False, "socket", "ioctl"),
    Recipe("idf5-old-socket-noreset", "idf.py 5.0-5.2 + CONFIG_ESPTOOLPY_BEFORE_NORESET=y", "4.5.1", idf_flash, "no_reset", False, "socket", "ok"),
    Recipe("idf5-old-rfc2217", "idf.py 5.0-5.2 (esptool < 4.8)", "4.5.1", idf_flash, "default_reset", False, "rfc2217", "ok"),
    Recipe("idf5-socket", "idf.py 5.x (esptool 4.8.x)", "4.8.1", idf_flash, "default_reset", False, "socket", "ok"),
    Recipe("idf5-rfc2217", "idf.py 5.x (esptool 4.8.x)", "4.8.1", idf_flash, "default_reset", False, "rfc2217", "ok"),
    Recipe("arduino-esptool5-socket", "arduino-cli + arduino-esp32 3.x with esptool 5.x", "5", arduino, "default-reset", True, "socket", "ok"),
    Recipe("arduino-esptool5-rfc2217", "arduino-cli + arduino-esp32 3.x with esptool 5.x", "5", arduino, "default-reset", True, "rfc2217", "ok"),
    Recipe("arduino-esptool4.9-socket", "arduino-cli + arduino-esp32 3.0.x/3.1.x with esptool 4.9.dev", "4.8.1", arduino, "default_reset", False, "socket", "ok"),
    Recipe("arduino-esptool4.9-rfc2217", "arduino-cli + arduino-esp32 3.0.x/3.1.x with esptool 4.9.dev", "4.8.1", arduino, "default_reset", False, "rfc2217", "ok"),
    Recipe("arduino-esptool4.6-socket", "arduino-cli + arduino-esp32 3.0 with esptool 4.6", "4.5.1", arduino, "default_reset", False, "socket", "ioctl"),
    Recipe("arduino-esptool4.6-rfc2217", "arduino-cli + arduino-esp32 3.0 with esptool 4.6", "4.5.1", arduino, "default_reset", False, "rfc2217", "ok"),
]


# --- running the rows, in parallel -------------------------------------------------------------


@dataclass
class Run:
    daemon: Daemon
    flash: Path
    images: dict
    rc: int | None = None
    out: str = ""
    seconds: float = 0.0
    log_offset: int = 0
    resets_before: int = 0


def _run(recipe: Recipe, run: Run, python: str, work: Path, port: int):
    url = f"{recipe.url}://127.0.0.1:{port}"
    argv, run.images = recipe.shape(url, work, recipe.before, recipe.dashes, recipe.board)
    cwd = work / "build" if recipe.shape is idf_flash else work
    t0 = time.monotonic()
    try:
        r = subprocess.run([python, "-m", "esptool", *argv], cwd=cwd, stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=240)
        run.rc, run.out = r.returncode, r.stdout + r.stderr
    except subprocess.TimeoutExpired as e:
        run.rc, run.out = -1, f"timed out after {e.timeout} s: {e.stdout!r} {e.stderr!r}"
    run.seconds = time.monotonic() - t0
    return run


@pytest.fixture(scope="module")
def runs(request):
    """Start a daemon per selected row, run every row's esptool at once (bounded pool), and
    hand the tests the futures; stop the daemons (each must exit 0, unpanicked) at the end."""
    wanted = [it.callspec.params["recipe"] for it in request.session.items
              if it.module is request.module and hasattr(it, "callspec") and "recipe" in it.callspec.params]
    root = Path(tempfile.mkdtemp(prefix="serialhub-recipes-"))
    daemons: list[Daemon] = []
    futures = {}
    pool = ThreadPoolExecutor(max_workers=12)  # they wait on the (paced) UART, not the CPU
    try:
        # The slow rows (pyserial's RFC 2217 client, older esptool slowest) start first.
        for recipe in sorted(wanted, key=lambda r: (r.url != "rfc2217", r.esptool != "4.5.1")):
            work = root / recipe.id
            work.mkdir()
            flash = work / "flash.bin"
            try:
                python = python_for(recipe.esptool)
            except pytest.skip.Exception as e:  # that release is not installed
                futures[recipe.id] = e
                continue
            d = Daemon(["serve", "--bind", "127.0.0.1", "--no-hotplug", "--http", "127.0.0.1:0",
                        "--state", str(work / "ports.json"), "--device", f"{recipe.board}:{flash}=0"])
            daemons.append(d)
            port = d.port(recipe.board)
            d.wait_opened(recipe.board)
            d.wait_output(recipe.board, APP_START.pattern)  # the application runs: boot #1
            run = Run(d, flash, {}, log_offset=d.output(recipe.board)["total"],
                      resets_before=d.device(recipe.board)["resets"])
            futures[recipe.id] = pool.submit(_run, recipe, run, python, work, port)
        yield futures
    finally:
        pool.shutdown(wait=True)
        problems = []
        for d in daemons:
            rc = d.stop()
            if rc != 0 or "panicked" in d.log:
                problems.append(f"serialhub exited {rc}; log:\n{d.log}")
        if problems:
            pytest.fail("\n".join(problems), pytrace=False)


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.id for r in RECIPES])
def test_recipe(runs, recipe):
    if isinstance(runs[recipe.id], pytest.skip.Exception):
        pytest.skip(str(runs[recipe.id]))
    run = runs[recipe.id].result(timeout=300)
    d, out = run.daemon, run.out
    what = f"{recipe.tool}, esptool {recipe.esptool}, {recipe.url}:// ({run.seconds:.1f} s)"
    if recipe.expect == "ioctl":
        # esptool < 4.8 plays its Unix reset (TIOCMSET) on the socket and dies before a byte.
        assert run.rc != 0, f"{what}: expected to fail, exited 0:\n{out}"
        assert "Inappropriate ioctl for device" in out, f"{what}:\n{out}"
        offset, _, data = run.images["app"]
        assert not run.flash.exists() or flash_region(run.flash, offset, len(data)) != data
        assert d.device(recipe.board)["resets"] == run.resets_before, "the board was reset"
        return
    assert run.rc == 0, f"{what}: exited {run.rc}:\n{out}"
    for offset, _, data in run.images.values():
        assert_flash_holds(run.flash, offset, data)
    # esptool checked every image's MD5 after writing it (4.x: "Hash of data verified.").
    assert len(re.findall(r"Hash of data verified", out)) == len(run.images), out
    if recipe.url == "socket" and recipe.before.replace("-", "_") == "default_reset":
        # esptool >= 4.8 turns its reset off on a socket (the server enters the bootloader).
        assert "not possible to reset the chip over a TCP socket" in out, out
    # The board runs its application again (the server's reset, or esptool's hard reset).
    # (Its first line may fall in the session's end: its ticks name the boot.)
    m = d.wait_output(recipe.board, r"sim: app [^\r\n]*boot #([2-9]|\d\d+)\r\n", since=run.log_offset, timeout=15)
    assert int(m.group(1)) >= 2, m.group(0)


# --- PlatformIO's own monitor -------------------------------------------------------------------


def pio_monitor(url: str, *args: str, until, timeout: float, core: Path) -> bytes:
    """`pio device monitor -p URL ARGS` in a pseudo-terminal (miniterm wants a console); its
    output until `until(output)` holds or `timeout` passes; then Ctrl-C, as a user quits."""
    if not PIO.exists():
        pytest.skip("platformio is not installed: run `make platformio`")
    m, s = pty.openpty()
    env = dict(os.environ, PLATFORMIO_CORE_DIR=str(core), PLATFORMIO_SETTING_ENABLE_TELEMETRY="No",
               PLATFORMIO_SETTING_CHECK_PLATFORMIO_INTERVAL="9999", TERM="dumb")
    p = subprocess.Popen([str(PIO), "device", "monitor", "-p", url, *args], stdin=s, stdout=s,
                         stderr=s, env=env, cwd=core, start_new_session=True)
    os.close(s)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while not until(out) and time.monotonic() < deadline and p.poll() is None:
            r, _, _ = select.select([m], [], [], 0.2)
            if r:
                try:
                    out += os.read(m, 65536)
                except OSError:
                    break
        os.write(m, b"\x03")  # Ctrl-C, as a user quits; then SIGTERM if it lingers
        for sig in (None, signal.SIGTERM):
            if sig is not None and p.poll() is None:
                os.killpg(p.pid, sig)
            # Drain while it quits: a monitor blocked on a full terminal reads no keys.
            quit_by = time.monotonic() + 5
            while p.poll() is None and time.monotonic() < quit_by:
                r, _, _ = select.select([m], [], [], 0.2)
                if r:
                    try:
                        os.read(m, 65536)
                    except OSError:
                        break
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(5)
        os.close(m)
    return out


def test_platformio_monitor_shows_the_app_and_resets_nothing(serialhub, tmp_path):
    d = serialhub("sim=0")
    port = d.port("sim")
    d.wait_opened("sim")
    boot = int(d.wait_output("sim", APP_START.pattern).group(1))
    resets = d.device("sim")["resets"]
    url = f"rfc2217://127.0.0.1:{port}"
    ticks = re.compile(rb"sim: app tick (\d+), boot #(\d+)")
    out = pio_monitor(url, "-b", "115200", until=lambda o: len(ticks.findall(o)) >= 5,
                      timeout=30, core=tmp_path)
    assert f"--- Terminal on {url} | 115200 8-N-1".encode() in out, out
    seen = ticks.findall(out)
    assert len(seen) >= 5, out
    # The same boot, ticking on, and no reset counted: opening it moved nothing.
    assert {int(b) for _, b in seen} == {boot}, seen
    nums = [int(t) for t, _ in seen]
    assert nums == sorted(nums), nums
    assert d.device("sim")["resets"] == resets
    assert b"app start" not in out, out


def test_platformio_monitor_without_speed_opens_at_9600(serialhub, tmp_path):
    """monitor_speed's default (9600) is what pyserial's RFC 2217 client sends: the recipe must
    say `monitor_speed = 115200`."""
    d = serialhub("sim=0")
    port = d.port("sim")
    d.wait_opened("sim")
    url = f"rfc2217://127.0.0.1:{port}"
    head = f"--- Terminal on {url} | 9600 8-N-1".encode()
    # Until 300 bytes after the header: the application's output at the wrong baud.
    out = pio_monitor(url, until=lambda o: head in o and len(o.split(head, 1)[1]) > 300,
                      timeout=30, core=tmp_path)
    assert head in out, out
    after = out.split(head, 1)[1]
    assert len(after) > 300 and b"sim: app" not in after, after[:400]


# --- discovery in a container ---------------------------------------------------------------------


def test_discover_without_host_says_what_to_do_in_a_container():
    """`serialhub discover` with no host where no mDNS answer can come (a network namespace of
    its own, as a container on a bridge network is to the LAN's multicast): exit 1, and the
    message names SERIALHUB_HOST and --network host."""
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
        pytest.skip("unshare -n is not permitted here (needs root)")
    env = {k: v for k, v in os.environ.items() if k not in ("SERIALHUB_HOST", "PI_HOST", "ESP32_PORT")}
    t0 = time.monotonic()
    r = subprocess.run(["unshare", "-n", "sh", "-c", f"ip link set lo up; exec {SERIALHUB_BIN} discover"],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30, env=env)
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert r.stdout == "", r.stdout
    for needle in ("no serialhub answered", "Docker bridge network", "SERIALHUB_HOST=", "--network host"):
        assert needle in r.stderr, r.stderr
    assert time.monotonic() - t0 < 10
