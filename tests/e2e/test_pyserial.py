"""pyserial's rfc2217:// client against serialhub serving a PTY (the PTY master is the device)."""

from __future__ import annotations

import random
import re
import socket
import termios
import threading
import time

import pytest
import serial

from conftest import recv_until_eof, wait_for

URL_VARIANTS = ["", "?ign_set_control"]

MIB = 1024 * 1024


def open_client(port: int, query: str = "", **kw) -> serial.Serial:
    kw.setdefault("baudrate", 115200)
    kw.setdefault("timeout", 1)
    return serial.serial_for_url(f"rfc2217://127.0.0.1:{port}{query}", **kw)


def ff_heavy(n: int, seed: int, ff_share: float = 0.3) -> bytes:
    """`n` random bytes, about `ff_share` of them 0xFF (Telnet's IAC, doubled on the wire)."""
    rng = random.Random(seed)
    data = bytearray(rng.randbytes(n))
    threshold = int(ff_share * 256)
    for i, r in enumerate(rng.randbytes(n)):
        if r < threshold:
            data[i] = 0xFF
    return bytes(data)


def roundtrip(ser: serial.Serial, pty, tag: bytes = b"ping"):
    """A few bytes each way, both byte-exact, within deadlines."""
    ser.write(tag + b"\xff\x00\xff")
    got = pty.read_exactly(len(tag) + 3, timeout=5)
    assert got == tag + b"\xff\x00\xff"
    pty.write_all(b"\xff" + tag[::-1] + b"\r\n", timeout=5)
    want = b"\xff" + tag[::-1] + b"\r\n"
    got = bytearray()
    deadline = time.monotonic() + 5
    while len(got) < len(want) and time.monotonic() < deadline:
        got += ser.read(len(want) - len(got))
    assert bytes(got) == want


def wait_speed(pty, baud: int):
    wait_for(lambda: pty.ospeed() == baud and pty.ispeed() in (0, baud), 3, what=f"{baud} Bd on the PTY")


# ---------------------------------------------------------------------------------------------
# Line settings


@pytest.mark.parametrize("query", URL_VARIANTS, ids=["plain", "ign_set_control"])
def test_baud_changes_reach_the_port(pty_server, query):
    d, pty, port = pty_server
    with open_client(port, query) as ser:
        for baud in (9600, 921600, 1500000, 2000000, 250000, 115200, 460800):
            ser.baudrate = baud  # pyserial waits for the server's answer (or raises)
            wait_speed(pty, baud)
            std = getattr(termios, f"B{baud}", None)
            if std is not None and baud != 250000:
                attrs = pty.attrs()
                assert attrs[5] == std and attrs[4] == std, f"{baud}: termios speeds {attrs[4:6]}"
        ser.baudrate = 250000
        wait_speed(pty, 250000)  # a non-standard rate (BOTHER), read back with TCGETS2
        roundtrip(ser, pty)


# Linux's PTY driver forces CS8 and clears PARENB on every termios change (pty_set_termios in
# drivers/tty/pty.c), so on a PTY only the stop bits (CSTOPB) of a format change are visible in
# termios. Data bits and parity are checked through what pyserial verifies (it raises unless the
# server's answer repeats the requested value) and the daemon's own debug log of what it applied.


