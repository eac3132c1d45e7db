"""Test harness: the sans-IO TCP (kbypass.proto.tcp) behind a TUN device in a network namespace of its own,
so the Linux stack of that namespace (curl, python -m http.server, nginx, socat) is the independent peer.

The kernel owns KERNEL_IP on the TUN; our TCP answers for OUR_IP behind it. One thread reads IPv4 packets
from the TUN, parses and dispatches them (connection, listener, or a RST for a closed port), runs the
applications and the timers, and writes the segments back, dropping a seeded fraction both ways (loss
injected in userspace: no kernel module needed). This exercises item 1 of issue 18 against Linux before the
AF_XDP endpoint exists; the endpoint's own tests cover the bypass path.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import random
import select
import struct
import subprocess
import threading
import time

from kbypass.netns import entered
from kbypass.proto import tcp
from kbypass.proto.ipv4 import build_ipv4, ip_bytes, ip_str, parse_ipv4

TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
KERNEL_IP, OUR_IP = "10.77.0.1", "10.77.0.2"


class App:
    """What runs on one connection; override what you need. Called on the harness thread."""

    def event(self, conn: tcp.TcpConnection, ev) -> None: ...

    def pump(self, conn: tcp.TcpConnection) -> None: ...


class HttpFile(App):
    """HTTP/1.1 response with `body` to the first request, then close (Connection: close)."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.req = b""
        self.out: memoryview | None = None
        self.done = False

    def event(self, conn, ev):
        if isinstance(ev, tcp.Data) and self.out is None:
            self.req += ev.data
            if b"\r\n\r\n" in self.req:
                head = (f"HTTP/1.1 200 OK\r\nContent-Length: {len(self.body)}\r\nConnection: close\r\n"
                        f"Content-Type: application/octet-stream\r\n\r\n").encode()
                self.out = memoryview(head + self.body)

    def pump(self, conn):
        while self.out is not None and len(self.out) and conn.state in (tcp.State.ESTABLISHED, tcp.State.CLOSE_WAIT):
            n = conn.send(self.out[:1 << 18])
            if not n:
                return
            self.out = self.out[n:]
        if self.out is not None and not len(self.out) and not self.done:
            self.done = True
            conn.shutdown()


class Fetch(App):
    """Send `request`, collect everything until the peer's FIN, then close."""

    def __init__(self, request: bytes, half_close: bool = False) -> None:
        self.request, self.half_close = request, half_close
        self.sent = False
        self.data = bytearray()
        self.events: list = []
        self.finished = threading.Event()

    def event(self, conn, ev):
        if isinstance(ev, tcp.Data):
            self.data += ev.data
            return
        self.events.append(ev)
        if isinstance(ev, tcp.Connected) and not self.sent:
            self.sent = True
            conn.send(self.request)
            if self.half_close:
                conn.shutdown()
        elif isinstance(ev, tcp.EndOfStream):
            conn.shutdown()
        if isinstance(ev, (tcp.Closed, tcp.Reset)):
            self.finished.set()

    def body(self) -> bytes:
        head, _, body = bytes(self.data).partition(b"\r\n\r\n")
        assert head.split(b" ")[1] == b"200", head[:200]
        return body


