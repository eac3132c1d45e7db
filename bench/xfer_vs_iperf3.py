#!/usr/bin/env python3
"""kbypass xfer (the reliable transport over AF_XDP) against iperf3 on the same veth, in one run.

    kbypass xfer, udp and eth encapsulation, loss-free and at 1% loss (the steering program's
        sample-drop on the receive path of both hosts), with the C bulk path (kbypass._fastxfer), and
        once, udp loss-free, with the pure-Python lane for comparison
    iperf3 UDP at the same datagram size (1472-byte UDP payloads, what xfer's udp encapsulation puts
        in each datagram), at iperf3's default rate (-b 1M) and unlimited (-b 0)
    iperf3 TCP (the kernel's TCP, GSO/GRO and all) on the same veth

Goodput = application bytes that arrived / seconds: for xfer the receiver's count from handshake to end
of stream (every byte checked by SHA-256 against the sender's), for iperf3 UDP the bytes the server got
(lost datagrams excluded), for iperf3 TCP the bytes received. Receivers run in host b on CPU 1, senders
in host a on CPU 0. Every trial is repeated --runs times in rotating order; medians are reported with
the ratios the issue asks for. The machine is shared: expect noise, compare within one run.

--placement says where each host's receive-side kernel work runs (kbypass.host.napi, as in
bench/afxdp_vs_dpdk.py): "sender" (default) is veth's, in the softirq of whoever sends, so host b's XDP
and copies run on the sender's core; "sut" runs every NAPI instance as a kernel thread pinned to its own
host's core (b: CPU 1, a: CPU 0), as with a NIC whose interrupt is on the application's core. Every
contender runs under the same placement.

--mtu sets the testbed's veth MTU (both ends; default 1500). 3506 is the largest a veth takes with XDP
attached (4 KiB pages): every contender then runs on the jumbo veth, xfer and iperf3 UDP with datagrams
of MTU - 28 bytes, and xfer's AF_XDP ports use 4 KiB frames.

Usage:  .venv/bin/python bench/xfer_vs_iperf3.py [--size 100M] [--seconds 5] [--runs 3] [--mtu 1500]
                                                 [--placement sender|sut] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from kbypass.host import napi, testbed

PREFIX = "kbx"
ROOT = Path(__file__).resolve().parent.parent
PORT = 7000
IPERF_PORT = 5299


def kb(*args: str) -> list[str]:
    return [sys.executable, "-m", "kbypass", *args]


def xfer_trial(encap: str, loss: float, size: str, poll: str, b: testbed.Host, lane: str = "c") -> dict:
    common = (["--encap", encap, "--poll", poll, "--lane", lane, "--json"]
              + (["--loss", str(loss)] if loss else []))  # on both ends: --loss drops what each end receives
    recv = subprocess.Popen(kb("xfer", "recv", "--host", "b", "--port", str(PORT), "--cpu", "1",
                               "--idle-timeout", "60", *common),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = recv.stderr.readline()
        if "listening" not in line:
            raise RuntimeError(f"xfer recv did not start: {line}{recv.stderr.read()}")
        send = subprocess.run(kb("xfer", "send", "--host", "a", "--dst", f"{b.ipv4}:{PORT}", "--size", size,
                                 "--cpu", "0", *common), capture_output=True, text=True, timeout=300)
        rout, rerr = recv.communicate(timeout=60)
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.wait()
    if send.returncode or recv.returncode:
        raise RuntimeError(f"xfer failed: send {send.returncode} {send.stderr} recv {recv.returncode} {rerr}")
    s, r = json.loads(send.stdout), json.loads(rout)
    if s["sha256"] != r["sha256"] or s["bytes"] != r["bytes"]:
        raise RuntimeError(f"xfer delivered different bytes: {s['sha256']} != {r['sha256']}")
    return {"goodput_bps": r["goodput_bps"], "sender_goodput_bps": s["goodput_bps"], "bytes": r["bytes"],
            "seconds": r["seconds"], "retransmits": s["retransmits"], "rtt_ms": s["rtt_ms"]}


def iperf3(a: testbed.Host, b: testbed.Host, seconds: float, extra: list[str]) -> dict:
    server = subprocess.Popen(["ip", "netns", "exec", b.netns, "taskset", "-c", "1", "iperf3", "-s", "-1",
                               "-p", str(IPERF_PORT)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        out = subprocess.run(["ip", "netns", "exec", a.netns, "taskset", "-c", "0", "iperf3", "-c", b.ipv4,
                              "-p", str(IPERF_PORT), "-t", str(seconds), "-J", *extra],
                             capture_output=True, text=True, timeout=seconds + 30)
        server.wait(timeout=10)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    d = json.loads(out.stdout)
    if "error" in d:
        raise RuntimeError(f"iperf3: {d['error']}")
    end = d["end"]
    if "-u" in extra:
        rec = end.get("sum_received") or end["sum"]
        lost = end["sum"].get("lost_percent", 0.0)
        sent = end.get("sum_sent") or end["sum"]
        got = rec["bytes"] * (1 - lost / 100) if "sum_received" not in end else rec["bytes"]
        return {"goodput_bps": round(got * 8 / rec["seconds"]), "sent_bps": round(sent["bits_per_second"]),
                "lost_percent": lost}
    rec = end["sum_received"]
    return {"goodput_bps": round(rec["bits_per_second"]), "retransmits": end["sum_sent"].get("retransmits")}


class NapiPinner:
    """Keep each host's NAPI threads on its own core while trials run: attaching an XDP program (every
    xfer endpoint does) makes new NAPI instances, so pinning once at the start is not enough."""

    def __init__(self, pins: list[tuple[str, int]]) -> None:
        self.pins = pins
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            for iface, cpu in self.pins:
                napi.pin(iface, cpu)

    def __enter__(self) -> NapiPinner:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="100M", help="bytes per xfer trial (default 100M)")
    ap.add_argument("--seconds", type=float, default=5, help="seconds per iperf3 trial (default 5)")
    ap.add_argument("--runs", type=int, default=3, help="repetitions of every trial (default 3)")
    ap.add_argument("--poll", choices=("wakeup", "busy"), default="wakeup", help="xfer's AF_XDP wait mode")
    ap.add_argument("--keep", action="store_true", help="leave the bench testbed up")
    ap.add_argument("--mtu", type=int, default=1500, help="veth MTU (default 1500; 3506 is the largest with XDP)")
    ap.add_argument("--placement", choices=("sender", "sut"), default="sender",
                    help="where receive work runs: veth's default (sender) or NAPI threads on each host's core")
    ap.add_argument("--json", help="result file (default bench/results/xfer_vs_iperf3[_mtuN][_sut].json)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench: needs root", file=sys.stderr)
        return 2
    if not shutil.which("iperf3"):
        print("bench: iperf3 is not installed: apt-get install -y iperf3", file=sys.stderr)
        return 2
    os.environ["KBYPASS_TESTBED"] = PREFIX
    if args.json is None:
        suffix = ("" if args.mtu == 1500 else f"_mtu{args.mtu}") + ("_sut" if args.placement == "sut" else "")
        args.json = str(ROOT / "bench" / "results" / f"xfer_vs_iperf3{suffix}.json")
    dgram = args.mtu - 28  # UDP payload per datagram in xfer's udp encapsulation, and iperf3's -l
    a, b = testbed.up(testbed.TestbedConfig(prefix=PREFIX, queues=2, mtu=args.mtu))
    trials = {
        "xfer udp": lambda: xfer_trial("udp", 0.0, args.size, args.poll, b),
        "xfer udp 1% loss": lambda: xfer_trial("udp", 0.01, args.size, args.poll, b),
        "xfer eth": lambda: xfer_trial("eth", 0.0, args.size, args.poll, b),
        "xfer eth 1% loss": lambda: xfer_trial("eth", 0.01, args.size, args.poll, b),
        "xfer udp, python lane": lambda: xfer_trial("udp", 0.0, args.size, args.poll, b, lane="python"),
        "iperf3 udp -b 1M (default)": lambda: iperf3(a, b, args.seconds, ["-u", "-l", str(dgram)]),
        "iperf3 udp -b 0": lambda: iperf3(a, b, args.seconds, ["-u", "-b", "0", "-l", str(dgram)]),
        "iperf3 tcp": lambda: iperf3(a, b, args.seconds, []),
    }
    names = list(trials)
    runs: dict[str, list[dict]] = {n: [] for n in names}
    pins = [(b.iface, 1), (a.iface, 0)] if args.placement == "sut" else []
    if pins:
        for host in (a, b):
            napi.set_threaded(host.iface, host.netns, True)
    try:
        with NapiPinner(pins):
            _trials(args, names, trials, runs)
    finally:
        if not args.keep:
            testbed.down(PREFIX)
        elif pins:
            for host in (a, b):
                napi.set_threaded(host.iface, host.netns, False)
    med = {n: statistics.median(x["goodput_bps"] for x in runs[n]) for n in names}

    ratios = {
        "xfer udp / iperf3 udp -b 1M (default)": med["xfer udp"] / med["iperf3 udp -b 1M (default)"],
        "xfer udp / iperf3 udp -b 0": med["xfer udp"] / med["iperf3 udp -b 0"],
        "xfer udp / iperf3 tcp": med["xfer udp"] / med["iperf3 tcp"],
        "xfer eth / iperf3 tcp": med["xfer eth"] / med["iperf3 tcp"],
        "xfer udp 1% loss / loss-free": med["xfer udp 1% loss"] / med["xfer udp"],
        "xfer eth 1% loss / loss-free": med["xfer eth 1% loss"] / med["xfer eth"],
        "xfer udp, C lane / python lane": med["xfer udp"] / med["xfer udp, python lane"],
    }
    print("\nmedians (Mbit/s):")
    for n in names:
        print(f"  {n:28s} {med[n] / 1e6:9.1f}")
    print("ratios:")
    for k, v in ratios.items():
        print(f"  {k:40s} {v:8.3f}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"median_goodput_bps": med, "ratios": ratios, "runs": runs,
                                           "size": args.size, "poll": args.poll, "mtu": args.mtu,
                                           "placement": args.placement, "datagram": dgram, "load": os.getloadavg()},
                                          indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


def _trials(args, names: list[str], trials: dict, runs: dict) -> None:
    for r in range(args.runs):
        for n in names[r % len(names):] + names[:r % len(names)]:  # rotate the order
            res = trials[n]()
            runs[n].append(res)
            print(f"run {r + 1} {n:28s} {res['goodput_bps'] / 1e6:9.1f} Mbit/s  "
                  + " ".join(f"{k}={v}" for k, v in res.items() if k != "goodput_bps"), flush=True)


if __name__ == "__main__":
    sys.exit(main())
