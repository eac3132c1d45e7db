"""Read a running steering program from outside: its rules in priority order and their counters.

Any process may hold the program (the namespace's control plane, or a tool run with --no-cp); its maps
are found by the ids the kernel lists for the program, and only read (lookups), so the data path never
waits on a reader. The reader holds the maps' fds until `close()`.
"""

from __future__ import annotations

import struct

from kbypass.bpf import ids
from kbypass.bpf.libbpf import BpfMap
from kbypass.steer import steering
from kbypass.steer.rules import Rule, RuleError

MAPS = ("steer_rules", "steer_order", "steer_config", "steer_counters", "steer_stats")


def _percpu_sum(m: BpfMap, key: int, fields: int) -> list[int]:
    raw = m.lookup(key) or b""
    stride = m.lookup_size // m.ncpus
    return [sum(struct.unpack_from("<Q", raw, off + 8 * i)[0] for off in range(0, len(raw), stride))
            for i in range(fields)]


class ObservedProgram:
    """The maps of steering program `info` (a `ids.ProgInfo` named kbypass_steer)."""

    def __init__(self, info: ids.ProgInfo) -> None:
        if info.name != steering.PROGRAM:
            raise ValueError(f"program {info.id} is {info.name!r}, not {steering.PROGRAM}")
        self.prog_id = info.id
        self._maps: dict[str, BpfMap] = {}
        for mid in info.map_ids:
            m = ids.open_map(mid)
            if m is None:
                continue
            if m.name in MAPS:
                self._maps[m.name] = m
            else:
                ids.close_map(m)
        self.complete = set(MAPS) <= set(self._maps)  # False: unloaded meanwhile, or another build

    def rules(self) -> list[dict]:
        """[{rule_id, rule, group, packets, bytes}] in priority order; packets and bytes summed over CPUs."""
        if not self.complete:
            return []
        active = struct.unpack_from("<I", self._maps["steer_config"].lookup(0) or bytes(4))[0]
        order = self._maps["steer_order"].lookup(active & 1) or bytes(4)
        count = min(struct.unpack_from("<I", order)[0], (len(order) - 4) // 4)  # torn or foreign: what fits
        out = []
        for rule_id in struct.unpack_from(f"<{count}I", order, 4):
            raw = self._maps["steer_rules"].lookup(rule_id)
            if raw is None or not any(raw):
                continue  # removed between the two reads
            try:
                rule, group = Rule.unpack(raw)
            except (RuleError, StopIteration, struct.error, ValueError):
                # rewritten between the two reads, or a build of another layout: shown, not fatal to top
                out.append({"rule_id": rule_id, "rule": "(unreadable)", "group": None, "packets": 0, "bytes": 0})
                continue
            packets, nbytes = _percpu_sum(self._maps["steer_counters"], rule_id, 2)
            out.append({"rule_id": rule_id, "rule": str(rule), "group": group, "packets": packets, "bytes": nbytes})
        return out

    def stats(self) -> dict[str, int]:
        """Packets no rule decided: unmatched, parse_errors, not_ip (see SteerStats)."""
        if not self.complete:
            return {}
        m = self._maps["steer_stats"]
        return {name: _percpu_sum(m, key, 1)[0] for name, key in
                (("unmatched", steering.STAT_UNMATCHED), ("parse_errors", steering.STAT_PARSE_ERROR),
                 ("not_ip", steering.STAT_NOT_IP))}

    def close(self) -> None:
        for m in self._maps.values():
            ids.close_map(m)
        self._maps.clear()
        self.complete = False
