"""Issue 15 (second part): leases — a board that opens to one machine for one job and closes
again. Two client hosts (network namespaces made by the test; root only, as in CI) against
the real daemon: the API, `serialhub lease -- COMMAND`, the policies, expiry, a restart.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request

import netns
from conftest import SERIALHUB_BIN, wait_for

# A device client inside a namespace: connect to the URL (or HOST PORT), wait for the
# simulated app's output; with --hold, keep the connection until the server closes it.
DEVICE = r"""
import json, socket, sys, time
args = sys.argv[1:]
hold = "--hold" in args
args = [a for a in args if a != "--hold"]
if len(args) == 1:
    host, port = args[0].split("://", 1)[1].rsplit(":", 1)
else:
    host, port = args
got, closed_by_server = b"", False
with socket.create_connection((host, int(port)), timeout=5) as s:
    s.settimeout(0.5)
    deadline = time.monotonic() + (30 if hold else 3)
    while time.monotonic() < deadline and (hold or b"app tick" not in got):
        try:
            chunk = s.recv(4096)
        except socket.timeout:
            continue
        if not chunk:
            closed_by_server = True
            break
        got += chunk
print(json.dumps({"served": b"app tick" in got, "closed": closed_by_server,
                  "said": got[:60].decode("latin-1") if b"app tick" not in got else ""}))
