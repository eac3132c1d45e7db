"""`kbypass bench rx | latency`: the kernel-vs-bypass experiments on the testbed (table, JSON, PNG)."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from kbypass.host import testbed
from kbypass.bench.kit import PLACEMENTS
from kbypass.errors import UsageError, require_root
from kbypass.tools._common import console
from kbypass.tools._options import add_prefix
from kbypass.tools._options import int_range, output_dir, positive_int, seconds_up_to

MAX_PACKETS = 10**9  # frames per trial: minutes at the fastest path here
MAX_RUNS = 100
MAX_DURATION = 3600.0  # seconds per ping-pong, six contenders each
MAX_MESSAGE = 1472  # a UDP payload in one frame at MTU 1500 (the testbed's default)
RATIOS = {  # the same-run ratios of `bench rx` (kbypass.bench.rx), as the table's footer says them
    "cp_over_in_process": "AF_XDP through the control plane / in-process steering",
    "shared_over_alone": "AF_XDP on a shared queue / on a queue of its own",
    "sink_over_c": "kbypass sink (--check-seq) / C rx-drop behind the same steering program",
    "sink_over_c_libxdp": "kbypass sink (--check-seq) / C rx-drop behind libxdp's bare redirect",
}


def register(sub) -> None:
    p = sub.add_parser("bench", help="side-by-side experiments on the testbed")
    kinds = p.add_subparsers(dest="experiment", metavar="EXPERIMENT")
    kinds.required = True
    rx = kinds.add_parser("rx", help="what each receive path handles on one core (nft, socket, "
                                     "PACKET_MMAP, AF_XDP, XDP_DROP)")
    add_prefix(rx)
    rx.add_argument("--packets", type=positive_int(MAX_PACKETS, "a frame count"), default=2_000_000,
                    help="frames per trial (default 2M)")
    rx.add_argument("--runs", type=int_range(1, MAX_RUNS, "a number of runs"), default=1,
                    help="repetitions; medians are reported (default 1)")
    rx.add_argument("--out", type=output_dir, default="bench/results", help="where rx.json and rx.png go")
    rx.add_argument("--json", action="store_true", help="print the JSON instead of the table")
    rx.add_argument("--placement", choices=list(PLACEMENTS), default="sut",
                    help="where host b's receive work runs: sut = threaded NAPI on the receiver's core "
                         "(default), sender = in the generator's softirq (veth's default)")
    rx.add_argument("--also-no-cp", action="store_true",
                    help="also run the AF_XDP row with in-process steering (--no-cp), in the same runs, and "
                         "report through the control plane / in-process")
    rx.add_argument("--also-shared-queue", action="store_true",
                    help="also run the AF_XDP row on a shared queue (--share-queue: the pool's UMEM and lock), in "
                         "the same runs, and report shared / alone")
    rx.set_defaults(func=run_rx)
    lat = kinds.add_parser("latency", help="UDP ping-pong: sockperf (kernel) vs kbypass over a socket and "
                                           "over AF_XDP, wakeup and busy polling")
    add_prefix(lat)
    lat.add_argument("--runs", type=int_range(1, MAX_RUNS, "a number of runs"), default=3,
                     help="repetitions, contenders taking turns (default 3)")
    lat.add_argument("-t", "--duration", type=seconds_up_to(MAX_DURATION, "seconds per ping-pong"), default=3.0,
                     help="seconds per ping-pong (default 3)")
    lat.add_argument("--size", type=int_range(14, MAX_MESSAGE, "a message size in bytes"), default=64,
                     help=f"message size in bytes, 14 to {MAX_MESSAGE} (one frame at MTU 1500; default 64)")
    lat.add_argument("--out", type=output_dir, default="bench/results", help="where latency.json and latency.png go")
    lat.add_argument("--json", action="store_true", help="print the JSON instead of the table")
    lat.set_defaults(func=run_latency)


def run_rx(args) -> int:
    from kbypass.bench import rx as rxbench

    require_root("kbypass bench rx")
    if args.packets <= 0 or args.runs <= 0:
        raise UsageError("--packets and --runs take positive numbers")
    json_path, png_path = output_paths(args.out, "rx")  # before the run: a long run's results are not lost
    out = console()
    prefix = args.prefix or testbed.default_prefix()
    result = rxbench.run(prefix, args.packets, args.runs, progress=(lambda s: None) if args.json else out.print,
                         placement=args.placement, also_no_cp=args.also_no_cp,
                         also_shared_queue=args.also_shared_queue)
    rxbench.save(result, json_path, png_path)
    ratios = {key: result[key] for key in RATIOS if result[key]}
    if args.json:
        import json

        print(json.dumps({"rows": result["rows"], **ratios}, indent=2))
        return 0
    show(out, result["rows"], args.placement)
    for key, what in RATIOS.items():
        if key in ratios:
            out.print(f"{what}: {ratios[key]['median']:.2f}x (per run "
                      + ", ".join(f"{x:.2f}x" for x in ratios[key]["per_run"]) + ")")
    out.print(f"results: {json_path}\nchart:   {png_path}")
    return 0


def output_paths(out_dir: str, name: str) -> tuple[Path, Path]:
    """NAME.json and NAME.png in `out_dir`, which is created and checked writable now, before the experiment
    runs; a directory that cannot be made or written is a UsageError naming it and the reason."""
    import tempfile

    where = Path(out_dir)
    paths = where / f"{name}.json", where / f"{name}.png"
    try:
        where.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=where):  # really write: catches read-only file systems as root
            pass
    except OSError as e:
        raise UsageError(f"--out {out_dir}: cannot write results there ({e.strerror}): choose a directory you "
                         "can write") from None
    for p in paths:
        if p.is_dir():
            raise UsageError(f"--out {out_dir}: {p} is a directory; choose another --out")
    return paths


def show(out, rows: list[dict], placement: str = "sut") -> None:
    sock = next((r["pps"] for r in rows if r["path"] == "kernel UDP socket" and r["pps"]), None)
    t = Table(title="receive paths on one core: 64-byte UDP, one generator burst, same run\n"
                    f"placement {placement}: {PLACEMENTS[placement]}")
    for col in ("path", "Mpps", "delivered", "CPU (cores)", "x kernel socket"):
        t.add_column(col, justify="left" if col == "path" else "right")
    for r in rows:
        if r["pps"] is None:
            t.add_row(r["path"], "-", "-", "-", r.get("note", ""))
            continue
        t.add_row(r["path"], f"{r['pps'] / 1e6:.3f}", f"{r['delivered']:.0%}", f"{r['cpu']:.2f}",
                  f"{r['pps'] / sock:.1f}x" if sock else "-")
    out.print(t)


def run_latency(args) -> int:
    from kbypass.bench import latency as latbench

    require_root("kbypass bench latency")
    if args.runs <= 0 or args.duration <= 0:
        raise UsageError("--runs and --duration take positive numbers")
    if args.size < 14:
        raise UsageError(f"--size {args.size}: a sockperf message needs at least 14 bytes")
    json_path, png_path = output_paths(args.out, "latency")
    out = console()
    prefix = args.prefix or testbed.default_prefix()
    result = latbench.run(prefix, args.runs, args.duration, args.size,
                          progress=(lambda s: None) if args.json else out.print)
    latbench.save(result, json_path, png_path)
    if args.json:
        import json

        print(json.dumps({"medians": result["medians"], "ratios": latbench.ratios(result)}, indent=2))
        return 0
    show_latency(out, result)
    out.print(f"results: {json_path}\nchart:   {png_path}")
    return 0


def show_latency(out, result: dict) -> None:
    from kbypass.bench import latency as latbench

    t = Table(title=f"UDP ping-pong, {result['size']} B, one-way latency (half the round trip), "
                    f"median of {result['runs']} runs, same run")
    t.add_column("contender")
    rat = latbench.ratios(result)
    best = latbench.KERNEL_BEST in result["medians"]
    for col in ("p50 us", "p90 us", "p99 us", "p99.9 us", "p50 / sockperf", "p99 / sockperf",
                *(("p50 / kernel best",) if best else ())):
        t.add_column(col, justify="right")
    for name, m in result["medians"].items():
        t.add_row(name, *(f"{m[k]:.2f}" for k in latbench.KEYS), f"{rat[name]['p50']:.2f}x",
                  f"{rat[name]['p99']:.2f}x", *((f"{rat[name]['p50_best']:.2f}x",) if best else ()))
    out.print(t)
