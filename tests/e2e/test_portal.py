"""The portal (issue 5): discovery API, metrics and web page, against the running binary.

Real clients only: curl and Python's urllib for the API, pyserial for the URLs it hands out,
and Debian's headless chromium for the page (its JavaScript renders the device table; a
click on a reset button restarts the simulated board's application). The JSON shapes are
checked against the old Python portal's field lists (reference/anchors.md §4.1).
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import select
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import serial

from conftest import REPO, run_cli, wait_for

# The old portal's fields (anchors.md §4.1): present, same meaning, never renamed.
OLD_DEVICE_FIELDS = {"tty", "product", "serial", "port", "running"}
OLD_DISCOVER_FIELDS = {"url", "port", "product", "serial", "tty"}
NEW_DEVICE_FIELDS = {
    "key", "key_kind", "name", "vid", "pid", "manufacturer", "usb_path", "reset", "protocol",
    "state", "client", "bytes_to_device", "bytes_to_client", "connects", "resets", "url",
    "url_ign_set_control", "socket_url", "esptool", "idf", "platformio", "arduino_cli",
}
SIM_KEY = "name:sim"


class Portal:
    """A daemon with the portal on an OS-picked 127.0.0.1 port: a simulated ESP32 and,
    optionally, PTY devices."""

    def __init__(self, daemon, pty=None):
        self.daemon = daemon
        assert daemon.ready()["portal"].startswith("127.0.0.1:")
        self.port = daemon.portal_port
        self.base = f"http://127.0.0.1:{self.port}"
        self.sim_port = daemon.port("sim")
        self.pty = pty
        if pty is not None:
            self.pty_port = daemon.port(pty.path)

    def request(self, method: str, path: str, body=None, headers=None, timeout: float = 10.0):
        """(status, headers, parsed JSON or text) via urllib; POSTs as JSON unless told."""
        if method == "POST":
            headers = {"Content-Type": "application/json", **(headers or {})}
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                status, hdrs, raw = r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            status, hdrs, raw = e.code, e.headers, e.read()
        ctype = hdrs.get("Content-Type", "")
        return status, hdrs, (json.loads(raw) if ctype.startswith("application/json") else raw.decode())

    def get(self, path: str):
        status, _, v = self.request("GET", path)
        assert status == 200, (path, status, v)
        return v

    def post(self, path: str, body=None):
        return self.request("POST", path, body if body is not None else b"")

    def device(self, key: str = SIM_KEY) -> dict:
        return self.get("/api/devices/" + urllib.request.quote(key, safe=""))

    def log(self, key: str = SIM_KEY, since: int = 0) -> dict:
        return self.get("/api/devices/" + urllib.request.quote(key, safe="") + f"/log?since={since}")


def curl(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed (apt-get install curl)")
    return subprocess.run(["curl", "-sS", *args], capture_output=True, text=True, timeout=timeout)


JSON = "Content-Type: application/json"


def curl_json(*args: str) -> tuple[int, dict]:
    """curl, returning (status, JSON body)."""
    r = curl("-w", "\n%{http_code}", *args)
    assert r.returncode == 0, r.stderr
    body, _, code = r.stdout.rpartition("\n")
    return int(code), json.loads(body)


@pytest.fixture
def portal(serialhub, pty_device, tmp_path):
    pty = pty_device()
    # A name of the lab's DNS the portal answers to (any other Host than the machine's own
    # names and addresses gets 421: test_security_http.py).
    cfg = tmp_path / "serialhub.toml"
    cfg.write_text('[access]\nhosts = ["bench-pi.example"]\n')
    d = serialhub("sim=0", f"{pty.path}=0", extra=("--config", str(cfg), "--http", "127.0.0.1:0"))
    return Portal(d, pty)


def boots(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"app start, boot #(\d+)", text)]


# ---------------------------------------------------------------------------------------------
# Compatible endpoints


def test_info_with_curl(portal):
    status, info = curl_json(portal.base + "/api/info")
    assert status == 200
    assert re.fullmatch(r"\d+\.\d+\.\d+\.\d+", info["ip"]), info
    assert info["version"] and info["hostname"] is not None
    assert isinstance(info["uptime"], int)
    assert (info["devices"], info["running"], info["connected"]) == (2, 2, 0)


def test_devices_and_discover_keep_the_old_shapes(portal):
    status, devs = curl_json(portal.base + "/api/devices")
    assert status == 200 and set(devs) == {"devices"}
    assert len(devs["devices"]) == 2
    for d in devs["devices"]:
        assert OLD_DEVICE_FIELDS <= set(d), d
        assert NEW_DEVICE_FIELDS <= set(d), NEW_DEVICE_FIELDS - set(d)
        assert isinstance(d["port"], int) and d["running"] is True
        assert isinstance(d["product"], str) and isinstance(d["serial"], str)
        assert d["protocol"] == "auto"
        assert d["url"] == f"rfc2217://127.0.0.1:{d['port']}", d["url"]
        assert d["url_ign_set_control"] == d["url"] + "?ign_set_control"
        assert d["socket_url"] == f"socket://127.0.0.1:{d['port']}", d["socket_url"]
        # Flashing goes over socket:// on every device (the server follows the loader
        # protocol everywhere), with esptool's reset off in the form each tool takes.
        flash = d["socket_url"]
        # (Each recipe is run as its tool runs it in test_recipes.py.)
        assert d["esptool"].startswith(f"esptool --port {flash} --before no-reset -b 921600 write-flash 0x10000 app.bin   # ")
        assert (f"upload_port = {flash}\nupload_speed = 921600\nboard_upload.before_reset = no_reset\n"
                f"monitor_port = {d['url']}\nmonitor_speed = 115200\n") in d["platformio"], d["platformio"]
        assert f"\nidf.py -p {flash} -b 921600 flash && idf.py -p {d['url']} monitor   # " in d["idf"], d["idf"]
        assert d["arduino_cli"].endswith(f"\narduino-cli upload -p {flash} --fqbn esp32:esp32:esp32"), d["arduino_cli"]
    by_tty = {d["tty"]: d for d in devs["devices"]}
    sim, pty = by_tty["sim"], by_tty[portal.pty.path]
    assert (sim["port"], pty["port"]) == (portal.sim_port, portal.pty_port)
    assert (sim["key"], sim["key_kind"], sim["reset"], sim["state"]) == (SIM_KEY, "device-name", "esp", "idle")
    assert pty["vid"] is None and pty["usb_path"] is None  # a PTY has no USB identity
    status, disc = curl_json(portal.base + "/api/discover")
    assert status == 200 and set(disc) == {"devices"}
    for d in disc["devices"]:
        assert OLD_DISCOVER_FIELDS <= set(d)
        assert "?" not in d["url"]  # pyserial rejects unknown URL options
    assert sorted(d["port"] for d in disc["devices"]) == sorted([portal.sim_port, portal.pty_port])


def test_url_host_follows_the_host_header(portal):
    _, devs = curl_json("-H", "Host: bench-pi.example:8080", portal.base + "/api/devices")
    assert devs["devices"][0]["url"].startswith("rfc2217://bench-pi.example:")
    _, devs = curl_json("-H", "Host: localhost:8080", portal.base + "/api/discover")
    assert devs["devices"][0]["url"].startswith("rfc2217://localhost:")  # the client is local too


def test_discover_urls_open_with_pyserial_and_show_the_client(portal):
    disc = portal.get("/api/discover")["devices"]
    sim = next(d for d in disc if d["key"] == SIM_KEY)
    for url in (sim["url"], sim["url_ign_set_control"]):
        with serial.serial_for_url(url, baudrate=115200, timeout=1) as s:
            d = wait_for(lambda: (d := portal.device())["client"] and d, 10, what="client shown")
            assert d["state"] == "connected"
            assert re.fullmatch(r"127\.0\.0\.1:\d+", d["client"]["addr"])
            assert d["client"]["since"] <= time.time() + 1
            assert s.read_until(b"boot #", 200)  # the app's tick lines reach the client
        wait_for(lambda: portal.device()["client"] is None, 10, what="client gone")
    d = portal.device()
    assert d["connects"] == 2 and d["bytes_to_client"] > 0


def test_start_stop_compatible_commands(portal):
    tty = portal.pty.path
    status, r = curl_json("-X", "POST", "-H", JSON, "-d", json.dumps({"tty": tty}), portal.base + "/api/stop")
    assert status == 200 and r["success"] is True and isinstance(r["message"], str), r
    dev = next(d for d in portal.get("/api/devices")["devices"] if d["tty"] == tty)
    assert dev["running"] is False and dev["state"] == "disabled"
    assert tty not in [d["tty"] for d in portal.get("/api/discover")["devices"]]
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", portal.pty_port), timeout=2).close()
    status, r = curl_json("-X", "POST", "-H", JSON, "-d", json.dumps({"tty": tty}), portal.base + "/api/start")
    assert status == 200 and r["success"] is True, r
    dev = wait_for(lambda: next(d for d in portal.get("/api/devices")["devices"] if d["tty"] == tty and d["running"]),
                   10, what="restarted")
    # Served again (port 0 in the test's --device lets the OS pick a new port).
    socket.create_connection(("127.0.0.1", dev["port"]), timeout=2).close()

    status, r = curl_json("-X", "POST", "-H", JSON, portal.base + "/api/stop-all")
    assert status == 200 and r["success"] is True and len(r["messages"]) == 2, r
    assert portal.get("/api/discover")["devices"] == []
    status, r = curl_json("-X", "POST", "-H", JSON, portal.base + "/api/start-all")
    assert status == 200 and r["success"] is True and len(r["messages"]) == 2, r
    assert len(portal.get("/api/discover")["devices"]) == 2

    status, _, r = portal.post("/api/start", {})
    assert (status, r) == (400, {"success": False, "error": "Missing tty"})
    status, _, r = portal.post("/api/stop", {"tty": "/dev/ttyNOPE"})
    assert status == 404 and r["success"] is False and "ttyNOPE" in r["error"], r


# ---------------------------------------------------------------------------------------------
# Per-device endpoints


def test_device_by_key_tty_and_name(portal):
    assert portal.device(SIM_KEY)["port"] == portal.sim_port
    assert portal.device(portal.pty.path)["port"] == portal.pty_port  # /dev/pts/N, URL-encoded
    status, r = curl_json(portal.base + "/api/devices/name%3Asim")
    assert status == 200 and r["key"] == SIM_KEY
    status, _, r = portal.request("GET", "/api/devices/serial%3Anope")
    assert status == 404 and "serial:nope" in r["error"]


def test_reset_via_the_api_restarts_the_simulated_app(portal):
    first = wait_for(lambda: boots(portal.log()["data"]), 10, what="first boot in the log")
    n = max(first)
    cursor = portal.log()["next"]
    status, r = curl_json("-X", "POST", "-H", JSON, "-d", '{"to": "app"}',
                          portal.base + "/api/devices/name%3Asim/reset")
    assert status == 200 and r["success"] is True, r
    wait_for(lambda: n + 1 in boots(portal.log(since=cursor)["data"]), 10, what=f"boot #{n + 1}")
    assert portal.device()["resets"] == 1

    cursor = portal.log()["next"]
    status, _, r = portal.post("/api/devices/name%3Asim/reset", {"to": "bootloader"})
    assert status == 200 and r["success"] is True, r
    wait_for(lambda: "waiting for download" in portal.log(since=cursor)["data"], 10, what="ROM download mode")
    cursor = portal.log()["next"]
    status, _, r = portal.post("/api/devices/name%3Asim/reset", {"to": "app"})
    assert status == 200
    # The simulator counts every boot, the one into download mode too.
    wait_for(lambda: any(b > n + 1 for b in boots(portal.log(since=cursor)["data"])), 10, what="the app again")
    assert portal.device()["resets"] == 3


def test_disconnect_closes_the_client(portal):
    with serial.serial_for_url(f"rfc2217://127.0.0.1:{portal.sim_port}", timeout=0.2) as s:
        wait_for(lambda: portal.device()["client"], 10, what="client")
        status, _, r = portal.post("/api/devices/name%3Asim/disconnect")
        assert status == 200 and r["success"] is True, r
        wait_for(lambda: portal.device()["client"] is None, 10, what="client closed")
        assert portal.device()["state"] == "idle"


def test_log_follows_a_cursor(portal):
    wait_for(lambda: "app tick 3," in portal.log()["data"], 10, what="a few tick lines")
    whole = portal.log()
    assert whole["from"] == 0 and whole["next"] == len(whole["data"].encode())
    assert whole["data"].startswith("ets ")  # the boot banner from power-on, kept without a client
    later = wait_for(lambda: (r := portal.log(since=whole["next"]))["data"] and r, 10, what="new output")
    assert later["from"] == whole["next"] and later["next"] > whole["next"]
    assert not later["data"].startswith("ets ")  # only what came after the cursor
    assert portal.log(since=10**12)["data"] == ""
    status, _, r = portal.request("GET", "/api/devices/name%3Asim/log?since=abc")
    assert status == 400 and "since" in r["error"]


def test_metrics_in_prometheus_text_format(portal):
    with serial.serial_for_url(f"rfc2217://127.0.0.1:{portal.sim_port}", timeout=1) as s:
        s.read_until(b"boot #", 200)
        r = curl("-i", portal.base + "/metrics")
    assert r.returncode == 0
    head, _, text = r.stdout.replace("\r\n", "\n").partition("\n\n")
    assert "Content-Type: text/plain; version=0.0.4" in head
    labels = f'key="{SIM_KEY}",name="sim",tty="sim",port="{portal.sim_port}"'
    assert f"serialhub_device_connects_total{{{labels}}} 1\n" in text
    assert f"serialhub_device_client_connected{{{labels}}} 1\n" in text
    assert f'serialhub_device_state{{{labels},state="connected"}} 1\n' in text
    assert f'serialhub_device_state{{{labels},state="idle"}} 0\n' in text
    assert re.search(rf"serialhub_device_bytes_to_client_total\{{{re.escape(labels)}\}} [1-9]\d*\n", text)
    assert re.search(r"^process_resident_memory_bytes [1-9]\d*$", text, re.M)
    assert re.search(r"^serialhub_uptime_seconds [0-9.]+$", text, re.M)
    for line in text.splitlines():  # every sample line is `name{labels} value` or `name value`
        assert line.startswith("#") or re.fullmatch(r'[a-z_]+(\{[^}]*\})? [0-9.e+-]+', line), line


# ---------------------------------------------------------------------------------------------
# Errors, limits, concurrency


def test_errors_are_json_with_the_right_status(portal):
    cases = [
        ("GET", "/nope", None, 404),
        ("GET", "/api/devices/name%3Anope", None, 404),
        ("GET", "/api/devices/name%3Asim/frobnicate", None, 404),
        ("POST", "/api/info", b"", 405),
        ("DELETE", "/api/devices", None, 405),
        ("GET", "/api/start", None, 405),
        ("GET", "/api/devices/name%3Asim/reset", None, 405),
        ("PUT", "/metrics", b"", 405),
        ("POST", "/api/start", b"{not json", 400),
        ("POST", "/api/start", b"[1, 2]", 400),
        ("POST", "/api/devices/name%3Asim/reset", b"{}", 400),
        ("POST", "/api/devices/name%3Asim/reset", b'{"to": "moon"}', 400),
        ("POST", "/api/devices/name%3Anope/reset", b'{"to": "app"}', 404),
    ]
    for method, path, body, want in cases:
        status, headers, r = portal.request(method, path, body)
        assert status == want, (method, path, status, r)
        assert isinstance(r, dict) and isinstance(r["error"], str) and r["error"], (method, path, r)
        if want == 405:
            assert headers["Allow"], (method, path)


def test_bodies_over_64_kib_are_refused_with_413(portal):
    big = tempfile.NamedTemporaryFile(suffix=".json")
    big.write(b" " * (64 * 1024) + b"{}")
    big.flush()
    status, r = curl_json("-X", "POST", "-H", JSON, "--data-binary", "@" + big.name, portal.base + "/api/start")
    assert status == 413 and "64 KiB" in r["error"], r
    # Chunked, so the size is only known while reading: at most 64 KiB + 1 are read.
    status, r = curl_json("-X", "POST", "-H", JSON, "-H", "Transfer-Encoding: chunked", "--data-binary", "@" + big.name,
                          portal.base + "/api/start")
    assert status == 413, r
    # Exactly 64 KiB is fine (whitespace-padded JSON).
    ok = json.dumps({"tty": "/dev/ttyNOPE"}).encode()
    status, _, r = portal.post("/api/start", ok + b" " * (64 * 1024 - len(ok)))
    assert status == 404, r
    # A client claiming an absurd body gets its 413 at once and the daemon stays up.
    with socket.create_connection(("127.0.0.1", portal.port), timeout=10) as s:
        s.sendall(b"POST /api/start HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n\r\n{")
        head = s.recv(4096)
    assert head.startswith(b"HTTP/1.1 413"), head
    assert portal.get("/api/info")["devices"] == 2


def test_concurrent_clients_and_a_stalled_one(portal):
    # A client that announces a 10 KiB body and sends 10 bytes must hold up nobody.
    stalled = socket.create_connection(("127.0.0.1", portal.port), timeout=10)
    stalled.sendall(b"POST /api/start HTTP/1.1\r\nHost: x\r\nContent-Length: 10240\r\n\r\n{\"tty\": \"")
    # And one that opened a connection and sent nothing.
    idle = socket.create_connection(("127.0.0.1", portal.port), timeout=10)
    paths = ["/api/info", "/api/devices", "/api/discover", "/metrics", "/",
             f"/api/devices/{urllib.request.quote(SIM_KEY, safe='')}/log"] * 4

    def fetch(path):
        t0 = time.monotonic()
        status, _, body = portal.request("GET", path, timeout=10)
        return status, time.monotonic() - t0, body

    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(paths)) as pool:
        results = list(pool.map(fetch, paths))
    elapsed = time.monotonic() - t0
    assert [s for s, _, _ in results] == [200] * len(paths)
    assert elapsed < 8, f"{len(paths)} parallel requests took {elapsed:.1f} s"
    # curl too, several at once.
    procs = [subprocess.Popen(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", portal.base + "/api/devices"],
                              stdout=subprocess.PIPE, text=True) for _ in range(8)]
    assert [p.communicate(timeout=20)[0] for p in procs] == ["200"] * 8
    stalled.close()
    idle.close()
    assert portal.get("/api/info")["devices"] == 2


# ---------------------------------------------------------------------------------------------
# Start-up


def test_busy_http_port_is_a_clear_error_at_start():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        state = os.path.join(tempfile.mkdtemp(prefix="serialhub-state-"), "ports.json")
        r = run_cli("serve", "--bind", "127.0.0.1", "--no-hotplug", "--state", state, "--device", "sim=0",
                    "--http", f"127.0.0.1:{port}")
    assert r.returncode == 1, r
    assert f"127.0.0.1:{port}" in r.stderr and "in use" in r.stderr.lower(), r.stderr
    assert "listening on" not in r.stderr  # no device was started
    r = run_cli("serve", "--no-hotplug", "--device", "sim=0", "--http", "8080")
    assert r.returncode == 2 and "--http" in r.stderr, r.stderr


def test_http_off(serialhub):
    d = serialhub("sim=0", extra=("--http", "off"))
    assert d.ready()["portal"] is None
    # The device is served all the same: its application's output on the port.
    got = b""
    deadline = time.monotonic() + 10
    with socket.create_connection(("127.0.0.1", d.ready_port("sim")), timeout=5) as s:
        while b"app tick" not in got and time.monotonic() < deadline:
            got += s.recv(4096)
    assert b"app tick" in got, got


# ---------------------------------------------------------------------------------------------
# The web page


def test_page_without_javascript_lists_the_devices(portal):
    r = curl("-H", "Host: 127.0.0.1", portal.base + "/")
    assert r.returncode == 0
    page = r.stdout
    assert "<script src" not in page and "http://" not in page.replace(f"http://127.0.0.1", "")  # no CDN
    assert f"<code>rfc2217://127.0.0.1:{portal.sim_port}</code>" in page
    assert f"<code>{SIM_KEY}</code>" in page and 'data-source="server"' in page
    assert '<meta name="viewport"' in page


def chromium_binary() -> str:
    """Debian's chromium; installed here if missing and we are root (CI installs it first)."""
    path = shutil.which("chromium")
    if path:
        return path
    if os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=300", "install", "-y", "-q", "chromium"],
                       capture_output=True, timeout=900)
        path = shutil.which("chromium")
        if path:
            return path
    pytest.skip("chromium is not installed and could not be installed (apt-get install chromium)")


CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1280,900",
]


def test_page_renders_in_headless_chromium(portal):
    chromium = chromium_binary()
    out = REPO / "target" / "portal"
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="serialhub-chromium-") as profile:
        r = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                            "--virtual-time-budget=5000", "--dump-dom", portal.base + "/"],
                           capture_output=True, text=True, timeout=120)
    dom = r.stdout
    assert 'data-source="js"' in dom, f"the script did not render the table:\n{dom[:3000]}\n{r.stderr[-2000:]}"
    assert f"rfc2217://127.0.0.1:{portal.sim_port}" in dom
    assert f'data-act="reset-app" data-key="{SIM_KEY}"' in dom
    assert 'data-act="reset-bootloader"' in dom and 'data-act="disconnect"' in dom and 'data-act="copy-url"' in dom
    assert "updated " in dom


class Cdp:
    """Chrome DevTools Protocol over --remote-debugging-pipe (fd 3 in, fd 4 out; messages are
    JSON followed by a NUL): no websocket library needed."""

    def __init__(self, chromium: str, profile: str):
        to_r, self.to_w = os.pipe()
        self.from_r, from_w = os.pipe()
        # Above 9 (bash takes such numbers), so `3<&A 4>&B` cannot overwrite one with the other.
        child = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_r, from_w)]
        for fd in (to_r, from_w):
            os.close(fd)
        script = f'exec "$0" "$@" 3<&{child[0]} 4>&{child[1]} {child[0]}<&- {child[1]}>&-'
        self.proc = subprocess.Popen(
            ["bash", "-c", script, chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
             "--remote-debugging-pipe", "about:blank"],
            pass_fds=child, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for fd in child:
            os.close(fd)
        self.buf = b""
        self.next_id = 0
        self.session = None

    def call(self, method: str, params: dict | None = None, timeout: float = 30.0, session: bool = True):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        os.write(self.to_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self.buf:
                raw, _, self.buf = self.buf.partition(b"\0")
                reply = json.loads(raw)
                if reply.get("id") == self.next_id:
                    if "error" in reply:
                        raise AssertionError(f"{method}: {reply['error']}")
                    return reply["result"]
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"chromium did not answer {method} within {timeout} s")
            r, _, _ = select.select([self.from_r], [], [], left)
            if r:
                chunk = os.read(self.from_r, 1 << 20)
                if not chunk:
                    raise AssertionError("chromium closed the debugging pipe")
                self.buf += chunk

    def open(self, url: str):
        target = self.call("Target.createTarget", {"url": url}, session=False)["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True},
                                 session=False)["sessionId"]

    def js(self, expr: str):
        r = self.call("Runtime.evaluate", {"expression": expr, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in r:
            raise AssertionError(f"{expr}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def close(self):
        try:
            self.call("Browser.close", session=False, timeout=5)
        except (AssertionError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self.to_w, self.from_r):
            os.close(fd)


def test_reset_button_in_the_browser_restarts_the_board(portal):
    chromium = chromium_binary()
    n = max(wait_for(lambda: boots(portal.log()["data"]), 10, what="first boot"))
    with tempfile.TemporaryDirectory(prefix="serialhub-chromium-") as profile:
        cdp = Cdp(chromium, profile)
        try:
            cdp.open(portal.base + "/")
            sel = f'button[data-act="reset-app"][data-key="{SIM_KEY}"]'
            wait_for(lambda: cdp.js(f"!!document.querySelector('{sel}')"), 30, 0.1, "the reset button")
            url = cdp.js(f"document.querySelector('tr[data-key=\"{SIM_KEY}\"] td[data-l=\"URL\"] code').textContent")
            assert url == f"rfc2217://127.0.0.1:{portal.sim_port}"
            cdp.js(f"document.querySelector('{sel}').click()")
            wait_for(lambda: n + 1 in boots(portal.log()["data"]), 15, what=f"boot #{n + 1} after the click")
            msg = wait_for(lambda: cdp.js("document.getElementById('msg').textContent"), 10, 0.1, "the reply")
            assert "reset" in msg, msg
            # The live log view follows the device's output.
            cdp.js(f"document.querySelector('button[data-act=\"log\"][data-key=\"{SIM_KEY}\"]').click()")
            wait_for(lambda: f"boot #{n + 1}" in cdp.js("document.getElementById('log').textContent"), 15, 0.1,
                     "the log view")
            shot = cdp.call("Page.captureScreenshot", {"format": "png"})["data"]
            out = REPO / "target" / "portal"
            out.mkdir(parents=True, exist_ok=True)
            (out / "portal.png").write_bytes(base64.b64decode(shot))
        finally:
            cdp.close()
    assert (REPO / "target" / "portal" / "portal.png").stat().st_size > 10_000
