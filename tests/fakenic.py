"""A NIC with ntuple rules and an RSS table, kept in a JSON file so that its settings outlive a process
killed with -9, as a real NIC's do: the device layer kbypass.port.hidden_queue is tested against where no
NIC with flow steering exists (veth has none and netdevsim cannot be loaded here). It takes the same
calls as kbypass.steer.ethtool.Ethtool and encodes every rule with the real flow_spec, so what it
refuses, the real one refuses too."""

from __future__ import annotations

import errno
import json
import os

from kbypass.steer.ethtool import flow_spec

RINGS, TABLE = 4, 128


def install(tmp_path, monkeypatch):
    """A fake NIC for the test: its state in tmp_path/nic.json, hidden-queue records in tmp_path/run
    (kbypass.port.hidden_queue's RUN_DIR, its root-only check off). Returns (run dir, state file)."""
    from kbypass.port import hidden_queue

    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.setattr(hidden_queue, "RUN_DIR", str(run))
    monkeypatch.setattr(hidden_queue, "check_run_dir", lambda: None)
    state = tmp_path / "nic.json"
    make(str(state))
    monkeypatch.setenv("KB_FAKE_NIC", str(state))
    return run, state


def make(path: str) -> None:
    with open(path, "w") as f:
        json.dump({"rules": {}, "table": [i % RINGS for i in range(TABLE)], "configured": False}, f)


class FakeNic:
    def __init__(self, ifname: str, netns: str | None = None) -> None:
        self.ifname, self.path = ifname, os.environ["KB_FAKE_NIC"]
        self.ifindex = 9

    def _load(self) -> dict:
        with open(self.path) as f:
            return json.load(f)

    def _save(self, state: dict) -> None:
        with open(self.path, "w") as f:
            json.dump(state, f)

    driver_picks = True  # RX_CLS_LOC_ANY; False: kbypass picks (free_location), as for ixgbe-like drivers

    def rule_count(self):
        return len(self._load()["rules"]), self.driver_picks, 1024

    def free_location(self) -> int:
        used = self._load()["rules"]
        return next(i for i in range(1023, -1, -1) if str(i) not in used)

    def ntuple_on(self) -> bool:
        return True

    def rx_rings(self) -> int:
        return RINGS

    def indirection(self) -> list[int]:
        return self._load()["table"]

    def set_indirection(self, table: list[int]) -> None:
        state = self._load()
        if not table:  # size 0: the kernel's default spread, and the table no longer marked as configured
            state["table"], state["configured"] = [i % RINGS for i in range(TABLE)], False
        elif len(table) != TABLE or not all(0 <= q < RINGS for q in table):
            raise OSError(errno.EINVAL, "bad table")
        else:
            state["table"], state["configured"] = list(table), True
        self._save(state)

    def insert(self, rule, queue: int, location: int | None = None) -> int:
        flow_spec(rule, queue)
        state = self._load()
        loc = self.free_location() if location is None else location
        state["rules"][str(loc)] = [str(rule), queue]
        self._save(state)
        return loc

    def delete(self, location: int) -> None:
        state = self._load()
        if state["rules"].pop(str(location), None) is None:
            raise OSError(errno.ENOENT, "no such rule")
        self._save(state)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass
