"""`kbypass top` and `kbypass report` without a testbed: the AF_XDP sock_diag messages, rules read back
from the packed map form, the JSON records' rates, the HTML report, and bad input."""

from __future__ import annotations

import json
import struct

import pytest

from kbypass.errors import EnvironmentProblem
from kbypass.host import inventory
from kbypass.steer.rules import Rule
from kbypass.tools import report
from kbypass.xsk import diag
from tests.kb import kbypass, kbypass_for, one_real

# Captured on this machine's kernel (6.18, CONFIG_XDP_SOCKETS_DIAG not set), `kbypass.xsk.diag.
# encode_request(seq=7)` sent on a NETLINK_SOCK_DIAG socket, then the kernel's reply, byte for byte.
REQUEST_SEQ7 = bytes.fromhex("240000001400010307000000000000002c0000000000000017000000ffffffffffffffff")
REPLY_NO_XSK_DIAG = bytes.fromhex("380000000200000007000000a30a0000feffffff"
                                  "240000001400010307000000000000002c0000000000000017000000ffffffffffffffff")


def test_the_request_is_the_bytes_the_kernel_echoed():
    assert diag.encode_request(seq=7) == REQUEST_SEQ7
    # the kernel's NLMSG_ERROR quotes the request it refused: the same bytes after its 20-byte header
    assert REPLY_NO_XSK_DIAG[20:] == REQUEST_SEQ7


def test_a_kernel_without_xsk_diag_is_named_with_the_fix():
    with pytest.raises(EnvironmentProblem, match="modprobe xsk_diag"):
        diag.decode(REPLY_NO_XSK_DIAG)


def _attr(atype: int, payload: bytes) -> bytes:
    a = struct.pack("<HH", 4 + len(payload), atype) + payload
    return a + bytes(-len(a) % 4)


def _dump_reply() -> bytes:
    """One socket and NLMSG_DONE, laid out as <linux/xdp_diag.h> says (this kernel cannot produce one:
    it has no xsk_diag, so the dump part is built from the UAPI structs, not captured)."""
    body = diag.MSG.pack(44, 3, 0, 4242, 1, 2)
    body += _attr(diag.DIAG_INFO, struct.pack("<II", 5, 1))
    body += _attr(diag.DIAG_UID, struct.pack("<I", 0))
    body += _attr(diag.DIAG_RX_RING, struct.pack("<I", 2048))
    body += _attr(diag.DIAG_UMEM_FILL_RING, struct.pack("<I", 4096))
    body += _attr(diag.DIAG_UMEM, diag.UMEM.pack(1 << 23, 3, 2048, 2048, 0, 5, 1, 0, 2))
    body += _attr(diag.DIAG_STATS, struct.pack("<6Q", 1, 2, 3, 4, 5, 6))
    msg = diag.NLMSGHDR.pack(16 + len(body), diag.SOCK_DIAG_BY_FAMILY, 2, 7, 0) + body
    done = diag.NLMSGHDR.pack(20, diag.NLMSG_DONE, 2, 7, 0) + bytes(4)
    return msg + done


def test_a_dump_decodes_into_sockets():
    socks, done = diag.decode(_dump_reply())
    assert done and len(socks) == 1
    x = socks[0]
    assert (x.inode, x.ifindex, x.queue, x.uid) == (4242, 5, 1, 0)
    assert x.rings == {"rx": 2048, "fill": 4096}
    assert x.umem == {"id": 3, "size": 1 << 23, "chunk_size": 2048, "headroom": 0, "refs": 2}
    assert x.stats == dict(zip(diag.STATS, range(1, 7)))


def test_a_truncated_reply_is_refused():
    with pytest.raises(EnvironmentProblem, match="truncated"):
        diag.decode(_dump_reply()[:-30])


@pytest.mark.parametrize("text", ["udp dport 4321", "tcp src 10.0.0.0/8 dport 80 drop",
                                  "udp dst fd00::/64 sample prob 0.05", "udp vlan 100 dport 4321",
                                  "ether 0x88b5", "ether pass", "any", "icmp dst 10.1.2.3", "udp sample prob 1",
                                  "tcp src 2001:db8::1 sport 22 pass", "udp dport 4321 queue 1",
                                  "ether 0x88b5 queue 3"])
def test_rules_read_back_from_the_map_are_the_rules_installed(text):
    rule = Rule.parse(text)
    assert Rule.unpack(rule.pack(group=7)) == (rule, 7)


