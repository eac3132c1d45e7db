"""Hardware steering (kbypass.steer.ethtool, kbypass.port.hidden_queue) without a NIC that has it.

The judge of the encoding is the ethtool binary itself: tests/unit/data/ethtool_judge.c, loaded with
LD_PRELOAD, answers the questions a NIC with ntuple rules and a 4-queue RSS table would and records every
SIOCETHTOOL request it is sent, with sizes from the system's linux/ethtool.h. The same shim is loaded
into a Python that runs kbypass's requests, so both go through the real ioctl() and are compared byte for
byte, and kbypass decodes the shim's replies (a rule location, the indirection table) the way ethtool -x
prints them. The undo logic runs against tests/fakenic.py, a NIC kept in a file so that its settings
outlive an owner killed with -9, as a real NIC's do.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time

import pytest

from kbypass.cp.paths import namespace_name
from kbypass.port import hidden_queue
from kbypass.port.hidden_queue import HiddenQueue
from kbypass.steer import ethtool as et
from kbypass.steer.rules import Rule
from tests import fakenic
from tests.kb import refused

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
JUDGE_SRC = os.path.join(ROOT, "tests", "unit", "data", "ethtool_judge.c")
DEV = "lo"  # the shim answers every SIOCETHTOOL itself: no request reaches the kernel


@pytest.fixture(scope="module")
def judge(tmp_path_factory):
    cc = shutil.which("cc") or shutil.which("clang") or shutil.which("gcc")
    if cc is None or shutil.which("ethtool") is None:
        pytest.skip("needs a C compiler and ethtool (make setup installs both)")
    out = tmp_path_factory.mktemp("judge") / "judge.so"
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", str(out), JUDGE_SRC, "-ldl"], check=True)
    return str(out)


def _requests(judge: str, tmp_path, argv: list[str], **env) -> tuple[list[tuple[int, bytes]], str]:
    log = tmp_path / f"log{time.monotonic_ns()}"
    env = {**os.environ, "LD_PRELOAD": judge, "KB_JUDGE_LOG": str(log), **env}
    r = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = log.read_text().split() if log.exists() else []
    return [(int(c, 16), bytes.fromhex(h)) for c, h in zip(lines[::2], lines[1::2])], r.stdout


def ethtool(judge, tmp_path, *args, **env):
    return _requests(judge, tmp_path, ["ethtool", *args], **env)


def kbypass(judge, tmp_path, code: str, **env):
    """Run `code` with `dev`, an Ethtool on the judge's device, in a Python with the shim loaded."""
    prog = f"from kbypass.steer.ethtool import Ethtool\nfrom kbypass.steer.rules import Rule\ndev = Ethtool({DEV!r})\n"
    return _requests(judge, tmp_path, [sys.executable, "-c", prog + code], **env)


def _without_data(buf: bytes) -> bytes:
    """An ethtool_rxnfc's fields (cmd, flow_type, fs, rule_cnt) without `data`, which ethtool leaves holding
    the reply to its earlier ETHTOOL_GRXCLSRLCNT (the kernel ignores it for SRXCLSRLINS), and without the
    struct's 4 bytes of tail padding, which ethtool does not clear."""
    return buf[:8] + buf[16:188]


@pytest.mark.parametrize("rule, args", [
    ("udp dst 10.77.0.2 dport 4321", "flow-type udp4 dst-ip 10.77.0.2 dst-port 4321 action 1"),
    ("tcp src 10.0.0.0/8 sport 80", "flow-type tcp4 src-ip 10.0.0.0 m 0.255.255.255 src-port 80 action 1"),
    ("udp src 192.168.1.7 dst 10.1.2.0/24 sport 5 dport 53",
     "flow-type udp4 src-ip 192.168.1.7 dst-ip 10.1.2.0 m 0.0.0.255 src-port 5 dst-port 53 action 1"),
    ("udp", "flow-type udp4 action 1"),
])
def test_rule_insert_is_what_ethtool_sends(judge, tmp_path, rule, args):
    theirs, said = ethtool(judge, tmp_path, "-N", DEV, *args.split())
    ours, printed = kbypass(judge, tmp_path, f"print(dev.insert(Rule.parse({rule!r}), 1))")
    assert [c for c, _ in theirs] == [c for c, _ in ours] == [et.ETHTOOL_SRXCLSRLINS]
    assert len(ours[0][1]) == len(theirs[0][1]) == et.RXNFC.size  # sizeof(struct ethtool_rxnfc)
    assert _without_data(ours[0][1]) == _without_data(theirs[0][1])
    # the location the driver chose, read back from the reply the way ethtool reads it
    assert "Added rule with ID 7" in said and printed.strip() == "7"