class TunHost:
    def __init__(self, ns: str, *, loss: float = 0.0, seed: int = 1, config: tcp.TcpConfig | None = None,
                 dev: str = "kptun0") -> None:
        self.ns, self.loss, self.dev = ns, loss, dev
        self.rng = random.Random(seed)
        self.config = config or tcp.TcpConfig()
        self.our, self.kernel = ip_bytes(OUR_IP), ip_bytes(KERNEL_IP)
        with entered(ns):
            self.fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
            fcntl.ioctl(self.fd, TUNSETIFF, struct.pack("16sH", dev.encode(), IFF_TUN | IFF_NO_PI))
        for cmd in (f"addr add {KERNEL_IP}/24 dev {dev}", f"link set {dev} up", "link set lo up"):
            subprocess.run(["ip", "-n", ns, *cmd.split()], check=True)
        self.listeners: dict[int, tuple[tcp.TcpListener, type]] = {}
        self.conns: dict[tuple[str, int, int], tuple[tcp.TcpConnection, App]] = {}
        self.finished: list[tcp.TcpConnection] = []  # connections done, for their stats
        self.pending: list = []  # callables to run on the harness thread
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.stats = {"in": 0, "out": 0, "dropped": 0, "parse_errors": 0, "resets": 0}
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    # ------------------------------------------------------------------ API for tests (any thread)
    def listen(self, port: int, factory) -> None:
        self._call(lambda: self.listeners.__setitem__(port, (tcp.TcpListener(OUR_IP, port, self.config), factory)))

    def connect(self, port: int, app: App, local_port: int = 45000) -> None:
        def go():
            conn = tcp.TcpConnection.connect((OUR_IP, local_port), (KERNEL_IP, port), time.monotonic(), self.config)
            self.conns[(KERNEL_IP, port, local_port)] = (conn, app)
        self._call(go)

    def _call(self, fn) -> None:
        done = threading.Event()

        def run():
            fn()
            done.set()
        with self.lock:
            self.pending.append(run)
        assert done.wait(5), "the harness thread is not running"  # noqa: S101 (test support)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        os.close(self.fd)

    # ------------------------------------------------------------------ the harness thread
    def _write(self, seg: tcp.Segment, dst: str) -> None:
        if self.loss and self.rng.random() < self.loss:
            self.stats["dropped"] += 1
            return
        self.stats["out"] += 1
        try:
            os.write(self.fd, build_ipv4(self.our, ip_bytes(dst), 6, seg.encode(OUR_IP, dst)))
        except BlockingIOError:
            self.stats["dropped"] += 1

    def _packet(self, pkt: bytes, now: float) -> None:
        hdr = parse_ipv4(pkt)
        if isinstance(hdr, str) or hdr.proto != 6 or hdr.dst != self.our:
            return
        if self.loss and self.rng.random() < self.loss:
            self.stats["dropped"] += 1
            return
        self.stats["in"] += 1
        src = ip_str(hdr.src)
        try:
            seg = tcp.parse_segment(src, OUR_IP, pkt[hdr.header_length:hdr.total_length])
        except tcp.TcpParseError:
            self.stats["parse_errors"] += 1
            return
        key = (src, seg.src_port, seg.dst_port)
        entry = self.conns.get(key)
        if entry is not None:
            entry[0].receive(seg, now)
            return
        lst = self.listeners.get(seg.dst_port)
        if lst is None:
            rst = tcp.reset_for(seg)
            if rst is not None:
                self.stats["resets"] += 1
                self._write(rst, src)
            return
        out, conn = lst[0].receive(seg, src, now)
        for s in out:
            self._write(s, src)
        if conn is not None:
            self.conns[key] = (conn, lst[1]())

    def _loop(self) -> None:
        while not self.stop.is_set():
            with self.lock:
                todo, self.pending = self.pending, []
            for fn in todo:
                fn()
            now = time.monotonic()
            timers = [t for t in (c.next_timer() for c, _a in self.conns.values()) if t is not None]
            timers += [t for t in (lst.next_timer() for lst, _f in self.listeners.values()) if t is not None]
            wait = min([0.05] + [max(0.0, t - now) for t in timers])
            select.select([self.fd], [], [], wait)
            now = time.monotonic()
            for _ in range(256):
                try:
                    pkt = os.read(self.fd, 65536)
                except BlockingIOError:
                    break
                self._packet(pkt, now)
            for lst, _f in self.listeners.values():
                if (t := lst.next_timer()) is not None and t <= now:
                    for ip, s in lst.on_timer(now):
                        self._write(s, ip)
            for key, (conn, app) in list(self.conns.items()):
                if (t := conn.next_timer()) is not None and t <= now:
                    conn.on_timer(now)
                while (ev := conn.next_event()) is not None:
                    app.event(conn, ev)
                app.pump(conn)
                for s in conn.segments_to_send(now):
                    self._write(s, key[0])
                if conn.finished or (conn.state is tcp.State.TIME_WAIT and conn not in self.finished):
                    self.finished.append(conn)
                if conn.finished:
                    del self.conns[key]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
