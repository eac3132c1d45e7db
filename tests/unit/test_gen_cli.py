"""`kbypass gen` input checks that need no testbed and no network: size limits per engine and interface,
--batch, --iface without the testbed, and the live engine's frame size."""

from __future__ import annotations

import argparse
import errno

import numpy as np
import pytest

from kbypass import cli
from kbypass.host import testbed
from kbypass.bpf import libbpf
from kbypass.errors import EnvironmentProblem, TestbedError, UsageError
from kbypass.gen import live
from kbypass.gen.afxdp import MAX_BATCH, PortGenerator
from kbypass.gen.flows import FlowSpec
from kbypass.gen.template import udp_template
from kbypass.port.batch import DESC, Batch
from kbypass.tools import gen
from tests.kb import unreachable


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    gen.register(p.add_subparsers())
    return p.parse_args(["gen", *argv])


@pytest.fixture
def offline(monkeypatch):
    """No root check, and the testbed must not be asked for."""
    monkeypatch.setattr(gen, "require_root", lambda what: None)
    unreachable(monkeypatch, testbed, "require",
                "gen asked the testbed although --iface, --src, --dst and --dst-mac were given")


STANDALONE = ("--iface", "lo", "--src", "10.0.0.1", "--dst", "10.0.0.2:4321", "--dst-mac", "02:00:00:00:00:02",
              "--count", "1")


@pytest.mark.parametrize("engine, mtu, limit, words", [
    ("packet_mmap", 3000, 2000, "2048-byte PACKET_MMAP TX slot less its 48-byte header"),
    ("packet_mmap", 1500, 1514, "MTU of veth0, 1500"),
    ("afxdp", 1500, 1514, "MTU of veth0, 1500"),
    ("afxdp", 1700, 1714, "MTU of veth0, 1700"),
    ("afxdp", 2000, 2014, "MTU of veth0, 2000"),  # multi-buffer above one 2048-byte frame's receive room
    ("afxdp", 9000, 9014, "MTU of veth0, 9000"),
    ("afxdp", 65535, 65549, "MTU of veth0, 65535"),
    ("live", 1500, 1514, "MTU of veth0"),
    ("live", 9000, live.MAX_FRAME, "live engine"),
])
def test_size_limit_names_the_limit_that_applies(engine, mtu, limit, words):
    got, why = gen.size_limit(engine, mtu, "veth0")
    assert got == limit and words in why


def test_frag_limit_is_the_compile_time_constant_everywhere(monkeypatch):
    """AF_XDP's send path (xsk_build_skb) is bounded by the compile-time MAX_SKB_FRAGS, not by the sysctl
    net.core.max_skb_frags (TCP/GSO's, settable lower): gen, doctor, the ports and the testbed all take
    multibuf's one constant, so changing it changes every one of them."""
    import mmap

    from kbypass.host import doctor, testbed
    from kbypass.xsk import multibuf

    assert multibuf.MAX_SKB_FRAGS == 17 and multibuf.tx_frame_limit() == 18
    assert not hasattr(multibuf, "max_skb_frags") and not hasattr(testbed, "MAX_SKB_FRAGS")
    assert testbed.FRAGS_MAX_MTU == min(testbed.MAX_MTU, testbed.XDP_MAX_MTU + mmap.PAGESIZE * multibuf.MAX_SKB_FRAGS)
    monkeypatch.setattr(multibuf, "MAX_SKB_FRAGS", 8)
    monkeypatch.setattr(multibuf, "TX_FRAME_LIMIT", 9)
    got, why = gen.size_limit("afxdp", 65535, "veth0")
    assert got == 9 * 4096 and "9 AF_XDP frames of 4096 bytes" in why and "MAX_SKB_FRAGS 8 + 1" in why
    check = doctor.check_multi_buffer("lo")
    assert "MAX_SKB_FRAGS 8: a sent packet spans at most 9 frames" in (check.detail or "")


