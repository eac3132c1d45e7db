"""`kbypass bench latency`: UDP ping-pong on the testbed, kernel against bypass, in one run.

    sockperf              the kernel anchor (C): `sockperf server` in host b, `sockperf ping-pong` in a
    kernel best           the same with busy polling on both hosts (net.core.busy_read and busy_poll, and
                          sockperf's --lls: SO_BUSY_POLL), the sysctls put back afterwards: the lower
                          bound of the kernel, so nobody mistakes busy polling for bypass
    kbypass socket        kbypass pingpong over a kernel UDP socket (the same Python, no bypass)
    kbypass socket busy   the same with SO_BUSY_POLL
    kbypass afxdp wakeup  AF_XDP, sleeping in poll() between messages
    kbypass afxdp busy    AF_XDP, busy polling, the per-message ring work in C (kbypass._fastlane)
    afxdp busy, Python lane   the same with the pure-Python lane, to show what the C lane buys
    kbypass.socket busy   the pingpong pair over `kbypass.socket` (the stdlib socket API on the bypass,
                          kbypass.bench.sockapi_pp), spinning like the busy rows
    floor                 no server: an XDP program in host b answers in the driver (XDP_TX,
                          kbypass.apps.xdp_pong), measured by the same `sockperf ping-pong`: what is left
                          is the client's stack and the wire, the bound no server can beat

Server in host b on CPU 1, client in host a on CPU 0; latency is half the round trip, as sockperf and
sfnt-pingpong report it. The contenders take turns within each run, so drift in the machine's speed hits
them alike; medians over the runs are reported.
"""

from __future__ import annotations

import json
import os
import re
import select
import statistics
import subprocess
import sys
import time
from pathlib import Path

from kbypass.apps.xdp_pong import XdpPong
from kbypass.errors import KbypassError
from kbypass.host import napi, testbed, tune

CLIENT_CPU, SERVER_CPU = 0, 1
PORT = 11311
KEYS = ("p50_us", "p90_us", "p99_us", "p999_us")
ANCHOR = "sockperf (kernel, C)"
KERNEL_BEST = "kernel best: sockperf, busy polling"
FLOOR = "floor: XDP_TX in the driver (sockperf client)"
BUSY_US = 50  # busy_read, busy_poll and sockperf --lls: long enough to cover a round trip on the testbed
LOSS_FLAG = 0.01  # a row losing more than this share of its measured messages is flagged


def check_row(name: str, res: dict) -> dict:
    """One contender's result, refused when it measured nothing (no samples, a percentile missing or 0:
    a median over it would be a lie) and flagged (`flag`) when it lost more than LOSS_FLAG of its
    messages, since heavy loss biases the percentiles of what did come back."""
    bad = [k for k in KEYS if not isinstance(res.get(k), (int, float)) or not res[k] > 0]
    if res.get("samples") == 0 or bad:
        raise KbypassError(f"{name} measured no latency (samples {res.get('samples', '?')}, sent "
                           f"{res.get('sent', '?')}, lost {res.get('lost', '?')}; missing {', '.join(bad) or '-'}): "
                           "check that its server came up (run the pair by hand with kbypass pingpong)")
    sent, lost = res.get("sent"), res.get("lost")
    if sent and lost is not None and lost / sent > LOSS_FLAG:
        res["flag"] = f"heavy loss: {lost} of {sent} messages ({lost / sent:.1%})"
    return res


def _sockperf(a, b, duration: float, size: int, extra: tuple[str, ...] = (), server: bool = True) -> dict:
    """sockperf ping-pong from host a to a sockperf server in b (`server=False`: to whatever answers there),
    both with the `extra` options."""
    srv = subprocess.Popen(["ip", "netns", "exec", b.netns, "taskset", "-c", str(SERVER_CPU), "sockperf",
                            "server", "-i", b.ipv4, "-p", str(PORT), *extra],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) if server else None
    try:
        time.sleep(0.5)
        out = subprocess.run(["ip", "netns", "exec", a.netns, "taskset", "-c", str(CLIENT_CPU), "sockperf",
                              "ping-pong", "-i", b.ipv4, "-p", str(PORT), "-t", str(int(max(1, duration))),
                              "-m", str(size), *extra], capture_output=True, text=True, timeout=duration + 30).stdout
    finally:
        if srv is not None:
            srv.terminate()
            srv.wait()
    return sockperf_percentiles(out)


