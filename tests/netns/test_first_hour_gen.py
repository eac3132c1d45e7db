"""The first hour on a real testbed: gen's offered vs achieved rate, its summary on SIGTERM, tune's
machine-wide knobs said, doctor's native-XDP failure at a too-large MTU, and `testbed up` interrupted."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from kbypass import netns
from kbypass.host import doctor, ifstats, testbed
from tests.kb import half_behind_slow, kbypass, pid_tag, wait_until

pytestmark = pytest.mark.netns


def test_gen_says_when_it_falls_short_of_the_rate(testbed_hosts):
    proc = kbypass("gen", "--host", "a", "--backend", "afxdp", "--rate", "500Mpps", "-c", "200000", "--json",
                   check=True)
    s = json.loads(proc.stdout)
    assert s["offered_pps"] == 500e6 and s["achieved_pps"] == s["pps"] < 500e6 and s["achieved_fraction"] < 0.95
    assert s["rate_pps"] == 500e6 and s["engine"] == s["backend"] == "afxdp"  # old keys kept
    note = [line for line in proc.stderr.splitlines() if "asked for 500,000,000 pps, achieved" in line]
    assert len(note) == 1 and note[0].startswith("kbypass: note: ")


def test_gen_summary_is_a_table(testbed_hosts):
    out = kbypass("gen", "--host", "a", "--backend", "afxdp", "-c", "1000", check=True).stdout
    assert "backend       afxdp" in " ".join(out.split("\n")) or "afxdp" in out
    assert "stats.tx_invalid_descs" in out and "{" not in out  # rows, not a raw dict


@pytest.mark.parametrize("backend, sig", half_behind_slow(["live", "afxdp"], [signal.SIGINT, signal.SIGTERM]))
def test_gen_signal_mid_run_prints_its_summary(testbed_hosts, backend, sig):
    a, b = testbed_hosts
    before = ifstats.sample(b.iface, b.netns)
    proc = subprocess.Popen([sys.executable, "-m", "kbypass", "gen", "--host", "a", "--backend", backend,
                             "-t", "30", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: _rx_since(before, b) >= 1000, "frames from the generator at host b", proc=proc)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    s = json.loads(out)
    assert s["packets"] > 0 and 0 < s["seconds"] < 15


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_gen_signal_at_start_up_exits_quietly(testbed_hosts, sig, code):
    proc = subprocess.Popen([sys.executable, "-m", "kbypass", "gen", "--host", "a", "--backend", "afxdp", "-t", "30"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)  # importing: before any socket exists
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode in (code, -sig, 0), err  # 0: it got as far as the send loop, which prints a summary
    assert "Traceback" not in err


def _rx_since(before, host) -> int:
    now = ifstats.sample(host.iface, host.netns)
    return sum(v - before.driver.get(k, 0) for k, v in now.driver.items()
               if k.startswith("rx_queue_") and k.endswith("_xdp_packets")) + \
        now.totals["rx_packets"] - before.totals["rx_packets"]


def test_tune_apply_says_busy_poll_is_machine_wide(testbed_hosts):
    with open("/proc/sys/net/core/busy_poll") as f:
        current = f.read().strip()
    # the value it has: the note must come all the same, and nothing changes on this machine
    proc = kbypass("tune", "apply", "--host", "b", f"busy_poll={current}", "--json", check=True)
    out = json.loads(proc.stdout)
    assert out["scope"] == {"busy_poll": "machine"} and out["machine_wide"] == ["busy_poll"]
    assert out["restore"] == f"sysctl -w net.core.busy_poll={current}"
    assert "busy_poll is a machine-wide sysctl" in proc.stderr and "stays after 'kbypass testbed down'" in proc.stderr
    local = kbypass("tune", "apply", "--host", "b", "napi_defer_hard_irqs=0", "--json", check=True)
    assert "machine-wide" not in local.stderr and "machine_wide" not in json.loads(local.stdout)
    shown = json.loads(kbypass("tune", "show", "--host", "b", "--json", check=True).stdout)
    assert shown["scope"]["busy_read"] == "machine" and shown["scope"]["threaded"] == "interface"


def test_doctor_attaches_at_a_jumbo_mtu(testbed_hosts):
    """Above one page's MTU (set by hand here) veth takes only frags-aware XDP programs: kbypass's steering
    program is one (section xdp.frags), so doctor's native-XDP check passes at MTU 9000 too."""
    a, b = testbed_hosts
    prefix = testbed.default_prefix()

    def set_mtu(mtu):
        for h in (a, b):
            subprocess.run(["ip", "-n", h.netns, "link", "set", "dev", h.iface, "mtu", str(mtu)], check=True)

    set_mtu(9000)
    try:
        check = doctor.check_native_xdp(prefix)
    finally:
        set_mtu(b.mtu)
    assert check.ok, check.detail


@pytest.mark.parametrize("delay", [0.0, 0.01, 0.03, 0.1])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_testbed_up_interrupted_leaves_all_or_nothing(sig, delay):
    prefix = "i" + pid_tag()[-4:]
    proc = subprocess.Popen([sys.executable, "-m", "kbypass", "testbed", "up", "--prefix", prefix],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = os.path.join(testbed.RUN_DIR, f"testbed-{prefix}.lock")
    try:
        # From the moment `up` holds its lock (before it makes anything): a signal during Python's own
        # start-up, before kbypass runs, is the interpreter's to report.
        wait_until(lambda: os.path.exists(lock), "testbed up to take its lock", proc=proc, timeout=20)
        time.sleep(delay)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
        assert "Traceback" not in err, err
        names = [f"{prefix}-{h}" for h in testbed.HOSTS]
        if testbed.status(prefix) is not None:  # it finished first (the signal came as it was exiting)
            assert proc.returncode in (0, 130, 143, -sig), err
        else:
            assert proc.returncode in (130, 143), err
            assert not any(netns.exists(n) for n in names), "a half testbed was left"
            assert not os.path.exists(os.path.join(testbed.RUN_DIR, f"testbed-{prefix}"))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        testbed.down(prefix)
