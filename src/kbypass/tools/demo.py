"""`kbypass demo`: the headline run on the built-in testbed.

Brings the testbed up (idempotent), runs the doctor, shows one real exchange between the hosts through the
kernel, then the headline, `kbypass bench rx`: one burst from the live-frames generator in host a received
in host b by nftables, a kernel UDP socket, PACKET_MMAP, kbypass's steered AF_XDP sink and XDP_DROP, while
the kernel keeps answering ping on the same interface. Table, JSON and a bar chart.
"""

from __future__ import annotations

import socket
import subprocess
import time

from kbypass.bench import kit as benchkit
from kbypass.host import doctor, napi, testbed
from kbypass import netns
from kbypass.errors import KbypassError, UsageError, require_root
from kbypass.tools import bench as bench_tool
from kbypass.tools import doctor as doctor_tool
from kbypass.tools._common import console
from kbypass.tools._options import add_prefix
from kbypass.tools._options import output_dir, positive_int


def register(sub) -> None:
    p = sub.add_parser("demo", help="testbed up, doctor, and the headline demo")
    add_prefix(p)
    p.add_argument("--packets", type=positive_int(bench_tool.MAX_PACKETS, "a frame count"), default=1_000_000,
                   help="frames per receive path (default 1M)")
    p.add_argument("--out", type=output_dir, default="bench/results", help="where rx.json and rx.png go")
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
    # numpy: loaded to run, not for `kbypass demo --help`
    from kbypass.bench import rx as rxbench

    # Everything the user can get wrong is checked before anything is made (testbed, nft table, XDP).
    prefix = args.prefix or testbed.default_prefix()
    config = testbed.TestbedConfig(prefix=prefix)
    config.validate()
    if args.packets <= 0:
        raise UsageError(f"--packets {args.packets}: give a positive number of frames per receive path")
    require_root("kbypass demo")
    json_path, png_path = bench_tool.output_paths(args.out, "rx")
    napi.require_cpus({benchkit.GEN_CPU, benchkit.SUT_CPU}, "kbypass demo")
    out = console()
    out.rule("1. testbed")
    hosts = testbed.up(config)
    for h in hosts:
        out.print(f"host {h.name}: netns {h.netns}, {h.iface} {h.mac} {h.ipv4}/{h.prefixlen}, {h.queues} queues")
    out.rule("2. doctor")
    # This testbed, just brought up: a native-XDP check "not tried" here is a failure, not a warning.
    results = doctor.run(prefix=prefix, require_testbed=True)
    doctor_tool.show(results)
    if not doctor.healthy(results):
        out.print("[red]a required check failed: fix it as shown above, then run 'make demo' again[/]")
        return 1
    out.rule("3. one real exchange")
    rtt = udp_exchange(hosts[0], hosts[1])
    out.print(f"UDP {hosts[0].ipv4} -> {hosts[1].ipv4} and back through the kernel stack: {rtt:.0f} us round trip")
    out.rule("4. kernel vs bypass: kbypass bench rx")
    out.print("one burst of 64-byte UDP from host a (live-frames generator, CPU 0) into host b, received by "
              "each path in turn on CPU 1, with host b's kernel receive work (threaded NAPI) pinned there too")
    result = rxbench.run(prefix, args.packets, 1, progress=out.print)
    bench_tool.show(out, result["rows"])
    rxbench.save(result, json_path, png_path)
    ping = subprocess.run(["ip", "netns", "exec", hosts[0].netns, "ping", "-c", "1", "-W", "2", hosts[1].ipv4],
                          capture_output=True, text=True)
    out.print(f"ping {hosts[1].ipv4} from host a, after all that: {'answered' if ping.returncode == 0 else 'LOST'}"
              " (the steering only takes the flows it is told to)")
    out.print(f"results: {json_path}\nchart:   {png_path}")
    out.print("\nthe testbed stays up for you: 'kbypass testbed status', 'kbypass testbed down'")
    return 0
