"""Issue 26, items 4, 5 and 7: leases nobody can take for someone else, lease ids only for
their holders, lease changes bounded per address, a client that sends its token only to hosts
it was told, and a hostile `leases.json` that cannot stop the daemon. The real binary; other
hosts are network namespaces the test makes (root only, as in CI), a rogue portal is
python-zeroconf plus a small HTTP server that records what it is sent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import netns
from conftest import SERIALHUB_BIN, wait_for
from test_lease import DEVICE, api, device_in, start


def devices(portal: int) -> list[dict]:
    return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{portal}/api/devices", timeout=10).read())["devices"]


def local(portal: int, method: str, path: str, body: dict | None = None) -> tuple[int, dict, dict]:
    """A request from 127.0.0.1: status, JSON body, headers."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{portal}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), dict(e.headers)


def test_a_tokenless_lease_for_another_address_is_refused_and_ids_are_the_holders(serialhub, tmp_path):
    with netns.host() as a, netns.host() as b:
        d, port, portal = start(serialhub, tmp_path, 'lease = "optional"')
        pa, pb = f"{a.peer_ip}:{portal}", f"{b.peer_ip}:{portal}"
        key = devices(portal)[0]["key"]
        # B works on the board.
        holder = subprocess.Popen(b.cmd(sys.executable, "-c", DEVICE, b.peer_ip, str(port), "--hold"),
                                  stdout=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: [c for c in devices(portal)[0]["clients"] if c["addr"].startswith(b.ip + ":")], 10,
                     what="B connected")
            # A, without a token, leases the board to a third address for a week: refused, and
            # the answer says what it would take.
            status, body = api(a, pa, "POST", f"/api/devices/{key}/lease",
                               {"seconds": 7 * 24 * 3600, "address": "10.250.0.9"})
            assert status == 403 and body["rule"] == "lease", (status, body)
            assert "access.token_file" in body["error"] and "10.250.0.9" in body["error"], body
            # Nothing was granted, and B's connection is still served.
            dev = devices(portal)[0]
            assert dev["leases"] == [], dev
            assert [c for c in dev["clients"] if c["addr"].startswith(b.ip + ":")], dev
            assert holder.poll() is None, "B's connection was closed"
        finally:
            holder.kill()
            holder.communicate(timeout=10)

        # A leases for itself: allowed, and A alone sees (and may use) the id.
        status, body = api(a, pa, "POST", f"/api/devices/{key}/lease", {"seconds": 600})
        assert status == 200 and body["lease"]["address"] == a.ip, (status, body)
        lease_id = body["lease"]["id"]
        status, seen_by_b = api(b, pb, "GET", f"/api/devices/{key}/lease")
        assert status == 200 and seen_by_b["leases"][0]["address"] == a.ip, seen_by_b
        assert "id" not in seen_by_b["leases"][0] and lease_id not in json.dumps(seen_by_b), seen_by_b
        assert api(a, pa, "GET", f"/api/devices/{key}/lease")[1]["leases"][0]["id"] == lease_id
        # B cannot end A's lease even with its id; A can.
        status, body = api(b, pb, "DELETE", f"/api/devices/{key}/lease/{lease_id}")
        assert status == 403 and body["rule"] == "lease" and a.ip in body["error"], (status, body)
        assert [x["address"] for x in devices(portal)[0]["leases"]] == [a.ip]
        assert api(a, pa, "DELETE", f"/api/devices/{key}/lease/{lease_id}")[0] == 200
        assert devices(portal)[0]["leases"] == []


def test_lease_changes_beyond_the_budget_are_429_with_retry_after(serialhub, tmp_path):
    d, port, portal = start(serialhub, tmp_path, 'lease = "optional"')
    key = devices(portal)[0]["key"]
    path = f"/api/devices/{key}/lease"
    # The budget: 12 changes a minute per address (extending one's own lease is a change).
    for i in range(12):
        status, body, _ = local(portal, "POST", path, {"seconds": 600})
        assert status == 200, (i, status, body)
    t0 = time.monotonic()
    answers = [local(portal, "POST", path, {"seconds": 600}) for _ in range(50)]
    assert {s for s, _, _ in answers} == {429}, answers[:3]
    status, body, headers = answers[0]
    assert body["rule"] == "lease" and "at most 12 a minute" in body["error"], body
    retry = int(headers["Retry-After"])
    assert 1 <= retry <= 60 - int(time.monotonic() - t0) + 1, headers
    # A release is a change too; reads are not.
    lease_id = local(portal, "GET", path)[1]["leases"][0]["id"]
    assert local(portal, "DELETE", f"{path}/{lease_id}")[0] == 429
    assert local(portal, "GET", path)[0] == 200
    assert d.metric("serialhub_device_leased", name="sim") == 1
    # 63 requests, 12 changes: 12 log lines about them (and 12 writes of leases.json). Every
    # line was written before its answer; stopping the daemon reads its log to the end.
    assert d.stop() == 0
    assert len([ln for ln in d.lines if "leased to 127.0.0.1" in ln]) == 12, d.log