def _snap(t, rule_packets, q0, inode_drops):
    from kbypass.host.ifstats import Sample

    return {"time": 1000.0 + t, "mono": t,
            "programs": [{"prog_id": 9, "name": "kbypass_steer", "owners": [], "links": [],
                          "rules": [{"rule_id": 0, "rule": "udp dport 4321 redirect", "group": 1,
                                     "packets": rule_packets, "bytes": rule_packets * 60}]}],
            "interfaces": [{"netns": "x", "iface": "x", "napi_threads": [], "irqs": [],
                            "sample": Sample(t, dict.fromkeys(inventory.ifstats.TOTALS, 0),
                                             {"rx_queue_0_xdp_packets": q0, "rx_queue_0_drops": 0})}],
            "sockets": [{"inode": 5, "netns": "x", "queue": None, "owners": [{"pid": 1, "command": "sink"}],
                         "stats": {"rx_dropped": inode_drops}}]}


def test_rates_are_deltas_over_the_interval():
    rec = inventory.rates(_snap(0.0, 100, 1000, 0), _snap(2.0, 20100, 31000, 10))
    assert rec["seconds"] == 2.0
    assert rec["programs"][0]["rules"][0]["pps"] == 10000.0
    assert rec["programs"][0]["rules"][0]["mbit_s"] == pytest.approx(10000 * 60 * 8 / 1e6)
    assert rec["interfaces"][0]["queues"]["rx0"]["xdp_packets"] == 15000.0
    assert rec["sockets"][0]["stats_per_s"] == {"rx_dropped": 5.0}
    json.dumps(rec)  # a record is JSON as it is


def test_a_rule_replaced_in_its_slot_starts_from_zero():
    before = _snap(0.0, 5000, 0, 0)
    after = _snap(1.0, 10, 0, 0)
    after["programs"][0]["rules"][0]["rule"] = "udp dport 9 redirect"
    assert inventory.rates(before, after)["programs"][0]["rules"][0]["pps"] == 0.0


def test_report_writes_one_page_with_embedded_plots(tmp_path):
    recs = [inventory.rates(_snap(i, 1000 * i, 2000 * i, 0), _snap(i + 1, 1000 * (i + 1), 2000 * (i + 1), i))
            for i in range(4)]
    for r in recs:
        r["self"] = {"cpu_percent": 1.5}
    src = tmp_path / "run.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = tmp_path / "r.html"
    proc = kbypass("report", str(src), "-o", str(out), check=True)
    assert "4 intervals" in proc.stdout
    page = out.read_text()
    assert page.count("data:image/png;base64,") >= 3 and "udp dport 4321 redirect" in page
    assert "src='http" not in page and 'src="http' not in page  # self-contained
    s = report.series(recs)
    assert [v for _, v in s["rules: packets/s"]["prog 9 #0 udp dport 4321 redirect"]] == [1000.0] * 4
    assert [v for _, v in s["queues: packets/s"]["x/x rx0"]] == [2000.0] * 4


@pytest.mark.parametrize("real, args, words", one_real([
    (["top", "--interval", "0"], "--interval"),
    (["top", "--once", "-c", "3"], "--once is one interval"),
    (["top", "--interval", "fast"], "--interval"),
    (["top", "--count", "0"], "--count"),
    (["top", "--record", "/nonexistent-dir/run.jsonl"], "does not exist"),
    (["top", "--netns", "no-such-ns-hb"], "no-such-ns-hb"),
    (["report", "/nonexistent-file.jsonl", "-o", "/tmp/x.html"], "no such readable file"),
    (["report", "/etc/hostname", "-o", "/tmp/hb-x.html"], "is not a 'kbypass top --json' record"),
    (["report", "/etc/hostname"], "-o/--output"),
]))
def test_bad_input_is_one_error_line(real, args, words):
    proc = kbypass_for(real)(*args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kbypass: error:") and words in lines[0], proc.stderr


def test_a_record_file_the_kernel_refuses_is_an_error_before_any_sampling():
    """sysfs passes the directory check (root may write there) but refuses to create a file: the error
    comes from opening it, before top reads anything."""
    proc = kbypass("top", "--once", "--json", "--record", "/sys/kernel/hb-run.jsonl")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("kbypass: error: cannot write --record /sys/kernel/hb-run.jsonl")
