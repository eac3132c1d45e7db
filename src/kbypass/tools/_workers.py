"""`--workers N` / `--worker-queues LIST` / `--cpus LIST` for sink, reflect and capture: one process per
receive queue (kbypass.apps.workers), each pinned to its own CPU, each its own control-plane client with
the tool's rules on its queue. The parent checks everything first, prints one start-up line when every
worker is receiving, passes Ctrl-C/SIGTERM on, reports a worker's death as it happens, and prints one
summary: the totals and a row per worker."""

from __future__ import annotations

import argparse
import copy
import sys

from kbypass.apps.workers import STOPPED_EARLY, WorkerTeam, merge, on_queue, plan
from kbypass.errors import UsageError
from kbypass.tools import _options


def int_list(what: str):
    """An argparse type for a comma-separated list of whole numbers (0-4095), e.g. "0,1" or "2,3"; each
    at most once."""

    def parse(text: str) -> list[int]:
        one = _options.int_range(0, 4095, f"a {what}")
        items = text.split(",")
        if not text or any(not t.strip() for t in items):
            raise argparse.ArgumentTypeError(f"{text!r}: give a comma-separated list of {what}s, e.g. 0,1")
        values = [one(t) for t in items]
        if len(set(values)) != len(values):
            raise argparse.ArgumentTypeError(f"{text!r}: each {what} once (one worker each)")
        return values

    parse.__name__ = f"a list of {what}s"
    return parse


def add_worker_options(p) -> None:
    g = p.add_argument_group("workers (afxdp: one process per receive queue, each on its own CPU)")
    g.add_argument("--workers", type=_options.int_range(1, 64, "a number of workers"), metavar="N",
                   help="run N workers, on queues 0..N-1 (or --worker-queues) and CPUs 0..N-1 (or --cpus); "
                        "flows reach a worker by the queue the NIC's RSS (on a veth: the sender's transmit "
                        "queue) puts them on")
    g.add_argument("--worker-queues", type=int_list("queue id"), metavar="LIST",
                   help="the receive queues of the workers, one worker each, e.g. 0,1")
    g.add_argument("--cpus", type=int_list("CPU number"), metavar="LIST",
                   help="the CPU of each worker, in the order of its queues, e.g. 0,1")


def wants_workers(args) -> bool:
    """Did the options ask for workers? (A Namespace built without the worker options is a single run.)"""
    return any(getattr(args, name, None) for name in ("workers", "worker_queues", "cpus"))


def _check(args) -> list[int]:
    """The workers' queues, after refusing what cannot go with them (before anything is opened)."""
    if getattr(args, "backend", "afxdp") != "afxdp":
        raise UsageError(f"--workers needs --backend afxdp (one AF_XDP socket per queue), not {args.backend}")
    for opt, bad, why in (("--no-cp", args.no_cp, "each worker is a client of the control plane"),
                          ("--queue", args.queue is not None, "use --worker-queues"),
                          ("--cpu", args.cpu is not None, "use --cpus"),
                          ("--share-queue", args.share_queue, "each worker has its queue to itself"),
                          ("--hw", getattr(args, "hw", None),
                           "the hidden queue is one queue of an interface, owned by one program"),
                          ("-c/--count", args.count is not None,
                           "each worker stops on its own: use -t/--duration (sink: or --idle-timeout)")):
        if bad:
            raise UsageError(f"{opt} does not go with workers ({why})")
    queues = args.worker_queues
    if queues is None:
        if not args.workers:
            raise UsageError("--cpus needs workers: give --workers N or --worker-queues LIST")
        queues = list(range(args.workers))
    elif args.workers is not None and args.workers != len(queues):
        raise UsageError(f"--workers {args.workers} but --worker-queues names {len(queues)} queues: give one "
                         "of them, or lists of one length")
    return queues


def run_one(worker, args, rules: list[str], single) -> dict:
    """One worker of a tool's team, in its own process: the tool's single run `single(args, rules,
    on_open=...)` (sink's receive, reflect's forward) on the worker's queue; its summary, with the control
    plane's loss as its error. It says it is ready once its port is open."""
    mine = worker_args(args, worker, rules)
    summary, _, sp = single(mine, mine.rule, on_open=lambda sp: worker.ready())
    if sp.control_lost:
        summary["error"] = sp.control_lost
    return summary


def worker_args(args, worker, rules: list[str]) -> argparse.Namespace:
    """The options one worker runs with: its queue, its rules on that queue, no pinning of its own (the team
    pinned it), no progress lines."""
    mine = copy.copy(args)
    mine.queue, mine.cpu, mine.json = worker.queue, None, True
    mine.workers = mine.worker_queues = mine.cpus = None
    mine.rule = [str(r) for r in on_queue(rules, worker.queue)]
    return mine


def run_team(args, work, rules: list[str], *, totals: tuple[str, ...], finish=None) -> tuple[dict, list]:
    """Run `work(worker, args, rules)` (a module-level function of the tool) on every worker; return the
    merged summary and the outcomes. `finish(summary, outcomes)` may add to the summary (capture merges
    its files there)."""
    # the port stack: loaded to run, not to parse options
    from kbypass.port.steered import queue_count, rule_list
    from kbypass.tools._port import resolve_where

    queues = _check(args)
    parsed = rule_list(rules)  # syntax errors and rules naming another queue, before any worker starts
    for q in queues:
        on_queue(parsed, q)
    iface, ns = resolve_where(args)
    specs = plan(queues, args.cpus, queue_count(iface, ns))
    queue_list, cpu_list = [q for q, _ in specs], [c for _, c in specs]

    def ready() -> None:
        print(f"kbypass {args.command}: {len(specs)} workers receiving on {iface} (queues {queue_list}, CPUs "
              f"{cpu_list}, one process each); Ctrl-C to stop", file=sys.stderr, flush=True)

    def ended(o) -> None:
        if o.died is not None and o.died != STOPPED_EARLY:
            print(f"kbypass {args.command}: worker on queue {o.queue} (pid {o.pid}, CPU {o.cpu}) died: "
                  f"{o.died.strip().splitlines()[-1]}; its rules and socket are gone, the others go on",
                  file=sys.stderr, flush=True)

    team = WorkerTeam(work, queue_list, cpu_list, args=(args, rules), on_ready=ready, on_exit=ended)
    outcomes = team.run()
    summary = merge(outcomes, totals)
    if finish is not None:
        finish(summary, outcomes)
    return summary, outcomes


def exit_code(outcomes) -> int:
    """1 when a worker died or failed during the run (its death was reported), else 0."""
    return 1 if any(o.result is None for o in outcomes) else 0


def emit_team(summary: dict, as_json: bool) -> None:
    """A team's summary: as JSON whole; for people the totals and a row per worker of its scalar counts
    and of the socket counters that name a loss (rx_dropped, rx_ring_full, ...) where a worker has one
    (each worker's rules and whole statistics are in --json)."""
    from kbypass.tools._output import is_bad_counter
    from kbypass.tools._port import emit

    if not as_json:
        stats = [row.get("stats") or {} for row in summary["workers"]]
        losses = [k for k in dict.fromkeys(k for s in stats for k in s)
                  if is_bad_counter(k) and any(isinstance(s.get(k), int) and s.get(k) for s in stats)]
        rows = [{**{k: v for k, v in row.items() if not isinstance(v, (dict, list))},
                 **{k: s.get(k, 0) for k in losses}} for row, s in zip(summary["workers"], stats)]
        summary = dict(summary, workers=rows)
    emit(summary, as_json)