def test_a_driver_that_does_not_pick_gets_the_location_ethtool_would_pick(judge, tmp_path):
    taken = {"KB_JUDGE_TAKEN": "1023,1021,5"}
    args = "flow-type udp4 dst-ip 10.77.0.2 dst-port 4321 action 1".split()
    theirs, said = ethtool(judge, tmp_path, "-N", DEV, *args, **taken)
    code = "loc = dev.free_location()\nprint(loc, dev.insert(Rule.parse('udp dst 10.77.0.2 dport 4321'), 1, loc))"
    ours, printed = kbypass(judge, tmp_path, code, **taken)
    assert "Added rule with ID 1022" in said and printed.split() == ["1022", "1022"]
    assert _without_data(ours[0][1]) == _without_data(theirs[0][1])


def test_rule_delete_names_the_location_as_ethtool_does(judge, tmp_path):
    theirs, _ = ethtool(judge, tmp_path, "-N", DEV, "delete", "7")
    ours, _ = kbypass(judge, tmp_path, "dev.delete(7)")
    (tc, tb), (oc, ob) = theirs[0], ours[0]
    assert tc == oc == et.ETHTOOL_SRXCLSRLDEL
    # ethtool sets cmd and fs.location only (the rest of its struct is uninitialised stack)
    assert ob[:4] == tb[:4] and ob[16 + 160:16 + 164] == tb[16 + 160:16 + 164] == (7).to_bytes(4, "little")


def test_indirection_table_write_is_what_ethtool_sends(judge, tmp_path):
    theirs, _ = ethtool(judge, tmp_path, "-X", DEV, "weight", "1", "0", "1", "1")
    table = et.indir_table(theirs[0][1])
    assert 1 not in table and len(table) == 128  # ethtool's own hidden queue: weight 0 for queue 1
    ours, _ = kbypass(judge, tmp_path, f"dev.set_indirection({table!r})")
    assert ours == theirs


def test_a_default_table_is_restored_by_the_reset_ethtool_sends(judge, tmp_path):
    theirs, _ = ethtool(judge, tmp_path, "-X", DEV, "default")
    ours, _ = kbypass(judge, tmp_path, "dev.set_indirection([])")
    assert ours == theirs == [(et.ETHTOOL_SRXFHINDIR, bytes.fromhex("3900000000000000"))]


def test_indirection_table_read_decodes_what_ethtool_prints(judge, tmp_path):
    _, printed = ethtool(judge, tmp_path, "-x", DEV)
    shown = [int(v) for line in printed.splitlines() if ":" in line and line.strip()[0].isdigit()
             for v in line.split(":", 1)[1].split()]
    _, ours = kbypass(judge, tmp_path, "import json\nprint(json.dumps([dev.indirection(), dev.rx_rings(), "
                                       "dev.rule_count()]))")
    table, rings, count = json.loads(ours)
    assert table == shown and len(shown) == 128
    assert rings == 4 and count == [0, True, 0]  # the driver picks locations (RX_CLS_LOC_SPECIAL)


@pytest.mark.parametrize("rule, why", [
    ("icmp dst 10.0.0.1", "tcp or udp"),
    ("udp dst fd00::1 dport 53", "IPv4 only"),
    ("udp vlan 100 dport 53", "VLAN"),
    ("udp dport 53 drop", "only redirect"),
    ("any dst 10.0.0.1", "tcp or udp"),
])
def test_what_ntuple_cannot_say_is_refused(rule, why):
    with pytest.raises(et.HardwareSteeringError, match=why):
        et.flow_spec(Rule.parse(rule), 1)


def test_hidden_table_moves_only_the_hidden_queues_buckets():
    table = [i % 4 for i in range(128)]
    hidden = et.hidden_table(table, {2}, 4)
    assert 2 not in hidden
    assert all(h == t for h, t in zip(hidden, table) if t != 2)
    assert sorted(hidden.count(q) for q in (0, 1, 3)) == [42, 43, 43]  # moved buckets spread round-robin
    with pytest.raises(et.HardwareSteeringError, match="no RSS queue"):
        et.hidden_table([0, 1] * 4, {0, 1}, 2)


