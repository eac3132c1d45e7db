"""Workers: one process per receive queue, each pinned to its own core, shared nothing.

The way DPDK apps and PF_RING ZC clusters scale: the NIC's RSS spreads flows over its queues, and each
queue has a worker of its own, a separate process with its own AF_XDP socket, UMEM and control-plane
connection (kbypass.cp). A worker's rules name its queue (`Rule(queue=Q)`, see `on_queue`), so the
workers' rules never overlap and each is an ordinary client of the control plane: when one dies, even by
`kill -9`, the control plane removes its rules and socket, and the packets of its queue go back to the
kernel while the other workers keep theirs.

    from kbypass.apps.workers import WorkerTeam

    def count(worker, seconds):             # runs in its own process, pinned to worker.cpu
        with SteeredPort("kb-b", worker.queue, on_queue(["udp dport 4321"], worker.queue),
                         netns="kb-b") as sp:
            worker.ready()
            return {"packets": Sink(sp.port).run(duration=seconds).packets}

    outcomes = WorkerTeam(count, queues=[0, 1], cpus=[0, 1], args=(10,)).run()

Workers are started with the "spawn" method (a fresh interpreter each: nothing of the parent's sockets,
netlink connections or control-plane client leaks into them), so `target` must be importable (a
module-level function) and, in a script, the team started under `if __name__ == "__main__":`. SIGINT and
SIGTERM to the parent are passed on as SIGTERM to every worker, once, which finishes its run and returns
its result; a worker that dies is reported (`on_exit`) and the others go on. A worker that has not said
ready within `ready_timeout` fails the team; one still running `stop_timeout` after its SIGTERM is killed.
"""

from __future__ import annotations

import ctypes
import dataclasses
import multiprocessing
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import wait as wait_for

from kbypass.errors import KbypassError, UsageError
from kbypass.port.loop import Stopper
from kbypass.steer.rules import Rule

STOPPED_EARLY = "stopped before its run began"
NOT_STARTED = "not started: the team was stopped during start-up"


def on_queue(rules: Sequence[Rule | str], queue: int) -> list[Rule]:
    """The rules as one worker of `queue` holds them: each matches only packets that arrived on that
    queue. A rule that names another queue is refused (it could never reach this worker)."""
    out = []
    for r in rules:
        rule = r if isinstance(r, Rule) else Rule.parse(r)
        if rule.queue is not None and rule.queue != queue:
            raise UsageError(f"rule '{rule}' names queue {rule.queue}, but its worker reads queue {queue}: "
                             "drop 'queue' from the rule (each worker adds its own)")
        out.append(dataclasses.replace(rule, queue=queue))
    return out


def plan(queues: Sequence[int], cpus: Sequence[int] | None, queue_count: int,
         cpu_count: int | None = None) -> list[tuple[int, int]]:
    """(queue, cpu) for each worker, checked: queues that exist and appear once, a CPU list as long as the
    queue list and no longer than the machine's (more workers than cores only take turns on them; two
    workers may be given one CPU, as a choice). Without `cpus`, worker i runs on CPU i."""
    cpu_count = cpu_count or os.cpu_count() or 1
    if not queues:
        raise UsageError("no workers: give at least one queue")
    if len(set(queues)) != len(queues):
        raise UsageError(f"queues {list(queues)} name a queue twice: one worker per queue (AF_XDP binds one "
                         "socket per queue)")
    if len(queues) > queue_count:
        raise UsageError(f"{len(queues)} workers but the interface has {queue_count} receive queue"
                         f"{'s' if queue_count != 1 else ''}: one worker per queue, so at most {queue_count} "
                         "(or give the interface more queues: ethtool -L, kbypass testbed up --queues N)")
    bad = [q for q in queues if not 0 <= q < queue_count]
    if bad:
        raise UsageError(f"queue {bad[0]} does not exist: the interface has queues 0-{queue_count - 1}")
    if cpus is None:
        if len(queues) > cpu_count:
            raise UsageError(f"{len(queues)} workers but this machine has {cpu_count} CPUs: a worker per core, "
                             f"so at most {cpu_count}")
        cpus = list(range(len(queues)))
    if len(cpus) > cpu_count:
        raise UsageError(f"{len(cpus)} CPUs listed but this machine has {cpu_count} (CPUs 0-{cpu_count - 1}): "
                         "list one CPU per worker")
    if len(cpus) != len(queues):
        raise UsageError(f"{len(queues)} workers (queues {list(queues)}) but {len(cpus)} CPUs ({list(cpus)}): "
                         "list one CPU per worker")
    bad = [c for c in cpus if not 0 <= c < cpu_count]
    if bad:
        raise UsageError(f"CPU {bad[0]} does not exist: this machine has CPUs 0-{cpu_count - 1}")
    return list(zip(queues, cpus))