@pytest.mark.parametrize("query", URL_VARIANTS, ids=["plain", "ign_set_control"])
def test_format_changes_reach_the_port(serialhub, pty_device, query):
    pty = pty_device()
    d = serialhub(f"{pty.path}=0", env={"RUST_LOG": "debug"})
    port = d.port(pty.path)
    d.wait_opened(pty.path)
    cases = [
        ((7, serial.PARITY_EVEN, serial.STOPBITS_TWO), "7E2", 2),
        ((5, serial.PARITY_EVEN, serial.STOPBITS_TWO), "5E2", 2),
        ((8, serial.PARITY_ODD, serial.STOPBITS_ONE), "8O1", 1),
        ((6, serial.PARITY_NONE, serial.STOPBITS_TWO), "6N2", 2),
        ((8, serial.PARITY_NONE, serial.STOPBITS_ONE), "8N1", 1),
    ]
    with open_client(port, query) as ser:
        for (bits, parity, stop), name, stop_bits in cases:
            start = len(d.lines)
            # pyserial waits for the answers and raises unless they repeat the requested values
            ser.bytesize, ser.parity, ser.stopbits = bits, parity, stop
            wait_for(lambda: pty.line_format()[2] == stop_bits, 3, what=f"{stop_bits} stop bits on the PTY")
            # A PTY keeps CS8 and no parity whatever is set, and the API does not show the line
            # format: the daemon's own debug trace of what it applied is the one witness left.
            d.wait_log(rf"line settings 115200 {name}\b", timeout=3, start=start)
        roundtrip(ser, pty)


@pytest.mark.parametrize("query", URL_VARIANTS, ids=["plain", "ign_set_control"])
def test_settings_restored_after_client_leaves(pty_server, query):
    d, pty, port = pty_server
    with open_client(port, query) as ser:
        ser.baudrate = 250000
        ser.bytesize, ser.parity, ser.stopbits = 7, serial.PARITY_ODD, serial.STOPBITS_TWO
        wait_for(lambda: pty.ospeed() == 250000 and pty.line_format()[2] == 2, 3, what="250000 Bd, 2 stop bits")
        ser.dtr = False
        ser.rts = True
    wait_for(
        lambda: pty.ospeed() == 115200 and pty.line_format() == (8, "N", 1),
        5,
        what="115200 8N1 restored after the client closed",
    )
    attrs = pty.attrs()
    assert attrs[4] == attrs[5] == termios.B115200
    # and the next client starts from the configured settings and works
    with open_client(port, query) as ser:
        roundtrip(ser, pty)


# ---------------------------------------------------------------------------------------------
# Data


@pytest.fixture(scope="module")
def one_mib():
    return ff_heavy(MIB, seed=2217)


def test_bulk_client_to_device(pty_server, one_mib):
    d, pty, port = pty_server
    with open_client(port, baudrate=921600) as ser:
        wait_speed(pty, 921600)
        err: list[BaseException] = []

        def send():
            try:
                ser.write(one_mib)
            except BaseException as e:  # surfaced below
                err.append(e)

        t = threading.Thread(target=send, daemon=True)
        t.start()
        got = pty.read_exactly(len(one_mib), timeout=90)
        t.join(10)
        assert not err, err
        assert len(got) == len(one_mib), f"device received {len(got)} of {len(one_mib)} bytes"
        assert got == one_mib, f"first difference at {next(i for i, (a, b) in enumerate(zip(got, one_mib)) if a != b)}"
        roundtrip(ser, pty)


def test_bulk_device_to_client(pty_server, one_mib):
    d, pty, port = pty_server
    with open_client(port, baudrate=921600, timeout=0.5) as ser:
        wait_speed(pty, 921600)
        err: list[BaseException] = []

        def send():
            try:
                pty.write_all(one_mib, timeout=90)
            except BaseException as e:
                err.append(e)

        t = threading.Thread(target=send, daemon=True)
        t.start()
        got = bytearray()
        deadline = time.monotonic() + 90
        while len(got) < len(one_mib) and time.monotonic() < deadline:
            got += ser.read(min(65536, len(one_mib) - len(got)))
        t.join(10)
        assert not err, err
        assert len(got) == len(one_mib), f"client received {len(got)} of {len(one_mib)} bytes"
        assert bytes(got) == one_mib
        roundtrip(ser, pty)


# ---------------------------------------------------------------------------------------------
# Purge, break, modem state