def test_interface_info_reads_mtu_and_mac_of_this_namespace():
    mac, mtu = gen.interface_info("lo", None)
    assert mac == "00:00:00:00:00:00" and mtu >= 1500
    with pytest.raises(UsageError, match="no interface 'nosuch0' here.*--netns"):
        gen.interface_info("nosuch0", None)
    with pytest.raises(UsageError, match="not an interface name"):
        gen.interface_info("x" * 16, None)


def test_iface_needs_no_testbed_and_its_mtu_limits_the_size(offline):
    # lo's MTU is 65536: the PACKET_MMAP TX slot is the limit, and the error says so (no frame is overrun)
    with pytest.raises(UsageError) as info:
        gen.run(parse(*STANDALONE, "--backend", "packet_mmap", "--size", "2500"))
    msg = str(info.value)
    assert msg.startswith("--size 2500: above the limit of 2000 bytes") and "PACKET_MMAP TX slot" in msg


def test_iface_without_the_testbed_says_which_options_replace_it(monkeypatch):
    def down(*a, **k):
        raise TestbedError("testbed 'kb' is not up: run 'kbypass testbed up'")

    monkeypatch.setattr(gen, "require_root", lambda what: None)
    monkeypatch.setattr(testbed, "require", down)
    with pytest.raises(UsageError, match=r"without the testbed, give --dst, --dst-mac too"):
        gen.run(parse("--iface", "lo", "--src", "10.0.0.1", "--count", "1"))


@pytest.mark.parametrize("batch", ["0", "-5", str(MAX_BATCH + 1)])
def test_bad_batch_is_refused_up_front(offline, batch, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["gen", *STANDALONE, "--backend", "afxdp", "--batch", batch])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"--batch: '{batch}': give a batch size from 1 to {MAX_BATCH}" in err and err.count("\n") == 1


class TinyPort:
    def __init__(self, frames=8, frame_size=2048):
        self.mem = np.zeros(frames * frame_size, dtype=np.uint8)
        self.free_addrs = [i * frame_size for i in range(frames)]

    def alloc(self, n):
        take, self.free_addrs = self.free_addrs[:n], self.free_addrs[n:]
        d = np.zeros(len(take), dtype=DESC)
        d["addr"] = take
        return Batch(d, self.mem, self, frame_size=2048)

    def free(self, batch):
        self.free_addrs += [int(a) for a in batch.addr]


def _spec(size=60, max_size=9000):
    return FlowSpec(sport=(9, 9), dport=(4321, 4321), src_ip=(1, 1), size=(size, size), max_size=max_size)


def test_port_generator_refuses_a_batch_below_one():
    tmpl = udp_template("02:00:00:00:00:01", "02:00:00:00:00:02", "10.0.0.1", 9, "10.0.0.2", 4321, 60)
    for batch in (0, -1):
        with pytest.raises(UsageError, match=f"--batch {batch}"):
            PortGenerator(TinyPort(), tmpl, _spec(), batch=batch)


def test_port_generator_does_not_overrun_frames():
    """A 2500-byte template into 2048-byte frames: refused before any frame is written."""
    tmpl = udp_template("02:00:00:00:00:01", "02:00:00:00:00:02", "10.0.0.1", 9, "10.0.0.2", 4321, 2500)
    port = TinyPort()
    with pytest.raises(UsageError, match="2500 bytes.*room for 2048"):
        PortGenerator(port, tmpl, _spec(2500))
    assert not port.mem.any()


def test_live_generator_names_a_too_large_size():
    tmpl = bytes(live.MAX_FRAME + 1)
    with pytest.raises(UsageError, match=rf"--size {live.MAX_FRAME + 1}: the live engine sends frames of at most"):
        live.LiveGenerator("nosuch0", tmpl)


def test_live_run_failure_names_the_frame_size(monkeypatch):
    g = object.__new__(live.LiveGenerator)
    g.template, g.netns_name, g.ifindex, g.prog_fd = bytes(3000), None, 1, -1

    def einval(*a, **k):
        raise libbpf.BpfCallError("BPF_PROG_TEST_RUN failed: Invalid argument", errno.EINVAL)

    monkeypatch.setattr(libbpf, "test_run", einval)
    with pytest.raises(EnvironmentProblem, match="3000-byte frames.*smaller --size"):
        g._burst(1)