@dataclass
class Worker:
    """What a worker process knows about itself; `ready()` tells the parent its port is open."""

    index: int
    queue: int
    cpu: int
    conn: object = None  # its end of the pipe to the parent

    def ready(self) -> None:
        # from here on a SIGTERM is the end of the run, never an unwinding: see _stop_the_loop
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _stop_the_loop)
        _tell(self.conn, ("ready", None))


@dataclass
class Outcome:
    """How one worker ended: its result (what target returned), or an error, or a death."""

    index: int
    queue: int
    cpu: int
    pid: int
    result: dict | None = None
    error: str | None = None  # a KbypassError's message: the worker refused to start or failed cleanly
    died: str | None = None  # it ended without a result: "killed by SIGKILL", "exit 1", a traceback


class StoppedEarly(BaseException):
    """SIGTERM before the worker's receive loop took over the signal: unwind, closing what was opened."""


_WORKER_PID = None  # the worker process itself, not a child forked from it
_TERMED = False  # this worker was asked to stop: later SIGTERMs (its parent's death, a kill) change nothing


def _not_the_worker(signum) -> None:
    if os.getpid() != _WORKER_PID:
        # a child forked from the worker (pyroute2 forks one per namespace it opens and ends it with
        # SIGTERM) inherits the worker's handlers: unwinding the worker's frames there would run its cleanup
        # (a capture worker deleted its own file that way). The child just goes.
        os._exit(128 + signum)


def _stop_before_the_loop(signum, frame) -> None:
    """Before ready(): unwind, closing what was opened (the run has not begun, there is nothing to report).
    Once only: a second SIGTERM must not break into that unwinding."""
    global _TERMED
    _not_the_worker(signum)
    if not _TERMED:
        _TERMED = True
        raise StoppedEarly()


def _stop_the_loop(signum, frame) -> None:
    """After ready(), while the receive loop's own handler (a Stopper) is not in place: before the loop
    took over, or after it ended and the worker is finishing its summary. Never an exception (it would
    lose the summary). A first SIGTERM is handed to the loop if it starts after it; later ones are
    ignored."""
    global _TERMED
    _not_the_worker(signum)
    if not _TERMED:
        _TERMED = True
        threading.Thread(target=_hand_to_the_loop, daemon=True, name="kbypass-stop-for-the-loop").start()


def _hand_to_the_loop(poll: float = 0.01) -> None:
    """Deliver the SIGTERM again once a receive loop's Stopper holds it (a loop that ended before it came
    never runs again: this thread then waits, harmless, until the worker ends)."""
    while True:
        if isinstance(getattr(signal.getsignal(signal.SIGTERM), "__self__", None), Stopper):
            os.kill(os.getpid(), signal.SIGTERM)
            return
        time.sleep(poll)


PR_SET_PDEATHSIG = 1


