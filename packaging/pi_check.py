"""`make pi-check`: prove the ARMv6 binary works, not just that it links.

Runs `serialhub serve` with the simulated ESP32 and the HTTP portal under
`qemu-arm -cpu arm1176` (an ARMv7 instruction anywhere raises SIGILL there), then from the host
flashes a 256 KiB image with esptool through RFC 2217, verifies it, checks the simulated flash,
and reads `/api/discover` with curl. Prints the binary's size against the 1.5 MB budget. Exit
status 0 only if everything holds.
"""

import os
import random
import re
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time

BUDGET = 1_500_000


def main() -> int:
    binary = sys.argv[1]
    size = os.path.getsize(binary)
    print(f"pi-check: {binary}: {size} bytes (budget {BUDGET})")
    ok = size < BUDGET
    readelf = subprocess.run(["readelf", "-A", binary], capture_output=True, text=True)
    arch = re.search(r"Tag_CPU_arch: (\S+)", readelf.stdout)
    print(f"pi-check: Tag_CPU_arch {arch.group(1) if arch else '?'}")
    with tempfile.TemporaryDirectory() as tmp:
        flash = os.path.join(tmp, "flash.bin")
        image = os.path.join(tmp, "image.bin")
        data = random.Random(6).randbytes(256 * 1024)
        with open(image, "wb") as f:
            f.write(data)
        env = dict(os.environ, RUST_LOG="info")
        proc = subprocess.Popen(
            ["qemu-arm", "-cpu", "arm1176", binary, "serve", "--bind", "127.0.0.1",
             "--no-hotplug", "--state", os.path.join(tmp, "ports.json"),
             "--http", "127.0.0.1:0", "--device", f"sim:{flash}=0"],
            stderr=subprocess.PIPE, text=True, env=env)
        port = None
        portal = None
        lines = []
        found = threading.Event()

        def pump():
            nonlocal port, portal
            for line in proc.stderr:
                lines.append(line)
                m = re.search(r"portal listening on (http://[0-9.:]+)", line)
                if m:
                    portal = m.group(1)
                m = re.search(r"\) listening on [0-9.]+:(\d+)", line)
                if m and port is None:
                    port = int(m.group(1))
                if port and portal:
                    found.set()

        threading.Thread(target=pump, daemon=True).start()
        try:
            if not found.wait(30):
                print("pi-check: FAIL: the daemon did not start under qemu-arm -cpu arm1176")
                print("".join(lines))
                return 1
            url = f"rfc2217://127.0.0.1:{port}"
            esptool = [sys.executable, "-m", "esptool", "--port", url]
            t0 = time.monotonic()
            for args in (["write-flash", "0x10000", image], ["verify-flash", "0x10000", image]):
                r = subprocess.run(esptool + args, capture_output=True, text=True, timeout=600)
                if r.returncode != 0:
                    print(f"pi-check: FAIL: esptool {' '.join(args)}\n{r.stdout}\n{r.stderr}")
                    return 1
            print(f"pi-check: esptool write-flash + verify-flash of 256 KiB: {time.monotonic() - t0:.1f} s")
            with open(flash, "rb") as f:
                f.seek(0x10000)
                if f.read(len(data)) != data:
                    print("pi-check: FAIL: simulated flash differs from the image")
                    return 1
            print("pi-check: simulated flash holds the image")
            r = subprocess.run(["curl", "-sf", f"{portal}/api/discover"], capture_output=True,
                               text=True, timeout=60)
            devices = json.loads(r.stdout or "{}").get("devices", []) if r.returncode == 0 else []
            if not any(d.get("port") == port and d.get("url", "").startswith("rfc2217://")
                       for d in devices):
                print(f"pi-check: FAIL: curl {portal}/api/discover: rc {r.returncode}: {r.stdout!r}")
                return 1
            print(f"pi-check: curl /api/discover lists {devices[0]['url']}")
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        if proc.returncode not in (0, None):
            print(f"pi-check: FAIL: daemon exited with {proc.returncode}")
            print("".join(lines[-20:]))
            return 1
    if not ok:
        print("pi-check: FAIL: binary over budget")
        return 1
    print("pi-check: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
