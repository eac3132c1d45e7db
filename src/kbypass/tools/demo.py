"""`kbypass demo`: the headline run on the built-in testbed.

Brings the testbed up (idempotent), runs the doctor, shows one real exchange between the hosts through the
kernel, then the headline: one burst from the live-frames generator in host a, received in host b by a
Python kernel UDP socket, by dpdk-testpmd over AF_XDP (when installed), and by kbypass sink on a steered
AF_XDP queue, while the kernel keeps answering ping on the same interface. Table, JSON and a bar chart.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

from rich.table import Table

from kbypass import benchkit, doctor, netns, testbed
from kbypass.gen.live import LiveGenerator
from kbypass.gen.template import udp_template
from kbypass.errors import KbypassError
from kbypass.tools import doctor as doctor_tool
from kbypass.tools._common import add_prefix_option, console


def register(sub) -> None:
    p = sub.add_parser("demo", help="testbed up, doctor, and the headline demo")
    add_prefix_option(p)
    p.add_argument("--packets", type=int, default=1_000_000, help="frames in the headline burst (default 1M)")
    p.add_argument("--out", default="bench/results", help="where demo.json and demo.png go")
    p.set_defaults(func=run)


def udp_exchange(a: testbed.Host, b: testbed.Host, port: int = 47000, payload: bytes = b"hello from a") -> float:
    """Send one datagram a -> b and have b echo it; returns the round trip in microseconds."""
    with netns.entered(b.netns):
        server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with netns.entered(a.netns):
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with server, client:
        server.bind((b.ipv4, port))
        server.settimeout(2)
        client.settimeout(2)
        start = time.perf_counter()
        client.sendto(payload, (b.ipv4, port))
        data, peer = server.recvfrom(2048)
        server.sendto(data, peer)
        echoed, _ = client.recvfrom(2048)
        rtt = (time.perf_counter() - start) * 1e6
    if data != payload or echoed != payload:
        raise KbypassError("the testbed mangled a datagram: run 'kbypass doctor' and 'kbypass testbed status'")
    return rtt


def run(args) -> int:
    prefix = args.prefix or testbed.default_prefix()
    out = console()
    out.rule("1. testbed")
    hosts = testbed.up(testbed.TestbedConfig(prefix=prefix))
    for h in hosts:
        out.print(f"host {h.name}: netns {h.netns}, {h.iface} {h.mac} {h.ipv4}/{h.prefixlen}, {h.queues} queues")
    out.rule("2. doctor")
    results = doctor.run()
    doctor_tool.show(results)
    if not doctor.healthy(results):
        out.print("[red]a required check failed: fix it as shown above, then run 'make demo' again[/]")
        return 1
    out.rule("3. one real exchange")
    rtt = udp_exchange(hosts[0], hosts[1])
    out.print(f"UDP {hosts[0].ipv4} -> {hosts[1].ipv4} and back through the kernel stack: {rtt:.0f} us round trip")
    out.rule("4. kernel vs bypass: one burst, three receivers")
    results = headline(hosts, args.packets, out)
    show_headline(out, results)
    json_path, png_path = save(results, Path(args.out))
    out.print(f"results: {json_path}\nchart:   {png_path}")
    out.print("\nthe testbed stays up for you: 'kbypass testbed status', 'kbypass testbed down'")
    return 0


def headline(hosts: list[testbed.Host], packets: int, out) -> list[dict]:
    a, b = hosts
    os.environ["KBYPASS_TESTBED"] = a.netns[:-2]  # the receivers started below find this testbed
    home = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {benchkit.GEN_CPU})
    try:
        frame = udp_template(a.mac, b.mac, a.ipv4, 9, b.ipv4, benchkit.PORT, 64)
        results = []
        with LiveGenerator(a.iface, frame, netns_name=a.netns) as gen:
            for c in benchkit.contenders(b, forward=False):
                out.print(f"  {c.name}: receiving {packets} frames ...")
                results.append(benchkit.trial(c, gen, a, b, packets))
        ping = subprocess.run(["ip", "netns", "exec", a.netns, "ping", "-c", "1", "-W", "2", b.ipv4],
                              capture_output=True, text=True)
        out.print(f"  ping {b.ipv4} from host a after all that: {'answered' if ping.returncode == 0 else 'LOST'}")
        order = ["python socket", "testpmd rxonly", "kbypass sink"]
        return sorted(results, key=lambda r: order.index(r["name"]) if r["name"] in order else len(order))
    finally:
        os.sched_setaffinity(0, home)


def show_headline(out, results: list[dict]) -> None:
    base = next((r["pps"] for r in results if r["name"] == "python socket"), None)
    table = Table(title="frames per second handled on one core (64-byte UDP, same generator, same run)")
    for col in ("receiver", "path", "Mpps", "delivered", "x python socket"):
        table.add_column(col, justify="right" if col != "receiver" else "left")
    paths = {"python socket": "kernel UDP stack", "testpmd rxonly": "DPDK net_af_xdp", "kbypass sink": "AF_XDP, steered"}
    for r in results:
        ratio = f"{r['pps'] / base:.1f}x" if base else "-"
        table.add_row(r["name"], paths.get(r["name"], ""), f"{r['pps'] / 1e6:.3f}", f"{r['handled'] / r['sent']:.0%}", ratio)
    out.print(table)


def save(results: list[dict], where: Path) -> tuple[Path, Path]:
    where.mkdir(parents=True, exist_ok=True)
    json_path, png_path = where / "demo.json", where / "demo.png"
    json_path.write_text(json.dumps({"rows": results}, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    names = [r["name"] for r in results]
    ax.bar(names, [r["pps"] / 1e6 for r in results], color=["#999999" if "socket" in n else "#1f77b4" for n in names])
    ax.set_ylabel("Mpps received")
    ax.set_title("kbypass demo: one burst, each receiver on one core")
    for i, r in enumerate(results):
        ax.text(i, r["pps"] / 1e6, f"{r['pps'] / 1e6:.2f}", ha="center", va="bottom")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return json_path, png_path
