"""A plain asyncio UDP echo server; the one kbypass line is the endpoint call.

    ip netns exec kb-b python examples/asyncio_echo.py 10.77.0.2 9000            # asyncio's own loop
    ip netns exec kb-b python examples/asyncio_echo.py 10.77.0.2 9000 --uvloop   # the same on uvloop
    ip netns exec kb-a socat - UDP:10.77.0.2:9000                                # type a line: it comes back

It prints one line when it is up ("echo on IP:PORT, accelerated: True") and stops after --idle seconds
without a datagram (default: never), printing how many it echoed.
"""

import argparse
import asyncio
import sys

from kbypass import aio


class Echo(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.echoed = 0
        self.last = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data, addr) -> None:
        self.transport.sendto(data, addr)
        self.echoed += 1
        self.last = asyncio.get_running_loop().time()

    def error_received(self, exc) -> None:
        print(f"error: {exc}", file=sys.stderr)


async def main(ip: str, port: int, idle: float | None) -> int:
    loop = asyncio.get_running_loop()
    transport, echo = await aio.create_datagram_endpoint(Echo, local_addr=(ip, port))
    sock = transport.get_extra_info("socket")
    print(f"echo on {ip}:{sock.getsockname()[1]}, accelerated: {sock.accelerated}"
          + (f" ({sock.kbypass_reason})" if sock.kbypass_reason else ""), flush=True)
    start = loop.time()
    try:
        while idle is None or loop.time() - (echo.last or start) < idle:
            await asyncio.sleep(0.1)
    finally:
        transport.close()
    print(f"echoed {echo.echoed}", flush=True)
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="asyncio UDP echo server over kbypass")
    p.add_argument("ip")
    p.add_argument("port", type=int)
    p.add_argument("--idle", type=float, default=None)
    p.add_argument("--uvloop", action="store_true")
    a = p.parse_args()
    if a.uvloop:
        import uvloop

        raise SystemExit(uvloop.run(main(a.ip, a.port, a.idle)))
    raise SystemExit(asyncio.run(main(a.ip, a.port, a.idle)))
