"""The port's public one-message API (AfXdpPort.message_lane), on both lanes, and the rule that no module
imports another package's private names."""

from __future__ import annotations

import ast
import pathlib

import pytest
from scapy.layers.l2 import ARP, Ether

from kbypass.port import lane as lane_mod
from tests.unit.test_endpoint_lane import MAC, PEER_MAC, VALID, fake_port, plain_udp

NATIVE = [True, False] if lane_mod.native_default() else [False]


@pytest.mark.parametrize("native", NATIVE)
def test_receive_one_and_send_one_keep_the_ports_accounting(native):
    port = fake_port()
    try:
        lane = port.message_lane(native=native)  # no udp: every frame comes out whole
        assert lane.native is native and lane.receive_one() is None
        frame = VALID["plain"]
        port.xsk.deliver([frame, frame])
        assert lane.receive_one() == frame and lane.receive_udp() == frame  # receive_udp is receive_one
        arp = bytes(Ether(dst=PEER_MAC, src=MAC) / ARP(op=2))
        assert lane.send_one(arp) and port.xsk.send_all() == [arp]
        assert not lane.send_one(bytes(lane.tx_room + 1))
        counts = port.check(app=0)  # the lane's stash counts as the port's own
        assert counts["app"] == lane.held > 0
        assert port.stats["rx_packets"] == 2 and port.stats["tx_packets"] == 1
    finally:
        port.close()  # closes the lane first, giving its stash back
    assert lane.closed


@pytest.mark.parametrize("native", NATIVE)
def test_a_closed_lane_gives_its_frames_back(native):
    port = fake_port()
    try:
        lane = port.message_lane(plain_udp(), native=native)
        port.xsk.deliver([VALID["plain"]])
        assert lane.receive_udp()[0] == b"hello"
        assert lane.send_one(b"\0" * 60)
        port.xsk.send_all()
        lane.close()
        assert port.check(app=0)["app"] == 0
    finally:
        port.close()


def test_no_module_imports_another_packages_private_names():
    src = pathlib.Path(__file__).resolve().parents[2] / "src" / "kbypass"
    bad = []
    for path in src.rglob("*.py"):
        pkg = ".".join(("kbypass",) + path.relative_to(src).parent.parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kbypass") \
                    and not node.level:
                target = node.module if (src / node.module[8:].replace(".", "/")).is_dir() else \
                    node.module.rpartition(".")[0]
                for alias in node.names:
                    if alias.name.startswith("_") and target != pkg and not node.module.endswith(alias.name):
                        bad.append(f"{path.relative_to(src)}: from {node.module} import {alias.name}")
    assert not bad, bad
