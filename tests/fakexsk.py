"""A stand-in for kbypass.xsk.socket.XskSocket: the four rings in bytearrays, with the kernel's side
driven by the test (deliver frames, send what is on the TX ring). Monkeypatch it over
kbypass.port.afxdp.XskSocket and the real AfXdpPort runs on it without a socket or root."""

import socket

import numpy as np

from kbypass.xsk import consts
from kbypass.xsk.ring import ConsumerRing, ProducerRing, ring_layout


class FakeXsk:
    """Stands in for XskSocket: four rings in bytearrays; the test drives the kernel side by hand."""

    def __init__(self, umem, ifname, queue=0, *, rx_size, tx_size, fill_size, comp_size, **_):
        self.umem, self.mode = umem, "copy"
        self.kicks = 0
        # a real descriptor for the C lane's sendto/recv "kicks": the other end counts them
        self.sock, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.peer.setblocking(False)
        self.fd = self.sock.fileno()

        def ring(cls, size, dtype, name):
            lay = ring_layout(size, dtype)
            buf = bytearray(lay.pop("bytes"))
            return cls(buf, name=name, **lay), ring_layout(size, dtype), buf

        self.rx, self._rxl, self._rxb = ring(ConsumerRing, rx_size, consts.XDP_DESC, "RX")
        self.tx, self._txl, self._txb = ring(ProducerRing, tx_size, consts.XDP_DESC, "TX")
        self.fill, self._fl, self._fb = ring(ProducerRing, fill_size, consts.UMEM_ADDR, "fill")
        self.comp, self._cl, self._cb = ring(ConsumerRing, comp_size, consts.UMEM_ADDR, "completion")
        # the kernel's own view of the same memory
        self.k_rx = ProducerRing(self._rxb, **{k: v for k, v in self._rxl.items() if k != "bytes"})
        self.k_tx = ConsumerRing(self._txb, **{k: v for k, v in self._txl.items() if k != "bytes"})
        self.k_fill = ConsumerRing(self._fb, **{k: v for k, v in self._fl.items() if k != "bytes"})
        self.k_comp = ProducerRing(self._cb, **{k: v for k, v in self._cl.items() if k != "bytes"})

    # kernel side
    def deliver(self, frames: list[bytes]) -> int:
        """Receive frames from the wire: take fill addresses, copy data past the headroom, post to RX."""
        idx, n = self.k_fill.peek(len(frames))
        addrs = self.k_fill.read_slots(idx, n)
        self.k_fill.release(n)
        ridx, m = self.k_rx.reserve(n)
        assert m == n
        descs = np.zeros(n, dtype=consts.XDP_DESC)
        for i in range(n):
            a = int(addrs[i]) + self.umem.headroom + consts.XDP_PACKET_HEADROOM
            self.umem.array[a : a + len(frames[i])] = np.frombuffer(frames[i], dtype=np.uint8)
            descs[i] = (a, len(frames[i]), 0)
        self.k_rx.write_slots(ridx, descs)
        self.k_rx.submit(n)
        return n

    def deliver_chains(self, frames: list[bytes], room: int) -> int:
        """deliver() as a multi-buffer socket does (XDP_USE_SG): each frame in pieces of at most `room` bytes
        over consecutive fill frames, XDP_PKT_CONTD on every piece but the last. Returns descriptors posted."""
        pieces = [(f[o : o + room], o + room < len(f)) for f in frames for o in range(0, len(f), room)]
        idx, n = self.k_fill.peek(len(pieces))
        assert n == len(pieces), "not enough fill frames for the chains"
        addrs = self.k_fill.read_slots(idx, n)
        self.k_fill.release(n)
        ridx, m = self.k_rx.reserve(n)
        assert m == n
        descs = np.zeros(n, dtype=consts.XDP_DESC)
        for i, (piece, more) in enumerate(pieces):
            a = int(addrs[i]) + self.umem.headroom + consts.XDP_PACKET_HEADROOM
            self.umem.array[a : a + len(piece)] = np.frombuffer(piece, dtype=np.uint8)
            descs[i] = (a, len(piece), consts.XDP_PKT_CONTD if more else 0)
        self.k_rx.write_slots(ridx, descs)
        self.k_rx.submit(n)
        return n

    def send_all(self) -> list[bytes]:
        """Transmit everything on the TX ring and post completions."""
        idx, n = self.k_tx.peek(1 << 20)
        descs = self.k_tx.read_slots(idx, n)
        self.k_tx.release(n)
        out, more = [], False
        for d in descs:  # a multi-buffer chain (XDP_PKT_CONTD on all but its last) is one packet
            piece = self.umem.array[int(d["addr"]) : int(d["addr"]) + int(d["len"])].tobytes()
            out[-1:] = [out[-1] + piece] if more else out[-1:] + [piece]
            more = bool(d["options"] & consts.XDP_PKT_CONTD)
        cidx, m = self.k_comp.reserve(n)
        assert m == n
        self.k_comp.write_slots(cidx, descs["addr"].copy())
        self.k_comp.submit(n)
        return out

    # XskSocket API used by the port
    def statistics(self):
        return dict.fromkeys(consts.XDP_STATISTICS_FIELDS, 0)

    def kick_tx(self):
        self.kicks += 1
        return 0

    def set_tx_budget(self, frames):
        return 32  # as a kernel without XDP_MAX_TX_SKB_BUDGET

    def wake_rx(self):
        pass

    def poll(self, timeout):
        return self.rx.available() > 0

    def close(self):
        self.sock.close()
        self.peer.close()


def run_sink(monkeypatch, ops, rounds, *, chains_room: int | None = None, **port_options):
    """A sink with the sequence check on an AfXdpPort over FakeXsk (batch backend `ops`), one run per round
    of frames delivered (as chains of `chains_room`-byte pieces when given, multi-buffer): per round
    (packets, bytes, seq verdict, latency samples), the port's rx counters, and whether consume() ran."""
    from kbypass.apps.sink import Sink
    from kbypass.port import afxdp as afxdp_mod

    monkeypatch.setattr(afxdp_mod, "XskSocket", FakeXsk)
    options = {**dict(frames=8192, fill_size=2048, rx_size=2048, tx_size=64, comp_size=64), **port_options}
    port = afxdp_mod.AfXdpPort("fake0", batch_ops=ops, **options)
    try:
        sink = Sink(port, batch=64, check_seq=True)
        results = []
        for frames in rounds:
            if chains_room:
                port.xsk.deliver_chains(frames, chains_room)
            else:
                assert port.xsk.deliver(frames) == len(frames)  # the fill ring has the frames given back
            res = sink.run(count=len(frames), idle_timeout=2)
            results.append((res.packets, res.bytes, res.seq, res.latency_us and res.latency_us["samples"]))
        port.check(app=0)  # every frame back with the kernel or free: nothing held, nothing lost
        return results, {k: port.stats[k] for k in ("rx_packets", "rx_bytes")}, port.can_consume
    finally:
        port.close()
