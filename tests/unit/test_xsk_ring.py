"""The ring protocol against a fake kernel: a bytearray with the kernel's layout, driven from the test."""

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kbypass.errors import EnvironmentProblem, UsageError
from kbypass.xsk import consts
from kbypass.xsk.ring import ConsumerRing, ProducerRing, check_architecture, check_size, ring_layout


class FakeKernel:
    """The other side of one ring: reads/writes the shared words and slots directly."""

    def __init__(self, size, dtype, start=0):
        lay = ring_layout(size, dtype)
        self.buf = bytearray(lay.pop("bytes"))
        self.lay = lay
        self.size = size
        self.slots = np.frombuffer(self.buf, dtype=lay["dtype"], count=size, offset=lay["desc_off"])
        self.set_word("producer_off", start)
        self.set_word("consumer_off", start)

    def word(self, key):
        return struct.unpack_from("<I", self.buf, self.lay[key])[0]

    def set_word(self, key, value):
        struct.pack_into("<I", self.buf, self.lay[key], value & 0xFFFFFFFF)

    def kwargs(self):
        return dict(self.lay)

    # kernel as consumer of a producer ring (fill/TX)
    def consume(self, n):
        prod, cons = self.word("producer_off"), self.word("consumer_off")
        n = min(n, (prod - cons) & 0xFFFFFFFF)
        out = [self.slots[(cons + i) % self.size].copy() for i in range(n)]
        self.set_word("consumer_off", cons + n)
        return out

    # kernel as producer of a consumer ring (RX/completion)
    def produce(self, values):
        prod, cons = self.word("producer_off"), self.word("consumer_off")
        n = min(len(values), self.size - ((prod - cons) & 0xFFFFFFFF))
        for i in range(n):
            self.slots[(prod + i) % self.size] = values[i]
        self.set_word("producer_off", prod + n)
        return n


def test_sizes_must_be_powers_of_two():
    check_size("RX", 2048)
    for bad in (0, 3, 1000, -4, 2.0):
        with pytest.raises(UsageError, match="not a power of two"):
            check_size("RX", bad)
    k = FakeKernel(8, consts.UMEM_ADDR)
    kw = k.kwargs()
    kw["size"] = 6
    with pytest.raises(UsageError, match="fill ring size 6 is not a power of two"):
        ProducerRing(k.buf, name="fill", **kw)


def test_refuses_weakly_ordered_cpus():
    check_architecture("x86_64")
    for machine in ("aarch64", "ppc64le", "riscv64"):
        with pytest.raises(EnvironmentProblem, match="x86"):
            check_architecture(machine)


def test_producer_reserve_submit_is_seen_by_kernel_in_order():
    k = FakeKernel(8, consts.UMEM_ADDR)
    ring = ProducerRing(k.buf, **k.kwargs())
    idx, n = ring.reserve(5)
    assert n == 5
    ring.write_slots(idx, np.arange(100, 105, dtype=np.uint64))
    assert k.word("producer_off") == 0  # nothing visible before submit
    ring.submit(n)
    assert k.word("producer_off") == 5
    assert [int(x) for x in k.consume(10)] == [100, 101, 102, 103, 104]


def test_producer_never_overruns_the_consumer():
    k = FakeKernel(8, consts.UMEM_ADDR)
    ring = ProducerRing(k.buf, **k.kwargs())
    idx, n = ring.reserve(20)
    assert n == 8  # partial reservation, bounded by the ring
    ring.write_slots(idx, np.arange(8, dtype=np.uint64))
    ring.submit(n)
    assert ring.reserve(1)[1] == 0  # full: the kernel consumed nothing yet
    k.consume(3)
    idx, n = ring.reserve(5)
    assert n == 3  # re-reads the consumer only now
    ring.write_slots(idx, np.array([50, 51, 52], dtype=np.uint64))  # wraps to slots 0..2
    ring.submit(n)
    assert [int(x) for x in k.consume(8)] == [3, 4, 5, 6, 7, 50, 51, 52]


def test_cancel_returns_reserved_slots():
    k = FakeKernel(4, consts.UMEM_ADDR)
    ring = ProducerRing(k.buf, **k.kwargs())
    idx, n = ring.reserve(3)
    ring.cancel(2)
    ring.write_slots(idx, np.array([7], dtype=np.uint64))
    ring.submit(1)
    assert [int(x) for x in k.consume(4)] == [7]
    assert ring.free(4) == 4  # asks for 4, so the cached consumer index is refreshed