def test_a_hostile_leases_json_is_bounded_and_a_bad_one_moved_aside(serialhub, tmp_path):
    cfg = tmp_path / "serialhub.toml"
    cfg.write_text(f"[[device]]\npath = \"sim:{tmp_path / 'a.bin'}\"\nname = \"a\"\nport = 0\n"
                   f"[[device]]\npath = \"sim:{tmp_path / 'b.bin'}\"\nname = \"b\"\nport = 0\n")
    state = tmp_path / "state"
    args = ("--config", str(cfg), "--state", str(state / "ports.json"))
    d = serialhub(extra=args)
    keys = {x["name"]: x["key"] for x in d.devices()}
    d.stop()
    state.mkdir(exist_ok=True)
    leases = state / "leases.json"
    now = int(time.time())
    good = {"id": "0123456789abcdef", "device": keys["a"], "address": "127.0.0.1", "granted": now,
            "expires": now + 3600}
    leases.write_text(json.dumps({"version": 1, "leases": [
        good,
        # An expiry no clock reaches (today: an overflow in every bridge it names, at every start).
        {"id": "feedfacefeedface", "device": keys["b"], "address": "127.0.0.1", "granted": now,
         "expires": 2**64 - 1},
        # An id the daemon never makes (it would be put in URLs), on a device not here.
        {"id": "../x", "device": "serial:gone", "address": "127.0.0.1", "granted": now, "expires": now + 60},
    ]}))
    d = serialhub(extra=args)
    d.wait_opened("a")
    d.wait_opened("b")
    status, body, _ = local(d.portal_port, "GET", f"/api/devices/{keys['a']}/lease")
    assert status == 200 and body["leases"][0]["id"] == good["id"], body
    assert local(d.portal_port, "GET", f"/api/devices/{keys['b']}/lease")[1] == {"leases": []}
    # One line names what was left out, and the daemon says nothing else about it.
    line = d.wait_log(r"left out 2 bad lease\(s\): (.*)").group(0)
    assert "feedfacefeedface" in line and "#2" in line and "kept 1" in line, line
    # b is open to all (its bogus lease is gone): a connection is served.
    port_b = d.port("b")
    assert device_in_local(port_b)
    d.stop()

    # Not a lease file: moved aside as leases.json.corrupt, the daemon serves without leases.
    junk = b'{"version": 1, "leases": [{"id": "x", "expires": 1e999'
    leases.write_bytes(junk)
    d = serialhub(extra=args)
    d.wait_opened("a")
    assert (state / "leases.json.corrupt").read_bytes() == junk
    assert not leases.exists()
    assert local(d.portal_port, "GET", f"/api/devices/{keys['a']}/lease")[1] == {"leases": []}
    d.wait_log(r"leases\.json is not a lease file .*moved it to .*leases\.json\.corrupt")
    # The next lease writes a fresh file.
    assert local(d.portal_port, "POST", f"/api/devices/{keys['a']}/lease", {"seconds": 60})[0] == 200
    assert json.loads(leases.read_text())["leases"][0]["device"] == keys["a"]


