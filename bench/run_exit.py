"""How long an app's exit takes under `kbypass run` with a TCP connection, against the same app's TCP on the kernel.

The app (tests/netns/progs/tcp_exit_sender.c) connects from host b to a kernel server in host a, writes 100
bytes, then: `closed` (close, 0.2 s, exit: nothing left to deliver), `close` (close then exit at once: the exit
waits for the FIN's ACK, csrc/preload/kbp_tcpexit.c) or `exit` (exit with the connection open: handed to the
kernel's TCP with CAP_NET_ADMIN). The exit's time is from the app's last clock reading before exit() to the
moment its parent (this script, which `kbypass run` exec'ed into the app for) sees it gone. The anchor is the
same run with KBYPASS_TCP=0 (the shim loaded, TCP on the kernel); contenders take turns within each run.

    ip netns list | grep kb-   # a testbed: kbypass testbed up
    python bench/run_exit.py --prefix kb --runs 15
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KB = str(Path(sys.executable).with_name("kbypass"))
SERVER = r"""
import socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(64)
print("ready", flush=True)
def drain(c):
    while c.recv(65536):
        pass
    c.close()
while True:
    c, _ = s.accept(); threading.Thread(target=drain, args=(c,), daemon=True).start()
"""
MODES = ("closed", "close", "exit")
CONTENDERS = {"kernel TCP (anchor)": {"KBYPASS_TCP": "0"}, "kbypass run TCP": {}}


def once(prefix: str, exe: str, ip: str, port: int, mode: str, env: dict, small: str) -> float:
    with open(small, "rb") as f:
        p = subprocess.Popen(["ip", "netns", "exec", f"{prefix}-b", KB, "run", "--", exe, "connect", ip, str(port),
                              mode], stdin=f, stdout=subprocess.PIPE, text=True, env={**os.environ, **env})
        out = p.stdout.read()
        p.wait()
    end = time.monotonic_ns()
    return (end - int(out.split("exiting ")[1].split()[0])) / 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prefix", default=os.environ.get("KBYPASS_TESTBED", "kb"))
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--port", type=int, default=9311)
    args = ap.parse_args()
    ip = "10.77.0.1"  # host a's address on the testbed
    with tempfile.TemporaryDirectory(prefix="kb-run-exit-") as d:
        exe, small = os.path.join(d, "sender"), os.path.join(d, "small")
        subprocess.run(["gcc", "-O1", "-pthread", "-o", exe, str(ROOT / "tests/netns/progs/tcp_exit_sender.c")],
                       check=True)
        Path(small).write_bytes(b"x" * 100)
        srv = subprocess.Popen(["ip", "netns", "exec", f"{args.prefix}-a", sys.executable, "-c", SERVER, ip,
                                str(args.port)], stdout=subprocess.PIPE, text=True)
        try:
            assert srv.stdout.readline().strip() == "ready"
            us = {(c, m): [] for c in CONTENDERS for m in MODES}
            for _ in range(args.runs):
                for m in MODES:
                    for c, env in CONTENDERS.items():
                        us[(c, m)].append(once(args.prefix, exe, ip, args.port, m, env, small))
        finally:
            srv.kill()
            srv.wait()
    print(f"the app's exit, median microseconds of {args.runs} runs (load {os.getloadavg()[0]:.1f})")
    print(f"{'mode':8} " + " ".join(f"{c:>22}" for c in CONTENDERS) + "   run/kernel")
    for m in MODES:
        med = [statistics.median(us[(c, m)]) for c in CONTENDERS]
        print(f"{m:8} " + " ".join(f"{v:22.0f}" for v in med) + f"   {med[1] / med[0]:8.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