"""


def device_in(h: netns.Host, *args: str, timeout: float = 40) -> dict:
    r = subprocess.run(h.cmd(sys.executable, "-c", DEVICE, *args), capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def serialhub_in(h: netns.Host, *args: str, env: dict | None = None, timeout: float = 60):
    return subprocess.run(h.cmd("env", *[f"{k}={v}" for k, v in (env or {}).items()], SERIALHUB_BIN, *args),
                          capture_output=True, text=True, timeout=timeout)


def api(h: netns.Host, portal: str, method: str, path: str, body: dict | None = None, token: str = "") -> tuple:
    """An HTTP request from inside namespace `h` (curl, as a user would)."""
    cmd = ["curl", "-s", "-o", "-", "-w", "\n%{http_code}", "-X", method, f"http://{portal}{path}"]
    if body is not None:
        cmd += ["-H", "Content-Type: application/json", "-d", json.dumps(body)]
    if token:
        cmd += ["-H", f"Authorization: Bearer {token}"]
    r = subprocess.run(h.cmd(*cmd), capture_output=True, text=True, timeout=20)
    text, _, status = r.stdout.rpartition("\n")
    return int(status), (json.loads(text) if text.strip() else None)


def start(serialhub, tmp_path, access: str):
    cfg = tmp_path / "serialhub.toml"
    cfg.write_text(f"[access]\n{access}\n[[device]]\npath = \"sim:{tmp_path / 'flash.bin'}\"\nport = 0\n")
    d = serialhub(extra=("--config", str(cfg), "--bind", "0.0.0.0", "--http", "0.0.0.0:0",
                         "--state", str(tmp_path / "state" / "ports.json")))
    port, portal = d.port("sim"), d.portal_port
    d.wait_opened("sim")
    return d, port, portal


def wait_refusals(d, at_least: int) -> None:
    """Wait until /metrics counts `at_least` connections refused for want of a lease."""
    wait_for(lambda: (d.metric("serialhub_device_lease_refusals_total", name="sim") or 0) >= at_least, 10,
             what=f"{at_least} lease refusals in /metrics")


def test_lease_required_the_client_command_expiry_and_a_restart(serialhub, tmp_path):
    token = tmp_path / "token"
    assert subprocess.run([SERIALHUB_BIN, "token", "--write", str(token)]).returncode == 0
    secret = token.read_text().strip()
    access = f'lease = "required"\nlease_expiry = "close"\ntoken_file = "{token}"'
    with netns.host() as a, netns.host() as b:
        d, port, portal = start(serialhub, tmp_path, access)
        pa, pb = f"{a.peer_ip}:{portal}", f"{b.peer_ip}:{portal}"

        # No lease: refused before a byte reaches the device, with a word and one log line.
        got = device_in(a, a.peer_ip, str(port))
        assert not got["served"] and got["said"].startswith("Port needs a lease"), got
        wait_refusals(d, 1)
        # The line an admin reads: who was refused, where, and why.
        assert re.search(rf"refused {re.escape(a.ip)} on port {port}: no lease", d.log), d.log

        # `serialhub lease -- COMMAND`: the command runs with the URL, on a leased board; the
        # lease is gone afterwards; the command's exit status is ours.
        key = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{portal}/api/devices").read())["devices"][0]["key"]
        r = serialhub_in(a, "lease", pa, "--key", key, "--for", "5m", "--token-file", str(token), "--",
                         sys.executable, "-c", DEVICE, "{url}")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["served"], r.stdout
        assert "released" in r.stderr, r.stderr
        assert api(a, pa, "GET", f"/api/devices/{key}/lease")[1] == {"leases": []}
        r = serialhub_in(a, "lease", pa, "--key", key, "--", "sh", "-c", "test -n \"$ESPPORT\" && exit 3",
                         env={"SERIALHUB_TOKEN": secret})
        assert r.returncode == 3, (r.returncode, r.stderr)
        # Without the token the portal says which rule refused it, and so does the command.
        r = serialhub_in(a, "lease", pa, "--key", key, "--", "true")
        assert r.returncode != 0 and "401" in r.stderr and "token" in r.stderr, r.stderr

        # Without a command: the URL and the lease id. A is served, B is not.
        r = serialhub_in(a, "lease", pa, "--key", key, "--for", "1h", env={"SERIALHUB_TOKEN": secret})
        assert r.returncode == 0, r.stderr
        url, lease_line = r.stdout.splitlines()
        assert url == f"rfc2217://{a.peer_ip}:{port}", r.stdout
        lease_id = re.fullmatch(r"lease ([0-9a-f]{16}) for \d+ s", lease_line).group(1)
        assert device_in(a, url)["served"]
        got = device_in(b, b.peer_ip, str(port))
        assert not got["served"], got
        status, body = api(b, pb, "POST", f"/api/devices/{key}/lease", {"seconds": 60}, secret)
        assert status == 409 and a.ip in body["error"], (status, body)

        # A restart keeps it (leases.json next to the port state).
        assert (tmp_path / "state" / "leases.json").exists()
        d.stop()
        d, port, portal = start(serialhub, tmp_path, access)  # port 0: the OS picks again
        pa = f"{a.peer_ip}:{portal}"
        leases = api(a, pa, "GET", f"/api/devices/{key}/lease")[1]["leases"]
        assert [x["id"] for x in leases] == [lease_id], leases
        assert device_in(a, a.peer_ip, str(port))["served"]
        assert not device_in(b, b.peer_ip, str(port))["served"]
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{portal}/metrics").read().decode()
        assert re.search(r'serialhub_device_leased\{[^}]*\} 1', metrics), metrics
        assert re.search(r'serialhub_device_lease_refusals_total\{[^}]*\} [1-9]', metrics), metrics

        # Ended early: A is refused again (required).
        assert api(a, pa, "DELETE", f"/api/devices/{key}/lease/{lease_id}", token=secret)[0] == 200
        assert not device_in(a, a.peer_ip, str(port))["served"]

        # Expiry with lease_expiry = "close": the holder's connection is closed when it runs
        # out (the shortest lease is 10 s).
        assert api(a, pa, "POST", f"/api/devices/{key}/lease", {"seconds": 10}, secret)[0] == 200
        t0 = time.monotonic()
        got = device_in(a, a.peer_ip, str(port), "--hold")
        took = time.monotonic() - t0
        assert got["closed"] and 7 < took < 20, (got, took)
        d.wait_device("sim", lambda v: v["leases"] == [] and v["clients"] == [], why="the lease gone, its client closed")
        # Why the holder was closed: the log says it.
        assert re.search(rf"the lease of {re.escape(a.ip)} ran out; closing its connections", d.log), d.log


def test_lease_optional_reserves_a_shared_device_for_its_holder(serialhub, tmp_path):
    with netns.host() as a, netns.host() as b:
        d, port, portal = start(serialhub, tmp_path, 'lease = "optional"')
        pa = f"{a.peer_ip}:{portal}"
        key = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{portal}/api/devices").read())["devices"][0]["key"]
        # Unleased: open to everyone.
        assert device_in(b, b.peer_ip, str(port))["served"]
        # B holds the port open; A leases the board: B is closed, and refused afterwards.
        holder = subprocess.Popen(b.cmd(sys.executable, "-c", DEVICE, b.peer_ip, str(port), "--hold"),
                                  stdout=subprocess.PIPE, text=True)
        wait_for(lambda: json.loads(urllib.request.urlopen(f"http://127.0.0.1:{portal}/api/devices").read())
                 ["devices"][0]["clients"], 10, what="B connected")
        status, body = api(a, pa, "POST", f"/api/devices/{key}/lease", {"seconds": 600})
        assert status == 200 and body["lease"]["address"] == a.ip, body
        out, _ = holder.communicate(timeout=20)
        assert json.loads(out)["closed"], out
        got = device_in(b, b.peer_ip, str(port))
        assert not got["served"] and got["said"].startswith("Port leased to another address"), got
        wait_refusals(d, 1)
        # The line an admin reads: who was refused, where, and why.
        assert re.search(rf"refused {re.escape(b.ip)} on port {port}: leased to another address", d.log), d.log
        assert device_in(a, a.peer_ip, str(port))["served"]
        dev = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{portal}/api/devices").read())["devices"][0]
        assert dev["leases"][0]["address"] == a.ip and 0 < dev["leases"][0]["seconds"] <= 600, dev
        # Released: open to everyone again.
        lease_id = body["lease"]["id"]
        assert api(a, pa, "DELETE", f"/api/devices/{key}/lease/{lease_id}")[0] == 200
        assert device_in(b, b.peer_ip, str(port))["served"]
