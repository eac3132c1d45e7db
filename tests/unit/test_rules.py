"""Rule values: parsing, errors that point at the bad token, the text round trip, the packed layout."""

from __future__ import annotations

import ipaddress
import re
import struct

import pytest

from kbypass.errors import UsageError
from kbypass.steer.rules import RULE_SIZE, RULE_STRUCT, Rule, RuleError, overlap, rule_offsets

ROUND_TRIPS = [
    "udp dst 10.0.0.2 dport 4321 redirect",
    "tcp src 192.168.0.0/16 sport 22 drop",
    "icmp dst 10.1.2.3 pass",
    "drop",
    "redirect",
    "src fd00::/64 drop",
    "udp src fd00::1 dst fd00::2 sport 1 dport 65535 pass",
    "udp dport 0 drop",
    "tcp dst 0.0.0.0/0 drop",
    "udp dport 53 sample prob 0.01",
    "sample prob 1.0",
    "sample prob 0.0",
    "icmp dst ::/0 drop",
]


@pytest.mark.parametrize("text", ROUND_TRIPS)
def test_str_round_trip(text: str) -> None:
    rule = Rule.parse(text)
    assert str(rule) == text
    assert Rule.parse(str(rule)) == rule


def test_parse_fields_and_defaults() -> None:
    r = Rule.parse("udp dst 10.0.0.2 dport 4321")
    assert r == Rule(proto="udp", dst="10.0.0.2", dport=4321)
    assert r.action == "redirect" and r.src is None and r.sport is None and r.probability is None
    assert r.family == 4
    assert Rule.parse("tcp action drop dst fd00::9") == Rule(proto="tcp", dst="fd00::9", action="drop")
    assert Rule.parse("any src 10.0.0.0/8") == Rule(src="10.0.0.0/8")
    assert Rule.parse("sample prob 0.25").probability == 0.25
    assert Rule.parse("drop").family == 0


def test_normalisation() -> None:
    assert Rule(dst="10.0.0.2/32").dst == "10.0.0.2"
    assert Rule(src="FD00:0::1/128").src == "fd00::1"
    assert Rule(src="fd00::/16").src == "fd00::/16"
    assert Rule(src="10.0.0.2") == Rule(src="10.0.0.2/32")
    assert hash(Rule(src="10.0.0.2")) == hash(Rule(src="10.0.0.2/32"))


# (text, bad token, 1-based position or None, words the message must contain)
PARSE_ERRORS = [
    ("udp dst 10.0.0.300", "10.0.0.300", 3, "expected IPv4/IPv6 address or prefix"),
    ("udp src 10.0.0.1/33", "10.0.0.1/33", 3, "expected IPv4/IPv6"),
    ("udp src 10.0.0.1/8", "10.0.0.1/8", 3, "did you mean 10.0.0.0/8"),
    ("udp dst fd00::zz", "fd00::zz", 3, "address"),
    ("udp dport 70000", "70000", 3, "0-65535"),
    ("udp dport -1", "-1", 3, "0-65535"),
    ("udp sport http", "http", 3, "0-65535"),
    ("udp dport \u00b2", "\u00b2", 3, "0-65535"),  # superscript two: isdigit() but not a number to int()
    ("tcp sport \u0663", "\u0663", 3, "0-65535"),  # an Arabic-Indic digit: int() reads it, a port it is not
    ("tcp sport 1 sport 2", "sport", 4, "twice"),
    ("udp dport", "dport", 2, "needs a value"),
    ("udp frob 1", "frob", 2, "unknown word"),
    ("drop udp", "udp", 2, "must come first"),
    ("action bounce", "bounce", 2, "unknown action"),
    ("icmp dport 3", "3", 3, "needs proto udp or tcp"),
    ("dport 3", "3", 2, "needs proto udp or tcp"),
    ("udp src 10.0.0.1 dst fd00::1", "fd00::1", 5, "one IP version"),
    ("sample", "sample", 1, "needs 'prob P'"),
    ("udp sample prob 1.5", "1.5", 4, "0 <= P <= 1"),
    ("sample prob nan", "nan", 3, "0 <= P <= 1"),
    ("sample prob x", "x", 3, "0 <= P <= 1"),
    ("udp drop prob 0.5", "0.5", 4, "only goes with action sample"),
    ("", None, None, "empty rule"),
]


@pytest.mark.parametrize("text,bad,pos,words", PARSE_ERRORS)
def test_parse_errors_name_the_token(text: str, bad: str | None, pos: int | None, words: str) -> None:
    with pytest.raises(RuleError) as info:
        Rule.parse(text)
    msg = str(info.value)
    assert isinstance(info.value, UsageError)
    assert msg.startswith(f'rule "{text}": ')
    assert words in msg
    if bad is not None:
        assert f"'{bad}' at token {pos}" in msg, msg
        assert text.split()[pos - 1] == bad  # the position really points at that token


def test_exact_message_from_the_brief() -> None:
    with pytest.raises(RuleError) as info:
        Rule.parse("udp dst 10.0.0.300")
    assert str(info.value) == (
        "rule \"udp dst 10.0.0.300\": bad address '10.0.0.300' at token 3 (expected IPv4/IPv6 address or prefix)"
    )


@pytest.mark.parametrize(
    "kwargs,words",
    [
        ({"proto": "sctp"}, "unknown proto 'sctp'"),
        ({"action": "bounce"}, "unknown action"),
        ({"proto": "udp", "dport": 65536}, "0-65535"),
        ({"proto": "udp", "dport": True}, "0-65535"),
        ({"proto": "udp", "sport": "53"}, "0-65535"),
        ({"src": "10.0.0.1", "dst": "::1"}, "one IP version"),
        ({"action": "sample"}, "needs 'prob P'"),
        ({"action": "sample", "probability": -0.1}, "0 <= P <= 1"),
        ({"action": "drop", "probability": 0.5}, "only goes with action sample"),
        ({"proto": "icmp", "sport": 1}, "needs proto udp or tcp"),
    ],
)
def test_constructor_validates(kwargs: dict, words: str) -> None:
    with pytest.raises(RuleError, match=re.escape(words)):
        Rule(**kwargs)


def test_frozen() -> None:
    r = Rule(proto="udp")
    with pytest.raises(AttributeError):
        r.proto = "tcp"  # type: ignore[misc]


# ---- packing --------------------------------------------------------------------------------------


def unpack(rule: Rule) -> dict:
    from kbypass.steer.rules import RULE_LAYOUT

    return dict(zip((n for n, _ in RULE_LAYOUT), RULE_STRUCT.unpack(rule.pack())))


def test_pack_size_and_offsets() -> None:
    assert RULE_SIZE == 88
    off = rule_offsets()
    assert (off["tagged"], off["sample_thresh"], off["sport"], off["dport"], off["src"], off["dst_mask"],
            off["vlan"], off["queue"], off["queue_mask"]) == (3, 4, 8, 12, 16, 64, 80, 84, 86)
    assert len(Rule().pack()) == 88


def test_queue_parse_pack_text_and_overlap() -> None:
    """`queue Q` names the receive queue: packed with a full mask, a wildcard (mask 0) without it, and two
    rules on different queues never overlap (a packet arrives on one queue), so workers need no --share."""
    r = Rule.parse("udp dport 4321 queue 1")
    assert r.queue == 1 and str(r) == "udp dport 4321 queue 1 redirect" and Rule.parse(str(r)) == r
    assert (unpack(r)["queue"], unpack(r)["queue_mask"]) == (1, 0xFFFF)
    assert (unpack(Rule.parse("udp dport 4321"))["queue"], unpack(Rule.parse("udp dport 4321"))["queue_mask"]) == (0, 0)
    assert (unpack(Rule.parse("udp queue 0"))["queue"], unpack(Rule.parse("udp queue 0"))["queue_mask"]) == (0, 0xFFFF)
    assert Rule.parse("ether 0x88b5 queue 3").queue == 3
    assert not overlap(Rule.parse("udp dport 4321 queue 0"), Rule.parse("udp dport 4321 queue 1"))
    assert overlap(Rule.parse("udp dport 4321 queue 0"), Rule.parse("udp dport 4321"))
    assert overlap(Rule.parse("udp queue 2"), Rule.parse("udp dport 9 queue 2"))
    for bad in ("udp queue 4096", "udp queue x", "udp queue -1", "udp queue"):
        with pytest.raises(UsageError):
            Rule.parse(bad)
    with pytest.raises(UsageError, match="queue"):
        Rule("udp", queue=True)


