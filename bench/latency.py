"""UDP ping-pong latency on its own testbed, in one run: `kbypass bench latency` (kbypass.bench.latency:
sockperf, the kernel anchor in C, against kbypass pingpong over a kernel socket and over AF_XDP, wakeup
and busy polling, with the C lane and the pure-Python lane, and kbypass.socket), bounded by the kernel's
best (sockperf with busy polling) and the floor (XDP_TX in the driver), with the testbed brought up and down here.
Prints the table of medians, writes bench/results/latency.json and latency.png.

    python bench/latency.py --runs 3 --duration 3
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from kbypass.bench import latency as latbench
from kbypass.host import testbed
from kbypass.tools._common import console
from kbypass.tools.bench import show_latency

PREFIX = "kbl"
HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    args = p.parse_args()
    out = console()
    try:
        result = latbench.run(PREFIX, args.runs, args.duration, args.size, progress=out.print)
    finally:
        testbed.down(PREFIX)
    latbench.save(result, Path(args.out) / "latency.json", Path(args.out) / "latency.png")
    show_latency(out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