# ---- ownership: the record, the undo, the sweep after a crash (fake NIC in a file) ---------------------


@pytest.fixture
def nic(tmp_path, monkeypatch):
    run, state = fakenic.install(tmp_path, monkeypatch)
    original = json.loads(state.read_text())
    return run, state, original


def test_apply_then_undo_restores_the_nic_and_removes_the_record(nic):
    run, state, original = nic
    hq = HiddenQueue("eth9", None, 2, [Rule.parse("udp dport 4321"), Rule.parse("tcp dport 80")],
                     device=fakenic.FakeNic)
    hq.apply()
    now = json.loads(state.read_text())
    assert sorted(now["rules"].values()) == [["tcp dport 80 redirect", 2], ["udp dport 4321 redirect", 2]]
    assert 2 not in now["table"]
    (record_file,) = run.iterdir()
    assert stat.S_IMODE(record_file.stat().st_mode) == 0o600
    record = json.loads(record_file.read_text())
    assert record["pid"] == os.getpid() and record["start_time"] == hidden_queue.start_time(os.getpid())
    assert record["table"] == original["table"] and sorted(record["locations"]) == sorted(map(int, now["rules"]))
    with pytest.raises(et.HardwareSteeringError, match=f"held by pid {os.getpid()}"):
        HiddenQueue("eth9", None, 1, [Rule.parse("udp dport 1")], device=fakenic.FakeNic).apply()
    hq.undo()
    assert json.loads(state.read_text()) == original and list(run.iterdir()) == []


def test_a_killed_owners_settings_are_undone_by_the_next_start(nic, tmp_path):
    run, state, original = nic
    code = ("import sys, time\nfrom kbypass.port import hidden_queue\nfrom kbypass.steer.rules import Rule\n"
            "from tests.fakenic import FakeNic\n"
            f"hidden_queue.RUN_DIR = {str(run)!r}\nhidden_queue.check_run_dir = lambda: None\n"
            "hidden_queue.HiddenQueue('eth9', None, 3, [Rule.parse('udp dport 9')], device=FakeNic).apply()\n"
            "print('applied', flush=True)\ntime.sleep(600)\n")
    owner = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout.readline().strip() == "applied"
        assert hidden_queue.sweep(fakenic.FakeNic) == []  # alive: its lock is held, nothing is touched
        assert 3 not in json.loads(state.read_text())["table"]
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    assert json.loads(state.read_text()) != original  # the kernel (the NIC) keeps a dead owner's settings
    # the next start on any interface sweeps first
    hq = HiddenQueue("eth8", None, 1, [Rule.parse("udp dport 7")], device=fakenic.FakeNic)
    hq.apply()
    now = json.loads(state.read_text())
    assert list(now["rules"].values()) == [["udp dport 7 redirect", 1]] and 3 in now["table"]
    hq.undo()
    assert json.loads(state.read_text()) == original and list(run.iterdir()) == []


def test_a_table_someone_configured_is_written_back_not_reset(nic):
    run, state, _ = nic
    mine = [q for q in (0, 0, 1, 3) for _ in range(32)]
    fakenic.FakeNic("eth9").set_indirection(mine)
    before = json.loads(state.read_text())
    with HiddenQueue("eth9", None, 3, [Rule.parse("udp dport 1")], device=fakenic.FakeNic):
        assert 3 not in json.loads(state.read_text())["table"]
    assert json.loads(state.read_text()) == before and before["configured"]


def test_a_failure_midway_undoes_what_was_done(nic, monkeypatch):
    run, state, original = nic

    def refuse(self, rule, queue):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fakenic.FakeNic, "insert", refuse)
    with pytest.raises(et.HardwareSteeringError, match="refused hardware steering"):
        HiddenQueue("eth9", None, 2, [Rule.parse("udp dport 1")], device=fakenic.FakeNic).apply()
    assert json.loads(state.read_text()) == original and list(run.iterdir()) == []


# ---- the option: refusals that need no device ---------------------------------------------------------


