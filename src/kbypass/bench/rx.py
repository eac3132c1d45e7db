"""`kbypass bench rx`: what each receive path handles on one core, at one generator rate.

The classic case for bypass as an experiment on one machine: one burst from the live-frames generator in
host a (CPU 0) into host b, received by each path in turn, the receiving process on CPU 1:

    nftables raw drop     the kernel's cheapest drop, before the stack (no socket, no copy to user space)
    kernel UDP socket     the full stack plus recvmmsg batches into Python (kbypass sink --backend socket)
    PACKET_MMAP           TPACKET_V3 ring (kbypass sink --backend packet_mmap)
    AF_XDP copy           the steered bypass (kbypass sink: its rule and socket through the control plane)
    AF_XDP copy, in-process steering   with `also_no_cp` (`kbypass bench rx --also-no-cp`): the same with
                          `--no-cp`, to show the control plane costs nothing per packet (the same program,
                          the same maps; `cp_over_in_process` in the JSON, per run and its median)
    AF_XDP copy, shared queue   with `also_shared_queue` (`--also-shared-queue`): the same as a member of the
                          queue's shared pool (--share-queue: refills and reaps under the pool's lock, frames
                          from the pool's UMEM); `shared_over_alone` in the JSON
    AF_XDP zero-copy      only where the driver has it (veth has not: the row says so)
    AF_XDP C rx-drop      the limit of the AF_XDP path: build/xdp_rxdrop, a minimal C receiver on libxdp's xsk
                          API (copy mode, need_wakeup, batch 64; kbypass.bench.rxdrop), behind the steering
                          program with the sink's one rule, and behind libxdp's bare redirect program.
                          `sink_over_c` in the JSON: the sink / the C row behind the same program, per run
                          and its median (`sink_over_c_libxdp`: against the bare program)
    XDP_DROP              the steering program's drop rule: the floor of any receive path here

The AF_XDP sink rows run with --check-seq: the live generator stamps a sequence number (and the send time)
on every frame, so the sink checks each one for loss, reordering and duplicates as it counts; its verdict
is in the trial's "seq" in the JSON.

Per row: packets handled per second of the burst, the share of the burst delivered, and CPU used (the
receiving CPU, plus the softirq share of the generator's CPU).

By default host b's receive work runs as threaded NAPI pinned to the receiving CPU (placement "sut", see
kbypass.bench.kit): each path's whole cost lands on its one core, as on a NIC whose interrupt is on that
core, and the generator is not slowed by the receiver. Placement "sender" is veth's default, where that
work runs in the generator's softirq and every row is capped by the generator.
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

from kbypass.bench import kit as benchkit
from kbypass.bench import rxdrop
from kbypass.host import napi, testbed
from kbypass.gen.live import LiveGenerator
from kbypass.gen.template import udp_template

AFXDP, AFXDP_IN_PROCESS, AFXDP_SHARED = "AF_XDP copy", "AF_XDP copy, in-process steering", "AF_XDP copy, shared queue"
C_RXDROP = "AF_XDP C rx-drop (libxdp xsk), steering program"
C_RXDROP_BARE = "AF_XDP C rx-drop (libxdp xsk), bare redirect"
ORDER = ["nftables raw drop", "kernel UDP socket", "PACKET_MMAP", AFXDP, AFXDP_IN_PROCESS, AFXDP_SHARED, C_RXDROP,
         C_RXDROP_BARE, "XDP_DROP"]


def sink(name: str, backend: str, b: testbed.Host, *options: str) -> benchkit.Contender:
    argv = [benchkit.PY, "-m", "kbypass", "sink", "--backend", backend, "--host", "b", "--cpu",
            str(benchkit.SUT_CPU), "--json", "--rule", f"udp dst {b.ipv4} dport {benchkit.PORT}", *options]
    if backend == "afxdp":  # the sequence check on: what a user of the sink runs it for (module doc)
        argv += ["--queue", "0", "--frames", "16384", "--ring-size", "8192", "--check-seq"]
    return benchkit.Contender(name, "receive", argv, benchkit.announced, benchkit.kbypass_json_count)


def rows(b: testbed.Host, also_no_cp: bool = False, also_shared_queue: bool = False) -> list:
    afxdp = [sink(AFXDP, "afxdp", b)] + ([sink(AFXDP_IN_PROCESS, "afxdp", b, "--no-cp")] if also_no_cp else [])
    afxdp += [sink(AFXDP_SHARED, "afxdp", b, "--share-queue")] if also_shared_queue else []
    if rxdrop.built():  # else the limit rows say how to build it (run)
        rule = f"udp dst {b.ipv4} dport {benchkit.PORT}"
        afxdp += [rxdrop.CRxDrop(C_RXDROP, "attached", rule), rxdrop.CRxDrop(C_RXDROP_BARE, "libxdp", rule)]
    return [benchkit.NftDrop("nftables raw drop"), sink("kernel UDP socket", "socket", b),
            sink("PACKET_MMAP", "packet_mmap", b), *afxdp, benchkit.XdpDrop("XDP_DROP")]


def run(prefix: str, packets: int, runs: int, progress=print, placement: str = "sut", also_no_cp: bool = False,
        also_shared_queue: bool = False) -> dict:
    napi.require_cpus({benchkit.GEN_CPU, benchkit.SUT_CPU}, "kbypass bench rx")
    hosts = testbed.up(testbed.TestbedConfig(prefix=prefix))
    a, b = hosts
    os.environ["KBYPASS_TESTBED"] = prefix
    home = os.sched_getaffinity(0)
    trials = []
    try:
        benchkit.place_receive_work(b, placement)  # inside: a failure here still puts veth back
        os.sched_setaffinity(0, {benchkit.GEN_CPU})
        frame = udp_template(a.mac, b.mac, a.ipv4, 9, b.ipv4, benchkit.PORT, 64)
        with LiveGenerator(a.iface, frame, netns_name=a.netns) as gen:
            field = rows(b, also_no_cp, also_shared_queue)
            for r in range(runs):
                for c in field[r % len(field):] + field[: r % len(field)]:
                    t = benchkit.trial(c, gen, a, b, packets, placement)
                    t["run"] = r
                    seq = _seq_verdict(c)
                    if seq is not None:
                        t["seq"] = seq
                    trials.append(t)
                    progress(f"  run {r + 1}/{runs} {t['name']:<32} {t['pps'] / 1e6:7.3f} Mpps "
                             f"({t['handled'] / max(t['sent'], 1):.0%} delivered, {t['cpu']:.2f} CPU)")
    finally:
        os.sched_setaffinity(0, home)
        benchkit.place_receive_work(b, "sender")  # leave the testbed's veth as veth has it
    out_rows = []
    for name in ORDER:
        mine = [t for t in trials if t["name"] == name]
        if not mine:
            continue
        out_rows.append({"path": name, "pps": statistics.median(t["pps"] for t in mine),
                         "delivered": round(statistics.median(t["handled"] / max(t["sent"], 1) for t in mine), 4),
                         "cpu": statistics.median(t["cpu"] for t in mine), "runs": len(mine)})
    out_rows.insert(max(i for i, r in enumerate(out_rows) if r["path"].startswith(AFXDP)) + 1,
                    {"path": "AF_XDP zero-copy", "pps": None, "delivered": None, "cpu": None,
                     "note": "veth has no zero-copy AF_XDP; run on a NIC whose driver has it"})
    if not rxdrop.built():
        out_rows.insert(len(out_rows) - 1, {"path": C_RXDROP, "pps": None, "delivered": None, "cpu": None,
                                            "note": f"{rxdrop.BINARY} is not built: run 'make setup'"})
    return {"packets": packets, "runs": runs, "placement": placement, "rows": out_rows, "trials": trials,
            "cp_over_in_process": _ratio(trials, AFXDP, AFXDP_IN_PROCESS),
            "shared_over_alone": _ratio(trials, AFXDP_SHARED, AFXDP),
            "sink_over_c": _ratio(trials, AFXDP, C_RXDROP), "sink_over_c_libxdp": _ratio(trials, AFXDP, C_RXDROP_BARE)}


def _seq_verdict(c) -> dict | None:
    """The sequence check's summary a `kbypass sink --check-seq` contender printed (None for the others)."""
    if "--check-seq" not in getattr(c, "argv", ()):
        return None
    try:
        start = c.out.index("{")
        return json.JSONDecoder().raw_decode(c.out[start:])[0].get("seq")
    except ValueError:
        return None


