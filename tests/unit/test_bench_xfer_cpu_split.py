"""bench/xfer_cpu_split.py: the parts it charges exist, a part is charged its calls' thread CPU time, and
the table's shares and "port receive and the rest" are computed from those."""

from __future__ import annotations

import importlib
import time

import pytest

from tests.kb import bench_script


def _script():
    return bench_script("xfer_cpu_split")


def test_every_part_is_a_method_defined_on_its_class():
    # a renamed method would otherwise be charged nothing: the child refuses to run, this says so sooner
    for part, mod, cls_name, meth, _ in _script().PARTS:
        cls = getattr(importlib.import_module(mod), cls_name)
        assert callable(cls.__dict__.get(meth)), part


def test_a_part_is_charged_cpu_time_not_sleep_and_counts_calls():
    split = _script()
    cell = [0.0, 0]

    def work(spin: float, nap: float) -> str:
        end = time.thread_time() + spin
        while time.thread_time() < end:
            pass
        time.sleep(nap)
        return "done"

    charged = split._charged(work, cell, time.thread_time)
    assert charged(0.02, 0.05) == "done"
    with pytest.raises(TypeError):
        charged()  # a call that raises is counted too
    assert cell[1] == 2
    assert 0.02 <= cell[0] < 0.045  # the 50 ms asleep are not CPU


def test_table_shares_and_the_port_rest():
    split = _script()
    parts = {part: [0.0, 0] for part, *_ in split.PARTS}
    parts["pump"] = [2.0, 100]
    parts["frames' intake"] = [1.0, 100]
    parts["C runs of in-order data (rx_run)"] = [0.4, 50]
    parts["general path (decode, Connection)"] = [0.3, 10]
    parts["ACKs sent mid-batch (ack_due)"] = [0.1, 5]
    rows = {r["part"]: r for r in split.table("recv", {"process_cpu": 2.5, "parts": parts}, 2 * 10**9)}
    rest = rows[split.REST]
    assert rest["cpu_s"] == pytest.approx(0.2) and rest["share_of_pump"] == pytest.approx(0.1)
    assert rows["pump"]["us_per_call"] == pytest.approx(20000.0) and rows["pump"]["calls_per_gb"] == 50
    assert rows["general path (decode, Connection)"]["cpu_s_per_gb"] == pytest.approx(0.15)
    order = [r["part"] for r in split.table("recv", {"process_cpu": 2.5, "parts": parts}, 1)]
    assert order.index(split.REST) == order.index("ACKs sent mid-batch (ack_due)") + 1