def test_consumer_peek_release_with_wrap():
    k = FakeKernel(4, consts.XDP_DESC)
    ring = ConsumerRing(k.buf, **k.kwargs())
    assert ring.peek(4) == (0, 0)
    descs = np.zeros(3, dtype=consts.XDP_DESC)
    descs["addr"] = [0, 2048, 4096]
    descs["len"] = [60, 61, 62]
    assert k.produce(descs) == 3
    idx, n = ring.peek(2)
    assert n == 2 and list(ring.read_slots(idx, n)["len"]) == [60, 61]
    ring.release(n)
    assert k.word("consumer_off") == 2
    descs["len"] = [70, 71, 72]
    assert k.produce(descs) == 3  # slots 3, 0, 1: wraps
    idx, n = ring.peek(10)
    got = ring.read_slots(idx, n)
    assert n == 4 and list(got["len"]) == [62, 70, 71, 72]
    assert list(got["addr"]) == [4096, 0, 2048, 4096]
    assert k.produce(descs) == 0  # not released yet: the kernel sees a full ring
    ring.release(n)
    assert k.produce(descs) == 3


def test_consumer_cancel_peeks_again():
    k = FakeKernel(8, consts.UMEM_ADDR)
    ring = ConsumerRing(k.buf, **k.kwargs())
    k.produce(np.array([1, 2, 3], dtype=np.uint64))
    idx, n = ring.peek(3)
    ring.cancel(n)
    idx2, n2 = ring.peek(3)
    assert (idx2, n2) == (idx, 3)
    assert list(ring.read_slots(idx2, n2)) == [1, 2, 3]


def test_indexes_wrap_at_2_to_the_32():
    start = 0xFFFFFFFE
    k = FakeKernel(4, consts.UMEM_ADDR, start=start)
    prod = ProducerRing(k.buf, **k.kwargs())
    for round_ in range(3):
        idx, n = prod.reserve(4)
        assert n == 4
        prod.write_slots(idx, np.arange(4, dtype=np.uint64) + 10 * round_)
        prod.submit(n)
        assert [int(x) for x in k.consume(4)] == [10 * round_ + i for i in range(4)]
    assert k.word("producer_off") == (start + 12) & 0xFFFFFFFF

    k2 = FakeKernel(4, consts.UMEM_ADDR, start=start)
    cons = ConsumerRing(k2.buf, **k2.kwargs())
    for round_ in range(3):
        k2.produce(np.arange(3, dtype=np.uint64) + round_)
        idx, n = cons.peek(8)
        assert n == 3 and list(cons.read_slots(idx, n)) == [round_, round_ + 1, round_ + 2]
        cons.release(n)


def test_need_wakeup_flag():
    k = FakeKernel(4, consts.UMEM_ADDR)
    ring = ProducerRing(k.buf, **k.kwargs())
    assert not ring.needs_wakeup()
    k.set_word("flags_off", consts.XDP_RING_NEED_WAKEUP)
    assert ring.needs_wakeup()
    k.set_word("flags_off", 0)
    assert not ring.needs_wakeup()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 20)), min_size=1, max_size=40),
       st.sampled_from([1, 2, 8, 16]), st.integers(0, 2**32 - 1))
def test_fifo_property(steps, size, start):
    """Whatever the interleaving, the kernel consumes exactly what we produced, in order, never more."""
    fk = FakeKernel(size, consts.UMEM_ADDR, start=start)
    prod = ProducerRing(fk.buf, **fk.kwargs())
    sent, seen, nxt = [], [], 0
    for produce, consume in steps:
        idx, n = prod.reserve(produce)
        assert n <= size
        vals = np.arange(nxt, nxt + n, dtype=np.uint64)
        prod.write_slots(idx, vals)
        prod.submit(n)
        sent += vals.tolist()
        nxt += n
        assert len(sent) - len(seen) <= size
        seen += [int(x) for x in fk.consume(consume)]
    seen += [int(x) for x in fk.consume(size)]
    assert seen == sent

    fk = FakeKernel(size, consts.UMEM_ADDR, start=start)
    cons = ConsumerRing(fk.buf, **fk.kwargs())
    made, got, nxt = [], [], 0
    for produce, consume in steps:
        vals = np.arange(nxt, nxt + produce, dtype=np.uint64)
        n = fk.produce(vals)
        made += vals[:n].tolist()
        nxt += n
        idx, m = cons.peek(consume)
        got += cons.read_slots(idx, m).tolist()
        cons.release(m)
    idx, m = cons.peek(size)
    got += cons.read_slots(idx, m).tolist()
    assert got == made