def _ratio(trials: list[dict], top: str, bottom: str) -> dict | None:
    """Row `top` / row `bottom`, per run (the two ran in the same run, one after the other) and the median
    of those: through the control plane / in-process, shared queue / alone (1.0 within the run-to-run noise is
    the claim of both), the sink / the C rx-drop loop (the issue's target: at least 0.9)."""
    per_run = {}
    for t in trials:
        per_run.setdefault(t["run"], {})[t["name"]] = t["pps"]
    ratios = [r[top] / r[bottom] for r in per_run.values() if r.get(bottom) and top in r]
    if not ratios:
        return None
    return {"median": statistics.median(ratios), "per_run": ratios}


def save(result: dict, json_path: Path, png_path: Path) -> None:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r["pps"] is not None]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    colors = ["#1f77b4" if r["path"].startswith(("AF_XDP", "XDP")) else "#999999" for r in rows]
    ax.barh([r["path"] for r in rows][::-1], [r["pps"] / 1e6 for r in rows][::-1], color=colors[::-1])
    for i, r in enumerate(rows[::-1]):
        ax.text(r["pps"] / 1e6, i, f" {r['pps'] / 1e6:.2f} Mpps, {r['delivered']:.0%}", va="center")
    ax.set_xlabel("Mpps handled (64-byte UDP, one generator burst, receiver on one core)")
    ax.set_title("kbypass bench rx: kernel paths vs bypass")
    ax.set_xlim(0, max(r["pps"] for r in rows) / 1e6 * 1.45)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
