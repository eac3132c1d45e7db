#!/usr/bin/env python3
"""What starting a `kbypass` process costs: wall time of commands that end right after reading their options
(--help, a bad option) or after resolving `--host`-style testbed names (`testbed status`), for this tree
and for a base tree (another commit's src/, e.g. `git archive BASE src | tar -x -C /tmp/base`), runs
interleaved so both see the same machine; the anchor is a bare interpreter (`python -c pass`).

    flock /tmp/kb-bench.lock .venv/bin/python bench/startup.py [--base /tmp/base/src] [--runs 15] [--prefix P] [--json]

`testbed status` needs the testbed up (`kbypass testbed up --prefix P`); without it that row measures the
"not up" answer. Writes bench/results/startup.json. The machine's other load shows in these numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# the console script's own code: cli.main as `kbypass ARGS` runs it
MAIN = "import sys; sys.argv[0] = 'kbypass'; from kbypass.cli import main; raise SystemExit(main())"


def commands(prefix: str) -> dict[str, list[str]]:
    return {
        "python -c pass (anchor)": ["-c", "pass"],
        "kbypass --help": ["-c", MAIN, "--help"],
        "kbypass sink --help": ["-c", MAIN, "sink", "--help"],
        "kbypass pingpong client --count 0 (error)": ["-c", MAIN, "pingpong", "client", "--count", "0"],
        f"kbypass testbed status --prefix {prefix} --json": ["-c", MAIN, "testbed", "status", "--prefix", prefix,
                                                             "--json"],
    }


def once(src: Path, argv: list[str]) -> float:
    env = dict(os.environ, PYTHONPATH=str(src))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=False)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, help="a base tree's src/ to compare against")
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--prefix", default=os.environ.get("KBYPASS_TESTBED", "kb"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    trees = {"this": ROOT / "src"} | ({"base": args.base} if args.base else {})
    cmds = commands(args.prefix)
    times: dict[str, dict[str, list[float]]] = {t: {c: [] for c in cmds} for t in trees}
    for _ in range(args.runs):
        for c, argv in cmds.items():
            for t, src in trees.items():
                times[t][c].append(once(src, argv))
    medians = {t: {c: statistics.median(v) for c, v in per.items()} for t, per in times.items()}
    result = {"runs": args.runs, "load": os.getloadavg(), "trees": {t: str(s) for t, s in trees.items()},
              "median_s": medians}
    out = ROOT / "bench" / "results" / "startup.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"median wall seconds of {args.runs} runs (load {result['load'][0]:.1f})")
    print(f"{'command':52} " + " ".join(f"{t:>8}" for t in trees) + ("   this/base" if args.base else ""))
    for c in cmds:
        row = " ".join(f"{medians[t][c]:8.3f}" for t in trees)
        ratio = f"   {medians['this'][c] / medians['base'][c]:.2f}x" if args.base else ""
        print(f"{c:52} {row}{ratio}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
