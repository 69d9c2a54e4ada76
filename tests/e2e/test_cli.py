"""Command line and configuration errors, against the real binary."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import REPO, run_cli


def cargo_version() -> str:
    text = (REPO / "Cargo.toml").read_text()
    return re.search(r'^version\s*=\s*"([^"]+)"', text, re.M).group(1)


def test_version():
    r = run_cli("--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"serialhub {cargo_version()}"


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["serve", "--help"]])
def test_help(args):
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    assert "USAGE" in r.stdout and "serve" in r.stdout and "--device" in r.stdout


def test_unknown_command_is_usage_error():
    r = run_cli("srve")
    assert r.returncode == 2
    assert "srve" in r.stderr


BAD_CONFIGS = {
    # name: (text, line, key)
    "unknown_key": (
        'bind = "127.0.0.1"\nbase_port = 4001\n\n[[device]]\npath = "/dev/ttyUSB0"\nbaudrate = 9600\n',
        6,
        "baudrate",
    ),
    "unknown_top_key": ('bind = "127.0.0.1"\nbase_prot = 4001\n', 2, "base_prot"),
    "wrong_type": ('bind = "127.0.0.1"\n\nbase_port = "4001"\n', 3, "base_port"),
    "wrong_type_in_device": ('[[device]]\npath = "/dev/ttyUSB0"\nport = "x"\n', 3, "port"),
    "bad_address": ('bind = "localhost:80"\n', 1, "bind"),
}

@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_config_error_names_file_line_key(tmp_path: Path, case):
    text, line, key = BAD_CONFIGS[case]
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    r = run_cli("serve", "--config", str(cfg), "--bind", "127.0.0.1", "--device", "/dev/null=0")
    assert r.returncode == 2, (r.returncode, r.stderr)
    err = r.stderr
    assert str(cfg) in err, err
    assert re.search(rf"\bline {line}\b", err), f"line {line} not named: {err}"
    assert key in err, f"key `{key}` not named: {err}"
    assert "listening" not in err


def test_missing_config_file(tmp_path: Path):
    cfg = tmp_path / "nope.toml"
    r = run_cli("serve", "--config", str(cfg))
    assert r.returncode == 2
    assert str(cfg) in r.stderr


def test_no_devices_is_usage_error(tmp_path: Path):
    # With hotplug on, an empty config is fine (devices come and go); without, it serves nothing.
    cfg = tmp_path / "empty.toml"
    cfg.write_text('bind = "127.0.0.1"\n')
    r = run_cli("serve", "--config", str(cfg), "--no-hotplug")
    assert r.returncode == 2
    assert "no devices" in r.stderr


def test_bad_device_flag():
    r = run_cli("serve", "--bind", "127.0.0.1", "--device", "/dev/ttyUSB0=notaport")
    assert r.returncode == 2
    assert "notaport" in r.stderr