def sockperf_percentiles(out: str) -> dict:
    """The latency percentiles a sockperf ping-pong printed (us): p50, p90, p99 and p99.9 (every sockperf
    row of the benchmarks reads them here)."""
    def pct(name: str) -> float:
        m = re.search(rf"percentile {name} =\s+([\d.]+)", out)
        if m is None:
            raise KbypassError(f"sockperf printed no {name} percentile: is it installed? (make setup)\n{out[-2000:]}")
        return float(m.group(1))

    return {"p50_us": pct(r"50\.000"), "p90_us": pct(r"90\.000"), "p99_us": pct(r"99\.000"),
            "p999_us": pct(r"99\.900")}


def wait_for_line(server: subprocess.Popen, word: str, timeout: float = 60.0) -> None:
    """Until the server (text stderr on a pipe) prints a line with `word`, its ready line: start-up takes as
    long as it takes on a loaded machine, and a client sent before it would measure a server not yet there.
    A server that exits or stays silent is an error, with what it said."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while not any(word in line for line in seen):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([server.stderr], [], [], left)[0]:
            raise KbypassError(f"{server.args[-1] if server.args else 'the server'}: no '{word}' within {timeout:g} s:"
                               f" {''.join(seen)[-1000:]}")
        line = server.stderr.readline()
        if not line:
            raise KbypassError(f"the server exited ({server.wait()}) before it was ready: {''.join(seen)[-1000:]}")
        seen.append(line)


def _kbypass(backend: str, poll: str, duration: float, size: int, b, lane: str | None = None) -> dict:
    common = ["--backend", backend, "--poll", poll, "--json", *(["--lane", lane] if lane else [])]
    py = [sys.executable, "-m", "kbypass", "pingpong"]
    server = subprocess.Popen([*py, "server", "--host", "b", "--port", str(PORT), "--cpu", str(SERVER_CPU),
                               "--duration", str(duration + 20), "--idle-timeout", "10", *common],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_line(server, "pingpong server on")  # imported, steered, sockets up
        proc = subprocess.run([*py, "client", "--host", "a", "--dst", f"{b.ipv4}:{PORT}", "--cpu",
                               str(CLIENT_CPU), "--duration", str(duration), "--warmup", "1000", "--size",
                               str(size), *common], capture_output=True, text=True, timeout=duration + 60)
        server.terminate()  # SIGTERM: the server stops and prints its summary (--idle-timeout is the backstop)
        server.communicate(timeout=30)
    finally:
        server.kill()
    if proc.returncode:
        raise KbypassError(f"kbypass pingpong client failed: {proc.stderr.strip()}")
    return json.loads(proc.stdout)


def _kernel_best(a, b, duration: float, size: int) -> dict:
    with tune.busy_polling(BUSY_US):
        return _sockperf(a, b, duration, size, ("--lls", str(BUSY_US)))


def _floor(a, b, duration: float, size: int) -> dict:
    with XdpPong(b.iface, PORT, netns=b.netns, peer=(a.iface, a.netns)) as pong:
        res = _sockperf(a, b, duration, size, server=False)
        res["answered_in_xdp"] = pong.counters()["answered"]
    return res


def _sockapi(duration: float, size: int, a, b) -> dict:
    """The pingpong pair over kbypass.socket, spinning (kbypass.bench.sockapi_pp)."""
    from kbypass.bench import sockapi_pp  # imports kbypass.socket: only for this row

    env = {**os.environ, "KBYPASS_SPIN_US": str(10**9)}
    mod = [sys.executable, "-m", "kbypass.bench.sockapi_pp"]
    server = subprocess.Popen(["ip", "netns", "exec", b.netns, "taskset", "-c", str(SERVER_CPU), *mod, "server",
                               b.ipv4, str(PORT), str(duration + 20)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_line(server, sockapi_pp.READY)
        proc = subprocess.run(["ip", "netns", "exec", a.netns, "taskset", "-c", str(CLIENT_CPU), *mod, "client",
                               a.ipv4, b.ipv4, str(PORT), str(duration), str(size)], env=env,
                              capture_output=True, text=True, timeout=duration + 60)
        server.terminate()
        server.communicate(timeout=30)
    finally:
        server.kill()
    if proc.returncode:
        raise KbypassError(f"the kbypass.socket ping-pong client failed: {proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout)


CONTENDERS = [
    (ANCHOR, lambda a, b, d, s: _sockperf(a, b, d, s)),
    (KERNEL_BEST, _kernel_best),
    ("kbypass socket", lambda a, b, d, s: _kbypass("socket", "wakeup", d, s, b)),
    ("kbypass socket busy", lambda a, b, d, s: _kbypass("socket", "busy", d, s, b)),
    ("kbypass afxdp wakeup", lambda a, b, d, s: _kbypass("afxdp", "wakeup", d, s, b, "c")),
    ("kbypass afxdp busy", lambda a, b, d, s: _kbypass("afxdp", "busy", d, s, b, "c")),
    ("afxdp busy, Python lane", lambda a, b, d, s: _kbypass("afxdp", "busy", d, s, b, "python")),
    ("kbypass.socket busy (Python socket API)", lambda a, b, d, s: _sockapi(d, s, a, b)),
    (FLOOR, _floor),
]


def run(prefix: str, runs: int, duration: float, size: int, progress=print) -> dict:
    """Every contender `runs` times, taking turns; the testbed `prefix` is brought up (and left up)."""
    napi.require_cpus({CLIENT_CPU, SERVER_CPU}, "kbypass bench latency")
    a, b = testbed.up(testbed.TestbedConfig(prefix=prefix))
    os.environ["KBYPASS_TESTBED"] = prefix  # the pingpong tools find the hosts through it
    results: dict[str, list[dict]] = {name: [] for name, _ in CONTENDERS}
    flags: list[str] = []
    for r in range(runs):
        for name, fn in CONTENDERS:
            res = check_row(name, fn(a, b, duration, size))
            results[name].append(res)
            flag = res.get("flag")
            if flag:
                flags.append(f"run {r + 1} {name}: {flag}")
            progress(f"  run {r + 1}/{runs} {name:<24} p50 {res['p50_us']:8.2f} us  p99 {res['p99_us']:8.2f} us"
                     + (f"  ({flag})" if flag else ""))
    medians = {name: {k: statistics.median(x[k] for x in rs) for k in KEYS} for name, rs in results.items()}
    return {"runs": runs, "duration": duration, "size": size, "medians": medians, "all": results,
            "flags": flags}


def ratios(result: dict) -> dict[str, dict[str, float]]:
    """p50 and p99 of every contender over sockperf's, from the medians; and over the kernel's best
    (`p50_best`, `p99_best`) when that row ran: below 1 beats busy-polled kernel sockets."""
    anchor = result["medians"][ANCHOR]
    best = result["medians"].get(KERNEL_BEST)
    out = {}
    for name, m in result["medians"].items():
        r = {"p50": m["p50_us"] / anchor["p50_us"], "p99": m["p99_us"] / anchor["p99_us"]}
        if best:
            r.update(p50_best=m["p50_us"] / best["p50_us"], p99_best=m["p99_us"] / best["p99_us"])
        out[name] = r
    return out


def save(result: dict, json_path: Path, png_path: Path) -> None:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({**result, "ratios": ratios(result)}, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = result["medians"]
    names = list(table)
    fig, ax = plt.subplots(figsize=(11, 5))
    for i, k in enumerate(("p50_us", "p99_us")):
        ax.bar([j + i * 0.4 for j in range(len(names))], [table[n][k] for n in names], width=0.4, label=k)
    for row, style in ((KERNEL_BEST, "--"), (FLOOR, ":")):  # the bounds, across every bar
        if row in table:
            ax.axhline(table[row]["p50_us"], linestyle=style, color="grey", linewidth=1)
            ax.annotate(f"{row.split(':')[0]} p50", (len(names) - 0.6, table[row]["p50_us"]), fontsize=7,
                        va="bottom", ha="right", color="grey")
    ax.set_xticks([j + 0.2 for j in range(len(names))], names, rotation=20, ha="right", fontsize=7)
    ax.set_ylabel("one-way latency, us (half RTT)")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title(f"UDP ping-pong on the veth testbed, {result['size']} B, median of {result['runs']} runs")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
