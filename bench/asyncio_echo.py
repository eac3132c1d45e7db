"""The asyncio UDP echo example (examples/asyncio_echo.py) on the kernel and on the bypass, same code, same
client, one run: the example's one kbypass call falls back to a kernel socket when its interface is not
served (KBYPASS_IFACE=none), so the two rows differ only in the path. Server in host b on CPU 1, on
asyncio's loop and on uvloop; the client a kernel UDP socket in host a on CPU 0, one datagram in flight,
half the round trip reported (p50, p99). Brings its own testbed up and down.

    python bench/asyncio_echo.py --count 20000
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

from kbypass.host import testbed

HERE = os.path.dirname(os.path.abspath(__file__))
PREFIX = os.environ.get("KBYPASS_TESTBED", "kbe")
CLIENT = r"""
import socket, sys, time
dst = (sys.argv[1], int(sys.argv[2])); n = int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
out = []
for i in range(n + 500):
    t = time.perf_counter_ns(); s.sendto(b"x" * 64, dst); s.recvfrom(100)
    if i >= 500: out.append((time.perf_counter_ns() - t) / 2000)
out.sort(); print(out[len(out) // 2], out[int(len(out) * 0.99)])
"""


def one(a, b, loop: str, bypass: bool, count: int) -> tuple[float, float]:
    env = {**os.environ, **({} if bypass else {"KBYPASS_IFACE": "none"})}
    server = subprocess.Popen(["ip", "netns", "exec", b.netns, "taskset", "-c", "1", sys.executable,
                               os.path.join(HERE, "..", "examples", "asyncio_echo.py"), b.ipv4, "0", "--idle", "3",
                               *(["--uvloop"] if loop == "uvloop" else [])], env=env, stdout=subprocess.PIPE,
                              text=True)
    try:
        first = server.stdout.readline()
        if ("accelerated: True" in first) != bypass:
            raise SystemExit(f"unexpected server state: {first}")
        port = first.split(":")[1].split(",")[0]
        out = subprocess.run(["ip", "netns", "exec", a.netns, "taskset", "-c", "0", sys.executable, "-c", CLIENT,
                              b.ipv4, port, str(count)], capture_output=True, text=True, timeout=300, check=True)
        server.wait(30)
    finally:
        server.kill()
    p50, p99 = map(float, out.stdout.split())
    return p50, p99


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=20000)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    a, b = testbed.up(testbed.TestbedConfig(prefix=PREFIX))
    rows = {(lp, by): [] for lp in ("asyncio", "uvloop") for by in (False, True)}
    try:
        for _ in range(args.runs):
            for key in rows:
                rows[key].append(one(a, b, *key, args.count))
                time.sleep(0.5)
    finally:
        testbed.down(PREFIX)
    print(f"asyncio UDP echo, 64 B, one-way (half RTT), median of {args.runs} runs, us")
    for (lp, by), res in rows.items():
        print(f"  {lp:8} {'kbypass.aio (bypass)' if by else 'kernel socket':22} p50 {statistics.median(r[0] for r in res):7.2f}"
              f"  p99 {statistics.median(r[1] for r in res):8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