def test_vlan_parse_pack_and_text() -> None:
    r = Rule.parse("udp vlan 100 dport 4321")
    assert r.vlan == 100 and str(r) == "udp vlan 100 dport 4321 redirect" and Rule.parse(str(r)) == r
    f = unpack(r)
    assert (f["tagged"], f["vlan"]) == (1, 100)
    f = unpack(Rule.parse("udp dport 4321"))
    assert (f["tagged"], f["vlan"]) == (0, 0)  # no VLAN named: untagged frames only
    assert unpack(Rule.parse("ether 0x88b5 vlan 7"))["vlan"] == 7
    for bad in ("udp vlan 4095", "udp vlan x", "udp vlan -1", "udp vlan ²", "udp vlan"):
        with pytest.raises(UsageError):
            Rule.parse(bad)


def test_pack_v4_prefix_and_ports() -> None:
    raw = Rule.parse("udp src 10.1.0.0/16 dst 10.0.0.2 dport 4321 drop").pack()
    f = unpack(Rule.parse("udp src 10.1.0.0/16 dst 10.0.0.2 dport 4321 drop"))
    assert (f["action"], f["proto"], f["family"], f["group"], f["sample_thresh"]) == (2, 17, 4, 0, 0)
    assert f["dport"] == struct.pack(">H", 4321) and f["dport_mask"] == b"\xff\xff"
    assert f["sport"] == b"\0\0" and f["sport_mask"] == b"\0\0"  # wildcard
    assert f["src"] == bytes([10, 1, 0, 0]) + bytes(12)
    assert f["src_mask"] == bytes([255, 255, 0, 0]) + bytes(12)
    assert f["dst_mask"] == b"\xff" * 4 + bytes(12)
    assert raw[16:20] == bytes([10, 1, 0, 0])  # network order, where steer.h says


def test_pack_v6_and_wildcards() -> None:
    f = unpack(Rule.parse("tcp dst fd00:1::/48 pass"))
    assert (f["action"], f["proto"], f["family"]) == (3, 6, 6)
    assert f["dst"] == ipaddress.ip_address("fd00:1::").packed
    assert f["dst_mask"] == b"\xff" * 6 + bytes(10)
    assert f["src"] == f["src_mask"] == bytes(16)
    g = unpack(Rule.parse("icmp redirect"))
    assert (g["action"], g["proto"], g["family"]) == (1, 1, 0)
    assert g["dst_mask"] == g["src_mask"] == bytes(16)


@pytest.mark.parametrize(
    "prob,thresh", [(0.0, 0), (0.5, 1 << 31), (0.25, 1 << 30), (1.0, 0xFFFFFFFF), (1 - 1e-12, 0xFFFFFFFE)]
)
def test_pack_sample_threshold(prob: float, thresh: int) -> None:
    f = unpack(Rule(action="sample", probability=prob))
    assert (f["action"], f["sample_thresh"]) == (4, thresh)


# ---- the C boundary fails with the fix named (no root needed) ----------------------------------------


def test_missing_object_names_make_setup(tmp_path) -> None:
    from kbypass.bpf import libbpf
    from kbypass.errors import EnvironmentProblem

    with pytest.raises(EnvironmentProblem, match="not built: run 'make setup'"):
        libbpf.BpfObject(tmp_path / "nothing.bpf.o")
    assert libbpf.object_path("steer").name == "steer.bpf.o"
    assert libbpf.object_path("steer").parent.name == "obj"


def test_missing_libbpf_names_the_package(monkeypatch) -> None:
    import ctypes
    import ctypes.util

    from kbypass.bpf import libbpf
    from kbypass.errors import EnvironmentProblem

    def no_lib(*args, **kwargs):
        raise OSError("libbpf.so.1: cannot open shared object file")

    monkeypatch.setattr(libbpf, "_lib", None)
    monkeypatch.setattr(ctypes, "CDLL", no_lib)
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    with pytest.raises(EnvironmentProblem, match="libbpf.so.1 not found: install it with 'apt-get install libbpf1'"):
        libbpf.version()