def _end_with_the_parent(parent: int) -> None:
    """SIGTERM when the parent dies, even by `kill -9`: a team whose parent is gone would otherwise keep its
    rules and sockets until each worker's own end (never, without -t)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # it died before the prctl: no signal will come
        raise StoppedEarly()


def _ignore(signum, frame) -> None:
    pass


def _worker_main(target, worker: Worker, args: tuple, parent: int) -> None:
    """A worker process: pin, run, send the result. SIGINT is the parent's business (it passes SIGTERM on):
    a Ctrl-C on the terminal reaches the whole process group, and a worker stops once, in its loop. A
    no-op handler rather than SIG_IGN, which a control plane this worker starts would inherit."""
    global _WORKER_PID
    _WORKER_PID = os.getpid()
    signal.signal(signal.SIGINT, _ignore)
    signal.signal(signal.SIGTERM, _stop_before_the_loop)  # the run's own loop catches it once it runs
    conn = worker.conn
    try:
        _end_with_the_parent(parent)
        os.sched_setaffinity(0, {worker.cpu})
        _tell(conn, ("result", target(worker, *args)))
    except KbypassError as e:
        _tell(conn, ("error", str(e)))
    except StoppedEarly:
        _tell(conn, ("died", STOPPED_EARLY))
    except BaseException:
        _tell(conn, ("died", traceback.format_exc()))
        raise


def _tell(conn, message: tuple) -> None:
    """Send to the parent, which may be gone (killed): then there is nobody to tell."""
    try:
        conn.send(message)
    except OSError:
        pass


class WorkerTeam:
    """Start one process per (queue, cpu), wait for all, return their outcomes in queue order.

    `on_ready()` is called once every worker said ready(); `on_exit(outcome)` as each one ends (a death
    the moment it happens). A worker that fails before it is ready (a refused rule, a queue taken), or does
    not say ready within `ready_timeout` seconds, stops the team: the others are ended and `run` raises
    that error, so nothing is left behind. After stop(), a worker still running `stop_timeout` seconds
    later is killed (SIGKILL) and reported so."""

    def __init__(self, target: Callable, queues: Sequence[int], cpus: Sequence[int], args: tuple = (), *,
                 on_ready: Callable[[], None] | None = None, on_exit: Callable[[Outcome], None] | None = None,
                 ready_timeout: float = 30.0, stop_timeout: float = 10.0):
        if len(queues) != len(cpus):
            raise UsageError(f"{len(queues)} queues but {len(cpus)} CPUs: one CPU per worker")
        self.target, self.args = target, args
        self.specs = list(zip(queues, cpus))
        self.on_ready, self.on_exit = on_ready, on_exit
        self.ready_timeout, self.stop_timeout = ready_timeout, stop_timeout
        self.procs: list = []
        self._stopping = False
        self._stop_deadline: float | None = None  # monotonic time after which the rest are killed
        self._termed: set[int] = set()  # pids sent their SIGTERM: one each (a second could cut its summary)
        self._killed: set[int] = set()  # indexes killed at the deadline
        self._failed: str | None = None  # why the team could not start

    def stop(self) -> None:
        """Ask every live worker to finish (SIGTERM, once each: it prints nothing, returns its result)."""
        self._stopping = True
        if self._stop_deadline is None:
            self._stop_deadline = time.monotonic() + self.stop_timeout
        for p in self.procs:
            if p.pid and p.pid not in self._termed and p.exitcode is None:
                self._termed.add(p.pid)
                try:
                    os.kill(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    def run(self) -> list[Outcome]:
        ctx = multiprocessing.get_context("spawn")
        conns, outcomes, ready = {}, {}, set()
        old = {s: signal.signal(s, lambda *_: self.stop()) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            for i, (queue, cpu) in enumerate(self.specs):
                if self._stopping:  # Ctrl-C during start-up: no more workers
                    outcomes[i] = Outcome(i, queue, cpu, 0, died=NOT_STARTED)
                    continue
                mine, theirs = ctx.Pipe(duplex=False)
                p = ctx.Process(target=_worker_main, args=(self.target, Worker(i, queue, cpu, theirs), self.args, os.getpid()),
                                name=f"kbypass-worker-q{queue}", daemon=True)
                p.start()
                theirs.close()
                self.procs.append(p)
                conns[mine] = i
                outcomes[i] = Outcome(i, queue, cpu, p.pid)
            if self._stopping:
                self.stop()  # those started after the signal came did not get their SIGTERM
            ready_by = time.monotonic() + self.ready_timeout
            pending = {p.sentinel: i for i, p in enumerate(self.procs)}
            while pending:
                got = wait_for([*conns, *pending], timeout=self._wait(ready_by, pending, ready))
                if not got:
                    self._overdue(ready_by, pending, ready, outcomes)
                for ready_obj in got:
                    if ready_obj in conns:
                        self._read(ready_obj, conns, outcomes, ready)
                    else:
                        i = pending.pop(ready_obj)
                        for c in [c for c, j in conns.items() if j == i]:  # what it sent before it ended
                            while c in conns and c.poll():
                                self._read(c, conns, outcomes, ready)
                        self._ended(outcomes[i], self.procs[i], i in ready)
            if self._failed is not None:
                raise KbypassError(self._failed)
            return [outcomes[i] for i in range(len(self.specs))]
        finally:
            self.stop()
            for p in self.procs:
                p.join(5)
                if p.exitcode is None:
                    p.kill()
                    p.join()
            for c in conns:
                c.close()
            for s, h in old.items():
                signal.signal(s, h)

    def _wait(self, ready_by: float, pending: dict, ready: set) -> float | None:
        """How long to wait for the next event: until the stop deadline, or the ready deadline while a live
        worker has not said ready; otherwise for ever."""
        if self._stopping:
            return None if self._killed else max(0.0, self._stop_deadline - time.monotonic())
        if any(i not in ready for i in pending.values()):
            return max(0.0, ready_by - time.monotonic())
        return None

    def _overdue(self, ready_by: float, pending: dict, ready: set, outcomes: dict) -> None:
        now = time.monotonic()
        if self._stopping and now >= self._stop_deadline:
            for i in pending.values():  # hung: it did not finish after its SIGTERM
                self._killed.add(i)
                self.procs[i].kill()
        elif not self._stopping and now >= ready_by:
            late = [outcomes[i] for i in pending.values() if i not in ready]
            self._failed = (f"the worker on queue {late[0].queue} (pid {late[0].pid}) did not say it was ready "
                            f"within {self.ready_timeout:g} s: the team is stopped")
            self.stop()

    def _read(self, conn, conns: dict, outcomes: dict, ready: set) -> None:
        i = conns[conn]
        try:
            kind, value = conn.recv()
        except (EOFError, OSError):
            del conns[conn]
            conn.close()
            return
        o = outcomes[i]
        if kind == "ready":
            ready.add(i)
            if len(ready) == len(self.specs) and self.on_ready is not None:
                self.on_ready()
        elif kind == "result":
            o.result = value
        elif kind == "error":
            o.error = value
        else:
            o.died = value

    def _ended(self, o: Outcome, p, was_ready: bool) -> None:
        p.join()
        if o.index in self._killed and o.result is None:
            o.died = f"killed by SIGKILL: still running {self.stop_timeout:g} s after it was asked to stop"
        elif o.result is None and o.error is None and o.died is None:
            code = p.exitcode
            o.died = (f"killed by {signal.Signals(-code).name}" if code is not None and code < 0
                      else f"exit {code}")
        if not was_ready and not self._stopping and (o.error is not None or o.died is not None):
            # one worker could not start (a refused rule, a queue taken): the team does not half-start
            self._failed = o.error or f"the worker on queue {o.queue} died before it was ready: " + (
                o.died.strip().splitlines()[-1])
            self.stop()
        if self.on_exit is not None:
            self.on_exit(o)


def merge(outcomes: Sequence[Outcome], totals: Sequence[str]) -> dict:
    """One summary of a team: each worker's (queue, cpu, pid, its own summary or how it ended) and the sum
    of the `totals` keys over the workers that returned one. `pps` is summed too: the workers run side by
    side, each rate from its own first packet to its last."""
    done = [o.result for o in outcomes if o.result is not None]
    summary: dict = {k: sum(r.get(k, 0) for r in done) for k in totals}
    summary["pps"] = round(sum(r.get("pps", 0.0) for r in done), 1)
    summary["workers"] = []
    for o in outcomes:
        row = {"queue": o.queue, "cpu": o.cpu, "pid": o.pid}
        if o.result is not None:
            row.update(o.result)
        else:
            row["died" if o.died is not None else "error"] = o.died if o.died is not None else o.error
        summary["workers"].append(row)
    return summary
