"""Issue 26, items 1, 2 and the framing part of 8, against the real binary: DNS rebinding
(a foreign `Host` gets 421), one host locking everyone out of the portal (pipelined floods
that read slowly or never), and request framing a proxy could read otherwise (400).

Every number a test asserts is printed too (`pytest -s` shows them); docs/reliability.md
records them. All traffic stays on loopback (127.0.0.1 and 127.0.0.2), bounded in count and
time.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import pytest



def ask(port: int, method: str, path: str, host: str | None, body: bytes | None = None,
        timeout: float = 5) -> tuple[int, dict | str]:
    """One request with exactly this `Host` (None: none at all, as HTTP/1.0 may)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        if host is not None:
            c.putheader("Host", host)
        if body is not None:
            c.putheader("Content-Type", "application/json")
            c.putheader("Content-Length", str(len(body)))
        c.endheaders(body)
        r = c.getresponse()
        raw = r.read()
        ctype = r.getheader("Content-Type", "")
        return r.status, (json.loads(raw) if ctype.startswith("application/json") else raw.decode())
    finally:
        c.close()


def raw_exchange(port: int, data: bytes, timeout: float = 5) -> bytes:
    """Send `data` as it is; everything the portal answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except (ConnectionResetError, socket.timeout):
            pass
    return out


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


@pytest.fixture
def hub(serialhub, tmp_path):
    """A daemon with the simulated ESP32 and `pi.lab.example` among the portal's names."""
    cfg = tmp_path / "serialhub.toml"
    cfg.write_text('[access]\nhosts = ["pi.lab.example"]\n')
    d = serialhub(f"sim:{tmp_path / 'flash.bin'}=0", extra=("--config", str(cfg), "--http", "127.0.0.1:0"))
    d.wait_opened("sim")
    return d


# ---------------------------------------------------------------------------------------------
# 1. DNS rebinding


def test_a_rebound_name_can_neither_command_nor_read(hub):
    port = hub.portal_port
    log = "/api/devices/sim/log"
    for host in (f"evil.example:{port}", "evil.example", f"pi.lab.example.evil.example:{port}"):
        status, v = ask(port, "POST", "/api/stop-all", host, b"{}")
        assert status == 421 and v["rule"] == "host", (host, status, v)
        assert "hosts" in v["error"] and "[access]" in v["error"], v
        status, v = ask(port, "GET", log, host)
        assert status == 421 and v["rule"] == "host", (host, status, v)
        status, _ = ask(port, "GET", "/", host)
        assert status == 421
    # Nothing was stopped.
    assert hub.device("sim")["state"] in hub.OPEN and hub.api("/api/info")["running"] == 1
    # The names this machine is reached by: its address, localhost, its host name (.local too),
    # a name from [access] hosts — any case, a trailing dot, with or without the port.
    for host in (f"127.0.0.1:{port}", "127.0.0.1", f"localhost:{port}", "LOCALHOST.",
                 f"{socket.gethostname()}.local:{port}", socket.gethostname(),
                 f"pi.lab.example:{port}", "Pi.Lab.Example.", f"[::1]:{port}", None):
        status, v = ask(port, "GET", log, host)
        assert status == 200 and "data" in v, (host, status, v)
        status, v = ask(port, "GET", "/api/info", host)
        assert status == 200 and v["running"] == 1, (host, status, v)
    # The same command with a proper Host goes through.
    status, v = ask(port, "POST", "/api/stop-all", f"pi.lab.example:{port}", b"{}")
    assert status == 200, v
    hub.wait_state("sim", "disabled")
    print(f"\nrebinding: 421 for Host evil.example:{port} (stop-all, log, page); device kept running")


