#!/usr/bin/env python3
"""kbypass xfer (the reliable transport over AF_XDP) against the kernel on the same veth, in one run:
issue 17's table.

Contenders, each at every loss rate and every MTU:
    tcp cubic    iperf3 TCP with -C cubic (the kernel's TCP, GSO/GRO and all)
    tcp bbr      iperf3 TCP with -C bbr (the kernel's BBR; needs tcp_bbr in
                 /proc/sys/net/ipv4/tcp_available_congestion_control, else its rows say so)
    udp          iperf3 UDP, -b 0, datagrams of MTU - 28 bytes (no reliability: the ceiling of a
                 datagram path; goodput counts what arrived)
    xfer         kbypass xfer with its default controller (bbr), datagrams of MTU - 28 bytes
    xfer reno    kbypass xfer --congestion reno (the loss-rate controller), with --also-reno

Loss is injected the same way for all: the steering program's `sample` rule on both hosts, in front of
everything else on the interface. For the kernel's TCP a rule on each end drops that share of the data
(host b, dport) and of the ACKs (host a, sport), for iperf3 UDP one on host b; for xfer its own --loss
on both ends (the same rule, in front of its redirect). Loss-free rows run with no program attached to
the kernel's contenders (the kernel at its best).

MTUs (--mtus): 1500, 3506 (the largest one 4 KiB UMEM frame carries on veth), 9000, and "max", the
largest the testbed takes. An MTU the testbed or xfer cannot carry is a row marked "skipped: why".

Goodput = application bytes that arrived / seconds (xfer: the receiver's count from handshake to end of
stream, its --digest checked against the sender's: crc64 by default, CRC-64/XZ at ~0.05 CPU s/GB; sha256
costs ~0.8 s/GB at each end, iperf3 and kernel TCP check nothing end to end). Receivers in host b on CPU 1, senders in host a on CPU 0;
every trial is repeated --runs times in rotating order; medians, and ratios against the kernel's TCP of
the same run. The machine is shared: compare within one run (xfer's rows carry each end's run delay,
the seconds it was runnable but waited for its core: on 2026-12-07 0.5-2 s of a 4 s run while other
sessions built and tested, and the goodput of identical code spread 2x with it). Writes a table, --json and a PNG.

Usage:  .venv/bin/python bench/xfer_vs_iperf3.py [--seconds 5] [--runs 3] [--mtus 1500,3506,9000,max]
            [--losses 0,0.01,0.05] [--also-reno] [--contenders 'tcp cubic,xfer'] [--placement sender|sut]
            [--digest crc64|sha256|none]
            [--prefix cc] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from kbypass.errors import KbypassError
from kbypass.host import napi, testbed

ROOT = Path(__file__).resolve().parent.parent
PORT = 7000
IPERF_PORT = 5299
KERNEL = ("tcp cubic", "tcp bbr")


def kb(*args: str) -> list[str]:
    return [sys.executable, "-m", "kbypass", *args]


class Skip(Exception):
    """This cell cannot run here; the message says why (it becomes the row's "skipped: why")."""


# ---------------------------------------------------------------- contenders
def xfer_trial(a, b, loss: float, seconds: float, poll: str, congestion: str | None, digest: str,
               source: str | None = None) -> dict:
    """One xfer at both ends; `source`: both run from that source tree instead (--baseline)."""
    common = ["--poll", poll, "--digest", digest, "--json"] + (["--loss", str(loss)] if loss else []) \
        + (["--congestion", congestion] if congestion else [])
    env = None if source is None else {**os.environ, "PYTHONPATH": source}
    recv = subprocess.Popen(kb("xfer", "recv", "--host", "b", "--port", str(PORT), "--cpu", "1",
                               "--idle-timeout", "60", *common),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = recv.stderr.readline()
        if "listening" not in line:
            raise Skip(_last_line(line + recv.stderr.read()))
        cpu0 = _children_cpu()
        sender = subprocess.Popen(kb("xfer", "send", "--host", "a", "--dst", f"{b.ipv4}:{PORT}", "-t", str(seconds),
                                     "--cpu", "0", *common), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=env)
        with RunDelay([sender.pid, recv.pid]) as waited:
            try:
                out, err = sender.communicate(timeout=seconds + 120)
            finally:
                if sender.poll() is None:
                    sender.kill()
                    sender.wait()
        send = subprocess.CompletedProcess(sender.args, sender.returncode, out, err)
        cpu1 = _children_cpu()
        rout, rerr = recv.communicate(timeout=60)
        cpu2 = _children_cpu()
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.wait()
    if send.returncode or recv.returncode:
        raise RuntimeError(f"xfer failed: send {send.returncode} {_last_line(send.stderr)} "
                           f"recv {recv.returncode} {_last_line(rerr)}")
    s, r = json.loads(send.stdout), json.loads(rout)
    if s.get(digest) != r.get(digest) or s["bytes"] != r["bytes"]:
        raise RuntimeError(f"xfer delivered different bytes: {digest} {s.get(digest)} != {r.get(digest)}")
    return {"goodput_bps": r["goodput_bps"], "bytes": r["bytes"], "seconds": r["seconds"],
            "retransmits": s["retransmits"], "timeouts": s["timeouts"],
            "spurious_timeouts": s.get("spurious_timeouts"), "tail_probes": s.get("tail_probes"), "rtt_ms": s["rtt_ms"],
            "datagram": s["datagram"], "loss_dropped": r["loss_dropped"] + s["loss_dropped"], "cc": s.get("cc"),
            # CPU seconds (user + system, all threads, start-up included) per GB delivered, each end
            "send_cpu_s_per_gb": round((cpu1 - cpu0) / max(r["bytes"], 1) * 1e9, 2),
            "recv_cpu_s_per_gb": round((cpu2 - cpu1) / max(r["bytes"], 1) * 1e9, 2),
            # seconds each end was runnable but not running while the sender ran (other processes had its core)
            "send_run_delay_s": waited.get(sender.pid), "recv_run_delay_s": waited.get(recv.pid)}


def run_delay(pid: int) -> float | None:
    """Seconds process `pid` (its main thread) has waited on a run queue, runnable but not running
    (/proc/PID/schedstat's second field); None once it is gone or where the kernel keeps no schedstats."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


class RunDelay:
    """Within the block, the run delay (run_delay) of each of `pids`, sampled every `interval` s (a process
    that exits takes its counters with it); the dict `with` gives holds each pid's last sample, rounded, when
    the block ends: how much of a run a busy machine took from an end."""

    def __init__(self, pids: list[int], interval: float = 0.05) -> None:
        self.pids, self.interval = pids, interval
        self.last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            for pid in self.pids:
                if (v := run_delay(pid)) is not None:
                    self.last[pid] = round(v, 3)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> dict[int, float]:
        self._thread.start()
        return self.last

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _children_cpu() -> float:
    """CPU seconds of the children waited for so far (the xfer ends: sender, then receiver)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def iperf3(a, b, seconds: float, extra: list[str]) -> dict:
    server = subprocess.Popen(["ip", "netns", "exec", b.netns, "taskset", "-c", "1", "iperf3", "-s", "-1",
                               "-p", str(IPERF_PORT)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        out = subprocess.run(["ip", "netns", "exec", a.netns, "taskset", "-c", "0", "iperf3", "-c", b.ipv4,
                              "-p", str(IPERF_PORT), "-t", str(seconds), "-J", *extra],
                             capture_output=True, text=True, timeout=seconds + 60)
        server.wait(timeout=20)
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
        got = rec["bytes"] if "sum_received" in end else rec["bytes"] * (1 - lost / 100)
        return {"goodput_bps": round(got * 8 / rec["seconds"]), "lost_percent": lost}
    rec = end["sum_received"]
    return {"goodput_bps": round(rec["bits_per_second"]), "retransmits": end["sum_sent"].get("retransmits"),
            "congestion": end.get("sender_tcp_congestion")}


class KernelLoss:
    """The steering program's sample rule on both hosts for the kernel's contenders: data dropped at b,
    ACKs (TCP) at a. Held through the control plane while the trial runs; closing removes the rules."""

    def __init__(self, a, b, proto: str, loss: float) -> None:
        self.leases = []
        if not loss:
            return
        from kbypass.cp.client import SteeringLease

        try:
            for host, match in ((b, f"{proto} dport {IPERF_PORT}"), (a, f"{proto} sport {IPERF_PORT}")):
                if proto == "udp" and host is a:
                    continue  # no datagrams come back
                lease = SteeringLease(host.iface, host.netns)
                self.leases.append(lease)
                lease.add(f"{match} sample prob {loss!r}")
        except BaseException:
            self.close()
            raise

    def dropped(self) -> int:
        return sum(packets for lease in self.leases for packets, _ in lease.counters().values())

    def close(self) -> None:
        for lease in self.leases:
            lease.close()
        self.leases = []


def kernel_trial(a, b, kind: str, loss: float, seconds: float, mtu: int) -> dict:
    extra = {"tcp cubic": ["-C", "cubic"], "tcp bbr": ["-C", "bbr"],
             "udp": ["-u", "-b", "0", "-l", str(mtu - 28)]}[kind]
    if kind == "tcp bbr" and "bbr" not in available_cc():
        raise Skip("tcp_bbr is not in this kernel's tcp_available_congestion_control")
    loss_rules = KernelLoss(a, b, "udp" if kind == "udp" else "tcp", loss)
    try:
        res = iperf3(a, b, seconds, extra)
        res["loss_dropped"] = loss_rules.dropped()
    finally:
        loss_rules.close()
    if loss and not res["loss_dropped"]:
        raise RuntimeError(f"{kind}: the sample rules dropped nothing at loss {loss}")
    return res


def available_cc() -> str:
    try:
        return Path("/proc/sys/net/ipv4/tcp_available_congestion_control").read_text()
    except OSError:
        return ""


# ---------------------------------------------------------------- MTUs
def largest_mtu() -> int:
    """The largest MTU the testbed takes (its own check, nothing brought up)."""
    lo, hi = 1500, testbed.MAX_MTU
    while lo < hi:
        mid = (lo + hi + 1) // 2
        try:
            testbed.TestbedConfig(prefix="probe", mtu=mid).validate()
            lo = mid
        except KbypassError:
            hi = mid - 1
    return lo


def mtu_list(text: str) -> list[int]:
    out = []
    for item in text.split(","):
        m = largest_mtu() if item.strip() == "max" else int(item)
        if m not in out:
            out.append(m)
    return out


# ---------------------------------------------------------------- the run
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


def run_mtu(args, mtu: int, contenders: list[str], cells: dict) -> None:
    """Every (contender, loss) at `mtu`, rotated --runs times; results into cells[(mtu, loss, name)]."""
    for loss in args.losses:
        for name in contenders:
            cells[(mtu, loss, name)] = {"runs": [], "skipped": None}
    try:
        a, b = testbed.up(testbed.TestbedConfig(prefix=args.prefix, queues=2, mtu=mtu))
    except KbypassError as e:
        for key in [k for k in cells if k[0] == mtu]:
            cells[key]["skipped"] = f"the testbed does not take MTU {mtu}: {_last_line(str(e))}"
        print(f"MTU {mtu}: skipped: {_last_line(str(e))}", flush=True)
        return
    pins = [(b.iface, 1), (a.iface, 0)] if args.placement == "sut" else []
    try:
        for host in (a, b) if pins else ():
            napi.set_threaded(host.iface, host.netns, True)
        with NapiPinner(pins):
            order = [(loss, name) for loss in args.losses for name in contenders]
            for r in range(args.runs):
                k = r * len(contenders) % len(order)
                for loss, name in order[k:] + order[:k]:
                    cell = cells[(mtu, loss, name)]
                    if cell["skipped"]:
                        continue
                    try:
                        res = retried(args, a, b, name, loss, mtu)
                    except Skip as e:
                        cell["skipped"] = str(e)
                        print(f"MTU {mtu} loss {loss:g} {name}: skipped: {e}", flush=True)
                        continue
                    except RuntimeError as e:  # twice: counted, and the cell's median is of the others
                        cell.setdefault("errors", []).append(str(e))
                        print(f"MTU {mtu} loss {loss:g} {name}: failed twice: {e}", flush=True)
                        continue
                    cell["runs"].append(res)
                    print(f"MTU {mtu} loss {loss:g} run {r + 1} {name:10s} {res['goodput_bps'] / 1e6:9.1f} Mbit/s  "
                          + " ".join(f"{k}={v}" for k, v in res.items() if k not in ("goodput_bps", "cc")), flush=True)
    finally:
        testbed.down(args.prefix)


def retried(args, a, b, name: str, loss: float, mtu: int) -> dict:
    """A trial, once more if it failed (iperf3's control connection sometimes times out under loss)."""
    try:
        return trial(args, a, b, name, loss, mtu)
    except RuntimeError as e:
        print(f"MTU {mtu} loss {loss:g} {name}: failed ({e}), once more", flush=True)
        time.sleep(1)
        return trial(args, a, b, name, loss, mtu)


def trial(args, a, b, name: str, loss: float, mtu: int) -> dict:
    if name.startswith("xfer"):
        return xfer_trial(a, b, loss, args.seconds, args.poll, "reno" if name == "xfer reno" else None,
                          args.digest, args.baseline if name == "xfer baseline" else None)
    return kernel_trial(a, b, name, loss, args.seconds, mtu)


def summarize(cells: dict) -> list[dict]:
    rows = []
    for (mtu, loss, name), cell in cells.items():
        med = statistics.median(r["goodput_bps"] for r in cell["runs"]) if cell["runs"] else None
        rows.append({"mtu": mtu, "loss": loss, "contender": name, "median_bps": med, "runs": len(cell["runs"]),
                     "skipped": cell["skipped"]})
    by = {(r["mtu"], r["loss"], r["contender"]): r["median_bps"] for r in rows}
    for r in rows:
        for anchor in KERNEL:
            ref = by.get((r["mtu"], r["loss"], anchor))
            r[f"x {anchor}"] = round(r["median_bps"] / ref, 3) if r["median_bps"] and ref else None
    return rows


def print_table(rows: list[dict]) -> None:
    print("\n| MTU | loss | contender | Mbit/s (median) | x tcp cubic | x tcp bbr |")
    print("|---|---|---|---|---|---|")
    whole = {}  # an MTU whose every cell was skipped for one reason: one row
    for r in rows:
        whole.setdefault(r["mtu"], set()).add(r["skipped"])
    said = set()
    for r in rows:
        reasons = whole[r["mtu"]]
        if len(reasons) == 1 and None not in reasons:
            if r["mtu"] not in said:
                said.add(r["mtu"])
                print(f"| {r['mtu']} | all | all | skipped: {r['skipped']} | | |")
            continue
        if r["skipped"]:
            print(f"| {r['mtu']} | {r['loss']:g} | {r['contender']} | skipped: {r['skipped']} | | |")
            continue
        ratios = [f"{r[f'x {k}']:.2f}" if r[f"x {k}"] is not None else "" for k in KERNEL]
        print(f"| {r['mtu']} | {r['loss']:g} | {r['contender']} | {r['median_bps'] / 1e6:,.0f} | {ratios[0]} | "
              f"{ratios[1]} |")


def plot(rows: list[dict], contenders: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mtus = sorted({r["mtu"] for r in rows})
    losses = sorted({r["loss"] for r in rows})
    fig, axes = plt.subplots(1, len(mtus), figsize=(5 * len(mtus), 4), squeeze=False, sharey=True)
    width = 0.8 / len(contenders)
    for ax, mtu in zip(axes[0], mtus):
        for i, name in enumerate(contenders):
            vals = [next((r["median_bps"] or 0 for r in rows if (r["mtu"], r["loss"], r["contender"]) ==
                          (mtu, loss, name)), 0) / 1e6 for loss in losses]
            ax.bar([j + i * width for j in range(len(losses))], [max(v, 0.1) for v in vals], width, label=name)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(losses))], [f"{loss:.0%} loss" for loss in losses])
        skipped = all(r["skipped"] for r in rows if r["mtu"] == mtu)
        ax.set_title(f"MTU {mtu}" + (" (skipped)" if skipped else ""))
        ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("goodput, Mbit/s (median, log scale)")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle("kbypass xfer vs the kernel on one veth (busy machine: compare within the run)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _last_line(text: str) -> str:
    lines = [x for x in text.strip().splitlines() if x.strip()]
    return lines[-1].removeprefix("kbypass: error: ") if lines else "(no message)"


CONTENDERS = ("tcp cubic", "tcp bbr", "udp", "xfer", "xfer reno")


def pick_contenders(spec: str | None, also_reno: bool, baseline: bool = False) -> list[str]:
    """The contenders to run: all (xfer reno with --also-reno) or those --contenders names, each once (a name
    given twice would run twice into one cell); [] when it names one that does not exist, or none. With
    --baseline, "xfer baseline" follows "xfer"."""
    if not spec:
        wanted = list(CONTENDERS[:4]) + (["xfer reno"] if also_reno else [])
    else:
        wanted = list(dict.fromkeys(c.strip() for c in spec.split(",") if c.strip()))
        if not wanted or not all(c in CONTENDERS for c in wanted):
            return []
    if baseline and "xfer" in wanted:
        wanted.insert(wanted.index("xfer") + 1, "xfer baseline")
    return wanted


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5, help="seconds per trial (default 5)")
    ap.add_argument("--runs", type=int, default=3, help="repetitions of every trial (default 3)")
    ap.add_argument("--mtus", default="1500,3506,9000,max", help="MTUs, 'max' the largest the testbed takes")
    ap.add_argument("--losses", default="0,0.01,0.05", help="loss rates, both hosts (default 0,0.01,0.05)")
    ap.add_argument("--also-reno", action="store_true", help="also xfer with the loss-rate controller (reno)")
    ap.add_argument("--contenders", help="a comma-separated subset to run (of: tcp cubic, tcp bbr, udp, xfer, xfer "
                    "reno), e.g. 'tcp cubic,xfer' for a quick ratio; default all")
    ap.add_argument("--poll", choices=("wakeup", "busy"), default="wakeup", help="xfer's AF_XDP wait mode")
    ap.add_argument("--digest", choices=("crc64", "sha256", "none"), default="crc64",
                    help="xfer's end-to-end check, both ends (default crc64; sha256 is the tool's default)")
    ap.add_argument("--placement", choices=("sender", "sut"), default="sender",
                    help="where receive work runs: veth's default (sender) or NAPI threads on each host's core")
    ap.add_argument("--prefix", default=os.environ.get("KBYPASS_TESTBED") or "kbx", help="testbed prefix")
    ap.add_argument("--baseline", metavar="SRC", help="also run xfer from another source tree (the commit before "
                    "a change, its C modules built in place) as 'xfer baseline', in the same run")
    ap.add_argument("--json", help="result file (default bench/results/xfer_vs_iperf3.json; the PNG beside it)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench: needs root", file=sys.stderr)
        return 2
    if not shutil.which("iperf3"):
        print("bench: iperf3 is not installed: apt-get install -y iperf3", file=sys.stderr)
        return 2
    os.environ["KBYPASS_TESTBED"] = args.prefix
    args.losses = [float(x) for x in args.losses.split(",")]
    mtus = mtu_list(args.mtus)
    contenders = pick_contenders(args.contenders, args.also_reno, args.baseline is not None)
    if not contenders:
        print(f"bench: --contenders {args.contenders!r}: pick from {', '.join(CONTENDERS)}", file=sys.stderr)
        return 2
    json_path = Path(args.json or ROOT / "bench" / "results" / "xfer_vs_iperf3.json")
    cells: dict = {}
    t0 = time.time()
    for mtu in mtus:
        run_mtu(args, mtu, contenders, cells)
    rows = summarize(cells)
    print_table(rows)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    raw = [{"mtu": m, "loss": lo, "contender": n, **c} for (m, lo, n), c in cells.items()]
    json_path.write_text(json.dumps({"rows": rows, "cells": raw, "seconds": args.seconds, "runs": args.runs,
                                     "poll": args.poll, "digest": args.digest, "placement": args.placement, "mtus": mtus,
                                     "tcp_available_congestion_control": available_cc().split(),
                                     "date": time.strftime("%Y-%m-%d", time.gmtime(t0)),
                                     "load": os.getloadavg()}, indent=2) + "\n")
    png = json_path.with_suffix(".png")
    plot(rows, contenders, png)
    print(f"wrote {json_path} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
