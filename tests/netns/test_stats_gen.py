"""The live generator and `kbypass stats`, judged by the kernel's counters and by scapy."""

import json
import socket
import struct

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from kbypass import netns
from kbypass.host import ifstats
from tests.kb import kbypass, kbypass_for, one_real, wait_until

pytestmark = pytest.mark.netns
ETH_P_ALL = 0x0003


def test_generated_frames_are_valid_and_numbered(testbed_hosts):
    a, b = testbed_hosts
    before = ifstats.sample(b.iface, b.netns)
    gen = []
    frames = capture_udp(b, lambda: gen.append(kbypass("gen", "--host", "a", "--count", "200", "--size", "100",
                                                       "--json", check=True)), 200)
    assert json.loads(gen[0].stdout)["packets"] == 200
    after = ifstats.sample(b.iface, b.netns)
    # veth drops what its 256-slot XDP ring cannot hold during a burst; every frame must be either
    # delivered or counted as dropped by the driver.
    dropped = sum(after.driver.get(f"rx_queue_{q}_drops", 0) - before.driver.get(f"rx_queue_{q}_drops", 0)
                  for q in range(b.queues))
    assert len(frames) + dropped == 200 and len(frames) >= 100
    seqs = []
    for f in frames:
        pkt = Ether(f)
        assert pkt[Ether].src == a.mac and pkt[Ether].dst == b.mac
        assert pkt[IP].src == a.ipv4 and pkt[IP].dst == b.ipv4 and pkt[UDP].dport == 4321
        assert len(f) == 100 and pkt[IP].len == 86 and pkt[UDP].len == 66
        # The IP checksum scapy recomputes equals the one on the wire; UDP's is 0 ("none") by design.
        wire = pkt[IP].chksum
        del pkt[IP].chksum
        assert IP(bytes(pkt[IP]))[IP].chksum == wire
        assert pkt[UDP].chksum == 0
        seqs.append(struct.unpack("!Q", f[42:50])[0])
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), "sequence numbers not increasing"
    assert seqs[-1] - seqs[0] < 200
    rates = ifstats.rates(before, after)
    xdp_frames = round(sum(q.get("xdp_packets", 0) for q in rates["queues"].values()) * rates["seconds"])
    assert 200 <= xdp_frames <= 210  # ours, plus the odd ARP or ICMP frame of the kernels


def test_live_generator_samples_time_stamps(testbed_hosts):
    """--time-every 4: the send time on exactly the frames whose sequence number is a multiple of 4, zero on
    the rest (written, not left over from a recycled page), sequence numbers on all."""
    a, b = testbed_hosts
    for _ in range(2):  # the second burst reuses pages the first one stamped with a time
        frames = capture_udp(b, lambda: kbypass("gen", "--host", "a", "--count", "64", "--size", "100",
                                                "--time-every", "4", check=True), 64)
        assert len(frames) >= 32
        for f in frames:
            seq, sent = struct.unpack("!QQ", f[42:58])
            assert (sent != 0) == (seq % 4 == 0), (seq, sent)


def capture_udp(b, run, want, timeout=1.0):
    with netns.entered(b.netns):
        raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        raw.bind((b.iface, 0))  # the name is resolved in the calling thread's namespace
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    raw.settimeout(timeout)
    run()
    frames = []
    try:
        while len(frames) < want:
            f = raw.recv(4096)
            if f[12:14] == b"\x08\x00" and f[23] == 17:
                frames.append(f)
    except socket.timeout:
        pass
    raw.close()
    return frames


def test_afxdp_engine_varies_fields_as_asked(testbed_hosts):
    a, b = testbed_hosts
    frames = capture_udp(b, lambda: kbypass("gen", "--backend", "afxdp", "--host", "a", "--count", "100",
                                            "--src", f"{a.ipv4}:1000-1009", "--dst", f"{b.ipv4}:5000-5003",
                                            "--size", "60-69", "--rate", "20k", check=True), 100)
    assert len(frames) == 100
    for k, f in enumerate(frames):
        pkt = Ether(f)
        seq = struct.unpack("!Q", f[42:50])[0]
        assert seq == k  # rate-limited to 20 kpps: nothing lost, nothing reordered
        assert pkt[UDP].sport == 1000 + k % 10 and pkt[UDP].dport == 5000 + k % 4
        assert len(f) == 60 + k % 10 and pkt[IP].len == len(f) - 14 and pkt[UDP].len == len(f) - 34
        wire = pkt[IP].chksum
        del pkt[IP].chksum
        assert IP(bytes(pkt[IP]))[IP].chksum == wire, f"bad IP checksum in packet {k}"


def test_stats_cli_json_and_errors(testbed_hosts):
    proc = kbypass("stats", "--host", "b", "--count", "1", "--interval", "0.1", "--json", check=True)
    row = json.loads(proc.stdout.splitlines()[0])
    assert set(row["totals"]) >= {"rx_packets", "tx_packets"} and {"rx0", "rx1"} <= set(row["queues"])
    bad = kbypass("stats", "--iface", "nosuch0")
    assert bad.returncode == 2 and "no interface 'nosuch0'" in bad.stderr


@pytest.mark.parametrize("real, args, words", one_real([(["--count", "0"], "--count"), (["--count", "5", "--size", "9000"], "--size 9000"),
                                         (["--count", "5", "--size", "40"], "--size 40"),
                                         (["--count", "5", "--dst", "10.77.0.2:99999"], "--dst"),
                                         (["--count", "5", "--backend", "afxdp", "--rate", "-5"], "--rate"),
                                         (["--count", "5", "--size", "60-70"], "need --backend afxdp"),
                                         (["--count", "5", "--time-every", "3"], "power of two"),
                                         (["--count", "5", "--backend", "afxdp", "--time-every", "4"],
                                          "only the live backend"),
                                         (["--count", "5", "--backend", "afxdp", "--size", "70-60"], "--size")]))
def test_gen_bad_input(testbed_hosts, real, args, words):
    proc = kbypass_for(real)("gen", *args)
    assert proc.returncode == 2 and words in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_live_generator_ctrl_c_ends_with_an_exact_summary(testbed_hosts):
    """SIGINT in the middle of a long run: the slice in flight completes, the summary prints, and the count
    it gives is what host b's veth saw (arrived or dropped by veth's ring)."""
    import signal
    import subprocess
    import sys

    a, b = testbed_hosts
    before = ifstats.sample(b.iface, b.netns)
    proc = subprocess.Popen([sys.executable, "-m", "kbypass", "gen", "--host", "a", "--duration", "30", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # The generator installs its SIGINT handler before its first slice: frames arriving at host b mean
        # it is there (a fixed sleep could signal a process still importing, which would die of SIGINT).
        wait_until(lambda: xdp_frames_since(before, b) >= 1000, "frames from the generator at host b", proc=proc)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert 0 < summary["seconds"] < 10 and summary["packets"] > 0
    after = ifstats.sample(b.iface, b.netns)
    rates = ifstats.rates(before, after)
    xdp_frames = round(sum(q.get("xdp_packets", 0) for q in rates["queues"].values()) * rates["seconds"])
    assert summary["packets"] <= xdp_frames <= summary["packets"] + 50


def xdp_frames_since(before, host) -> int:
    now = ifstats.sample(host.iface, host.netns)
    return sum(v - before.driver.get(k, 0) for k, v in now.driver.items()
               if k.startswith("rx_queue_") and k.endswith("_xdp_packets"))
