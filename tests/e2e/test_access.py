"""Issue 15 (first part): only the right machines — an address allow-list on device ports and
the portal, the API token, and JSON-only POSTs — tested from two client hosts (network
namespaces made by the test; root only, as in CI).
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys

import netns
from conftest import SERIALHUB_BIN, wait_for

CLIENT = r"""
import json, socket, sys, urllib.request, urllib.error
what, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
if what == "device":
    with socket.create_connection((host, port), timeout=5) as s:
        s.settimeout(3)
        got = b""
        try:
            while b"app tick" not in got:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
        except socket.timeout:
            pass
    print(json.dumps({"served": b"app tick" in got, "bytes": len(got)}))
elif what == "get":
    with urllib.request.urlopen(f"http://{host}:{port}{sys.argv[4]}", timeout=5) as r:
        print(r.read().decode())
else:
    method, path, ctype, token = sys.argv[4], sys.argv[5], sys.argv[6], sys.argv[7]
    headers = {}
    if ctype != "-":
        headers["Content-Type"] = ctype
    if token != "-":
        headers["Authorization"] = "Bearer " + token
    data = b"{}" if method == "POST" else None
    req = urllib.request.Request(f"http://{host}:{port}{path}", data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            status, body = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    try:
        v = json.loads(body)
    except ValueError:
        v = {}
    print(json.dumps({"status": status, "rule": v.get("rule") if isinstance(v, dict) else None}))
"""


def run_in(h: netns.Host, *args: str) -> dict:
    r = subprocess.run(h.cmd(sys.executable, "-c", CLIENT, *args), capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_allow_list_token_and_json_posts_from_two_hosts(serialhub, tmp_path):
    with netns.host() as a, netns.host() as b:
        token = tmp_path / "token"
        r = subprocess.run([SERIALHUB_BIN, "token", "--write", str(token)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert stat.S_IMODE(os.stat(token).st_mode) == 0o600
        secret = token.read_text().strip()
        assert re.fullmatch(r"[0-9a-f]{64}", secret)
        cfg = tmp_path / "serialhub.toml"
        cfg.write_text(f'[access]\nallow = ["{a.ip}/32"]\ntoken_file = "{token}"\n'
                       f'[[device]]\npath = "sim:{tmp_path / "flash.bin"}"\nport = 0\n')
        d = serialhub(extra=("--config", str(cfg), "--bind", "0.0.0.0", "--http", "0.0.0.0:0"))
        # The portal admits A only: the ports come from the ready line, the device's state
        # from the API as A sees it.
        port, portal = d.ready_port("sim"), d.portal_port

        def state():
            return run_in(a, "get", a.peer_ip, str(portal), "/api/devices/sim")["state"]

        wait_for(lambda: state() == "idle", 10, what="the sim open")

        # Device port: A is served; B's connection is closed before a byte, and logged once.
        assert run_in(a, "device", a.peer_ip, str(port))["served"]
        for _ in range(3):
            got = run_in(b, "device", b.peer_ip, str(port))
            assert got == {"served": False, "bytes": 0}, got
        # Logged once, however often B tries: the log's bound is under test here.
        refused = [ln for ln in d.lines if re.search(rf"refused {re.escape(b.ip)} on port {port}: not in allow", ln)]
        assert len(refused) == 1, d.log

        # Portal: reads open to A, closed to B; every POST needs JSON and the token.
        def api(h, method, path, ctype="-", tok="-"):
            return run_in(h, "http", h.peer_ip, str(portal), method, path, ctype, tok)

        assert api(a, "GET", "/api/info")["status"] == 200
        assert api(b, "GET", "/api/info") == {"status": 403, "rule": "allow"}
        js = "application/json"
        assert api(a, "POST", "/api/stop-all", "text/plain", secret) == {"status": 415, "rule": "content-type"}
        assert api(a, "POST", "/api/stop-all", js) == {"status": 401, "rule": "token"}
        assert api(a, "POST", "/api/stop-all", js, "0" * 64) == {"status": 401, "rule": "token"}
        assert api(b, "POST", "/api/stop-all", js, secret) == {"status": 403, "rule": "allow"}
        assert state() == "idle"  # none of the refused POSTs stopped anything
        assert api(a, "POST", "/api/stop-all", js, secret)["status"] == 200
        wait_for(lambda: state() == "disabled", 10, what="the sim stopped on request")
