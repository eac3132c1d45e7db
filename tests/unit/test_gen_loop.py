"""The generator loop with a fake port and a fake clock: rate, counts and frame recycling, no network."""

import numpy as np
import pytest

from kbypass.gen import afxdp as gen_mod
from kbypass.gen.flows import FlowSpec
from kbypass.gen.template import udp_template
from kbypass.port.batch import DESC, Batch


class FakePort:
    """Frames in a small pool; transmit takes them all and they complete at once."""

    def __init__(self, frames=512, frame_size=2048):
        self.mem = np.zeros(frames * frame_size, dtype=np.uint8)
        self.free_addrs = [i * frame_size for i in range(frames)]
        self.sent = []

    def alloc(self, n):
        take, self.free_addrs = self.free_addrs[:n], self.free_addrs[n:]
        d = np.zeros(len(take), dtype=DESC)
        d["addr"] = take
        return Batch(d, self.mem, self)

    def transmit(self, batch):
        self.sent.append(batch.payload_u64(42).copy())
        self.free_addrs += [int(a) for a in batch.addr]  # completes at once
        return len(batch)

    def free(self, batch):
        self.free_addrs += [int(a) for a in batch.addr]


class FakeClock:
    def __init__(self, step=10e-6):
        self.t, self.step = 0.0, step

    def perf_counter(self):
        self.t += self.step  # every look at the clock costs a little, like real work
        return self.t

    def monotonic_ns(self):
        return int(self.t * 1e9)


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr(gen_mod.time, "perf_counter", c.perf_counter)
    monkeypatch.setattr(gen_mod.time, "monotonic_ns", c.monotonic_ns)
    monkeypatch.setattr(gen_mod, "_pause", lambda s: setattr(c, "t", c.t + s))
    return c


SPEC = FlowSpec(sport=(9, 9), dport=(4321, 4321), src_ip=(0, 0), size=(64, 64), max_size=1514)
TEMPLATE = udp_template("02:00:00:00:00:01", "02:00:00:00:00:02", "10.0.0.1", 9, "10.0.0.2", 4321, 64)


@pytest.mark.parametrize("rate", [1_000, 50_000, 100_000, 1_000_000])
def test_rate_is_held_within_two_percent(clock, rate):
    port = FakePort()
    res = gen_mod.PortGenerator(port, TEMPLATE, SPEC, batch=256).run(duration=1.0, rate=rate)
    assert abs(res.packets / res.seconds - rate) / rate < 0.02


def test_count_is_exact_and_sequence_numbers_consecutive(clock):
    port = FakePort(frames=64)
    res = gen_mod.PortGenerator(port, TEMPLATE, SPEC, batch=50).run(count=1000)
    seqs = np.concatenate(port.sent)
    assert res.packets == 1000 and list(seqs) == list(range(1000))
    assert len(port.free_addrs) == 64  # every frame came back


def test_needs_count_or_duration(clock):
    from kbypass.errors import UsageError

    with pytest.raises(UsageError):
        gen_mod.PortGenerator(FakePort(), TEMPLATE, SPEC).run()
