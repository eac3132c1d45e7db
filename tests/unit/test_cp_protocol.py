"""The control plane's request protocol (kbypass.cp.protocol) and the rule-overlap test behind its
conflicts (kbypass.steer.rules.overlap), without a network: every malformed request is a ProtocolError
naming what is wrong, never another exception; the live control plane is tests/netns/test_cp.py."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kbypass.cp import protocol
from kbypass.cp.protocol import ControlPlaneError, ProtocolError
from kbypass.steer.rules import Rule, overlap


def test_a_good_request_decodes_with_its_fields_and_id():
    req = protocol.decode_request(protocol.request("add", 7, iface="eth0", rule="udp dport 5000", share=True))
    assert (req.op, req.id, req.args) == ("add", 7, {"iface": "eth0", "rule": "udp dport 5000", "share": True})
    assert protocol.decode_request(b'{"op":"register","iface":"e","queue":0}', nfds=1).op == "register"


@pytest.mark.parametrize("data, nfds, says", [
    (b"", 0, "JSON object"),
    (b"\xff\xfe", 0, "JSON object"),
    (b"[1, 2]", 0, "JSON object with"),
    (b'{"op": "nope"}', 0, "unknown op"),
    (b'{"id": 1}', 0, "unknown op"),
    (b'{"op": "add", "iface": "e"}', 0, "missing 'rule'"),
    (b'{"op": "add", "iface": "e", "rule": "udp", "extra": 1}', 0, "unknown field 'extra'"),
    (b'{"op": "add", "iface": 5, "rule": "udp"}', 0, "'iface' must be text"),
    (b'{"op": "add", "iface": "", "rule": "udp"}', 0, "'iface' must be text"),
    (b'{"op": "add", "iface": "e", "rule": "udp", "priority": true}', 0, "must be integer"),
    (b'{"op": "add", "iface": "e", "rule": "udp", "priority": 1e400}', 0, "must be integer"),
    (b'{"op": "remove", "iface": "e", "rule_id": 99999999999999999999999}', 0, "must be integer"),
    (b'{"op": "stop", "force": 1}', 0, "must be true or false"),
    (b'{"op": "status", "id": "x"}', 0, "must be an integer"),
    (b'{"op": "register", "iface": "e", "queue": 0}', 0, "send 1 file descriptor"),
    (b'{"op": "status"}', 1, "send 0 file descriptor"),
    (b"[" * 100000, 0, "at most"),
])
def test_bad_requests_are_protocol_errors_that_say_what_is_wrong(data, nfds, says):
    with pytest.raises(ProtocolError, match=says.replace("(", r"\(")):
        protocol.decode_request(data, nfds)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.binary(max_size=300),
                 st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                              lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=5),
                              max_leaves=12).map(lambda v: json.dumps(v).encode()),
                 st.fixed_dictionaries({"op": st.sampled_from(sorted(protocol.OPS))},
                                       optional={k: st.one_of(st.integers(), st.text(max_size=5), st.booleans(),
                                                              st.none())
                                                 for k in ("iface", "rule", "queue", "rule_id", "priority", "share",
                                                           "version", "force", "id", "x", "frames", "frame_size",
                                                           "rx_size", "tx_size", "fill_size", "comp_size",
                                                           "headroom", "mode")}).map(
                     lambda d: json.dumps(d).encode())),
       st.integers(0, 2))
def test_any_bytes_decode_to_a_request_or_a_protocol_error(data, nfds):
    try:
        req = protocol.decode_request(data, nfds)
    except ProtocolError as e:
        assert str(e) and "\n" not in str(e)
        return
    spec = protocol.OPS[req.op]
    assert set(req.args) <= set(spec)
    assert all(name in req.args for name, (_, required) in spec.items() if required)
    assert all(check(req.args[name]) for name, (check, _) in protocol.VALUES.get(req.op, {}).items()
               if name in req.args)


OPEN = dict(iface="e", queue=0, frames=4096, frame_size=2048, rx_size=2048, tx_size=2048, fill_size=2048,
            comp_size=2048)


def test_open_socket_decodes_with_its_layout_and_no_fd():
    req = protocol.decode_request(protocol.request("open_socket", 1, **OPEN, headroom=256, mode="copy"))
    assert (req.op, req.args) == ("open_socket", {**OPEN, "headroom": 256, "mode": "copy"})


@pytest.mark.parametrize("change, says", [
    ({"queue": 64}, "queue 64: use a queue id from 0 to 63"),
    ({"queue": -1}, "queue -1"),
    ({"frames": 63}, "frames 63: use a number of frames from 64"),
    ({"frames": (1 << 18) + 1}, "frames 262145"),
    ({"frame_size": 3000}, "frame_size 3000: use 2048 or 4096"),
    ({"rx_size": 1000}, "rx_size 1000: use a power of two from 64 to 65536"),
    ({"tx_size": 32}, "tx_size 32"),
    ({"fill_size": 1 << 17}, "fill_size 131072"),
    ({"comp_size": 0}, "comp_size 0"),
    ({"headroom": 1537}, "headroom 1537: use 0 to frame_size - 512 (1536)"),
    ({"headroom": 3000, "frame_size": 4096}, None),
    ({"headroom": -1}, "headroom -1"),
    ({"mode": "fast"}, "mode 'fast': use one of auto, copy, zerocopy"),
    ({"frames": "4096"}, "'frames' must be integer"),
    ({"comp_size": None}, "'comp_size' must be integer"),
])
def test_open_socket_bounds_every_size_it_would_make(change, says):
    data = json.dumps({"op": "open_socket", **OPEN, **change}).encode()
    if says is None:
        assert protocol.decode_request(data).args["headroom"] == change["headroom"]
        return
    with pytest.raises(ProtocolError, match=says.replace("(", r"\(").replace(")", r"\)")):
        protocol.decode_request(data)


def test_open_socket_needs_every_size_and_carries_no_fd():
    with pytest.raises(ProtocolError, match="missing 'comp_size'"):
        protocol.decode_request(protocol.request("open_socket", **{k: v for k, v in OPEN.items() if k != "comp_size"}))
    with pytest.raises(ProtocolError, match="send 0 file descriptor"):
        protocol.decode_request(protocol.request("open_socket", **OPEN), nfds=1)


def test_received_fds_reads_scm_rights_and_ignores_the_rest():
    import array
    import socket

    fds = array.array("i", [5, 7]).tobytes()
    assert protocol.received_fds([(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds + b"\x01"),
                                  (socket.SOL_SOCKET, socket.SCM_CREDENTIALS, b"\0" * 12)]) == [5, 7]


def test_replies_round_trip_and_an_error_reply_raises_with_the_servers_words():
    assert protocol.decode_reply(protocol.ok(3, rule_id=5))["rule_id"] == 5
    with pytest.raises(ControlPlaneError, match="narrow the rule"):
        protocol.decode_reply(protocol.error(3, "narrow the rule"))
    with pytest.raises(ControlPlaneError, match="not JSON"):
        protocol.decode_reply(b"\x00garbage")


OVERLAPPING = [
    ("udp dport 5000", "udp dport 5000"),
    ("udp dport 5000", "udp"),
    ("udp dport 5000", "any"),
    ("udp dst 10.0.0.0/8", "udp dst 10.1.2.3 dport 7"),
    ("any src fd00::/64", "tcp src fd00::1"),
    ("ether 0x88b5", "ether"),
    ("udp vlan 100 dport 5", "udp vlan 100"),
]
DISJOINT = [
    ("udp dport 5000", "udp dport 5001"),
    ("udp dport 5000", "tcp dport 5000"),
    ("udp dst 10.0.0.0/8", "udp dst 192.168.0.1"),
    ("udp dst 10.0.0.1", "udp dst fd00::1"),
    ("ether 0x88b5", "udp"),
    ("ether 0x88b5", "ether 0x88b6"),
    ("udp vlan 100", "udp"),
    ("udp vlan 100", "udp vlan 101"),
    ("icmp", "udp"),
]


@pytest.mark.parametrize("a, b", OVERLAPPING)
def test_rules_one_packet_can_match_overlap_both_ways(a, b):
    assert overlap(Rule.parse(a), Rule.parse(b)) and overlap(Rule.parse(b), Rule.parse(a))


@pytest.mark.parametrize("a, b", DISJOINT)
def test_rules_no_packet_can_match_do_not_overlap(a, b):
    assert not overlap(Rule.parse(a), Rule.parse(b)) and not overlap(Rule.parse(b), Rule.parse(a))