@pytest.mark.parametrize("query", URL_VARIANTS, ids=["plain", "ign_set_control"])
def test_purge_is_answered(pty_server, query):
    d, pty, port = pty_server
    with open_client(port, query) as ser:
        # pyserial waits for the PURGE-DATA answer and raises if it does not come in 3 s
        t0 = time.monotonic()
        ser.reset_input_buffer()
        ser.reset_output_buffer()
        assert time.monotonic() - t0 < 2.0, "PURGE answers were not immediate"
        # device data that arrived before an input purge is gone, what comes after arrives
        roundtrip(ser, pty)
        pty.write_all(b"stale", timeout=5)
        wait_for(lambda: ser.in_waiting >= 5, 5, what="stale bytes at the client")
        ser.reset_input_buffer()
        assert ser.in_waiting == 0
        roundtrip(ser, pty, b"after-purge")


def test_break(pty_server):
    d, pty, port = pty_server
    with open_client(port) as ser:
        t0 = time.monotonic()
        ser.break_condition = True  # waits for the SET-CONTROL answer or raises
        ser.break_condition = False
        ser.send_break(0.05)
        assert time.monotonic() - t0 < 2.0, "break SET-CONTROL answers were not immediate"
        roundtrip(ser, pty)


def test_modem_state_poll(pty_server):
    d, pty, port = pty_server
    with open_client(port, "?poll_modem") as ser:
        for name in ("cts", "dsr", "ri", "cd"):
            t0 = time.monotonic()
            value = getattr(ser, name)
            took = time.monotonic() - t0
            assert isinstance(value, bool), (name, value)
            # pyserial waits up to 3 s for a NOTIFY-MODEMSTATE answer before giving up
            assert took < 1.0, f"{name}: modem state poll not answered promptly ({took:.2f} s)"
        roundtrip(ser, pty)


@pytest.mark.parametrize("query", URL_VARIANTS, ids=["plain", "ign_set_control"])
def test_dtr_rts_on_pty(pty_server, query):
    """A PTY has no modem lines: DTR/RTS changes must still be answered and not break the port."""
    d, pty, port = pty_server
    with open_client(port, query) as ser:
        t0 = time.monotonic()
        for _ in range(3):
            ser.dtr = False
            ser.rts = True
            ser.dtr = True
            ser.rts = False
        limit = 3.0 if query else 1.5  # ign_set_control sleeps 100 ms per change by design
        assert time.monotonic() - t0 < limit, "SET-CONTROL answers were not immediate"
        roundtrip(ser, pty)


# ---------------------------------------------------------------------------------------------
# One controlling client; misbehaving clients


def test_second_client_is_refused_with_busy_reject(serialhub, pty_device, tmp_path):
    """`busy = "reject"` keeps the one-client rule (the default shares: test_share.py)."""
    pty = pty_device()
    cfg = tmp_path / "serialhub.toml"
    cfg.write_text(f'[[device]]\npath = "{pty.path}"\nport = 0\nbusy = "reject"\n')
    d = serialhub(extra=("--config", str(cfg)))
    port = d.port(pty.path)
    d.wait_opened(pty.path)
    with open_client(port) as ser:
        roundtrip(ser, pty, b"first")
        first = d.wait_client(pty.path, role="control")["addr"]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s2:
            data, closed = recv_until_eof(s2, timeout=5)
        assert closed, f"second client was not closed (got {data!r})"
        assert data == b"Port already in use\r\n"
        # Refused, not made an observer: the first client is still the only one.
        assert [c["addr"] for c in d.device(pty.path)["clients"]] == [first]
        # the first client is untouched
        roundtrip(ser, pty, b"still-first")
        ser.baudrate = 921600
        wait_speed(pty, 921600)