@pytest.mark.parametrize("extra, says", [
    (["--hw"], "give --queue N"),
    (["--hw", "auto"], "give --queue N"),
    (["--hw", "--backend", "socket"], "--hw applies to the afxdp backend only"),
    (["--hw", "auto", "--backend", "packet_mmap"], "--hw applies to the afxdp backend only"),
    (["--hw", "--queue", "0", "--rule", "udp dport 1 drop"], "no rule redirects"),
    (["--hw", "--queue", "0", "--rule", "icmp"], "tcp or udp"),
])
def test_hw_refusals_are_one_line_before_anything_is_opened(capsys, extra, says):
    if "--rule" not in extra:
        extra = [*extra, "--rule", "udp dport 4321"]
    line = refused(capsys, ["sink", "-i", "lo", "-t", "1", *extra])
    assert says in line


def _plant(run, name: str, **record) -> None:
    """A record whose owner is dead (nobody holds its lock)."""
    path = run / f"hw-{name}.json"
    path.write_text(json.dumps({"ifname": "eth9", "netns_name": namespace_name(None), "ifindex": 9, "queue": 1, "pid": 1,
                                "table": [0] * 128, "table_set": True, "locations": [5], **record}))
    path.chmod(0o600)


def test_a_record_for_a_device_that_is_gone_or_unreachable_never_touches_another(nic):
    run, state, original = nic
    _plant(run, "here-eth9", ifindex=77)  # eth9 now is another device (ifindex 9): its settings went
    _plant(run, "ns-1-eth9", netns_name="ns-1")  # an unnamed namespace, not ours
    undone = hidden_queue.sweep(fakenic.FakeNic)
    assert [r["ifindex"] for r in undone] == [77]
    assert json.loads(state.read_text()) == original  # neither table was written to the fake eth9
    assert [p.name for p in run.iterdir()] == ["hw-ns-1-eth9.json"]  # left for a sweep in there


def test_the_summary_says_where_the_nic_put_the_rules_or_why_it_did_not(nic):
    from types import SimpleNamespace

    from kbypass.tools._port import port_summary

    port = SimpleNamespace(stats={}, mode="copy", bind_mode="copy")
    res = SimpleNamespace(packets=0, bytes=0, seconds=1.0, pps=0.0)
    with HiddenQueue("eth9", None, 2, [Rule.parse("udp dport 1")], device=fakenic.FakeNic) as hq:
        sp = SimpleNamespace(port=port, queues=[2], rule_counters=list, hidden=hq, hw_note=None)
        assert port_summary(sp, res)["hw"] == {"queue": 2, "rule_locations": hq.locations} and hq.locations
    sp = SimpleNamespace(port=port, queues=[2], rule_counters=list, hidden=None, hw_note="eth9 has none")
    assert port_summary(sp, res)["hw"] == {"fallback": "eth9 has none"}
    sp.hw_note = None
    assert "hw" not in port_summary(sp, res)


def test_where_the_driver_does_not_pick_the_location_is_recorded_before_the_insert(nic, monkeypatch):
    run, state, original = nic
    monkeypatch.setattr(fakenic.FakeNic, "driver_picks", False)
    seen = []
    real_insert = fakenic.FakeNic.insert

    def insert(self, rule, queue, location=None):
        seen.append(json.loads(next(run.iterdir()).read_text())["locations"])  # the record, as the NIC is asked
        return real_insert(self, rule, queue, location)

    monkeypatch.setattr(fakenic.FakeNic, "insert", insert)
    with HiddenQueue("eth9", None, 2, [Rule.parse("udp dport 1"), Rule.parse("udp dport 2")],
                     device=fakenic.FakeNic) as hq:
        assert hq.locations == [1023, 1022] and seen == [[1023], [1023, 1022]]
    assert json.loads(state.read_text()) == original


def test_a_table_rewritten_since_a_crash_is_left_as_it_is_and_said(nic):
    """After a crash the kernel keeps the hidden queue's table; if someone rewrote it meanwhile (an
    administrator's `ethtool -X`), the sweep must not write the old one over theirs."""
    run, state, original = nic
    hq = HiddenQueue("eth9", None, 2, [Rule.parse("udp dport 4321")], device=fakenic.FakeNic)
    hq.apply()
    theirs = [0] * len(original["table"])
    fakenic.FakeNic("eth9").set_indirection(theirs)
    (record_file,) = run.iterdir()
    record = json.loads(record_file.read_text())
    assert hidden_queue._undo(record, fakenic.FakeNic) == [
        "indirection table: changed since kbypass hid the queue, left as it is"]
    now = json.loads(state.read_text())
    assert now["table"] == theirs and now["rules"] == {}  # the rules ours went, the table theirs stays
    hq.locations.clear()
    hq.undo()
