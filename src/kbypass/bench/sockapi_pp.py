"""The `kbypass.socket` row of `kbypass bench latency`: kbypass pingpong's server and client
(kbypass.apps.pingpong, sockperf's message format) over the Python socket API on the bypass, so the row
measures what an application written against `socket.socket` gets, against the native endpoint API of
the `kbypass afxdp busy` row. Run inside a testbed host, spinning (KBYPASS_SPIN_US) as the busy rows do:

    python -m kbypass.bench.sockapi_pp server IP PORT SECONDS                  # READY on stderr once bound
    python -m kbypass.bench.sockapi_pp client IP DST_IP PORT SECONDS SIZE     # prints the summary as JSON
"""

from __future__ import annotations

import json
import sys

from kbypass import socket as kbsocket
from kbypass.apps import pingpong

READY = "sockapi_pp server ready"  # the server's stderr line once its socket is bound and accelerated


class SocketAsEndpoint:
    """The two calls kbypass.apps.pingpong makes of an endpoint, on a kbypass.socket socket."""

    def __init__(self, sock) -> None:
        self.sock = sock

    def recvfrom(self, timeout: float | None = None):
        self.sock.settimeout(timeout)
        return self.sock.recvfrom(65536)

    def sendto(self, payload: bytes, addr) -> int:
        return self.sock.sendto(payload, addr)


def _open(ip: str, port: int):
    s = kbsocket.socket(kbsocket.AF_INET, kbsocket.SOCK_DGRAM)
    s.bind((ip, port))
    if not s.accelerated:
        raise SystemExit(f"kbypass: error: {ip}:{port} is not accelerated: {s.kbypass_reason}")
    return s


def main(argv: list[str]) -> int:
    if argv[:1] == ["server"] and len(argv) == 4:
        with _open(argv[1], int(argv[2])) as s:
            print(READY, file=sys.stderr, flush=True)
            res = pingpong.serve(SocketAsEndpoint(s), duration=float(argv[3]), idle_timeout=10)
        print(json.dumps({"received": res.received, "answered": res.answered}))
        return 0
    if argv[:1] == ["client"] and len(argv) == 6:
        with _open(argv[1], 0) as s:
            res = pingpong.ping(SocketAsEndpoint(s), (argv[2], int(argv[3])), size=int(argv[5]),
                                duration=float(argv[4]), warmup=1000)
        print(json.dumps(res.summary()))
        return 0 if res.samples else 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