def test_garbage_client_is_disconnected(pty_server):
    d, pty, port = pty_server
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        me = f"127.0.0.1:{s.getsockname()[1]}"
        d.wait_client(pty.path, me, role="control")
        s.sendall(b"\xff\xfd\x2c\xff\xfb\x2c")  # DO / WILL COM-PORT-OPTION
        s.sendall(b"\xff\xfa\x2c\x01" + bytes(range(1, 200)) * 10)  # subnegotiation, 2000+ bytes, no SE
        data, closed = recv_until_eof(s, timeout=5)
        assert closed, "server kept a client that sent an oversized subnegotiation"
    d.wait_client(pty.path, me, present=False)
    # Who ended it is only in the log (the API shows the client gone): the server, not the client.
    left = [ln for ln in d.lines if f"client {me} left" in ln]
    assert left and "client closed" not in left[0], d.log
    # the port is free again and works
    with open_client(port) as ser:
        roundtrip(ser, pty)
        ser.baudrate = 2000000
        wait_speed(pty, 2000000)


def test_client_vanishing_mid_transfer_frees_port(pty_server):
    """A client that closes abruptly (RST) while data flows both ways: the next client works."""
    d, pty, port = pty_server
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    me = f"127.0.0.1:{s.getsockname()[1]}"
    d.wait_client(pty.path, me)
    s.sendall(b"\xff\xfd\x2c\xff\xfb\x2c" + b"x" * 4096)
    pty.write_all(b"y" * 4096, timeout=5)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()
    d.wait_client(pty.path, me, present=False)
    pty.read_available()
    with open_client(port) as ser:
        roundtrip(ser, pty)


# ---------------------------------------------------------------------------------------------
# Devices that are not there (yet)


def test_missing_device_is_retried(serialhub, pty_device, tmp_path):
    link = tmp_path / "ttyUSB-later"
    d = serialhub(f"{link}=0")
    port = d.port(str(link))
    # a client meanwhile is told and closed, and the daemon carries on
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        data, closed = recv_until_eof(s, timeout=5)
    assert closed and b"not available" in data, data
    assert d.alive()
    assert d.device(str(link))["state"] not in d.OPEN
    # The message a user must see, with what to check (the API's `problem` comes only once
    # the retries go on failing).
    assert re.search(r"cannot open " + re.escape(str(link)) + r".*plugged in", d.log), d.log
    # the device appears: the back-off (<= 30 s) retry opens it
    pty = pty_device()
    link.symlink_to(pty.path)
    d.wait_opened(str(link), timeout=35)
    with open_client(port) as ser:
        ser.baudrate = 921600
        wait_speed(pty, 921600)
        roundtrip(ser, pty)


def test_two_devices_are_independent(serialhub, pty_device):
    a, b = pty_device(), pty_device()
    d = serialhub(f"{a.path}=0", f"{b.path}=0")
    pa, pb = d.port(a.path), d.port(b.path)
    assert pa != pb
    d.wait_opened(a.path)
    d.wait_opened(b.path)
    with open_client(pa) as sa, open_client(pb) as sb:
        sa.baudrate = 921600
        sb.baudrate = 57600
        wait_speed(a, 921600)
        wait_speed(b, 57600)
        roundtrip(sa, a, b"A")
        roundtrip(sb, b, b"B")
        assert b.read_available() == b""


def test_sigterm_with_client_restores_device(pty_server):
    """SIGTERM while a client holds the port at other settings: the daemon closes the client,
    puts the port back to its configured 115200 8N1 and exits 0."""
    d, pty, port = pty_server
    ser = open_client(port)
    try:
        ser.baudrate = 921600
        ser.stopbits = serial.STOPBITS_TWO
        wait_for(lambda: pty.ospeed() == 921600 and pty.line_format()[2] == 2, 3, what="921600, 2 stop bits")
        t0 = time.monotonic()
        rc = d.stop(timeout=10)
        assert rc == 0, d.log
        assert time.monotonic() - t0 < 5, "shutdown took too long"
        assert pty.ospeed() == 115200 and pty.line_format() == (8, "N", 1), (pty.ospeed(), pty.line_format())
    finally:
        ser.close()
