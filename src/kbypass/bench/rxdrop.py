"""The C limit row of the AF_XDP path: build/xdp_rxdrop (csrc/tools/xdp_rxdrop.c, built by `make setup`), the
minimal AF_XDP receiver on libxdp's xsk API (copy mode, need_wakeup, batch 64; it counts frames and puts
them straight back on the fill ring).

Two XDP programs in front of it, so the gap to `kbypass sink` can be split between kernel and user space:

    "attached"  kbypass's steering program with one redirect rule, the rule `kbypass sink` gets (attached
                in-process here, group 0; the C program puts its socket in the program's XSKMAP): the same
                kernel work as the sink's, so sink / this row is user space against user space.
    "libxdp"    libxdp's own bare redirect program (no parse, no rules): the cheapest redirect there is; it
                also takes the queue's other frames (the kernel's ARP/IPv6 chatter: a few in a burst).
"""

from __future__ import annotations

from pathlib import Path

from kbypass.bench import kit as benchkit
from kbypass.host import testbed

# build/ of the checkout this package runs from (an editable install: src/kbypass/bench -> the repo root)
BINARY = Path(__file__).resolve().parents[3] / "build" / "xdp_rxdrop"
PROGRAMS = {"attached": "steering program, 1 rule", "libxdp": "libxdp's bare redirect program"}


def built() -> bool:
    return BINARY.is_file()


def argv(b: testbed.Host, program: str, *, queue: int = 0, batch: int = 64) -> list[str]:
    if program not in PROGRAMS:
        raise ValueError(f"program {program!r}: use one of {', '.join(PROGRAMS)}")
    return [str(BINARY), "--iface", b.iface, "--netns", b.netns, "--queue", str(queue), "--program", program,
            "--batch", str(batch), "--cpu", str(benchkit.SUT_CPU), "--frames", "16384", "--ring-size", "8192"]


class CRxDrop(benchkit.Contender):
    """build/xdp_rxdrop as a contender; with program "attached" it owns the steering program it is steered by
    (attached before the process starts, detached after it stopped)."""

    def __init__(self, name: str, program: str, rule: str) -> None:
        super().__init__(name, "receive", [], benchkit.announced, benchkit.kbypass_json_count)
        self.program, self.rule = program, rule
        self.steering = None

    def start(self, b: testbed.Host) -> None:
        self.argv = argv(b, self.program)
        if self.program == "attached":
            from kbypass.steer.steering import Steering

            self.steering = Steering(b.iface, netns=b.netns)
            try:
                self.steering.add(self.rule)
                self.steering.attach()
            except BaseException:
                self._detach()
                raise
        try:
            super().start(b)
        except BaseException:
            self._detach()  # trial() stops a contender whose start failed; the program must go either way
            raise

    def stop(self) -> int:
        try:
            return super().stop() if self.proc is not None else 0
        finally:
            self._detach()

    def _detach(self) -> None:
        if self.steering is not None:
            self.steering.close()
            self.steering = None