def device_in_local(port: int) -> bool:
    r = subprocess.run([sys.executable, "-c", DEVICE, "127.0.0.1", str(port)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["served"]


# A rogue portal: python-zeroconf advertises `_serialhub._tcp` for two HTTP servers that answer
# like a portal and record every request's method, path and headers (one JSON line each). The
# second is "private": a GET without `Authorization` gets 401, as a real private portal's would.
ROGUE = r"""
import json, socket, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from zeroconf import ServiceInfo, Zeroconf
ip, port, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
lock = threading.Lock()
def make(private):
    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass
        def answer(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        def record(self):
            n = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(n)
            with lock, open(log, "a") as f:
                f.write(json.dumps({"port": self.server.server_port, "method": self.command, "path": self.path,
                                    "headers": {k.lower(): v for k, v in self.headers.items()}}) + "\n")
        def do_GET(self):
            self.record()
            if private and "authorization" not in {k.lower() for k in self.headers.keys()}:
                return self.answer(401, {"error": "an API token is needed", "rule": "token"})
            self.answer(200, {"devices": [{"name": f"rogue{self.server.server_port}", "key": "serial:R",
                                           "port": 4001, "url": f"rfc2217://{ip}:4001", "state": "idle"}]})
        def do_POST(self):
            self.record()
            self.answer(200, {"success": True, "lease": {"id": "0123456789abcdef", "seconds": 60},
                              "url": f"rfc2217://{ip}:4001", "socket_url": ""})
        do_DELETE = do_POST
    return H
servers = [ThreadingHTTPServer((ip, port), make(False)), ThreadingHTTPServer((ip, port + 1), make(True))]
for s in servers:
    threading.Thread(target=s.serve_forever, daemon=True).start()
zc = Zeroconf(interfaces=[ip])
infos = [ServiceInfo("_serialhub._tcp.local.", f"rogue{p}._serialhub._tcp.local.", addresses=[socket.inet_aton(ip)],
                     port=p, properties={"path": "/api"}, server=f"rogue{p}.local.") for p in (port, port + 1)]
for i in infos:
    zc.register_service(i)
print("ready", flush=True)
sys.stdin.read()
for i in infos:
    zc.unregister_service(i)
zc.close()
"""

SECRET = "s3cret-token-0123456789abcdef"


def test_the_token_goes_only_to_named_hosts_never_to_a_portal_found_by_mdns(tmp_path):
    log = tmp_path / "rogue.jsonl"
    log.touch()
    with netns.lan(2) as (_bridge, _root_ip, (rogue, lab)):
        port = 18080
        p = subprocess.Popen(rogue.cmd(sys.executable, "-c", ROGUE, rogue.ip, str(port), str(log)),
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert p.stdout.readline().strip() == "ready", p.stderr.read()
            env = {k: v for k, v in os.environ.items() if k not in ("SERIALHUB_HOST", "PI_HOST", "ESP32_PORT")}
            env["SERIALHUB_TOKEN"] = SECRET

            def client(*args: str) -> subprocess.CompletedProcess:
                return subprocess.run(lab.cmd(SERIALHUB_BIN, *args), capture_output=True, text=True, timeout=30,
                                      env=env)

            def requests() -> list[dict]:
                return [json.loads(ln) for ln in log.read_text().splitlines()]

            # Without a host: the network is browsed, both rogue portals are asked for their
            # boards (the public one lists its board, the private one refuses), none is sent
            # the token, and the private one's 401 is not answered with it either.
            r = wait_for(lambda: (lambda r: r if f"rogue{port}" in r.stdout else None)(client("discover")), 20,
                         what="the rogue portal found by `serialhub discover`")
            assert r.returncode == 0, r.stderr
            wait_for(lambda: {q["port"] for q in requests()} == {port, port + 1}, 20,
                     what="both rogue portals asked")
            # `lease` without a host: the POST goes to the rogue portal, without the token.
            r = client("lease", "--name", f"rogue{port}", "--for", "1m")
            assert r.returncode == 0 and r.stdout.startswith(f"rfc2217://{rogue.ip}:4001"), (r.stdout, r.stderr)
            browsed = requests()
            assert ("POST", port) in {(q["method"], q["port"]) for q in browsed}, browsed
            assert all("authorization" not in q["headers"] for q in browsed), browsed
            assert SECRET not in log.read_text()

            # Named (HOST argument): its reads go without the token, its lease with it.
            r = client("lease", f"{rogue.ip}:{port}", "--name", f"rogue{port}", "--for", "1m")
            assert r.returncode == 0, r.stderr
            named = requests()[len(browsed):]
            assert [(q["method"], q["path"].split("/")[-1]) for q in named] == [("GET", "discover"), ("POST", "lease")]
            assert "authorization" not in named[0]["headers"], named
            assert named[1]["headers"]["authorization"] == f"Bearer {SECRET}", named
            # Named in $SERIALHUB_HOST, a private portal: the 401'd read is asked again with it.
            env["SERIALHUB_HOST"] = f"{rogue.ip}:{port + 1}"
            r = client("discover")
            assert r.returncode == 0 and f"rogue{port + 1}" in r.stdout, r.stderr
            private = requests()[len(browsed) + len(named):]
            assert [q["headers"].get("authorization") for q in private] == [None, f"Bearer {SECRET}"], private
        finally:
            p.stdin.close()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