def test_the_421_closes_the_connection(hub):
    port = hub.portal_port
    # Two requests on one connection: the first is refused and the connection closed with it.
    answer = raw_exchange(port, b"GET /api/info HTTP/1.1\r\nHost: evil.example\r\n\r\n"
                                b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert status_of(answer) == 421 and b"Connection: close\r\n" in answer, answer
    assert answer.count(b"HTTP/1.1 ") == 1, answer


# ---------------------------------------------------------------------------------------------
# 2. One host locking everyone out


class Flood:
    """`conns` connections from `source`, each sending `per_conn` pipelined `request`s at
    once, with a receive window as small as the kernel allows and 536-byte segments,
    then reading 1 byte every 100 ms (`read=True`) or nothing; for at most `limit` seconds."""

    def __init__(self, port: int, request: bytes, source: str = "127.0.0.1", conns: int = 32,
                 per_conn: int = 256, read: bool = True, limit: float = 30):
        self.socks: list[socket.socket] = []
        self.stop = threading.Event()
        burst = request * per_conn
        for _ in range(conns):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
            # A small segment (536 bytes, the IPv4 default MSS): on loopback (64 KiB segments)
            # the kernel gives the portal's side a send buffer of megabytes, which a peer on a
            # LAN, a VPN or Wi-Fi does not get; this peer asks for one such as they get.
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
            s.bind((source, 0))
            s.connect(("127.0.0.1", port))
            s.setblocking(False)
            try:
                s.send(burst)
            except OSError:
                pass
            self.socks.append(s)
        self.deadline = time.monotonic() + limit
        self.reader = threading.Thread(target=self._read, daemon=True) if read else None
        if self.reader:
            self.reader.start()

    def _read(self):
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            for s in self.socks:
                try:
                    s.recv(1)
                except OSError:
                    pass
            self.stop.wait(0.1)

    def close(self):
        self.stop.set()
        if self.reader:
            self.reader.join(5)
        for s in self.socks:
            s.close()


def time_to_answer(port: int, give_up: float) -> tuple[float, int]:
    """Seconds until a plain `GET /api/info` on a fresh connection is answered 200, trying
    again while the portal drops or does not answer it; and how many tries it took."""
    t0 = time.monotonic()
    tries = 0
    while time.monotonic() - t0 < give_up:
        tries += 1
        try:
            status, v = ask(port, "GET", "/api/info", "127.0.0.1", timeout=max(0.1, give_up - (time.monotonic() - t0)))
            if status == 200 and "devices" in v:
                return time.monotonic() - t0, tries
        except (OSError, http.client.HTTPException):
            time.sleep(0.02)
    return float("inf"), tries


FLOODS = {
    # Requests the portal refuses or cannot route: answered 404 / 421 (on main: kept alive).
    "404s": b"GET /nope HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "foreign-host": b"GET /api/devices HTTP/1.1\r\nHost: evil.example\r\n\r\n",
    # Requests it answers with 200 and a few KiB each.
    "device-lists": b"GET /api/devices HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
}


@pytest.mark.parametrize("source", ["127.0.0.1", "127.0.0.2"])
@pytest.mark.parametrize("kind", sorted(FLOODS))
def test_pipelined_floods_that_read_slowly_lock_nobody_out(hub, kind, source):
    """32 connections × 256 pipelined requests, reading 1 byte per 100 ms: a normal
    `GET /api/info` on a fresh connection, from the flood's own address or another, is
    answered within 1 s, at once and again while the flood goes on."""
    port = hub.portal_port
    flood = Flood(port, FLOODS[kind], source=source)
    try:
        time.sleep(0.5)  # the flood's answers have backed up, its connections are past 200 ms
        took, tries = time_to_answer(port, give_up=15)
        later = []
        for _ in range(5):
            time.sleep(0.2)
            later.append(time_to_answer(port, give_up=5)[0])
    finally:
        flood.close()
    print(f"\nlock-out, {kind} from {source}: GET /api/info answered in {took * 1000:.0f} ms "
          f"({tries} tries); then {', '.join(f'{t * 1000:.0f}' for t in later)} ms")
    assert tries == 1 and took < 1.0, (took, tries)
    assert max(later) < 1.0, later
    assert hub.alive()


@pytest.mark.parametrize("kind,per_conn", [("device-lists", 256), ("pages", 4)])
def test_a_flood_that_never_reads_locks_nobody_out(hub, kind, per_conn):
    """Also without pipelining past the cap: 32 connections each asking for the page 4 times
    (under the 8 a connection is answered in a row) and never reading hold 32 slots whose
    answers cannot be written; they give way all the same."""
    port = hub.portal_port
    request = FLOODS.get(kind, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    flood = Flood(port, request, per_conn=per_conn, read=False)
    try:
        time.sleep(0.5)
        took, tries = time_to_answer(port, give_up=15)
    finally:
        flood.close()
    print(f"\nlock-out, {kind} x{per_conn}, never read: GET /api/info answered in "
          f"{took * 1000:.0f} ms ({tries} tries)")
    assert tries == 1 and took < 1.0, (took, tries)


def test_pipelining_is_cut_at_eight_answers(hub):
    answer = raw_exchange(hub.portal_port, b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 20)
    assert answer.count(b"HTTP/1.1 200 ") == 8, answer.count(b"HTTP/1.1 200 ")
    assert answer.count(b"Connection: close\r\n") == 1


# ---------------------------------------------------------------------------------------------
# 8. Framing a proxy in front could read otherwise


FRAMINGS = {
    "signed-length": b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: +2\r\n\r\n{}",
    "listed-length": b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2, 2\r\n\r\n{}",
    "space-before-colon": b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "underscore-te": b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer_Encoding: chunked\r\n\r\n0\r\n\r\n",
    "two-te": b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te-in-http-1.0": b"GET /api/info HTTP/1.0\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "two-hosts": b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n\r\n",
}


@pytest.mark.parametrize("kind", sorted(FRAMINGS))
def test_ambiguous_framing_is_refused_with_400(hub, kind):
    answer = raw_exchange(hub.portal_port, FRAMINGS[kind])
    assert status_of(answer) == 400, answer[:200]
    assert b"Connection: close\r\n" in answer
    # Plain framing still works.
    plain = raw_exchange(hub.portal_port, b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                          b"Content-Length: 2\r\nConnection: close\r\n\r\n{}")
    assert status_of(plain) == 200, plain[:200]
